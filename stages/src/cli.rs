//! What the `stageflow` subcommands do: load and check pipeline files, run
//! them with a live view, draw their graph.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use comfy_table::Table;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use stageflow::config::{BuildContext, ConfigErrors, PipelineFile, Registry, parse_pipeline};
use stageflow::{MetricsReader, StageSnapshot};

/// Reads and checks a pipeline file, applying `--set stage.key=value` overrides.
pub fn load(registry: &Registry, path: &Path, overrides: &[String]) -> Result<PipelineFile, String> {
    let text =
        std::fs::read_to_string(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let mut file =
        parse_pipeline(path, &text, &|name| std::env::var(name).ok()).map_err(|errors| describe(&errors))?;
    for assignment in overrides {
        apply_override(&mut file, assignment).map_err(|why| format!("--set {assignment}: {why}"))?;
    }
    registry.check(&file).map_err(|errors| describe(&errors))?;
    Ok(file)
}

/// Every check error on its own line, then how many there were.
fn describe(errors: &ConfigErrors) -> String {
    let count = errors.0.len();
    format!("{errors}\n{count} problem{} found", if count == 1 { "" } else { "s" })
}

/// Applies one `stage.key=value` override; the value is read as TOML, or as a plain string.
pub fn apply_override(file: &mut PipelineFile, assignment: &str) -> Result<(), String> {
    let (target, raw) = assignment.split_once('=').ok_or("expected stage.key=value")?;
    let (stage_id, key) = target.split_once('.').ok_or("expected stage.key=value")?;
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut table| table.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let ids: Vec<&str> = file.stages.iter().map(|s| s.id.as_str()).collect();
    let hint = stageflow::closest(stage_id, ids.iter().copied()).map(|n| format!(" (did you mean '{n}'?)"));
    let stage = file
        .stages
        .iter_mut()
        .find(|stage| stage.id == stage_id)
        .ok_or_else(|| format!("no stage '{stage_id}' in this file{}", hint.unwrap_or_default()))?;
    stage.set(key, value);
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

/// `stageflow kinds`: every stage kind with its settings.
pub fn kinds_report(registry: &Registry) -> String {
    let mut text = String::new();
    for kind in registry.kinds() {
        let takes = kind.input().map_or("-", |t| t.name);
        let emits = kind.output().map_or("-", |t| t.name);
        text.push_str(&format!(
            "{}  ({:?}; takes {takes}, emits {emits})\n    {}\n",
            kind.name(),
            kind.role(),
            kind.summary()
        ));
        for setting in kind.settings() {
            let required = if setting.required { " (required)" } else { "" };
            text.push_str(&format!("    {}{required}: {}\n", setting.name, setting.help));
        }
    }
    text
}

/// Options of `stageflow run`.
pub struct RunOptions {
    /// Stop (and drain) after this long.
    pub duration: Option<Duration>,
    /// Where embedded stores and output files go.
    pub data_dir: PathBuf,
}

/// Runs a checked pipeline file until it ends, `--for` passes or Ctrl-C,
/// showing live numbers, then prints the summary table.
pub async fn run(registry: &Registry, file: PipelineFile, options: RunOptions) -> Result<(), String> {
    std::fs::create_dir_all(&options.data_dir).map_err(|error| {
        format!("cannot create the data directory {}: {error}", options.data_dir.display())
    })?;
    let context = BuildContext {
        data_dir: options.data_dir.clone(),
        pipeline: file.name.clone(),
        settings: file.settings.clone(),
    };
    let pipeline = registry.build(&file, &context).map_err(|errors| errors.to_string())?;
    let mut running = pipeline.start().map_err(|error| format!("{}: {error}", file.path.display()))?;
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
    let view = tokio::spawn(live_view(running.metrics_reader()));
    let outcome = running.wait().await;
    view.abort();
    let _ = view.await;
    let elapsed = started.elapsed();
    let stages = running.metrics();
    println!("{}", summary_table(&stages, elapsed));
    match outcome {
        Ok(_) => {
            println!(
                "pipeline '{}' finished in {:.1}s; data directory: {}",
                file.name,
                elapsed.as_secs_f64(),
                options.data_dir.display()
            );
            Ok(())
        }
        Err(error) => Err(format!("pipeline '{}' failed: {error}", file.name)),
    }
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
async fn live_view(reader: MetricsReader) {
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
        previous = current;
        last = now;
    }
}

/// The table printed when a run ends.
pub fn summary_table(stages: &[StageSnapshot], elapsed: Duration) -> Table {
    let mut table = Table::new();
    table.set_header(vec![
        "stage",
        "in",
        "out",
        "events/s",
        "dropped",
        "lost",
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
            stage.restarts.to_string(),
            stage.workers.to_string(),
            format!("{:.3}", stage.processing.p50_us),
            format!("{:.3}", stage.processing.p95_us),
        ]);
    }
    table
}
