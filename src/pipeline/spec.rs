//! The type-erased stage specs the builder holds until `start`: one per
//! stage role, each knowing its own event types, how to wire its links and
//! how to start its task.

use std::any::{Any, TypeId, type_name};
use std::sync::Arc;

use tokio::sync::{Notify, watch};

use super::builder::StageConfig;
use crate::buffer::Buffer;
use crate::demand::{DemandLedger, bounds_problem};
use crate::dispatcher::DemandDispatcher;
use crate::error::StageError;
use crate::failure::FailurePolicy;
use crate::graph::{EventType, Node};
use crate::link::{self, InboxSender, Link, Subscriber};
use crate::metrics::{StageKind, StageMetrics};
use crate::pool::PoolConfig;
use crate::run::inlet::Inlet;
use crate::run::outlet::Outlet;
use crate::run::{ErasedControl, Factory, TaskContext, control_channel};
use crate::stage::{Nothing, Producer, ProducerConsumer};

/// A stage's [`TapSlot`], its event type erased.
pub(super) type ErasedTap = Arc<dyn Any + Send + Sync>;

/// A started stage: its task and the sender of its control messages.
pub(super) struct Started {
    pub(super) task: futures::future::BoxFuture<'static, Result<(), StageError>>,
    pub(super) control: ErasedControl,
}

/// One stage of a pipeline under construction, its types erased.
pub(super) trait StageSpec: Send + Any {
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
    /// Sets the failure policy (a boxed `FailurePolicy<In>`); false if the stage takes no such events.
    fn set_failure(&mut self, policy: Box<dyn Any + Send>) -> bool;
    /// Starts the stage's task; `follows` is set for a producer that ends with the pipeline's data.
    fn start(
        self: Box<Self>,
        shutdown: watch::Receiver<bool>,
        follows: Option<watch::Receiver<bool>>,
    ) -> Started;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// The readable event type `T`.
pub(super) fn event_type<T: 'static>() -> EventType {
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

/// The outlet of a stage that emits: its dispatcher (demand by default) and its bounded buffer.
fn build_outlet<In, T: Send + 'static>(
    config: &mut StageConfig<In, T>,
    wake: &Arc<Notify>,
    metrics: &Arc<StageMetrics>,
) -> Outlet<T> {
    let dispatcher = config.dispatcher.take().unwrap_or_else(|| Box::new(DemandDispatcher::new()));
    Outlet::new(
        dispatcher,
        Buffer::new(config.buffer_size, config.buffer_keep),
        wake.clone(),
        metrics.clone(),
    )
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

/// A producer waiting to start.
pub(super) struct ProducerSpec<P: Producer> {
    pub(super) config: StageConfig<Nothing, P::Out>,
    pub(super) factory: Factory<P>,
    pub(super) wake: Arc<Notify>,
    pub(super) metrics: Arc<StageMetrics>,
    pub(super) outlet: Option<Outlet<P::Out>>,
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
        self.outlet = Some(build_outlet(&mut self.config, &self.wake, &self.metrics));
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
    fn set_failure(&mut self, _: Box<dyn Any + Send>) -> bool {
        false
    }
    fn start(
        self: Box<Self>,
        shutdown: watch::Receiver<bool>,
        follows: Option<watch::Receiver<bool>>,
    ) -> Started {
        let this = *self;
        let (control, control_rx) = control_channel::<P::Out>(this.wake.clone());
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

/// A producer-consumer or consumer waiting to start.
pub(super) struct ProcessorSpec<P: ProducerConsumer> {
    pub(super) config: StageConfig<P::In, P::Out>,
    pub(super) factory: Factory<P>,
    pub(super) kind: StageKind,
    pub(super) wake: Arc<Notify>,
    pub(super) metrics: Arc<StageMetrics>,
    pub(super) inbox: InboxSender<P::In>,
    pub(super) inlet: Inlet<P::In>,
    pub(super) outlet: Option<Outlet<P::Out>>,
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
            self.outlet = Some(build_outlet(&mut self.config, &self.wake, &self.metrics));
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
    fn set_failure(&mut self, policy: Box<dyn Any + Send>) -> bool {
        match policy.downcast::<FailurePolicy<P::In>>() {
            Ok(policy) => {
                self.config.failure = Some(*policy);
                true
            }
            Err(_) => false,
        }
    }
    fn start(self: Box<Self>, shutdown: watch::Receiver<bool>, _: Option<watch::Receiver<bool>>) -> Started {
        let this = *self;
        drop(this.inbox);
        let (control, control_rx) = control_channel::<P::Out>(this.wake.clone());
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
                (this.factory, this.config.failure),
                pool,
                queue_capacity,
                this.inlet,
                this.outlet,
                control_rx,
                context,
            )),
            None => Box::pin(crate::run::processor::run_processor(
                this.factory,
                this.config.failure,
                this.inlet,
                this.outlet,
                control_rx,
                this.wake,
                context,
            )),
        };
        Started { task, control: Box::new(control) }
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// The spec of a producer-consumer or (wrapped) consumer.
pub(super) fn processor_spec<P: ProducerConsumer>(
    id: &str,
    factory: Factory<P>,
    kind: StageKind,
) -> ProcessorSpec<P> {
    let metrics = Arc::new(StageMetrics::default());
    let wake = Arc::new(Notify::new());
    let (inbox, receiver) = link::inbox(wake.clone());
    ProcessorSpec {
        config: StageConfig::new(id),
        factory,
        kind,
        wake,
        inlet: Inlet::new(receiver, metrics.clone()),
        metrics,
        inbox,
        outlet: None,
    }
}
