//! The producer task: calls `produce` as credits allow and dispatches what it emits.

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::outlet::Outlet;
use super::{Control, Factory, TaskContext, panic_message, shutdown_requested};
use crate::StageError;
use crate::link::EndReason;
use crate::metrics;
use crate::stage::{Emitter, Flow, Producer};
use crate::supervisor::RestartTracker;

type Production<P> = (P, Emitter<<P as Producer>::Out>, Result<Flow, String>);

fn start_production<P: Producer>(mut producer: P, demand: usize) -> BoxFuture<'static, Production<P>> {
    Box::pin(async move {
        let mut out = Emitter::with_capacity(demand.min(65_536));
        let started =
            AssertUnwindSafe(async { producer.produce(demand, &mut out).await }).catch_unwind().await;
        let result = started.map_err(|payload| panic_message(payload.as_ref()));
        (producer, out, result)
    })
}

pub(crate) async fn run_producer<P: Producer>(
    factory: Factory<P>,
    mut outlet: Outlet<P::Out>,
    mut control: mpsc::Receiver<Control<P::Out>>,
    mut context: TaskContext,
) -> Result<(), StageError> {
    let mut idle: Option<P> = Some(factory());
    let mut producing: Option<BoxFuture<'static, Production<P>>> = None;
    let mut tracker = RestartTracker::new(context.restart);
    let mut exhausted = false;
    let wake = outlet.wake.clone();
    loop {
        outlet.collect_asks();
        outlet.pump().await;
        if exhausted {
            break;
        }
        if producing.is_none() {
            let demand = outlet.production_demand();
            if demand > 0 || P::PUSH {
                let producer = idle.take().unwrap_or_else(|| factory());
                producing = Some(start_production(producer, demand));
            }
        }
        // Fast path: a source that has its events at hand returns on the
        // first poll; only a waiting source needs the select below.
        let ready = match (&mut producing, *context.shutdown.borrow()) {
            (Some(production), false) => production.now_or_never(),
            _ => None,
        };
        if let Some(finished) = ready {
            producing = None;
            match finish_production(finished, &mut tracker, &mut outlet, &context).await? {
                Some((producer, flow)) => {
                    idle = Some(producer);
                    exhausted = flow == Flow::Done;
                }
                None => idle = Some(factory()),
            }
            continue;
        }
        tokio::select! {
            biased;
            finished = async { producing.as_mut().expect("guarded").await }, if producing.is_some() => {
                producing = None;
                match finish_production(finished, &mut tracker, &mut outlet, &context).await? {
                    Some((producer, flow)) => {
                        idle = Some(producer);
                        exhausted = flow == Flow::Done;
                    }
                    None => idle = Some(factory()),
                }
            }
            _ = wake.notified() => {}
            Some(Control::Subscribe(subscriber, reply)) = control.recv() => {
                let _ = reply.send(outlet.subscribe(subscriber));
            }
            _ = shutdown_requested(&mut context.shutdown) => {
                // Stop the source: an unfinished `produce` call is dropped,
                // so nothing more is accepted; what was emitted is delivered.
                producing = None;
                break;
            }
        }
    }
    drop(producing);
    outlet.drain().await;
    outlet.finish(EndReason::Normal).await;
    Ok(())
}

/// Delivers what a `produce` call emitted and supervises its outcome:
/// the producer back with its flow, `None` after a panic (restart it), or
/// the escalated failure.
async fn finish_production<P: Producer>(
    (producer, mut out, result): Production<P>,
    tracker: &mut RestartTracker,
    outlet: &mut Outlet<P::Out>,
    context: &TaskContext,
) -> Result<Option<(P, Flow)>, StageError> {
    outlet.emit(out.take()).await;
    match result {
        Ok(flow) => Ok(Some((producer, flow))),
        Err(panic) => {
            drop(producer);
            metrics::add(&context.metrics.restarts, 1);
            if let Err(escalation) = tracker.record(Instant::now()) {
                let error = StageError::new(&context.stage, format!("{escalation}; last panic: {panic}"));
                outlet.finish(EndReason::Failed(error.message.clone())).await;
                return Err(error);
            }
            Ok(None)
        }
    }
}
