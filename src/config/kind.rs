//! How a stage kind is declared: its settings struct *is* the kind.
//!
//! To add a kind, write the struct a stage's table deserialises into, beside
//! the stage it builds, under [`#[kind("name", In -> Out)]`](macro@kind): the
//! name pipeline files use and the events it takes and emits (its role
//! follows: `Nothing -> T` is a producer, `T -> Nothing` a consumer). It
//! derives `serde::Deserialize` and turns the doc comments into the kind's
//! documentation (the struct's into its summary, each field's into that
//! setting's help; a field is required unless it is an `Option` or has a
//! default, written `#[default(value)]`). Then implement [`Kind`]: how it
//! adds its stage to a pipeline. (A struct of settings several kinds share
//! is a [`#[settings]`](macro@settings) struct, `#[serde(flatten)]`ed into theirs.)
//! Register it with [`Registry::add`](super::Registry::add). There is no
//! central list of settings or roles to keep in step.
//!
//! ```
//! use stageflow::config::{BuildContext, DispatcherChoices, Kind, Registry, StageDecl, configure, kind};
//! use stageflow::ops::FromIter;
//! use stageflow::{Nothing, Pipeline};
//!
//! /// emits start, start+1, ... as demand allows; ends after `count` numbers
//! #[kind("numbers", Nothing -> u64)]
//! struct Numbers {
//!     /// first number (default 1)
//!     #[default(1)]
//!     start: u64,
//!     /// how many numbers (default: no end)
//!     count: Option<u64>,
//! }
//!
//! impl Kind for Numbers {
//!     // Optional: checks beyond what deserialising does, run by `stageflow check` too.
//!     fn check(&self, _: &StageDecl) -> Result<(), String> {
//!         match self.count {
//!             Some(0) => Err("`count` must be at least 1".into()),
//!             _ => Ok(()),
//!         }
//!     }
//!
//!     fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
//!         let end = self.count.map_or(u64::MAX, |count| self.start.saturating_add(count));
//!         let start = self.start;
//!         let config = pipeline.producer(&stage.id, move || FromIter::new(start..end));
//!         configure(stage, config, &DispatcherChoices::cloneable(), None)
//!     }
//! }
//!
//! let mut registry = Registry::new();
//! registry.add::<Numbers>();
//! let numbers = registry.kind("numbers").unwrap();
//! assert_eq!(numbers.settings()[0].help, "first number (default 1)");
//! assert!(!numbers.settings()[0].required && !numbers.settings()[1].required);
//! ```
//!
//! Events crossing between kinds implement [`Event`], which names them in
//! error messages ("takes tweet score events but 'x' emits text events").
//! Anything a kind needs that is not a setting — a statistics hub shared by
//! the pipeline's stages, a channel the logger writes into — comes from the
//! [`BuildContext`]'s [`Resources`](super::Resources), never a global.

use std::any::TypeId;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::StageDecl;
use super::registry::{
    BuildContext, DeadLetterRecord, DeadLetterWriter, EventType, Role, SettingDoc, StageKind,
};
use crate::failure::{DeadLetter, FailurePolicy, KeepFn};
use crate::pipeline::Pipeline;
use crate::stage::Nothing;

pub use stageflow_derive::{kind, settings};

/// A type of event that flows between stage kinds, with the name errors use.
pub trait Event: Send + 'static {
    /// Shown in `stageflow kinds` and in type errors.
    const NAME: &'static str;

    /// A copy kept while a callback handles the event, so a stage with
    /// `max_attempts` or `dead_letter` can try it again or dead-letter it
    /// after a panic; `None` (the default) when it cannot be copied.
    fn retained(&self) -> Option<Self>
    where
        Self: Sized,
    {
        None
    }

    /// The event as JSON text, for its dead letter; `None` (the default) when it has no such form.
    fn to_json(&self) -> Option<String> {
        None
    }
}

impl Event for u64 {
    const NAME: &'static str = "u64";

    fn retained(&self) -> Option<Self> {
        Some(*self)
    }

    fn to_json(&self) -> Option<String> {
        Some(self.to_string())
    }
}

impl Event for String {
    const NAME: &'static str = "text";

    fn retained(&self) -> Option<Self> {
        Some(self.clone())
    }

    fn to_json(&self) -> Option<String> {
        Some(json_string(self))
    }
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            '\t' => quoted.push_str("\\t"),
            c if (c as u32) < 0x20 => quoted.push_str(&format!("\\u{:04x}", c as u32)),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// The "no events" side: a producer takes `Nothing`, a consumer emits `Nothing`.
impl Event for Nothing {
    const NAME: &'static str = "nothing";
}

/// A settings struct that documents itself; written by [`#[settings]`](macro@settings).
pub trait Settings: DeserializeOwned {
    /// One line on what the kind does (the struct's doc comment).
    const SUMMARY: &'static str;
    /// Its settings, in field order (from the fields' doc comments).
    fn docs() -> Vec<SettingDoc>;
}

/// A kind's name and the events it takes and emits; written by [`#[kind]`](macro@kind).
pub trait Signature {
    /// The name used in `kind = "..."`.
    const NAME: &'static str;
    /// The events it takes ([`Nothing`] for a producer).
    type In: Event;
    /// The events it emits ([`Nothing`] for a consumer).
    type Out: Event;
    /// Whether subscribers may join at run time, so no subscriber in the file is fine.
    const EXTERNAL_SUBSCRIBERS: bool;
}

/// A stage kind: a settings struct that knows which stage it builds.
pub trait Kind: Settings + Signature + 'static {
    /// Checks what deserialising cannot (ranges, files, combinations); run before every build.
    fn check(&self, _stage: &StageDecl) -> Result<(), String> {
        Ok(())
    }

    /// Adds the stage to `pipeline` (usually through [`configure`](super::configure) for the common keys).
    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, context: &BuildContext) -> Result<(), String>;
}

impl EventType {
    /// The event type `T`, named by its [`Event::NAME`].
    pub fn of<T: Event>() -> Self {
        EventType { id: TypeId::of::<T>(), name: T::NAME }
    }
}

/// The event type `T`, or `None` for [`Nothing`].
fn event_type<T: Event>() -> Option<EventType> {
    (TypeId::of::<T>() != TypeId::of::<Nothing>()).then(EventType::of::<T>)
}

/// A [`Kind`] seen through the object-safe [`StageKind`] the registry keeps.
pub(crate) struct KindOf<K>(PhantomData<fn() -> K>);

impl<K> KindOf<K> {
    pub(crate) fn new() -> Self {
        KindOf(PhantomData)
    }
}

impl<K: Kind> KindOf<K> {
    fn checked(stage: &StageDecl) -> Result<K, String> {
        let settings: K = stage.settings_as()?;
        settings.check(stage)?;
        Ok(settings)
    }
}

impl<K: Kind> StageKind for KindOf<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }
    fn summary(&self) -> &'static str {
        K::SUMMARY
    }
    fn role(&self) -> Role {
        match (event_type::<K::In>(), event_type::<K::Out>()) {
            (None, _) => Role::Producer,
            (Some(_), None) => Role::Consumer,
            (Some(_), Some(_)) => Role::ProducerConsumer,
        }
    }
    fn input(&self) -> Option<EventType> {
        event_type::<K::In>()
    }
    fn output(&self) -> Option<EventType> {
        event_type::<K::Out>()
    }
    fn settings(&self) -> Vec<SettingDoc> {
        K::docs()
    }
    fn accepts_external_subscribers(&self) -> bool {
        K::EXTERNAL_SUBSCRIBERS
    }
    fn check_settings(&self, stage: &StageDecl) -> Result<(), String> {
        Self::checked(stage).map(|_| ())
    }
    fn build(
        &self,
        stage: &StageDecl,
        pipeline: &mut Pipeline,
        context: &BuildContext,
    ) -> Result<(), String> {
        Self::checked(stage)?.build(stage, pipeline, context)
    }
    fn build_failure_policy(
        &self,
        stage: &StageDecl,
        pipeline: &mut Pipeline,
        dead_letters: Option<DeadLetterWriter>,
    ) -> Result<(), String> {
        let max_attempts = stage.max_attempts.map_or(1, |(attempts, _)| attempts);
        let keep: KeepFn<K::In> = Arc::new(|event: &K::In| event.retained());
        let mut policy = FailurePolicy::with_keep(max_attempts, keep);
        if let Some(write) = dead_letters {
            policy = policy.dead_letter(Arc::new(move |letter: DeadLetter<K::In>| {
                let event = letter.event.to_json();
                write(DeadLetterRecord {
                    stage: letter.stage,
                    error: letter.error,
                    attempts: letter.attempts,
                    event,
                })
            }));
        }
        pipeline.on_failure::<K::In>(&stage.id, policy)
    }
}
