//! `stageflow check`: loads a pipeline file and reports every problem, or ok.

use std::path::PathBuf;

use stageflow::config::{PipelineFile, Registry};

/// Arguments of `stageflow check`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// The pipeline file (TOML), or the name of a built-in one (see `stageflow pipelines`).
    pub file: PathBuf,
}

/// Runs `stageflow check`: prints the report of a valid file, or fails with every problem.
pub fn check_command(registry: &Registry, args: &CheckArgs) -> Result<(), String> {
    let file = crate::pipelines::load(registry, &args.file, &[], &Default::default())?;
    println!("{}", check_report(&file));
    Ok(())
}

/// `stageflow check`: the report printed for a valid file.
pub fn check_report(file: &PipelineFile) -> String {
    let subscriptions: usize = file.stages.iter().map(|s| s.subscribe_to.len()).sum();
    format!(
        "{}: ok — pipeline '{}', {} stages, {} subscriptions",
        file.path.display(),
        file.name,
        file.stages.len(),
        subscriptions
    )
}
