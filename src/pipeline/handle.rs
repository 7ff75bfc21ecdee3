//! The handle of a running pipeline: metrics, taps, outside subscribers,
//! shutdown and the wait for its end.

use std::any::{TypeId, type_name};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinSet;

use super::spec::ErasedTap;
use crate::demand::bounds_problem;
use crate::error::{PipelineError, StageError};
use crate::link::{self, Link, SubscribeOptions, Subscriber};
use crate::metrics::{StageKind, StageMetrics, StageSnapshot};
use crate::run::{Control, ControlSender, ErasedControl};
use crate::subscription::Subscription;
use crate::tap::{TapOptions, TapSlot, TapStream};

/// What the handle keeps of each started stage.
pub(super) struct StageInfo {
    pub(super) id: String,
    pub(super) kind: StageKind,
    pub(super) metrics: Arc<StageMetrics>,
    pub(super) wake: Arc<Notify>,
    pub(super) tap: Option<ErasedTap>,
    pub(super) output: Option<(TypeId, &'static str)>,
}

/// Reads the metrics of a running pipeline from anywhere (cheap to clone).
#[derive(Clone)]
pub struct MetricsReader {
    stages: Arc<Vec<StageInfo>>,
}

impl MetricsReader {
    /// One snapshot per stage, in the order the stages were added.
    pub fn snapshot(&self) -> Vec<StageSnapshot> {
        self.stages.iter().map(|stage| stage.metrics.snapshot(&stage.id, stage.kind)).collect()
    }

    /// The snapshot of one stage.
    pub fn stage(&self, id: &str) -> Option<StageSnapshot> {
        self.stages.iter().find(|s| s.id == id).map(|s| s.metrics.snapshot(&s.id, s.kind))
    }
}

/// Attaches taps to the stages of a running pipeline from anywhere (cheap to clone).
#[derive(Clone)]
pub struct Taps {
    stages: Arc<Vec<StageInfo>>,
}

impl Taps {
    /// The type of the events `stage` emits (`None` for a consumer or an unknown stage).
    pub fn output_type(&self, stage: &str) -> Option<TypeId> {
        self.stages.iter().find(|s| s.id == stage)?.output.map(|(id, _)| id)
    }

    /// Starts sampling the events `stage` emits, each rendered by `render`.
    /// The stage pays one atomic load per batch while no tap is attached.
    pub fn attach<T: Send + 'static>(
        &self,
        stage: &str,
        render: impl Fn(&T) -> String + Send + Sync + 'static,
        options: TapOptions,
    ) -> Result<TapStream, String> {
        let info = self
            .stages
            .iter()
            .find(|s| s.id == stage)
            .ok_or_else(|| format!("no stage '{stage}' in this pipeline"))?;
        let tap =
            info.tap.clone().ok_or_else(|| format!("stage '{stage}' is a consumer: it emits no events"))?;
        let slot = tap.downcast::<TapSlot<T>>().map_err(|_| {
            format!(
                "stage '{stage}' emits {}, not {}",
                info.output.map_or("?", |(_, name)| name),
                type_name::<T>()
            )
        })?;
        slot.attach(Arc::new(render), options)
    }
}

/// What a pipeline that ended cleanly leaves: the final metrics.
#[derive(Debug, Clone)]
pub struct PipelineSummary {
    /// One snapshot per stage, taken after every stage ended.
    pub stages: Vec<StageSnapshot>,
}

/// A running pipeline: read metrics, subscribe from outside, shut it down.
pub struct PipelineHandle {
    pub(super) stages: Arc<Vec<StageInfo>>,
    pub(super) controls: Vec<ErasedControl>,
    pub(super) tasks: JoinSet<(String, Result<(), StageError>)>,
    pub(super) shutdown: watch::Sender<bool>,
    pub(super) drain_timeout: Duration,
    pub(super) links: Vec<Arc<Link>>,
    pub(super) failures: Vec<StageError>,
}

impl PipelineHandle {
    /// Every stage failure seen by `wait` so far, the root cause first.
    pub fn failures(&self) -> &[StageError] {
        &self.failures
    }

    /// One snapshot per stage.
    pub fn metrics(&self) -> Vec<StageSnapshot> {
        self.metrics_reader().snapshot()
    }

    /// A reader for metrics that can live beside `wait`.
    pub fn metrics_reader(&self) -> MetricsReader {
        MetricsReader { stages: self.stages.clone() }
    }

    /// A handle to tap the stages' events that can live beside `wait`.
    pub fn taps(&self) -> Taps {
        Taps { stages: self.stages.clone() }
    }

    /// Asks the pipeline to stop: sources stop, everything accepted drains.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// A sender that triggers shutdown (for signal handlers).
    pub fn shutdown_trigger(&self) -> ShutdownTrigger {
        ShutdownTrigger { shutdown: self.shutdown.clone() }
    }

    /// Cancels the subscription of `consumer` to `producer`; false if there is none.
    pub fn cancel(&self, producer: &str, consumer: &str) -> bool {
        let mut found = false;
        for link in self.links.iter().filter(|l| l.producer == producer && l.consumer == consumer) {
            link.cancel();
            found = true;
        }
        found
    }

    /// Subscribes from outside the pipeline to a running producer's events.
    pub async fn subscribe<T: Send + 'static>(
        &self,
        producer: &str,
        options: SubscribeOptions<T>,
    ) -> Result<Subscription<T>, PipelineError> {
        let index = self
            .stages
            .iter()
            .position(|s| s.id == producer)
            .ok_or_else(|| PipelineError::Request(format!("no stage '{producer}' in this pipeline")))?;
        let control = self.controls[index].downcast_ref::<ControlSender<T>>().ok_or_else(|| {
            PipelineError::Request(format!(
                "stage '{producer}' does not emit events of type {}",
                type_name::<T>()
            ))
        })?;
        let bounds =
            options.demand_bounds().map_err(|why| PipelineError::Request(bounds_problem(producer, &why)))?;
        // An outside subscription waits on its channel itself; nothing waits on this wake-up.
        let (inbox, receiver) = link::inbox(Arc::new(Notify::new()));
        let link = Link::new(producer, "external", self.stages[index].wake.clone());
        let subscriber = Subscriber { link: link.clone(), inbox, options: options.dispatch_options() };
        let (reply, answer) = oneshot::channel();
        let ended = || PipelineError::Request(format!("stage '{producer}' has ended"));
        control.send(Control::Subscribe(subscriber, reply)).await.map_err(|_| ended())?;
        answer.await.map_err(|_| ended())?.map_err(PipelineError::Request)?;
        Ok(Subscription::new(receiver, link, bounds))
    }

    /// Waits until every stage has ended. The first stage failure shuts the
    /// rest down and is returned; after a shutdown request, stages still
    /// running when the drain timeout passes are aborted and named.
    pub async fn wait(&mut self) -> Result<PipelineSummary, PipelineError> {
        let mut first_failure: Option<StageError> = None;
        let mut requested = self.shutdown.subscribe();
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut finished: HashSet<String> = HashSet::new();
        loop {
            if deadline.is_none() && *requested.borrow_and_update() {
                deadline = Some(tokio::time::Instant::now() + self.drain_timeout);
            }
            tokio::select! {
                joined = self.tasks.join_next() => match joined {
                    None => break,
                    Some(Ok((id, result))) => {
                        finished.insert(id);
                        if let Err(error) = result {
                            self.failures.push(error.clone());
                            first_failure.get_or_insert(error);
                            self.shutdown();
                        }
                    }
                    Some(Err(join_error)) => {
                        first_failure.get_or_insert(StageError::new("engine", format!("a stage task ended abnormally: {join_error}")));
                        self.shutdown();
                    }
                },
                _ = requested.changed(), if deadline.is_none() => {}
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                    self.tasks.abort_all();
                    let running: Vec<String> = self.stages.iter().map(|s| s.id.clone()).filter(|id| !finished.contains(id)).collect();
                    while self.tasks.join_next().await.is_some() {}
                    if let Some(error) = first_failure {
                        return Err(PipelineError::StageFailed(error));
                    }
                    return Err(PipelineError::DrainTimeout(running));
                }
            }
        }
        match first_failure {
            Some(error) => Err(PipelineError::StageFailed(error)),
            None => Ok(PipelineSummary { stages: self.metrics() }),
        }
    }

    /// Shuts down gracefully and waits: stop sources, drain, flush, return.
    pub async fn stop(mut self) -> Result<PipelineSummary, PipelineError> {
        self.shutdown();
        self.wait().await
    }
}

/// Triggers a pipeline's shutdown from another task.
#[derive(Clone)]
pub struct ShutdownTrigger {
    shutdown: watch::Sender<bool>,
}

impl ShutdownTrigger {
    /// Asks the pipeline to stop and drain.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Whether a shutdown was asked for (the pipeline is draining or has ended).
    pub fn is_requested(&self) -> bool {
        *self.shutdown.borrow()
    }
}
