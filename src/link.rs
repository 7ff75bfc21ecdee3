//! A subscription: credits flow up through shared counters, events flow down
//! through the consumer's bounded inbox.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use tokio::sync::{Notify, mpsc};

use crate::demand::{DemandBounds, DemandBoundsError, DemandMode};
use crate::dispatcher::{DispatchOptions, Selector, SubscriberId};

/// What a consumer does when one of its producers ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CancelMode {
    /// Ends with its producers: once every producer it subscribed to has
    /// ended it flushes and ends too; a producer failing fails it at once.
    #[default]
    Permanent,
    /// Fails when a producer fails; a producer ending normally leaves it running.
    Transient,
    /// Producers ending, normally or not, never end it (only shutdown does).
    Temporary,
}

/// How a subscription ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The producer finished and delivered everything.
    Normal,
    /// The subscription was cancelled.
    Cancelled,
    /// The producer failed; the text says why.
    Failed(String),
}

/// A message in a consumer's inbox. Events and the end of a subscription
/// travel on the same channel, so the end always arrives after the last event.
#[derive(Debug)]
pub(crate) enum Inbox<T> {
    Events { link: SubscriberId, batch: Vec<T> },
    Done { link: SubscriberId, reason: EndReason },
}

/// The producer's end of a consumer's inbox.
///
/// Unbounded as a channel because credits bound it: a producer sends only
/// events a consumer asked for, and at most one end per subscription, so
/// what may wait is at most the subscriptions' `max_demand` — and a send
/// never waits, which spares every batch a semaphore round trip. Each send
/// also notifies the consumer's wake-up, the one thing its task waits on.
pub(crate) struct InboxSender<T> {
    // Unbounded on purpose: credits are the bound (at most `max_demand`
    // events per subscription, and one end), tested in `subscription.rs`.
    channel: mpsc::UnboundedSender<Inbox<T>>,
    consumer_wake: Arc<Notify>,
}

impl<T> Clone for InboxSender<T> {
    fn clone(&self) -> Self {
        InboxSender { channel: self.channel.clone(), consumer_wake: self.consumer_wake.clone() }
    }
}

impl<T> InboxSender<T> {
    /// Puts `message` in the inbox and wakes the consumer; gives it back if the consumer is gone.
    pub(crate) fn send(&self, message: Inbox<T>) -> Result<(), Inbox<T>> {
        self.channel.send(message).map_err(|unsent| unsent.0)?;
        self.consumer_wake.notify_one();
        Ok(())
    }

    /// Whether the consumer is gone.
    pub(crate) fn is_closed(&self) -> bool {
        self.channel.is_closed()
    }
}

/// The consumer's end of its inbox.
pub(crate) type InboxReceiver<T> = mpsc::UnboundedReceiver<Inbox<T>>;

/// A new inbox of the consumer that waits on `consumer_wake`.
pub(crate) fn inbox<T>(consumer_wake: Arc<Notify>) -> (InboxSender<T>, InboxReceiver<T>) {
    // Bounded by credits, not capacity: see `InboxSender`.
    let (channel, receiver) = mpsc::unbounded_channel();
    (InboxSender { channel, consumer_wake }, receiver)
}

/// The shared half of a subscription.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) id: SubscriberId,
    pub(crate) producer: String,
    pub(crate) consumer: String,
    /// Credits granted and not yet collected by the producer.
    credits: AtomicUsize,
    /// All credits ever granted (for the credit check).
    granted: AtomicU64,
    cancelled: AtomicBool,
    producer_wake: Arc<Notify>,
}

static NEXT_LINK: AtomicU64 = AtomicU64::new(1);

impl Link {
    pub(crate) fn new(producer: &str, consumer: &str, producer_wake: Arc<Notify>) -> Arc<Link> {
        Arc::new(Link {
            id: NEXT_LINK.fetch_add(1, Ordering::Relaxed),
            producer: producer.to_string(),
            consumer: consumer.to_string(),
            credits: AtomicUsize::new(0),
            granted: AtomicU64::new(0),
            cancelled: AtomicBool::new(false),
            producer_wake,
        })
    }

    pub(crate) fn ask(&self, credits: usize) {
        if credits == 0 {
            return;
        }
        self.granted.fetch_add(credits as u64, Ordering::AcqRel);
        self.credits.fetch_add(credits, Ordering::AcqRel);
        self.producer_wake.notify_one();
    }

    pub(crate) fn collect(&self) -> usize {
        self.credits.swap(0, Ordering::AcqRel)
    }

    pub(crate) fn granted(&self) -> u64 {
        self.granted.load(Ordering::Acquire)
    }

    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.producer_wake.notify_one();
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }
}

/// A consumer's handle on one of its subscriptions: ask for events by hand, or cancel.
#[derive(Debug, Clone)]
pub struct DemandHandle {
    pub(crate) link: Arc<Link>,
}

impl DemandHandle {
    /// Grants the producer `credits` more events (manual demand mode).
    pub fn ask(&self, credits: usize) {
        self.link.ask(credits);
    }

    /// Cancels the subscription: the producer stops sending and ends it.
    pub fn cancel(&self) {
        self.link.cancel();
    }

    /// The producer's stage id.
    pub fn producer(&self) -> &str {
        &self.link.producer
    }
}

/// How a consumer subscribes to a producer.
pub struct SubscribeOptions<T> {
    /// Credit bounds (defaults 1000 / 500), or why the numbers given were rejected.
    bounds: Result<DemandBounds, DemandBoundsError>,
    /// Automatic or manual demand.
    pub mode: DemandMode,
    /// What the consumer does when this producer ends.
    pub cancel: CancelMode,
    /// The partition to take, for a partition dispatcher.
    pub partition: Option<usize>,
    /// The events to take, for a broadcast dispatcher.
    pub selector: Option<Selector<T>>,
}

impl<T> Default for SubscribeOptions<T> {
    fn default() -> Self {
        SubscribeOptions {
            bounds: Ok(DemandBounds::default()),
            mode: DemandMode::Automatic,
            cancel: CancelMode::Permanent,
            partition: None,
            selector: None,
        }
    }
}

impl<T> Clone for SubscribeOptions<T> {
    fn clone(&self) -> Self {
        SubscribeOptions {
            bounds: self.bounds.clone(),
            mode: self.mode,
            cancel: self.cancel,
            partition: self.partition,
            selector: self.selector.clone(),
        }
    }
}

impl<T> SubscribeOptions<T> {
    /// Options with these credit bounds.
    pub fn bounds(bounds: DemandBounds) -> Self {
        SubscribeOptions { bounds: Ok(bounds), ..Self::default() }
    }

    /// Sets the credit bounds.
    pub fn with_bounds(mut self, bounds: DemandBounds) -> Self {
        self.bounds = Ok(bounds);
        self
    }

    /// Sets the credit bounds from plain numbers. Invalid ones are reported
    /// where the subscription is made: by [`crate::Pipeline::validate`] and
    /// `start` for a stage, by [`crate::PipelineHandle::subscribe`] from outside.
    pub fn with_demand(mut self, max_demand: usize, min_demand: usize) -> Self {
        self.bounds = DemandBounds::new(max_demand, min_demand);
        self
    }

    /// The credit bounds, or why the numbers given to `with_demand` are invalid.
    pub fn demand_bounds(&self) -> Result<DemandBounds, DemandBoundsError> {
        self.bounds.clone()
    }

    /// Sets manual demand mode.
    pub fn manual(mut self) -> Self {
        self.mode = DemandMode::Manual;
        self
    }

    /// Sets the cancel mode.
    pub fn with_cancel(mut self, cancel: CancelMode) -> Self {
        self.cancel = cancel;
        self
    }

    /// Takes partition `partition` of a partition dispatcher.
    pub fn with_partition(mut self, partition: usize) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Takes only events `selector` accepts from a broadcast dispatcher.
    pub fn with_selector(mut self, selector: impl Fn(&T) -> bool + Send + Sync + 'static) -> Self {
        self.selector = Some(Arc::new(selector));
        self
    }

    pub(crate) fn dispatch_options(&self) -> DispatchOptions<T> {
        DispatchOptions { partition: self.partition, selector: self.selector.clone() }
    }
}

/// The producer's half of a subscription.
pub(crate) struct Subscriber<T> {
    pub(crate) link: Arc<Link>,
    pub(crate) inbox: InboxSender<T>,
    pub(crate) options: DispatchOptions<T>,
}
