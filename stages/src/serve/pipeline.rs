//! The one tweet pipeline `stageflow serve` shares between its sessions:
//! built from a pipeline file with the logger's lines routed into a
//! broadcast stage (`log_lines`) that every watching session subscribes to,
//! started by the first `twitter`, stopped (drained) when the last watcher leaves.
//!
//! ```text
//! sse ─▶ tweets ─┬─▶ logger ──(bounded channel)──▶ log_lines (push, broadcast) ─┬─▶ session 1
//!                ├─▶ sentiment / engagement ─▶ aggregator ─▶ batcher ─▶ store    ├─▶ session 2
//!                └─▶ hashtags                                                   └─▶ ...
//! ```

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stageflow::config::{
    BuildContext, DispatcherDecl, Kind, Location, PipelineFile, Registry, Resources, Setting, StageDecl,
    SubscriptionDecl,
};
use stageflow::{
    BroadcastDispatcher, BufferKeep, CancelMode, DemandBounds, Emitter, Flow, MetricsReader, PipelineError,
    PipelineHandle, Producer, ShutdownTrigger, StageSnapshot, SubscribeOptions, Subscription,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::ServeConfig;
use super::protocol::TWEET_PREFIX;
use crate::analysis::logger::{LoggerKind, LoggerOutput};
use crate::analysis::{OutputTarget, StatsHub};
use crate::cli::EMULATOR_URL;
use crate::sync::lock;

/// The id of the broadcast stage of logger lines that sessions subscribe to.
pub const LINES_STAGE: &str = "log_lines";

/// Logger lines waiting for the `log_lines` stage to take them.
const LOGGER_CHANNEL: usize = 1024;
/// Lines `log_lines` keeps when no session has credits (the newest win; drops are counted).
const LINES_BUFFER: usize = 1000;
/// Most lines one `produce` call of `log_lines` takes from the channel.
const LINES_BATCH: usize = 256;
/// Credits each session's subscription grants `log_lines` (its reader drains at once).
const SESSION_DEMAND: usize = 256;
/// How much history `stats` computes rates over.
const RATE_WINDOW: Duration = Duration::from_secs(5);

// ---- log_lines: a push source over the logger's channel ---------------------------

/// Takes the logger's lines as they come and emits them as `tweet: <text>`.
/// Dropping it drops the channel's receiver, so a logger still draining after
/// shutdown discards its lines instead of waiting for room.
struct LineSource {
    lines: Option<mpsc::Receiver<String>>,
}

impl Producer for LineSource {
    type Out = String;
    const PUSH: bool = true;

    async fn produce(&mut self, _demand: usize, out: &mut Emitter<String>) -> Flow {
        // A restarted source finds the receiver gone: it ends, and so do the sessions' subscriptions.
        let Some(lines) = self.lines.as_mut() else { return Flow::Done };
        let Some(line) = lines.recv().await else { return Flow::Done };
        out.emit(format!("{TWEET_PREFIX}{line}"));
        while out.len() < LINES_BATCH {
            match lines.try_recv() {
                Ok(line) => out.emit(format!("{TWEET_PREFIX}{line}")),
                Err(_) => break,
            }
        }
        Flow::Continue
    }
}

// ---- the pipeline file, adapted for serving ---------------------------------------

/// The pipeline file `serve` runs: read, `${EMULATOR_URL}` resolved, `--set`,
/// `--streams` and `--broker` applied, checked (nothing built yet).
pub(crate) fn prepare_file(config: &ServeConfig, registry: &Registry) -> Result<PipelineFile, String> {
    let base = config.sse_url.trim_end_matches('/');
    let emulator = base.strip_suffix("/tweets").unwrap_or(base);
    let vars = HashMap::from([(EMULATOR_URL.to_string(), emulator.to_string())]);
    let mut file = crate::cli::load(registry, &config.pipeline_file, &config.overrides, &vars)?;
    if let Some(count) = config.streams {
        set_streams(&mut file, base, count)?;
    }
    if let Some(addr) = &config.broker {
        add_broker(&mut file, addr)?;
    }
    let loggers = file.stages.iter().filter(|stage| stage.kind == "logger").count();
    if loggers == 0 {
        return Err(format!(
            "{}: no stage of kind \"logger\": serve shows the logger's lines",
            config.pipeline_file.display()
        ));
    }
    if file.stages.iter().any(|stage| stage.id == LINES_STAGE) {
        return Err(format!(
            "{}: the stage id '{LINES_STAGE}' is taken by serve; rename that stage",
            config.pipeline_file.display()
        ));
    }
    registry.check(&file).map_err(|errors| errors.to_string())?;
    Ok(file)
}

/// Replaces the file's `sse` stages by `count` streams `stream1`… reading
/// `<base>/1`…, each like the first `sse` stage, and points their subscribers at all of them.
pub(crate) fn set_streams(file: &mut PipelineFile, base: &str, count: usize) -> Result<(), String> {
    if !(1..=16).contains(&count) {
        return Err(format!("--streams must be from 1 to 16 (the emulator serves 16), got {count}"));
    }
    let first =
        file.stages.iter().position(|stage| stage.kind == "sse").ok_or_else(|| {
            format!("{}: --streams needs a stage of kind \"sse\" to copy", file.path.display())
        })?;
    let template = file.stages[first].clone();
    let old: HashSet<String> =
        file.stages.iter().filter(|stage| stage.kind == "sse").map(|stage| stage.id.clone()).collect();
    file.stages.retain(|stage| stage.kind != "sse");
    let ids: Vec<String> = (1..=count).map(|n| format!("stream{n}")).collect();
    if let Some(taken) = file.stages.iter().find(|stage| ids.contains(&stage.id)) {
        return Err(format!("--streams names its sources stream1…; '{}' is another stage's id", taken.id));
    }
    let streams = ids.iter().enumerate().map(|(index, id)| {
        let mut stage = template.clone();
        stage.id = id.clone();
        stage.set("url", toml::Value::String(format!("{base}/{}", index + 1)));
        stage
    });
    let at = first.min(file.stages.len());
    file.stages.splice(at..at, streams);
    for stage in &mut file.stages {
        let Some(model) = stage.subscribe_to.iter().find(|s| old.contains(&s.producer)).cloned() else {
            continue;
        };
        stage.subscribe_to.retain(|s| !old.contains(&s.producer));
        stage
            .subscribe_to
            .extend(ids.iter().map(|id| SubscriptionDecl { producer: id.clone(), ..model.clone() }));
    }
    Ok(())
}

/// Adds `broker_tweets` (fed by the aggregator, which becomes a broadcast) and
/// `broker_stats` (fed by the statistics stage), both publishing to `addr`.
pub(crate) fn add_broker(file: &mut PipelineFile, addr: &str) -> Result<(), String> {
    let path = file.path.display().to_string();
    let setting = |key: &str, value: &str| Setting {
        key: key.into(),
        value: toml::Value::String(value.into()),
        location: Location::default(),
    };
    let sink = |id: &str, kind: &str, producer: &str| StageDecl {
        id: id.into(),
        kind: kind.into(),
        location: Location::default(),
        kind_location: Location::default(),
        settings: vec![setting("addr", addr)],
        subscribe_to: vec![SubscriptionDecl {
            producer: producer.into(),
            bounds: DemandBounds::default(),
            partition: None,
            selector: None,
            cancel: CancelMode::default(),
            partition_by: None,
            location: Location::default(),
        }],
        dispatcher: None,
        buffer_size: None,
        buffer_keep: None,
        workers: None,
        part: None,
        dead_letter: None,
        max_attempts: None,
    };
    let aggregator =
        file.stages.iter_mut().find(|stage| stage.kind == "aggregator").ok_or_else(|| {
            format!("{path}: --broker needs a stage of kind \"aggregator\" to publish from")
        })?;
    match aggregator.dispatcher {
        Some((DispatcherDecl::Partition { .. }, _)) => {
            return Err(format!("{path}: --broker needs the aggregator's dispatcher to be broadcast"));
        }
        _ => aggregator.dispatcher = Some((DispatcherDecl::Broadcast, Location::default())),
    }
    let aggregator = aggregator.id.clone();
    file.stages.push(sink("broker_tweets", "broker_tweets", &aggregator));
    if let Some(statistics) = file.stages.iter().find(|stage| stage.kind == "statistics") {
        let statistics = statistics.id.clone();
        file.stages.push(sink("broker_stats", "broker_stats", &statistics));
    }
    Ok(())
}

/// Builds and starts the file's pipeline with the logger's lines going to `log_lines`.
fn start_pipeline(config: &ServeConfig) -> Result<(PipelineHandle, PipelineFile, Resources), String> {
    let (sender, receiver) = mpsc::channel::<String>(LOGGER_CHANNEL);
    let registry = crate::registry();
    let file = prepare_file(config, &registry)?;
    std::fs::create_dir_all(&config.data_dir).map_err(|error| {
        format!("cannot create the data directory {}: {error}", config.data_dir.display())
    })?;
    let context = BuildContext::for_file(&file, config.data_dir.clone());
    context.resources.insert(LoggerOutput(OutputTarget::Channel(sender)));
    let mut pipeline = registry.build(&file, &context).map_err(|errors| errors.to_string())?;
    // The context holds a sender too: only the loggers' copies may keep the channel open.
    context.resources.remove::<LoggerOutput>();
    pipeline.drain_timeout(config.drain_timeout);
    let slot = Arc::new(Mutex::new(Some(receiver)));
    pipeline
        .producer(LINES_STAGE, move || LineSource {
            lines: slot.lock().ok().and_then(|mut slot| slot.take()),
        })
        .dispatcher(BroadcastDispatcher::new())
        .buffer(LINES_BUFFER, BufferKeep::Last);
    let handle = pipeline.start().map_err(|error| format!("{}: {error}", file.path.display()))?;
    if let Some(hub) = context.resources.get::<StatsHub>() {
        hub.attach_metrics(handle.metrics_reader());
    }
    Ok((handle, file, context.resources))
}

// ---- the hub: one shared pipeline, many watchers ----------------------------------

/// What sessions ask of the task that owns the running pipeline.
enum Request {
    Subscribe(oneshot::Sender<Result<Subscription<String>, PipelineError>>),
}

/// The running pipeline's numbers at one moment.
#[derive(Clone)]
struct Sample {
    at: Instant,
    stages: Vec<StageSnapshot>,
    stored_tweets: u64,
}

/// Metrics of the running pipeline taken once a second, for rates.
type Samples = Arc<Mutex<VecDeque<Sample>>>;

/// The pipeline while it runs (and while it drains after its last watcher left).
struct Running {
    generation: u64,
    name: String,
    kinds: BTreeMap<String, String>,
    started: Instant,
    /// `None` once the last watcher left: the owner then drains the pipeline.
    requests: Option<mpsc::Sender<Request>>,
    trigger: ShutdownTrigger,
    reader: MetricsReader,
    samples: Samples,
    /// What its stages share: its statistics hub and sinks.
    resources: Resources,
    watchers: usize,
    owner: JoinHandle<()>,
}

impl Running {
    fn accepting(&self) -> bool {
        self.requests.is_some() && !self.owner.is_finished()
    }
}

/// A session's place among the watchers of one run of the pipeline.
pub(crate) struct Watch {
    /// Which run of the pipeline (a later run ignores an earlier run's `unwatch`).
    pub generation: u64,
    /// The session's subscription to `log_lines`.
    pub subscription: Subscription<String>,
    /// Whether this `twitter` started the pipeline.
    pub started: bool,
    /// Watchers now, this one included.
    pub watchers: usize,
    /// The pipeline's name.
    pub name: String,
}

/// Counters the status reads without locking the hub.
#[derive(Default)]
struct Counters {
    stages_running: AtomicUsize,
    pipelines_started: AtomicU64,
    watchers: AtomicUsize,
}

/// Starts, shares and stops the pipeline.
pub(crate) struct Hub {
    config: Arc<ServeConfig>,
    /// What `--http` shows: the pipeline while it runs.
    observed: crate::http::Observed,
    state: tokio::sync::Mutex<Option<Running>>,
    counters: Arc<Counters>,
}

impl Hub {
    pub(crate) fn new(config: Arc<ServeConfig>, observed: crate::http::Observed) -> Hub {
        Hub { config, observed, state: tokio::sync::Mutex::new(None), counters: Arc::default() }
    }

    /// Adds a watcher: starts the pipeline if none runs (after the previous
    /// one finished draining), then subscribes to its lines.
    pub(crate) async fn watch(&self) -> Result<Watch, String> {
        let mut state = self.state.lock().await;
        if state.as_ref().is_some_and(|running| !running.accepting()) {
            let previous = state.take().expect("checked");
            previous.trigger.shutdown();
            drop(previous.requests);
            let _ = previous.owner.await;
        }
        let started = state.is_none();
        if started {
            *state = Some(self.start()?);
        }
        let running = state.as_mut().expect("just started");
        let (reply, answer) = oneshot::channel();
        let gone = || format!("pipeline '{}' stopped; try twitter again", running.name);
        let requests = running.requests.as_ref().ok_or_else(gone)?;
        requests.send(Request::Subscribe(reply)).await.map_err(|_| gone())?;
        let subscription = answer
            .await
            .map_err(|_| gone())?
            .map_err(|error| format!("cannot watch the pipeline: {error}"))?;
        running.watchers += 1;
        self.counters.watchers.store(running.watchers, Ordering::Relaxed);
        Ok(Watch {
            generation: running.generation,
            subscription,
            started,
            watchers: running.watchers,
            name: running.name.clone(),
        })
    }

    /// Removes a watcher of run `generation`; the last one's leaving drains and stops the pipeline.
    pub(crate) async fn unwatch(&self, generation: u64) {
        let mut state = self.state.lock().await;
        let Some(running) = state.as_mut().filter(|running| running.generation == generation) else { return };
        running.watchers = running.watchers.saturating_sub(1);
        self.counters.watchers.store(running.watchers, Ordering::Relaxed);
        if running.watchers == 0 && running.requests.is_some() {
            tracing::info!(pipeline = %running.name, "the last watcher left: draining the pipeline");
            running.requests = None;
            running.trigger.shutdown();
        }
    }

    /// Stops the pipeline, if one runs, and waits until it has drained.
    pub(crate) async fn shutdown(&self) {
        let mut state = self.state.lock().await;
        if let Some(running) = state.take() {
            running.trigger.shutdown();
            drop(running.requests);
            let _ = running.owner.await;
        }
        self.counters.watchers.store(0, Ordering::Relaxed);
    }

    fn start(&self) -> Result<Running, String> {
        let (handle, file, resources) = start_pipeline(&self.config)?;
        let generation = self.counters.pipelines_started.fetch_add(1, Ordering::Relaxed) + 1;
        let (requests, inbox) = mpsc::channel(16);
        let reader = handle.metrics_reader();
        let trigger = handle.shutdown_trigger();
        let samples: Samples = Arc::default();
        let stage_count = reader.snapshot().len();
        self.counters.stages_running.fetch_add(stage_count, Ordering::Relaxed);
        let sampler = tokio::spawn(sample(reader.clone(), resources.clone(), samples.clone()));
        let counters = self.counters.clone();
        let name = file.name.clone();
        let mut view = crate::http::PipelineView::new(&file, &crate::registry(), &handle, &resources);
        let lines = crate::http::api::GraphStage {
            id: LINES_STAGE.to_string(),
            kind: "log lines".to_string(),
            role: "producer",
            dispatcher: Some("broadcast".to_string()),
            workers: None,
        };
        let loggers: Vec<&str> = file
            .stages
            .iter()
            .filter(|s| s.kind == <LoggerKind as Kind>::NAME)
            .map(|s| s.id.as_str())
            .collect();
        view.graph.add_stage(lines, &loggers);
        self.observed.show(view);
        let observed = self.observed.clone();
        let owner = tokio::spawn(async move {
            own(handle, inbox, &name).await;
            observed.hide();
            sampler.abort();
            counters.stages_running.fetch_sub(stage_count, Ordering::Relaxed);
        });
        tracing::info!(pipeline = %file.name, stages = stage_count, "pipeline started for serve");
        Ok(Running {
            generation,
            name: file.name.clone(),
            kinds: file.stages.iter().map(|stage| (stage.id.clone(), stage.kind.clone())).collect(),
            started: Instant::now(),
            requests: Some(requests),
            trigger,
            reader,
            samples,
            resources,
            watchers: 0,
            owner,
        })
    }

    /// Stage tasks of pipelines that have not ended (0 when idle).
    pub(crate) fn stages_running(&self) -> usize {
        self.counters.stages_running.load(Ordering::Relaxed)
    }

    /// Sessions watching the current pipeline.
    pub(crate) fn watchers(&self) -> usize {
        self.counters.watchers.load(Ordering::Relaxed)
    }

    /// How many times a pipeline was started.
    pub(crate) fn pipelines_started(&self) -> u64 {
        self.counters.pipelines_started.load(Ordering::Relaxed)
    }

    /// The `stats` reply: a first line, then [`STATS_LINES`] lines `stats: ...`.
    pub(crate) async fn stats(&self, skipped_by_sessions: u64) -> String {
        let state = self.state.lock().await;
        match state.as_ref().filter(|running| running.accepting()) {
            None => "ok no pipeline is running; twitter starts it".to_string(),
            Some(running) => stats_text(running, skipped_by_sessions),
        }
    }
}

/// Lines `stats: ...` after the first line of a `stats` reply for a running pipeline.
pub const STATS_LINES: usize = 6;

/// Serves subscriptions while the pipeline runs; once the request channel
/// closes, drains it. Ends when every stage has ended.
async fn own(mut handle: PipelineHandle, mut requests: mpsc::Receiver<Request>, name: &str) {
    let mut open = true;
    // `wait` is cancel-safe enough here: stage results are kept by the
    // handle's JoinSet and failures in `handle.failures()`; after the
    // requests close nothing interrupts it, so its drain deadline holds.
    let outcome = loop {
        tokio::select! {
            biased;
            request = requests.recv(), if open => match request {
                Some(Request::Subscribe(reply)) => {
                    let options = SubscribeOptions::bounds(
                        DemandBounds::with_max(SESSION_DEMAND).expect("valid bounds"),
                    );
                    let _ = reply.send(handle.subscribe::<String>(LINES_STAGE, options).await);
                }
                None => {
                    open = false;
                    handle.shutdown();
                }
            },
            outcome = handle.wait() => break outcome,
        }
    };
    match (outcome, handle.failures().first()) {
        (Err(error), _) => tracing::warn!(pipeline = %name, "pipeline ended: {error}"),
        (Ok(_), Some(failure)) => tracing::warn!(pipeline = %name, "pipeline ended: {failure}"),
        (Ok(_), None) => tracing::info!(pipeline = %name, "pipeline drained and stopped"),
    }
}

/// The numbers of the pipeline now (`resources` from its build context).
fn take_sample(reader: &MetricsReader, resources: &Resources) -> Sample {
    let stored_tweets = crate::storage::published_sinks(resources)
        .iter()
        .map(|sink| sink.metrics.counters().tweets_inserted)
        .sum();
    Sample { at: Instant::now(), stages: reader.snapshot(), stored_tweets }
}

/// Keeps the last few seconds of numbers, one sample a second.
async fn sample(reader: MetricsReader, resources: Resources, samples: Samples) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        let sample = take_sample(&reader, &resources);
        let now = sample.at;
        let mut samples = lock(&samples);
        samples.push_back(sample);
        while samples.front().is_some_and(|old| now.duration_since(old.at) > RATE_WINDOW) {
            samples.pop_front();
        }
    }
}

fn stats_text(running: &Running, skipped_by_sessions: u64) -> String {
    let now = take_sample(&running.reader, &running.resources);
    let kind_of = |stage: &str| running.kinds.get(stage).map(String::as_str).unwrap_or("");
    let ids_of = |kind: &str| -> Vec<&str> {
        running.kinds.iter().filter(|(_, k)| k.as_str() == kind).map(|(id, _)| id.as_str()).collect()
    };
    let total = |stages: &[StageSnapshot], ids: &[&str], pick: fn(&StageSnapshot) -> u64| -> u64 {
        stages.iter().filter(|stage| ids.contains(&stage.stage.as_str())).map(pick).sum()
    };
    let sources = ids_of("sse");
    let loggers = ids_of("logger");
    let sinks: Vec<&str> = running
        .kinds
        .iter()
        .filter(|(_, kind)| kind.ends_with("_sink") || kind.starts_with("broker_"))
        .map(|(id, _)| id.as_str())
        .collect();
    let received = |sample: &Sample| total(&sample.stages, &sources, |s| s.events_out);
    let logged = |sample: &Sample| total(&sample.stages, &loggers, |s| s.events_in);
    let stored = |sample: &Sample| sample.stored_tweets;
    let oldest = running.samples.lock().ok().and_then(|samples| samples.front().cloned());
    let rates = match oldest {
        Some(before) if before.at.elapsed() >= Duration::from_millis(500) => {
            let seconds = now.at.duration_since(before.at).as_secs_f64().max(1e-3);
            let rate = |f: &dyn Fn(&Sample) -> u64| f(&now).saturating_sub(f(&before)) as f64 / seconds;
            format!(
                "stats: events/s  received {:.1}, logged {:.1}, stored {:.1} tweets/s (last {seconds:.1} s); totals received {}, logged {}",
                rate(&received),
                rate(&logged),
                rate(&stored),
                received(&now),
                logged(&now)
            )
        }
        _ => format!(
            "stats: events/s  measuring (ask again in a second); totals received {}, logged {}",
            received(&now),
            logged(&now)
        ),
    };
    let pools: Vec<String> = now
        .stages
        .iter()
        .filter(|stage| {
            matches!(kind_of(&stage.stage), "logger" | "sentiment" | "engagement") || stage.workers > 1
        })
        .map(|stage| format!("{} {}", stage.stage, stage.workers))
        .collect();
    let percentiles: Vec<String> = now
        .stages
        .iter()
        .filter(|stage| loggers.contains(&stage.stage.as_str()) || sinks.contains(&stage.stage.as_str()))
        .filter(|stage| stage.processing.count > 0)
        .map(|stage| {
            let p = stage.processing;
            format!(
                "{} {:.1}/{:.1}/{:.1}",
                stage.stage,
                p.p75_us / 1000.0,
                p.p85_us / 1000.0,
                p.p95_us / 1000.0
            )
        })
        .collect();
    let frame = running.resources.get::<StatsHub>().and_then(|hub| hub.subscribe().borrow().clone());
    let inserts = match &frame {
        Some(frame) => format!(
            "; last frame #{}: logger {}, tweets insert {}, users insert {}",
            frame.sequence, frame.logger, frame.tweets_insert, frame.users_insert
        ),
        None => String::new(),
    };
    let crashes: u64 = now.stages.iter().map(|stage| stage.restarts).sum();
    let lost: u64 = now.stages.iter().map(|stage| stage.lost).sum();
    let dropped: Vec<String> = now
        .stages
        .iter()
        .filter(|stage| stage.dropped > 0)
        .map(|stage| format!("{} {}", stage.stage, stage.dropped))
        .collect();
    let sink_counts = crate::storage::published_sinks(&running.resources);
    let (tweets, users, batches) = sink_counts.iter().fold((0, 0, 0), |(t, u, b), sink| {
        let counters = sink.metrics.counters();
        (t + counters.tweets_inserted, u + counters.users_inserted, b + counters.batches)
    });
    let or_none = |items: Vec<String>| if items.is_empty() { "none".to_string() } else { items.join(", ") };
    [
        format!(
            "ok stats of pipeline '{}' (up {:.1} s, {} watching); {STATS_LINES} lines follow",
            running.name,
            running.started.elapsed().as_secs_f64(),
            running.watchers
        ),
        rates,
        format!("stats: workers   {}", or_none(pools)),
        format!("stats: latency   ms per event p75/p85/p95: {}{inserts}", or_none(percentiles)),
        format!("stats: crashes   {crashes} (events lost {lost})"),
        format!("stats: stored    {tweets} tweets, {users} users in {batches} batches"),
        format!(
            "stats: dropped   {}; lines skipped for slow sessions {skipped_by_sessions}",
            or_none(dropped)
        ),
    ]
    .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn tweets_file(registry: &Registry) -> PipelineFile {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/tweets.toml");
        let vars = HashMap::from([(EMULATOR_URL.to_string(), "http://127.0.0.1:4000".to_string())]);
        crate::cli::load(registry, &path, &[], &vars).expect("tweets.toml loads")
    }

    fn registry() -> Registry {
        crate::registry()
    }

    #[test]
    fn streams_replace_the_sse_stages_and_the_hub_takes_them_all() {
        let registry = registry();
        let mut file = tweets_file(&registry);
        set_streams(&mut file, "http://h:1/tweets", 3).unwrap();
        let sources: Vec<(String, String)> = file
            .stages
            .iter()
            .filter(|stage| stage.kind == "sse")
            .map(|stage| {
                (stage.id.clone(), stage.setting("url").unwrap().value.as_str().unwrap().to_string())
            })
            .collect();
        assert_eq!(
            sources,
            [1, 2, 3].map(|n| (format!("stream{n}"), format!("http://h:1/tweets/{n}"))).to_vec()
        );
        let hub = file.stages.iter().find(|stage| stage.id == "tweets").unwrap();
        let producers: Vec<&str> = hub.subscribe_to.iter().map(|s| s.producer.as_str()).collect();
        assert_eq!(producers, ["stream1", "stream2", "stream3"]);
        assert!(hub.subscribe_to.iter().all(|s| s.bounds.max_demand() == 200), "bounds copied");
        registry.check(&file).expect("still a valid file");
        set_streams(&mut file, "http://h:1/tweets", 1).unwrap();
        assert_eq!(file.stages.iter().filter(|stage| stage.kind == "sse").count(), 1);
        assert!(set_streams(&mut file, "x", 0).unwrap_err().contains("from 1 to 16"));
    }

    #[test]
    fn broker_adds_two_publishers_and_makes_the_aggregator_broadcast() {
        let registry = registry();
        let mut file = tweets_file(&registry);
        add_broker(&mut file, "127.0.0.1:8000").unwrap();
        let aggregator = file.stages.iter().find(|stage| stage.kind == "aggregator").unwrap();
        assert!(matches!(aggregator.dispatcher, Some((DispatcherDecl::Broadcast, _))));
        let added: Vec<(&str, &str)> = file.stages[file.stages.len() - 2..]
            .iter()
            .map(|stage| (stage.kind.as_str(), stage.subscribe_to[0].producer.as_str()))
            .collect();
        assert_eq!(added, [("broker_tweets", "aggregator"), ("broker_stats", "statistics")]);
        registry.check(&file).expect("still a valid file");
    }
}
