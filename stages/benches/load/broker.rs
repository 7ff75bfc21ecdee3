//! Section 4: the broker in-process. Publish → deliver → ack with 1, 10 and
//! 100 subscribers, as `benches/broker.rs` does over TCP but through the
//! `Broker` API: publishers keep many publishes outstanding, every
//! subscriber has window 100 and acks each delivery at once. Latency is from
//! the start of `publish` to the delivery reaching the subscriber.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use plotters::prelude::SeriesLabelPosition;
use stageflow_stages::broker::{Broker, BrokerConfig, EventInput, SyncMode};
use tokio::sync::mpsc;

use super::Settings;
use super::plot::{self, COLOURS, Line, Panel, Stroke};
use super::report::{Report, Series};

/// Deliveries per scenario (events × subscribers), before scaling.
const DELIVERIES: f64 = 1_000_000.0;
/// Fewest events published per scenario.
const MIN_EVENTS: u64 = 1000;
/// Subscriber counts.
const SUBSCRIBERS: [usize; 3] = [1, 10, 100];
/// Publisher tasks, each publishing its share one after another.
const PUBLISHERS: usize = 16;
/// Deliveries a subscriber may hold unacked.
const WINDOW: usize = 100;
/// A scenario taking longer than this fails.
const SCENARIO_CAP: Duration = Duration::from_secs(60);
/// The topic every scenario uses.
const TOPIC: &str = "bench";

/// What one scenario measured.
struct Measured {
    events: u64,
    publish_per_s: f64,
    acked_per_s: f64,
    latency_us: Histogram<u64>,
}

/// Runs one scenario: `subscribers` subscribers, `events` events.
async fn scenario(subscribers: usize, events: u64) -> Result<Measured, String> {
    let data = tempfile::tempdir().map_err(|error| error.to_string())?;
    let mut config = BrokerConfig::new(data.path());
    config.sync = SyncMode::Batched;
    let broker = Broker::open(config).await.map_err(|error| error.to_string())?;
    let setup = EventInput { id: "setup".into(), priority: 0, msg: serde_json::Value::Null };
    broker.publish(TOPIC, setup).await.map_err(|error| error.to_string())?;

    let epoch = Instant::now();
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..events).map(|_| AtomicU64::new(0)).collect());
    let mut readers = Vec::new();
    for _ in 0..subscribers {
        let (outlet, mut inbox) = mpsc::channel(WINDOW * 2);
        let mut client = broker.connect(outlet);
        client.set_window(WINDOW).await.map_err(|error| error.to_string())?;
        client.subscribe(TOPIC).await.map_err(|error| error.to_string())?;
        let sent_at = sent_at.clone();
        readers.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("a histogram");
            let mut received = 0;
            while received < events {
                let Some(delivery) = inbox.recv().await else { break };
                let id = &delivery.event.id;
                if let Some(n) = id.strip_prefix('e').and_then(|n| n.parse::<usize>().ok()) {
                    let sent = sent_at[n].load(Ordering::Acquire);
                    let now = epoch.elapsed().as_micros() as u64;
                    latency.saturating_record(now.saturating_sub(sent).max(1));
                    received += 1;
                }
                client.ack(TOPIC, id).await.expect("the ack is accepted");
            }
            (received, latency)
        }));
    }

    let started = Instant::now();
    let mut publishers = tokio::task::JoinSet::new();
    for publisher in 0..PUBLISHERS as u64 {
        let (broker, sent_at) = (broker.clone(), sent_at.clone());
        publishers.spawn(async move {
            for n in (publisher..events).step_by(PUBLISHERS) {
                sent_at[n as usize].store(epoch.elapsed().as_micros() as u64, Ordering::Release);
                let event = EventInput {
                    id: format!("e{n}"),
                    priority: (n % 10) as u8,
                    msg: serde_json::json!({"n": n, "text": "a tweet-sized payload of about a hundred bytes, give or take"}),
                };
                broker.publish(TOPIC, event).await.expect("the publish is accepted");
            }
        });
    }
    while let Some(done) = publishers.join_next().await {
        done.map_err(|error| error.to_string())?;
    }
    let published = started.elapsed();
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("a histogram");
    let mut delivered = 0;
    for reader in readers {
        let (received, latency) = reader.await.map_err(|error| error.to_string())?;
        delivered += received;
        latency_us.add(latency).map_err(|error| error.to_string())?;
    }
    let elapsed = started.elapsed();
    broker.shutdown().await;
    if delivered != events * subscribers as u64 {
        return Err(format!("{delivered} of {} deliveries arrived", events * subscribers as u64));
    }
    Ok(Measured {
        events,
        publish_per_s: events as f64 / published.as_secs_f64(),
        acked_per_s: delivered as f64 / elapsed.as_secs_f64(),
        latency_us,
    })
}

/// Runs every subscriber count, records rates and latency percentiles and draws `broker.svg`.
pub fn run(runtime: &tokio::runtime::Runtime, settings: &Settings, report: &mut Report) {
    let deliveries = settings.scaled(DELIVERIES);
    println!("== 4. broker in-process: {deliveries} deliveries per scenario, window {WINDOW}, sync batched");
    let mut rates = (Vec::new(), Vec::new());
    let mut percentiles = (Vec::new(), Vec::new(), Vec::new());
    for subscribers in SUBSCRIBERS {
        let events = (deliveries / subscribers as u64).max(MIN_EVENTS);
        let bench = format!("broker_{subscribers}_subscribers");
        println!("{bench}: {events} events …");
        let outcome = runtime
            .block_on(async { tokio::time::timeout(SCENARIO_CAP, scenario(subscribers, events)).await });
        let measured = match outcome {
            Ok(Ok(measured)) => measured,
            Ok(Err(error)) => {
                report.note(format!("{bench}: {error}"));
                continue;
            }
            Err(_) => {
                report.note(format!("{bench}: took over {SCENARIO_CAP:?}"));
                continue;
            }
        };
        let ms = |quantile: f64| measured.latency_us.value_at_quantile(quantile) as f64 / 1000.0;
        report.figure(&bench, "events_published", measured.events as f64);
        report.figure(&bench, "publish_events_per_s", measured.publish_per_s);
        report.figure(&bench, "acked_deliveries_per_s", measured.acked_per_s);
        report.figure(&bench, "delivery_latency_p50_ms", ms(0.50));
        report.figure(&bench, "delivery_latency_p95_ms", ms(0.95));
        report.figure(&bench, "delivery_latency_p99_ms", ms(0.99));
        let x = subscribers as f64;
        rates.0.push((x, measured.publish_per_s));
        rates.1.push((x, measured.acked_per_s));
        percentiles.0.push((x, ms(0.50)));
        percentiles.1.push((x, ms(0.95)));
        percentiles.2.push((x, ms(0.99)));
    }
    let publish = Series::new("events published/s", rates.0);
    let acked = Series::new("deliveries acked/s (all subscribers)", rates.1);
    let p50 = Series::new("p50", percentiles.0);
    let p95 = Series::new("p95", percentiles.1);
    let p99 = Series::new("p99", percentiles.2);
    report.series("broker_rates", &[publish.clone(), acked.clone()]);
    report.series("broker_latency", &[p50.clone(), p95.clone(), p99.clone()]);
    let line = |series, colour| Line { series, colour, stroke: Stroke::Solid, markers: true };
    let panels = [
        Panel {
            title: "rates".into(),
            x_label: "subscribers (count, log scale)".into(),
            y_label: "events/s".into(),
            log_y: true,
            log_x: true,
            lines: vec![line(&publish, COLOURS[0]), line(&acked, COLOURS[2])],
            legend: SeriesLabelPosition::LowerRight,
        },
        Panel {
            title: "publish → delivery latency".into(),
            x_label: "subscribers (count, log scale)".into(),
            y_label: "latency under full load (ms)".into(),
            log_y: false,
            log_x: true,
            lines: vec![line(&p50, COLOURS[0]), line(&p95, COLOURS[3]), line(&p99, COLOURS[1])],
            legend: SeriesLabelPosition::UpperLeft,
        },
    ];
    let path = settings.dir.join("broker.svg");
    let title =
        format!("Broker in-process: publish → deliver → ack, window {WINDOW}, {PUBLISHERS} publishers");
    match plot::panels(&path, (1300, 560), &title, (1, 2), &panels) {
        Ok(()) => report.plot_written(&path),
        Err(error) => report.note(format!("broker.svg: {error}")),
    }
}
