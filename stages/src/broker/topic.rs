//! One topic: its log, its broadcast stage and its subscriptions.
//!
//! Publishing appends the event to the log, then (when the topic has
//! subscribers) feeds it through a bounded channel into the topic's
//! producer stage, whose `BroadcastDispatcher` hands every event to every
//! subscription. Each subscription's delivery task always takes what the
//! stage offers (into its priority queue, or, past the queue's bound, it
//! leaves the event in the log to read back later), so a silent subscriber
//! never holds the stage back.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use stageflow::{BroadcastDispatcher, BufferKeep, Emitter, Flow, Pipeline, PipelineHandle, Producer};
use tokio::sync::mpsc;

use super::log::{LogGuard, Recovery, SyncMode, TopicLog};
use super::queue::AckedSet;
use super::record::{CheckpointEntry, Record, StoredEvent};
use super::subscription::SubscriptionCommand;
use crate::sync::lock;

/// The id of the producer stage in each topic's pipeline.
pub(crate) const FEED_STAGE: &str = "feed";
/// Capacity of the channel from publishers into a topic's stage, in events.
const FEED_CAPACITY: usize = 1024;

/// What a topic knows about one subscription; the delivery task owns the rest.
pub(crate) struct SubscriptionState {
    /// The subscriber's name (durable) or a connection-local key (`#n`).
    pub key: String,
    /// Whether it survives disconnects and restarts.
    pub durable: bool,
    /// It gets events with `seq > start`.
    pub start: u64,
    /// Acknowledged sequence numbers (logged first, for durable subscribers).
    pub acked: Mutex<AckedSet>,
    /// Events in its in-memory queue.
    pub queued: AtomicUsize,
    /// Events waiting for it in the log beyond its in-memory bound.
    pub spilled: AtomicU64,
    /// Deliveries awaiting its ack.
    pub in_flight: AtomicUsize,
    /// Its window: most deliveries awaiting an ack at once (0 while no client is attached).
    pub window: AtomicUsize,
    /// Commands to its delivery task.
    pub commands: mpsc::Sender<SubscriptionCommand>,
}

/// A topic.
pub(crate) struct Topic {
    /// Its name.
    pub name: Arc<str>,
    /// Its log.
    pub log: TopicLog,
    registry: Mutex<HashMap<String, Arc<SubscriptionState>>>,
    /// Held from sequence assignment to the hand-over to the stage, so events enter it in order.
    feed: tokio::sync::Mutex<mpsc::Sender<Arc<StoredEvent>>>,
    pipeline: tokio::sync::Mutex<PipelineHandle>,
    /// Events published since the broker started.
    pub published: AtomicU64,
    /// Acks since the broker started.
    pub acked: AtomicU64,
}

/// The topic's producer stage: emits, against demand, what publishers fed in.
struct TopicFeed {
    receiver: Arc<tokio::sync::Mutex<mpsc::Receiver<Arc<StoredEvent>>>>,
}

impl Producer for TopicFeed {
    type Out = Arc<StoredEvent>;

    fn produce(
        &mut self,
        demand: usize,
        out: &mut Emitter<Arc<StoredEvent>>,
    ) -> impl Future<Output = Flow> + Send {
        let receiver = self.receiver.clone();
        async move {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else { return Flow::Done };
            out.emit(first);
            while out.len() < demand {
                match receiver.try_recv() {
                    Ok(event) => out.emit(event),
                    Err(_) => break,
                }
            }
            Flow::Continue
        }
    }
}

impl Topic {
    /// Opens (or recovers) the topic stored in `dir` and starts its stage.
    pub fn open(
        name: &str,
        dir: &Path,
        segment_bytes: u64,
        sync: SyncMode,
    ) -> Result<(Arc<Topic>, Recovery), String> {
        let (log, recovery) = TopicLog::open(dir, segment_bytes, sync).map_err(|error| {
            format!("cannot open the log of topic '{name}' in {}: {error}", dir.display())
        })?;
        let (feed, receiver) = mpsc::channel(FEED_CAPACITY);
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        let mut pipeline = Pipeline::new();
        pipeline
            .producer(FEED_STAGE, move || TopicFeed { receiver: receiver.clone() })
            .dispatcher(BroadcastDispatcher::new())
            .buffer(FEED_CAPACITY * 4, BufferKeep::First);
        let pipeline = pipeline.start().map_err(|error| format!("cannot start topic '{name}': {error}"))?;
        let topic = Topic {
            name: name.into(),
            log,
            registry: Mutex::new(HashMap::new()),
            feed: tokio::sync::Mutex::new(feed),
            pipeline: tokio::sync::Mutex::new(pipeline),
            published: AtomicU64::new(0),
            acked: AtomicU64::new(0),
        };
        Ok((Arc::new(topic), recovery))
    }

    /// Appends a record under the log lock, rolling the segment first if it is full.
    pub fn append(&self, record: &Record) -> io::Result<u64> {
        let mut guard = self.log.lock();
        self.roll_if_full(&mut guard)?;
        guard.append(record)
    }

    fn roll_if_full(&self, guard: &mut LogGuard<'_>) -> io::Result<()> {
        if guard.needs_roll() {
            guard.roll(self.checkpoint_entries())?;
        }
        Ok(())
    }

    /// The durable subscribers, for the checkpoint heading a new segment.
    fn checkpoint_entries(&self) -> Vec<CheckpointEntry> {
        lock(&self.registry)
            .values()
            .filter(|s| s.durable)
            .map(|s| CheckpointEntry {
                subscriber: s.key.clone(),
                start: s.start,
                acked_through: lock(&s.acked).contiguous_through(s.start),
            })
            .collect()
    }

    /// Logs an event and hands it to the stage; returns its sequence number
    /// once it is as durable as the sync mode promises.
    pub async fn publish(&self, id: String, priority: u8, body: String) -> Result<u64, String> {
        let feed = self.feed.lock().await;
        let (event, ticket, has_subscribers) = {
            let mut guard = self.log.lock();
            self.roll_if_full(&mut guard).map_err(|error| format!("cannot write the log: {error}"))?;
            let (event, ticket) = guard
                .publish(|seq| StoredEvent { seq, priority, id, body })
                .map_err(|error| format!("cannot write the log: {error}"))?;
            (event, ticket, !lock(&self.registry).is_empty())
        };
        let seq = event.seq;
        if has_subscribers {
            feed.send(event).await.map_err(|_| format!("topic '{}' is shutting down", self.name))?;
        }
        drop(feed);
        self.published.fetch_add(1, Ordering::Relaxed);
        self.log.wait_durable(ticket).await;
        Ok(seq)
    }

    /// Subscribes to the topic's stage (an outside subscription of the engine).
    pub async fn engine_subscription(&self) -> Result<stageflow::Subscription<Arc<StoredEvent>>, String> {
        let pipeline = self.pipeline.lock().await;
        pipeline
            .subscribe::<Arc<StoredEvent>>(FEED_STAGE, stageflow::SubscribeOptions::default())
            .await
            .map_err(|error| format!("cannot subscribe to topic '{}': {error}", self.name))
    }

    /// Registers a subscription that gets events after the current last one;
    /// a durable one is logged. Returns its state and the log ticket.
    pub fn register(
        &self,
        key: &str,
        durable: bool,
        commands: mpsc::Sender<SubscriptionCommand>,
    ) -> Result<(Arc<SubscriptionState>, u64), String> {
        let mut guard = self.log.lock();
        if lock(&self.registry).contains_key(key) {
            return Err(format!("already subscribed to '{}'", self.name));
        }
        let start = guard.last_seq();
        let mut ticket = 0;
        if durable {
            let write = |guard: &mut LogGuard<'_>| {
                self.roll_if_full(guard)?;
                guard.append(&Record::Subscribe { subscriber: key.to_string(), start })
            };
            ticket = write(&mut guard).map_err(|error| format!("cannot write the log: {error}"))?;
        }
        let state = Arc::new(SubscriptionState {
            key: key.to_string(),
            durable,
            start,
            acked: Mutex::new(AckedSet::new()),
            queued: AtomicUsize::new(0),
            spilled: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            window: AtomicUsize::new(0),
            commands,
        });
        lock(&self.registry).insert(key.to_string(), state.clone());
        Ok((state, ticket))
    }

    /// Registers a durable subscription found by recovery.
    pub fn register_recovered(
        &self,
        key: &str,
        start: u64,
        acked: AckedSet,
        pending: u64,
        commands: mpsc::Sender<SubscriptionCommand>,
    ) -> Arc<SubscriptionState> {
        let state = Arc::new(SubscriptionState {
            key: key.to_string(),
            durable: true,
            start,
            acked: Mutex::new(acked),
            queued: AtomicUsize::new(0),
            spilled: AtomicU64::new(pending),
            in_flight: AtomicUsize::new(0),
            window: AtomicUsize::new(0),
            commands,
        });
        lock(&self.registry).insert(key.to_string(), state.clone());
        state
    }

    /// Removes a subscription; a durable one's end is logged. Returns the log ticket.
    pub fn unregister(&self, key: &str) -> Result<u64, String> {
        let mut guard = self.log.lock();
        let Some(state) = lock(&self.registry).get(key).cloned() else { return Ok(0) };
        let mut ticket = 0;
        if state.durable {
            self.roll_if_full(&mut guard).map_err(|error| format!("cannot write the log: {error}"))?;
            ticket = guard
                .append(&Record::Unsubscribe { subscriber: key.to_string() })
                .map_err(|error| format!("cannot write the log: {error}"))?;
        }
        lock(&self.registry).remove(key);
        drop(guard);
        // What only this subscription still waited for may go now.
        self.log.mark_changed(0);
        Ok(ticket)
    }

    /// The subscription with this key, if any.
    pub fn subscription(&self, key: &str) -> Option<Arc<SubscriptionState>> {
        lock(&self.registry).get(key).cloned()
    }

    /// Every subscription.
    pub fn subscriptions(&self) -> Vec<Arc<SubscriptionState>> {
        lock(&self.registry).values().cloned().collect()
    }

    /// Compacts the log: keeps only events some subscription still needs.
    pub fn compact(&self) -> io::Result<super::log::CompactionReport> {
        let changed_from = self.log.take_changes();
        let snapshot: Vec<(u64, AckedSet)> =
            self.subscriptions().iter().map(|s| (s.start, lock(&s.acked).clone())).collect();
        self.log.compact(changed_from, |seq| {
            snapshot.iter().any(|(start, acked)| seq > *start && !acked.contains(seq))
        })
    }

    /// Stops the topic's stage: subscriptions end, delivery tasks finish.
    pub async fn shutdown(&self) {
        self.pipeline.lock().await.shutdown();
        let _ = self.log.sync_now().await;
    }
}
