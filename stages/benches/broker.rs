//! Broker load benchmark: publish → deliver → ack over real TCP on 127.0.0.1,
//! with 1, 10 and 100 subscribers, `--sync off` and `--sync batched`.
//!
//! One publisher keeps up to 256 `pub`s outstanding; every subscriber runs
//! with `window 100` and acks each delivery at once. Delivery latency is
//! the time from writing the `pub` line to reading the `event` line, so it
//! includes queueing behind the outstanding publishes.
//!
//! Prints one JSON line per figure: `{"bench": ..., "metric": ..., "value": ...}`.
//! `STAGEFLOW_BENCH_DELIVERIES=N` sets deliveries per scenario (default 200 000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use stageflow_stages::broker::{Broker, BrokerConfig, ServerConfig, SyncMode, serve};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};

const OUTSTANDING_PUBLISHES: usize = 256;
/// Events published one at a time after the load, each waited for at every subscriber.
const PROBES: usize = 200;
const WINDOW: usize = 100;
/// Any scenario taking longer than this is reported as failed.
const SCENARIO_LIMIT: Duration = Duration::from_secs(40);

fn print(bench: &str, metric: &str, value: f64) {
    println!(
        "{}",
        serde_json::json!({"bench": bench, "metric": metric, "value": (value * 100.0).round() / 100.0})
    );
}

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

    async fn command(&mut self, line: &str) -> String {
        self.writer.write_all(format!("{line}\n").as_bytes()).await.expect("writes");
        self.writer.flush().await.expect("flushes");
        let mut reply = String::new();
        self.reader.read_line(&mut reply).await.expect("reads");
        assert!(reply.starts_with("ok"), "{line} -> {reply}");
        reply
    }
}

async fn scenario(sync: SyncMode, subscribers: usize, deliveries: usize) -> Result<(), String> {
    let events = (deliveries / subscribers).max(1000);
    let sync_name = format!("{sync:?}").to_lowercase();
    let bench = format!("broker_sync_{sync_name}_{subscribers}_subscribers");
    let data = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut config = BrokerConfig::new(data.path());
    config.sync = sync;
    let broker = Broker::open(config).await.map_err(|e| e.to_string())?;
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
    .map_err(|e| e.to_string())?;
    let addr = server.local_addr();
    let epoch = Instant::now();

    let mut publisher = Line::connect(addr).await;
    publisher.command(r#"pub bench {"id":"setup","priority":0,"msg":null}"#).await;
    let mut readers = Vec::new();
    let delivered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let delivery_arrived = Arc::new(Notify::new());
    let wait_for_deliveries = |count: usize| {
        let (delivered, delivery_arrived) = (delivered.clone(), delivery_arrived.clone());
        async move {
            while delivered.load(std::sync::atomic::Ordering::Acquire) < count {
                delivery_arrived.notified().await;
            }
        }
    };
    for _ in 0..subscribers {
        let (delivered, delivery_arrived) = (delivered.clone(), delivery_arrived.clone());
        let mut line = Line::connect(addr).await;
        line.command(&format!("window {WINDOW}")).await;
        line.command("sub bench").await;
        readers.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("a histogram");
            let mut idle_latency = latency.clone();
            let mut received = 0;
            let mut text = String::new();
            while received < events + PROBES {
                text.clear();
                if line.reader.read_line(&mut text).await.expect("reads") == 0 {
                    panic!("the broker closed the connection");
                }
                if let Some(rest) = text.strip_prefix("event bench ") {
                    let json: serde_json::Value = serde_json::from_str(rest).expect("JSON");
                    let sent = json["msg"].as_u64().expect("a send time");
                    let now = epoch.elapsed().as_nanos() as u64;
                    let id = json["id"].as_str().expect("an id");
                    let micros = (now.saturating_sub(sent) / 1000).max(1);
                    if id.starts_with('p') {
                        idle_latency.saturating_record(micros);
                    } else {
                        latency.saturating_record(micros);
                    }
                    delivered.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    delivery_arrived.notify_one();
                    line.writer.write_all(format!("ack bench {id}\n").as_bytes()).await.expect("writes");
                    received += 1;
                } else {
                    assert!(text.starts_with("ok"), "ack failed: {text}");
                }
                if line.reader.buffer().is_empty() {
                    line.writer.flush().await.expect("flushes");
                }
            }
            line.writer.flush().await.expect("flushes");
            (latency, idle_latency)
        }));
    }

    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(OUTSTANDING_PUBLISHES));
    let Line { mut reader, mut writer } = publisher;
    let confirmations = {
        let permits = permits.clone();
        tokio::spawn(async move {
            let mut text = String::new();
            for _ in 0..events {
                text.clear();
                reader.read_line(&mut text).await.expect("reads");
                assert_eq!(text.trim_end(), "ok");
                permits.add_permits(1);
            }
            reader
        })
    };
    for n in 0..events {
        match permits.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(_) => {
                writer.flush().await.map_err(|e| e.to_string())?;
                permits.acquire().await.map_err(|e| e.to_string())?.forget();
            }
        }
        let sent = epoch.elapsed().as_nanos() as u64;
        let line = format!("pub bench {{\"id\":\"e{n}\",\"priority\":{},\"msg\":{sent}}}\n", n % 10);
        writer.write_all(line.as_bytes()).await.map_err(|e| e.to_string())?;
    }
    writer.flush().await.map_err(|e| e.to_string())?;
    let reader = confirmations.await.map_err(|e| e.to_string())?;
    let published = started.elapsed();
    wait_for_deliveries(events * subscribers).await;
    let elapsed = started.elapsed();
    let mut publisher = Line { reader, writer };
    // Wait for the load to drain, then time single events through an idle broker.
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("a histogram");
    let mut idle_latency = latency.clone();
    for probe in 0..PROBES {
        let sent = epoch.elapsed().as_nanos() as u64;
        publisher.command(&format!("pub bench {{\"id\":\"p{probe}\",\"priority\":9,\"msg\":{sent}}}")).await;
        wait_for_deliveries((events + probe + 1) * subscribers).await;
    }
    for reader in readers {
        let (load, idle) = reader.await.map_err(|e| e.to_string())?;
        latency.add(load).map_err(|e| e.to_string())?;
        idle_latency.add(idle).map_err(|e| e.to_string())?;
    }
    print(&bench, "events_published", events as f64);
    print(&bench, "publish_events_per_s", events as f64 / published.as_secs_f64());
    print(&bench, "acked_deliveries_per_s", (events * subscribers) as f64 / elapsed.as_secs_f64());
    print(&bench, "loaded_delivery_latency_p50_us", latency.value_at_quantile(0.50) as f64);
    print(&bench, "loaded_delivery_latency_p99_us", latency.value_at_quantile(0.99) as f64);
    print(&bench, "idle_delivery_latency_p50_us", idle_latency.value_at_quantile(0.50) as f64);
    print(&bench, "idle_delivery_latency_p99_us", idle_latency.value_at_quantile(0.99) as f64);
    server.shutdown().await;
    broker.shutdown().await;
    Ok(())
}

fn main() {
    let deliveries: usize =
        std::env::var("STAGEFLOW_BENCH_DELIVERIES").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    for sync in [SyncMode::Off, SyncMode::Batched] {
        for subscribers in [1, 10, 100] {
            let outcome = runtime.block_on(async {
                tokio::time::timeout(SCENARIO_LIMIT, scenario(sync, subscribers, deliveries)).await
            });
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    eprintln!("scenario sync={sync:?} subscribers={subscribers} failed: {error}")
                }
                Err(_) => {
                    eprintln!("scenario sync={sync:?} subscribers={subscribers} took over {SCENARIO_LIMIT:?}")
                }
            }
        }
    }
}
