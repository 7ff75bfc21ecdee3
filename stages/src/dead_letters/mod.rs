//! Dead letters: events a stage panicked on (after `max_attempts` tries) and
//! documents a store rejected for good, kept with the stage, the error, the
//! time and the event as JSON, instead of only a counter.
//!
//! A stage says where with `dead_letter = "<target>"`:
//!
//! | target | where |
//! |---|---|
//! | `"file"` | `dead-letters/<stage>.jsonl` in the data directory (the default of the sinks) |
//! | `"file:<path>"` | a JSONL file, relative to the data directory |
//! | `"broker://HOST:PORT/TOPIC"` | published to a broker topic, `msg` = the record |
//! | `"nats://HOST:PORT/SUBJECT"` | published to a JetStream subject (its stream is created when missing) |
//!
//! Each record is one JSON object ([`Record`]):
//! `{"stage", "error", "at", "attempts", "event"}`. Files are appended and
//! fsynced once per batch of records (a sink's rejected documents of one
//! batch, or one panicking event), before the stage goes on, so a record
//! the stage counted is on disk. A target that cannot take a record (disk
//! full, broker down) is retried with backoff while the stage waits: a dead
//! letter is never dropped silently.
//!
//! `stageflow dead-letters DIR` lists a data directory's files by stage and
//! error ([`summarize`]); `stageflow replay FILE --into PIPELINE --stage ID`
//! feeds their events back ([`replay`]).

pub mod file;
pub mod replay;
mod target;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use stageflow::config::{BuildContext, DeadLetterRecord, DeadLetterTargets, DeadLetterWriter};

pub use file::{Summary, SummaryRow, read_records, summarize};
pub use target::Target;

/// The folder of the default dead-letter files, in the data directory.
pub const DIRECTORY: &str = "dead-letters";

/// One dead letter as stored: a line of a dead-letter file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The stage that gave up on the event.
    pub stage: String,
    /// Why: the last panic's message, or the store's error.
    pub error: String,
    /// When, RFC 3339 UTC.
    pub at: String,
    /// How many times it was tried.
    pub attempts: u32,
    /// The event as JSON (`null` for events with no JSON form).
    pub event: Value,
}

impl Record {
    /// A record of now from what the engine or a sink hands over.
    pub fn now(letter: DeadLetterRecord) -> Self {
        let event = letter.event.and_then(|json| serde_json::from_str(&json).ok()).unwrap_or(Value::Null);
        Record {
            stage: letter.stage,
            error: letter.error,
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            attempts: letter.attempts,
            event,
        }
    }

    /// The record as one line of JSON (no line break).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }
}

/// Dead letters written per stage, for the summary table and statistics frames.
#[derive(Debug, Default)]
pub struct DeadLetterCounts {
    counts: Mutex<BTreeMap<String, u64>>,
}

impl DeadLetterCounts {
    /// The counts of the pipeline being built with `context` (its statistics frames report them).
    pub fn of(context: &BuildContext) -> Arc<DeadLetterCounts> {
        let counts = context.resources.get_or_default::<DeadLetterCounts>();
        crate::analysis::StatsHub::of(context).watch_dead_letters(counts.clone());
        counts
    }

    fn add(&self, stage: &str, count: usize) {
        *self.lock().entry(stage.to_string()).or_default() += count as u64;
    }

    /// Dead letters written so far, by stage (stages with none are absent).
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
        crate::sync::lock(&self.counts)
    }
}

/// Dead letters per stage as every report shows them (the summary table,
/// statistics frames, `/metrics`): the letters this program wrote (`written`,
/// from [`DeadLetterCounts::snapshot`]; a sink's rejected documents are only
/// there) or the engine's count (a stage without a target of this program),
/// whichever is larger. Stages with none are absent.
pub fn per_stage(
    written: &BTreeMap<String, u64>,
    stages: &[stageflow::StageSnapshot],
) -> BTreeMap<String, u64> {
    let mut counts = written.clone();
    for stage in stages.iter().filter(|stage| stage.dead_lettered > 0) {
        let count = counts.entry(stage.stage.clone()).or_default();
        *count = (*count).max(stage.dead_lettered);
    }
    counts.retain(|_, count| *count > 0);
    counts
}

/// Where one stage's dead letters go; clones share the target.
#[derive(Clone)]
pub struct DeadLetterOut {
    stage: String,
    target: Arc<target::Open>,
    counts: Arc<DeadLetterCounts>,
}

impl std::fmt::Debug for DeadLetterOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeadLetterOut({} -> {})", self.stage, self.target.describe())
    }
}

/// The longest wait between tries of a target that fails.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(5);

impl DeadLetterOut {
    /// Stage `stage`'s dead letters to `target` (`None`: the default file) of the pipeline built with `context`.
    pub fn open(stage: &str, target: Option<&str>, context: &BuildContext) -> Result<Self, String> {
        let target = match target {
            Some(text) => Target::parse(text)?,
            None => Target::DefaultFile,
        };
        Ok(DeadLetterOut {
            stage: stage.to_string(),
            target: Arc::new(target::Open::new(target, stage, context)),
            counts: DeadLetterCounts::of(context),
        })
    }

    /// Where the letters go, for messages.
    pub fn describe(&self) -> String {
        self.target.describe()
    }

    /// Stores `records` (one fsync or one round of publishes), retrying with
    /// backoff until the target takes them; then counts them.
    pub async fn write(&self, records: Vec<Record>) {
        if records.is_empty() {
            return;
        }
        let mut failures = 0u32;
        loop {
            match self.target.write(&records).await {
                Ok(()) => break,
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let wait = crate::backoff::backoff(failures, Duration::from_millis(100), MAX_RETRY_WAIT);
                    tracing::error!(
                        stage = %self.stage,
                        records = records.len(),
                        "cannot write dead letters to {}: {error}; retrying in {wait:?}",
                        self.describe()
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
        self.counts.add(&self.stage, records.len());
    }

    /// The engine's view: one record at a time.
    pub fn writer(&self) -> DeadLetterWriter {
        let out = self.clone();
        Arc::new(move |letter: DeadLetterRecord| {
            let out = out.clone();
            Box::pin(async move { out.write(vec![Record::now(letter)]).await })
        })
    }
}

/// `stageflow dead-letters DIR`: the listing printed, or why it cannot be read.
pub fn list(dir: &std::path::Path) -> Result<String, String> {
    let summary = summarize(dir)?;
    if summary.total == 0 {
        return Ok(format!("no dead letters in {}", dir.display()));
    }
    Ok(format!("{}\n{} dead letters", summary.table(), summary.total))
}

/// The dead-letter targets of the `stageflow` program, for [`stageflow::config::Registry::dead_letters`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Targets;

impl DeadLetterTargets for Targets {
    fn check(&self, target: &str) -> Result<(), String> {
        Target::parse(target).map(|_| ())
    }

    fn open(&self, stage: &str, target: &str, context: &BuildContext) -> Result<DeadLetterWriter, String> {
        Ok(DeadLetterOut::open(stage, Some(target), context)?.writer())
    }
}
