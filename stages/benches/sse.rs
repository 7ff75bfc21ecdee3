//! Throughput of the SSE receiver, reading the emulator's events replayed from memory.
//!
//! Run with `cargo bench --bench sse`. Every figure is printed on its own
//! line as a JSON object `{"bench": B, "metric": M, "value": V}` and written
//! to `target/bench-report/sse/report.json` (under `CARGO_TARGET_DIR` when set):
//!
//! - `sse` / `events_per_s`, `bytes_per_s`: replay server → `SseReceiver`
//!   (its own capped parser, `sse_parser`, each event parsed into a `Tweet` or kill message)
//!   → a consumer that counts, in a stageflow pipeline with default demand;
//!   the count is checked.
//! - `sse_baseline` / `events_per_s`, `bytes_per_s`: the same bytes read
//!   with reqwest alone, counting the `\n\n` that end events.
//! - `sse` / `ratio_vs_baseline`: the receiver's share of the baseline, per round.
//! - `sse_generator` / `events_per_s`: how fast the emulator makes the same
//!   events with no network at all (what capped both figures when they were
//!   read from the live emulator).
//! - `sse_parse` / `events_per_s`: `parse_sse_data` alone on the same
//!   payloads (JSON into `Tweet`), the receiver's main cost beyond reading.
//!
//! The stream is `STAGEFLOW_BENCH_SSE_EVENTS` events (default 200 000) of
//! the emulator's stream 1 (seed 1, its default kill ratio), rendered once
//! before timing ([`RenderedStream`]) and served from memory by
//! [`start_replay`], so serving costs a memory copy into the socket and
//! neither side waits for the generator. The server runs on its own
//! single-threaded runtime and thread, the reader on another, so the two
//! cores of the project's machines are one each. Each side runs
//! `STAGEFLOW_BENCH_SSE_ROUNDS` times (default 5), interleaved; every
//! figure is the median over the rounds, with `_min` and `_max` beside it.
//! Bytes are counted at the server's socket.

#[allow(dead_code)]
#[path = "load/report.rs"]
mod report;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use stageflow::{Consumer, Events, Pipeline, SubscribeOptions};
use stageflow_stages::emulator::generator::{TweetGenerator, Vocabulary};
use stageflow_stages::emulator::server::sse_frame;
use stageflow_stages::emulator::{DEFAULT_KILL_RATIO, EmulatorHandle, RenderedStream, start_replay};
use stageflow_stages::sse::{SseEvent, SseReceiver, SseSourceConfig};
use stageflow_stages::tweet::{ParsedData, parse_sse_data};

use report::Report;

/// Environment variable overriding the events per run.
const EVENTS_VAR: &str = "STAGEFLOW_BENCH_SSE_EVENTS";
/// Environment variable overriding the rounds per side.
const ROUNDS_VAR: &str = "STAGEFLOW_BENCH_SSE_ROUNDS";
/// Events per run by default.
const DEFAULT_EVENTS: u64 = 200_000;
/// Rounds per side by default.
const DEFAULT_ROUNDS: u32 = 5;
/// The stream every run reads.
const STREAM: u32 = 1;
/// Its path.
const STREAM_PATH: &str = "/tweets/1";
/// The seed of the emulated tweets.
const SEED: u64 = 1;

/// One measured run: events read, bytes written by the server, seconds taken.
#[derive(Debug, Clone, Copy)]
struct Run {
    events: u64,
    bytes: u64,
    seconds: f64,
}

impl Run {
    fn events_per_s(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }

    fn bytes_per_s(&self) -> f64 {
        self.bytes as f64 / self.seconds.max(1e-9)
    }
}

/// A consumer that only counts.
struct CountingConsumer {
    counted: Arc<AtomicU64>,
}

impl Consumer for CountingConsumer {
    type In = SseEvent;

    fn handle_events(&mut self, events: &mut Events<SseEvent>) -> impl Future<Output = ()> + Send {
        let batch = events.take_batch();
        self.counted.fetch_add(batch.len() as u64, Ordering::Relaxed);
        async {}
    }
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|text| text.parse().ok()).unwrap_or(default)
}

fn single_threaded_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime")
}

/// Bytes the server has written on every connection so far.
fn bytes_written(server: &EmulatorHandle) -> u64 {
    server.stats().connections.iter().map(|connection| connection.bytes_written).sum()
}

/// Replay → SseReceiver → counting consumer, until the stream ends.
async fn receiver_run(server: &EmulatorHandle, events: u64) -> Run {
    let source = SseSourceConfig::new(&server.url(STREAM_PATH)).expect("a valid URL");
    let counted = Arc::new(AtomicU64::new(0));
    let counter = counted.clone();
    let bytes_before = bytes_written(server);
    let started = Instant::now();
    let mut pipeline = Pipeline::new();
    pipeline.producer("sse", move || SseReceiver::new(&source));
    pipeline
        .consumer("count", move || CountingConsumer { counted: counter.clone() })
        .subscribe_to("sse", SubscribeOptions::default());
    let mut running = pipeline.start().expect("a valid pipeline");
    running.wait().await.expect("the pipeline ends when the stream does");
    let seconds = started.elapsed().as_secs_f64();
    let read = counted.load(Ordering::Relaxed);
    assert_eq!(read, events, "the receiver read every event");
    Run { events: read, bytes: bytes_written(server) - bytes_before, seconds }
}

/// The same stream read with reqwest alone, counting event separators.
async fn baseline_run(server: &EmulatorHandle, events: u64) -> Run {
    let client = reqwest::Client::builder().no_proxy().build().expect("an HTTP client");
    let bytes_before = bytes_written(server);
    let started = Instant::now();
    let response = client.get(server.url(STREAM_PATH)).send().await.expect("the server answers");
    let mut body = response.bytes_stream();
    let mut separators = 0u64;
    let mut previous_was_newline = false;
    while let Some(chunk) = body.next().await {
        for &byte in chunk.expect("the body reads").iter() {
            let newline = byte == b'\n';
            separators += u64::from(newline && previous_was_newline);
            previous_was_newline = newline;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(separators, events, "the baseline counted every event");
    Run { events: separators, bytes: bytes_written(server) - bytes_before, seconds }
}

/// The emulator's generator for the bench's stream.
fn generator() -> TweetGenerator {
    TweetGenerator::new(SEED, DEFAULT_KILL_RATIO, 0.0, Vocabulary::shipped())
}

/// How fast the generator alone makes SSE frames (no network).
fn generator_rate(events: u64) -> f64 {
    let generator = generator();
    let started = Instant::now();
    let mut bytes = 0usize;
    for sequence in 1..=events {
        bytes += sse_frame(sequence, &generator.event(1, sequence).sse_data()).len();
    }
    std::hint::black_box(bytes);
    events as f64 / started.elapsed().as_secs_f64().max(1e-9)
}

/// How fast `parse_sse_data` alone turns payloads into tweets (no network, no SSE framing).
fn parse_rate(events: u64) -> f64 {
    let generator = generator();
    let payloads: Vec<String> =
        (1..=events).map(|sequence| generator.event(1, sequence).sse_data()).collect();
    let started = Instant::now();
    let tweets = payloads.iter().filter(|data| matches!(parse_sse_data(data), ParsedData::Tweet(_))).count();
    let rate = events as f64 / started.elapsed().as_secs_f64().max(1e-9);
    assert!(tweets as u64 > events / 2, "the payloads parse as tweets");
    rate
}

fn main() {
    let events = env_number(EVENTS_VAR, DEFAULT_EVENTS);
    let rounds = env_number(ROUNDS_VAR, DEFAULT_ROUNDS).max(1);
    let generator_events_per_s = generator_rate(events.min(100_000));
    let parse_events_per_s = parse_rate(events.min(100_000));
    let rendered = RenderedStream::render(&generator(), STREAM, events);

    // The replay server on its own thread and runtime; the handle comes back over a channel.
    let (handle_sender, handle_receiver) = std::sync::mpsc::sync_channel(1);
    let (stop_sender, stop_receiver) = tokio::sync::oneshot::channel::<()>();
    let server_thread = std::thread::spawn(move || {
        single_threaded_runtime().block_on(async move {
            let handle = start_replay("127.0.0.1:0", vec![rendered]).await.expect("the replay starts");
            handle_sender.send(Arc::new(handle)).expect("the bench waits for the replay");
            let _ = stop_receiver.await;
        })
    });
    let server = handle_receiver.recv_timeout(Duration::from_secs(60)).expect("the replay started");

    let runtime = single_threaded_runtime();
    let mut receiver_runs = Vec::new();
    let mut baseline_runs = Vec::new();
    for _ in 0..rounds {
        baseline_runs.push(runtime.block_on(baseline_run(&server, events)));
        receiver_runs.push(runtime.block_on(receiver_run(&server, events)));
    }
    let rates = |runs: &[Run]| runs.iter().map(Run::events_per_s).collect::<Vec<_>>();
    let byte_rates = |runs: &[Run]| runs.iter().map(Run::bytes_per_s).collect::<Vec<_>>();
    let ratios: Vec<f64> =
        receiver_runs.iter().zip(&baseline_runs).map(|(r, b)| r.events_per_s() / b.events_per_s()).collect();
    let mut report = Report::default();
    report.spread("sse", "events_per_s", &rates(&receiver_runs));
    report.spread("sse", "bytes_per_s", &byte_rates(&receiver_runs));
    report.spread("sse_baseline", "events_per_s", &rates(&baseline_runs));
    report.spread("sse_baseline", "bytes_per_s", &byte_rates(&baseline_runs));
    report.spread("sse", "ratio_vs_baseline", &ratios);
    report.figure("sse_generator", "events_per_s", generator_events_per_s);
    report.figure("sse_parse", "events_per_s", parse_events_per_s);

    drop(server);
    let _ = stop_sender.send(());
    server_thread.join().expect("the server thread ends");
    let dir = report::report_dir().join("sse");
    let run = serde_json::json!({"events": events, "rounds": rounds});
    match std::fs::create_dir_all(&dir).and_then(|()| report.write(&dir, run)) {
        Ok(path) => println!("report: {}", path.display()),
        Err(error) => panic!("cannot write the report into {}: {error}", dir.display()),
    }
}
