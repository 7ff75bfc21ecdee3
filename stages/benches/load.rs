//! The load suite: `cargo bench --bench load` (release mode).
//!
//! Runs five sections and writes `target/bench-report/` (under
//! `CARGO_TARGET_DIR` when set): `report.json` with every figure and the
//! series behind each plot, and one SVG plot per section:
//!
//! 1. `memory.svg`: RSS every 100 ms of the tweet pipeline (a child process)
//!    with the emulator at max and a sink throttled to 4000 tweets/s, at 1x
//!    and 10x the events, beside the same pipeline on unbounded channels.
//! 2. `throughput.svg`: tweets/s end to end, the emulator's events replayed
//!    from memory, logger sleep 0, into the null sink and the embedded SQLite
//!    sink, beside the same stages on hand-written bounded tokio channels
//!    and the SQLite sink's work alone (5 rounds, medians; see `load/throughput.rs`).
//! 3. `scaling.svg`: events/s of the linear (2, 4, 8 stages), broadcast and
//!    partition (1, 2, 4, 8 consumers) topologies beside batched tokio channels.
//! 4. `broker.svg`: in-process broker publish → deliver → ack rate and
//!    latency percentiles for 1, 10 and 100 subscribers.
//! 5. `autoscale.svg`: worker count and p95 latency of an autoscaled pool
//!    as the input steps 100 → 2000 → 100 events/s.
//!
//! Every figure is also printed as a JSON line `{"bench", "metric", "value"}`.
//! `STAGEFLOW_LOAD_SCALE=0.1` scales the event counts down for a quick run;
//! `STAGEFLOW_LOAD_ONLY=memory,broker` runs only the named sections
//! (`memory`, `throughput`, `scaling`, `broker`, `autoscale`). The machine
//! is shared, so compare figures as ratios within one run.

#[path = "load/autoscale.rs"]
mod autoscale;
#[path = "load/broker.rs"]
mod broker;
#[path = "load/memory.rs"]
mod memory;
#[path = "load/plot.rs"]
mod plot;
#[path = "load/report.rs"]
mod report;
#[path = "load/rss.rs"]
mod rss;
#[path = "load/scaling.rs"]
mod scaling;
#[path = "load/scored.rs"]
mod scored;
#[path = "load/throughput.rs"]
mod throughput;
#[path = "load/tweets.rs"]
mod tweets;

use std::path::PathBuf;
use std::time::Instant;

use report::Report;

// The load suite times the pipeline on the allocator the `stageflow` binary ships with.
stageflow_stages::shipped_allocator!();

/// Scales the suite's event counts (default 1).
const SCALE_VAR: &str = "STAGEFLOW_LOAD_SCALE";
/// Comma-separated sections to run (default all).
const ONLY_VAR: &str = "STAGEFLOW_LOAD_ONLY";

/// What every section needs to know about this run.
pub struct Settings {
    /// Multiplies the event counts.
    pub scale: f64,
    /// Where the report and plots go.
    pub dir: PathBuf,
}

impl Settings {
    /// `count × scale`, at least 1.
    pub fn scaled(&self, count: f64) -> u64 {
        ((count * self.scale).round() as u64).max(1)
    }
}

/// A section: its name and what runs it.
type Section = (&'static str, fn(&tokio::runtime::Runtime, &Settings, &mut Report));

/// The sections, in the order they run.
const SECTIONS: [Section; 5] = [
    ("memory", memory::run),
    ("throughput", throughput::run),
    ("scaling", scaling::run),
    ("broker", broker::run),
    ("autoscale", autoscale::run),
];

/// Runs the chosen sections, then writes the report.
fn main() {
    if let Ok(scenario) = std::env::var(memory::CHILD_VAR) {
        memory::run_child(&scenario);
        return;
    }
    let scale = match std::env::var(SCALE_VAR) {
        Ok(text) => text.trim().parse::<f64>().ok().filter(|s| *s > 0.0).unwrap_or_else(|| {
            panic!("{SCALE_VAR} must be a positive number, got '{text}'");
        }),
        Err(_) => 1.0,
    };
    let only: Option<Vec<String>> = std::env::var(ONLY_VAR)
        .ok()
        .map(|list| list.split(',').map(|name| name.trim().to_string()).collect());
    let settings = Settings { scale, dir: report::report_dir() };
    std::fs::create_dir_all(&settings.dir)
        .unwrap_or_else(|error| panic!("cannot create {}: {error}", settings.dir.display()));
    println!("load suite: scale {scale}, report in {}", settings.dir.display());
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    let mut report = Report::default();
    let mut ran = Vec::new();
    for (name, section) in SECTIONS {
        if only.as_ref().is_some_and(|only| !only.iter().any(|chosen| chosen == name)) {
            continue;
        }
        let section_started = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            section(&runtime, &settings, &mut report)
        }));
        if outcome.is_err() {
            report.note(format!("section {name} panicked; its figures are incomplete"));
        }
        println!("-- {name} took {:.1} s", section_started.elapsed().as_secs_f64());
        ran.push(name);
    }
    drop(runtime);
    let seconds = started.elapsed().as_secs_f64();
    let run = serde_json::json!({
        "scale": scale,
        "sections": ran,
        "seconds": (seconds * 10.0).round() / 10.0,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
    });
    match report.write(&settings.dir, run) {
        Ok(path) => println!("report: {} ({seconds:.0} s in all)", path.display()),
        Err(error) => panic!("cannot write the report: {error}"),
    }
}
