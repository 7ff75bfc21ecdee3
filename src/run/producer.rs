//! The producer task: calls `produce` as credits allow and dispatches what it emits.
//!
//! A call that returns `Flow::Continue` having emitted nothing makes the
//! producer quiet: it is not called again until new credits arrive or its
//! `Wakeup` is woken (GenStage calls `handle_demand` only for new demand), so
//! a source with nothing to give costs nothing instead of spinning.
//!
//! A producer that follows the pipeline's data is stopped like at shutdown
//! once the data has ended; either way `flush` then has its say.

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch};

use super::follow::data_ended;
use super::outlet::Outlet;
use super::{Control, Factory, TaskContext, panic_message, shutdown_requested};
use crate::StageError;
use crate::link::EndReason;
use crate::metrics;
use crate::stage::{Emitter, Flow, Producer, Wakeup};
use crate::supervisor::RestartTracker;

/// How one `produce` call ended.
enum Outcome {
    Returned(Flow),
    /// Cancelled at an `.await` because the producer is stopping.
    Stopped,
    Panicked(String),
}

type Production<P> = (P, Emitter<<P as Producer>::Out>, Outcome);

/// One `produce` call that owns the producer and gives it back when it
/// ends, also when it is cancelled by `stop`, so what it emitted is kept.
fn start_production<P: Producer>(
    mut producer: P,
    demand: usize,
    mut stop: watch::Receiver<bool>,
) -> BoxFuture<'static, Production<P>> {
    Box::pin(async move {
        let mut out = Emitter::with_capacity(demand.min(65_536));
        let call = AssertUnwindSafe(async {
            tokio::select! {
                biased;
                flow = producer.produce(demand, &mut out) => Outcome::Returned(flow),
                _ = stop.wait_for(|stopped| *stopped) => Outcome::Stopped,
            }
        });
        let outcome = call
            .catch_unwind()
            .await
            .unwrap_or_else(|payload| Outcome::Panicked(panic_message(payload.as_ref())));
        (producer, out, outcome)
    })
}

/// What the task loop keeps between `produce` calls.
struct State<P: Producer> {
    factory: Factory<P>,
    wakeup: Wakeup,
    idle: Option<P>,
    tracker: RestartTracker,
    exhausted: bool,
    quiet: bool,
}

impl<P: Producer> State<P> {
    fn fresh(&self) -> P {
        let mut producer = (self.factory)();
        producer.handle_wakeup(self.wakeup.clone());
        producer
    }

    /// Runs `flush` once, delivering what it emits; a panic in it counts as a crash.
    async fn flush(&mut self, outlet: &mut Outlet<P::Out>, context: &TaskContext) -> Result<(), StageError> {
        let mut producer = self.idle.take().unwrap_or_else(|| self.fresh());
        let demand = outlet.production_demand();
        let mut out = Emitter::default();
        let flushed = AssertUnwindSafe(producer.flush(demand, &mut out)).catch_unwind().await;
        let outcome = match flushed {
            Ok(()) => Outcome::Returned(Flow::Done),
            Err(payload) => Outcome::Panicked(panic_message(payload.as_ref())),
        };
        self.settle((producer, out, outcome), outlet, context).await
    }

    /// Delivers what a `produce` call emitted and supervises its outcome.
    async fn settle(
        &mut self,
        (producer, mut out, outcome): Production<P>,
        outlet: &mut Outlet<P::Out>,
        context: &TaskContext,
    ) -> Result<(), StageError> {
        let emitted = out.take();
        let nothing = emitted.is_empty();
        outlet.emit(emitted);
        match outcome {
            Outcome::Returned(flow) => {
                self.idle = Some(producer);
                self.exhausted = flow == Flow::Done;
                self.quiet = nothing;
            }
            Outcome::Stopped => self.idle = Some(producer),
            Outcome::Panicked(panic) => {
                drop(producer);
                metrics::add(&context.metrics.restarts, 1);
                if let Err(escalation) = self.tracker.record(Instant::now()) {
                    let error = StageError::new(&context.stage, format!("{escalation}; last panic: {panic}"));
                    outlet.finish(EndReason::Failed(error.message.clone()));
                    return Err(error);
                }
                self.quiet = false;
            }
        }
        Ok(())
    }
}

/// Runs a producer; `follows` is set when it ends with the pipeline's data.
pub(crate) async fn run_producer<P: Producer>(
    factory: Factory<P>,
    mut outlet: Outlet<P::Out>,
    mut control: mpsc::Receiver<Control<P::Out>>,
    mut context: TaskContext,
    mut follows: Option<watch::Receiver<bool>>,
) -> Result<(), StageError> {
    let mut state = State {
        factory,
        wakeup: Wakeup::new(),
        idle: None,
        tracker: RestartTracker::new(context.restart),
        exhausted: false,
        quiet: false,
    };
    state.idle = Some(state.fresh());
    let wakeup = state.wakeup.notify.clone();
    let wake = outlet.wake.clone();
    let (stop, stopped) = watch::channel(false);
    let mut producing: Option<BoxFuture<'static, Production<P>>> = None;
    loop {
        if outlet.collect_asks() > 0 {
            state.quiet = false;
        }
        outlet.pump();
        let data_gone = follows.as_ref().is_some_and(|ended| *ended.borrow());
        if state.exhausted || data_gone || *context.shutdown.borrow() {
            break;
        }
        if producing.is_none() && !state.quiet {
            let demand = outlet.production_demand();
            if demand > 0 || P::PUSH {
                let producer = state.idle.take().unwrap_or_else(|| state.fresh());
                producing = Some(start_production(producer, demand, stopped.clone()));
            }
        }
        // Fast path: a source that has its events at hand returns on the
        // first poll; only a waiting source needs the select below. The
        // budget check makes a busy source yield now and then, so it cannot
        // hold a current-thread runtime (and its timers) to itself.
        if let Some(finished) = producing.as_mut().and_then(|production| production.now_or_never()) {
            producing = None;
            state.settle(finished, &mut outlet, &context).await?;
            tokio::task::consume_budget().await;
            continue;
        }
        tokio::select! {
            biased;
            // First, so a source that is always ready cannot starve shutdown.
            _ = shutdown_requested(&mut context.shutdown) => break,
            _ = data_ended(&mut follows) => break,
            Some(Control::Subscribe(subscriber, reply)) = control.recv() => {
                let _ = reply.send(outlet.subscribe(subscriber));
            }
            finished = async { producing.as_mut().expect("guarded").await }, if producing.is_some() => {
                producing = None;
                state.settle(finished, &mut outlet, &context).await?;
            }
            _ = wake.notified() => {}
            _ = wakeup.notified() => state.quiet = false,
        }
    }
    // Stop the source: a call in progress is cancelled at its next `.await`,
    // so nothing more is accepted; what it emitted is delivered.
    if let Some(production) = producing.take() {
        let _ = stop.send(true);
        let finished = production.await;
        state.settle(finished, &mut outlet, &context).await?;
    }
    if !state.exhausted {
        state.flush(&mut outlet, &context).await?;
    }
    outlet.drain(&mut control).await;
    outlet.finish(EndReason::Normal);
    Ok(())
}
