//! Dispatchers decide which subscriber gets which event, within the credits
//! each subscriber granted.
//!
//! A dispatcher is a plain state machine with no I/O: the producer's task
//! tells it about subscriptions and credits, hands it events, and sends the
//! deliveries it returns. Events it cannot place (no credits) come back as
//! leftovers, which the producer keeps in its bounded buffer in order, ahead
//! of anything produced later. The partition dispatcher instead keeps such
//! events itself, one queue per partition ([`Dispatcher::held`]), so an
//! event waiting for its partition is not looked at again on every
//! dispatch; the producer counts them with its buffer.

mod broadcast;
mod demand;
pub(crate) mod partition;

pub use broadcast::BroadcastDispatcher;
pub use demand::DemandDispatcher;
pub use partition::{PartitionDispatcher, PartitionFn};

use std::sync::Arc;

use crate::buffer::BufferKeep;

/// Identifies one subscription at its producer.
pub type SubscriberId = u64;

/// A per-subscriber filter for the broadcast dispatcher: events it rejects are not sent to that subscriber.
pub type Selector<T> = Arc<dyn Fn(&T) -> bool + Send + Sync>;

/// What a subscriber tells the producer's dispatcher when it subscribes.
pub struct DispatchOptions<T> {
    /// The partition this subscriber takes (partition dispatcher only).
    pub partition: Option<usize>,
    /// Only events this accepts are sent (broadcast dispatcher only).
    pub selector: Option<Selector<T>>,
}

impl<T> Default for DispatchOptions<T> {
    fn default() -> Self {
        DispatchOptions { partition: None, selector: None }
    }
}

impl<T> Clone for DispatchOptions<T> {
    fn clone(&self) -> Self {
        DispatchOptions { partition: self.partition, selector: self.selector.clone() }
    }
}

/// Batches ready to send: one `(subscriber, events)` per delivery.
pub type Deliveries<T> = Vec<(SubscriberId, Vec<T>)>;

/// How a producer's events are spread over its subscribers.
pub trait Dispatcher<T>: Send + 'static {
    /// Adds a subscriber with no credits yet; errors say why the options do not fit.
    fn subscribe(&mut self, subscriber: SubscriberId, options: &DispatchOptions<T>) -> Result<(), String>;

    /// Removes a subscriber and forgets its credits.
    fn cancel(&mut self, subscriber: SubscriberId);

    /// Adds credits granted by a subscriber.
    fn ask(&mut self, subscriber: SubscriberId, credits: usize);

    /// How many events `dispatch` could place right now.
    fn allowance(&self) -> usize;

    /// Credits a subscriber holds right now (0 if unknown).
    fn credits(&self, subscriber: SubscriberId) -> usize;

    /// Number of subscribers.
    fn subscriber_count(&self) -> usize;

    /// Places events, in order, within credits; appends to `deliveries` and
    /// returns the events that could not be placed, in their original order.
    fn dispatch(&mut self, events: Vec<T>, deliveries: &mut Deliveries<T>) -> Vec<T>;

    /// Whether `dispatch` may keep events itself (see `held`) instead of
    /// placing them all within `allowance`: then any event made may wait, and
    /// the producer makes no more than its buffer has room for.
    fn may_hold(&self) -> bool {
        false
    }

    /// Events the dispatcher keeps itself until their subscriber has credits
    /// (the partition dispatcher's per-partition queues), instead of returning
    /// them as leftovers; the producer counts them with its buffer.
    fn held(&self) -> usize {
        0
    }

    /// Places held events within credits, oldest first per subscriber.
    fn release(&mut self, deliveries: &mut Deliveries<T>) {
        let _ = deliveries;
    }

    /// Drops held events past `capacity`, the newest (`First`) or the oldest
    /// (`Last`) as the producer's buffer does; returns how many went.
    fn trim(&mut self, capacity: usize, keep: BufferKeep) -> usize {
        let _ = (capacity, keep);
        0
    }
}

/// Splits off the first `count` events, moving the whole vector when it all goes.
pub(crate) fn take_front<T>(events: &mut Vec<T>, count: usize) -> Vec<T> {
    if count >= events.len() {
        return std::mem::take(events);
    }
    let rest = events.split_off(count);
    std::mem::replace(events, rest)
}
