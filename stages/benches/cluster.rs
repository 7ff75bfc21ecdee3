//! Scale-out benchmark: `cargo bench --bench cluster` (release mode).
//!
//! Starts its own `nats-server` (JetStream, data in a temporary directory,
//! a free 127.0.0.1 port; `$STAGEFLOW_NATS_SERVER` or `.venv/bin/nats-server`)
//! and measures, on that one server:
//!
//! - `cluster` / `tweets_per_s_1w`, `_2w`, `_3w`: `pipelines/tweets-cluster.toml`
//!   with the store a `null_sink`, the logger at `sleep_mean_ms=0` and
//!   `output="none"`, run as real processes: one `stageflow run --part ingest`
//!   reading the emulator (in this process, `--rate max`, a fixed limit, no
//!   kill messages) and 1, 2 or 3 `stageflow run --part process` workers.
//!   The figure is tweets (received and extracted, the events crossing the
//!   cut, each stored once) over the time from the first one in the stream
//!   to the last one acked. A worker acks a message only once the batch
//!   holding its tweet is stored, so the last ack is the last tweet stored.
//!   Before each measured run a short paced warm-up lets the workers share
//!   the partitions out (that takes a few seconds, and is not what is measured).
//! - `cluster_baseline` / `events_per_s`: the same payloads (the hub's
//!   events, encoded as the publisher encodes them) published with
//!   `async-nats` alone, at most `max_in_flight` unacknowledged, each with a
//!   `Nats-Msg-Id`, to the same subjects of the same stream configuration;
//!   pulled from consumers configured as the workers configured theirs (one
//!   per partition, copied from the server after the first cut run: explicit
//!   acks, `max_ack_pending`, priority group) in the same batches, and acked
//!   as they arrive. Publisher and puller are separate connections on
//!   separate runtimes, as the ingest process and a worker are. It runs right
//!   after the first cut run, so both see about the same machine.
//! - `cluster` / `ratio_vs_baseline`: `tweets_per_s_1w` / baseline `events_per_s`
//!   (target ≥ 0.5).
//! - `cpu_ms_per_1000_<process>`: CPU milliseconds per 1000 events of the
//!   ingest process, the workers together and nats-server (baseline: the
//!   server and this process's clients), from `/proc`: what each side costs,
//!   whatever else the machine is doing.
//!
//! Both rates are read the same way: the stream's state every 10 ms
//! (`last_seq` for what was published, `messages` for what is not acked yet).
//!
//! Prints one JSON line per figure (`{"bench", "metric", "value"}`) and
//! writes them to `target/bench-report/cluster/report.json` (under
//! `CARGO_TARGET_DIR` when set). `STAGEFLOW_BENCH_CLUSTER_EVENTS=N` sets the
//! events per emulator stream (two streams; default 50 000),
//! `STAGEFLOW_BENCH_CLUSTER_WORKERS=1,3` the worker counts (default 1,2,3).

#[allow(dead_code)]
#[path = "load/report.rs"]
mod report;
#[allow(dead_code)]
#[path = "load/rss.rs"]
mod rss;

// The integration tests' nats-server harness (it finds the repository and
// free ports through `super::secantus`): one way to start a server.
#[allow(dead_code)]
#[path = "../tests/support/nats.rs"]
mod nats;
#[allow(dead_code)]
#[path = "../tests/support/secantus.rs"]
mod secantus;

use rss::cpu_seconds;
use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures::StreamExt;
use nats::NatsServer;
use secantus::repository;
use stageflow::config::PipelineFile;
use stageflow_stages::analysis::{FlowTweet, TweetFlow, extract_retweets};
use stageflow_stages::cluster::wire::{Wire, partition_of};
use stageflow_stages::cluster::{ClusterSettings, CutEdge, cut_edges, ensure_stream, fair_share};
use stageflow_stages::emulator::generator::{GeneratedEvent, TweetGenerator, Vocabulary};
use stageflow_stages::emulator::{EmulatorConfig, Rate, start_emulator};

use report::Report;

/// Events per emulator stream (two streams) of a measured run.
const EVENTS_VAR: &str = "STAGEFLOW_BENCH_CLUSTER_EVENTS";
/// Comma-separated numbers of `--part process` workers.
const WORKERS_VAR: &str = "STAGEFLOW_BENCH_CLUSTER_WORKERS";
const SEED: u64 = 42;
/// How often the stream's state is read.
const POLL: Duration = Duration::from_millis(10);
/// A run still going after this long is stopped and noted.
const RUN_CAP: Duration = Duration::from_secs(300);
/// The warm-up: events per stream and their pace, long enough for the
/// workers' rebalancer (a look every 2 s) to share the partitions out.
const WARMUP_EVENTS: u64 = 6000;
const WARMUP_RATE: f64 = 1500.0;
/// Warm-ups tried before a run goes ahead with the partitions as they are.
const WARMUP_ROUNDS: usize = 4;
/// Settings every stageflow process of the bench runs with: no emulated
/// work or output in the logger, and a short batch flush so the last
/// partial batch of a run is not held for the shipped 3 s.
const OVERRIDES: &[&str] = &[
    "--set",
    "logger.sleep_mean_ms=0",
    "--set",
    "logger.output=\"none\"",
    "--set",
    "batcher.flush_interval=\"250ms\"",
];

fn main() {
    let events: u64 = match std::env::var(EVENTS_VAR) {
        Ok(text) => text.trim().parse().ok().filter(|n| *n > 0).unwrap_or_else(|| {
            panic!("{EVENTS_VAR} must be a positive whole number, got '{text}'");
        }),
        Err(_) => 50_000,
    };
    let workers: Vec<usize> = match std::env::var(WORKERS_VAR) {
        Ok(text) => text
            .split(',')
            .map(|n| {
                n.trim().parse().ok().filter(|n| (1..=8).contains(n)).unwrap_or_else(|| {
                    panic!("{WORKERS_VAR} must list worker counts from 1 to 8, got '{text}'")
                })
            })
            .collect(),
        Err(_) => vec![1, 2, 3],
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    let Some(server) = runtime.block_on(NatsServer::start()) else { return };
    let started = Instant::now();
    let mut report = Report::default();
    let load_before = load_average();
    println!("cluster bench: {events} events per stream, workers {workers:?}, load average {load_before}");
    report.figure("cluster", "load_average_1m_before", first_number(&load_before));

    // The baseline runs right after the first cut run, on the consumer
    // configuration the workers made, so both see about the same machine.
    let mut baseline: Option<Measured> = None;
    let mut first_run: Option<(usize, f64)> = None;
    for &count in &workers {
        let w = format!("{count}w");
        let run = match runtime.block_on(cut_run(&server.url(), events, count)) {
            Ok(run) => run,
            Err(error) => {
                report.note(format!("{count} workers: {error}"));
                continue;
            }
        };
        report.figure("cluster", &format!("tweets_per_s_{w}"), run.measured.per_second());
        report.figure("cluster", &format!("tweets_{w}"), run.measured.events as f64);
        report.figure("cluster", &format!("seconds_{w}"), run.measured.seconds);
        report.figure(
            "cluster",
            &format!("published_per_s_{w}"),
            run.measured.events as f64 / run.measured.publish_seconds,
        );
        report.figure(
            "cluster",
            &format!("emulator_events_per_s_{w}"),
            run.emulator_events as f64 / run.measured.seconds,
        );
        for (process, seconds) in &run.measured.cpu {
            report.figure(
                "cluster",
                &format!("cpu_ms_per_1000_{process}_{w}"),
                per_thousand(*seconds, run.measured.events),
            );
        }
        report.figure("cluster", &format!("redelivered_{w}"), run.redelivered as f64);
        report.figure("cluster", &format!("lost_{w}"), run.lost as f64);
        if !run.balanced {
            report.note(format!("{w}: the partitions were not evenly shared when the run began"));
        }
        if first_run.is_none() {
            first_run = Some((count, run.measured.per_second()));
            match runtime.block_on(baseline_run(&server.url(), events, &run.consumer)) {
                Ok(measured) => {
                    report.figure("cluster_baseline", "events_per_s", measured.per_second());
                    report.figure("cluster_baseline", "events", measured.events as f64);
                    report.figure("cluster_baseline", "seconds", measured.seconds);
                    report.figure(
                        "cluster_baseline",
                        "published_per_s",
                        measured.events as f64 / measured.publish_seconds,
                    );
                    for (process, seconds) in &measured.cpu {
                        report.figure(
                            "cluster_baseline",
                            &format!("cpu_ms_per_1000_{process}"),
                            per_thousand(*seconds, measured.events),
                        );
                    }
                    if measured.events != run.measured.events {
                        report.note(format!(
                            "the baseline published {} events, the cut {}",
                            measured.events, run.measured.events
                        ));
                    }
                    baseline = Some(measured);
                }
                Err(error) => report.note(format!("baseline: {error}")),
            }
        }
    }
    match (first_run, &baseline) {
        (Some((1, tweets_per_s)), Some(baseline)) => {
            report.figure("cluster", "ratio_vs_baseline", tweets_per_s / baseline.per_second())
        }
        _ => report.note("no ratio_vs_baseline: it needs the 1-worker run and the baseline"),
    }
    let load_after = load_average();
    report.figure("cluster", "load_average_1m_after", first_number(&load_after));
    drop(server);
    drop(runtime);
    let seconds = started.elapsed().as_secs_f64();
    let run = serde_json::json!({
        "events_per_stream": events,
        "workers": workers,
        "seconds": (seconds * 10.0).round() / 10.0,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "load_average_before": load_before,
        "load_average_after": load_after,
    });
    let dir = report::report_dir().join("cluster");
    let written = std::fs::create_dir_all(&dir).and_then(|()| report.write(&dir, run));
    match written {
        Ok(path) => println!("report: {} ({seconds:.0} s in all)", path.display()),
        Err(error) => panic!("cannot write the report in {}: {error}", dir.display()),
    }
}

/// `/proc/loadavg`'s three averages, or "unknown".
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The port of a `nats://host:port` URL.
fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().and_then(|port| port.parse().ok()).unwrap_or(4222)
}

/// `after - before`, NaN when either is unknown.
fn difference(before: Option<f64>, after: Option<f64>) -> f64 {
    match (before, after) {
        (Some(before), Some(after)) => after - before,
        _ => f64::NAN,
    }
}

fn first_number(text: &str) -> f64 {
    text.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(f64::NAN)
}

/// The pid of the nats-server listening on `port`.
fn nats_pid(port: u16) -> Option<String> {
    let port = port.to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid = entry.file_name().to_string_lossy().into_owned();
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_it = args.first().is_some_and(|a| a.ends_with(b"nats-server"))
            && args.windows(2).any(|pair| pair[0] == b"-p" && pair[1] == port.as_bytes());
        is_it.then_some(pid)
    })
}

/// CPU milliseconds per 1000 events.
fn per_thousand(seconds: f64, events: u64) -> f64 {
    seconds * 1000.0 * 1000.0 / events.max(1) as f64
}

/// Events that went through the stream, and the time from the first published to the last acked.
struct Measured {
    events: u64,
    seconds: f64,
    /// From the first published to the last published: the publishing side's own pace.
    publish_seconds: f64,
    /// CPU seconds each process (or group of them) used for the run.
    cpu: Vec<(&'static str, f64)>,
}

impl Measured {
    fn per_second(&self) -> f64 {
        self.events as f64 / self.seconds
    }
}

// ---------------------------------------------------------------- the stream's state over time

/// One reading of the stream: when, its last sequence, and the messages not acked yet.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    last_seq: u64,
    messages: u64,
}

/// Reads a stream's state every [`POLL`] on its own connection until stopped.
struct Watch {
    samples: Arc<std::sync::Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    async fn start(url: &str, stream: &str) -> Result<Watch, String> {
        let client = async_nats::connect(url).await.map_err(|error| error.to_string())?;
        let js = jetstream::new(client);
        let stream = js.get_stream(stream).await.map_err(|error| format!("stream {stream}: {error}"))?;
        let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (into, stopped) = (samples.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stopped.load(Ordering::Relaxed) {
                tick.tick().await;
                if let Ok(info) = stream.get_info().await {
                    let sample = Sample {
                        at: Instant::now(),
                        last_seq: info.state.last_sequence,
                        messages: info.state.messages,
                    };
                    into.lock().expect("samples").push(sample);
                }
            }
        });
        Ok(Watch { samples, stop, task })
    }

    fn latest(&self) -> Option<Sample> {
        self.samples.lock().expect("samples").last().copied()
    }

    /// Waits until `total` events after sequence `base` are all published
    /// and acked; the time from the first reading showing one published to
    /// the first showing all acked.
    async fn until_all_acked(&self, base: u64, total: u64, limit: Duration) -> Result<Measured, String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(latest) = self.latest()
                && latest.last_seq >= base + total
                && latest.messages == 0
            {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("not all {total} events acked within {limit:?}: {:?}", self.latest()));
            }
            tokio::time::sleep(POLL).await;
        }
        let samples = self.samples.lock().expect("samples");
        let first = samples.iter().find(|s| s.last_seq > base).ok_or("no event seen published")?;
        let last = samples
            .iter()
            .find(|s| s.last_seq >= base + total && s.messages == 0)
            .ok_or("no reading with every event acked")?;
        let published = samples.iter().find(|s| s.last_seq >= base + total).unwrap_or(last);
        Ok(Measured {
            events: total,
            seconds: last.at.duration_since(first.at).as_secs_f64(),
            publish_seconds: published.at.duration_since(first.at).as_secs_f64(),
            cpu: Vec::new(),
        })
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
    }
}

// ---------------------------------------------------------------- the pipeline file

/// `pipelines/tweets-cluster.toml` named `name`, on `nats_url`, storing into a `null_sink`.
fn cluster_file(name: &str, nats_url: &str) -> Result<String, String> {
    let path = repository().join("pipelines/tweets-cluster.toml");
    let text = std::fs::read_to_string(&path).map_err(|error| format!("{}: {error}", path.display()))?;
    let mut file: toml::Table =
        toml::from_str(&text).map_err(|error| format!("{}: {error}", path.display()))?;
    let pipeline = file.get_mut("pipeline").and_then(|p| p.as_table_mut()).ok_or("no [pipeline]")?;
    pipeline.insert("name".into(), name.into());
    let cluster =
        pipeline.get_mut("cluster").and_then(|c| c.as_table_mut()).ok_or("no [pipeline.cluster]")?;
    cluster.insert("nats".into(), nats_url.into());
    let stages = file.get_mut("stage").and_then(|s| s.as_array_mut()).ok_or("no [[stage]]")?;
    let store = stages
        .iter_mut()
        .filter_map(|stage| stage.as_table_mut())
        .find(|stage| stage.get("id").and_then(|id| id.as_str()) == Some("store"))
        .ok_or("no stage 'store'")?;
    store.insert("kind".into(), "null_sink".into());
    store.remove("uri");
    toml::to_string(&file).map_err(|error| error.to_string())
}

/// The file as `stageflow run` loads it, with the bench's overrides.
fn load(path: &Path) -> Result<PipelineFile, String> {
    let overrides: Vec<String> =
        OVERRIDES.iter().filter(|arg| **arg != "--set").map(|s| s.to_string()).collect();
    let vars = HashMap::from([("EMULATOR_URL".to_string(), "http://127.0.0.1:1".to_string())]);
    stageflow_stages::pipelines::load(&stageflow_stages::registry(), path, &overrides, &vars)
}

/// The cut edge from the tweet hub to part `process`, and the cluster settings.
fn hub_edge(file: &PipelineFile) -> Result<(CutEdge, ClusterSettings), String> {
    let settings = ClusterSettings::of(file).map_err(|errors| format!("{errors:?}"))?;
    let (edges, errors) = cut_edges(file);
    if !errors.is_empty() {
        return Err(format!("{errors:?}"));
    }
    let edge = edges.into_iter().find(|edge| edge.producer == "tweets").ok_or("no cut edge from 'tweets'")?;
    Ok((edge, settings))
}

// ---------------------------------------------------------------- the baseline

/// The hub's events for `events` per stream of the emulator's seed, encoded
/// as the publisher encodes them, each with its partition.
fn payloads(events: u64, partitions: usize) -> Vec<(usize, Bytes)> {
    let generator = TweetGenerator::new(SEED, 0.0, 0.0, Vocabulary::shipped());
    let mut out = Vec::new();
    for sequence in 1..=events {
        for stream in 1..=2 {
            let GeneratedEvent::Tweet(tweet) = generator.event(stream, sequence) else { continue };
            for (tweet, extracted) in extract_retweets(*tweet) {
                let event = TweetFlow::Tweet(FlowTweet::new(tweet, extracted));
                let payload = event.encode();
                let k = partition_of(&event.partition_key("user_id"), &payload, partitions);
                out.push((k, Bytes::from(payload)));
            }
        }
    }
    out
}

/// Raw async-nats publish → pull → ack of the cut's payloads on the cut's subjects and consumers.
async fn baseline_run(url: &str, events: u64, consumer: &consumer::Config) -> Result<Measured, String> {
    let dir = tempfile::tempdir().map_err(|error| error.to_string())?;
    let path = dir.path().join("baseline.toml");
    std::fs::write(&path, cluster_file("bench-baseline", url)?).map_err(|error| error.to_string())?;
    let (edge, settings) = hub_edge(&load(&path)?)?;
    let payloads = Arc::new(payloads(events, settings.partitions));
    let total = payloads.len() as u64;
    let client = async_nats::connect(url).await.map_err(|error| error.to_string())?;
    let js = jetstream::new(client);
    let stream = ensure_stream(&js, &settings).await?;
    for k in 0..settings.partitions {
        let name = edge.durable(k);
        let config = consumer::Config {
            name: Some(name.clone()),
            durable_name: Some(name.clone()),
            filter_subject: edge.subject(&settings.stream, k),
            ..consumer.clone()
        };
        stream.create_consumer(config).await.map_err(|error| format!("consumer {name}: {error}"))?;
    }
    let watch = Watch::start(url, &settings.stream).await?;
    let server = nats_pid(port_of(url)).ok_or("no nats-server process found")?;
    let cpu_before = (cpu_seconds(&server, false), cpu_seconds("self", false));

    // The puller: its own connection and runtime, as a worker process has.
    let puller_url = url.to_string();
    let stream_name = settings.stream.clone();
    let names: Vec<String> = (0..settings.partitions).map(|k| edge.durable(k)).collect();
    let max_demand = edge.max_demand;
    // The workers' priority group, if their consumers have one.
    let group = consumer.priority_groups.first().cloned();
    let stop_pulling = Arc::new(AtomicBool::new(false));
    let stopped = stop_pulling.clone();
    let puller = std::thread::spawn(move || -> Result<(), String> {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let client = async_nats::connect(&puller_url).await.map_err(|error| error.to_string())?;
            let js = jetstream::new(client);
            let stream = js.get_stream(&stream_name).await.map_err(|error| error.to_string())?;
            let mut tasks = Vec::new();
            for name in names {
                let consumer: jetstream::consumer::PullConsumer =
                    stream.get_consumer(&name).await.map_err(|error| error.to_string())?;
                let group = group.clone();
                tasks.push(tokio::spawn(async move {
                    let pull = consumer
                        .stream()
                        .max_messages_per_batch(max_demand.clamp(1, 256))
                        .expires(Duration::from_secs(1))
                        .heartbeat(Duration::from_millis(333));
                    let pull = match group {
                        Some(group) => pull.group(group),
                        None => pull,
                    };
                    let mut messages = pull.messages().await.expect("a pull");
                    while let Some(message) = messages.next().await {
                        if let Ok(message) = message {
                            let _ = message.ack().await;
                        }
                    }
                }));
            }
            while !stopped.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for task in tasks {
                task.abort();
            }
            Ok(())
        })
    });

    // The publisher: its own connection and runtime, as the ingest process has.
    let publisher_url = url.to_string();
    let subjects: Vec<String> = (0..settings.partitions).map(|k| edge.subject(&settings.stream, k)).collect();
    let max_in_flight = settings.max_in_flight;
    let published = payloads.clone();
    let publisher = std::thread::spawn(move || -> Result<(), String> {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let client = async_nats::connect(&publisher_url).await.map_err(|error| error.to_string())?;
            let js = jetstream::new(client);
            let mut in_flight = VecDeque::new();
            for (number, (k, payload)) in published.iter().enumerate() {
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("baseline-{number}").as_str());
                let ack = js
                    .publish_with_headers(subjects[*k].clone(), headers, payload.clone())
                    .await
                    .map_err(|error| error.to_string())?;
                in_flight.push_back(ack.into_future());
                while in_flight.len() >= max_in_flight {
                    in_flight.pop_front().expect("in flight").await.map_err(|error| error.to_string())?;
                }
            }
            for ack in in_flight {
                ack.await.map_err(|error| error.to_string())?;
            }
            Ok(())
        })
    });
    let published = tokio::task::spawn_blocking(move || publisher.join())
        .await
        .map_err(|error| error.to_string())?
        .map_err(|_| "the publisher panicked".to_string())?;
    let mut measured = match published {
        Ok(()) => watch.until_all_acked(0, total, RUN_CAP).await,
        Err(error) => Err(error),
    };
    if let Ok(measured) = &mut measured {
        measured.cpu = vec![
            ("nats", difference(cpu_before.0, cpu_seconds(&server, false))),
            ("clients", difference(cpu_before.1, cpu_seconds("self", false))),
        ];
    }
    stop_pulling.store(true, Ordering::Relaxed);
    let pulled =
        tokio::task::spawn_blocking(move || puller.join()).await.map_err(|error| error.to_string())?;
    watch.stop().await;
    let _ = js.delete_stream(&settings.stream).await;
    pulled.map_err(|_| "the puller panicked".to_string())??;
    measured
}

// ---------------------------------------------------------------- the cut, as processes

/// A `stageflow` child process whose output is read as it comes; killed if still running when dropped.
struct Stageflow {
    child: Child,
    /// What it wrote to stdout and to stderr so far.
    output: [Arc<std::sync::Mutex<String>>; 2],
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Stageflow {
    /// Runs `stageflow ARGS` with the bench's overrides, logging the live
    /// view's lines (the cut's figures among them) every 5 s and warnings.
    fn start(args: &[&str], env: &[(&str, String)], data_dir: &Path) -> Result<Stageflow, String> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_stageflow"));
        command.current_dir(repository()).args(args).args(OVERRIDES).arg("--data-dir").arg(data_dir);
        command.env_remove("EMULATOR_URL").env("RUST_LOG", "warn,stageflow_stages::cmd::run=info");
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| format!("cannot start {}: {error}", env!("CARGO_BIN_EXE_stageflow")))?;
        let output: [Arc<std::sync::Mutex<String>>; 2] = [Arc::default(), Arc::default()];
        let read = |pipe: Box<dyn Read + Send>, into: Arc<std::sync::Mutex<String>>| {
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut text = into.lock().expect("output");
                    text.push_str(&line);
                    text.push('\n');
                }
            })
        };
        let readers = vec![
            read(Box::new(child.stdout.take().expect("piped")), output[0].clone()),
            read(Box::new(child.stderr.take().expect("piped")), output[1].clone()),
        ];
        Ok(Stageflow { child, output, readers })
    }

    /// The partitions of cut edge `edge` this process said it held last (its live view's line).
    fn held(&self, edge: &str) -> Option<usize> {
        let text = self.output[1].lock().expect("output");
        let line = text.lines().rev().find(|line| line.contains(&format!("cut {edge} ")))?;
        line.split("partitions held ").nth(1)?.split_whitespace().next()?.parse().ok()
    }

    /// Waits (at most `limit`) for the process to end; its stdout and stderr.
    async fn finish(mut self, limit: Duration) -> Result<String, String> {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().map_err(|error| error.to_string())? {
                break status;
            }
            if Instant::now() > deadline {
                return Err(format!("stageflow did not end within {limit:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        for reader in std::mem::take(&mut self.readers) {
            let _ = reader.join();
        }
        let text = self
            .output
            .iter()
            .map(|text| text.lock().expect("output").clone())
            .collect::<Vec<_>>()
            .join("\n");
        if status.success() { Ok(text) } else { Err(format!("stageflow exited with {status}:\n{text}")) }
    }

    /// SIGINT (drain and print the summary), then its output.
    async fn interrupt(self) -> Result<String, String> {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        self.finish(Duration::from_secs(60)).await
    }
}

impl Drop for Stageflow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one run of the cut measured.
struct CutRun {
    measured: Measured,
    /// Events the emulator sent (received tweets).
    emulator_events: u64,
    /// Messages the workers received more than once.
    redelivered: u64,
    /// Events published and not acked by any worker.
    lost: u64,
    /// Whether each worker held its fair share of partitions when the run began.
    balanced: bool,
    /// The configuration of the first partition's consumer, as the workers made it.
    consumer: consumer::Config,
}

/// The `in` row of the cut table of a worker's summary: (received, acked, redelivered).
fn inbound_row(output: &str, edge: &str) -> Option<(u64, u64, u64)> {
    output.lines().find_map(|line| {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() >= 8 && cells[1] == edge && cells[2] == "in" {
            Some((cells[4].parse().ok()?, cells[5].parse().ok()?, cells[6].parse().ok()?))
        } else {
            None
        }
    })
}

/// How many partitions each worker says it holds, after one period of its
/// live view (5 s) so that every worker has logged a line since the call.
async fn held(workers: &[Stageflow], edge: &str) -> Vec<Option<usize>> {
    tokio::time::sleep(Duration::from_millis(5500)).await;
    workers.iter().map(|worker| worker.held(edge)).collect()
}

/// Whether the workers hold every partition between them and none more than its share.
fn balanced(held: &[Option<usize>], partitions: usize) -> bool {
    let share = fair_share(partitions, held.len());
    held.iter().all(|n| n.is_some_and(|n| n <= share)) && held.iter().flatten().sum::<usize>() == partitions
}

/// Runs the emulator with `config` into one `--part ingest` process until it ends.
async fn ingest(file: &str, data: &Path, config: EmulatorConfig) -> Result<u64, String> {
    let emulator = start_emulator("127.0.0.1:0", config).await?;
    let env = [("EMULATOR_URL", emulator.url("").trim_end_matches('/').to_string())];
    let process = Stageflow::start(&["run", file, "--part", "ingest"], &env, data)?;
    let outcome = process.finish(RUN_CAP).await;
    let sent = emulator.stats().connections.iter().map(|connection| connection.events_sent).sum();
    emulator.stop().await;
    outcome.map(|_| sent)
}

fn emulator_config(rate: Rate, limit: u64) -> EmulatorConfig {
    EmulatorConfig {
        rate,
        seed: SEED,
        limit: Some(limit),
        kill_ratio: 0.0,
        malformed_ratio: 0.0,
        close_after: None,
    }
}

/// One ingest process and `count` workers: a warm-up, then the measured run.
async fn cut_run(url: &str, events: u64, count: usize) -> Result<CutRun, String> {
    let dir = tempfile::tempdir().map_err(|error| error.to_string())?;
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, cluster_file(&format!("bench-{count}w"), url)?)
        .map_err(|error| error.to_string())?;
    let (edge, settings) = hub_edge(&load(&path)?)?;
    let file = path.display().to_string();
    let mut workers = Vec::new();
    for _ in 0..count {
        workers.push(Stageflow::start(&["run", &file, "--part", "process"], &[], dir.path())?);
    }
    let client = async_nats::connect(url).await.map_err(|error| error.to_string())?;
    let js = jetstream::new(client);
    let stream = ensure_stream(&js, &settings).await?;
    let watch = Watch::start(url, &settings.stream).await?;

    let mut is_balanced = false;
    for round in 0..WARMUP_ROUNDS {
        let base = watch.latest().map_or(0, |s| s.last_seq);
        ingest(&file, dir.path(), emulator_config(Rate::Fixed(WARMUP_RATE), WARMUP_EVENTS)).await?;
        let total = stream.get_info().await.map_err(|e| e.to_string())?.state.last_sequence - base;
        watch.until_all_acked(base, total, RUN_CAP).await?;
        let held = held(&workers, &edge.name()).await;
        is_balanced = balanced(&held, settings.partitions);
        println!("{count} workers: partitions held after warm-up {}: {held:?}", round + 1);
        if is_balanced {
            break;
        }
    }

    let base = watch.latest().map_or(0, |s| s.last_seq);
    let server = nats_pid(port_of(url)).ok_or("no nats-server process found")?;
    let pids: Vec<String> = workers.iter().map(|worker| worker.child.id().to_string()).collect();
    let workers_cpu = || pids.iter().map(|pid| cpu_seconds(pid, false)).sum::<Option<f64>>();
    let before = (cpu_seconds("self", true), workers_cpu(), cpu_seconds(&server, false));
    let emulator_events = ingest(&file, dir.path(), emulator_config(Rate::Max, events)).await?;
    // The ingest process was waited for: its CPU time is now among this process's children's.
    let ingest_cpu = difference(before.0, cpu_seconds("self", true));
    let total = stream.get_info().await.map_err(|e| e.to_string())?.state.last_sequence - base;
    let mut measured = watch.until_all_acked(base, total, RUN_CAP).await;
    if let Ok(measured) = &mut measured {
        measured.cpu = vec![
            ("ingest", ingest_cpu),
            ("workers", difference(before.1, workers_cpu())),
            ("nats", difference(before.2, cpu_seconds(&server, false))),
        ];
    }
    watch.stop().await;
    let (mut acked, mut redelivered) = (0, 0);
    let edge_name = edge.name();
    for worker in workers {
        let output = worker.interrupt().await?;
        let (_, worker_acked, worker_redelivered) = inbound_row(&output, &edge_name)
            .ok_or_else(|| format!("no '{edge_name}' row in a worker's summary:\n{output}"))?;
        acked += worker_acked;
        redelivered += worker_redelivered;
    }
    let all = stream.get_info().await.map_err(|e| e.to_string())?.state.last_sequence;
    let consumer = stream.consumer_info(edge.durable(0)).await.map_err(|e| e.to_string())?.config.clone();
    let _ = js.delete_stream(&settings.stream).await;
    let _ = js.delete_key_value(format!("{}_members", settings.stream)).await;
    Ok(CutRun {
        measured: measured?,
        emulator_events,
        redelivered,
        lost: all.saturating_sub(acked),
        balanced: is_balanced,
        consumer,
    })
}
