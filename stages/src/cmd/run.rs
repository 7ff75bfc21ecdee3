//! `stageflow run`: starts the emulator a file asks for, loads and runs the
//! file with a live view of every stage, prints the summary when it ends.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use comfy_table::Table;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Deserialize;
use stageflow::config::{BuildContext, ConfigErrors, PipelineFile, Registry, parse_pipeline};
use stageflow::{MetricsReader, StageSnapshot};

use super::emulate::EmulateArgs;
use crate::emulator::{EmulatorConfig, Rate, start_emulator};
use crate::pipelines::{EMULATOR_URL, describe, load};

/// Arguments of `stageflow run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The pipeline file (TOML), or the name of a built-in one (see `stageflow pipelines`).
    pub file: PathBuf,
    /// Stop after this long (e.g. 30s, 5m), draining what was accepted.
    #[arg(long = "for", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Directory for embedded stores and output files.
    #[arg(long, default_value = "stageflow-data")]
    pub data_dir: PathBuf,
    /// How long draining may take after the end, `--for` or Ctrl-C before the run fails.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub drain_timeout: Duration,
    /// Overrides a stage setting: stage.key=value (value read as TOML, else as text). Repeatable.
    #[arg(long = "set", value_name = "STAGE.KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Serves the live page, /metrics, /healthz, /readyz, /api and /tap at this address (PORT means 127.0.0.1:PORT).
    #[arg(long, value_name = "ADDR", value_parser = crate::http::parse_addr)]
    pub http: Option<std::net::SocketAddr>,
    /// Runs only the stages of this part (repeatable); edges to other parts go through
    /// NATS JetStream (`[pipeline.cluster]`). Without it every part runs here.
    #[arg(long = "part", value_name = "PART")]
    pub parts: Vec<String>,
}

/// Runs `stageflow run` with its arguments.
pub async fn run_command(registry: &Registry, args: RunArgs) -> Result<(), String> {
    let RunArgs { file, duration, data_dir, drain_timeout, overrides, http, parts } = args;
    run_file(registry, &file, &overrides, RunOptions { duration, data_dir, drain_timeout, http, parts }).await
}

/// `[pipeline.settings.emulator]`: an emulator started in-process for the run.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbeddedEmulator {
    #[serde(default)]
    seed: u64,
    rate: Option<toml::Value>,
    rate_low: Option<f64>,
    rate_high: Option<f64>,
    limit: Option<u64>,
    kill_ratio: Option<f64>,
}

/// The emulator a pipeline file asks `run` to start in-process, if it asks for one.
pub fn embedded_emulator(text: &str, path: &Path) -> Result<Option<EmulatorConfig>, String> {
    let Ok(table) = toml::from_str::<toml::Table>(text) else {
        return Ok(None); // parse_pipeline reports the syntax error with its location
    };
    let Some(settings) =
        table.get("pipeline").and_then(|p| p.get("settings")).and_then(|s| s.get("emulator"))
    else {
        return Ok(None);
    };
    let wrong = |why: String| format!("{}: [pipeline.settings.emulator]: {why}", path.display());
    let embedded: EmbeddedEmulator =
        settings.clone().try_into().map_err(|error: toml::de::Error| wrong(error.to_string()))?;
    let rate = match &embedded.rate {
        None => None,
        Some(toml::Value::String(text)) if text == "max" => Some(Rate::Max),
        Some(value) => match value.as_float().or_else(|| value.as_integer().map(|n| n as f64)) {
            Some(rate) if rate > 0.0 => Some(Rate::Fixed(rate)),
            _ => return Err(wrong(format!("`rate` must be \"max\" or a positive number, got {value}"))),
        },
    };
    let args = EmulateArgs {
        addr: "127.0.0.1:0".into(),
        rate,
        rate_low: embedded.rate_low.unwrap_or(100.0),
        rate_high: embedded.rate_high.unwrap_or(2000.0),
        rate_period: 3.0,
        seed: embedded.seed,
        limit: embedded.limit,
        kill_ratio: embedded.kill_ratio.unwrap_or(0.002),
        malformed_ratio: 0.0,
        close_after: None,
    };
    args.config().map(Some).map_err(wrong)
}

/// Options of `stageflow run`.
pub struct RunOptions {
    /// Stop (and drain) after this long.
    pub duration: Option<Duration>,
    /// Where embedded stores and output files go.
    pub data_dir: PathBuf,
    /// How long a shutdown may take to drain before the run fails.
    pub drain_timeout: Duration,
    /// Where to serve the HTTP endpoints (`--http`), if anywhere.
    pub http: Option<std::net::SocketAddr>,
    /// The parts to run (`--part`); empty runs every part in this process.
    pub parts: Vec<String>,
}

/// `stageflow run`: starts the embedded emulator if the file asks for one
/// (and `EMULATOR_URL` is not set), loads and runs the file, stops the emulator.
pub async fn run_file(
    registry: &Registry,
    path: &Path,
    overrides: &[String],
    options: RunOptions,
) -> Result<(), String> {
    let (shown, text) = crate::pipelines::read(path)?;
    let mut vars = HashMap::new();
    let mut emulator = None;
    if std::env::var_os(EMULATOR_URL).is_none()
        && runs_a_source_of_the_emulator(&text, &shown, &options.parts)
        && let Some(config) = embedded_emulator(&text, &shown)?
    {
        let handle = start_emulator("127.0.0.1:0", config).await?;
        tracing::info!("embedded emulator serving tweets at {}", handle.url("/tweets/1"));
        vars.insert(EMULATOR_URL.to_string(), handle.url(""));
        emulator = Some(handle);
    }
    let outcome = match load(registry, path, overrides, &vars) {
        Ok(file) => run(registry, file, options).await,
        Err(error) => Err(error),
    };
    if let Some(handle) = emulator {
        handle.stop().await;
    }
    outcome
}

/// Whether the parts a run starts read the emulator (have an `sse` stage):
/// a process running only the downstream part of a scaled-out file starts none.
fn runs_a_source_of_the_emulator(text: &str, path: &Path, parts: &[String]) -> bool {
    if parts.is_empty() {
        return true;
    }
    let any_value = |_: &str| Some(String::new());
    let Ok(file) = parse_pipeline(path, text, &any_value) else { return true };
    file.stages.iter().any(|stage| stage.kind == "sse" && parts.iter().any(|part| part == stage.part()))
}

/// Runs a checked pipeline file until it ends, `--for` passes or Ctrl-C,
/// showing live numbers, then prints the summary table.
pub async fn run(registry: &Registry, file: PipelineFile, options: RunOptions) -> Result<(), String> {
    std::fs::create_dir_all(&options.data_dir).map_err(|error| {
        format!("cannot create the data directory {}: {error}", options.data_dir.display())
    })?;
    let context = BuildContext::for_file(&file, options.data_dir.clone());
    let (mut pipeline, cut) = if options.parts.is_empty() {
        (registry.build(&file, &context).map_err(|errors| errors.to_string())?, None)
    } else {
        let part = build_parts(registry, &file, &options.parts, &context).await?;
        (part.pipeline, Some(part.cut))
    };
    pipeline.drain_timeout(options.drain_timeout);
    let mut running = pipeline.start().map_err(|error| format!("{}: {error}", file.path.display()))?;
    let report = cut.as_ref().map(|cut| cut.report.clone()).unwrap_or_default();
    if let Some(hub) = context.resources.get::<crate::analysis::StatsHub>() {
        hub.attach_metrics(running.metrics_reader());
    }
    let _http = match options.http {
        Some(addr) => {
            let mut view = crate::http::PipelineView::new(&file, registry, &running, &context.resources);
            view.cuts = report.clone();
            Some(crate::http::start_http(addr, crate::http::Observed::pipeline(view)).await?)
        }
        None => None,
    };
    let trigger = running.shutdown_trigger();
    let started = Instant::now();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::warn!("interrupted: draining (Ctrl-C again to abort)");
            trigger.shutdown();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    if let Some(duration) = options.duration {
        let trigger = running.shutdown_trigger();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            tracing::info!("--for {} passed: draining", humantime::format_duration(duration));
            trigger.shutdown();
        });
    }
    let view = tokio::spawn(live_view(running.metrics_reader(), report.clone()));
    let outcome = running.wait().await;
    view.abort();
    let _ = view.await;
    let elapsed = started.elapsed();
    let stages = running.metrics();
    let written = crate::dead_letters::DeadLetterCounts::of(&context).snapshot();
    let dead_letters = crate::dead_letters::per_stage(&written, &stages);
    println!("{}", summary_table(&stages, &dead_letters, elapsed));
    if !report.is_empty() {
        println!("{}", report.table());
    }
    drop(cut);
    match outcome {
        Ok(_) => {
            println!(
                "pipeline '{}' finished in {:.1}s; data directory: {}",
                file.name,
                elapsed.as_secs_f64(),
                options.data_dir.display()
            );
            print!("{}", where_the_data_went(&options.data_dir));
            Ok(())
        }
        Err(error) => Err(format!("pipeline '{}' failed: {error}", file.name)),
    }
}

/// The pipeline of the parts `parts` of `file`, its cut edges on JetStream.
async fn build_parts(
    registry: &Registry,
    file: &PipelineFile,
    parts: &[String],
    context: &BuildContext,
) -> Result<crate::cluster::PartPipeline, String> {
    let settings =
        crate::cluster::ClusterSettings::of(file).map_err(|errors| describe(&ConfigErrors(errors)))?;
    let (edges, _) = crate::cluster::cut_edges(file);
    let cut = crate::cluster::cut(file, &edges, parts)?;
    crate::cluster::build_cut(registry, &cut, &settings, context, &file.path.display().to_string()).await
}

/// One line per file a run leaves in the data directory that a user may want to open.
pub fn where_the_data_went(data_dir: &Path) -> String {
    let mut text = String::new();
    let store = data_dir.join("stageflow.db");
    if store.exists() {
        text.push_str(&format!(
            "  store:    {0}  (try: sqlite3 {0} \"SELECT count(*) FROM tweets\")\n",
            store.display()
        ));
    }
    let hashtags = data_dir.join("hashtags.json");
    if hashtags.exists() {
        text.push_str(&format!("  hashtags: {}\n", hashtags.display()));
    }
    if let Ok(summary) = crate::dead_letters::summarize(&data_dir.join(crate::dead_letters::DIRECTORY))
        && summary.total > 0
    {
        text.push_str(&format!(
            "  dead letters: {} in {}  (try: stageflow dead-letters {})\n",
            summary.total,
            data_dir.join(crate::dead_letters::DIRECTORY).display(),
            data_dir.display()
        ));
    }
    text
}

fn row_text(stage: &StageSnapshot, rate: f64) -> String {
    format!(
        "{:<14} in {:>11} out {:>11} {:>10.0}/s  demand {:>6}  buffer {:>6}  dropped {:>6}  restarts {:>4}  workers {:>3}",
        stage.stage,
        stage.events_in,
        stage.events_out,
        rate,
        stage.demand_held + stage.demand_asked,
        stage.buffer_fill,
        stage.dropped,
        stage.restarts,
        stage.workers
    )
}

fn moved(stage: &StageSnapshot) -> u64 {
    stage.events_in.max(stage.events_out)
}

/// Refreshes one line per stage on a terminal; logs a line per stage every 5 s otherwise.
async fn live_view(reader: MetricsReader, cut: crate::cluster::CutReport) {
    let terminal = std::io::stdout().is_terminal();
    let period = if terminal { Duration::from_millis(500) } else { Duration::from_secs(5) };
    let bars = MultiProgress::with_draw_target(if terminal {
        ProgressDrawTarget::stdout()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style =
        ProgressStyle::with_template("{spinner} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner());
    let mut previous = reader.snapshot();
    let lines: Vec<ProgressBar> =
        previous.iter().map(|_| bars.add(ProgressBar::new_spinner().with_style(style.clone()))).collect();
    let cut_lines: Vec<ProgressBar> =
        cut.lines().iter().map(|_| bars.add(ProgressBar::new_spinner().with_style(style.clone()))).collect();
    let mut last = Instant::now();
    loop {
        tokio::time::sleep(period).await;
        let now = Instant::now();
        let seconds = now.duration_since(last).as_secs_f64().max(1e-9);
        let current = reader.snapshot();
        for ((line, stage), before) in lines.iter().zip(&current).zip(&previous) {
            let rate = (moved(stage) - moved(before).min(moved(stage))) as f64 / seconds;
            if terminal {
                line.set_message(row_text(stage, rate));
                line.tick();
            } else {
                tracing::info!("{}", row_text(stage, rate));
            }
        }
        for (line, text) in cut_lines.iter().zip(cut.lines()) {
            if terminal {
                line.set_message(text);
                line.tick();
            } else {
                tracing::info!("{text}");
            }
        }
        previous = current;
        last = now;
    }
}

/// The table printed when a run ends; `dead_letters` are the dead letters per stage ([`crate::dead_letters::per_stage`]).
pub fn summary_table(
    stages: &[StageSnapshot],
    dead_letters: &std::collections::BTreeMap<String, u64>,
    elapsed: Duration,
) -> Table {
    let mut table = Table::new();
    table.set_header(vec![
        "stage",
        "in",
        "out",
        "events/s",
        "dropped",
        "lost",
        "dead-lettered",
        "restarts",
        "workers",
        "p50 µs/event",
        "p95 µs/event",
    ]);
    let seconds = elapsed.as_secs_f64().max(1e-9);
    for stage in stages {
        table.add_row(vec![
            stage.stage.clone(),
            stage.events_in.to_string(),
            stage.events_out.to_string(),
            format!("{:.0}", moved(stage) as f64 / seconds),
            stage.dropped.to_string(),
            stage.lost.to_string(),
            dead_letters.get(&stage.stage).copied().unwrap_or(0).to_string(),
            stage.restarts.to_string(),
            stage.workers.to_string(),
            format!("{:.3}", stage.processing.p50_us),
            format!("{:.3}", stage.processing.p95_us),
        ]);
    }
    table
}
