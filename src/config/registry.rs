//! The registry of stage kinds a pipeline file may use, checking and building.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use super::SubscriptionDecl;
use super::kind::{Kind, KindOf};
use super::parse::COMMON_KEYS;
use super::resources::Resources;
use super::suggest::closest;
use super::{ConfigError, ConfigErrors, DispatcherDecl, Location, PipelineFile, StageDecl};
use crate::dispatcher::{BroadcastDispatcher, DemandDispatcher, Dispatcher, PartitionDispatcher, Selector};
use crate::graph::{self, Node, Problem};
use crate::link::SubscribeOptions;
use crate::pipeline::{Pipeline, StageConfig};

/// What a kind of stage is in the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Emits events; subscribes to nothing.
    Producer,
    /// Takes events and emits others.
    ProducerConsumer,
    /// Takes events; emits nothing.
    Consumer,
}

pub use crate::graph::EventType;

/// One kind-specific setting, for validation and `--help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettingDoc {
    /// The key in the stage table.
    pub name: &'static str,
    /// Whether the stage must set it.
    pub required: bool,
    /// What it does, with its default.
    pub help: &'static str,
}

/// What kinds may use while building: where to write, the pipeline's
/// settings, and the resources its stages share.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// Directory for embedded stores and output files (default `./stageflow-data`).
    pub data_dir: PathBuf,
    /// `[pipeline] name`.
    pub pipeline: String,
    /// `[pipeline.settings]`.
    pub settings: toml::Table,
    /// Things the stages of this one pipeline share (a statistics hub, sink
    /// metrics, an output channel), by type; clones of the context share them.
    pub resources: Resources,
}

impl BuildContext {
    /// The context for building `file`, writing under `data_dir`, with no resources yet.
    pub fn for_file(file: &PipelineFile, data_dir: impl Into<PathBuf>) -> Self {
        BuildContext {
            data_dir: data_dir.into(),
            pipeline: file.name.clone(),
            settings: file.settings.clone(),
            resources: Resources::default(),
        }
    }
}

/// One dead letter as a program's target receives it: the event already as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterRecord {
    /// The stage that gave up on the event.
    pub stage: String,
    /// Why: the last panic's message, or the store's error.
    pub error: String,
    /// How many times it was tried.
    pub attempts: u32,
    /// The event as JSON text (`None` for events with no JSON form).
    pub event: Option<String>,
}

/// Writes dead letters to one target; the returned future ends once the letter is stored.
pub type DeadLetterWriter =
    Arc<dyn Fn(DeadLetterRecord) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// The dead-letter targets a program offers to `dead_letter = "..."` (see [`Registry::dead_letters`]).
pub trait DeadLetterTargets: Send + Sync + 'static {
    /// Checks a target's spelling, without opening anything; the error says what was expected.
    fn check(&self, target: &str) -> Result<(), String>;
    /// The writer of stage `stage`'s dead letters to `target`.
    fn open(&self, stage: &str, target: &str, context: &BuildContext) -> Result<DeadLetterWriter, String>;
}

/// A kind of stage that pipeline files can name in `kind = "..."`: the
/// registry's view of a [`Kind`], which is how kinds are written.
pub trait StageKind: Send + Sync + 'static {
    /// The name used in `kind = "..."`.
    fn name(&self) -> &'static str;
    /// One line on what it does.
    fn summary(&self) -> &'static str;
    /// Producer, producer-consumer or consumer.
    fn role(&self) -> Role;
    /// The events it takes (`None` for a producer).
    fn input(&self) -> Option<EventType>;
    /// The events it emits (`None` for a consumer).
    fn output(&self) -> Option<EventType>;
    /// Its kind-specific settings.
    fn settings(&self) -> Vec<SettingDoc>;
    /// Whether subscribers may join at run time, so no subscriber in the file is fine.
    fn accepts_external_subscribers(&self) -> bool;
    /// Checks the values of its settings (types, ranges) without building anything.
    fn check_settings(&self, stage: &StageDecl) -> Result<(), String>;
    /// Adds the stage to `pipeline` (usually through [`configure`] for the common keys).
    fn build(&self, stage: &StageDecl, pipeline: &mut Pipeline, context: &BuildContext)
    -> Result<(), String>;
    /// Gives the built stage its `max_attempts` and dead-letter writer.
    fn build_failure_policy(
        &self,
        stage: &StageDecl,
        pipeline: &mut Pipeline,
        dead_letters: Option<DeadLetterWriter>,
    ) -> Result<(), String>;
}

/// Makes a broadcast dispatcher for an output type that can be cloned.
type BroadcastMaker<Out> = fn() -> Box<dyn Dispatcher<Out>>;

/// Turns a subscription's `selector = "..."` into a filter on events.
pub type SelectorParser<'a, In> = &'a dyn Fn(&str) -> Result<Selector<In>, String>;

/// The dispatchers a kind's output type supports.
pub struct DispatcherChoices<Out> {
    broadcast: Option<BroadcastMaker<Out>>,
    partition_of: Option<crate::dispatcher::PartitionFn<Out>>,
}

impl<Out: Send + 'static> DispatcherChoices<Out> {
    /// Only the demand dispatcher (events that cannot be cloned or hashed).
    pub fn demand_only() -> Self {
        DispatcherChoices { broadcast: None, partition_of: None }
    }

    /// Partition by this function of the event.
    pub fn with_partition(mut self, partition_of: impl Fn(&Out) -> usize + Send + Sync + 'static) -> Self {
        self.partition_of = Some(Arc::new(partition_of));
        self
    }
}

impl<Out: Clone + Send + 'static> DispatcherChoices<Out> {
    /// Demand and broadcast (events are cloned for each subscriber).
    pub fn cloneable() -> Self {
        fn broadcast<Out: Clone + Send + 'static>() -> Box<dyn Dispatcher<Out>> {
            Box::new(BroadcastDispatcher::new())
        }
        DispatcherChoices { broadcast: Some(broadcast::<Out>), partition_of: None }
    }
}

/// Applies a stage's common keys — subscriptions, dispatcher, buffer,
/// workers — to the stage being built. `selector` turns a subscription's
/// `selector = "..."` into a filter on the events this stage takes.
pub fn configure<In: Send + 'static, Out: Send + 'static>(
    stage: &StageDecl,
    config: &mut StageConfig<In, Out>,
    choices: &DispatcherChoices<Out>,
    selector: Option<SelectorParser<'_, In>>,
) -> Result<(), String> {
    for subscription in &stage.subscribe_to {
        let mut options = SubscribeOptions::bounds(subscription.bounds).with_cancel(subscription.cancel);
        options.partition = subscription.partition;
        if let Some(name) = &subscription.selector {
            let parse =
                selector.ok_or_else(|| format!("this stage kind has no selectors (got \"{name}\")"))?;
            options.selector = Some(parse(name)?);
        }
        config.subscribe_to(&subscription.producer, options);
    }
    if let Some((dispatcher, _)) = stage.dispatcher {
        let boxed: Box<dyn Dispatcher<Out>> = match dispatcher {
            DispatcherDecl::Demand => Box::new(DemandDispatcher::new()),
            DispatcherDecl::Broadcast => {
                (choices.broadcast.ok_or("this stage kind's events cannot be broadcast")?)()
            }
            DispatcherDecl::Partition { partitions } => {
                let partition_of =
                    choices.partition_of.clone().ok_or("this stage kind's events cannot be partitioned")?;
                Box::new(PartitionDispatcher::new(partitions, partition_of))
            }
        };
        config.boxed_dispatcher(boxed);
    }
    let default_keep = crate::buffer::BufferKeep::default();
    if stage.buffer_size.is_some() || stage.buffer_keep.is_some() {
        config.buffer(
            stage.buffer_size.unwrap_or(crate::pipeline::DEFAULT_BUFFER_SIZE),
            stage.buffer_keep.unwrap_or(default_keep),
        );
    }
    if let Some((pool, _)) = stage.workers {
        config.workers(pool);
    }
    Ok(())
}

/// The stage kinds a program offers to its pipeline files.
#[derive(Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Box<dyn StageKind>>,
    dead_letters: Option<Arc<dyn DeadLetterTargets>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the kind `K` (a later one with the same name replaces it).
    pub fn add<K: Kind>(&mut self) -> &mut Self {
        self.kinds.insert(K::NAME, Box::new(KindOf::<K>::new()));
        self
    }

    /// Offers `targets` to the stages' `dead_letter = "..."` (without, only `max_attempts` works).
    pub fn dead_letters(&mut self, targets: impl DeadLetterTargets) -> &mut Self {
        self.dead_letters = Some(Arc::new(targets));
        self
    }

    /// The dead-letter targets this program offers, if any.
    pub fn dead_letter_targets(&self) -> Option<Arc<dyn DeadLetterTargets>> {
        self.dead_letters.clone()
    }

    /// The problem with a stage's `dead_letter` and `max_attempts`, if any, and where it was written.
    fn check_failure_policy(&self, stage: &StageDecl, kind: &dyn StageKind) -> Option<(Location, String)> {
        let written =
            stage.dead_letter.as_ref().map(|(_, at)| *at).or(stage.max_attempts.map(|(_, at)| at))?;
        if kind.role() == Role::Producer {
            return Some((
                written,
                format!(
                    "kind \"{}\" is a producer: `dead_letter` and `max_attempts` are for stages that take events",
                    stage.kind
                ),
            ));
        }
        let (target, at) = stage.dead_letter.as_ref()?;
        let result = match &self.dead_letters {
            Some(targets) => targets.check(target),
            None => Err("this program offers no dead-letter targets".to_string()),
        };
        result.err().map(|why| (*at, format!("`dead_letter`: {why}")))
    }

    /// The kind called `name`.
    pub fn kind(&self, name: &str) -> Option<&dyn StageKind> {
        self.kinds.get(name).map(|kind| kind.as_ref())
    }

    /// Every kind, by name.
    pub fn kinds(&self) -> impl Iterator<Item = &dyn StageKind> {
        self.kinds.values().map(|kind| kind.as_ref())
    }

    /// Every problem in the file: kinds, settings, subscriptions, types, cycles, dangling producers.
    pub fn check(&self, file: &PipelineFile) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        let mut report = |location: Location, stage: &str, message: String| {
            errors.push(ConfigError {
                file: file.path.clone(),
                location: Some(location),
                stage: Some(stage.to_string()),
                message,
            });
        };
        let by_id: HashMap<&str, &StageDecl> =
            file.stages.iter().map(|stage| (stage.id.as_str(), stage)).collect();
        for stage in &file.stages {
            match self.kind(&stage.kind) {
                Some(kind) => {
                    self.check_settings(stage, kind, &mut report);
                    if let Some((location, why)) = self.check_failure_policy(stage, kind) {
                        report(location, &stage.id, why);
                    }
                }
                None => {
                    let hint = did_you_mean(&stage.kind, self.kinds.keys().copied(), '"');
                    let known: Vec<&str> = self.kinds.keys().copied().collect();
                    report(
                        stage.kind_location,
                        &stage.id,
                        format!("unknown kind \"{}\"{hint}; known kinds: {}", stage.kind, known.join(", ")),
                    );
                }
            }
            for subscription in &stage.subscribe_to {
                if let Some(producer) = by_id.get(subscription.producer.as_str()) {
                    check_dispatch(producer, subscription, &stage.id, &mut report);
                }
            }
        }
        let nodes: Vec<Node<'_>> = file
            .stages
            .iter()
            .map(|stage| {
                let kind = self.kind(&stage.kind);
                Node {
                    id: &stage.id,
                    types: kind.map(|kind| (kind.input(), kind.output())),
                    subscriptions: stage.subscribe_to.iter().map(|s| s.producer.as_str()).collect(),
                    dispatcher: stage.dispatcher.is_some(),
                    workers: stage.workers.is_some(),
                    open: kind.is_none_or(|kind| kind.accepts_external_subscribers()),
                }
            })
            .collect();
        for problem in graph::problems(&nodes) {
            let (stage, location, message) = describe(file, &nodes, problem);
            report(location, &file.stages[stage].id, message);
        }
        errors.sort_by_key(|error| error.location.map(|at| (at.line, at.column)));
        if errors.is_empty() { Ok(()) } else { Err(ConfigErrors(errors)) }
    }

    /// The problems of one stage's kind-specific settings: unknown, missing, invalid.
    fn check_settings(
        &self,
        stage: &StageDecl,
        kind: &dyn StageKind,
        report: &mut impl FnMut(Location, &str, String),
    ) {
        // A missing or unknown key also fails `check_settings`: say it once.
        let mut keys_ok = true;
        let docs = kind.settings();
        let documented: Vec<&str> = docs.iter().map(|doc| doc.name).collect();
        for setting in &stage.settings {
            if !documented.contains(&setting.key.as_str()) {
                keys_ok = false;
                let hint =
                    did_you_mean(&setting.key, documented.iter().chain(COMMON_KEYS.iter()).copied(), '`');
                let valid = if documented.is_empty() { "none".to_string() } else { documented.join(", ") };
                report(
                    setting.location,
                    &stage.id,
                    format!(
                        "unknown setting `{}` for kind \"{}\"{hint}; its settings are: {valid}",
                        setting.key, stage.kind
                    ),
                );
            }
        }
        for doc in docs.iter().filter(|doc| doc.required) {
            if stage.setting(doc.name).is_none() {
                keys_ok = false;
                report(
                    stage.location,
                    &stage.id,
                    format!("missing setting `{}` for kind \"{}\": {}", doc.name, stage.kind, doc.help),
                );
            }
        }
        if keys_ok && let Err(why) = kind.check_settings(stage) {
            report(stage.location, &stage.id, why);
        }
    }

    /// Checks the file, then builds its pipeline (not started).
    pub fn build(&self, file: &PipelineFile, context: &BuildContext) -> Result<Pipeline, ConfigErrors> {
        self.check(file)?;
        let mut pipeline = Pipeline::new();
        let mut errors = Vec::new();
        for stage in &file.stages {
            let kind = self.kind(&stage.kind).expect("checked");
            let built = kind.build(stage, &mut pipeline, context).and_then(|()| {
                if stage.dead_letter.is_none() && stage.max_attempts.is_none() {
                    return Ok(());
                }
                let writer = match (&stage.dead_letter, &self.dead_letters) {
                    (Some((target, _)), Some(targets)) => Some(targets.open(&stage.id, target, context)?),
                    _ => None,
                };
                kind.build_failure_policy(stage, &mut pipeline, writer)
            });
            if let Err(message) = built {
                errors.push(ConfigError {
                    file: file.path.clone(),
                    location: Some(stage.location),
                    stage: Some(stage.id.clone()),
                    message,
                });
            }
        }
        if errors.is_empty() { Ok(pipeline) } else { Err(ConfigErrors(errors)) }
    }
}

/// ` (did you mean "x"?)` when `word` looks like a typo of a candidate, quoted with `quote`.
fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>, quote: char) -> String {
    closest(word, candidates).map(|near| format!(" (did you mean {quote}{near}{quote}?)")).unwrap_or_default()
}

/// Where `subscription` of stage `stage` meets its producer's dispatcher: partitions and selectors.
fn check_dispatch(
    producer: &StageDecl,
    subscription: &SubscriptionDecl,
    stage: &str,
    report: &mut impl FnMut(Location, &str, String),
) {
    let partitions = match producer.dispatcher {
        Some((DispatcherDecl::Partition { partitions }, _)) => Some(partitions),
        _ => None,
    };
    match (partitions, subscription.partition) {
        (Some(count), None) => report(
            subscription.location,
            stage,
            format!("'{}' partitions its events: name a `partition` (0..{count})", producer.id),
        ),
        (Some(count), Some(partition)) if partition >= count => report(
            subscription.location,
            stage,
            format!("partition {partition} does not exist: '{}' has {count} (0..{count})", producer.id),
        ),
        (None, Some(_)) => report(
            subscription.location,
            stage,
            format!("`partition` needs '{}' to have a partition dispatcher", producer.id),
        ),
        _ => {}
    }
    let broadcast = matches!(producer.dispatcher, Some((DispatcherDecl::Broadcast, _)));
    if subscription.selector.is_some() && !broadcast {
        report(
            subscription.location,
            stage,
            format!("`selector` needs '{}' to have a broadcast dispatcher", producer.id),
        );
    }
}

/// A graph problem in the file's words: the stage concerned, where, and what is wrong.
fn describe(file: &PipelineFile, nodes: &[Node<'_>], problem: Problem) -> (usize, Location, String) {
    let stages = &file.stages;
    let subscription = |node: usize, index: usize| &stages[node].subscribe_to[index];
    match problem {
        Problem::DuplicateId { node } => {
            (node, stages[node].location, "this id is used by an earlier stage too".into())
        }
        Problem::ProducerSubscribes { node, subscription: index } => (
            node,
            subscription(node, index).location,
            format!(
                "kind \"{}\" is a producer: it cannot subscribe to other stages ('{}')",
                stages[node].kind,
                subscription(node, index).producer
            ),
        ),
        Problem::ProducerWorkers { node } => (
            node,
            stages[node].workers.map_or(stages[node].location, |(_, at)| at),
            "worker pools are for consumers and producer-consumers, not producers".into(),
        ),
        Problem::ConsumerDispatcher { node } => (
            node,
            stages[node].dispatcher.map_or(stages[node].location, |(_, at)| at),
            format!(
                "kind \"{}\" is a consumer: it emits nothing, so it has no dispatcher",
                stages[node].kind
            ),
        ),
        Problem::UnknownProducer { node, subscription: index } => {
            let producer = &subscription(node, index).producer;
            let hint = did_you_mean(producer, nodes.iter().map(|node| node.id), '\'');
            (
                node,
                subscription(node, index).location,
                format!("subscribes to '{producer}', which is not a stage in this file{hint}"),
            )
        }
        Problem::SubscribesToConsumer { node, subscription: index, producer } => (
            node,
            subscription(node, index).location,
            format!("subscribes to '{}', a consumer, which emits no events", stages[producer].id),
        ),
        Problem::TypeMismatch { node, subscription: index, producer, takes, emits } => (
            node,
            subscription(node, index).location,
            format!(
                "takes {} events but '{}' (kind \"{}\") emits {} events",
                takes.name, stages[producer].id, stages[producer].kind, emits.name
            ),
        ),
        Problem::Dangling { node } => (
            node,
            stages[node].location,
            "emits events but no stage subscribes to it (add a consumer with subscribe_to)".into(),
        ),
        Problem::Cycle { nodes: cycle } => (
            cycle[0],
            stages[cycle[0]].location,
            format!("the stages form a cycle: {}", graph::cycle_text(nodes, &cycle)),
        ),
    }
}
