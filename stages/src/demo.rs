//! The small number and text kinds of the demo pipelines: `numbers`,
//! `scale`, `sum`, `format` and `print`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use stageflow::config::{BuildContext, DispatcherChoices, Kind, StageDecl, configure, kind};
use stageflow::ops::{FromIter, Map};
use stageflow::{Consumer, Events, Nothing, Pipeline};

/// Numbers may go to a partition dispatcher: partitioned by value.
fn number_choices() -> DispatcherChoices<u64> {
    DispatcherChoices::cloneable().with_partition(|x: &u64| *x as usize)
}

/// emits start, start+1, ... as demand allows; ends after `count` numbers
#[kind("numbers", Nothing -> u64)]
pub struct NumbersKind {
    /// first number (default 0)
    #[serde(default)]
    start: u64,
    /// how many numbers (default: no end)
    count: Option<u64>,
}

impl Kind for NumbersKind {
    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let start = self.start;
        let end = self.count.map_or(u64::MAX, |count| start.saturating_add(count));
        let config = pipeline.producer(&stage.id, move || FromIter::new(start..end));
        configure(stage, config, &number_choices(), None)
    }
}

/// multiplies each number by `factor`
#[kind("scale", u64 -> u64)]
pub struct ScaleKind {
    /// what every number is multiplied by
    factor: u64,
}

impl Kind for ScaleKind {
    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let factor = self.factor;
        // Wrapping: a long run must not panic on overflow.
        let config =
            pipeline.producer_consumer(&stage.id, move || Map::new(move |x: u64| x.wrapping_mul(factor)));
        configure(stage, config, &number_choices(), None)
    }
}

/// adds up the numbers it takes; logs the total at the end
#[kind("sum", u64 -> Nothing)]
pub struct SumKind {}

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

impl Kind for SumKind {
    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let total = Arc::new(AtomicU64::new(0));
        let id = stage.id.clone();
        let config = pipeline.consumer(&stage.id, move || Sum { stage: id.clone(), total: total.clone() });
        configure(stage, config, &DispatcherChoices::demand_only(), None)
    }
}

/// turns each number into text through `template`
#[kind("format", u64 -> String)]
pub struct FormatKind {
    /// text with {} where the number goes, e.g. "n = {}"
    template: String,
}

impl Kind for FormatKind {
    fn check(&self, _: &StageDecl) -> Result<(), String> {
        if !self.template.contains("{}") {
            return Err(format!("`template` must contain {{}} for the number, got \"{}\"", self.template));
        }
        Ok(())
    }

    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let template = self.template;
        let config = pipeline.producer_consumer(&stage.id, move || {
            let template = template.clone();
            Map::new(move |x: u64| template.replace("{}", &x.to_string()))
        });
        configure(stage, config, &DispatcherChoices::cloneable(), None)
    }
}

/// prints lines of text to stdout
#[kind("print", String -> Nothing)]
pub struct PrintKind {
    /// print one line in this many (default 1)
    #[default(1)]
    every: u64,
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

impl Kind for PrintKind {
    fn check(&self, _: &StageDecl) -> Result<(), String> {
        match self.every {
            0 => Err("`every` must be at least 1".into()),
            _ => Ok(()),
        }
    }

    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let every = self.every;
        let config = pipeline.consumer(&stage.id, move || Print { every, seen: 0 });
        configure(stage, config, &DispatcherChoices::demand_only(), None)
    }
}
