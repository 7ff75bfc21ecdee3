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
        outlet.collect_asks().await;
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
        tokio::select! {
            biased;
            (producer, mut out, result) = async { producing.as_mut().expect("guarded").await }, if producing.is_some() => {
                producing = None;
                match result {
                    Ok(flow) => {
                        idle = Some(producer);
                        exhausted = flow == Flow::Done;
                    }
                    Err(panic) => {
                        drop(producer);
                        metrics::add(&context.metrics.restarts, 1);
                        if let Err(escalation) = tracker.record(Instant::now()) {
                            let error = StageError::new(&context.stage, format!("{escalation}; last panic: {panic}"));
                            outlet.emit(out.take()).await;
                            outlet.finish(EndReason::Failed(error.message.clone())).await;
                            return Err(error);
                        }
                        idle = Some(factory());
                    }
                }
                outlet.emit(out.take()).await;
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
