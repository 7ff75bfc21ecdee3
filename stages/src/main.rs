//! The `stageflow` command: runs pipelines described in TOML files.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use stageflow::config::{to_dot, to_mermaid};
use stageflow_stages::cli::{self, RunOptions};
use stageflow_stages::registry;

/// stageflow: demand-driven dataflow pipelines, in the style of GenStage.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines are written to stderr: text for people, json for machines (one object per line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Readable lines.
    Text,
    /// One JSON object per line (tracing-subscriber's JSON format).
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a pipeline file until its sources end, `--for` passes or Ctrl-C; then drains and prints a summary.
    #[command(
        after_help = "Examples:\n  stageflow run pipelines/demo.toml\n  stageflow run pipelines/demo.toml --for 10s --set numbers.count=5000\n  stageflow run pipelines/tweets-cluster.toml --part process\n  RUST_LOG=debug stageflow run pipelines/demo.toml > run.log"
    )]
    Run {
        /// The pipeline file (TOML).
        file: PathBuf,
        /// Stop after this long (e.g. 30s, 5m), draining what was accepted.
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Directory for embedded stores and output files.
        #[arg(long, default_value = "stageflow-data")]
        data_dir: PathBuf,
        /// How long draining may take after the end, `--for` or Ctrl-C before the run fails.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
        drain_timeout: Duration,
        /// Overrides a stage setting: stage.key=value (value read as TOML, else as text). Repeatable.
        #[arg(long = "set", value_name = "STAGE.KEY=VALUE")]
        overrides: Vec<String>,
        /// Serves the live page, /metrics, /healthz, /readyz, /api and /tap at this address (PORT means 127.0.0.1:PORT).
        #[arg(long, value_name = "ADDR", value_parser = stageflow_stages::http::parse_addr)]
        http: Option<std::net::SocketAddr>,
        /// Runs only the stages of this part (repeatable); edges to other parts go through
        /// NATS JetStream (`[pipeline.cluster]`). Without it every part runs here.
        #[arg(long = "part", value_name = "PART")]
        parts: Vec<String>,
    },
    /// Checks a pipeline file without running it: every problem, with file, line, column and stage.
    #[command(after_help = "Example:\n  stageflow check pipelines/demo.toml")]
    Check {
        /// The pipeline file (TOML).
        file: PathBuf,
    },
    /// Prints the stage graph of a pipeline file as Mermaid or DOT text.
    #[command(
        after_help = "Examples:\n  stageflow graph pipelines/demo.toml\n  stageflow graph pipelines/demo.toml --format dot | dot -Tsvg > demo.svg"
    )]
    Graph {
        /// The pipeline file (TOML).
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
        format: GraphFormat,
    },
    /// Lists the stage kinds pipeline files can use, with their settings.
    #[command(after_help = "Example:\n  stageflow kinds")]
    Kinds,
    /// Runs the message broker: durable topics over a line protocol (try it with nc or telnet).
    Broker(stageflow_stages::broker::BrokerArgs),
    /// Serves emulated tweet streams (SSE) at /tweets/1 and /tweets/2, the lexicon and per-connection stats.
    #[command(
        after_help = "Examples:\n  stageflow emulate\n  stageflow emulate --addr 127.0.0.1:4000 --rate max --seed 7 --limit 100000\n  curl -N http://127.0.0.1:4000/tweets/1"
    )]
    Emulate(stageflow_stages::emulator::EmulateArgs),
    /// Runs the telnet server: `twitter` watches the live tweet pipeline, shared by every session.
    Serve(stageflow_stages::serve::ServeArgs),
    /// Lists the dead letters of a data directory (its dead-letters/*.jsonl) by stage and error.
    #[command(after_help = "Example:\n  stageflow dead-letters stageflow-data")]
    DeadLetters {
        /// The data directory (or a directory of dead-letter files).
        dir: PathBuf,
    },
    /// Feeds the events of a dead-letter file back into a stage of a pipeline, once the cause is fixed.
    #[command(
        after_help = "Example:\n  stageflow replay stageflow-data/dead-letters/store.jsonl --into pipelines/tweets.toml --stage store"
    )]
    Replay {
        /// The dead-letter file (JSONL).
        file: PathBuf,
        /// The pipeline file whose stage gets the events; only that stage and what is downstream of it run.
        #[arg(long)]
        into: PathBuf,
        /// The stage to feed (its records in FILE are replayed).
        #[arg(long)]
        stage: String,
        /// Directory for embedded stores and output files.
        #[arg(long, default_value = "stageflow-data")]
        data_dir: PathBuf,
        /// How long draining may take at the end before the run fails.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
        drain_timeout: Duration,
    },
    /// Prints a sample of the events a stage of a running pipeline emits, as JSON lines (needs `run --http`).
    #[command(
        after_help = "Examples:\n  stageflow run pipelines/tweets.toml --http 9090 &\n  stageflow tap http://127.0.0.1:9090 tweets --limit 5\n  stageflow tap http://127.0.0.1:9090 aggregator --sample 0.01"
    )]
    Tap(stageflow_stages::http::tap::TapArgs),
}

/// How `graph` writes the graph.
#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    /// Mermaid flowchart.
    Mermaid,
    /// Graphviz DOT.
    Dot,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
    // A stage that panics is restarted by its supervisor (and counted); one
    // log line says so, instead of the default hook's report on stderr.
    std::panic::set_hook(Box::new(|info| {
        tracing::warn!("a stage panicked (its supervisor restarts it): {info}")
    }));
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let registry = registry();
    let result = match cli.command {
        Command::Run { file, duration, data_dir, drain_timeout, overrides, http, parts } => {
            runtime.block_on(cli::run_file(
                &registry,
                &file,
                &overrides,
                RunOptions { duration, data_dir, drain_timeout, http, parts },
            ))
        }
        Command::Check { file } => cli::load(&registry, &file, &[], &Default::default())
            .map(|file| println!("{}", cli::check_report(&file))),
        Command::Graph { file, format } => {
            cli::load(&registry, &file, &[], &Default::default()).map(|file| match format {
                GraphFormat::Mermaid => print!("{}", to_mermaid(&file)),
                GraphFormat::Dot => print!("{}", to_dot(&file)),
            })
        }
        Command::Kinds => {
            print!("{}", cli::kinds_report(&registry));
            Ok(())
        }
        Command::DeadLetters { dir } => {
            stageflow_stages::dead_letters::list(&dir).map(|text| println!("{text}"))
        }
        Command::Replay { file, into, stage, data_dir, drain_timeout } => {
            runtime.block_on(stageflow_stages::dead_letters::replay::run_replay(
                &registry,
                &file,
                &into,
                &stage,
                RunOptions { duration: None, data_dir, drain_timeout, http: None, parts: Vec::new() },
            ))
        }
        Command::Broker(args) => runtime.block_on(stageflow_stages::broker::run_broker(args)),
        Command::Emulate(args) => runtime.block_on(stageflow_stages::emulator::run_emulate(args)),
        Command::Serve(args) => runtime.block_on(stageflow_stages::serve::run_serve(args)),
        Command::Tap(args) => runtime.block_on(stageflow_stages::http::tap::run_tap(args, std::io::stdout())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
