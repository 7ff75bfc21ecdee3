//! Scale-out: one pipeline file cut into parts that run as separate
//! processes, joined by NATS JetStream.
//!
//! A stage says `part = "ingest"` (default `"main"`). `stageflow run FILE`
//! runs every part in one process, every edge an in-process link, no NATS
//! needed. `stageflow run FILE --part process` runs only that part's stages;
//! each edge from a producer in another part arrives through JetStream:
//!
//! - The producing process publishes each event as JSON to
//!   `<stream>.<producer>.<part>.p<k>`, `k` chosen by the subscription's
//!   `partition_by` (or a hash of the event), holding at most `max_in_flight`
//!   unacknowledged publishes, each with a `Nats-Msg-Id` so a retried
//!   publish is stored once.
//! - Every process of the consuming part pulls partition `k` from the
//!   durable consumer `<producer>_<part>_p<k>` in a priority group with the
//!   `pinned_client` policy: the server delivers to one pulling process at a
//!   time and moves the pin when that process stops pulling for 5 s (killed)
//!   or releases it (rebalancing after another process joined).
//! - The consuming process rebuilds the producer there (same id, dispatcher,
//!   buffer): its stages subscribe to it as if it were local, selectors and
//!   all. `max_ack_pending` is the largest `max_demand` of those
//!   subscriptions, and a message is acked only once every copy of its event
//!   is finished with (for the tweet pipeline: stored), through the
//!   [`Receipt`](crate::receipt::Receipt) the event carries.

mod build;
pub mod plan;
mod publish;
mod subscribe;
pub mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use comfy_table::Table;
use stageflow::config::{ConfigError, PipelineFile, Registry};

pub use build::{PartPipeline, RunningCut, build_cut, connect, ensure_stream};
pub use plan::{Cut, CutEdge, cut, cut_edges, parts};
pub use publish::{NatsPublish, NatsPublishKind, check_subject};
pub use subscribe::{NatsSubscribe, NatsSubscribeKind, fair_share};

/// `[pipeline.cluster]`: where the log joining the parts is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// The NATS server(s), e.g. `nats://127.0.0.1:4222`.
    pub nats: String,
    /// Partitions per cut edge (default 8): the most processes one part can spread over.
    pub partitions: usize,
    /// The JetStream stream (default `stageflow_<pipeline>`); also the subjects' first token.
    pub stream: String,
    /// Copies of the stream in a NATS cluster (default 1; 3 on a 3-node cluster).
    pub replicas: usize,
    /// Publishes a producing process may have unacknowledged (default 1000).
    pub max_in_flight: usize,
}

/// The keys `[pipeline.cluster]` may have, each with what it means.
pub const CLUSTER_KEYS: &[(&str, &str)] = &[
    ("nats", "NATS server URL (default nats://127.0.0.1:4222; write \"${NATS_URL:-nats://127.0.0.1:4222}\")"),
    ("partitions", "partitions per edge between parts (default 8)"),
    ("stream", "JetStream stream name (default stageflow_<pipeline name>)"),
    ("replicas", "stream replicas in a NATS cluster (default 1)"),
    ("max_in_flight", "unacknowledged publishes a producing process may hold (default 1000)"),
];

impl ClusterSettings {
    /// The settings of `file`'s `[pipeline.cluster]` (defaults without one); errors name file, line and key.
    pub fn of(file: &PipelineFile) -> Result<Self, Vec<ConfigError>> {
        let mut settings = ClusterSettings {
            nats: "nats://127.0.0.1:4222".into(),
            partitions: 8,
            stream: default_stream(&file.name),
            replicas: 1,
            max_in_flight: 1000,
        };
        let Some(cluster) = &file.cluster else { return Ok(settings) };
        let mut errors = Vec::new();
        for setting in &cluster.settings {
            let count = |low: i64, high: i64| match setting.value.as_integer() {
                Some(n) if (low..=high).contains(&n) => Ok(n as usize),
                _ => Err(format!("must be a whole number from {low} to {high}, got {}", setting.value)),
            };
            let result = match setting.key.as_str() {
                "nats" => match setting.value.as_str() {
                    Some(url) if !url.is_empty() => {
                        settings.nats = url.to_string();
                        Ok(())
                    }
                    _ => {
                        Err(format!("must be a URL such as \"nats://127.0.0.1:4222\", got {}", setting.value))
                    }
                },
                "partitions" => count(1, 4096).map(|n| settings.partitions = n),
                "replicas" => count(1, 5).map(|n| settings.replicas = n),
                "max_in_flight" => count(1, 1_000_000).map(|n| settings.max_in_flight = n),
                "stream" => match setting.value.as_str() {
                    Some(name) if plan::subject_token(name) => {
                        settings.stream = name.to_string();
                        Ok(())
                    }
                    _ => Err(format!("must be a name of letters, digits, `_` or `-`, got {}", setting.value)),
                },
                other => {
                    let keys = CLUSTER_KEYS.iter().map(|(key, _)| *key);
                    let hint = stageflow::config::closest(other, keys.clone())
                        .map(|near| format!(" (did you mean `{near}`?)"))
                        .unwrap_or_default();
                    Err(format!(
                        "unknown key{hint}; expected one of: {}",
                        keys.collect::<Vec<_>>().join(", ")
                    ))
                }
            };
            if let Err(why) = result {
                errors.push(ConfigError {
                    file: file.path.clone(),
                    location: Some(setting.location),
                    stage: None,
                    message: format!("[pipeline.cluster] `{}`: {why}", setting.key),
                });
            }
        }
        if errors.is_empty() { Ok(settings) } else { Err(errors) }
    }
}

/// `stageflow_<name>`, with what a stream name cannot hold made `_`.
pub fn default_stream(pipeline: &str) -> String {
    let name: String =
        pipeline.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    format!("stageflow_{name}")
}

/// Every scale-out problem in a file: its `[pipeline.cluster]`, and the
/// edges between parts (keys, types, dispatchers), each with file and line.
pub fn check(file: &PipelineFile, registry: &Registry) -> Vec<ConfigError> {
    let mut errors = ClusterSettings::of(file).err().unwrap_or_default();
    let (edges, edge_errors) = cut_edges(file);
    errors.extend(edge_errors);
    let wires = wire::wire_types();
    for edge in &edges {
        let producer = file.stages.iter().find(|stage| stage.id == edge.producer).expect("edges name stages");
        let Some(output) = registry.kind(&producer.kind).and_then(|kind| kind.output()) else { continue };
        let error = |message: String| ConfigError {
            file: file.path.clone(),
            location: Some(edge.location),
            stage: Some(edge.consumer.clone()),
            message,
        };
        let Some(wire) = wires.get(&output.id) else {
            let mut names: Vec<&str> = wires.values().map(|wire| wire.events.name).collect();
            names.sort();
            errors.push(error(format!(
                "'{}' (part \"{}\") emits {} events, which cannot cross between parts; types that can: {}",
                producer.id,
                producer.part(),
                output.name,
                names.join(", ")
            )));
            continue;
        };
        if let Some(by) = &edge.partition_by
            && !wire.partition_keys.iter().any(|(key, _)| key == by)
        {
            let keys: Vec<&str> = wire.partition_keys.iter().map(|(key, _)| *key).collect();
            let expected =
                if keys.is_empty() { "none: leave it out to hash the event".into() } else { keys.join(", ") };
            errors.push(error(format!(
                "`partition_by = \"{by}\"` is not a key of {} events; keys: {expected}",
                output.name
            )));
        }
    }
    errors
}

/// Which way a cut edge runs from this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutDirection {
    /// This process publishes the producer's events.
    Out,
    /// This process pulls them for its stages.
    In,
}

/// Figures of one cut edge in this process.
#[derive(Debug, Default)]
pub struct CutStats {
    /// Events published (outbound).
    pub published: AtomicU64,
    /// Publishes acknowledged by the server (outbound) or messages acked by this process (inbound).
    pub acked: AtomicU64,
    /// Publishes retried after a failure (outbound).
    pub retries: AtomicU64,
    /// Messages received (inbound).
    pub received: AtomicU64,
    /// Messages received more than once (inbound), or redelivered by the edge's consumers (outbound).
    pub redelivered: AtomicU64,
    /// Messages waiting in the stream or delivered and unacked, over all partitions.
    pub pending: AtomicU64,
    /// Partitions pinned to this process (inbound).
    pub owned: AtomicU64,
    /// Messages that could not be read as events, acked and dropped (inbound).
    pub undecodable: AtomicU64,
}

/// The cut edges of a process, for the live view and the summary.
#[derive(Debug, Default, Clone)]
pub struct CutReport {
    edges: Vec<(String, CutDirection, Arc<CutStats>)>,
}

impl CutReport {
    fn add(&mut self, edge: &CutEdge, direction: CutDirection) -> Arc<CutStats> {
        let stats = Arc::new(CutStats::default());
        self.edges.push((edge.name(), direction, stats.clone()));
        stats
    }

    /// Every cut edge of this process: its name, which way it runs, its figures.
    pub fn edges(&self) -> impl Iterator<Item = (&str, CutDirection, &CutStats)> {
        self.edges.iter().map(|(name, direction, stats)| (name.as_str(), *direction, stats.as_ref()))
    }

    /// Whether the process has no cut edge.
    pub fn is_empty(&self) -> bool {
        self.edges.is_empty()
    }

    /// One line per edge: what moved and what waits.
    pub fn lines(&self) -> Vec<String> {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        self.edges
            .iter()
            .map(|(name, direction, stats)| match direction {
                CutDirection::Out => format!(
                    "cut {name:<18} out: published {} acked {} retries {} pending {} redelivered {}",
                    get(&stats.published),
                    get(&stats.acked),
                    get(&stats.retries),
                    get(&stats.pending),
                    get(&stats.redelivered)
                ),
                CutDirection::In => format!(
                    "cut {name:<18} in:  received {} acked {} redelivered {} pending {} partitions held {}",
                    get(&stats.received),
                    get(&stats.acked),
                    get(&stats.redelivered),
                    get(&stats.pending),
                    get(&stats.owned)
                ),
            })
            .collect()
    }

    /// The summary table of the cut edges.
    pub fn table(&self) -> Table {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed).to_string();
        let mut table = Table::new();
        table.set_header(vec![
            "cut edge",
            "way",
            "published",
            "received",
            "acked",
            "redelivered",
            "pending",
            "partitions held",
        ]);
        for (name, direction, stats) in &self.edges {
            let (way, published, received, pending, owned) = match direction {
                CutDirection::Out => {
                    ("out", get(&stats.published), "-".into(), get(&stats.pending), "-".into())
                }
                CutDirection::In => {
                    ("in", "-".into(), get(&stats.received), get(&stats.pending), get(&stats.owned))
                }
            };
            table.add_row(vec![
                name.clone(),
                way.into(),
                published,
                received,
                get(&stats.acked),
                get(&stats.redelivered),
                pending,
                owned,
            ]);
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn file(text: &str) -> PipelineFile {
        stageflow::config::parse_pipeline(Path::new("c.toml"), text, &|_| None).unwrap()
    }

    #[test]
    fn defaults_without_a_cluster_table() {
        let settings = ClusterSettings::of(&file("[pipeline]\nname = \"my tweets\"\n")).unwrap();
        assert_eq!(settings.stream, "stageflow_my_tweets");
        assert_eq!((settings.partitions, settings.replicas, settings.max_in_flight), (8, 1, 1000));
        assert_eq!(settings.nats, "nats://127.0.0.1:4222");
    }

    #[test]
    fn a_bad_cluster_table_names_line_and_key() {
        let text = "[pipeline]\nname = \"t\"\n[pipeline.cluster]\nnats = \"nats://h:1\"\npartitions = 0\nreplica = 3\nstream = \"a.b\"\n";
        let errors = ClusterSettings::of(&file(text)).unwrap_err();
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(
            text[0].starts_with("c.toml:5:1: [pipeline.cluster] `partitions`: must be a whole number from 1"),
            "{text:?}"
        );
        assert!(
            text[1].starts_with(
                "c.toml:6:1: [pipeline.cluster] `replica`: unknown key (did you mean `replicas`?)"
            ),
            "{text:?}"
        );
        assert!(text[2].contains("c.toml:7:1: [pipeline.cluster] `stream`: must be a name"), "{text:?}");
    }
}
