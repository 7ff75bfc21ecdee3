//! `GET /api/graph` (stages, kinds, edges, dispatchers) and
//! `GET /api/metrics/stream` (server-sent events, one snapshot per second,
//! with rates computed from the previous one).

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Serialize;
use stageflow::StageSnapshot;
use stageflow::config::{DispatcherDecl, PipelineFile, Registry, Role};

use super::Observed;
use super::metrics::{Scrape, SubscriberFigures};
use crate::broker::TopicStats;

/// How often the stream sends a snapshot.
const STREAM_PERIOD: Duration = Duration::from_secs(1);

/// One stage of the graph.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GraphStage {
    /// Stage id.
    pub id: String,
    /// Its kind, as written in the file.
    pub kind: String,
    /// `producer`, `producer_consumer` or `consumer`.
    pub role: &'static str,
    /// `demand`, `broadcast` or `partition` (producers and producer-consumers).
    pub dispatcher: Option<String>,
    /// The pool's `[min, max]` workers, when it runs a pool.
    pub workers: Option<[usize; 2]>,
}

/// One subscription: events flow from `from` to `to`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GraphEdge {
    /// The producer.
    pub from: String,
    /// The consumer.
    pub to: String,
    /// The selector on a broadcast, if any.
    pub selector: Option<String>,
    /// The partition taken from a partition dispatcher, if any.
    pub partition: Option<usize>,
    /// The consumer's `max_demand` on this subscription.
    pub max_demand: usize,
}

/// What `/api/graph` serves.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Graph {
    /// `[pipeline] name` (`None` for a broker without a pipeline).
    pub pipeline: Option<String>,
    /// The stages, in file order.
    pub stages: Vec<GraphStage>,
    /// The subscriptions.
    pub edges: Vec<GraphEdge>,
    /// Whether this process is a broker (its topics come with the stream).
    pub broker: bool,
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Producer => "producer",
        Role::ProducerConsumer => "producer_consumer",
        Role::Consumer => "consumer",
    }
}

impl Graph {
    /// The graph of a checked pipeline file.
    pub fn of(file: &PipelineFile, registry: &Registry) -> Self {
        let stages = file
            .stages
            .iter()
            .map(|stage| {
                let role = registry.kind(&stage.kind).map(|kind| kind.role());
                let dispatcher = match (role, stage.dispatcher) {
                    (Some(Role::Consumer), _) => None,
                    (_, Some((DispatcherDecl::Broadcast, _))) => Some("broadcast".to_string()),
                    (_, Some((DispatcherDecl::Partition { partitions }, _))) => {
                        Some(format!("partition ({partitions})"))
                    }
                    _ => Some("demand".to_string()),
                };
                GraphStage {
                    id: stage.id.clone(),
                    kind: stage.kind.clone(),
                    role: role.map_or("unknown", role_name),
                    dispatcher,
                    workers: stage.workers.map(|(pool, _)| [pool.min, pool.max]),
                }
            })
            .collect();
        let edges = file
            .stages
            .iter()
            .flat_map(|stage| {
                stage.subscribe_to.iter().map(|subscription| GraphEdge {
                    from: subscription.producer.clone(),
                    to: stage.id.clone(),
                    selector: subscription.selector.clone(),
                    partition: subscription.partition,
                    max_demand: subscription.bounds.max_demand(),
                })
            })
            .collect();
        Graph { pipeline: Some(file.name.clone()), stages, edges, broker: false }
    }

    /// Adds a stage the program adds beside the file's (e.g. `serve`'s line broadcast).
    pub fn add_stage(&mut self, stage: GraphStage, upstream: &[&str]) {
        for from in upstream {
            self.edges.push(GraphEdge {
                from: from.to_string(),
                to: stage.id.clone(),
                selector: None,
                partition: None,
                max_demand: 0,
            });
        }
        self.stages.push(stage);
    }
}

/// `GET /api/graph`.
pub async fn graph(State(observed): State<Observed>) -> Json<Graph> {
    let mut graph = observed.current().map(|view| view.graph).unwrap_or_default();
    graph.broker = observed.broker_shown().is_some();
    Json(graph)
}

/// One stage in a stream snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageFrame {
    /// Stage id.
    pub stage: String,
    /// Events received, total.
    pub events_in: u64,
    /// Events delivered, total.
    pub events_out: u64,
    /// Events received per second since the previous snapshot.
    pub in_rate: f64,
    /// Events delivered per second since the previous snapshot.
    pub out_rate: f64,
    /// Events dropped, total.
    pub dropped: u64,
    /// Events lost to panics, total.
    pub lost: u64,
    /// Restarts, total.
    pub restarts: u64,
    /// Workers running.
    pub workers: u64,
    /// Events in the producer buffer.
    pub buffer: u64,
    /// Credits held from downstream.
    pub demand_held: u64,
    /// Credits granted upstream, not yet filled.
    pub demand_asked: u64,
    /// 95th percentile of processing time per event, µs.
    pub p95_us: f64,
}

/// One sink in a stream snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SinkFrame {
    /// The sink stage's id.
    pub stage: String,
    /// New tweets stored, total.
    pub tweets_stored: u64,
    /// New users stored, total.
    pub users_stored: u64,
}

/// One snapshot of `/api/metrics/stream`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Frame {
    /// The pipeline's name, when one runs.
    pub pipeline: Option<String>,
    /// Seconds the rates are computed over (0 for the first snapshot).
    pub interval_s: f64,
    /// Every stage.
    pub stages: Vec<StageFrame>,
    /// Every sink.
    pub sinks: Vec<SinkFrame>,
    /// The broker's topics.
    pub topics: Vec<TopicStats>,
    /// The broker's subscriptions.
    pub subscribers: Vec<SubscriberFigures>,
}

/// A snapshot from a scrape, with rates from the previous scrape `elapsed` ago (matched by stage id).
pub fn frame(scrape: Scrape, previous: Option<&[StageSnapshot]>, elapsed: Duration) -> Frame {
    let seconds = elapsed.as_secs_f64();
    let rate = |now: u64, before: Option<u64>| match before {
        Some(before) if seconds > 0.0 => now.saturating_sub(before) as f64 / seconds,
        _ => 0.0,
    };
    let stages = scrape
        .stages
        .iter()
        .map(|s| {
            let before = previous.and_then(|p| p.iter().find(|b| b.stage == s.stage));
            StageFrame {
                stage: s.stage.clone(),
                events_in: s.events_in,
                events_out: s.events_out,
                in_rate: rate(s.events_in, before.map(|b| b.events_in)),
                out_rate: rate(s.events_out, before.map(|b| b.events_out)),
                dropped: s.dropped,
                lost: s.lost,
                restarts: s.restarts,
                workers: s.workers,
                buffer: s.buffer_fill,
                demand_held: s.demand_held,
                demand_asked: s.demand_asked,
                p95_us: s.processing.p95_us,
            }
        })
        .collect();
    let sinks = scrape
        .sinks
        .iter()
        .map(|sink| SinkFrame {
            stage: sink.stage.clone(),
            tweets_stored: sink.counters.tweets_inserted,
            users_stored: sink.counters.users_inserted,
        })
        .collect();
    Frame {
        pipeline: scrape.pipeline,
        interval_s: if previous.is_some() { seconds } else { 0.0 },
        stages,
        sinks,
        topics: scrape.topics,
        subscribers: scrape.subscribers,
    }
}

/// `GET /api/metrics/stream`: one [`Frame`] per second as an SSE `data:` line.
pub async fn stream(State(observed): State<Observed>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let frames = futures::stream::unfold(
        (observed, None::<(Vec<StageSnapshot>, Instant)>, true),
        |(observed, previous, first)| async move {
            if !first {
                tokio::time::sleep(STREAM_PERIOD).await;
            }
            let now = Instant::now();
            let scrape = observed.scrape();
            let stages = scrape.stages.clone();
            let frame = match &previous {
                Some((before, at)) => frame(scrape, Some(before), now.duration_since(*at)),
                None => frame(scrape, None, Duration::ZERO),
            };
            let event = Event::default().json_data(&frame).unwrap_or_else(|_| Event::default().data("{}"));
            Some((Ok(event), (observed, Some((stages, now)), false)))
        },
    );
    Sse::new(frames).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use stageflow::config::parse_pipeline;
    use stageflow::{StageKind, StageMetrics};

    use super::*;

    #[test]
    fn the_graph_of_tweets_toml_has_every_stage_and_subscription() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/tweets.toml");
        let text = std::fs::read_to_string(&path).expect("tweets.toml");
        let lookup = |_: &str| Some("http://127.0.0.1:1".to_string());
        let file = parse_pipeline(&path, &text, &lookup).expect("parses");
        let graph = Graph::of(&file, &crate::registry());
        let ids: Vec<&str> = graph.stages.iter().map(|s| s.id.as_str()).collect();
        let declared: Vec<&str> = file.stages.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, declared);
        let tweets = graph.stages.iter().find(|s| s.id == "tweets").expect("tweets");
        assert_eq!((tweets.role, tweets.dispatcher.as_deref()), ("producer_consumer", Some("broadcast")));
        let logger = graph.stages.iter().find(|s| s.id == "logger").expect("logger");
        let declared_logger = file.stages.iter().find(|s| s.id == "logger").expect("logger declared");
        let (pool, _) = declared_logger.workers.expect("the file sizes the logger's pool");
        assert_eq!(logger.workers, Some([pool.min, pool.max]));
        let store = graph.stages.iter().find(|s| s.id == "store").expect("store");
        assert_eq!((store.role, store.dispatcher.as_deref()), ("consumer", None));
        let edge = graph.edges.iter().find(|e| e.to == "logger").expect("edge to logger");
        assert_eq!(
            (edge.from.as_str(), edge.selector.as_deref(), edge.max_demand),
            ("tweets", Some("all"), declared_logger.subscribe_to[0].bounds.max_demand())
        );
        let subscriptions: usize = file.stages.iter().map(|s| s.subscribe_to.len()).sum();
        assert_eq!(graph.edges.len(), subscriptions);
    }

    fn snapshot(id: &str, events_in: u64, events_out: u64) -> StageSnapshot {
        let mut s = StageMetrics::default().snapshot(id, StageKind::ProducerConsumer);
        s.events_in = events_in;
        s.events_out = events_out;
        s
    }

    #[test]
    fn rates_come_from_the_previous_snapshot_of_the_same_stage() {
        let before = vec![snapshot("a", 100, 50), snapshot("gone", 1, 1)];
        let scrape =
            Scrape { stages: vec![snapshot("a", 300, 250), snapshot("new", 10, 10)], ..Default::default() };
        let frame = frame(scrape, Some(&before), Duration::from_millis(500));
        assert_eq!(frame.interval_s, 0.5);
        assert_eq!((frame.stages[0].in_rate, frame.stages[0].out_rate), (400.0, 400.0));
        assert_eq!((frame.stages[1].in_rate, frame.stages[1].out_rate), (0.0, 0.0), "no earlier figure");
    }

    #[test]
    fn the_first_snapshot_has_no_rates() {
        let scrape = Scrape { stages: vec![snapshot("a", 300, 250)], ..Default::default() };
        let frame = frame(scrape, None, Duration::ZERO);
        assert_eq!((frame.interval_s, frame.stages[0].in_rate), (0.0, 0.0));
        assert_eq!(frame.stages[0].events_out, 250);
    }
}
