//! The one tweet pipeline `stageflow serve` shares between its sessions:
//! built from the pipeline file with the logger's lines routed into a
//! broadcast stage (`log_lines`) that every watching session subscribes to,
//! started by the first `twitter`, stopped (drained) when the last watcher leaves.
//!
//! ```text
//! sse ─▶ tweets ─┬─▶ logger ──(bounded channel)──▶ log_lines (push, broadcast) ─┬─▶ session 1
//!                ├─▶ sentiment / engagement ─▶ aggregator ─▶ batcher ─▶ store    ├─▶ session 2
//!                └─▶ hashtags                                                   └─▶ ...
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stageflow::config::{BuildContext, PipelineFile, Resources, Signature};
use stageflow::{
    BroadcastDispatcher, BufferKeep, DemandBounds, MetricsReader, PipelineError, PipelineHandle,
    ShutdownTrigger, StageSnapshot, SubscribeOptions, Subscription,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::ServeConfig;
use super::file::prepare_file;
use super::lines::{LINES_BUFFER, LINES_STAGE, LOGGER_CHANNEL, LineSource};
use crate::analysis::logger::{LoggerKind, LoggerOutput};
use crate::analysis::{OutputTarget, StatsHub};
use crate::sync::lock;

/// Credits each session's subscription grants `log_lines` (its reader drains at once).
const SESSION_DEMAND: usize = 256;
/// How much history `stats` computes rates over.
const RATE_WINDOW: Duration = Duration::from_secs(5);

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
            .filter(|s| s.kind == <LoggerKind as Signature>::NAME)
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
    use crate::emulator::{EmulatorConfig, start_emulator};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

    /// Each session here starts a pipeline and its leaving stops it: what a
    /// run's stages share (its statistics hub, which holds every stage's
    /// metrics) must go with it, or `serve` grows with every session.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sessions_that_come_and_go_leave_no_pipeline_behind() {
        let emulator = start_emulator("127.0.0.1:0", EmulatorConfig::default()).await.unwrap();
        let data = tempfile::tempdir().unwrap();
        let mut config = ServeConfig::new("127.0.0.1:0".parse().unwrap(), "tweets");
        config.sse_url = emulator.url("/tweets");
        config.data_dir = data.path().to_path_buf();
        let serve = crate::serve::start_serve(config).await.unwrap();
        let sessions = async {
            let mut hubs = Vec::new();
            for _ in 0..4 {
                let stream = tokio::net::TcpStream::connect(serve.local_addr()).await.unwrap();
                let (reader, mut writer) = stream.into_split();
                let mut lines = tokio::io::BufReader::new(reader).lines();
                writer.write_all(b"twitter\n").await.unwrap();
                let mut tweets = 0;
                while tweets < 5 {
                    let line = lines.next_line().await.unwrap().expect("tweet lines");
                    tweets += usize::from(line.starts_with("tweet: "));
                }
                {
                    let state = serve.server.hub.state.lock().await;
                    let resources = &state.as_ref().expect("a pipeline runs").resources;
                    hubs.push(Arc::downgrade(&resources.get::<StatsHub>().expect("a hub")));
                }
                writer.write_all(b"quit\n").await.unwrap();
                while lines.next_line().await.unwrap().is_some() {}
            }
            hubs
        };
        let hubs = tokio::time::timeout(Duration::from_secs(120), sessions).await.expect("sessions in time");
        // Holders of a hub let go once their tasks end (an aborted task a moment later).
        let released = |hubs: &[std::sync::Weak<StatsHub>]| {
            let hubs = hubs.to_vec();
            async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                while hubs.iter().any(|hub| hub.strong_count() > 0) && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                hubs.iter().map(std::sync::Weak::strong_count).collect::<Vec<_>>()
            }
        };
        // The next `twitter` waits for the previous run to drain: every run but the last is gone.
        assert_eq!(released(&hubs[..3]).await, [0, 0, 0], "earlier runs are still held");
        serve.stop().await;
        assert_eq!(released(&hubs).await, [0; 4], "the last run is held after serve stopped");
        emulator.stop().await;
    }
}
