//! The stage kinds pipeline files can name, and the registry that offers them.
//!
//! Each kind is small: its settings struct, how it checks them, and how it
//! adds its stage to a pipeline through [`configure`] for the common keys.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use stageflow::config::{
    BuildContext, DispatcherChoices, EventType, Registry, Role, SettingDoc, StageDecl, StageKind, configure,
};
use stageflow::ops::{FromIter, Map};
use stageflow::{Consumer, Events, Pipeline};

/// Every stage kind this program knows.
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    registry
        .register(NumbersKind)
        .register(ScaleKind)
        .register(SumKind)
        .register(FormatKind)
        .register(PrintKind);
    crate::analysis::kinds::register(&mut registry);
    crate::storage::register(&mut registry);
    crate::csv_source::register(&mut registry);
    crate::broker_stages::register(&mut registry);
    registry
}

fn u64_events() -> EventType {
    EventType::of::<u64>("u64")
}

fn text_events() -> EventType {
    EventType::of::<String>("text")
}

/// `kind = "numbers"`: emits `start`, `start + 1`, … (`count` of them, or without end).
pub struct NumbersKind;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NumbersSettings {
    #[serde(default)]
    start: u64,
    count: Option<u64>,
}

impl StageKind for NumbersKind {
    fn name(&self) -> &'static str {
        "numbers"
    }
    fn summary(&self) -> &'static str {
        "emits start, start+1, ... as demand allows; ends after `count` numbers"
    }
    fn role(&self) -> Role {
        Role::Producer
    }
    fn input(&self) -> Option<EventType> {
        None
    }
    fn output(&self) -> Option<EventType> {
        Some(u64_events())
    }
    fn settings(&self) -> &'static [SettingDoc] {
        &[
            SettingDoc { name: "start", required: false, help: "first number (default 0)" },
            SettingDoc { name: "count", required: false, help: "how many numbers (default: no end)" },
        ]
    }
    fn check_settings(&self, stage: &StageDecl) -> Result<(), String> {
        stage.settings_as::<NumbersSettings>().map(|_| ())
    }
    fn build(&self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let settings: NumbersSettings = stage.settings_as()?;
        let start = settings.start;
        let end = settings.count.map_or(u64::MAX, |count| start.saturating_add(count));
        let config = pipeline.producer(&stage.id, move || FromIter::new(start..end));
        configure(stage, config, &DispatcherChoices::cloneable().with_partition(|x: &u64| *x as usize), None)
    }
}

/// `kind = "scale"`: multiplies every number by `factor` (wrapping on overflow).
pub struct ScaleKind;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleSettings {
    factor: u64,
}

impl StageKind for ScaleKind {
    fn name(&self) -> &'static str {
        "scale"
    }
    fn summary(&self) -> &'static str {
        "multiplies each number by `factor`"
    }
    fn role(&self) -> Role {
        Role::ProducerConsumer
    }
    fn input(&self) -> Option<EventType> {
        Some(u64_events())
    }
    fn output(&self) -> Option<EventType> {
        Some(u64_events())
    }
    fn settings(&self) -> &'static [SettingDoc] {
        &[SettingDoc { name: "factor", required: true, help: "what every number is multiplied by" }]
    }
    fn check_settings(&self, stage: &StageDecl) -> Result<(), String> {
        stage.settings_as::<ScaleSettings>().map(|_| ())
    }
    fn build(&self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let factor = stage.settings_as::<ScaleSettings>()?.factor;
        let config =
            pipeline.producer_consumer(&stage.id, move || Map::new(move |x: u64| x.wrapping_mul(factor)));
        configure(stage, config, &DispatcherChoices::cloneable().with_partition(|x: &u64| *x as usize), None)
    }
}

/// `kind = "sum"`: adds up the numbers it takes and logs the total when its producers end.
pub struct SumKind;

/// Adds up numbers; the total is logged at the end.
struct Sum {
    stage: String,
    total: Arc<AtomicU64>,
}

impl Consumer for Sum {
    type In = u64;

    async fn handle_events(&mut self, events: &mut Events<u64>) {
        let batch = events.take_batch();
        let sum = batch.iter().fold(0u64, |acc, x| acc.wrapping_add(*x));
        self.total.fetch_add(sum, Ordering::Relaxed);
    }

    async fn flush(&mut self) {
        tracing::info!(stage = %self.stage, total = self.total.load(Ordering::Relaxed), "sum");
    }
}

impl StageKind for SumKind {
    fn name(&self) -> &'static str {
        "sum"
    }
    fn summary(&self) -> &'static str {
        "adds up the numbers it takes; logs the total at the end"
    }
    fn role(&self) -> Role {
        Role::Consumer
    }
    fn input(&self) -> Option<EventType> {
        Some(u64_events())
    }
    fn output(&self) -> Option<EventType> {
        None
    }
    fn settings(&self) -> &'static [SettingDoc] {
        &[]
    }
    fn check_settings(&self, _: &StageDecl) -> Result<(), String> {
        Ok(())
    }
    fn build(&self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let total = Arc::new(AtomicU64::new(0));
        let id = stage.id.clone();
        let config = pipeline.consumer(&stage.id, move || Sum { stage: id.clone(), total: total.clone() });
        configure(stage, config, &DispatcherChoices::demand_only(), None)
    }
}

/// `kind = "format"`: turns each number into a line of text through `template` (`{}` is the number).
pub struct FormatKind;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FormatSettings {
    template: String,
}

impl StageKind for FormatKind {
    fn name(&self) -> &'static str {
        "format"
    }
    fn summary(&self) -> &'static str {
        "turns each number into text through `template`"
    }
    fn role(&self) -> Role {
        Role::ProducerConsumer
    }
    fn input(&self) -> Option<EventType> {
        Some(u64_events())
    }
    fn output(&self) -> Option<EventType> {
        Some(text_events())
    }
    fn settings(&self) -> &'static [SettingDoc] {
        &[SettingDoc {
            name: "template",
            required: true,
            help: "text with {} where the number goes, e.g. \"n = {}\"",
        }]
    }
    fn check_settings(&self, stage: &StageDecl) -> Result<(), String> {
        let settings: FormatSettings = stage.settings_as()?;
        if !settings.template.contains("{}") {
            return Err(format!(
                "`template` must contain {{}} for the number, got \"{}\"",
                settings.template
            ));
        }
        Ok(())
    }
    fn build(&self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let template = stage.settings_as::<FormatSettings>()?.template;
        let config = pipeline.producer_consumer(&stage.id, move || {
            let template = template.clone();
            Map::new(move |x: u64| template.replace("{}", &x.to_string()))
        });
        configure(stage, config, &DispatcherChoices::cloneable(), None)
    }
}

/// `kind = "print"`: prints every `every`-th line of text to stdout.
pub struct PrintKind;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrintSettings {
    #[serde(default = "one")]
    every: u64,
}

fn one() -> u64 {
    1
}

/// Prints one line in `every`.
struct Print {
    every: u64,
    seen: u64,
}

impl Consumer for Print {
    type In = String;

    async fn handle_events(&mut self, events: &mut Events<String>) {
        for line in events {
            if self.seen.is_multiple_of(self.every) {
                println!("{line}");
            }
            self.seen += 1;
        }
    }
}

impl StageKind for PrintKind {
    fn name(&self) -> &'static str {
        "print"
    }
    fn summary(&self) -> &'static str {
        "prints lines of text to stdout"
    }
    fn role(&self) -> Role {
        Role::Consumer
    }
    fn input(&self) -> Option<EventType> {
        Some(text_events())
    }
    fn output(&self) -> Option<EventType> {
        None
    }
    fn settings(&self) -> &'static [SettingDoc] {
        &[SettingDoc { name: "every", required: false, help: "print one line in this many (default 1)" }]
    }
    fn check_settings(&self, stage: &StageDecl) -> Result<(), String> {
        match stage.settings_as::<PrintSettings>()?.every {
            0 => Err("`every` must be at least 1".into()),
            _ => Ok(()),
        }
    }
    fn build(&self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let every = stage.settings_as::<PrintSettings>()?.every;
        let config = pipeline.consumer(&stage.id, move || Print { every, seen: 0 });
        configure(stage, config, &DispatcherChoices::demand_only(), None)
    }
}
