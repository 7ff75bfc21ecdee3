//! The registry of stage kinds a pipeline file may use, checking and building.

use std::any::TypeId;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use super::kind::{Event, Kind, KindOf};
use super::parse::COMMON_KEYS;
use super::resources::Resources;
use super::{ConfigError, ConfigErrors, DispatcherDecl, Location, PipelineFile, StageDecl};
use crate::dispatcher::{BroadcastDispatcher, DemandDispatcher, Dispatcher, PartitionDispatcher, Selector};
use crate::graph::{closest, find_cycle};
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

/// The Rust type of events on one side of a stage, with a readable name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventType {
    /// Compared to type-check subscriptions.
    pub id: TypeId,
    /// Shown in errors.
    pub name: &'static str,
}

impl EventType {
    /// The event type `T`, named by its [`Event::NAME`].
    pub fn of<T: Event>() -> Self {
        EventType { id: TypeId::of::<T>(), name: T::NAME }
    }
}

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
        let mut seen = HashSet::new();
        for stage in &file.stages {
            if !seen.insert(stage.id.as_str()) {
                report(stage.location, &stage.id, "this id is used by an earlier stage too".into());
            }
        }
        let by_id: HashMap<&str, &StageDecl> =
            file.stages.iter().map(|stage| (stage.id.as_str(), stage)).collect();
        let kind_of = |stage: &StageDecl| self.kind(&stage.kind);
        let mut subscribed: HashSet<&str> = HashSet::new();
        for stage in &file.stages {
            let Some(kind) = kind_of(stage) else {
                let hint = closest(&stage.kind, self.kinds.keys().copied())
                    .map(|near| format!(" (did you mean \"{near}\"?)"))
                    .unwrap_or_default();
                let known: Vec<&str> = self.kinds.keys().copied().collect();
                report(
                    stage.kind_location,
                    &stage.id,
                    format!("unknown kind \"{}\"{hint}; known kinds: {}", stage.kind, known.join(", ")),
                );
                continue;
            };
            // A missing or unknown key also fails `check_settings`: say it once.
            let mut keys_ok = true;
            let documented: Vec<&str> = kind.settings().iter().map(|doc| doc.name).collect();
            for setting in &stage.settings {
                if !documented.contains(&setting.key.as_str()) {
                    keys_ok = false;
                    let hint = closest(&setting.key, documented.iter().chain(COMMON_KEYS.iter()).copied())
                        .map(|near| format!(" (did you mean `{near}`?)"))
                        .unwrap_or_default();
                    let valid =
                        if documented.is_empty() { "none".to_string() } else { documented.join(", ") };
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
            for doc in kind.settings().iter().filter(|doc| doc.required) {
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
            match kind.role() {
                Role::Producer if !stage.subscribe_to.is_empty() => report(
                    stage.subscribe_to[0].location,
                    &stage.id,
                    format!("kind \"{}\" is a producer: it cannot subscribe to other stages", stage.kind),
                ),
                Role::Producer if stage.workers.is_some() => report(
                    stage.workers.expect("checked").1,
                    &stage.id,
                    "worker pools are for consumers and producer-consumers, not producers".into(),
                ),
                Role::Consumer if stage.dispatcher.is_some() => report(
                    stage.dispatcher.expect("checked").1,
                    &stage.id,
                    format!(
                        "kind \"{}\" is a consumer: it emits nothing, so it has no dispatcher",
                        stage.kind
                    ),
                ),
                _ => {}
            }
            for subscription in &stage.subscribe_to {
                subscribed.insert(subscription.producer.as_str());
                let Some(producer) = by_id.get(subscription.producer.as_str()) else {
                    let hint = closest(&subscription.producer, by_id.keys().copied())
                        .map(|near| format!(" (did you mean '{near}'?)"))
                        .unwrap_or_default();
                    report(
                        subscription.location,
                        &stage.id,
                        format!(
                            "subscribes to '{}', which is not a stage in this file{hint}",
                            subscription.producer
                        ),
                    );
                    continue;
                };
                let Some(producer_kind) = kind_of(producer) else { continue };
                match (producer_kind.output(), kind.input()) {
                    (None, _) => report(
                        subscription.location,
                        &stage.id,
                        format!("subscribes to '{}', a consumer, which emits no events", producer.id),
                    ),
                    (Some(emitted), Some(taken)) if emitted.id != taken.id => report(
                        subscription.location,
                        &stage.id,
                        format!(
                            "takes {} events but '{}' (kind \"{}\") emits {} events",
                            taken.name, producer.id, producer.kind, emitted.name
                        ),
                    ),
                    _ => {}
                }
                let partitions = match producer.dispatcher {
                    Some((DispatcherDecl::Partition { partitions }, _)) => Some(partitions),
                    _ => None,
                };
                match (partitions, subscription.partition) {
                    (Some(count), None) => report(
                        subscription.location,
                        &stage.id,
                        format!("'{}' partitions its events: name a `partition` (0..{count})", producer.id),
                    ),
                    (Some(count), Some(partition)) if partition >= count => report(
                        subscription.location,
                        &stage.id,
                        format!(
                            "partition {partition} does not exist: '{}' has {count} (0..{count})",
                            producer.id
                        ),
                    ),
                    (None, Some(_)) => report(
                        subscription.location,
                        &stage.id,
                        format!("`partition` needs '{}' to have a partition dispatcher", producer.id),
                    ),
                    _ => {}
                }
                let broadcast = matches!(producer.dispatcher, Some((DispatcherDecl::Broadcast, _)));
                if subscription.selector.is_some() && !broadcast {
                    report(
                        subscription.location,
                        &stage.id,
                        format!("`selector` needs '{}' to have a broadcast dispatcher", producer.id),
                    );
                }
            }
        }
        for stage in &file.stages {
            let Some(kind) = kind_of(stage) else { continue };
            if kind.output().is_some()
                && !subscribed.contains(stage.id.as_str())
                && !kind.accepts_external_subscribers()
            {
                report(
                    stage.location,
                    &stage.id,
                    "emits events but no stage subscribes to it (add a consumer with subscribe_to)".into(),
                );
            }
        }
        let ids: Vec<String> = file.stages.iter().map(|stage| stage.id.clone()).collect();
        let index: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
        let upstreams = |i: usize| -> Vec<usize> {
            file.stages[i]
                .subscribe_to
                .iter()
                .filter_map(|s| index.get(s.producer.as_str()).copied())
                .collect()
        };
        if let Some(cycle) = find_cycle(&ids, &upstreams) {
            let first = by_id[cycle[0].as_str()];
            report(first.location, &first.id, format!("the stages form a cycle: {}", cycle.join(" -> ")));
        }
        if errors.is_empty() { Ok(()) } else { Err(ConfigErrors(errors)) }
    }

    /// Checks the file, then builds its pipeline (not started).
    pub fn build(&self, file: &PipelineFile, context: &BuildContext) -> Result<Pipeline, ConfigErrors> {
        self.check(file)?;
        let mut pipeline = Pipeline::new();
        let mut errors = Vec::new();
        for stage in &file.stages {
            let kind = self.kind(&stage.kind).expect("checked");
            if let Err(message) = kind.build(stage, &mut pipeline, context) {
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
