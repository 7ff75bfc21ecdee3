//! Pipelines written in TOML: parsing with locations, validation against a
//! registry of stage kinds, and building a [`Pipeline`](crate::Pipeline).
//!
//! ```toml
//! [pipeline]
//! name = "demo"
//!
//! [[stage]]
//! id = "numbers"
//! kind = "numbers"          # from the registry
//! count = 1_000_000         # kind-specific settings
//!
//! [[stage]]
//! id = "sum"
//! kind = "sum"
//! subscribe_to = [{ id = "numbers", max_demand = 500, min_demand = 250 }]
//! ```
//!
//! The layers are separate, as in Vector: [`parse_pipeline`] reads the file
//! into declarations, [`Registry::check`] finds every problem (each
//! [`ConfigError`] names the file, line, column and stage; the graph's
//! problems — roles, types, dangling producers, cycles — come from the same
//! graph model [`Pipeline::validate`](crate::Pipeline::validate) uses, with
//! did-you-mean hints from [`closest`] added here), and [`Registry::build`]
//! turns a checked file into a pipeline.

mod env;
mod kind;
mod parse;
mod registry;
mod render;
mod resources;
mod suggest;

pub use env::expand_env;
pub use kind::{Event, Kind, Settings, Signature, kind, settings};
pub use parse::parse_pipeline;
pub use registry::{
    BuildContext, DispatcherChoices, EventType, Registry, Role, SettingDoc, StageKind, configure,
};
pub use registry::{DeadLetterRecord, DeadLetterTargets, DeadLetterWriter};
pub use render::{to_dot, to_mermaid};
pub use resources::Resources;
pub use suggest::closest;

use std::fmt;
use std::path::PathBuf;

use crate::buffer::BufferKeep;
use crate::demand::DemandBounds;
use crate::link::CancelMode;
use crate::pool::PoolConfig;

/// A line and column in a pipeline file, both counted from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
}

impl Location {
    /// The location of byte `offset` in `text`.
    pub fn of_offset(text: &str, offset: usize) -> Location {
        let before = &text[..offset.min(text.len())];
        let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
        Location { line: before.matches('\n').count() + 1, column: before[line_start..].chars().count() + 1 }
    }
}

/// One problem in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// Where in it, when known.
    pub location: Option<Location>,
    /// The stage concerned, when there is one.
    pub stage: Option<String>,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(location) = self.location {
            write!(f, ":{}:{}", location.line, location.column)?;
        }
        write!(f, ": ")?;
        if let Some(stage) = &self.stage {
            write!(f, "stage '{stage}': ")?;
        }
        write!(f, "{}", self.message)
    }
}

/// Every problem found in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A pipeline file, read and located but not yet checked against kinds.
#[derive(Debug, Clone)]
pub struct PipelineFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// `[pipeline] name`.
    pub name: String,
    /// `[pipeline.settings]`, free-form, for every stage kind to read.
    pub settings: toml::Table,
    /// The `[[stage]]` tables, in file order.
    pub stages: Vec<StageDecl>,
    /// `[pipeline.cluster]`: where the distributed log joining the file's parts is, when written.
    pub cluster: Option<ClusterDecl>,
}

/// `[pipeline.cluster]`, read with locations; its keys are checked by the program that runs parts.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterDecl {
    /// Where the `[pipeline.cluster]` header is.
    pub location: Location,
    /// Its keys, with `${VAR}` references expanded.
    pub settings: Vec<Setting>,
}

/// The part a stage runs in when the file does not say.
pub const DEFAULT_PART: &str = "main";

/// One setting of a stage, with where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// The key.
    pub key: String,
    /// The value, with `${VAR}` references expanded.
    pub value: toml::Value,
    /// Where the key is.
    pub location: Location,
}

/// How a stage spreads its events over subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DispatcherDecl {
    /// Each event to one subscriber.
    #[default]
    Demand,
    /// Every event to every subscriber.
    Broadcast,
    /// Each event to the subscriber of its partition.
    Partition {
        /// How many partitions.
        partitions: usize,
    },
}

/// One entry of a stage's `subscribe_to`.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionDecl {
    /// The producer's id.
    pub producer: String,
    /// Credit bounds.
    pub bounds: DemandBounds,
    /// The partition to take, from a partition dispatcher.
    pub partition: Option<usize>,
    /// A named selector for a broadcast dispatcher, interpreted by the consuming kind.
    pub selector: Option<String>,
    /// What the consumer does when the producer ends.
    pub cancel: CancelMode,
    /// What decides an event's partition when this edge crosses between parts
    /// (e.g. `"user_id"`); `None` hashes the whole event.
    pub partition_by: Option<String>,
    /// Where the entry is.
    pub location: Location,
}

impl SubscriptionDecl {
    /// A subscription to `producer` with every option at its default, written at `location`.
    pub fn to(producer: &str, location: Location) -> Self {
        SubscriptionDecl {
            producer: producer.to_string(),
            bounds: DemandBounds::default(),
            partition: None,
            selector: None,
            cancel: CancelMode::Permanent,
            partition_by: None,
            location,
        }
    }
}

/// One `[[stage]]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct StageDecl {
    /// `id`.
    pub id: String,
    /// `kind`.
    pub kind: String,
    /// Where the table's `id` is.
    pub location: Location,
    /// Where `kind` is.
    pub kind_location: Location,
    /// Kind-specific settings: every key not listed below.
    pub settings: Vec<Setting>,
    /// `subscribe_to`.
    pub subscribe_to: Vec<SubscriptionDecl>,
    /// `dispatcher`, and where it was written.
    pub dispatcher: Option<(DispatcherDecl, Location)>,
    /// `buffer_size`.
    pub buffer_size: Option<usize>,
    /// `buffer_keep`.
    pub buffer_keep: Option<BufferKeep>,
    /// `workers = { min, max, autoscale, routing, events_per_worker }`, and where.
    pub workers: Option<(PoolConfig, Location)>,
    /// `part = "..."`: which process of a scaled-out run holds the stage, and where it was written.
    pub part: Option<(String, Location)>,
    /// `dead_letter = "<target>"`: where events it panics on (and documents a store rejects) go, and where.
    pub dead_letter: Option<(String, Location)>,
    /// `max_attempts = N`: tries per event before it is dead-lettered or lost (default 1), and where.
    pub max_attempts: Option<(u32, Location)>,
}

impl StageDecl {
    /// A stage `id` of `kind` with no settings, subscriptions or options, written at `location`
    /// (for stages a program adds to a file).
    pub fn new(id: &str, kind: &str, location: Location) -> Self {
        StageDecl {
            id: id.to_string(),
            kind: kind.to_string(),
            location,
            kind_location: location,
            settings: Vec::new(),
            subscribe_to: Vec::new(),
            dispatcher: None,
            buffer_size: None,
            buffer_keep: None,
            workers: None,
            part: None,
            dead_letter: None,
            max_attempts: None,
        }
    }

    /// The part this stage runs in ([`DEFAULT_PART`] unless the file says).
    pub fn part(&self) -> &str {
        self.part.as_ref().map_or(DEFAULT_PART, |(part, _)| part.as_str())
    }

    /// The kind-specific setting `key`, if written.
    pub fn setting(&self, key: &str) -> Option<&Setting> {
        self.settings.iter().find(|setting| setting.key == key)
    }

    /// The kind-specific settings as one table, to deserialize a kind's settings struct from.
    pub fn settings_table(&self) -> toml::Table {
        self.settings.iter().map(|setting| (setting.key.clone(), setting.value.clone())).collect()
    }

    /// The kind-specific settings deserialized into a kind's settings struct;
    /// the error names the offending key and what was expected.
    pub fn settings_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        toml::Value::Table(self.settings_table()).try_into::<T>().map_err(|error| {
            format!("invalid settings for kind \"{}\": {}", self.kind, error.to_string().trim_end())
        })
    }

    /// Replaces (or adds) a kind-specific setting, as `--set stage.key=value` does.
    pub fn set(&mut self, key: &str, value: toml::Value) {
        match self.settings.iter_mut().find(|setting| setting.key == key) {
            Some(setting) => setting.value = value,
            None => self.settings.push(Setting { key: key.to_string(), value, location: self.location }),
        }
    }
}
