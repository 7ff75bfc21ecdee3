//! `GET /metrics`: the Prometheus text format, rendered at scrape time from
//! snapshots the engine, the sinks and the broker already keep (the hot path
//! pays nothing for being scraped), through the `prometheus-client` crate.

use hdrhistogram::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use stageflow::{PROCESSING_BUCKETS_US, StageSnapshot};

pub use crate::broker::SubscriberFigures;
use crate::broker::TopicStats;
use crate::storage::{InsertTimes, SinkCounters};

/// The content type of the text format `render` writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds, in seconds, of the sink insert-time buckets.
const INSERT_BUCKETS_S: [f64; 13] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// One sink's figures at scrape time.
#[derive(Debug, Clone)]
pub struct SinkFigures {
    /// The sink stage's id.
    pub stage: String,
    /// Its counters since it started.
    pub counters: SinkCounters,
    /// Every insert time since it started, in microseconds.
    pub inserts: InsertTimes,
}

/// One cut edge's figures at scrape time (`run --part`: the edge's events go over NATS JetStream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutFigures {
    /// The edge, `producer->consumer`.
    pub edge: String,
    /// `out` (this process publishes) or `in` (it pulls).
    pub direction: &'static str,
    /// Events published (out).
    pub published: u64,
    /// Publishes acknowledged by the server (out) or messages acked by this process (in).
    pub acked: u64,
    /// Messages received (in).
    pub received: u64,
    /// Messages received more than once (in), or redelivered by the edge's consumers (out).
    pub redelivered: u64,
    /// Messages waiting in the stream or delivered and unacked.
    pub pending: u64,
}

impl CutFigures {
    /// The figures of every cut edge of `report` now.
    pub fn of(report: &crate::cluster::CutReport) -> Vec<CutFigures> {
        use std::sync::atomic::Ordering::Relaxed;
        report
            .edges()
            .map(|(edge, direction, stats)| CutFigures {
                edge: edge.to_string(),
                direction: match direction {
                    crate::cluster::CutDirection::Out => "out",
                    crate::cluster::CutDirection::In => "in",
                },
                published: stats.published.load(Relaxed),
                acked: stats.acked.load(Relaxed),
                received: stats.received.load(Relaxed),
                redelivered: stats.redelivered.load(Relaxed),
                pending: stats.pending.load(Relaxed),
            })
            .collect()
    }
}

/// Everything one scrape reports.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// The pipeline's name, when a pipeline runs in this process.
    pub pipeline: Option<String>,
    /// One snapshot per stage.
    pub stages: Vec<StageSnapshot>,
    /// Dead letters per stage ([`crate::dead_letters::per_stage`]; stages with none absent).
    pub dead_lettered: std::collections::BTreeMap<String, u64>,
    /// The sinks of the pipeline.
    pub sinks: Vec<SinkFigures>,
    /// The pipeline's edges cut to other processes.
    pub cuts: Vec<CutFigures>,
    /// The broker's topics, when this process is a broker.
    pub topics: Vec<TopicStats>,
    /// The broker's subscriptions.
    pub subscribers: Vec<SubscriberFigures>,
}

/// The scrape in the Prometheus text format (0.0.4).
pub fn render(scrape: Scrape) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ScrapeCollector(scrape)));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .expect("writing to a String cannot fail");
    text
}

/// Cumulative `(upper bound in seconds, count)` buckets of a microsecond histogram, ending with +Inf.
pub fn buckets_of(histogram: &Histogram<u64>, bounds_s: &[f64]) -> Vec<(f64, u64)> {
    let mut buckets: Vec<(f64, u64)> =
        bounds_s.iter().map(|&bound| (bound, histogram.count_between(0, (bound * 1e6) as u64))).collect();
    buckets.push((f64::INFINITY, histogram.len()));
    buckets
}

/// Per-bucket counts from cumulative ones: what `prometheus-client` sums back up as it writes.
fn increments(cumulative: &[(f64, u64)]) -> Vec<(f64, u64)> {
    let mut below = 0;
    cumulative
        .iter()
        .map(|&(bound, count)| {
            let increment = count.saturating_sub(below);
            below = below.max(count);
            (bound, increment)
        })
        .collect()
}

#[derive(Debug)]
struct ScrapeCollector(Scrape);

type Labels = Vec<(&'static str, String)>;

/// One metric family: a series per item, each with its labels and value (skipped when there are no items).
#[allow(clippy::too_many_arguments)]
fn family<T, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric_type: MetricType,
    items: &[T],
    labels: impl Fn(&T) -> Labels,
    value: impl Fn(&T) -> M,
) -> Result<(), std::fmt::Error> {
    if items.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, unit, metric_type)?;
    for item in items {
        let labels = labels(item);
        value(item).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter<T>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    items: &[T],
    labels: impl Fn(&T) -> Labels,
    value: impl Fn(&T) -> u64,
) -> Result<(), std::fmt::Error> {
    family(encoder, name, help, None, MetricType::Counter, items, labels, |item| {
        ConstCounter::new(value(item))
    })
}

fn gauge<T>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    items: &[T],
    labels: impl Fn(&T) -> Labels,
    value: impl Fn(&T) -> i64,
) -> Result<(), std::fmt::Error> {
    family(encoder, name, help, unit, MetricType::Gauge, items, labels, |item| ConstGauge::new(value(item)))
}

fn saturating(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Collector for ScrapeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let scrape = &self.0;
        let pipeline = scrape.pipeline.as_deref().unwrap_or("");
        let stage = |s: &StageSnapshot| -> Labels {
            vec![("pipeline", pipeline.to_string()), ("stage", s.stage.clone())]
        };
        let stages = &scrape.stages;
        let e = &mut encoder;
        counter(e, "stageflow_events_in", "Events a stage received from upstream.", stages, stage, |s| {
            s.events_in
        })?;
        counter(e, "stageflow_events_out", "Events a stage delivered downstream.", stages, stage, |s| {
            s.events_out
        })?;
        counter(
            e,
            "stageflow_events_dropped",
            "Events dropped by a full buffer, a vanished subscriber or left untaken.",
            stages,
            stage,
            |s| s.dropped,
        )?;
        counter(
            e,
            "stageflow_events_lost",
            "Events lost to panics (the one each panic held).",
            stages,
            stage,
            |s| s.lost,
        )?;
        counter(
            e,
            "stageflow_events_dead_lettered",
            "Events a stage gave up on (after max_attempts) and documents a store rejected for good, written to the stage's dead-letter target.",
            stages,
            stage,
            |s| scrape.dead_lettered.get(&s.stage).copied().unwrap_or(0),
        )?;
        counter(
            e,
            "stageflow_restarts",
            "Restarts of a stage or its workers after a panic.",
            stages,
            stage,
            |s| s.restarts,
        )?;
        counter(
            e,
            "stageflow_credit_violations",
            "Events received beyond the credits granted (0 unless the protocol is broken).",
            stages,
            stage,
            |s| s.credit_violations,
        )?;
        gauge(
            e,
            "stageflow_workers",
            "Workers running (1 unless the stage runs a pool).",
            None,
            stages,
            stage,
            |s| saturating(s.workers),
        )?;
        gauge(
            e,
            "stageflow_buffer_events",
            "Events waiting in the stage's producer buffer.",
            None,
            stages,
            stage,
            |s| saturating(s.buffer_fill),
        )?;
        gauge(
            e,
            "stageflow_demand_held",
            "Credits held from downstream subscribers, not yet used.",
            None,
            stages,
            stage,
            |s| saturating(s.demand_held),
        )?;
        gauge(
            e,
            "stageflow_demand_asked",
            "Credits granted to upstream producers, not yet filled (outstanding demand).",
            None,
            stages,
            stage,
            |s| saturating(s.demand_asked),
        )?;
        if !stages.is_empty() {
            let mut metric = e.encode_descriptor(
                "stageflow_processing",
                "Time a stage's callbacks took per event.",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for s in stages {
                let p = &s.processing;
                let mut buckets: Vec<(f64, u64)> = PROCESSING_BUCKETS_US
                    .iter()
                    .zip(p.buckets)
                    .map(|(bound, count)| (bound / 1e6, count))
                    .collect();
                buckets.push((f64::INFINITY, p.count));
                let labels = stage(s);
                metric.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                    p.sum_us / 1e6,
                    p.count,
                    &increments(&buckets),
                    None,
                )?;
            }
        }
        self.encode_sinks(e, pipeline)?;
        self.encode_cuts(e, pipeline)?;
        self.encode_broker(e)
    }
}

impl ScrapeCollector {
    fn encode_sinks(&self, e: &mut DescriptorEncoder, pipeline: &str) -> Result<(), std::fmt::Error> {
        let sinks = &self.0.sinks;
        let sink = |s: &SinkFigures| -> Labels {
            vec![("pipeline", pipeline.to_string()), ("stage", s.stage.clone())]
        };
        counter(
            e,
            "stageflow_sink_tweets_stored",
            "Tweets a sink stored that were new.",
            sinks,
            sink,
            |s| s.counters.tweets_inserted,
        )?;
        counter(
            e,
            "stageflow_sink_tweets_duplicate",
            "Tweets a sink found already stored (replays).",
            sinks,
            sink,
            |s| s.counters.tweets_duplicate,
        )?;
        counter(e, "stageflow_sink_users_stored", "Users a sink stored that were new.", sinks, sink, |s| {
            s.counters.users_inserted
        })?;
        counter(e, "stageflow_sink_batches", "Batches a sink wrote.", sinks, sink, |s| s.counters.batches)?;
        counter(
            e,
            "stageflow_sink_retries",
            "Writes tried again after a transient failure.",
            sinks,
            sink,
            |s| s.counters.retries,
        )?;
        if !sinks.is_empty() {
            let mut metric = e.encode_descriptor(
                "stageflow_sink_insert",
                "Time of one bulk insert, by collection.",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for s in sinks {
                for (collection, histogram) in [("tweets", &s.inserts.tweets), ("users", &s.inserts.users)] {
                    let labels =
                        vec![("pipeline", pipeline), ("stage", s.stage.as_str()), ("collection", collection)];
                    let sum = histogram.mean() * histogram.len() as f64 / 1e6;
                    let buckets = increments(&buckets_of(histogram, &INSERT_BUCKETS_S));
                    metric.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                        sum,
                        histogram.len(),
                        &buckets,
                        None,
                    )?;
                }
            }
        }
        Ok(())
    }

    fn encode_cuts(&self, e: &mut DescriptorEncoder, pipeline: &str) -> Result<(), std::fmt::Error> {
        let cut = |c: &CutFigures| -> Labels {
            vec![
                ("pipeline", pipeline.to_string()),
                ("edge", c.edge.clone()),
                ("direction", c.direction.to_string()),
            ]
        };
        let outbound: Vec<CutFigures> =
            self.0.cuts.iter().filter(|c| c.direction == "out").cloned().collect();
        let inbound: Vec<CutFigures> = self.0.cuts.iter().filter(|c| c.direction == "in").cloned().collect();
        counter(e, "stageflow_cut_published", "Events published on a cut edge.", &outbound, cut, |c| {
            c.published
        })?;
        counter(
            e,
            "stageflow_cut_acked",
            "Publishes acknowledged (out) or messages acked once done (in) on a cut edge.",
            &self.0.cuts,
            cut,
            |c| c.acked,
        )?;
        counter(e, "stageflow_cut_received", "Messages received on a cut edge.", &inbound, cut, |c| {
            c.received
        })?;
        counter(
            e,
            "stageflow_cut_redelivered",
            "Messages delivered more than once on a cut edge (received again in, redelivered by its consumers out).",
            &self.0.cuts,
            cut,
            |c| c.redelivered,
        )?;
        gauge(
            e,
            "stageflow_cut_pending",
            "Messages waiting in the stream or delivered and unacked on a cut edge.",
            None,
            &self.0.cuts,
            cut,
            |c| saturating(c.pending),
        )
    }

    fn encode_broker(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let topics = &self.0.topics;
        let topic = |t: &TopicStats| -> Labels { vec![("topic", t.topic.clone())] };
        counter(
            e,
            "stageflow_broker_published",
            "Events published to a topic since the broker started.",
            topics,
            topic,
            |t| t.published,
        )?;
        counter(
            e,
            "stageflow_broker_acked",
            "Acks on a topic since the broker started.",
            topics,
            topic,
            |t| t.acked,
        )?;
        gauge(
            e,
            "stageflow_broker_pending",
            "Events waiting for a topic's subscribers.",
            None,
            topics,
            topic,
            |t| saturating(t.pending),
        )?;
        gauge(
            e,
            "stageflow_broker_in_flight",
            "Deliveries on a topic awaiting an ack.",
            None,
            topics,
            topic,
            |t| saturating(t.in_flight),
        )?;
        gauge(
            e,
            "stageflow_broker_log",
            "Size of a topic's log on disk.",
            Some(&Unit::Bytes),
            topics,
            topic,
            |t| saturating(t.log_bytes),
        )?;
        gauge(e, "stageflow_broker_subscribers", "Subscriptions of a topic.", None, topics, topic, |t| {
            saturating(t.subscribers as u64)
        })?;
        let subscribers = &self.0.subscribers;
        let subscriber = |s: &SubscriberFigures| -> Labels {
            vec![("topic", s.topic.clone()), ("subscriber", s.subscriber.clone())]
        };
        gauge(
            e,
            "stageflow_broker_subscriber_pending",
            "Events waiting for one subscriber.",
            None,
            subscribers,
            subscriber,
            |s| saturating(s.pending),
        )?;
        gauge(
            e,
            "stageflow_broker_subscriber_in_flight",
            "Deliveries to one subscriber awaiting its ack (its window in use).",
            None,
            subscribers,
            subscriber,
            |s| saturating(s.in_flight),
        )?;
        gauge(
            e,
            "stageflow_broker_subscriber_window",
            "Most deliveries one subscriber may have awaiting an ack (0 while detached).",
            None,
            subscribers,
            subscriber,
            |s| saturating(s.window),
        )
    }
}

#[cfg(test)]
mod tests {
    use stageflow::{StageKind, StageMetrics};

    use super::*;

    /// The value of the sample line `name{labels}`, where `labels` is the exact label text.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    fn stage(id: &str, events_out: u64) -> StageSnapshot {
        let mut snapshot = StageMetrics::default().snapshot(id, StageKind::ProducerConsumer);
        snapshot.events_out = events_out;
        snapshot.events_in = events_out + 1;
        snapshot.workers = 3;
        snapshot.demand_asked = 400;
        snapshot
    }

    #[test]
    fn stage_counters_and_gauges_carry_pipeline_and_stage_labels() {
        let scrape = Scrape {
            pipeline: Some("tweets".into()),
            stages: vec![stage("tweets", 120), stage("logger", 7)],
            ..Default::default()
        };
        let text = render(scrape);
        assert_eq!(
            sample(&text, r#"stageflow_events_out_total{pipeline="tweets",stage="tweets"}"#),
            Some(120.0)
        );
        assert_eq!(
            sample(&text, r#"stageflow_events_in_total{pipeline="tweets",stage="logger"}"#),
            Some(8.0)
        );
        assert_eq!(sample(&text, r#"stageflow_workers{pipeline="tweets",stage="logger"}"#), Some(3.0));
        assert_eq!(sample(&text, r#"stageflow_demand_asked{pipeline="tweets",stage="tweets"}"#), Some(400.0));
        assert!(text.contains("# TYPE stageflow_events_out_total counter\n"), "{text}");
        assert!(text.contains("# TYPE stageflow_buffer_events gauge\n"), "{text}");
        assert_eq!(text.matches("# TYPE stageflow_events_out_total").count(), 1, "one family, two series");
        assert!(!text.contains("broker"), "no broker in this process: {text}");
    }

    #[test]
    fn dead_letters_are_counted_per_stage_zero_where_none() {
        let scrape = Scrape {
            pipeline: Some("tweets".into()),
            stages: vec![stage("tweets", 120), stage("store", 7)],
            dead_lettered: [("store".to_string(), 3)].into(),
            ..Default::default()
        };
        let text = render(scrape);
        assert!(text.contains("# TYPE stageflow_events_dead_lettered_total counter\n"), "{text}");
        assert_eq!(
            sample(&text, r#"stageflow_events_dead_lettered_total{pipeline="tweets",stage="store"}"#),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, r#"stageflow_events_dead_lettered_total{pipeline="tweets",stage="tweets"}"#),
            Some(0.0)
        );
    }

    #[test]
    fn processing_time_is_a_histogram_in_seconds_from_the_engine_buckets() {
        let mut snapshot = stage("logger", 4);
        // Three events at 50 µs and one at 2 ms, as the engine counts them per bound.
        snapshot.processing.buckets = [0, 0, 0, 3, 3, 3, 4, 4, 4, 4, 4, 4];
        snapshot.processing.count = 4;
        snapshot.processing.sum_us = 2150.0;
        let text =
            render(Scrape { pipeline: Some("p".into()), stages: vec![snapshot], ..Default::default() });
        assert!(text.contains("# TYPE stageflow_processing_seconds histogram\n"), "{text}");
        let bucket = |le: &str| {
            sample(
                &text,
                &format!(r#"stageflow_processing_seconds_bucket{{pipeline="p",stage="logger",le="{le}"}}"#),
            )
        };
        assert_eq!(bucket("2.5e-05"), Some(0.0), "{text}");
        assert_eq!(bucket("0.0001"), Some(3.0), "{text}");
        assert_eq!(bucket("0.005"), Some(4.0), "{text}");
        assert_eq!(bucket("+Inf"), Some(4.0), "{text}");
        assert_eq!(
            sample(&text, r#"stageflow_processing_seconds_count{pipeline="p",stage="logger"}"#),
            Some(4.0)
        );
        let sum =
            sample(&text, r#"stageflow_processing_seconds_sum{pipeline="p",stage="logger"}"#).expect("sum");
        assert!((sum - 0.00215).abs() < 1e-9, "sum {sum}");
    }

    #[test]
    fn sinks_report_stored_counts_and_insert_time_by_collection() {
        let mut inserts = InsertTimes::default();
        inserts.tweets.record(3_000).expect("in range");
        inserts.tweets.record(40_000).expect("in range");
        inserts.users.record(700).expect("in range");
        let counters =
            SinkCounters { batches: 2, tweets_inserted: 390, users_inserted: 250, ..Default::default() };
        let scrape = Scrape {
            pipeline: Some("tweets".into()),
            sinks: vec![SinkFigures { stage: "store".into(), counters, inserts }],
            ..Default::default()
        };
        let text = render(scrape);
        let labels = r#"{pipeline="tweets",stage="store"}"#;
        assert_eq!(sample(&text, &format!("stageflow_sink_tweets_stored_total{labels}")), Some(390.0));
        assert_eq!(sample(&text, &format!("stageflow_sink_users_stored_total{labels}")), Some(250.0));
        let tweets = r#"{pipeline="tweets",stage="store",collection="tweets"}"#;
        assert_eq!(
            sample(&text, &format!("stageflow_sink_insert_seconds_count{tweets}")),
            Some(2.0),
            "{text}"
        );
        let users = r#"{pipeline="tweets",stage="store",collection="users"}"#;
        assert_eq!(
            sample(&text, &format!("stageflow_sink_insert_seconds_count{users}")),
            Some(1.0),
            "{text}"
        );
    }

    #[test]
    fn buckets_of_a_histogram_are_cumulative_and_end_at_infinity() {
        let mut histogram = InsertTimes::default().tweets;
        for micros in [500, 2_000, 2_000, 30_000_000] {
            histogram.record(micros).expect("in range");
        }
        let buckets = buckets_of(&histogram, &[0.001, 0.01, 1.0]);
        assert_eq!(buckets, vec![(0.001, 1), (0.01, 3), (1.0, 3), (f64::INFINITY, 4)]);
    }

    #[test]
    fn broker_topics_and_subscribers_have_their_own_labels_and_units() {
        let topic = TopicStats {
            topic: "tweets".into(),
            subscribers: 2,
            pending: 5,
            in_flight: 3,
            published: 1000,
            acked: 990,
            log_bytes: 65536,
        };
        let subscriber = SubscriberFigures {
            topic: "tweets".into(),
            subscriber: "archive".into(),
            pending: 5,
            in_flight: 3,
            window: 10,
        };
        let text =
            render(Scrape { topics: vec![topic], subscribers: vec![subscriber], ..Default::default() });
        assert_eq!(
            sample(&text, r#"stageflow_broker_published_total{topic="tweets"}"#),
            Some(1000.0),
            "{text}"
        );
        assert_eq!(sample(&text, r#"stageflow_broker_log_bytes{topic="tweets"}"#), Some(65536.0), "{text}");
        let series = r#"stageflow_broker_subscriber_in_flight{topic="tweets",subscriber="archive"}"#;
        assert_eq!(sample(&text, series), Some(3.0));
        let series = r#"stageflow_broker_subscriber_window{topic="tweets",subscriber="archive"}"#;
        assert_eq!(sample(&text, series), Some(10.0));
        assert!(!text.contains("stageflow_events_in"), "no pipeline in this process");
    }

    #[test]
    fn every_metric_the_grafana_dashboard_queries_is_served() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/grafana-dashboard.json");
        let dashboard = std::fs::read_to_string(path).expect("the dashboard");
        let scrape = Scrape {
            pipeline: Some("tweets".into()),
            stages: vec![stage("tweets", 1)],
            dead_lettered: Default::default(),
            sinks: vec![SinkFigures {
                stage: "store".into(),
                counters: SinkCounters::default(),
                inserts: InsertTimes::default(),
            }],
            topics: vec![TopicStats {
                topic: "t".into(),
                subscribers: 1,
                pending: 0,
                in_flight: 0,
                published: 0,
                acked: 0,
                log_bytes: 0,
            }],
            cuts: ["out", "in"]
                .map(|direction| CutFigures {
                    edge: "a->b".into(),
                    direction,
                    published: 0,
                    acked: 0,
                    received: 0,
                    redelivered: 0,
                    pending: 0,
                })
                .to_vec(),
            subscribers: vec![SubscriberFigures {
                topic: "t".into(),
                subscriber: "s".into(),
                pending: 0,
                in_flight: 0,
                window: 0,
            }],
        };
        let served = render(scrape);
        let names = regex::Regex::new(r"stageflow_[a-z_]+").expect("a regex");
        let queried: std::collections::BTreeSet<&str> = names
            .find_iter(&dashboard)
            .map(|m| m.as_str())
            .filter(|name| *name != "stageflow_main")
            .collect();
        assert!(queried.len() > 10, "{queried:?}");
        for name in queried {
            assert!(
                served.contains(&format!("\n{name}{{")),
                "the dashboard queries {name}, which /metrics does not serve"
            );
        }
    }

    #[test]
    fn cut_edges_report_each_figure_of_their_direction() {
        let cut = |direction: &'static str| CutFigures {
            edge: "aggregator->batcher".into(),
            direction,
            published: 100,
            acked: 90,
            received: 80,
            redelivered: 2,
            pending: 7,
        };
        let scrape =
            Scrape { pipeline: Some("p".into()), cuts: vec![cut("out"), cut("in")], ..Default::default() };
        let text = render(scrape);
        let labels = |direction: &str| {
            format!(r#"{{pipeline="p",edge="aggregator->batcher",direction="{direction}"}}"#)
        };
        assert_eq!(
            sample(&text, &format!("stageflow_cut_published_total{}", labels("out"))),
            Some(100.0),
            "{text}"
        );
        assert_eq!(sample(&text, &format!("stageflow_cut_published_total{}", labels("in"))), None, "{text}");
        assert_eq!(sample(&text, &format!("stageflow_cut_acked_total{}", labels("in"))), Some(90.0));
        assert_eq!(sample(&text, &format!("stageflow_cut_acked_total{}", labels("out"))), Some(90.0));
        assert_eq!(sample(&text, &format!("stageflow_cut_pending{}", labels("in"))), Some(7.0));
        assert_eq!(sample(&text, &format!("stageflow_cut_pending{}", labels("out"))), Some(7.0));
        assert_eq!(sample(&text, &format!("stageflow_cut_received_total{}", labels("out"))), None);
        assert_eq!(sample(&text, &format!("stageflow_cut_redelivered_total{}", labels("in"))), Some(2.0));
        assert!(!render(Scrape::default()).contains("stageflow_cut"), "no cut, no cut metrics");
    }

    #[test]
    fn label_values_are_escaped() {
        let scrape = Scrape {
            pipeline: Some("a \"quoted\"\\name".into()),
            stages: vec![stage("s", 1)],
            ..Default::default()
        };
        let text = render(scrape);
        assert!(text.contains(r#"pipeline="a \"quoted\"\\name""#), "{text}");
    }
}
