//! Throughput of the SSE receiver against the tweet emulator at `--rate max`.
//!
//! Run with `cargo bench --bench sse`. Every figure is printed on its own
//! line as a JSON object `{"bench": B, "metric": M, "value": V}`:
//!
//! - `sse` / `events_per_s`, `bytes_per_s`: emulator → `SseReceiver`
//!   (reqwest-eventsource, each event parsed into a `Tweet` or kill message)
//!   → a consumer that counts, in a stageflow pipeline with default demand;
//!   the count is checked.
//! - `sse_baseline` / `events_per_s`, `bytes_per_s`: the same stream read
//!   with reqwest alone, counting the `\n\n` that end events.
//! - `sse` / `ratio_vs_baseline`: the receiver's share of the baseline.
//! - `sse_generator` / `events_per_s`: how fast the emulator can make
//!   events with no network at all — the ceiling of both figures above.
//! - `sse_parse` / `events_per_s`: `parse_sse_data` alone on the same
//!   payloads (JSON into `Tweet`), the receiver's main cost beyond reading.
//!
//! Each run reads one stream of `STAGEFLOW_BENCH_SSE_EVENTS` events
//! (default 200 000; the emulator's `--limit`), from connect to the end of
//! the stream. The emulator runs on its own single-threaded runtime and
//! thread, the reader on another, so the two cores of the project's
//! machines are one each. Each side runs `STAGEFLOW_BENCH_SSE_ROUNDS`
//! times (default 3), interleaved; the best round is reported. Bytes are
//! counted at the emulator's socket.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use stageflow::{Consumer, Events, Pipeline, SubscribeOptions};
use stageflow_stages::emulator::generator::{TweetGenerator, Vocabulary};
use stageflow_stages::emulator::server::sse_frame;
use stageflow_stages::emulator::{EmulatorConfig, EmulatorHandle, Rate, start_emulator};
use stageflow_stages::sse::{SseEvent, SseReceiver, SseSourceConfig};
use stageflow_stages::tweet::{ParsedData, parse_sse_data};

/// Environment variable overriding the events per run.
const EVENTS_VAR: &str = "STAGEFLOW_BENCH_SSE_EVENTS";
/// Environment variable overriding the rounds per side.
const ROUNDS_VAR: &str = "STAGEFLOW_BENCH_SSE_ROUNDS";
/// Events per run by default.
const DEFAULT_EVENTS: u64 = 200_000;
/// Rounds per side by default.
const DEFAULT_ROUNDS: u32 = 3;
/// The stream every run reads.
const STREAM_PATH: &str = "/tweets/1";
/// The seed of the emulated tweets.
const SEED: u64 = 1;

/// One measured run: events read, bytes written by the emulator, seconds taken.
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

fn print_figure(bench: &str, metric: &str, value: f64) {
    println!("{{\"bench\": \"{bench}\", \"metric\": \"{metric}\", \"value\": {value:.3}}}");
}

fn single_threaded_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime")
}

/// Bytes the emulator has written on every connection so far.
fn bytes_written(emulator: &EmulatorHandle) -> u64 {
    emulator.stats().connections.iter().map(|connection| connection.bytes_written).sum()
}

/// Emulator → SseReceiver → counting consumer, until the stream ends.
async fn receiver_run(emulator: &EmulatorHandle, events: u64) -> Run {
    let source = SseSourceConfig::new(&emulator.url(STREAM_PATH)).expect("a valid URL");
    let counted = Arc::new(AtomicU64::new(0));
    let counter = counted.clone();
    let bytes_before = bytes_written(emulator);
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
    Run { events: read, bytes: bytes_written(emulator) - bytes_before, seconds }
}

/// The same stream read with reqwest alone, counting event separators.
async fn baseline_run(emulator: &EmulatorHandle, events: u64) -> Run {
    let client = reqwest::Client::builder().no_proxy().build().expect("an HTTP client");
    let bytes_before = bytes_written(emulator);
    let started = Instant::now();
    let response = client.get(emulator.url(STREAM_PATH)).send().await.expect("the emulator answers");
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
    Run { events: separators, bytes: bytes_written(emulator) - bytes_before, seconds }
}

/// How fast the generator alone makes SSE frames (no network).
fn generator_rate(events: u64) -> f64 {
    let generator = TweetGenerator::new(SEED, 0.002, 0.0, Vocabulary::shipped());
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
    let generator = TweetGenerator::new(SEED, 0.002, 0.0, Vocabulary::shipped());
    let payloads: Vec<String> =
        (1..=events).map(|sequence| generator.event(1, sequence).sse_data()).collect();
    let started = Instant::now();
    let tweets = payloads.iter().filter(|data| matches!(parse_sse_data(data), ParsedData::Tweet(_))).count();
    let rate = events as f64 / started.elapsed().as_secs_f64().max(1e-9);
    assert!(tweets as u64 > events / 2, "the payloads parse as tweets");
    rate
}

fn best(runs: &[Run]) -> Run {
    *runs.iter().max_by(|a, b| a.events_per_s().total_cmp(&b.events_per_s())).expect("at least one round")
}

fn main() {
    let events = env_number(EVENTS_VAR, DEFAULT_EVENTS);
    let rounds = env_number(ROUNDS_VAR, DEFAULT_ROUNDS).max(1);

    // The emulator on its own thread and runtime; the handle comes back over a channel.
    let (handle_sender, handle_receiver) = std::sync::mpsc::sync_channel(1);
    let (stop_sender, stop_receiver) = tokio::sync::oneshot::channel::<()>();
    let emulator_thread = std::thread::spawn(move || {
        single_threaded_runtime().block_on(async move {
            let config = EmulatorConfig {
                rate: Rate::Max,
                seed: SEED,
                limit: Some(events),
                ..EmulatorConfig::default()
            };
            let handle = start_emulator("127.0.0.1:0", config).await.expect("the emulator starts");
            let addr = handle.addr();
            let stats = Arc::new(handle);
            handle_sender.send((addr, stats.clone())).expect("the bench waits for the emulator");
            let _ = stop_receiver.await;
        })
    });
    let (_, emulator) = handle_receiver.recv_timeout(Duration::from_secs(30)).expect("the emulator started");

    let runtime = single_threaded_runtime();
    let mut receiver_runs = Vec::new();
    let mut baseline_runs = Vec::new();
    for _ in 0..rounds {
        baseline_runs.push(runtime.block_on(baseline_run(&emulator, events)));
        receiver_runs.push(runtime.block_on(receiver_run(&emulator, events)));
    }
    let (receiver, baseline) = (best(&receiver_runs), best(&baseline_runs));
    print_figure("sse", "events_per_s", receiver.events_per_s());
    print_figure("sse", "bytes_per_s", receiver.bytes_per_s());
    print_figure("sse_baseline", "events_per_s", baseline.events_per_s());
    print_figure("sse_baseline", "bytes_per_s", baseline.bytes_per_s());
    print_figure("sse", "ratio_vs_baseline", receiver.events_per_s() / baseline.events_per_s());
    print_figure("sse_generator", "events_per_s", generator_rate(events.min(100_000)));
    print_figure("sse_parse", "events_per_s", parse_rate(events.min(100_000)));

    drop(emulator);
    let _ = stop_sender.send(());
    emulator_thread.join().expect("the emulator thread ends");
}
