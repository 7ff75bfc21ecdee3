//! The `stageflow` command line: one file per subcommand (`replay` also
//! holds `dead-letters`), each holding its
//! arguments (clap) and its process set-up (runtime, Ctrl-C, printing).
//! This is the only layer that knows clap; the library areas below it take
//! plain settings structs.

pub mod broker;
pub mod check;
pub mod emulate;
pub mod graph;
pub mod kinds;
pub mod pipelines;
pub mod replay;
pub mod run;
pub mod serve;
pub mod tap;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// stageflow: demand-driven dataflow pipelines, in the style of GenStage.
#[derive(Parser)]
#[command(name = "stageflow", version, about, long_about = None)]
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
        after_help = "Examples:\n  stageflow run demo\n  stageflow run pipelines/demo.toml --for 10s --set numbers.count=5000\n  stageflow run pipelines/tweets-cluster.toml --part process\n  RUST_LOG=debug stageflow run pipelines/demo.toml > run.log"
    )]
    Run(run::RunArgs),
    /// Checks a pipeline file without running it: every problem, with file, line, column and stage.
    #[command(after_help = "Example:\n  stageflow check pipelines/demo.toml")]
    Check(check::CheckArgs),
    /// Prints the stage graph of a pipeline file as Mermaid or DOT text.
    #[command(
        after_help = "Examples:\n  stageflow graph pipelines/demo.toml\n  stageflow graph pipelines/demo.toml --format dot | dot -Tsvg > demo.svg"
    )]
    Graph(graph::GraphArgs),
    /// Lists the stage kinds pipeline files can use, with their settings.
    #[command(after_help = "Examples:\n  stageflow kinds\n  stageflow kinds --markdown > docs/kinds.md")]
    Kinds(kinds::KindsArgs),
    /// Lists the pipelines built into the binary; run, check, graph and serve take their names.
    #[command(
        after_help = "Examples:\n  stageflow pipelines\n  stageflow run tweets --for 30s\n  stageflow check demo"
    )]
    Pipelines,
    /// Runs the message broker: durable topics over a line protocol (try it with nc or telnet).
    Broker(broker::BrokerArgs),
    /// Serves emulated tweet streams (SSE) at /tweets/1 and /tweets/2, the lexicon and per-connection stats.
    #[command(
        after_help = "Examples:\n  stageflow emulate\n  stageflow emulate --addr 127.0.0.1:4000 --rate max --seed 7 --limit 100000\n  curl -N http://127.0.0.1:4000/tweets/1"
    )]
    Emulate(emulate::EmulateArgs),
    /// Runs the telnet server: `twitter` watches the live tweet pipeline, shared by every session.
    Serve(serve::ServeArgs),
    /// Lists the dead letters of a data directory (its dead-letters/*.jsonl) by stage and error.
    #[command(after_help = "Example:\n  stageflow dead-letters stageflow-data")]
    DeadLetters(replay::DeadLettersArgs),
    /// Feeds the events of a dead-letter file back into a stage of a pipeline, once the cause is fixed.
    #[command(
        after_help = "Example:\n  stageflow replay stageflow-data/dead-letters/store.jsonl --into pipelines/tweets.toml --stage store"
    )]
    Replay(replay::ReplayArgs),
    /// Prints a sample of the events a stage of a running pipeline emits, as JSON lines (needs `run --http`).
    #[command(
        after_help = "Examples:\n  stageflow run pipelines/tweets.toml --http 9090 &\n  stageflow tap http://127.0.0.1:9090 tweets --limit 5\n  stageflow tap http://127.0.0.1:9090 aggregator --sample 0.01"
    )]
    Tap(tap::TapArgs),
}

/// The `stageflow` program: parses the command line, sets up logging and
/// the runtime, runs the subcommand and prints its error.
pub fn main() -> ExitCode {
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
    let registry = crate::registry();
    let result = match cli.command {
        Command::Run(args) => runtime.block_on(run::run_command(&registry, args)),
        Command::Check(args) => check::check_command(&registry, &args),
        Command::Graph(args) => graph::graph_command(&registry, &args),
        Command::Kinds(args) => kinds::kinds_command(&registry, &args),
        Command::Pipelines => {
            print!("{}", pipelines::pipelines_report());
            Ok(())
        }
        Command::Broker(args) => runtime.block_on(broker::run_broker(args)),
        Command::Emulate(args) => runtime.block_on(emulate::run_emulate(args)),
        Command::Serve(args) => runtime.block_on(serve::run_serve(args)),
        Command::DeadLetters(args) => replay::dead_letters_command(&args),
        Command::Replay(args) => runtime.block_on(replay::replay_command(&registry, args)),
        Command::Tap(args) => runtime.block_on(tap::run_tap(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
