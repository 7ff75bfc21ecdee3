//! `stageflow replay` and `stageflow dead-letters`: dead letters looked at
//! and fed back into a pipeline once their cause is fixed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use stageflow::config::Registry;

use super::run::RunOptions;
use crate::dead_letters::file::read_records;
use crate::dead_letters::replay::{absolute, replay_file, replay_plan};

/// Arguments of `stageflow dead-letters`.
#[derive(Debug, Clone, clap::Args)]
pub struct DeadLettersArgs {
    /// The data directory (or a directory of dead-letter files).
    pub dir: PathBuf,
}

/// Runs `stageflow dead-letters`: lists the letters by stage and error.
pub fn dead_letters_command(args: &DeadLettersArgs) -> Result<(), String> {
    crate::dead_letters::list(&args.dir).map(|text| println!("{text}"))
}

/// Arguments of `stageflow replay`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// The dead-letter file (JSONL).
    pub file: PathBuf,
    /// The pipeline file whose stage gets the events; only that stage and what is downstream of it run.
    #[arg(long)]
    pub into: PathBuf,
    /// The stage to feed (its records in FILE are replayed).
    #[arg(long)]
    pub stage: String,
    /// Directory for embedded stores and output files.
    #[arg(long, default_value = "stageflow-data")]
    pub data_dir: PathBuf,
    /// How long draining may take at the end before the run fails.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub drain_timeout: Duration,
}

/// Runs `stageflow replay` with its arguments.
pub async fn replay_command(registry: &Registry, args: ReplayArgs) -> Result<(), String> {
    let ReplayArgs { file, into, stage, data_dir, drain_timeout } = args;
    let options = RunOptions { duration: None, data_dir, drain_timeout, http: None, parts: Vec::new() };
    run_replay(registry, &file, &into, &stage, options).await
}

/// `stageflow replay FILE --into PIPELINE --stage ID`: runs `PIPELINE` cut
/// down to `ID` and its downstream, fed with `FILE`'s records of `ID`,
/// until they are handled; then prints the summary as `run` does.
pub async fn run_replay(
    registry: &Registry,
    letters: &Path,
    into: &Path,
    stage: &str,
    options: RunOptions,
) -> Result<(), String> {
    let letters = absolute(letters)?;
    let file = crate::pipelines::load(registry, into, &[], &Default::default())?;
    let replayed = replay_file(registry, &file, &letters, stage)?;
    let count = read_records(&letters)?.iter().filter(|record| record.stage == stage).count();
    if count == 0 {
        return Err(format!("{} holds no dead letters of stage '{stage}'", letters.display()));
    }
    println!("replaying {count} dead letters of '{stage}' from {}", letters.display());
    if let Some(note) = replay_plan(registry, &file, stage)?.note {
        println!("{note}");
    }
    super::run::run(registry, replayed, options).await
}
