//! The tweet pipeline under load: built from `pipelines/tweets.toml` with the
//! sink swapped, a sink throttled to a fixed rate, and the same work written
//! by hand with tokio channels (bounded: the engine's baseline; unbounded:
//! the baseline whose memory grows).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use stageflow::config::{BuildContext, Kind, Signature, StageDecl, kind};
use stageflow::{Consumer, Emitter, Events, Flow, Nothing, Pipeline, Producer, ProducerConsumer};
use stageflow_stages::analysis::sentiment::SharedLexicon;
use stageflow_stages::analysis::{
    Aggregator, Engagement, Hashtags, JoinStats, Lexicon, Logger, LoggerConfig, OutputTarget, Sentiment,
    TweetFlow, TweetScore, TweetsHub, WorkSleep,
};
use stageflow_stages::emulator::{EmulatorConfig, Rate};
use stageflow_stages::scored::ScoredTweet;
use stageflow_stages::sse::{SseEvent, SseReceiver, SseSourceConfig};
use stageflow_stages::storage::batcher::Batch;
use stageflow_stages::storage::documents::{DocumentForm, SplitBatch};
use stageflow_stages::storage::null::NullSink;
use stageflow_stages::storage::{
    EngagementFlush, FlushId, Inserted, Sink, SinkError, SinkMetrics, SinkOptions, SinkStage, build_sink,
};
use tokio::sync::mpsc;

/// The pipeline file the load suite runs.
pub fn tweets_toml() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/tweets.toml")
}

/// Where the pipeline ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SinkChoice {
    /// `null_sink`: counts and discards.
    Null,
    /// `sqlite_sink`: the embedded store.
    Sqlite,
    /// A sink that stores at most this many tweets per second.
    Throttled(f64),
}

/// The emulator of every tweet scenario: seed 42, `limit` events per stream, as fast as read, no kill messages.
pub fn emulator_config(limit: u64) -> EmulatorConfig {
    EmulatorConfig {
        rate: Rate::Max,
        seed: 42,
        limit: Some(limit),
        kill_ratio: 0.0,
        malformed_ratio: 0.0,
        close_after: None,
    }
}

/// A sink that takes `tweets_per_s` tweets per second: it sleeps for each batch's share of a second.
#[derive(Debug, Clone, Copy)]
pub struct ThrottledSink {
    tweets_per_s: f64,
}

impl ThrottledSink {
    /// A sink storing `tweets_per_s` tweets per second.
    pub fn new(tweets_per_s: f64) -> Self {
        ThrottledSink { tweets_per_s }
    }
}

impl Sink for ThrottledSink {
    const DOCUMENTS: DocumentForm = DocumentForm::Keys;

    async fn insert(&mut self, batch: &SplitBatch, id: &FlushId) -> Result<Inserted, SinkError> {
        tokio::time::sleep(Duration::from_secs_f64(batch.tweets.len() as f64 / self.tweets_per_s)).await;
        NullSink.insert(batch, id).await
    }

    async fn add_engagements(&mut self, flush: &EngagementFlush) -> Result<(), SinkError> {
        NullSink.add_engagements(flush).await
    }
}

/// stores nothing, at a fixed number of tweets per second (load benchmark only)
#[kind("throttled_sink", Batch -> Nothing)]
struct ThrottledSinkKind {
    /// tweets stored per second
    tweets_per_s: f64,
}

impl Kind for ThrottledSinkKind {
    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, context: &BuildContext) -> Result<(), String> {
        let sink = ThrottledSink { tweets_per_s: self.tweets_per_s };
        build_sink(stage, pipeline, context, Self::NAME, SinkOptions::default(), move || sink)
    }
}

/// A built tweet pipeline and the counters of its sink.
pub struct TweetPipeline {
    /// Ready to start.
    pub pipeline: Pipeline,
    /// The sink's counters (`tweets_inserted` is what was stored).
    pub sink: Arc<SinkMetrics>,
}

/// `pipelines/tweets.toml` reading from `emulator_url`, logger sleep 0 and
/// output none, the monitoring-only `statistics` stage left out (it never
/// ends), and `sink` as the store; named `name`, writing under `data_dir`.
pub fn tweet_pipeline(
    name: &str,
    emulator_url: &str,
    data_dir: &Path,
    sink: SinkChoice,
) -> Result<TweetPipeline, String> {
    let mut registry = stageflow_stages::registry();
    registry.add::<ThrottledSinkKind>();
    let vars = HashMap::from([(
        stageflow_stages::pipelines::EMULATOR_URL.to_string(),
        emulator_url.trim_end_matches('/').to_string(),
    )]);
    let overrides = ["logger.output=\"none\"".to_string(), "logger.sleep_mean_ms=0".to_string()];
    let mut file = stageflow_stages::pipelines::load(&registry, &tweets_toml(), &overrides, &vars)?;
    file.name = name.to_string();
    file.stages.retain(|stage| stage.kind != "statistics");
    let store =
        file.stages.iter_mut().find(|stage| stage.id == "store").ok_or("tweets.toml has no 'store' stage")?;
    store.kind = match sink {
        SinkChoice::Null => "null_sink",
        SinkChoice::Sqlite => "sqlite_sink",
        SinkChoice::Throttled(_) => "throttled_sink",
    }
    .to_string();
    store.settings.clear();
    if let SinkChoice::Throttled(tweets_per_s) = sink {
        store.set("tweets_per_s", toml::Value::Float(tweets_per_s));
    }
    registry.check(&file).map_err(|errors| errors.to_string())?;
    let context = BuildContext::for_file(&file, data_dir.to_path_buf());
    let pipeline = registry.build(&file, &context).map_err(|errors| errors.to_string())?;
    let sink = stageflow_stages::storage::published_sinks(&context.resources)
        .into_iter()
        .find(|published| published.stage == "store")
        .ok_or("the store published no metrics")?
        .metrics;
    Ok(TweetPipeline { pipeline, sink })
}

/// Most events a baseline task takes from its channel at once.
const BASELINE_BATCH: usize = 400;

/// Capacity of a channel that never fills: the memory baseline's "unbounded".
pub const UNBOUNDED: usize = tokio::sync::Semaphore::MAX_PERMITS;

/// Receives one event, then whatever else is already queued, up to [`BASELINE_BATCH`].
async fn recv_batch<T>(receiver: &mut mpsc::Receiver<T>) -> Option<Vec<T>> {
    let first = receiver.recv().await?;
    let mut batch = vec![first];
    while batch.len() < BASELINE_BATCH {
        match receiver.try_recv() {
            Ok(event) => batch.push(event),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// Sends every event, waiting for room; a closed channel means the run is ending.
async fn send_all<T>(sender: &mpsc::Sender<T>, events: Vec<T>) {
    for event in events {
        if sender.send(event).await.is_err() {
            return;
        }
    }
}

/// Runs one stream's SSE receiver until the emulator says the stream is over, sending every event on.
async fn read_stream(url: String, out: mpsc::Sender<SseEvent>) -> Result<(), String> {
    let mut receiver = SseReceiver::new(&SseSourceConfig::new(&url)?);
    loop {
        let mut emitter = Emitter::with_capacity(BASELINE_BATCH);
        let flow = receiver.produce(BASELINE_BATCH, &mut emitter).await;
        send_all(&out, emitter.take()).await;
        if flow == Flow::Done {
            return Ok(());
        }
    }
}

/// Runs a producer-consumer on every batch from `input`, sending what it emits to every output.
async fn run_stage<P>(mut stage: P, mut input: mpsc::Receiver<P::In>, outputs: Vec<mpsc::Sender<P::Out>>)
where
    P: ProducerConsumer,
    P::Out: Clone,
{
    while let Some(batch) = recv_batch(&mut input).await {
        let mut emitter = Emitter::with_capacity(batch.len());
        stage.handle_events(&mut Events::new(batch), &mut emitter).await;
        let events = emitter.take();
        if let Some((last, others)) = outputs.split_last() {
            for output in others {
                send_all(output, events.clone()).await;
            }
            send_all(last, events).await;
        }
    }
}

/// Runs a consumer on every batch from `input`, and its tick on its interval.
async fn run_consumer<C: Consumer>(mut stage: C, mut input: mpsc::Receiver<C::In>) {
    let mut ticker = stage.tick_interval().map(|period| {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker
    });
    loop {
        let batch = match ticker.as_mut() {
            Some(ticker) => tokio::select! {
                batch = recv_batch(&mut input) => batch,
                _ = ticker.tick() => {
                    stage.handle_tick().await;
                    continue;
                }
            },
            None => recv_batch(&mut input).await,
        };
        let Some(batch) = batch else { break };
        stage.handle_events(&mut Events::new(batch)).await;
    }
    stage.flush().await;
}

/// Splits the hub's events as the broadcast selectors of tweets.toml do:
/// everything to the logger, tweets to sentiment, engagement and hashtags.
async fn fan_out(
    mut input: mpsc::Receiver<TweetFlow>,
    logger: mpsc::Sender<TweetFlow>,
    tweets: Vec<mpsc::Sender<TweetFlow>>,
) {
    while let Some(batch) = recv_batch(&mut input).await {
        for event in batch {
            if matches!(event, TweetFlow::Tweet(_)) {
                for output in &tweets {
                    let _ = output.send(event.clone()).await;
                }
            }
            let _ = logger.send(event).await;
        }
    }
}

/// Groups scored tweets into batches of `batch_size` (the last one may be smaller).
async fn batch_up(mut input: mpsc::Receiver<ScoredTweet>, output: mpsc::Sender<Batch>, batch_size: usize) {
    let mut held = Vec::with_capacity(batch_size);
    while let Some(events) = recv_batch(&mut input).await {
        for tweet in events {
            held.push(tweet);
            if held.len() == batch_size {
                let full = std::mem::replace(&mut held, Vec::with_capacity(batch_size));
                let _ = output.send(Batch::new(full)).await;
            }
        }
    }
    if !held.is_empty() {
        let _ = output.send(Batch::new(held)).await;
    }
}

/// Writes every batch through `sink`, counting into `metrics`.
async fn store<S: Sink>(mut input: mpsc::Receiver<Batch>, sink: S, metrics: Arc<SinkMetrics>) {
    let mut stage = SinkStage::new("store", sink, SinkOptions::default(), metrics);
    while let Some(batch) = input.recv().await {
        stage.write_batch(batch.tweets()).await;
    }
    stage.flush_engagements().await;
}

/// The tweet pipeline written by hand: one task per stage, tokio channels of
/// `capacity` events (batches, for the sink's) between them, the same stage
/// code doing the same work (SSE receivers, tweets hub, logger, sentiment,
/// engagement, hashtags, aggregator, batches of 200, `sink`). With
/// [`UNBOUNDED`] nothing slows the readers down, so whatever the sink has not
/// stored yet waits in memory; with a small capacity it is the baseline a
/// dataflow engine is measured against.
pub async fn channel_baseline<S: Sink>(
    emulator_url: &str,
    data_dir: &Path,
    capacity: usize,
    sink: S,
    metrics: Arc<SinkMetrics>,
) -> Result<(), String> {
    let base = emulator_url.trim_end_matches('/');
    let (sse_tx, sse_rx) = mpsc::channel::<SseEvent>(capacity);
    let (flow_tx, flow_rx) = mpsc::channel::<TweetFlow>(capacity);
    let (logger_tx, logger_rx) = mpsc::channel::<TweetFlow>(capacity);
    let (sentiment_tx, sentiment_rx) = mpsc::channel::<TweetFlow>(capacity);
    let (engagement_tx, engagement_rx) = mpsc::channel::<TweetFlow>(capacity);
    let (hashtags_tx, hashtags_rx) = mpsc::channel::<TweetFlow>(capacity);
    let (score_tx, score_rx) = mpsc::channel::<TweetScore>(capacity);
    let (scored_tx, scored_rx) = mpsc::channel::<ScoredTweet>(capacity);
    let (batch_tx, batch_rx) = mpsc::channel::<Batch>(capacity.div_ceil(BATCH_SIZE));

    let mut tasks = tokio::task::JoinSet::new();
    let readers: Vec<_> = (1..=2)
        .map(|stream| tokio::spawn(read_stream(format!("{base}/tweets/{stream}"), sse_tx.clone())))
        .collect();
    drop(sse_tx);
    tasks.spawn(run_stage(TweetsHub::new(true), sse_rx, vec![flow_tx]));
    tasks.spawn(fan_out(flow_rx, logger_tx, vec![sentiment_tx, engagement_tx, hashtags_tx]));
    let logger = Logger::new(LoggerConfig {
        output: OutputTarget::Discard,
        sleep: WorkSleep::none(),
        ignore_kill_messages: true,
        hub: None,
    });
    tasks.spawn(run_consumer(logger, logger_rx));
    let lexicon = SharedLexicon::ready(Lexicon::vader());
    tasks.spawn(run_stage(Sentiment::new(lexicon), sentiment_rx, vec![score_tx.clone()]));
    tasks.spawn(run_stage(Engagement, engagement_rx, vec![score_tx]));
    let hashtags =
        Hashtags::new("baseline", data_dir.join("hashtags.json"), Duration::from_secs(3), 25, true);
    tasks.spawn(run_consumer(hashtags, hashtags_rx));
    let aggregator = Aggregator::new(Duration::from_secs(30), 100_000, Arc::new(JoinStats::default()));
    tasks.spawn(run_stage(aggregator, score_rx, vec![scored_tx]));
    tasks.spawn(batch_up(scored_rx, batch_tx, BATCH_SIZE));
    tasks.spawn(store(batch_rx, sink, metrics));
    for reader in readers {
        reader.await.map_err(|error| error.to_string())??;
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|error| error.to_string())?;
    }
    Ok(())
}

/// Tweets per batch, as tweets.toml's batcher.
const BATCH_SIZE: usize = 200;
