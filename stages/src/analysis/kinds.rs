//! The stage kinds of the analysis half, for pipeline files.
//!
//! `sse` → `tweets` (hub, broadcast) → `logger` / `sentiment` / `engagement`
//! / `hashtags`; `sentiment` + `engagement` → `aggregator` → storage;
//! `statistics` on its own. Stages of one pipeline share its
//! [`StatsHub`](super::StatsHub) (by pipeline name).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use serde::Deserialize;
use stageflow::config::{
    BuildContext, DispatcherChoices, EventType, Registry, Role, SettingDoc, StageDecl, StageKind, configure,
};
use stageflow::{BufferKeep, Pipeline, PoolConfig, RestartPolicy};

use super::aggregator::{Aggregator, JoinStats};
use super::engagement::Engagement;
use super::flow::{TweetFlow, TweetScore, TweetsHub, tweet_flow_selector};
use super::hashtags::Hashtags;
use super::logger::{Logger, LoggerConfig, OutputTarget, WorkSleep};
use super::sentiment::{Lexicon, LexiconSource, Sentiment, SharedLexicon};
use super::statistics::{Statistics, StatsFrame, StatsHub, StatsOutput};
use crate::scored::ScoredTweet;
use crate::sse::{SseEvent, SseReceiver, SseSourceConfig, TweetMessage};

/// Registers `sse`, `tweets`, `logger`, `sentiment`, `engagement`, `aggregator`, `hashtags` and `statistics`.
pub fn register(registry: &mut Registry) {
    registry
        .register(SseKind)
        .register(TweetsKind)
        .register(LoggerKind)
        .register(SentimentKind)
        .register(EngagementKind)
        .register(AggregatorKind)
        .register(HashtagsKind)
        .register(StatisticsKind);
}

/// The event type of the SSE source.
pub fn sse_events() -> EventType {
    EventType::of::<SseEvent>("SSE tweet")
}

/// The event type of the `tweets` hub.
pub fn tweet_flow_events() -> EventType {
    EventType::of::<TweetFlow>("tweet flow")
}

/// The event type of the sentiment and engagement stages.
pub fn tweet_score_events() -> EventType {
    EventType::of::<TweetScore>("tweet score")
}

/// The event type of the aggregator (what the storage half takes).
pub fn scored_tweet_events() -> EventType {
    EventType::of::<ScoredTweet>("scored tweet")
}

/// The event type of the statistics stage.
pub fn stats_frame_events() -> EventType {
    EventType::of::<StatsFrame>("stats frame")
}

/// A stable partition of a tweet id.
fn partition_of_id(id: &str) -> usize {
    crc32fast::hash(id.as_bytes()) as usize
}

/// Checks every `selector` of a stage taking tweet flow events.
fn check_selectors(stage: &StageDecl) -> Result<(), String> {
    for subscription in &stage.subscribe_to {
        if let Some(name) = &subscription.selector {
            tweet_flow_selector(name)
                .map_err(|why| format!("subscription to '{}': {why}", subscription.producer))?;
        }
    }
    Ok(())
}

fn at_least_one(name: &str, value: u64) -> Result<(), String> {
    if value == 0 { Err(format!("`{name}` must be at least 1")) } else { Ok(()) }
}

/// The longest timer period a setting may ask for, ms (one day).
pub const MAX_PERIOD_MS: u64 = 86_400_000;

fn a_period(name: &str, value: u64) -> Result<(), String> {
    at_least_one(name, value)?;
    if value > MAX_PERIOD_MS {
        return Err(format!("`{name}` must be at most {MAX_PERIOD_MS} (one day), got {value}"));
    }
    Ok(())
}

/// `kind = "sse"`: reads one SSE stream of tweets, only against demand.
pub struct SseKind;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SseSettings {
    url: String,
    #[serde(default = "default_initial_backoff_ms")]
    initial_backoff_ms: u64,
    #[serde(default = "default_max_backoff_ms")]
    max_backoff_ms: u64,
    #[serde(default)]
    give_up_after: Option<u32>,
}

fn default_initial_backoff_ms() -> u64 {
    100
}

fn default_max_backoff_ms() -> u64 {
    5000
}

impl SseSettings {
    fn source(&self) -> Result<SseSourceConfig, String> {
        at_least_one("initial_backoff_ms", self.initial_backoff_ms)?;
        if self.max_backoff_ms < self.initial_backoff_ms {
            return Err(format!(
                "`max_backoff_ms` ({}) must not be below `initial_backoff_ms` ({})",
                self.max_backoff_ms, self.initial_backoff_ms
            ));
        }
        let mut source = SseSourceConfig::new(&self.url)?.backoff(
            Duration::from_millis(self.initial_backoff_ms),
            Duration::from_millis(self.max_backoff_ms),
        );
        if let Some(attempts) = self.give_up_after {
            at_least_one("give_up_after", attempts.into())?;
            source = source.give_up_after(attempts);
        }
        Ok(source)
    }
}

impl StageKind for SseKind {
    fn name(&self) -> &'static str {
        "sse"
    }
    fn summary(&self) -> &'static str {
        "reads an SSE stream of tweets (and kill messages) only as fast as downstream asks; reconnects with backoff"
    }
    fn role(&self) -> Role {
        Role::Producer
    }
    fn input(&self) -> Option<EventType> {
        None
    }
    fn output(&self) -> Option<EventType> {
        Some(sse_events())
    }
    fn settings(&self) -> &'static [SettingDoc] {
        &[
            SettingDoc {
                name: "url",
                required: true,
                help: "the stream, e.g. \"http://localhost:4000/tweets/1\"",
            },
            SettingDoc {
                name: "initial_backoff_ms",
                required: false,
                help: "wait after the first failed attempt, doubling (default 100)",
            },
            SettingDoc {
                name: "max_backoff_ms",
                required: false,
                help: "longest wait between attempts (default 5000)",
            },
            SettingDoc {
                name: "give_up_after",
                required: false,
                help: "end after this many failed attempts in a row (default: retry forever)",
            },
        ]
    }
    fn check_settings(&self, stage: &StageDecl) -> Result<(), String> {
        stage.settings_as::<SseSettings>()?.source().map(|_| ())
    }
    fn build(
        &self,
        stage: &StageDecl,
        pipeline: &mut Pipeline,
        context: &BuildContext,
    ) -> Result<(), String> {
        let source = stage.settings_as::<SseSettings>()?.source()?;
        StatsHub::for_pipeline(&context.pipeline).watch_source(&stage.id, source.stats());
        let config = pipeline.producer(&stage.id, move || SseReceiver::new(&source));
        let choices =
            DispatcherChoices::cloneable().with_partition(|event: &SseEvent| match &event.message {
                TweetMessage::Tweet(tweet) => partition_of_id(&tweet.id_str),
                TweetMessage::Kill => 0,
            });
        configure(stage, config, &choices, None)
    }
}

/// `kind = "tweets"`: the hub; SSE events in, tweets (retweets extracted) and kill messages out.
pub struct TweetsKind;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TweetsSettings {
    #[serde(default = "yes")]
    extract_retweets: bool,
}

fn yes() -> bool {
    true
}

fn tweet_flow_choices() -> DispatcherChoices<TweetFlow> {
    DispatcherChoices::cloneable().with_partition(|event: &TweetFlow| match event {
        TweetFlow::Tweet(tweet) => partition_of_id(&tweet.tweet.id_str),
        TweetFlow::Kill => 0,
    })
}

impl StageKind for TweetsKind {
    fn name(&self) -> &'static str {
        "tweets"
    }
    fn summary(&self) -> &'static str {
        "the tweet hub: SSE events in; tweets, originals extracted from retweets (flagged) and kill messages out; subscribers may use selector = \"tweets\" | \"received\" | \"extracted\" | \"kills\" | \"all\" with dispatcher = \"broadcast\""
    }
    fn role(&self) -> Role {
        Role::ProducerConsumer
    }
    fn input(&self) -> Option<EventType> {
        Some(sse_events())
    }
    fn output(&self) -> Option<EventType> {
        Some(tweet_flow_events())
    }
    fn settings(&self) -> &'static [SettingDoc] {
        &[SettingDoc {
            name: "extract_retweets",
            required: false,
            help: "emit each retweet's retweeted_status as a tweet of its own, flagged extracted (default true)",
        }]
    }
    fn check_settings(&self, stage: &StageDecl) -> Result<(), String> {
        stage.settings_as::<TweetsSettings>().map(|_| ())
    }
    fn build(&self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let extract = stage.settings_as::<TweetsSettings>()?.extract_retweets;
        let config = pipeline.producer_consumer(&stage.id, move || TweetsHub::new(extract));
        configure(stage, config, &tweet_flow_choices(), None)
    }
}

/// `kind = "logger"`: prints tweet texts with emulated work; crashes on kill messages.
pub struct LoggerKind;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoggerSettings {
    #[serde(default = "default_output")]
    output: String,
    #[serde(default = "default_sleep_mean_ms")]
    sleep_mean_ms: f64,
    #[serde(default = "default_sleep_std_dev_ms")]
    sleep_std_dev_ms: f64,
    #[serde(default)]
    ignore_kill_messages: bool,
    #[serde(default = "default_max_restarts")]
    max_restarts: usize,
    #[serde(default = "default_restart_window_ms")]
    restart_window_ms: u64,
}

fn default_output() -> String {
    "stdout".into()
}

fn default_sleep_mean_ms() -> f64 {
    WorkSleep::default().mean_ms
}

fn default_sleep_std_dev_ms() -> f64 {
    WorkSleep::default().std_dev_ms
}

fn default_max_restarts() -> usize {
    100
}

fn default_restart_window_ms() -> u64 {
    5000
}

/// The logger's pool when the file sets no `workers`.
pub const DEFAULT_LOGGER_WORKERS: (usize, usize) = (1, 32);

/// The sentiment and engagement pools when the file sets no `workers`.
pub const DEFAULT_SCORING_WORKERS: (usize, usize) = (1, 4);

impl LoggerSettings {
    fn checked(stage: &StageDecl) -> Result<(LoggerSettings, OutputTarget, WorkSleep), String> {
        let settings: LoggerSettings = stage.settings_as()?;
        let output = OutputTarget::named(&settings.output)?;
        let sleep = WorkSleep { mean_ms: settings.sleep_mean_ms, std_dev_ms: settings.sleep_std_dev_ms };
        sleep.validate()?;
        a_period("restart_window_ms", settings.restart_window_ms)?;
        check_selectors(stage)?;
        Ok((settings, output, sleep))
    }
}

impl StageKind for LoggerKind {
    fn name(&self) -> &'static str {
        "logger"
    }
    fn summary(&self) -> &'static str {
        "prints each tweet's text, sleeps to emulate work, crashes on a kill message (restarted by its supervisor); an autoscaled pool by default"
    }
    fn role(&self) -> Role {
        Role::Consumer
    }
    fn input(&self) -> Option<EventType> {
        Some(tweet_flow_events())
    }
    fn output(&self) -> Option<EventType> {
        None
    }
    fn settings(&self) -> &'static [SettingDoc] {
        &[
            SettingDoc {
                name: "output",
                required: false,
                help: "\"stdout\" (default), \"stderr\" or \"none\"",
            },
            SettingDoc {
                name: "sleep_mean_ms",
                required: false,
                help: "mean emulated work per tweet, normally distributed within ±3σ (default 275; 0 disables)",
            },
            SettingDoc {
                name: "sleep_std_dev_ms",
                required: false,
                help: "its standard deviation (default 75: 50–500 ms)",
            },
            SettingDoc {
                name: "ignore_kill_messages",
                required: false,
                help: "skip kill messages instead of crashing on them (default false)",
            },
            SettingDoc {
                name: "max_restarts",
                required: false,
                help: "crashes a worker may have within restart_window_ms before the pipeline fails (default 100)",
            },
            SettingDoc {
                name: "restart_window_ms",
                required: false,
                help: "the window of max_restarts (default 5000)",
            },
        ]
    }
    fn check_settings(&self, stage: &StageDecl) -> Result<(), String> {
        LoggerSettings::checked(stage).map(|_| ())
    }
    fn build(
        &self,
        stage: &StageDecl,
        pipeline: &mut Pipeline,
        context: &BuildContext,
    ) -> Result<(), String> {
        let (settings, output, sleep) = LoggerSettings::checked(stage)?;
        let logger = LoggerConfig {
            output,
            sleep,
            ignore_kill_messages: settings.ignore_kill_messages,
            hub: Some(StatsHub::for_pipeline(&context.pipeline)),
        };
        let config = pipeline.consumer(&stage.id, move || Logger::new(logger.clone()));
        let (min, max) = DEFAULT_LOGGER_WORKERS;
        config.workers(PoolConfig::autoscaled(min, max)).restart(RestartPolicy::intensity(
            settings.max_restarts,
            Duration::from_millis(settings.restart_window_ms),
        ));
        configure(stage, config, &DispatcherChoices::demand_only(), Some(&tweet_flow_selector))
    }
}

/// `kind = "sentiment"`: the mean lexicon score of each tweet's words.
pub struct SentimentKind;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SentimentSettings {
    #[serde(default)]
    lexicon_file: Option<PathBuf>,
    #[serde(default)]
    lexicon_url: Option<String>,
}

impl SentimentSettings {
    fn source(stage: &StageDecl) -> Result<LexiconSource, String> {
        let settings: SentimentSettings = stage.settings_as()?;
        check_selectors(stage)?;
        match (settings.lexicon_file, settings.lexicon_url) {
            (Some(_), Some(_)) => Err("set `lexicon_file` or `lexicon_url`, not both".into()),
            (Some(path), None) => Ok(LexiconSource::File(path)),
            (None, Some(url)) => {
                let parsed = reqwest::Url::parse(&url)
                    .map_err(|error| format!("invalid `lexicon_url` '{url}': {error}"))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(format!("invalid `lexicon_url` '{url}': the scheme must be http or https"));
                }
                Ok(LexiconSource::Url(url))
            }
            (None, None) => Ok(LexiconSource::Vader),
        }
    }
}

impl StageKind for SentimentKind {
    fn name(&self) -> &'static str {
        "sentiment"
    }
    fn summary(&self) -> &'static str {
        "scores each tweet: mean lexicon score of its words (VADER's lexicon unless told otherwise); skips kill messages"
    }
    fn role(&self) -> Role {
        Role::ProducerConsumer
    }
    fn input(&self) -> Option<EventType> {
        Some(tweet_flow_events())
    }
    fn output(&self) -> Option<EventType> {
        Some(tweet_score_events())
    }
    fn settings(&self) -> &'static [SettingDoc] {
        &[
            SettingDoc {
                name: "lexicon_file",
                required: false,
                help: "a word<TAB>score file to use instead of VADER's (default: VADER, from the vader_sentiment crate)",
            },
            SettingDoc {
                name: "lexicon_url",
                required: false,
                help: "fetch the lexicon from here, e.g. \"http://localhost:4000/emotion_values\" (retried until it answers)",
            },
        ]
    }
    fn check_settings(&self, stage: &StageDecl) -> Result<(), String> {
        match SentimentSettings::source(stage)? {
            LexiconSource::File(path) => Lexicon::from_file(&path).map(|_| ()),
            _ => Ok(()),
        }
    }
    fn build(&self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let lexicon = SharedLexicon::load(&SentimentSettings::source(stage)?)?;
        let config = pipeline.producer_consumer(&stage.id, move || Sentiment::new(lexicon.clone()));
        let (min, max) = DEFAULT_SCORING_WORKERS;
        config.workers(PoolConfig::autoscaled(min, max));
        configure(stage, config, &DispatcherChoices::cloneable(), Some(&tweet_flow_selector))
    }
}

/// `kind = "engagement"`: (favorites + retweets) / followers of each tweet.
pub struct EngagementKind;

impl StageKind for EngagementKind {
    fn name(&self) -> &'static str {
        "engagement"
    }
    fn summary(&self) -> &'static str {
        "scores each tweet: (favorites + retweets) / followers, 0 followers counted as 1; skips kill messages"
    }
    fn role(&self) -> Role {
        Role::ProducerConsumer
    }
    fn input(&self) -> Option<EventType> {
        Some(tweet_flow_events())
    }
    fn output(&self) -> Option<EventType> {
        Some(tweet_score_events())
    }
    fn settings(&self) -> &'static [SettingDoc] {
        &[]
    }
    fn check_settings(&self, stage: &StageDecl) -> Result<(), String> {
        check_selectors(stage)
    }
    fn build(&self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let config = pipeline.producer_consumer(&stage.id, || Engagement);
        let (min, max) = DEFAULT_SCORING_WORKERS;
        config.workers(PoolConfig::autoscaled(min, max));
        configure(stage, config, &DispatcherChoices::cloneable(), Some(&tweet_flow_selector))
    }
}

/// `kind = "aggregator"`: joins sentiment and engagement by tweet into scored tweets.
pub struct AggregatorKind;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AggregatorSettings {
    #[serde(default = "default_ttl_ms")]
    ttl_ms: u64,
    #[serde(default = "default_max_pending")]
    max_pending: u64,
}

fn default_ttl_ms() -> u64 {
    30_000
}

fn default_max_pending() -> u64 {
    100_000
}

impl AggregatorSettings {
    fn checked(stage: &StageDecl) -> Result<AggregatorSettings, String> {
        let settings: AggregatorSettings = stage.settings_as()?;
        at_least_one("ttl_ms", settings.ttl_ms)?;
        at_least_one("max_pending", settings.max_pending)?;
        Ok(settings)
    }
}

impl StageKind for AggregatorKind {
    fn name(&self) -> &'static str {
        "aggregator"
    }
    fn summary(&self) -> &'static str {
        "joins each tweet's sentiment and engagement scores into a scored tweet; half-joined tweets wait at most ttl_ms, at most max_pending of them, evictions counted"
    }
    fn role(&self) -> Role {
        Role::ProducerConsumer
    }
    fn input(&self) -> Option<EventType> {
        Some(tweet_score_events())
    }
    fn output(&self) -> Option<EventType> {
        Some(scored_tweet_events())
    }
    fn settings(&self) -> &'static [SettingDoc] {
        &[
            SettingDoc {
                name: "ttl_ms",
                required: false,
                help: "how long a tweet with one score waits for the other before it is evicted (default 30000)",
            },
            SettingDoc {
                name: "max_pending",
                required: false,
                help: "most half-joined tweets waiting at once; the oldest is evicted past it (default 100000)",
            },
        ]
    }
    fn check_settings(&self, stage: &StageDecl) -> Result<(), String> {
        AggregatorSettings::checked(stage).map(|_| ())
    }
    fn build(
        &self,
        stage: &StageDecl,
        pipeline: &mut Pipeline,
        context: &BuildContext,
    ) -> Result<(), String> {
        let settings = AggregatorSettings::checked(stage)?;
        let ttl = Duration::from_millis(settings.ttl_ms);
        let max_pending = usize::try_from(settings.max_pending).unwrap_or(usize::MAX);
        let stats = Arc::new(JoinStats::default());
        StatsHub::for_pipeline(&context.pipeline).watch_join(&stage.id, stats.clone());
        let config =
            pipeline.producer_consumer(&stage.id, move || Aggregator::new(ttl, max_pending, stats.clone()));
        let choices = DispatcherChoices::cloneable()
            .with_partition(|scored: &ScoredTweet| partition_of_id(&scored.tweet.user.id_str));
        configure(stage, config, &choices, None)
    }
}

/// `kind = "hashtags"`: the top hashtags of each window, written atomically to a JSON file.
pub struct HashtagsKind;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HashtagsSettings {
    #[serde(default = "default_hashtags_path")]
    path: PathBuf,
    #[serde(default = "default_every_ms")]
    every_ms: u64,
    #[serde(default = "default_top")]
    top: u64,
    #[serde(default = "yes")]
    include_extracted: bool,
}

fn default_hashtags_path() -> PathBuf {
    PathBuf::from("hashtags.json")
}

fn default_every_ms() -> u64 {
    3000
}

fn default_top() -> u64 {
    25
}

impl HashtagsSettings {
    fn checked(stage: &StageDecl) -> Result<HashtagsSettings, String> {
        let settings: HashtagsSettings = stage.settings_as()?;
        a_period("every_ms", settings.every_ms)?;
        at_least_one("top", settings.top)?;
        if settings.path.as_os_str().is_empty() || settings.path.file_name().is_none() {
            return Err(format!("`path` must name a file, got \"{}\"", settings.path.display()));
        }
        check_selectors(stage)?;
        Ok(settings)
    }
}

impl StageKind for HashtagsKind {
    fn name(&self) -> &'static str {
        "hashtags"
    }
    fn summary(&self) -> &'static str {
        "counts hashtags per window and writes the top ones atomically to a JSON file after each window"
    }
    fn role(&self) -> Role {
        Role::Consumer
    }
    fn input(&self) -> Option<EventType> {
        Some(tweet_flow_events())
    }
    fn output(&self) -> Option<EventType> {
        None
    }
    fn settings(&self) -> &'static [SettingDoc] {
        &[
            SettingDoc {
                name: "path",
                required: false,
                help: "the JSON file, relative to the data directory (default \"hashtags.json\")",
            },
            SettingDoc {
                name: "every_ms",
                required: false,
                help: "the window, and how often the file is written (default 3000)",
            },
            SettingDoc {
                name: "top",
                required: false,
                help: "how many hashtags the file lists (default 25)",
            },
            SettingDoc {
                name: "include_extracted",
                required: false,
                help: "count originals extracted from retweets too (default true)",
            },
        ]
    }
    fn check_settings(&self, stage: &StageDecl) -> Result<(), String> {
        HashtagsSettings::checked(stage).map(|_| ())
    }
    fn build(
        &self,
        stage: &StageDecl,
        pipeline: &mut Pipeline,
        context: &BuildContext,
    ) -> Result<(), String> {
        let settings = HashtagsSettings::checked(stage)?;
        let path = context.data_dir.join(&settings.path);
        let window = Duration::from_millis(settings.every_ms);
        let top = usize::try_from(settings.top).unwrap_or(usize::MAX);
        let name = context.pipeline.clone();
        let include = settings.include_extracted;
        let config =
            pipeline.consumer(&stage.id, move || Hashtags::new(&name, path.clone(), window, top, include));
        configure(stage, config, &DispatcherChoices::demand_only(), Some(&tweet_flow_selector))
    }
}

/// `kind = "statistics"`: a stats frame every `frame_ms`, logged and emitted.
pub struct StatisticsKind;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatisticsSettings {
    #[serde(default = "default_frame_ms")]
    frame_ms: u64,
    #[serde(default = "default_stats_output")]
    output: String,
}

fn default_frame_ms() -> u64 {
    5000
}

fn default_stats_output() -> String {
    "log".into()
}

/// Frames kept for subscribers that have not asked yet (the newest win).
pub const STATISTICS_BUFFER: usize = 64;

impl StatisticsSettings {
    fn checked(stage: &StageDecl) -> Result<(Duration, StatsOutput), String> {
        let settings: StatisticsSettings = stage.settings_as()?;
        a_period("frame_ms", settings.frame_ms)?;
        let output = match settings.output.as_str() {
            "log" => StatsOutput::Log,
            "stdout" => StatsOutput::Stdout,
            "none" => StatsOutput::Quiet,
            other => {
                return Err(format!("`output` must be \"log\", \"stdout\" or \"none\", got \"{other}\""));
            }
        };
        Ok((Duration::from_millis(settings.frame_ms), output))
    }
}

impl StageKind for StatisticsKind {
    fn name(&self) -> &'static str {
        "statistics"
    }
    fn summary(&self) -> &'static str {
        "every frame: p75/p85/p95 of logger and bulk-insert times, crashes, tweets and users ingested, events dropped; logged and emitted as stats frames"
    }
    fn role(&self) -> Role {
        Role::Producer
    }
    fn input(&self) -> Option<EventType> {
        None
    }
    fn output(&self) -> Option<EventType> {
        Some(stats_frame_events())
    }
    fn settings(&self) -> &'static [SettingDoc] {
        &[
            SettingDoc { name: "frame_ms", required: false, help: "the frame (default 5000)" },
            SettingDoc {
                name: "output",
                required: false,
                help: "where each frame is written besides being emitted: \"log\" (default, stderr), \"stdout\" or \"none\"",
            },
        ]
    }
    fn accepts_external_subscribers(&self) -> bool {
        true
    }
    fn check_settings(&self, stage: &StageDecl) -> Result<(), String> {
        StatisticsSettings::checked(stage).map(|_| ())
    }
    fn build(
        &self,
        stage: &StageDecl,
        pipeline: &mut Pipeline,
        context: &BuildContext,
    ) -> Result<(), String> {
        let (frame, output) = StatisticsSettings::checked(stage)?;
        let hub = StatsHub::for_pipeline(&context.pipeline);
        let sequence = Arc::new(AtomicU64::new(0));
        let id = stage.id.clone();
        let config = pipeline
            .producer(&stage.id, move || Statistics::new(hub.clone(), &id, frame, output, sequence.clone()));
        config.buffer(STATISTICS_BUFFER, BufferKeep::Last);
        configure(stage, config, &DispatcherChoices::cloneable(), None)
    }
}
