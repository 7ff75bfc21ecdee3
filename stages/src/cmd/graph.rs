//! `stageflow graph`: the stage graph of a pipeline file as Mermaid or DOT text.

use std::path::PathBuf;

use clap::ValueEnum;
use stageflow::config::{Registry, to_dot, to_mermaid};

/// Arguments of `stageflow graph`.
#[derive(Debug, Clone, clap::Args)]
pub struct GraphArgs {
    /// The pipeline file (TOML), or the name of a built-in one (see `stageflow pipelines`).
    pub file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
    pub format: GraphFormat,
}

/// How `graph` writes the graph.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GraphFormat {
    /// Mermaid flowchart.
    Mermaid,
    /// Graphviz DOT.
    Dot,
}

/// Runs `stageflow graph`: loads and checks the file, prints its graph.
pub fn graph_command(registry: &Registry, args: &GraphArgs) -> Result<(), String> {
    let file = crate::pipelines::load(registry, &args.file, &[], &Default::default())?;
    match args.format {
        GraphFormat::Mermaid => print!("{}", to_mermaid(&file)),
        GraphFormat::Dot => print!("{}", to_dot(&file)),
    }
    Ok(())
}
