//! Does the main job keep up with a live stream? `cargo bench --bench keep_up`
//! (release): the emulator at `STAGEFLOW_KEEP_UP_RATE` events/s per stream
//! (default 1000; two streams) and `stageflow run tweets --for
//! STAGEFLOW_KEEP_UP_SECONDS` (default 30) reading it, as a child process,
//! with the shipped logger's 50–500 ms of emulated work per tweet.
//!
//! Reports the share of the offered events the run read (the emulator's
//! `/stats`: events handed to each stream's connection, against rate ×
//! streams × seconds) and the child's RSS, sampled each second, after a
//! 5-second warm-up. Writes `target/bench-report/keep_up.json`.

#[path = "load/report.rs"]
#[allow(dead_code)]
mod report;
#[path = "load/rss.rs"]
#[allow(dead_code)]
mod rss;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use stageflow_stages::emulator::{EmulatorConfig, Rate, start_emulator};
use tokio::time::Instant;

use report::report_dir;
use rss::rss_kb;

const STREAMS: f64 = 2.0;
const WARM_UP_S: f64 = 5.0;

fn env_number(name: &str, default: f64) -> f64 {
    match std::env::var(name) {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("{name} must be a number, got {text:?}")),
        Err(_) => default,
    }
}

#[tokio::main]
async fn main() {
    let rate = env_number("STAGEFLOW_KEEP_UP_RATE", 1000.0);
    let seconds = env_number("STAGEFLOW_KEEP_UP_SECONDS", 30.0) as u64;
    let config = EmulatorConfig { rate: Rate::Fixed(rate), seed: 42, ..EmulatorConfig::default() };
    let emulator = start_emulator("127.0.0.1:0", config).await.expect("the emulator starts");
    let data = tempfile::tempdir().expect("a data directory");
    let log = std::fs::File::create(data.path().join("run.log")).expect("a log file");
    let mut run = Command::new(env!("CARGO_BIN_EXE_stageflow"))
        .args(["run", "tweets", "--for", &format!("{seconds}s")])
        .env("EMULATOR_URL", emulator.url(""))
        .current_dir(data.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("stageflow run starts");
    let pid = run.id();
    let started = Instant::now();
    let mut samples = Vec::new();
    let status = loop {
        if let Some(status) = run.try_wait().expect("the run's status") {
            break status;
        }
        if let Some(kb) = rss_kb(pid) {
            samples.push((started.elapsed().as_secs_f64(), kb as f64 / 1024.0));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let stats = emulator.stats();
    let read: u64 = stats.connections.iter().map(|connection| connection.events_sent).sum();
    let offered = rate * STREAMS * seconds as f64;
    let steady: Vec<f64> = samples.iter().filter(|(t, _)| *t >= WARM_UP_S).map(|&(_, mb)| mb).collect();
    let (low, high) = steady.iter().fold((f64::MAX, 0.0_f64), |(low, high), &mb| (low.min(mb), high.max(mb)));
    let (first, last) = (steady.first().copied().unwrap_or(0.0), steady.last().copied().unwrap_or(0.0));
    let report = json!({
        "rate_per_stream": rate,
        "streams": STREAMS,
        "seconds": seconds,
        "offered": offered,
        "read": read,
        "read_ratio": read as f64 / offered,
        "rss_mb_after_warm_up": { "first": first, "last": last, "min": low, "max": high },
        "rss_samples_mb": samples,
        "run_succeeded": status.success(),
    });
    println!("{}", serde_json::to_string(&report).unwrap());
    let dir = report_dir();
    std::fs::create_dir_all(&dir).expect("the report directory");
    std::fs::write(dir.join("keep_up.json"), serde_json::to_string_pretty(&report).unwrap())
        .expect("keep_up.json");
    println!(
        "keep_up: rate {rate}/s × {STREAMS} streams for {seconds} s: read {read} of {offered} offered = {:.3}; RSS after warm-up {first:.1} → {last:.1} MB (min {low:.1}, max {high:.1})",
        read as f64 / offered
    );
    assert!(status.success(), "stageflow run failed: see {}", data.path().join("run.log").display());
}
