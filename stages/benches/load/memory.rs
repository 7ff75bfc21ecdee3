//! Section 1: memory over time under overload.
//!
//! The emulator (in this process) sends as fast as it is read; the tweet
//! pipeline runs in a child process (this binary re-executed) and ends in a
//! sink throttled to a fixed rate. The child's `VmRSS` is read from
//! `/proc/<pid>/status` every 100 ms. Stageflow's demand keeps the readers
//! at the sink's pace, so its RSS stays flat at 1x and 10x the events; the
//! unbounded-channel baseline reads everything at once and holds what the
//! sink has not stored yet.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::json;
use stageflow_stages::emulator::start_emulator;
use stageflow_stages::storage::SinkMetrics;

use super::Settings;
use super::plot::{self, COLOURS, Line, Panel, Stroke};
use super::report::{Report, Series};
use super::rss::rss_kb;
use super::tweets::{
    SinkChoice, ThrottledSink, UNBOUNDED, channel_baseline, emulator_config, tweet_pipeline,
};

/// Names the scenario a child process runs.
pub const CHILD_VAR: &str = "STAGEFLOW_LOAD_CHILD";
/// The emulator's base URL, for the child.
const URL_VAR: &str = "STAGEFLOW_LOAD_EMULATOR";
/// The sink's rate in tweets per second, for the child.
const RATE_VAR: &str = "STAGEFLOW_LOAD_SINK_RATE";
/// Prefix of the child's result line.
const RESULT_PREFIX: &str = "load-child-result ";
/// Events per stream at 1x (two streams), before scaling.
const EVENTS_PER_STREAM_1X: f64 = 10_000.0;
/// Tweets per second the throttled sink stores.
const SINK_TWEETS_PER_S: f64 = 5_000.0;
/// How often the child's RSS is read.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// A scenario still running after this long is stopped (and noted).
const SCENARIO_CAP: Duration = Duration::from_secs(100);

/// One memory scenario: which pipeline, and how many times the 1x events.
struct Scenario {
    name: &'static str,
    legend: &'static str,
    stageflow: bool,
    multiple: u64,
}

/// The four scenarios, in the order they run.
const SCENARIOS: [Scenario; 4] = [
    Scenario { name: "memory_stageflow_1x", legend: "stageflow, 1x events", stageflow: true, multiple: 1 },
    Scenario { name: "memory_stageflow_10x", legend: "stageflow, 10x events", stageflow: true, multiple: 10 },
    Scenario {
        name: "memory_unbounded_1x",
        legend: "unbounded channels, 1x events",
        stageflow: false,
        multiple: 1,
    },
    Scenario {
        name: "memory_unbounded_10x",
        legend: "unbounded channels, 10x events",
        stageflow: false,
        multiple: 10,
    },
];

/// What one scenario measured.
struct Measured {
    rss_mb: Vec<(f64, f64)>,
    seconds: f64,
    stored: u64,
    completed: bool,
}

/// Runs every scenario, records the figures and draws `memory.svg`.
pub fn run(runtime: &tokio::runtime::Runtime, settings: &Settings, report: &mut Report) {
    let events_1x = settings.scaled(EVENTS_PER_STREAM_1X);
    println!(
        "== 1. memory over time: emulator at max, sink throttled to {SINK_TWEETS_PER_S} tweets/s, \
         {events_1x} and {} events per stream (2 streams)",
        events_1x * 10
    );
    let mut lines = Vec::new();
    let mut peaks = std::collections::HashMap::new();
    for scenario in &SCENARIOS {
        let limit = events_1x * scenario.multiple;
        println!("{}: {} events per stream …", scenario.name, limit);
        let measured = match runtime.block_on(measure(scenario, limit)) {
            Ok(measured) => measured,
            Err(error) => {
                report.note(format!("{}: failed: {error}", scenario.name));
                continue;
            }
        };
        if !measured.completed {
            report.note(format!("{}: stopped after the {SCENARIO_CAP:?} cap", scenario.name));
        }
        let series = Series::new(scenario.legend, measured.rss_mb);
        let peak = series.max_y();
        let last = series.points.last().map_or(0.0, |&(_, mb)| mb);
        report.figure(scenario.name, "peak_rss_mb", peak);
        report.figure(scenario.name, "final_rss_mb", last);
        report.figure(scenario.name, "tweets_stored", measured.stored as f64);
        report.figure(scenario.name, "seconds", measured.seconds);
        report.figure(
            scenario.name,
            "stored_tweets_per_s",
            measured.stored as f64 / measured.seconds.max(1e-9),
        );
        peaks.insert(scenario.name, peak);
        lines.push((scenario, series));
    }
    let ratio = |a: &str, b: &str| Some(peaks.get(a)? / peaks.get(b)?.max(1e-9));
    if let Some(ratio) = ratio("memory_stageflow_10x", "memory_stageflow_1x") {
        report.figure("memory_stageflow", "peak_ratio_10x_vs_1x", ratio);
    }
    if let Some(ratio) = ratio("memory_unbounded_10x", "memory_unbounded_1x") {
        report.figure("memory_unbounded", "peak_ratio_10x_vs_1x", ratio);
    }
    if let Some(ratio) = ratio("memory_unbounded_10x", "memory_stageflow_10x") {
        report.figure("memory_10x", "peak_ratio_unbounded_vs_stageflow", ratio);
    }
    let series: Vec<Series> = lines.iter().map(|(_, series)| series.clone()).collect();
    report.series("memory", &series);
    let styled: Vec<Line<'_>> = lines
        .iter()
        .map(|(scenario, series)| Line {
            series,
            colour: match (scenario.stageflow, scenario.multiple) {
                (true, 1) => COLOURS[0],
                (true, _) => COLOURS[2],
                (false, 1) => COLOURS[3],
                (false, _) => COLOURS[1],
            },
            stroke: if scenario.stageflow { Stroke::Solid } else { Stroke::Dashed },
            markers: false,
        })
        .collect();
    let path = settings.dir.join("memory.svg");
    let panel = Panel {
        title: format!(
            "tweet pipeline, emulator at max, sink throttled to {} tweets/s; 1x = {} events",
            SINK_TWEETS_PER_S,
            events_1x * 2
        ),
        x_label: "time since start (s)".into(),
        y_label: "resident memory, RSS (MB)".into(),
        log_x: false,
        log_y: false,
        lines: styled,
        legend: plotters::prelude::SeriesLabelPosition::MiddleRight,
    };
    match plot::panels(&path, (1100, 650), "Memory over time under overload", (1, 1), &[panel]) {
        Ok(()) => report.plot_written(&path),
        Err(error) => report.note(format!("memory.svg: {error}")),
    }
}

/// Starts an emulator, runs the scenario in a child process and samples its RSS until it exits.
async fn measure(scenario: &Scenario, limit: u64) -> Result<Measured, String> {
    let emulator = start_emulator("127.0.0.1:0", emulator_config(limit)).await?;
    let executable = std::env::current_exe().map_err(|error| error.to_string())?;
    let started = Instant::now();
    let mut child = Command::new(executable)
        .env(CHILD_VAR, scenario.name)
        .env(URL_VAR, emulator.url(""))
        .env(RATE_VAR, SINK_TWEETS_PER_S.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|error| format!("cannot start the child process: {error}"))?;
    let mut rss_mb = Vec::new();
    let mut completed = true;
    loop {
        if let Some(kb) = rss_kb(child.id()) {
            rss_mb.push((started.elapsed().as_secs_f64(), kb as f64 / 1024.0));
        }
        if child.try_wait().map_err(|error| error.to_string())?.is_some() {
            break;
        }
        if started.elapsed() > SCENARIO_CAP + Duration::from_secs(20) {
            let _ = child.kill();
            completed = false;
            break;
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let output = child.wait_with_output().map_err(|error| error.to_string())?;
    emulator.stop().await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let result: serde_json::Value = stdout
        .lines()
        .find_map(|line| line.strip_prefix(RESULT_PREFIX))
        .and_then(|json| serde_json::from_str(json).ok())
        .ok_or_else(|| format!("the child printed no result ({}):\n{stdout}", output.status))?;
    completed &= result["completed"].as_bool().unwrap_or(false);
    let stored = result["stored"].as_u64().unwrap_or(0);
    Ok(Measured { rss_mb, seconds, stored, completed })
}

/// In the child process: runs scenario `name` to its end (or the cap) and prints its result line.
pub fn run_child(name: &str) {
    let scenario = SCENARIOS
        .iter()
        .find(|scenario| scenario.name == name)
        .unwrap_or_else(|| panic!("unknown memory scenario '{name}'"));
    let url = std::env::var(URL_VAR).expect("the parent sets the emulator URL");
    let rate: f64 = std::env::var(RATE_VAR).ok().and_then(|rate| rate.parse().ok()).expect("a sink rate");
    let data = tempfile::tempdir().expect("a temporary directory");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    let (completed, stored) = runtime.block_on(async {
        let (sink, run): (Arc<SinkMetrics>, BoxFuture<'_, Result<(), String>>) = if scenario.stageflow {
            let built = tweet_pipeline(name, &url, data.path(), SinkChoice::Throttled(rate))
                .unwrap_or_else(|error| panic!("{name}: {error}"));
            let run = async move {
                let mut running = built.pipeline.start().map_err(|error| error.to_string())?;
                running.wait().await.map(|_| ()).map_err(|error| error.to_string())
            };
            (built.sink, Box::pin(run))
        } else {
            let metrics = SinkMetrics::new();
            let sink = ThrottledSink::new(rate);
            (metrics.clone(), Box::pin(channel_baseline(&url, data.path(), UNBOUNDED, sink, metrics)))
        };
        let completed = match tokio::time::timeout(SCENARIO_CAP, run).await {
            Ok(Ok(())) => true,
            Ok(Err(error)) => panic!("{name}: {error}"),
            Err(_) => false,
        };
        (completed, sink.counters().tweets_inserted)
    });
    // A capped run leaves tasks behind: report and exit without waiting for them.
    println!("{RESULT_PREFIX}{}", json!({"completed": completed, "stored": stored}));
    std::process::exit(0);
}
