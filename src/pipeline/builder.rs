//! The pipeline builder: add stages by id, check the graph, start it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use super::handle::{PipelineHandle, StageInfo};
use super::spec::{ProducerSpec, StageSpec, processor_spec};
use crate::buffer::BufferKeep;
use crate::dispatcher::Dispatcher;
use crate::error::PipelineError;
use crate::failure::FailurePolicy;
use crate::graph::{self, Node, Problem};
use crate::link::{Link, SubscribeOptions};
use crate::metrics::{StageKind, StageMetrics};
use crate::pool::PoolConfig;
use crate::run::ErasedControl;
use crate::run::follow::{DataEnd, waited_for};
use crate::stage::{AsProcessor, Consumer, Nothing, Producer, ProducerConsumer};
use crate::supervisor::RestartPolicy;

/// GenStage's default producer buffer size.
pub const DEFAULT_BUFFER_SIZE: usize = 10_000;

/// How long `stop` waits for stages to drain before it gives up, by default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of one stage, set through the builder methods.
pub struct StageConfig<In, Out> {
    pub(super) id: String,
    pub(super) dispatcher: Option<Box<dyn Dispatcher<Out>>>,
    pub(super) buffer_size: usize,
    pub(super) buffer_keep: BufferKeep,
    pub(super) restart: RestartPolicy,
    pub(super) subscriptions: Vec<(String, SubscribeOptions<In>)>,
    pub(super) pool: Option<PoolConfig>,
    pub(super) failure: Option<FailurePolicy<In>>,
}

impl<In, Out> StageConfig<In, Out> {
    pub(super) fn new(id: &str) -> Self {
        StageConfig {
            id: id.to_string(),
            dispatcher: None,
            buffer_size: DEFAULT_BUFFER_SIZE,
            buffer_keep: BufferKeep::Last,
            restart: RestartPolicy::default(),
            subscriptions: Vec::new(),
            pool: None,
            failure: None,
        }
    }

    /// How this stage's events reach its subscribers (default: demand dispatcher).
    pub fn dispatcher(&mut self, dispatcher: impl Dispatcher<Out>) -> &mut Self {
        self.dispatcher = Some(Box::new(dispatcher));
        self
    }

    /// Sets an already boxed dispatcher (for dispatchers chosen at run time).
    pub fn boxed_dispatcher(&mut self, dispatcher: Box<dyn Dispatcher<Out>>) -> &mut Self {
        self.dispatcher = Some(dispatcher);
        self
    }

    /// Bounds the buffer of events nobody asked for yet, and says which to keep when full.
    pub fn buffer(&mut self, size: usize, keep: BufferKeep) -> &mut Self {
        self.buffer_size = size;
        self.buffer_keep = keep;
        self
    }

    /// What happens when a callback panics (default: restart, 3 times in 5 s).
    pub fn restart(&mut self, policy: RestartPolicy) -> &mut Self {
        self.restart = policy;
        self
    }

    /// Subscribes this stage to `producer`'s events.
    pub fn subscribe_to(&mut self, producer: &str, options: SubscribeOptions<In>) -> &mut Self {
        self.subscriptions.push((producer.to_string(), options));
        self
    }

    /// Runs this stage as a pool of workers.
    pub fn workers(&mut self, pool: PoolConfig) -> &mut Self {
        self.pool = Some(pool);
        self
    }

    /// Retries events a callback panicked on and dead-letters them (see [`crate::failure`]).
    pub fn on_failure(&mut self, policy: FailurePolicy<In>) -> &mut Self {
        self.failure = Some(policy);
        self
    }
}

/// A pipeline under construction: add stages by id, then `start` it.
///
/// Nothing runs until `start`, which checks the whole graph first and
/// reports every problem it finds at once.
pub struct Pipeline {
    specs: Vec<Box<dyn StageSpec>>,
    drain_timeout: Duration,
}

impl Default for Pipeline {
    fn default() -> Self {
        Pipeline { specs: Vec::new(), drain_timeout: DEFAULT_DRAIN_TIMEOUT }
    }
}

impl Pipeline {
    /// An empty pipeline.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long `stop` waits for the stages to drain before giving up.
    pub fn drain_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.drain_timeout = timeout;
        self
    }

    fn push_spec<S: StageSpec>(&mut self, spec: S) -> &mut S {
        self.specs.push(Box::new(spec));
        self.specs.last_mut().and_then(|spec| spec.as_any_mut().downcast_mut::<S>()).expect("just pushed")
    }

    /// Adds a producer; `factory` builds its state at start and after each restart.
    pub fn producer<P: Producer>(
        &mut self,
        id: &str,
        factory: impl Fn() -> P + Send + Sync + 'static,
    ) -> &mut StageConfig<Nothing, P::Out> {
        let spec = ProducerSpec::<P> {
            config: StageConfig::new(id),
            factory: Arc::new(factory),
            wake: Arc::new(Notify::new()),
            metrics: Arc::new(StageMetrics::default()),
            outlet: None,
        };
        &mut self.push_spec(spec).config
    }

    /// Adds a producer-consumer.
    pub fn producer_consumer<P: ProducerConsumer>(
        &mut self,
        id: &str,
        factory: impl Fn() -> P + Send + Sync + 'static,
    ) -> &mut StageConfig<P::In, P::Out> {
        let spec = processor_spec(id, Arc::new(factory), StageKind::ProducerConsumer);
        &mut self.push_spec(spec).config
    }

    /// Adds a consumer.
    pub fn consumer<C: Consumer>(
        &mut self,
        id: &str,
        factory: impl Fn() -> C + Send + Sync + 'static,
    ) -> &mut StageConfig<C::In, Nothing> {
        let spec = processor_spec(id, Arc::new(move || AsProcessor(factory())), StageKind::Consumer);
        &mut self.push_spec(spec).config
    }

    /// Sets the failure policy of the stage `id` added earlier, whose events are `In`.
    pub fn on_failure<In: Send + 'static>(
        &mut self,
        id: &str,
        policy: FailurePolicy<In>,
    ) -> Result<(), String> {
        let spec = self.specs.iter_mut().find(|spec| spec.id() == id).ok_or(format!("no stage '{id}'"))?;
        if spec.set_failure(Box::new(policy)) {
            Ok(())
        } else {
            Err(format!(
                "stage '{id}' takes no {} events to retry or dead-letter",
                std::any::type_name::<In>()
            ))
        }
    }

    /// Every problem with the graph, without starting anything.
    pub fn validate(&self) -> Vec<String> {
        let nodes: Vec<Node<'_>> = self.specs.iter().map(|spec| spec.node()).collect();
        let mut problems: Vec<String> = self.specs.iter().flat_map(|spec| spec.problems()).collect();
        for problem in graph::problems(&nodes) {
            let id = |node: usize| nodes[node].id;
            let producer = |node: usize, subscription: usize| nodes[node].subscriptions[subscription];
            problems.push(match problem {
                Problem::DuplicateId { node } => format!("stage id '{}' is used more than once", id(node)),
                Problem::ProducerSubscribes { node, subscription } => format!(
                    "stage '{}' is a producer: it cannot subscribe to '{}'",
                    id(node),
                    producer(node, subscription)
                ),
                Problem::ProducerWorkers { node } => format!(
                    "stage '{}' is a producer: worker pools are for consumers and producer-consumers",
                    id(node)
                ),
                Problem::ConsumerDispatcher { node } => {
                    format!("stage '{}' is a consumer: it has no dispatcher", id(node))
                }
                Problem::UnknownProducer { node, subscription } => format!(
                    "stage '{}' subscribes to '{}', which does not exist",
                    id(node),
                    producer(node, subscription)
                ),
                Problem::SubscribesToConsumer { node, subscription, .. } => format!(
                    "stage '{}' subscribes to '{}', a consumer that emits no events",
                    id(node),
                    producer(node, subscription)
                ),
                Problem::TypeMismatch { node, subscription, takes, emits, .. } => format!(
                    "stage '{}' takes {} but '{}' emits {}",
                    id(node),
                    takes.name,
                    producer(node, subscription),
                    emits.name
                ),
                // Every stage may take outside subscribers (`PipelineHandle::subscribe`).
                Problem::Dangling { .. } => continue,
                Problem::Cycle { nodes: cycle } => {
                    format!("the stages form a cycle: {}", graph::cycle_text(&nodes, &cycle))
                }
            });
        }
        problems
    }

    /// Checks the graph, wires every subscription and starts every stage.
    /// Must be called within a tokio runtime.
    pub fn start(mut self) -> Result<PipelineHandle, PipelineError> {
        let problems = self.validate();
        if !problems.is_empty() {
            return Err(PipelineError::Invalid(problems));
        }
        for spec in &mut self.specs {
            spec.prepare();
        }
        let by_id: HashMap<String, usize> =
            self.specs.iter().enumerate().map(|(index, spec)| (spec.id().to_string(), index)).collect();
        let mut problems = Vec::new();
        let mut links = Vec::new();
        for consumer in 0..self.specs.len() {
            for (index, producer_id) in self.specs[consumer].subscriptions().into_iter().enumerate() {
                let producer = by_id[&producer_id];
                let link = Link::new(&producer_id, self.specs[consumer].id(), self.specs[producer].wake());
                links.push(link.clone());
                let subscriber = self.specs[consumer].link_upstream(index, link);
                if let Err(why) = self.specs[producer].accept(subscriber) {
                    problems.push(format!(
                        "stage '{}' cannot subscribe to '{producer_id}': {why}",
                        self.specs[consumer].id()
                    ));
                }
            }
        }
        if !problems.is_empty() {
            return Err(PipelineError::Invalid(problems));
        }
        let followers: Vec<bool> = self.specs.iter().map(|spec| spec.follows_sources()).collect();
        let upstreams = |index: usize| -> Vec<usize> {
            self.specs[index].subscriptions().iter().map(|producer| by_id[producer]).collect()
        };
        let waited = waited_for(&followers, &upstreams);
        let waited_count = waited.iter().filter(|waited| **waited).count();
        let data_end = DataEnd::new(waited_count);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut stages = Vec::new();
        for (index, spec) in self.specs.into_iter().enumerate() {
            let info = StageInfo {
                id: spec.id().to_string(),
                kind: spec.kind(),
                metrics: spec.metrics(),
                wake: spec.wake(),
                tap: spec.tap(),
                output: spec
                    .node()
                    .types
                    .and_then(|(_, output)| output)
                    .map(|output| (output.id, output.name)),
            };
            // With nothing to wait for, a follower runs until shutdown.
            let follows = (followers[index] && waited_count > 0).then(|| data_end.watch());
            let started = spec.start(shutdown_rx.clone(), follows);
            let id = info.id.clone();
            let task = started.task;
            let countdown = waited[index].then(|| data_end.clone());
            tasks.spawn(async move {
                let result = task.await;
                if let Some(countdown) = countdown {
                    countdown.stage_ended();
                }
                (id, result)
            });
            stages.push((info, started.control));
        }
        let (infos, controls): (Vec<StageInfo>, Vec<ErasedControl>) = stages.into_iter().unzip();
        Ok(PipelineHandle {
            stages: Arc::new(infos),
            controls,
            tasks,
            shutdown,
            drain_timeout: self.drain_timeout,
            links,
            failures: Vec::new(),
        })
    }
}
