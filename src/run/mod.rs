//! The tasks that run stages: one per producer, producer-consumer and
//! consumer, plus one per pool worker.

pub(crate) mod follow;
pub(crate) mod inlet;
pub(crate) mod outlet;
pub(crate) mod pool;
pub(crate) mod processor;
pub(crate) mod producer;

use std::any::Any;
use std::sync::Arc;

use tokio::sync::{Notify, mpsc, watch};

use crate::link::Subscriber;
use crate::metrics::StageMetrics;
use crate::supervisor::RestartPolicy;

/// Builds a fresh stage state, at start and after every restart.
pub(crate) type Factory<S> = Arc<dyn Fn() -> S + Send + Sync>;

/// A request to a running producer.
pub(crate) enum Control<T> {
    Subscribe(Subscriber<T>, tokio::sync::oneshot::Sender<Result<(), String>>),
}

/// Capacity of a producer's control channel.
pub(crate) const CONTROL_CAPACITY: usize = 16;

/// What every stage task is started with.
#[derive(Clone)]
pub(crate) struct TaskContext {
    pub(crate) stage: String,
    pub(crate) restart: RestartPolicy,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) metrics: Arc<StageMetrics>,
}

/// A stage's control channel, type-erased for the pipeline handle.
pub(crate) type ErasedControl = Box<dyn Any + Send + Sync>;

/// The sending end of a stage's control channel; each request also
/// notifies the stage's wake-up, so a stage task can wait on that alone.
pub(crate) struct ControlSender<T> {
    channel: mpsc::Sender<Control<T>>,
    stage_wake: Arc<Notify>,
}

impl<T: Send + 'static> ControlSender<T> {
    /// Sends a request, waiting for room; fails once the stage has ended.
    pub(crate) async fn send(&self, request: Control<T>) -> Result<(), ()> {
        self.channel.send(request).await.map_err(|_| ())?;
        self.stage_wake.notify_one();
        Ok(())
    }
}

/// A control channel of the stage that waits on `stage_wake`.
pub(crate) fn control_channel<T: Send + 'static>(
    stage_wake: Arc<Notify>,
) -> (ControlSender<T>, mpsc::Receiver<Control<T>>) {
    let (channel, receiver) = mpsc::channel(CONTROL_CAPACITY);
    (ControlSender { channel, stage_wake }, receiver)
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        text.to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic with a non-text payload".to_string()
    }
}

/// Waits for the shutdown signal (or for the pipeline handle to vanish).
pub(crate) async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}
