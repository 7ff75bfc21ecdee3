//! Building the stages of a cut: publishers for outbound edges, local
//! replicas of remote producers for inbound ones, on a JetStream stream.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream::Stream as JetStream};
use stageflow::config::{BuildContext, EventType, Registry, StageDecl, configure};
use stageflow::{DemandBounds, Pipeline, SubscribeOptions};

use super::plan::{Cut, CutEdge};
use super::publish::{NatsPublish, Outbound};
use super::subscribe::{Inbound, NatsSubscribe, Partition, pinned_consumer, rebalance};
use super::wire::{Wire, WireType, wire_types};
use super::{ClusterSettings, CutDirection, CutReport, CutStats};

/// How long a delivered message may stay unacked before the server delivers it
/// again: what a killed process left is redelivered to the new owner after
/// this, so with the 5 s pin timeout its partitions flow again within 10 s.
/// A live process keeps what it holds longer (a slow or stalled store) by
/// telling the server it is in progress (see [`super::subscribe`]).
pub const ACK_WAIT: Duration = Duration::from_secs(8);

/// Adds a cut edge's stages for one event type.
pub(crate) trait BuildCut: Send + Sync {
    /// A consumer publishing `producer`'s events.
    fn publisher(&self, pipeline: &mut Pipeline, id: &str, producer: &str, outbound: Arc<Outbound>);
    /// The local replica of a remote producer, fed by the edge's partitions.
    fn replica(
        &self,
        pipeline: &mut Pipeline,
        producer: &StageDecl,
        inbound: InboundSetup,
    ) -> Result<(), String>;
}

/// What an inbound edge needs to start pulling.
pub(crate) struct InboundSetup {
    pub(crate) client: async_nats::Client,
    pub(crate) stream: JetStream,
    pub(crate) partitions: Vec<Arc<Partition>>,
    pub(crate) max_demand: usize,
    pub(crate) stats: Arc<CutStats>,
}

struct Typed<T>(PhantomData<fn() -> T>);

impl<T: Wire> BuildCut for Typed<T> {
    fn publisher(&self, pipeline: &mut Pipeline, id: &str, producer: &str, outbound: Arc<Outbound>) {
        pipeline
            .consumer(id, move || NatsPublish::<T>::new(outbound.clone()))
            .subscribe_to(producer, SubscribeOptions::bounds(DemandBounds::default()));
    }

    fn replica(
        &self,
        pipeline: &mut Pipeline,
        producer: &StageDecl,
        setup: InboundSetup,
    ) -> Result<(), String> {
        let inbound = Arc::new(Inbound::<T>::start(
            setup.client,
            setup.stream,
            setup.partitions,
            setup.max_demand,
            setup.stats,
        ));
        let config = pipeline.producer(&producer.id, move || NatsSubscribe::new(inbound.clone()));
        let mut decl = producer.clone();
        decl.subscribe_to.clear();
        decl.workers = None;
        configure(&decl, config, &T::dispatchers(), None)
    }
}

/// The erased wire type of `T`.
pub(crate) fn wire_type<T: Wire>() -> WireType {
    WireType {
        events: EventType::of::<T>(),
        partition_keys: T::PARTITION_KEYS,
        build: Arc::new(Typed::<T>(PhantomData)),
    }
}

/// Connects to NATS (`url` may list several servers of a cluster, comma-separated);
/// when it cannot, says so once, naming the URL, and retries every 2 s.
pub async fn connect(url: &str) -> async_nats::Client {
    let servers: Vec<&str> = url.split(',').map(str::trim).filter(|server| !server.is_empty()).collect();
    let mut said = false;
    loop {
        let options = async_nats::ConnectOptions::new()
            .name("stageflow")
            .connection_timeout(Duration::from_secs(2))
            .max_reconnects(None);
        match options.connect(servers.as_slice()).await {
            Ok(client) => {
                if said {
                    tracing::info!("connected to NATS at {url}");
                }
                return client;
            }
            Err(error) => {
                if !said {
                    tracing::error!("cannot reach NATS at {url}: {error}; retrying every 2 s");
                    said = true;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// The stream every cut edge of the file publishes into: one subject per edge and partition.
/// A cluster that has just started may not have elected its JetStream
/// leader yet: creation is retried for 30 s before it counts as failed.
pub async fn ensure_stream(js: &jetstream::Context, settings: &ClusterSettings) -> Result<JetStream, String> {
    let config = jetstream::stream::Config {
        name: settings.stream.clone(),
        subjects: vec![format!("{}.>", settings.stream)],
        retention: jetstream::stream::RetentionPolicy::WorkQueue,
        storage: jetstream::stream::StorageType::File,
        num_replicas: settings.replicas,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match js.get_or_create_stream(config.clone()).await {
            Ok(stream) => return Ok(stream),
            Err(error) if tokio::time::Instant::now() >= deadline => {
                return Err(format!(
                    "cannot create the JetStream stream {} at {}: {error}",
                    settings.stream, settings.nats
                ));
            }
            Err(error) => {
                tracing::debug!("creating the stream {}: {error}; retrying", settings.stream);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The durable pull consumer of one partition of an edge.
async fn ensure_partition(
    stream: &JetStream,
    edge: &CutEdge,
    settings: &ClusterSettings,
    k: usize,
) -> Result<Partition, String> {
    let name = edge.durable(k);
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            &name,
            pinned_consumer(&name, edge.subject(&settings.stream, k), edge.max_demand),
        )
        .await
        .map_err(|error| format!("cannot create the JetStream consumer {name}: {error}"))?;
    Ok(Partition {
        consumer,
        name,
        pin: std::sync::Mutex::new(None),
        release: tokio::sync::Notify::new(),
        owned: std::sync::atomic::AtomicBool::new(false),
    })
}

/// A stream a stage creates when it is missing.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    /// The stream's name.
    pub name: String,
    /// The subjects it captures.
    pub subjects: Vec<String>,
    /// Its replicas.
    pub replicas: usize,
}

/// Creates `spec`'s stream unless it exists, retrying (and saying so once) until the server takes it.
pub async fn ensure_stream_named(js: &jetstream::Context, spec: &StreamSpec, url: &str) {
    let config = jetstream::stream::Config {
        name: spec.name.clone(),
        subjects: spec.subjects.clone(),
        storage: jetstream::stream::StorageType::File,
        num_replicas: spec.replicas,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    let mut said = false;
    while let Err(error) = js.get_or_create_stream(config.clone()).await {
        if !said {
            tracing::error!(
                "cannot create the JetStream stream {} at {url}: {error}; retrying every 2 s",
                spec.name
            );
            said = true;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Every 2 s, what waits in the stream for each outbound edge's consumers
/// (once the consuming part has created them), and what they redelivered.
async fn watch_outbound(stream: JetStream, edges: Vec<(Vec<String>, Arc<CutStats>)>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        for (durables, stats) in &edges {
            let (mut pending, mut redelivered) = (0u64, 0u64);
            for durable in durables {
                if let Ok(info) = stream.consumer_info(durable).await {
                    pending += info.num_pending + info.num_ack_pending as u64;
                    redelivered += info.num_redelivered as u64;
                }
            }
            stats.pending.store(pending, std::sync::atomic::Ordering::Relaxed);
            stats.redelivered.store(redelivered, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// A pipeline for the parts a process runs, with its cut edges on JetStream.
pub struct PartPipeline {
    /// The stages to start.
    pub pipeline: Pipeline,
    /// The cut edges: keep it for as long as the pipeline runs.
    pub cut: RunningCut,
}

/// The cut edges of a running part: their figures and the rebalancer, stopped when dropped.
pub struct RunningCut {
    /// Figures of each cut edge, for the live view and the summary.
    pub report: CutReport,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for RunningCut {
    fn drop(&mut self) {
        for task in self.background.drain(..) {
            task.abort();
        }
    }
}

/// Builds the stages of `cut` and, when edges cross the cut, their publishers
/// and replicas on the stream `settings` names.
pub async fn build_cut(
    registry: &Registry,
    cut: &Cut,
    settings: &ClusterSettings,
    context: &BuildContext,
    file_label: &str,
) -> Result<PartPipeline, String> {
    let mut pipeline = Pipeline::new();
    for stage in &cut.stages {
        let kind = registry.kind(&stage.kind).ok_or_else(|| format!("unknown kind {}", stage.kind))?;
        kind.build(stage, &mut pipeline, context)
            .map_err(|why| format!("{file_label}: stage '{}': {why}", stage.id))?;
    }
    let mut report = CutReport::default();
    if cut.outbound.is_empty() && cut.inbound.is_empty() {
        return Ok(PartPipeline { pipeline, cut: RunningCut { report, background: Vec::new() } });
    }
    let wires = wire_types();
    let wire_of = |producer: &StageDecl| -> Result<WireType, String> {
        let output = registry.kind(&producer.kind).and_then(|kind| kind.output());
        output.and_then(|output| wires.get(&output.id).cloned()).ok_or_else(|| {
            format!("{file_label}: the events of '{}' cannot cross between parts", producer.id)
        })
    };
    let client = connect(&settings.nats).await;
    let js = jetstream::new(client.clone());
    let stream = ensure_stream(&js, settings).await?;
    let run_id = format!("{:016x}", rand::random::<u64>());
    let mut outbound_edges = Vec::new();
    for edge in &cut.outbound {
        let producer =
            cut.stages.iter().find(|stage| stage.id == edge.producer).expect("outbound producers run here");
        let stats = report.add(edge, CutDirection::Out);
        let durables: Vec<String> = (0..settings.partitions).map(|k| edge.durable(k)).collect();
        outbound_edges.push((durables, stats.clone()));
        let outbound = Arc::new(Outbound {
            jetstream: tokio::sync::OnceCell::new_with(Some(js.clone())),
            connect: None,
            subject_prefix: format!("{}.{}.{}", settings.stream, edge.producer, edge.part),
            partitions: settings.partitions,
            partition_by: edge.partition_by.clone(),
            max_in_flight: settings.max_in_flight,
            run_id: run_id.clone(),
            stats,
        });
        wire_of(producer)?.build.publisher(
            &mut pipeline,
            &format!("{}>{}", edge.producer, edge.part),
            &edge.producer,
            outbound,
        );
    }
    let mut balanced = Vec::new();
    for (edge, producer) in &cut.inbound {
        let mut partitions = Vec::new();
        for k in 0..settings.partitions {
            partitions.push(Arc::new(ensure_partition(&stream, edge, settings, k).await?));
        }
        let stats = report.add(edge, CutDirection::In);
        balanced.push((partitions.clone(), stream.clone(), stats.clone()));
        let setup = InboundSetup {
            client: client.clone(),
            stream: stream.clone(),
            partitions,
            max_demand: edge.max_demand,
            stats,
        };
        wire_of(producer)?
            .build
            .replica(&mut pipeline, producer, setup)
            .map_err(|why| format!("{file_label}: stage '{}': {why}", producer.id))?;
    }
    let mut background = vec![tokio::spawn(watch_outbound(stream.clone(), outbound_edges))];
    if let Some((edge, _)) = cut.inbound.first() {
        let bucket = format!("{}_members", settings.stream);
        let members = match js.get_key_value(&bucket).await {
            Ok(store) => store,
            Err(_) => js
                .create_key_value(jetstream::kv::Config {
                    bucket: bucket.clone(),
                    history: 1,
                    max_age: Duration::from_secs(6),
                    num_replicas: settings.replicas,
                    ..Default::default()
                })
                .await
                .map_err(|error| format!("cannot create the JetStream key-value bucket {bucket}: {error}"))?,
        };
        let member = format!("{:016x}", rand::random::<u64>());
        background.push(tokio::spawn(rebalance(members, edge.part.clone(), member, balanced)));
    }
    Ok(PartPipeline { pipeline, cut: RunningCut { report, background } })
}
