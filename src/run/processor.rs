//! The task of a producer-consumer or consumer: receive, call back, dispatch.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use tokio::sync::{Notify, mpsc};

use super::inlet::{AfterEnd, Inlet};
use super::outlet::Outlet;
use super::{Control, Factory, TaskContext, panic_message, shutdown_requested};
use crate::StageError;
use crate::failure::{DeadLetter, FailurePolicy};
use crate::link::{DemandHandle, EndReason, Inbox, Subscriber};
use crate::metrics::{self, TimingSampler};
use crate::stage::{Emitter, Events, ProducerConsumer};
use crate::supervisor::RestartTracker;

/// A stage state and what keeps it supervised.
pub(crate) struct Supervised<P: ProducerConsumer> {
    pub(crate) stage: P,
    factory: Factory<P>,
    tracker: RestartTracker,
    context: TaskContext,
    manual: Vec<DemandHandle>,
    failure: Option<FailurePolicy<P::In>>,
    timing: TimingSampler,
}

impl<P: ProducerConsumer> Supervised<P> {
    pub(crate) fn new(
        factory: Factory<P>,
        context: TaskContext,
        manual: Vec<DemandHandle>,
        failure: Option<FailurePolicy<P::In>>,
    ) -> Self {
        let mut stage = factory();
        for handle in &manual {
            stage.handle_subscribe(handle.clone());
        }
        Supervised {
            stage,
            tracker: RestartTracker::new(context.restart),
            factory,
            context,
            manual,
            failure,
            timing: TimingSampler::default(),
        }
    }

    /// Whether the stage's last timed callback was slow (20 µs or more).
    pub(crate) fn is_slow(&self) -> bool {
        self.timing.is_slow()
    }

    /// A cursor over `batch` that keeps copies of the events being handled when the stage has a failure policy.
    pub(crate) fn events(&self, batch: Vec<P::In>) -> Events<P::In> {
        Events::keeping(batch, self.failure.as_ref().map(|policy| policy.keep.clone()))
    }

    /// After a panic on `held` (copies of the events it was handling and had
    /// not handled): tries each of them again, alone, on the restarted stage,
    /// up to `max_attempts` tries in all, then dead-letters it, or counts it
    /// lost without a handler. Alone, because a callback that took a whole
    /// batch may have handled some of it before the panic: trying the batch
    /// again would handle those twice, and giving up on it would dead-letter
    /// events that were fine.
    async fn try_again(
        &mut self,
        held: Vec<P::In>,
        error: String,
        out: &mut Emitter<P::Out>,
    ) -> Result<(), StageError> {
        let Some(policy) = self.failure.clone() else { return Ok(()) };
        for event in held {
            let (mut event, mut error, mut attempts) = (Some(event), error.clone(), 1);
            while attempts < policy.max_attempts {
                let Some(current) = event.take() else { break };
                attempts += 1;
                let again = (policy.keep)(&current);
                let mut events = Events::new(vec![current]);
                events.start_share(1);
                let result = AssertUnwindSafe(async { self.stage.handle_events(&mut events, out).await })
                    .catch_unwind()
                    .await;
                match result {
                    Ok(()) => {
                        metrics::add(&self.context.metrics.dropped, events.discard_share());
                        break;
                    }
                    Err(payload) => {
                        error = panic_message(payload.as_ref());
                        // Handled before the panic (a batch callback said so): nothing to try again.
                        let handled = events.in_progress(1) == 0;
                        self.crashed(error.clone(), usize::from(again.is_none() && !handled))?;
                        event = if handled { None } else { again };
                    }
                }
            }
            let Some(event) = event else { continue };
            match &policy.dead_letter {
                Some(handler) => {
                    let stage = self.context.stage.clone();
                    handler(DeadLetter { stage, error, attempts, event }).await;
                    metrics::add(&self.context.metrics.dead_lettered, 1);
                }
                None => metrics::add(&self.context.metrics.lost, 1),
            }
        }
        Ok(())
    }

    /// Counts a panic, restarts the stage, or escalates past the restart limit.
    fn crashed(&mut self, panic: String, lost: usize) -> Result<(), StageError> {
        metrics::add(&self.context.metrics.lost, lost);
        metrics::add(&self.context.metrics.restarts, 1);
        if let Err(escalation) = self.tracker.record(Instant::now()) {
            return Err(StageError::new(&self.context.stage, format!("{escalation}; last panic: {panic}")));
        }
        self.stage = (self.factory)();
        for handle in &self.manual {
            self.stage.handle_subscribe(handle.clone());
        }
        Ok(())
    }

    /// Runs `handle_events` on the next `chunk` events of the batch, restarting
    /// on panic; returns how many events left the batch and what was emitted.
    pub(crate) async fn handle_chunk(
        &mut self,
        events: &mut Events<P::In>,
        chunk: usize,
    ) -> Result<(usize, Vec<P::Out>), StageError> {
        events.start_share(chunk);
        let before = events.remaining_in_batch();
        let mut out = Emitter::default();
        let started = self.timing.should_time().then(Instant::now);
        let result =
            AssertUnwindSafe(async { self.stage.handle_events(events, &mut out).await }).catch_unwind().await;
        let taken = before - events.remaining_in_batch();
        match started {
            Some(started) => {
                let elapsed = started.elapsed();
                let weight = self.timing.timed(elapsed, taken);
                self.context.metrics.record_processing(elapsed, taken, weight);
            }
            None => self.timing.untimed(taken),
        }
        match result {
            Ok(()) => {
                let untaken = events.discard_share();
                metrics::add(&self.context.metrics.dropped, untaken);
            }
            Err(payload) => {
                let panic = panic_message(payload.as_ref());
                let held = events.take_held();
                // What the policy cannot retry (no copy was kept) is lost, as without one.
                let lost = events.in_progress(taken).saturating_sub(held.len());
                self.crashed(panic.clone(), lost)?;
                self.try_again(held, panic, &mut out).await?;
            }
        }
        Ok((before - events.remaining_in_batch(), out.take()))
    }

    async fn tick(&mut self) -> Result<Vec<P::Out>, StageError> {
        let mut out = Emitter::default();
        let result = AssertUnwindSafe(async { self.stage.handle_tick(&mut out).await }).catch_unwind().await;
        if let Err(payload) = result {
            self.crashed(panic_message(payload.as_ref()), 0)?;
        }
        Ok(out.take())
    }

    pub(crate) async fn flush(&mut self) -> Result<Vec<P::Out>, StageError> {
        let mut out = Emitter::default();
        let result = AssertUnwindSafe(async { self.stage.flush(&mut out).await }).catch_unwind().await;
        if let Err(payload) = result {
            self.crashed(panic_message(payload.as_ref()), 0)?;
        }
        Ok(out.take())
    }
}

/// Upstream credits a stage may ask for now.
///
/// A consumer asks freely within each subscription's bounds. A stage with
/// subscribers of its own asks only for what they asked it for and is not
/// already covered by what it holds — buffered, in hand, or asked for and not
/// yet arrived — so a stalled consumer stops the chain back to the source.
/// A stage joining several producers may also hold one window per
/// subscription in advance (see `Inlet::window`).
pub(crate) fn upstream_budget<I, O: Send + 'static>(
    outlet: Option<&Outlet<O>>,
    inlet: &Inlet<I>,
    in_hand: usize,
) -> usize {
    match outlet {
        None => usize::MAX,
        Some(outlet) => (outlet.allowance() + inlet.window())
            .saturating_sub(outlet.buffered() + inlet.in_flight() + in_hand),
    }
}

/// Messages a fast stage may take from its inbox before it asks upstream
/// again even though more are waiting, so a producer that keeps the inbox
/// busy (a manual subscription the stage keeps granting) cannot starve the
/// others of credits.
const MAX_DEFERRED_ASKS: u32 = 4;

/// Whether a stage asks upstream for the credits it has freed now, or after
/// the messages already waiting in its inbox.
///
/// A slow stage (its callbacks take 20 µs or more) asks after each chunk, as
/// GenStage does, so its producer works while it handles the rest. A fast
/// stage asks once its inbox is empty: the credits its messages free are
/// asked for together, and the ask does not wake the producer in the same
/// turn as the batches it just emitted wake the consumer. Two wake-ups in
/// one turn make tokio push the first task to its run queue and unpark the
/// other worker to steal it, which costs more than a fast stage's whole
/// batch. What is in flight never exceeds `max_demand` either way.
fn asks_at_once(slow: bool, inbox_empty: bool, deferred: u32) -> bool {
    slow || inbox_empty || deferred >= MAX_DEFERRED_ASKS
}

/// How many events of a batch of `batch` one callback takes: a slow stage
/// takes its subscription's `chunk` (`max_demand - min_demand`) and asks
/// upstream after each; a fast one asks only once its inbox is empty
/// ([`asks_at_once`]), so chunks would buy it nothing: it takes the whole
/// batch, whose events then move into the callback without a copy.
fn chunk_size(slow: bool, chunk: usize, batch: usize) -> usize {
    if slow { chunk } else { batch }
}

/// Answers a subscribe request to a stage that may be a consumer.
pub(crate) fn subscribe<O: Send + 'static>(
    outlet: &mut Option<Outlet<O>>,
    subscriber: Subscriber<O>,
    stage_id: &str,
) -> Result<(), String> {
    match outlet {
        Some(outlet) => outlet.subscribe(subscriber),
        None => Err(format!("stage '{stage_id}' is a consumer: it has no events to subscribe to")),
    }
}

/// Emits through the outlet of a stage that may be a consumer (which has none).
pub(crate) fn emit<O: Send + 'static>(outlet: &mut Option<Outlet<O>>, events: Vec<O>) {
    if let Some(outlet) = outlet {
        outlet.emit(events);
    }
}

/// Handles one inbox message: a batch (in chunks, asking upstream as it
/// goes) or the end of a subscription.
async fn handle_message<P: ProducerConsumer>(
    supervised: &mut Supervised<P>,
    inlet: &mut Inlet<P::In>,
    outlet: &mut Option<Outlet<P::Out>>,
    message: Inbox<P::In>,
    stage_id: &str,
) -> Result<(), StageError> {
    match message {
        Inbox::Events { link, batch } => {
            inlet.received(link, batch.len());
            let chunk = chunk_size(supervised.is_slow(), inlet.chunk(link), batch.len());
            let mut events = supervised.events(batch);
            while events.remaining_in_batch() > 0 {
                let (done, emitted) = supervised.handle_chunk(&mut events, chunk).await?;
                emit(outlet, emitted);
                inlet.processed(link, done);
                // A slow stage asks after each chunk; a fast one when its inbox is empty (see `asks_at_once`).
                if supervised.is_slow() {
                    let in_hand = events.remaining_in_batch();
                    inlet.top_up(upstream_budget(outlet.as_ref(), inlet, in_hand));
                }
            }
            Ok(())
        }
        Inbox::Done { link, reason } => match inlet.ended(link, &reason) {
            AfterEnd::Fail(why) => Err(StageError::new(stage_id, why)),
            AfterEnd::KeepRunning => Ok(()),
        },
    }
}

pub(crate) async fn run_processor<P: ProducerConsumer>(
    factory: Factory<P>,
    failure: Option<FailurePolicy<P::In>>,
    mut inlet: Inlet<P::In>,
    mut outlet: Option<Outlet<P::Out>>,
    mut control: mpsc::Receiver<Control<P::Out>>,
    wake: Arc<Notify>,
    context: TaskContext,
) -> Result<(), StageError> {
    let mut shutdown = context.shutdown.clone();
    let stage_id = context.stage.clone();
    let mut supervised = Supervised::new(factory, context, inlet.manual_handles(), failure);
    let mut ticker = supervised.stage.tick_interval().map(|period| {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker
    });
    let mut shutting_down = false;
    let mut inbox_open = true;
    let mut tick_due = false;
    let mut deferred_asks = 0;
    // One wake-up for everything but time: a message in the inbox, credits
    // a subscriber asked for and a subscribe request each notify `wake`, and
    // everything is checked before waiting, so a notification that comes in
    // between is kept as a permit, not lost. Parking registers one waker
    // instead of one per source.
    let failure = loop {
        if let Some(outlet) = &mut outlet {
            outlet.collect_asks();
            outlet.pump();
        }
        if asks_at_once(supervised.is_slow(), inlet.inbox.is_empty(), deferred_asks) {
            inlet.top_up(upstream_budget(outlet.as_ref(), &inlet, 0));
            deferred_asks = 0;
        } else {
            deferred_asks += 1;
        }
        if inlet.finished(shutting_down) {
            break None;
        }
        // A due tick goes first, so a steady stream of events cannot starve it.
        if tick_due || ticker.as_mut().is_some_and(|ticker| ticker.tick().now_or_never().is_some()) {
            tick_due = false;
            match supervised.tick().await {
                Ok(events) => emit(&mut outlet, events),
                Err(error) => break Some(error),
            }
            continue;
        }
        if inbox_open {
            match inlet.inbox.try_recv() {
                Ok(message) => {
                    match handle_message(&mut supervised, &mut inlet, &mut outlet, message, &stage_id).await {
                        Ok(()) => continue,
                        Err(error) => break Some(error),
                    }
                }
                // Every producer is gone; a transient or temporary stage
                // still waits for shutdown.
                Err(mpsc::error::TryRecvError::Disconnected) => inbox_open = false,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
        }
        if let Ok(Control::Subscribe(subscriber, reply)) = control.try_recv() {
            let _ = reply.send(subscribe(&mut outlet, subscriber, &stage_id));
            continue;
        }
        tokio::select! {
            biased;
            _ = async { ticker.as_mut().expect("guarded").tick().await }, if ticker.is_some() => tick_due = true,
            _ = shutdown_requested(&mut shutdown), if !shutting_down && inlet.waits_for_shutdown() => shutting_down = true,
            _ = wake.notified() => {}
        }
    };
    if let Some(error) = failure {
        if let Some(outlet) = &mut outlet {
            outlet.finish(EndReason::Failed(error.message.clone()));
        }
        return Err(error);
    }
    let flushed = supervised.flush().await?;
    if let Some(outlet) = &mut outlet {
        outlet.emit(flushed);
        outlet.drain(&mut control).await;
        outlet.finish(EndReason::Normal);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fast_stage_asks_once_its_inbox_is_empty_or_after_a_few_messages_a_slow_one_at_once() {
        assert!(!asks_at_once(false, false, 0));
        assert!(!asks_at_once(false, false, MAX_DEFERRED_ASKS - 1));
        assert!(asks_at_once(false, false, MAX_DEFERRED_ASKS));
        assert!(asks_at_once(false, true, 0));
        assert!(asks_at_once(true, false, 0));
    }

    #[test]
    fn a_fast_stage_takes_a_batch_whole_a_slow_one_in_chunks() {
        assert_eq!(chunk_size(false, 500, 1000), 1000);
        assert_eq!(chunk_size(false, 500, 3), 3);
        assert_eq!(chunk_size(true, 500, 1000), 500);
        assert_eq!(chunk_size(true, 500, 3), 500, "the callback then takes the 3 there are");
    }
}
