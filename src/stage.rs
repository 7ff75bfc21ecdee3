//! The three kinds of stage, and the cursor and emitter their callbacks use.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::DemandHandle;
use crate::failure::KeepFn;

/// Whether a producer has more to give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Call `produce` again while there is demand. A call that emitted
    /// nothing makes the producer quiet: it is called again only when new
    /// credits arrive or its [`Wakeup`] is woken, so it costs nothing meanwhile.
    Continue,
    /// The source is exhausted: what was emitted is delivered, then the producer ends.
    Done,
}

/// Lets a quiet producer say "I have events now" from anywhere.
///
/// A producer whose `produce` returned [`Flow::Continue`] without emitting is
/// not called again until new demand arrives (as GenStage calls
/// `handle_demand` only for new demand) or this is woken. A source fed from
/// outside (a channel, a callback, a timer) keeps the handle it gets in
/// [`Producer::handle_wakeup`] and calls [`Wakeup::wake`] when it has
/// something; a wake-up while `produce` runs is remembered. Waking a producer
/// that is not quiet costs one extra pass of its task loop.
#[derive(Debug, Clone)]
pub struct Wakeup {
    pub(crate) notify: Arc<Notify>,
}

impl Wakeup {
    pub(crate) fn new() -> Self {
        Wakeup { notify: Arc::new(Notify::new()) }
    }

    /// Asks the engine to call `produce` again (if demand or `PUSH` allows).
    pub fn wake(&self) {
        self.notify.notify_one();
    }
}

/// The events handed to a callback, taken one at a time.
///
/// The engine knows how far a callback got: if it panics, the event it took
/// last is the one lost (and counted); the events it had not taken yet are
/// handed to the restarted stage. Events a callback leaves untaken when it
/// returns are discarded and counted as dropped.
pub struct Events<T> {
    items: std::vec::IntoIter<T>,
    limit: usize,
    /// Events taken by the last `take_batch`, all "being processed" at once.
    bulk_taken: usize,
    /// Of those, how many the callback said it has handled (see [`Events::handled`]).
    bulk_handled: usize,
    /// Copies the events being processed, for a stage with a failure policy.
    keep: Option<KeepFn<T>>,
    /// Copies of the events being processed (the last taken, or the last
    /// `take_batch`, in order; `None` where the keep function made no copy).
    held: Vec<Option<T>>,
}

impl<T: std::fmt::Debug> std::fmt::Debug for Events<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("items", &self.items)
            .field("limit", &self.limit)
            .field("bulk_taken", &self.bulk_taken)
            .field("bulk_handled", &self.bulk_handled)
            .field("keeps_copies", &self.keep.is_some())
            .finish()
    }
}

impl<T> Events<T> {
    /// A cursor over a batch (used by tests and custom runners).
    pub fn new(batch: Vec<T>) -> Self {
        let limit = batch.len();
        Events {
            items: batch.into_iter(),
            limit,
            bulk_taken: 0,
            bulk_handled: 0,
            keep: None,
            held: Vec::new(),
        }
    }

    /// A cursor that keeps a copy of each event being processed, so it can be
    /// tried again or dead-lettered if the callback panics.
    pub(crate) fn keeping(batch: Vec<T>, keep: Option<KeepFn<T>>) -> Self {
        Events { keep, ..Events::new(batch) }
    }

    /// Takes the copies of the events being processed, less those of a
    /// `take_batch` the callback said it handled (empty without a keep function).
    pub(crate) fn take_held(&mut self) -> Vec<T> {
        let handled = self.bulk_handled;
        std::mem::take(&mut self.held).into_iter().skip(handled).flatten().collect()
    }

    /// Takes every event left for this callback at once, as a vector (no
    /// copy when the callback's share is the whole batch), for callbacks that
    /// work on slices. If the callback panics afterwards, all of these count
    /// as being processed (tried again, dead-lettered or lost, as the stage's
    /// failure policy says), not just one — except those it said it
    /// [`handled`](Events::handled).
    pub fn take_batch(&mut self) -> Vec<T> {
        let share = self.remaining();
        let batch: Vec<T> = if share == self.items.len() {
            // Collecting a whole `vec::IntoIter` reuses its allocation.
            std::mem::replace(&mut self.items, Vec::new().into_iter()).collect()
        } else {
            self.items.by_ref().take(share).collect()
        };
        self.limit = 0;
        self.bulk_taken = batch.len();
        self.bulk_handled = 0;
        if let Some(keep) = &self.keep {
            self.held = batch.iter().map(|event| keep(event)).collect();
        }
        batch
    }

    /// Says that the first `count` events of the last [`take_batch`](Events::take_batch)
    /// are handled for good (their effects are done). If the callback panics
    /// afterwards, only the others are tried again or dead-lettered, so an
    /// event is never handled twice. A callback that takes a batch and has
    /// effects per event (writes, emits) calls this as it goes:
    ///
    /// ```
    /// # use stageflow::Events;
    /// # fn write(_: &u64) {}
    /// # let mut events = Events::new(vec![1u64, 2, 3]);
    /// let batch = events.take_batch();
    /// for (done, event) in batch.iter().enumerate() {
    ///     write(event);
    ///     events.handled(done + 1);
    /// }
    /// ```
    ///
    /// Counts only grow (a smaller `count` than before is ignored) and stop at
    /// the batch's size. Without a `take_batch` it does nothing: events taken
    /// one at a time are tracked by the engine already.
    pub fn handled(&mut self, count: usize) {
        self.bulk_handled = self.bulk_handled.max(count).min(self.bulk_taken);
    }

    /// Events lost if the callback panicked now: the last one taken, or what
    /// the last `take_batch` took and the callback did not say it handled.
    pub(crate) fn in_progress(&self, taken: usize) -> usize {
        if self.bulk_taken > 0 { self.bulk_taken - self.bulk_handled } else { taken.min(1) }
    }

    /// Starts a callback's share: at most `limit` events.
    pub(crate) fn start_share(&mut self, limit: usize) {
        self.limit = limit;
        self.bulk_taken = 0;
        self.bulk_handled = 0;
        self.held.clear();
    }

    /// Events left for this callback.
    pub fn remaining(&self) -> usize {
        self.limit.min(self.items.len())
    }

    /// Events left in the whole batch, past this callback's share too.
    pub(crate) fn remaining_in_batch(&self) -> usize {
        self.items.len()
    }

    /// Throws away what the callback left of its share; returns how many.
    pub(crate) fn discard_share(&mut self) -> usize {
        let count = self.remaining();
        for _ in 0..count {
            self.items.next();
        }
        self.limit = 0;
        count
    }
}

impl<T> Iterator for Events<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        if self.limit == 0 {
            return None;
        }
        let item = self.items.next()?;
        self.limit -= 1;
        self.bulk_taken = 0;
        self.bulk_handled = 0;
        if let Some(keep) = &self.keep {
            self.held.clear();
            self.held.push(keep(&item));
        }
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let remaining = self.remaining();
        (remaining, Some(remaining))
    }
}

impl<T> ExactSizeIterator for Events<T> {}

/// Where a callback puts the events it produces.
///
/// The engine owns it, so events emitted before a panic are still delivered.
#[derive(Debug)]
pub struct Emitter<T> {
    events: Vec<T>,
}

impl<T> Default for Emitter<T> {
    fn default() -> Self {
        Emitter { events: Vec::new() }
    }
}

impl<T> Emitter<T> {
    /// An emitter with room for `capacity` events before it reallocates.
    pub fn with_capacity(capacity: usize) -> Self {
        Emitter { events: Vec::with_capacity(capacity) }
    }

    /// Emits one event.
    pub fn emit(&mut self, event: T) {
        self.events.push(event);
    }

    /// Emits a batch of events, moving the vector when nothing was emitted yet.
    pub fn emit_batch(&mut self, mut batch: Vec<T>) {
        if self.events.is_empty() {
            self.events = batch;
        } else {
            self.events.append(&mut batch);
        }
    }

    /// Number of events emitted so far.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether nothing was emitted.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Takes the emitted events, leaving the emitter empty.
    pub fn take(&mut self) -> Vec<T> {
        std::mem::take(&mut self.events)
    }
}

impl<T> Extend<T> for Emitter<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, iter: I) {
        self.events.extend(iter);
    }
}

/// A stage that creates events in answer to demand.
///
/// `produce` is called with the credits the producer holds and not yet
/// covered by its buffer; it may emit fewer or, for push sources, more: the
/// excess waits in the bounded buffer. While `produce` waits, demand that
/// arrives is remembered and served by the next call.
///
/// A source that has nothing yet either waits inside `produce` (for a
/// channel, a socket) or returns [`Flow::Continue`] having emitted nothing.
/// The producer is then quiet: `produce` is not called again until new
/// credits arrive or the producer's [`Wakeup`] is woken, so a quiet producer
/// costs nothing. On shutdown a call in progress is cancelled at its next
/// `.await`; what it emitted before is delivered.
pub trait Producer: Send + 'static {
    /// The events it emits.
    type Out: Send + 'static;

    /// Called even without demand: for sources that push whatever arrives
    /// (events beyond demand go to the bounded buffer, dropped by its policy).
    const PUSH: bool = false;

    /// Ends with the pipeline's data instead of running until shutdown: for
    /// auxiliary producers (statistics, periodic reports, anything timer-only).
    /// Once every stage that is not a follower, and not fed by one, has
    /// ended, the producer is stopped: a `produce` call in progress is
    /// cancelled, `flush` emits its last word, that is delivered, and it
    /// ends. In a pipeline of followers only, it runs until shutdown.
    const FOLLOWS_SOURCES: bool = false;

    /// Emits up to `demand` events into `out`; `Flow::Done` when exhausted.
    fn produce(&mut self, demand: usize, out: &mut Emitter<Self::Out>) -> impl Future<Output = Flow> + Send;

    /// Runs once when the producer is stopped before it returned `Flow::Done`
    /// (at shutdown, or when the data it follows has ended): emit a final
    /// frame covering the tail. `demand` is the credits it holds not covered
    /// by its buffer; what it emits beyond them waits in the buffer while
    /// the producer drains.
    fn flush(&mut self, demand: usize, out: &mut Emitter<Self::Out>) -> impl Future<Output = ()> + Send {
        let _ = (demand, out);
        async {}
    }

    /// Hands over the handle that ends quiet (called before the first
    /// `produce`, and again after every restart): keep it if events can
    /// arrive while the producer is quiet.
    fn handle_wakeup(&mut self, wakeup: Wakeup) {
        let _ = wakeup;
    }
}

/// A stage that consumes events and emits others: map, filter, join, window.
pub trait ProducerConsumer: Send + 'static {
    /// The events it takes.
    type In: Send + 'static;
    /// The events it emits.
    type Out: Send + 'static;

    /// Takes events from `events` and emits results into `out`.
    fn handle_events(
        &mut self,
        events: &mut Events<Self::In>,
        out: &mut Emitter<Self::Out>,
    ) -> impl Future<Output = ()> + Send;

    /// How often `handle_tick` runs (timers: windows, flush intervals); `None` for never.
    fn tick_interval(&self) -> Option<Duration> {
        None
    }

    /// Runs every `tick_interval`.
    fn handle_tick(&mut self, out: &mut Emitter<Self::Out>) -> impl Future<Output = ()> + Send {
        let _ = out;
        async {}
    }

    /// Runs once when every producer it subscribes to has ended: emit what is held back.
    fn flush(&mut self, out: &mut Emitter<Self::Out>) -> impl Future<Output = ()> + Send {
        let _ = out;
        async {}
    }

    /// Called for each subscription in manual demand mode (and again after a restart).
    fn handle_subscribe(&mut self, upstream: DemandHandle) {
        let _ = upstream;
    }
}

/// A stage at the end of a pipeline: sinks, printers, counters.
pub trait Consumer: Send + 'static {
    /// The events it takes.
    type In: Send + 'static;

    /// Takes events from `events` and does its work with them.
    fn handle_events(&mut self, events: &mut Events<Self::In>) -> impl Future<Output = ()> + Send;

    /// How often `handle_tick` runs; `None` for never.
    fn tick_interval(&self) -> Option<Duration> {
        None
    }

    /// Runs every `tick_interval`.
    fn handle_tick(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Runs once when every producer it subscribes to has ended: write out what is held back.
    fn flush(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Called for each subscription in manual demand mode (and again after a restart).
    fn handle_subscribe(&mut self, upstream: DemandHandle) {
        let _ = upstream;
    }
}

/// Runs a consumer where a producer-consumer is expected; it emits nothing.
pub(crate) struct AsProcessor<C>(pub(crate) C);

/// The event type of a side a stage does not have (a producer's input, a consumer's output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nothing {}

impl<C: Consumer> ProducerConsumer for AsProcessor<C> {
    type In = C::In;
    type Out = Nothing;

    fn handle_events(
        &mut self,
        events: &mut Events<C::In>,
        _: &mut Emitter<Nothing>,
    ) -> impl Future<Output = ()> + Send {
        self.0.handle_events(events)
    }

    fn tick_interval(&self) -> Option<Duration> {
        self.0.tick_interval()
    }

    fn handle_tick(&mut self, _: &mut Emitter<Nothing>) -> impl Future<Output = ()> + Send {
        self.0.handle_tick()
    }

    fn flush(&mut self, _: &mut Emitter<Nothing>) -> impl Future<Output = ()> + Send {
        self.0.flush()
    }

    fn handle_subscribe(&mut self, upstream: DemandHandle) {
        self.0.handle_subscribe(upstream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_respect_the_limit_and_discard_the_rest_of_a_share() {
        let mut events = Events::new(vec![1, 2, 3, 4, 5]);
        events.start_share(2);
        assert_eq!(events.by_ref().collect::<Vec<_>>(), vec![1, 2]);
        events.start_share(2);
        assert_eq!(events.next(), Some(3));
        assert_eq!(events.discard_share(), 1);
        assert_eq!(events.remaining_in_batch(), 1);
    }

    #[test]
    fn take_batch_takes_the_share_and_counts_it_in_progress() {
        let mut events = Events::new(vec![1, 2, 3, 4, 5]);
        events.start_share(2);
        assert_eq!(events.take_batch(), vec![1, 2]);
        assert_eq!(events.in_progress(2), 2);
        events.start_share(10);
        assert_eq!(events.next(), Some(3));
        assert_eq!(events.in_progress(1), 1);
        assert_eq!(events.take_batch(), vec![4, 5]);
        assert_eq!(events.remaining_in_batch(), 0);
    }

    #[test]
    fn events_a_batch_callback_handled_are_no_longer_in_progress_nor_held() {
        let keep: KeepFn<u64> = Arc::new(|event: &u64| (*event != 3).then_some(*event));
        let mut events = Events::keeping(vec![1, 2, 3, 4, 5], Some(keep));
        events.start_share(5);
        assert_eq!(events.take_batch(), vec![1, 2, 3, 4, 5]);
        events.handled(2);
        events.handled(1);
        assert_eq!(events.in_progress(5), 3, "a smaller count is ignored");
        assert_eq!(events.take_held(), vec![4, 5], "no copy of 3 was made; 1 and 2 are handled");
        events.start_share(0);
        events.handled(9);
        assert_eq!(events.in_progress(0), 0, "nothing taken, nothing handled");
    }

    #[test]
    fn emit_batch_moves_into_an_empty_emitter() {
        let mut out = Emitter::default();
        out.emit_batch(vec![1, 2]);
        out.emit(3);
        out.emit_batch(vec![4]);
        assert_eq!(out.take(), vec![1, 2, 3, 4]);
        assert!(out.is_empty());
    }
}
