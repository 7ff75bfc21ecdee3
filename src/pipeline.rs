//! Building a pipeline from stages wired by id, and the handle of a running one.

use std::any::{Any, TypeId, type_name};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::buffer::{Buffer, BufferKeep};
use crate::demand::{DemandLedger, bounds_problem};
use crate::dispatcher::{DemandDispatcher, Dispatcher};
use crate::error::{PipelineError, StageError};
use crate::graph::{self, EventType, Node, Problem};
use crate::link::{INBOX_BATCHES, Inbox, Link, SubscribeOptions, Subscriber};
use crate::metrics::{StageKind, StageMetrics, StageSnapshot};
use crate::pool::PoolConfig;
use crate::run::follow::{DataEnd, waited_for};
use crate::run::inlet::Inlet;
use crate::run::outlet::Outlet;
use crate::run::{Control, ErasedControl, Factory, TaskContext, control_channel};
use crate::stage::{AsProcessor, Consumer, Nothing, Producer, ProducerConsumer};
use crate::subscription::Subscription;
use crate::supervisor::RestartPolicy;
use crate::tap::{TapOptions, TapSlot, TapStream};

/// A stage's [`TapSlot`], its event type erased.
type ErasedTap = Arc<dyn Any + Send + Sync>;

/// GenStage's default producer buffer size.
pub const DEFAULT_BUFFER_SIZE: usize = 10_000;

/// How long `stop` waits for stages to drain before it gives up, by default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of one stage, set through the builder methods.
pub struct StageConfig<In, Out> {
    id: String,
    dispatcher: Option<Box<dyn Dispatcher<Out>>>,
    buffer_size: usize,
    buffer_keep: BufferKeep,
    restart: RestartPolicy,
    subscriptions: Vec<(String, SubscribeOptions<In>)>,
    pool: Option<PoolConfig>,
}

impl<In, Out> StageConfig<In, Out> {
    fn new(id: &str) -> Self {
        StageConfig {
            id: id.to_string(),
            dispatcher: None,
            buffer_size: DEFAULT_BUFFER_SIZE,
            buffer_keep: BufferKeep::Last,
            restart: RestartPolicy::default(),
            subscriptions: Vec::new(),
            pool: None,
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
}

struct Started {
    task: futures::future::BoxFuture<'static, Result<(), StageError>>,
    control: ErasedControl,
}

trait StageSpec: Send + Any {
    fn id(&self) -> &str;
    fn kind(&self) -> StageKind;
    fn node(&self) -> Node<'_>;
    fn subscriptions(&self) -> Vec<String>;
    fn problems(&self) -> Vec<String>;
    fn prepare(&mut self);
    fn wake(&self) -> Arc<Notify>;
    fn metrics(&self) -> Arc<StageMetrics>;
    fn tap(&self) -> Option<ErasedTap>;
    fn link_upstream(&mut self, index: usize, link: Arc<Link>) -> Box<dyn Any + Send>;
    fn accept(&mut self, subscriber: Box<dyn Any + Send>) -> Result<(), String>;
    fn follows_sources(&self) -> bool;
    /// Starts the stage's task; `follows` is set for a producer that ends with the pipeline's data.
    fn start(
        self: Box<Self>,
        shutdown: watch::Receiver<bool>,
        follows: Option<watch::Receiver<bool>>,
    ) -> Started;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// The readable event type `T`.
fn event_type<T: 'static>() -> EventType {
    EventType { id: TypeId::of::<T>(), name: type_name::<T>() }
}

/// The graph node of a stage configured by `config`.
fn node_of<In, Out>(
    config: &StageConfig<In, Out>,
    input: Option<EventType>,
    output: Option<EventType>,
) -> Node<'_> {
    Node {
        id: &config.id,
        types: Some((input, output)),
        subscriptions: config.subscriptions.iter().map(|(producer, _)| producer.as_str()).collect(),
        dispatcher: config.dispatcher.is_some(),
        workers: config.pool.is_some(),
        open: true,
    }
}

fn build_outlet<T: Send + 'static>(
    dispatcher: &mut Option<Box<dyn Dispatcher<T>>>,
    size: usize,
    keep: BufferKeep,
    wake: Arc<Notify>,
    metrics: Arc<StageMetrics>,
) -> Outlet<T> {
    let dispatcher = dispatcher.take().unwrap_or_else(|| Box::new(DemandDispatcher::new()));
    Outlet::new(dispatcher, Buffer::new(size, keep), wake, metrics)
}

fn accept_into<T: Send + 'static>(
    outlet: Option<&mut Outlet<T>>,
    subscriber: Box<dyn Any + Send>,
) -> Result<(), String> {
    let outlet = outlet.ok_or("it is a consumer and emits no events")?;
    let subscriber = subscriber
        .downcast::<Subscriber<T>>()
        .map_err(|_| format!("its events are of type {}", type_name::<T>()))?;
    outlet.subscribe(*subscriber)
}

struct ProducerSpec<P: Producer> {
    config: StageConfig<Nothing, P::Out>,
    factory: Factory<P>,
    wake: Arc<Notify>,
    metrics: Arc<StageMetrics>,
    outlet: Option<Outlet<P::Out>>,
}

impl<P: Producer> StageSpec for ProducerSpec<P> {
    fn id(&self) -> &str {
        &self.config.id
    }
    fn kind(&self) -> StageKind {
        StageKind::Producer
    }
    fn node(&self) -> Node<'_> {
        node_of(&self.config, None, Some(event_type::<P::Out>()))
    }
    fn subscriptions(&self) -> Vec<String> {
        Vec::new()
    }
    fn problems(&self) -> Vec<String> {
        Vec::new()
    }
    fn prepare(&mut self) {
        let config = &mut self.config;
        self.outlet = Some(build_outlet(
            &mut config.dispatcher,
            config.buffer_size,
            config.buffer_keep,
            self.wake.clone(),
            self.metrics.clone(),
        ));
    }
    fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }
    fn metrics(&self) -> Arc<StageMetrics> {
        self.metrics.clone()
    }
    fn tap(&self) -> Option<ErasedTap> {
        self.outlet.as_ref().map(|outlet| outlet.tap_slot() as ErasedTap)
    }
    fn link_upstream(&mut self, _: usize, _: Arc<Link>) -> Box<dyn Any + Send> {
        Box::new(())
    }
    fn accept(&mut self, subscriber: Box<dyn Any + Send>) -> Result<(), String> {
        accept_into(self.outlet.as_mut(), subscriber)
    }
    fn follows_sources(&self) -> bool {
        P::FOLLOWS_SOURCES
    }
    fn start(
        self: Box<Self>,
        shutdown: watch::Receiver<bool>,
        follows: Option<watch::Receiver<bool>>,
    ) -> Started {
        let this = *self;
        let (control, control_rx) = control_channel::<P::Out>();
        let context = TaskContext {
            stage: this.config.id,
            restart: this.config.restart,
            shutdown,
            metrics: this.metrics,
        };
        let outlet = this.outlet.expect("prepared before start");
        Started {
            task: Box::pin(crate::run::producer::run_producer(
                this.factory,
                outlet,
                control_rx,
                context,
                follows,
            )),
            control: Box::new(control),
        }
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

struct ProcessorSpec<P: ProducerConsumer> {
    config: StageConfig<P::In, P::Out>,
    factory: Factory<P>,
    kind: StageKind,
    wake: Arc<Notify>,
    metrics: Arc<StageMetrics>,
    inbox: mpsc::Sender<Inbox<P::In>>,
    inlet: Inlet<P::In>,
    outlet: Option<Outlet<P::Out>>,
}

impl<P: ProducerConsumer> StageSpec for ProcessorSpec<P> {
    fn id(&self) -> &str {
        &self.config.id
    }
    fn kind(&self) -> StageKind {
        self.kind
    }
    fn node(&self) -> Node<'_> {
        let output = (self.kind == StageKind::ProducerConsumer).then(event_type::<P::Out>);
        Node { workers: false, ..node_of(&self.config, Some(event_type::<P::In>()), output) }
    }
    fn subscriptions(&self) -> Vec<String> {
        self.config.subscriptions.iter().map(|(producer, _)| producer.clone()).collect()
    }
    fn problems(&self) -> Vec<String> {
        let id = &self.config.id;
        let mut problems = Vec::new();
        if let Some(Err(why)) = self.config.pool.as_ref().map(PoolConfig::validate) {
            problems.push(format!("stage '{id}': {why}"));
        }
        for (producer, options) in &self.config.subscriptions {
            if let Err(why) = options.demand_bounds() {
                problems.push(format!("stage '{id}': {}", bounds_problem(producer, &why)));
            }
        }
        problems
    }
    fn prepare(&mut self) {
        if self.kind == StageKind::ProducerConsumer {
            let config = &mut self.config;
            self.outlet = Some(build_outlet(
                &mut config.dispatcher,
                config.buffer_size,
                config.buffer_keep,
                self.wake.clone(),
                self.metrics.clone(),
            ));
        }
    }
    fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }
    fn metrics(&self) -> Arc<StageMetrics> {
        self.metrics.clone()
    }
    fn tap(&self) -> Option<ErasedTap> {
        self.outlet.as_ref().map(|outlet| outlet.tap_slot() as ErasedTap)
    }
    fn link_upstream(&mut self, index: usize, link: Arc<Link>) -> Box<dyn Any + Send> {
        let options = &self.config.subscriptions[index].1;
        // `start` calls this only once `validate` found every subscription's bounds valid.
        let bounds = options.demand_bounds().unwrap_or_default();
        self.inlet.add(link.clone(), DemandLedger::new(bounds), options.mode, options.cancel);
        Box::new(Subscriber { link, inbox: self.inbox.clone(), options: options.dispatch_options() })
    }
    fn accept(&mut self, subscriber: Box<dyn Any + Send>) -> Result<(), String> {
        accept_into(self.outlet.as_mut(), subscriber)
    }
    fn follows_sources(&self) -> bool {
        false
    }
    fn start(self: Box<Self>, shutdown: watch::Receiver<bool>, _: Option<watch::Receiver<bool>>) -> Started {
        let this = *self;
        drop(this.inbox);
        let (control, control_rx) = control_channel::<P::Out>();
        let queue_capacity: usize = this
            .config
            .subscriptions
            .iter()
            .map(|(_, options)| options.demand_bounds().unwrap_or_default().max_demand())
            .sum::<usize>()
            .max(1);
        let context = TaskContext {
            stage: this.config.id,
            restart: this.config.restart,
            shutdown,
            metrics: this.metrics,
        };
        let task: futures::future::BoxFuture<'static, Result<(), StageError>> = match this.config.pool {
            Some(pool) => Box::pin(crate::run::pool::run_pool(
                this.factory,
                pool,
                queue_capacity,
                this.inlet,
                this.outlet,
                control_rx,
                context,
            )),
            None => Box::pin(crate::run::processor::run_processor(
                this.factory,
                this.inlet,
                this.outlet,
                control_rx,
                context,
            )),
        };
        Started { task, control: Box::new(control) }
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
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

fn processor_spec<P: ProducerConsumer>(id: &str, factory: Factory<P>, kind: StageKind) -> ProcessorSpec<P> {
    let metrics = Arc::new(StageMetrics::default());
    let (inbox, receiver) = mpsc::channel(INBOX_BATCHES);
    ProcessorSpec {
        config: StageConfig::new(id),
        factory,
        kind,
        wake: Arc::new(Notify::new()),
        inlet: Inlet::new(receiver, metrics.clone()),
        metrics,
        inbox,
        outlet: None,
    }
}

struct StageInfo {
    id: String,
    kind: StageKind,
    metrics: Arc<StageMetrics>,
    wake: Arc<Notify>,
    tap: Option<ErasedTap>,
    output: Option<(TypeId, &'static str)>,
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
    stages: Arc<Vec<StageInfo>>,
    controls: Vec<ErasedControl>,
    tasks: JoinSet<(String, Result<(), StageError>)>,
    shutdown: watch::Sender<bool>,
    drain_timeout: Duration,
    links: Vec<Arc<Link>>,
    failures: Vec<StageError>,
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
        let control = self.controls[index].downcast_ref::<mpsc::Sender<Control<T>>>().ok_or_else(|| {
            PipelineError::Request(format!(
                "stage '{producer}' does not emit events of type {}",
                type_name::<T>()
            ))
        })?;
        let bounds =
            options.demand_bounds().map_err(|why| PipelineError::Request(bounds_problem(producer, &why)))?;
        let (inbox, receiver) = mpsc::channel(INBOX_BATCHES);
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
