//! The broker against NATS JetStream: `cargo bench --bench broker`.
//!
//! The same publish → deliver → ack workload on both, over TCP on
//! 127.0.0.1, with 1, 10 and 100 subscribers that each receive every event,
//! persistence on:
//!
//! - broker: in this process, `--sync batched` (appends fsynced every
//!   100 ms), data in a temporary directory. One publisher connection keeps up
//!   to 256 `pub`s outstanding (each answered `ok` once appended); each
//!   subscriber, on its own connection, uses `window 100` and acks every
//!   delivery at once.
//! - JetStream: `nats-server` (`$STAGEFLOW_NATS_SERVER` or
//!   `.venv/bin/nats-server`, started here on a free port) with file storage
//!   and `sync_interval: 100ms`, the same fsync policy; a stream with one
//!   subject, one durable pull consumer per subscriber (explicit acks,
//!   `max_ack_pending` 100), each on its own connection (`async-nats`),
//!   acking every message at once. The publisher keeps up to 256
//!   publishes waiting for their `PubAck`.
//!
//! Both carry the same JSON payload (`{"id", "priority", "msg"}`, `msg` the
//! publish time) and both subscribers parse it. Each run has two phases:
//!
//! - unpaced: `STAGEFLOW_BENCH_DELIVERIES / subscribers` events (default
//!   200 000 deliveries, at least 1000 events) published as fast as the
//!   outstanding limit allows; `deliveries_per_s` is deliveries over the time
//!   from the first publish to the last delivery.
//! - paced: events published at `PACED_DELIVERIES_PER_S / subscribers`
//!   events/s for 2 s; `paced_latency_p50_us` / `_p99_us` is the time from
//!   publishing an event to each subscriber reading it.
//!
//! `broker_vs_jetstream_<n>_subscribers` / `ratio` is broker / JetStream
//! `deliveries_per_s` within a round (target ≥ 1.0). The two alternate,
//! `STAGEFLOW_BENCH_BROKER_ROUNDS` rounds (default 5); every figure is the
//! median over the rounds with `_min` and `_max`. Printed as JSON lines and
//! written to `target/bench-report/broker/report.json`.

#[allow(dead_code)]
#[path = "../tests/support/nats.rs"]
mod nats;
#[allow(dead_code)]
#[path = "load/report.rs"]
mod report;
#[allow(dead_code)]
#[path = "../tests/support/secantus.rs"]
mod secantus;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use hdrhistogram::Histogram;
use stageflow_stages::broker::{Broker, BrokerConfig, ServerConfig, SyncMode, serve};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};

use nats::NatsServer;
use report::Report;

/// Publishes waiting for their confirmation at most.
const OUTSTANDING_PUBLISHES: usize = 256;
/// Unacked deliveries per subscriber at most (broker `window`, JetStream `max_ack_pending`).
const WINDOW: usize = 100;
/// Deliveries per second (to all subscribers together) of the paced phase.
const PACED_DELIVERIES_PER_S: f64 = 10_000.0;
/// How long the paced phase publishes.
const PACED_SECONDS: f64 = 2.0;
/// A run taking longer than this fails the bench.
const RUN_LIMIT: Duration = Duration::from_secs(120);
/// The subject / topic.
const SUBJECT: &str = "bench";

/// What one run of one side measured.
struct Measured {
    deliveries_per_s: f64,
    publish_events_per_s: f64,
    paced: Histogram<u64>,
}

/// Events of each phase of a run.
#[derive(Clone, Copy)]
struct Plan {
    subscribers: usize,
    unpaced: usize,
    paced: usize,
    paced_rate: f64,
}

impl Plan {
    fn new(subscribers: usize, deliveries: usize) -> Plan {
        let paced_rate = PACED_DELIVERIES_PER_S / subscribers as f64;
        Plan {
            subscribers,
            unpaced: (deliveries / subscribers).max(1000),
            paced: (paced_rate * PACED_SECONDS).round() as usize,
            paced_rate,
        }
    }

    fn events(&self) -> usize {
        self.unpaced + self.paced
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("a histogram")
}

/// The payload of event `n` of a phase (`e` unpaced, `p` paced), stamped with the time since `epoch`.
fn payload(phase: char, n: usize, epoch: Instant) -> String {
    let sent = epoch.elapsed().as_nanos() as u64;
    format!("{{\"id\":\"{phase}{n}\",\"priority\":{},\"msg\":{sent}}}", n % 10)
}

/// Reads a delivered payload: its id and, for a paced event, the microseconds since it was published.
fn received(payload: &[u8], epoch: Instant) -> (String, Option<u64>) {
    let json: serde_json::Value = serde_json::from_slice(payload).expect("a JSON payload");
    let id = json["id"].as_str().expect("an id").to_string();
    let sent = json["msg"].as_u64().expect("a send time");
    let micros = (epoch.elapsed().as_nanos() as u64).saturating_sub(sent) / 1000;
    let paced = id.starts_with('p').then_some(micros.max(1));
    (id, paced)
}

/// Counts deliveries and wakes whoever waits for a count.
#[derive(Default)]
struct Deliveries {
    count: AtomicUsize,
    arrived: Notify,
}

impl Deliveries {
    fn add(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
        self.arrived.notify_one();
    }

    async fn wait_for(&self, count: usize) {
        while self.count.load(Ordering::Acquire) < count {
            let notified = self.arrived.notified();
            if self.count.load(Ordering::Acquire) >= count {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        }
    }
}

/// Waits until `next` is due for a paced phase at `rate` events/s started at `started`.
async fn pace(started: Instant, n: usize, rate: f64) {
    let due = started + Duration::from_secs_f64(n as f64 / rate);
    tokio::time::sleep_until(due.into()).await;
}

// ---------------------------------------------------------------- the broker

struct Line {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: BufWriter<tokio::net::tcp::OwnedWriteHalf>,
}

impl Line {
    async fn connect(addr: std::net::SocketAddr) -> Line {
        let stream = TcpStream::connect(addr).await.expect("connects");
        stream.set_nodelay(true).expect("nodelay");
        let (reader, writer) = stream.into_split();
        Line { reader: BufReader::new(reader), writer: BufWriter::new(writer) }
    }

    async fn command(&mut self, line: &str) {
        self.writer.write_all(format!("{line}\n").as_bytes()).await.expect("writes");
        self.writer.flush().await.expect("flushes");
        let mut reply = String::new();
        self.reader.read_line(&mut reply).await.expect("reads");
        assert!(reply.starts_with("ok"), "{line} -> {reply}");
    }
}

async fn broker_run(plan: Plan) -> Measured {
    let data = tempfile::tempdir().expect("a temporary directory");
    let mut config = BrokerConfig::new(data.path());
    config.sync = SyncMode::Batched;
    let broker = Broker::open(config).await.expect("the broker opens");
    let server = serve(
        broker.clone(),
        ServerConfig {
            addr: "127.0.0.1:0".parse().expect("an address"),
            token: None,
            max_line_bytes: 1 << 20,
            max_connections: 1024,
        },
    )
    .await
    .expect("the broker serves");
    let addr = server.local_addr();
    let epoch = Instant::now();
    // A topic is created by its first `pub`; subscribers start after it.
    let mut publisher = Line::connect(addr).await;
    publisher.command(&format!(r#"pub {SUBJECT} {{"id":"setup","priority":0,"msg":0}}"#)).await;
    let deliveries = Arc::new(Deliveries::default());
    let mut readers = Vec::new();
    for _ in 0..plan.subscribers {
        let deliveries = deliveries.clone();
        let mut line = Line::connect(addr).await;
        line.command(&format!("window {WINDOW}")).await;
        line.command(&format!("sub {SUBJECT}")).await;
        readers.push(tokio::spawn(async move {
            let mut paced = histogram();
            let mut got = 0;
            let mut text = String::new();
            while got < plan.events() {
                text.clear();
                assert!(line.reader.read_line(&mut text).await.expect("reads") > 0, "the broker hung up");
                if let Some(rest) = text.strip_prefix("event bench ") {
                    let (id, latency) = received(rest.trim_end().as_bytes(), epoch);
                    if id == "setup" {
                        line.writer
                            .write_all(format!("ack {SUBJECT} {id}\n").as_bytes())
                            .await
                            .expect("writes");
                        continue;
                    }
                    if let Some(micros) = latency {
                        paced.saturating_record(micros);
                    }
                    deliveries.add();
                    line.writer.write_all(format!("ack {SUBJECT} {id}\n").as_bytes()).await.expect("writes");
                    got += 1;
                } else {
                    assert!(text.starts_with("ok"), "ack failed: {text}");
                }
                if line.reader.buffer().is_empty() {
                    line.writer.flush().await.expect("flushes");
                }
            }
            line.writer.flush().await.expect("flushes");
            paced
        }));
    }

    let Line { mut reader, mut writer } = publisher;
    let permits = Arc::new(Semaphore::new(OUTSTANDING_PUBLISHES));
    let confirmations = {
        let permits = permits.clone();
        tokio::spawn(async move {
            let mut text = String::new();
            for _ in 0..plan.events() {
                text.clear();
                reader.read_line(&mut text).await.expect("reads");
                assert_eq!(text.trim_end(), "ok");
                permits.add_permits(1);
            }
        })
    };
    let started = Instant::now();
    for n in 0..plan.unpaced {
        if let Ok(permit) = permits.try_acquire() {
            permit.forget();
        } else {
            writer.flush().await.expect("flushes");
            permits.acquire().await.expect("permits").forget();
        }
        let line = format!("pub {SUBJECT} {}\n", payload('e', n, epoch));
        writer.write_all(line.as_bytes()).await.expect("writes");
    }
    writer.flush().await.expect("flushes");
    let published = started.elapsed();
    deliveries.wait_for(plan.unpaced * plan.subscribers).await;
    let elapsed = started.elapsed();

    let paced_start = Instant::now();
    for n in 0..plan.paced {
        pace(paced_start, n, plan.paced_rate).await;
        permits.acquire().await.expect("permits").forget();
        let line = format!("pub {SUBJECT} {}\n", payload('p', n, epoch));
        writer.write_all(line.as_bytes()).await.expect("writes");
        writer.flush().await.expect("flushes");
    }
    confirmations.await.expect("every publish confirmed");
    let mut paced = histogram();
    for reader in readers {
        paced.add(reader.await.expect("a subscriber")).expect("same bounds");
    }
    server.shutdown().await;
    broker.shutdown().await;
    Measured {
        deliveries_per_s: (plan.unpaced * plan.subscribers) as f64 / elapsed.as_secs_f64(),
        publish_events_per_s: plan.unpaced as f64 / published.as_secs_f64(),
        paced,
    }
}

// ---------------------------------------------------------------- JetStream

async fn jetstream_run(url: &str, plan: Plan, round: usize) -> Measured {
    let client = async_nats::connect(url).await.expect("connects");
    let js = jetstream::new(client);
    let name = format!("BENCH{round}_{}", plan.subscribers);
    let _ = js.delete_stream(&name).await;
    let stream = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.{SUBJECT}")],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .expect("a stream");
    let subject = format!("{name}.{SUBJECT}");
    for k in 0..plan.subscribers {
        stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(format!("sub{k}")),
                ack_policy: consumer::AckPolicy::Explicit,
                max_ack_pending: WINDOW as i64,
                ..Default::default()
            })
            .await
            .expect("a consumer");
    }
    let epoch = Instant::now();
    let deliveries = Arc::new(Deliveries::default());
    let mut readers = Vec::new();
    for k in 0..plan.subscribers {
        let deliveries = deliveries.clone();
        let client = async_nats::connect(url).await.expect("connects");
        let stream = jetstream::new(client).get_stream(&name).await.expect("the stream");
        let consumer: consumer::PullConsumer =
            stream.get_consumer(&format!("sub{k}")).await.expect("a consumer");
        readers.push(tokio::spawn(async move {
            let mut paced = histogram();
            let mut messages = consumer
                .stream()
                .max_messages_per_batch(WINDOW)
                .expires(Duration::from_secs(1))
                .messages()
                .await
                .expect("a pull");
            let mut got = 0;
            while got < plan.events() {
                let message = messages.next().await.expect("the pull goes on").expect("a message");
                let (_, latency) = received(&message.payload, epoch);
                if let Some(micros) = latency {
                    paced.saturating_record(micros);
                }
                deliveries.add();
                message.ack().await.expect("acks");
                got += 1;
            }
            paced
        }));
    }

    let mut in_flight = VecDeque::new();
    let started = Instant::now();
    for n in 0..plan.unpaced {
        let ack = js.publish(subject.clone(), payload('e', n, epoch).into()).await.expect("publishes");
        in_flight.push_back(ack.into_future());
        while in_flight.len() >= OUTSTANDING_PUBLISHES {
            in_flight.pop_front().expect("in flight").await.expect("stored");
        }
    }
    for ack in in_flight.drain(..) {
        ack.await.expect("stored");
    }
    let published = started.elapsed();
    deliveries.wait_for(plan.unpaced * plan.subscribers).await;
    let elapsed = started.elapsed();

    let paced_start = Instant::now();
    for n in 0..plan.paced {
        pace(paced_start, n, plan.paced_rate).await;
        let ack = js.publish(subject.clone(), payload('p', n, epoch).into()).await.expect("publishes");
        in_flight.push_back(ack.into_future());
        while in_flight.len() >= OUTSTANDING_PUBLISHES {
            in_flight.pop_front().expect("in flight").await.expect("stored");
        }
        js.client().flush().await.expect("flushes");
    }
    for ack in in_flight {
        ack.await.expect("stored");
    }
    let mut paced = histogram();
    for reader in readers {
        paced.add(reader.await.expect("a subscriber")).expect("same bounds");
    }
    let _ = js.delete_stream(&name).await;
    Measured {
        deliveries_per_s: (plan.unpaced * plan.subscribers) as f64 / elapsed.as_secs_f64(),
        publish_events_per_s: plan.unpaced as f64 / published.as_secs_f64(),
        paced,
    }
}

// ---------------------------------------------------------------- the rounds

/// Every round's figures of one side at one subscriber count.
#[derive(Default)]
struct Figures {
    deliveries_per_s: Vec<f64>,
    publish_events_per_s: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
}

impl Figures {
    fn push(&mut self, measured: &Measured) {
        self.deliveries_per_s.push(measured.deliveries_per_s);
        self.publish_events_per_s.push(measured.publish_events_per_s);
        self.p50.push(measured.paced.value_at_quantile(0.50) as f64);
        self.p99.push(measured.paced.value_at_quantile(0.99) as f64);
    }

    fn report(&self, report: &mut Report, bench: &str) {
        report.spread(bench, "deliveries_per_s", &self.deliveries_per_s);
        report.spread(bench, "publish_events_per_s", &self.publish_events_per_s);
        report.spread(bench, "paced_latency_p50_us", &self.p50);
        report.spread(bench, "paced_latency_p99_us", &self.p99);
    }
}

fn timed<T>(run: impl std::future::Future<Output = T>, what: &str) -> impl std::future::Future<Output = T> {
    let what = what.to_string();
    async move {
        tokio::time::timeout(RUN_LIMIT, run)
            .await
            .unwrap_or_else(|_| panic!("{what} took over {RUN_LIMIT:?}"))
    }
}

fn main() {
    let deliveries: usize =
        std::env::var("STAGEFLOW_BENCH_DELIVERIES").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let rounds: usize =
        std::env::var("STAGEFLOW_BENCH_BROKER_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    let mut report = Report::default();
    runtime.block_on(async {
        let config = tempfile::tempdir().expect("a temporary directory");
        let config_file = config.path().join("jetstream.conf");
        std::fs::write(&config_file, "jetstream {\n  sync_interval: \"100ms\"\n}\n")
            .expect("writes the config");
        let Some(nats) = NatsServer::start_with(&["-c", &config_file.to_string_lossy()]).await else {
            report.note("nats-server is not installed: nothing measured");
            return;
        };
        for subscribers in [1, 10, 100] {
            let plan = Plan::new(subscribers, deliveries);
            let (mut broker, mut jetstream, mut ratios) =
                (Figures::default(), Figures::default(), Vec::new());
            for round in 1..=rounds {
                let b = timed(broker_run(plan), "a broker run").await;
                let j = timed(jetstream_run(&nats.url(), plan, round), "a JetStream run").await;
                println!(
                    "{subscribers} subscribers, round {round}: broker {:.0} deliveries/s (paced p50 {} µs), \
                     JetStream {:.0} (paced p50 {} µs)",
                    b.deliveries_per_s,
                    b.paced.value_at_quantile(0.5),
                    j.deliveries_per_s,
                    j.paced.value_at_quantile(0.5)
                );
                ratios.push(b.deliveries_per_s / j.deliveries_per_s);
                broker.push(&b);
                jetstream.push(&j);
            }
            broker.report(&mut report, &format!("broker_sync_batched_{subscribers}_subscribers"));
            jetstream.report(&mut report, &format!("jetstream_file_{subscribers}_subscribers"));
            report.spread(&format!("broker_vs_jetstream_{subscribers}_subscribers"), "ratio", &ratios);
            report.figure(
                &format!("broker_{subscribers}_subscribers"),
                "unpaced_events",
                plan.unpaced as f64,
            );
            report.figure(
                &format!("broker_{subscribers}_subscribers"),
                "paced_events_per_s",
                plan.paced_rate,
            );
        }
    });
    let dir = report::report_dir().join("broker");
    let run = serde_json::json!({"deliveries": deliveries, "rounds": rounds});
    match std::fs::create_dir_all(&dir).and_then(|()| report.write(&dir, run)) {
        Ok(path) => println!("report: {}", path.display()),
        Err(error) => panic!("cannot write the report into {}: {error}", dir.display()),
    }
}
