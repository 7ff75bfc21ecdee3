//! Statistics: every frame (default 5 s), a [`StatsFrame`] with the
//! p75/p85/p95 of logger time and of tweets/users bulk-insert time, crashes,
//! tweets and users ingested, and events dropped anywhere.
//!
//! ## The contract with the sinks
//!
//! A sink records each bulk insert into the pipeline's
//! [`InsertTimings`], a resource of the
//! build context that the pipeline's hub reads too (see [`crate::timings`]).
//!
//! ## Where the numbers come from
//!
//! Everything meets in the pipeline's [`StatsHub`] (one per build context,
//! [`StatsHub::of`], so two pipelines of one name never share it): the logger records its time per
//! tweet, sinks their insert times and counts, the aggregator and SSE kinds
//! register their eviction and malformed counters. Crashes, and drops inside
//! the engine (full buffers, untaken events), come from the engine's metrics
//! once the program that started the pipeline hands them over with
//! [`StatsHub::attach_metrics`]; until then `crashes` counts the logger's
//! kill-message crashes only. Percentiles are per frame: each frame takes the
//! times recorded since the previous one. Counts are totals since start.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use stageflow::{Emitter, Flow, MetricsReader, Producer, Wakeup};
use tokio::sync::watch;

use super::aggregator::JoinStats;
use crate::dead_letters::DeadLetterCounts;
use crate::sse::SseSources;
use crate::timings::{InsertTimings, LatencyRecorder, TimingSummary};
use stageflow::config::{BuildContext, DispatcherChoices, Kind, StageDecl, configure, kind};
use stageflow::{BufferKeep, Nothing, Pipeline};

use crate::settings::a_period;
use crate::sync::lock;

/// One frame of statistics: what the statistics stage emits, prints and publishes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsFrame {
    /// The pipeline's name.
    pub pipeline: String,
    /// 1 for the first frame, then 2, 3, ...
    pub sequence: u64,
    /// When the frame closed (RFC 3339, UTC).
    pub at: String,
    /// The frame length, ms.
    pub frame_ms: u64,
    /// Logger time per tweet (printing plus emulated work) in this frame.
    pub logger: TimingSummary,
    /// Bulk-insert time of the `tweets` collection in this frame.
    pub tweets_insert: TimingSummary,
    /// Bulk-insert time of the `users` collection in this frame.
    pub users_insert: TimingSummary,
    /// Crashes since start: stage restarts (logger kill crashes only, without engine metrics).
    pub crashes: u64,
    /// Events lost to crashes since start (0 without engine metrics).
    pub lost: u64,
    /// New tweets stored since start.
    pub tweets_ingested: u64,
    /// New users stored since start.
    pub users_ingested: u64,
    /// Events dropped anywhere since start: the sum of `dropped_by`.
    pub dropped: u64,
    /// Drops by where they happened: `<stage>` (engine), `<stage>.evicted`, `<stage>.malformed`.
    pub dropped_by: BTreeMap<String, u64>,
    /// Dead letters written since start, by stage (events it panicked on, documents its store rejected).
    #[serde(default)]
    pub dead_lettered: BTreeMap<String, u64>,
}

impl fmt::Display for StatsFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stats #{} ({} ms): logger {}; tweets insert {}; users insert {}; crashes {}; ingested {} tweets, {} users; dropped {}; dead-lettered {}",
            self.sequence,
            self.frame_ms,
            self.logger,
            self.tweets_insert,
            self.users_insert,
            self.crashes,
            self.tweets_ingested,
            self.users_ingested,
            self.dropped,
            self.dead_lettered.values().sum::<u64>()
        )
    }
}

/// Where a pipeline's stages leave what the statistics stage reports.
pub struct StatsHub {
    pipeline: String,
    logger: LatencyRecorder,
    inserts: Arc<InsertTimings>,
    logger_crashes: AtomicU64,
    joins: Mutex<BTreeMap<String, Arc<JoinStats>>>,
    sources: Arc<SseSources>,
    dead_letters: Mutex<Option<Arc<DeadLetterCounts>>>,
    metrics: Mutex<Option<MetricsReader>>,
    latest: watch::Sender<Option<StatsFrame>>,
}

impl StatsHub {
    /// A hub of its own, for pipelines built in code.
    pub fn new(pipeline: &str) -> Arc<StatsHub> {
        Arc::new(StatsHub::reading(pipeline, Arc::default(), Arc::default()))
    }

    /// The hub of the pipeline `context` builds (made by the first stage that
    /// asks), reading the sinks' insert timings and the SSE sources of the same context.
    pub fn of(context: &BuildContext) -> Arc<StatsHub> {
        let inserts = context.resources.get_or_default::<InsertTimings>();
        let sources = context.resources.get_or_default::<SseSources>();
        context.resources.get_or_insert_with(|| StatsHub::reading(&context.pipeline, inserts, sources))
    }

    fn reading(pipeline: &str, inserts: Arc<InsertTimings>, sources: Arc<SseSources>) -> StatsHub {
        StatsHub {
            pipeline: pipeline.to_string(),
            logger: LatencyRecorder::default(),
            inserts,
            logger_crashes: AtomicU64::new(0),
            joins: Mutex::default(),
            sources,
            dead_letters: Mutex::default(),
            metrics: Mutex::default(),
            latest: watch::channel(None).0,
        }
    }

    /// The pipeline's name.
    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }

    /// Where the sinks record their bulk inserts.
    pub fn insert_timings(&self) -> Arc<InsertTimings> {
        self.inserts.clone()
    }

    /// Where the logger records its time per tweet.
    pub fn logger_timings(&self) -> &LatencyRecorder {
        &self.logger
    }

    /// Counts one logger crash on a kill message (used while no engine metrics are attached).
    pub fn record_logger_crash(&self) {
        self.logger_crashes.fetch_add(1, Ordering::Relaxed);
    }

    /// Reports an aggregator's evictions as drops of stage `stage`.
    pub fn watch_join(&self, stage: &str, stats: Arc<JoinStats>) {
        lock(&self.joins).insert(stage.to_string(), stats);
    }

    /// Reports the pipeline's dead letters per stage in every frame.
    pub fn watch_dead_letters(&self, counts: Arc<DeadLetterCounts>) {
        *lock(&self.dead_letters) = Some(counts);
    }

    /// The SSE sources watched, by stage id, with their counters now.
    pub fn sources(&self) -> Vec<(String, crate::sse::SseStatsSnapshot)> {
        self.sources.snapshot()
    }

    /// Hands over the running pipeline's metrics: crashes, losses and engine drops come from them.
    pub fn attach_metrics(&self, reader: MetricsReader) {
        *lock(&self.metrics) = Some(reader);
    }

    /// The latest frame, as it is published (`None` before the first).
    pub fn subscribe(&self) -> watch::Receiver<Option<StatsFrame>> {
        self.latest.subscribe()
    }

    /// Closes a frame: takes this frame's times, reads the totals, publishes
    /// and returns it. `statistics_stage` is left out of the engine drops (its
    /// own unread frames are not the pipeline's losses).
    pub fn frame(&self, sequence: u64, frame: Duration, statistics_stage: &str) -> StatsFrame {
        let mut dropped_by = BTreeMap::new();
        let (mut crashes, mut lost) = (self.logger_crashes.load(Ordering::Relaxed), 0);
        let written = lock(&self.dead_letters).as_ref().map(|counts| counts.snapshot()).unwrap_or_default();
        let mut dead_lettered = written.clone();
        if let Some(reader) = lock(&self.metrics).as_ref() {
            let stages = reader.snapshot();
            crashes = stages.iter().map(|stage| stage.restarts).sum();
            lost = stages.iter().map(|stage| stage.lost).sum();
            dead_lettered = crate::dead_letters::per_stage(&written, &stages);
            for stage in stages.iter().filter(|stage| stage.dropped > 0 && stage.stage != statistics_stage) {
                dropped_by.insert(stage.stage.clone(), stage.dropped);
            }
        }
        for (stage, stats) in lock(&self.joins).iter() {
            dropped_by.insert(format!("{stage}.evicted"), stats.evicted());
        }
        for (stage, stats) in self.sources.snapshot() {
            dropped_by.insert(format!("{stage}.malformed"), stats.malformed);
        }
        dropped_by.retain(|_, count| *count > 0);
        let frame = StatsFrame {
            pipeline: self.pipeline.clone(),
            sequence,
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            frame_ms: frame.as_millis() as u64,
            logger: self.logger.take(),
            tweets_insert: self.inserts.tweets.take(),
            users_insert: self.inserts.users.take(),
            crashes,
            lost,
            tweets_ingested: self.inserts.tweets_ingested(),
            users_ingested: self.inserts.users_ingested(),
            dropped: dropped_by.values().sum(),
            dropped_by,
            dead_lettered,
        };
        self.latest.send_replace(Some(frame.clone()));
        frame
    }
}

impl fmt::Debug for StatsHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatsHub").field("pipeline", &self.pipeline).finish_non_exhaustive()
    }
}

/// Where the statistics stage writes each frame, besides emitting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsOutput {
    /// A `tracing` info line (stderr by default).
    Log,
    /// A line on stdout.
    Stdout,
    /// Only emitted and published.
    Quiet,
}

/// The statistics stage: a producer writing one [`StatsFrame`] per frame,
/// and emitting it to subscribers that asked (they may join at run time,
/// e.g. a broker sink); with nobody asking, frames go to the output only and
/// fill no buffer (the latest one is kept for whoever asks next). It follows the pipeline's data: once every other stage
/// has ended it writes a final frame covering the tail, and ends.
#[derive(Debug)]
pub struct Statistics {
    hub: Arc<StatsHub>,
    stage: String,
    frame: Duration,
    output: StatsOutput,
    ticker: Option<tokio::time::Interval>,
    sequence: Arc<AtomicU64>,
    /// When the last frame closed, or the first opened (the final frame is shorter than the others).
    closed: Option<tokio::time::Instant>,
    /// The latest frame closed while nobody asked for one.
    unsent: Option<StatsFrame>,
    wakeup: Option<Wakeup>,
}

impl Statistics {
    /// A stage `stage` closing a frame of `hub` every `frame` (1 ms to 1 day); `sequence` numbers frames across restarts.
    pub fn new(
        hub: Arc<StatsHub>,
        stage: &str,
        frame: Duration,
        output: StatsOutput,
        sequence: Arc<AtomicU64>,
    ) -> Self {
        Statistics {
            hub,
            stage: stage.to_string(),
            frame,
            output,
            ticker: None,
            sequence,
            closed: None,
            unsent: None,
            wakeup: None,
        }
    }

    fn period(&self) -> Duration {
        self.frame.clamp(Duration::from_millis(1), Duration::from_secs(86_400))
    }

    /// Closes a frame of length `length`, writes it to the output and returns it.
    fn close_frame(&mut self, length: Duration) -> StatsFrame {
        self.closed = Some(tokio::time::Instant::now());
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        let frame = self.hub.frame(sequence, length, &self.stage);
        match self.output {
            StatsOutput::Log => tracing::info!(pipeline = %frame.pipeline, "{frame}"),
            StatsOutput::Stdout => {
                use std::io::Write;
                let _ = writeln!(std::io::stdout().lock(), "{frame}");
            }
            StatsOutput::Quiet => {}
        }
        frame
    }
}

impl Producer for Statistics {
    type Out = StatsFrame;

    /// Frames come every period whether or not anyone asked.
    const PUSH: bool = true;
    const FOLLOWS_SOURCES: bool = true;

    async fn produce(&mut self, demand: usize, out: &mut Emitter<StatsFrame>) -> Flow {
        let period = self.period();
        if self.ticker.is_none() {
            self.closed = Some(tokio::time::Instant::now());
        }
        let ticker = self.ticker.get_or_insert_with(|| {
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker
        });
        if demand > 0
            && let Some(frame) = self.unsent.take()
        {
            out.emit(frame);
            return Flow::Continue;
        }
        ticker.tick().await;
        let frame = self.close_frame(period);
        if demand > 0 {
            out.emit(frame);
        } else {
            // Nobody had asked when this call began (at start, the
            // subscribers' first credits may still be on their way): the
            // frame went to the output, and only the latest is kept for
            // whoever asks next. Emitting nothing makes the engine wait for
            // demand, so ask to be called again: with demand, or for the next frame.
            self.unsent = Some(frame);
            if let Some(wakeup) = &self.wakeup {
                wakeup.wake();
            }
        }
        Flow::Continue
    }

    async fn flush(&mut self, demand: usize, out: &mut Emitter<StatsFrame>) {
        let length = self.closed.map_or(self.period(), |closed| closed.elapsed());
        let frame = self.close_frame(length);
        if demand > 0 {
            out.extend(self.unsent.take());
            out.emit(frame);
        }
    }

    fn handle_wakeup(&mut self, wakeup: Wakeup) {
        self.wakeup = Some(wakeup);
    }
}

/// Frames kept for subscribers that have not asked yet (the newest win).
pub const STATISTICS_BUFFER: usize = 64;

/// every frame: p75/p85/p95 of logger and bulk-insert times, crashes, tweets and users ingested, events dropped; logged and emitted as stats frames
#[kind("statistics", Nothing -> StatsFrame, external_subscribers)]
pub struct StatisticsKind {
    /// the frame (default 5000)
    #[default(5000)]
    frame_ms: u64,
    /// where each frame is written besides being emitted: "log" (default, stderr), "stdout" or "none"
    #[default("log")]
    output: String,
}

impl StatisticsKind {
    fn output(&self) -> Result<StatsOutput, String> {
        match self.output.as_str() {
            "log" => Ok(StatsOutput::Log),
            "stdout" => Ok(StatsOutput::Stdout),
            "none" => Ok(StatsOutput::Quiet),
            other => Err(format!("`output` must be \"log\", \"stdout\" or \"none\", got \"{other}\"")),
        }
    }
}

impl Kind for StatisticsKind {
    fn check(&self, _: &StageDecl) -> Result<(), String> {
        a_period("frame_ms", self.frame_ms)?;
        self.output().map(|_| ())
    }

    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, context: &BuildContext) -> Result<(), String> {
        let (frame, output) = (Duration::from_millis(self.frame_ms), self.output()?);
        let hub = StatsHub::of(context);
        let sequence = Arc::new(AtomicU64::new(0));
        let id = stage.id.clone();
        let config = pipeline
            .producer(&stage.id, move || Statistics::new(hub.clone(), &id, frame, output, sequence.clone()));
        config.buffer(STATISTICS_BUFFER, BufferKeep::Last);
        configure(stage, config, &DispatcherChoices::cloneable(), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(actual: f64, expected: f64) -> bool {
        (actual - expected).abs() <= expected * 0.01 + 0.001
    }

    #[test]
    fn percentiles_of_one_to_a_hundred_milliseconds() {
        let recorder = LatencyRecorder::default();
        for ms in (1..=100).rev() {
            recorder.record(Duration::from_millis(ms));
        }
        let summary = recorder.take();
        assert_eq!(summary.count, 100);
        assert!(close(summary.p75_ms, 75.0), "{summary:?}");
        assert!(close(summary.p85_ms, 85.0), "{summary:?}");
        assert!(close(summary.p95_ms, 95.0), "{summary:?}");
    }

    #[test]
    fn a_frame_takes_what_was_recorded_since_the_last_one() {
        let recorder = LatencyRecorder::default();
        recorder.record(Duration::from_millis(500));
        assert_eq!(recorder.take().count, 1);
        assert_eq!(recorder.take(), TimingSummary::default(), "empty: all zero");
        recorder.record(Duration::from_millis(2));
        assert!(close(recorder.take().p95_ms, 2.0));
    }

    #[test]
    fn extreme_durations_are_clamped_not_lost() {
        let recorder = LatencyRecorder::default();
        recorder.record(Duration::ZERO);
        recorder.record(Duration::from_secs(10 * 3600));
        let summary = recorder.take();
        assert_eq!(summary.count, 2);
        assert!(summary.p95_ms >= 3_590_000.0, "{summary:?}");
    }

    #[test]
    fn skewed_times_put_the_tail_in_the_high_percentiles() {
        let recorder = LatencyRecorder::default();
        for _ in 0..90 {
            recorder.record(Duration::from_millis(10));
        }
        for _ in 0..10 {
            recorder.record(Duration::from_millis(1000));
        }
        let summary = recorder.take();
        assert!(close(summary.p75_ms, 10.0) && close(summary.p85_ms, 10.0), "{summary:?}");
        assert!(close(summary.p95_ms, 1000.0), "{summary:?}");
    }

    #[test]
    fn a_frame_sums_inserts_evictions_and_malformed_and_publishes_itself() {
        let hub = StatsHub::new("unit");
        let timings = hub.insert_timings();
        timings.record_tweets(Duration::from_millis(20), 200);
        timings.record_tweets(Duration::from_millis(40), 50);
        timings.record_users(Duration::from_millis(5), 120);
        hub.logger_timings().record(Duration::from_millis(300));
        hub.record_logger_crash();
        let join = Arc::new(JoinStats::default());
        hub.watch_join("aggregator", join.clone());
        let mut state = super::super::JoinState::new(Duration::from_secs(1), 1, join);
        let now = tokio::time::Instant::now();
        for id in ["a", "b", "c"] {
            let tweet = super::super::FlowTweet::new(super::super::flow::tests::tweet(id, ""), false);
            state.offer(super::super::TweetScore { tweet, score: super::super::Score::Sentiment(0.0) }, now);
        }
        let mut latest = hub.subscribe();
        let frame = hub.frame(1, Duration::from_secs(5), "statistics");
        assert_eq!(frame.tweets_insert.count, 2);
        assert!(close(frame.tweets_insert.p95_ms, 40.0));
        assert_eq!((frame.tweets_ingested, frame.users_ingested), (250, 120));
        assert_eq!(frame.logger.count, 1);
        assert_eq!(frame.crashes, 1);
        assert_eq!(frame.dropped, 2);
        assert_eq!(frame.dropped_by, BTreeMap::from([("aggregator.evicted".to_string(), 2)]));
        assert_eq!(frame.frame_ms, 5000);
        assert!(latest.has_changed().unwrap());
        assert_eq!(latest.borrow_and_update().as_ref(), Some(&frame));
        let next = hub.frame(2, Duration::from_secs(5), "statistics");
        assert_eq!((next.tweets_insert.count, next.logger.count), (0, 0), "times are per frame");
        assert_eq!(next.tweets_ingested, 250, "counts are totals");
        let json = serde_json::to_string(&next).unwrap();
        assert_eq!(serde_json::from_str::<StatsFrame>(&json).unwrap(), next);
        assert!(next.to_string().contains("ingested 250 tweets, 120 users"), "{next}");
    }

    #[test]
    fn a_hub_is_shared_within_a_build_context_not_by_name() {
        let file = stageflow::config::parse_pipeline(
            std::path::Path::new("twin.toml"),
            "[pipeline]\nname = \"twin\"\n",
            &|_| None,
        )
        .expect("parses");
        let (first, second) = (BuildContext::for_file(&file, "."), BuildContext::for_file(&file, "."));
        let (a, b, other) = (StatsHub::of(&first), StatsHub::of(&first), StatsHub::of(&second));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &other), "one name, two pipelines, two hubs");
        assert!(Arc::ptr_eq(&a.insert_timings(), &first.resources.get::<InsertTimings>().unwrap()));
        assert_eq!(other.pipeline(), "twin");
    }
}
