//! The storage stage kinds: `batcher`, `sqlite_sink`, `mongo_sink`, `null_sink`.
//!
//! The batcher's one subscription is made in manual demand mode: the
//! batcher does its own asking (see [`super::batcher`]). A sink's
//! subscription that leaves the credit bounds at their defaults gets
//! `max_demand = 1, min_demand = 0`: one batch at a time.

use std::time::Duration;

use serde::Deserialize;
use stageflow::config::{
    BuildContext, DispatcherChoices, EventType, Role, SettingDoc, StageDecl, StageKind, configure,
};
use stageflow::{DemandBounds, Pipeline, SubscribeOptions};

use super::batcher::{Batch, Batcher, DEFAULT_BATCH_SIZE, DEFAULT_FLUSH_INTERVAL};
use super::metrics::{SinkMetrics, publish};
use super::mongo::{DEFAULT_TIMEOUT, MongoConfig, MongoSink};
use super::null::NullSink;
use super::sqlite::{self, DEFAULT_FILE, SqliteSink};
use super::{Sink, SinkOptions, SinkStage};
use crate::analysis::StatsHub;
use crate::scored::ScoredTweet;

/// The events the analysis half emits and the batcher takes.
pub fn scored_tweet_events() -> EventType {
    EventType::of::<ScoredTweet>("scored tweet")
}

/// The events the batcher emits and the sinks take.
pub fn batch_events() -> EventType {
    EventType::of::<Batch>("batch of scored tweets")
}

/// A duration setting given either as text (`"3s"`, `"500ms"`) or in milliseconds.
fn duration_setting(
    text: Option<&str>,
    millis: Option<u64>,
    names: (&str, &str),
    default: Duration,
) -> Result<Duration, String> {
    let duration = match (text, millis) {
        (Some(_), Some(_)) => return Err(format!("set `{}` or `{}`, not both", names.0, names.1)),
        (Some(text), None) => humantime::parse_duration(text)
            .map_err(|error| format!("`{}` = \"{text}\": {error} (e.g. \"3s\", \"500ms\")", names.0))?,
        (None, Some(millis)) => Duration::from_millis(millis),
        (None, None) => default,
    };
    if duration.is_zero() {
        return Err(format!("`{}` must be longer than 0", names.0));
    }
    Ok(duration)
}

/// `kind = "batcher"`: groups scored tweets into batches by size or age.
pub struct BatcherKind;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatcherSettings {
    batch_size: Option<usize>,
    flush_interval: Option<String>,
    flush_interval_ms: Option<u64>,
}

impl BatcherSettings {
    fn resolve(&self) -> Result<(usize, Duration), String> {
        let batch_size = self.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
        if batch_size == 0 {
            return Err("`batch_size` must be at least 1".into());
        }
        let interval = duration_setting(
            self.flush_interval.as_deref(),
            self.flush_interval_ms,
            ("flush_interval", "flush_interval_ms"),
            DEFAULT_FLUSH_INTERVAL,
        )?;
        Ok((batch_size, interval))
    }
}

impl StageKind for BatcherKind {
    fn name(&self) -> &'static str {
        "batcher"
    }
    fn summary(&self) -> &'static str {
        "groups scored tweets into batches of `batch_size`, or what came within `flush_interval`"
    }
    fn role(&self) -> Role {
        Role::ProducerConsumer
    }
    fn input(&self) -> Option<EventType> {
        Some(scored_tweet_events())
    }
    fn output(&self) -> Option<EventType> {
        Some(batch_events())
    }
    fn settings(&self) -> &'static [SettingDoc] {
        &[
            SettingDoc { name: "batch_size", required: false, help: "largest batch (default 200)" },
            SettingDoc {
                name: "flush_interval",
                required: false,
                help: "longest a tweet waits for its batch, e.g. \"3s\" (default 3s)",
            },
            SettingDoc { name: "flush_interval_ms", required: false, help: "the same in milliseconds" },
        ]
    }
    fn check_settings(&self, stage: &StageDecl) -> Result<(), String> {
        check_batcher_shape(stage)?;
        stage.settings_as::<BatcherSettings>()?.resolve().map(|_| ())
    }
    fn build(&self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        check_batcher_shape(stage)?;
        let (batch_size, interval) = stage.settings_as::<BatcherSettings>()?.resolve()?;
        let config = pipeline.producer_consumer(&stage.id, move || Batcher::new(batch_size, interval));
        let upstream = &stage.subscribe_to[0];
        let mut options = SubscribeOptions::bounds(upstream.bounds).with_cancel(upstream.cancel).manual();
        options.partition = upstream.partition;
        config.subscribe_to(&upstream.producer, options);
        let mut rest = stage.clone();
        rest.subscribe_to.clear();
        configure(&rest, config, &DispatcherChoices::cloneable(), None)
    }
}

/// A batcher takes one upstream (its demand follows its batches), runs as one stage, no selector.
fn check_batcher_shape(stage: &StageDecl) -> Result<(), String> {
    if stage.subscribe_to.len() != 1 {
        return Err(format!(
            "a batcher subscribes to exactly one stage (it asks it for a batch at a time), got {}",
            stage.subscribe_to.len()
        ));
    }
    if stage.subscribe_to[0].selector.is_some() {
        return Err("this stage kind has no selectors".into());
    }
    if stage.workers.is_some() {
        return Err("a batcher runs as one stage: remove `workers`".into());
    }
    Ok(())
}

/// Settings every sink kind has.
#[derive(Default)]
struct CommonSinkSettings {
    user_batch_size: Option<usize>,
    user_flush_interval: Option<String>,
    user_flush_ms: Option<u64>,
}

const COMMON_SINK_SETTINGS: [SettingDoc; 3] = [
    SettingDoc {
        name: "user_batch_size",
        required: false,
        help: "engagement upserts are written at this many users (default 100)",
    },
    SettingDoc {
        name: "user_flush_interval",
        required: false,
        help: "... or when the oldest waited this long, e.g. \"3s\" (default 3s)",
    },
    SettingDoc { name: "user_flush_ms", required: false, help: "the same in milliseconds" },
];

impl CommonSinkSettings {
    fn options(&self) -> Result<SinkOptions, String> {
        let defaults = SinkOptions::default();
        let user_batch_size = self.user_batch_size.unwrap_or(defaults.user_batch_size);
        if user_batch_size == 0 {
            return Err("`user_batch_size` must be at least 1".into());
        }
        let user_flush_interval = duration_setting(
            self.user_flush_interval.as_deref(),
            self.user_flush_ms,
            ("user_flush_interval", "user_flush_ms"),
            defaults.user_flush_interval,
        )?;
        Ok(SinkOptions { user_batch_size, user_flush_interval, ..defaults })
    }
}

/// The stage with subscriptions at default bounds set to one batch at a time.
fn one_batch_at_a_time(stage: &StageDecl) -> StageDecl {
    let mut stage = stage.clone();
    for subscription in &mut stage.subscribe_to {
        if subscription.bounds == DemandBounds::default() {
            subscription.bounds = DemandBounds::new(1, 0).expect("1 / 0 are valid bounds");
        }
    }
    stage
}

/// Adds a sink stage running `make()` and publishes its metrics.
fn build_sink<S: Sink>(
    stage: &StageDecl,
    pipeline: &mut Pipeline,
    context: &BuildContext,
    kind: &'static str,
    options: SinkOptions,
    make: impl Fn() -> S + Send + Sync + 'static,
) -> Result<(), String> {
    let metrics = SinkMetrics::new();
    metrics.forward_to(StatsHub::for_pipeline(&context.pipeline).insert_timings());
    publish(&context.pipeline, &stage.id, kind, metrics.clone());
    let id = stage.id.clone();
    let config = pipeline.consumer(&stage.id, move || SinkStage::new(&id, make(), options, metrics.clone()));
    configure(&one_batch_at_a_time(stage), config, &DispatcherChoices::demand_only(), None)
}

/// `kind = "sqlite_sink"`: stores batches in a SQLite file under the data directory.
pub struct SqliteSinkKind;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SqliteSettings {
    file: Option<String>,
    user_batch_size: Option<usize>,
    user_flush_interval: Option<String>,
    user_flush_ms: Option<u64>,
}

impl SqliteSettings {
    fn options(&self) -> Result<SinkOptions, String> {
        CommonSinkSettings {
            user_batch_size: self.user_batch_size,
            user_flush_interval: self.user_flush_interval.clone(),
            user_flush_ms: self.user_flush_ms,
        }
        .options()
    }
}

impl StageKind for SqliteSinkKind {
    fn name(&self) -> &'static str {
        "sqlite_sink"
    }
    fn summary(&self) -> &'static str {
        "stores batches of scored tweets in tables tweets, users, users_engagements of a SQLite file"
    }
    fn role(&self) -> Role {
        Role::Consumer
    }
    fn input(&self) -> Option<EventType> {
        Some(batch_events())
    }
    fn output(&self) -> Option<EventType> {
        None
    }
    fn settings(&self) -> &'static [SettingDoc] {
        const SETTINGS: [SettingDoc; 4] = [
            SettingDoc {
                name: "file",
                required: false,
                help: "database file, relative to the data directory (default stageflow.db)",
            },
            COMMON_SINK_SETTINGS[0],
            COMMON_SINK_SETTINGS[1],
            COMMON_SINK_SETTINGS[2],
        ];
        &SETTINGS
    }
    fn check_settings(&self, stage: &StageDecl) -> Result<(), String> {
        stage.settings_as::<SqliteSettings>()?.options().map(|_| ())
    }
    fn build(
        &self,
        stage: &StageDecl,
        pipeline: &mut Pipeline,
        context: &BuildContext,
    ) -> Result<(), String> {
        let settings: SqliteSettings = stage.settings_as()?;
        let options = settings.options()?;
        let path = context.data_dir.join(settings.file.as_deref().unwrap_or(DEFAULT_FILE));
        // Fail before anything starts if the file cannot be created or opened.
        sqlite::open(&path).map_err(|error| error.message)?;
        build_sink(stage, pipeline, context, "sqlite_sink", options, move || SqliteSink::new(path.clone()))
    }
}

/// `kind = "mongo_sink"`: stores batches in MongoDB.
pub struct MongoSinkKind;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MongoSettings {
    uri: String,
    database: Option<String>,
    timeout: Option<String>,
    user_batch_size: Option<usize>,
    user_flush_interval: Option<String>,
    user_flush_ms: Option<u64>,
}

impl MongoSettings {
    fn resolve(&self) -> Result<(MongoConfig, SinkOptions), String> {
        let timeout = duration_setting(self.timeout.as_deref(), None, ("timeout", ""), DEFAULT_TIMEOUT)?;
        let config = MongoConfig { uri: self.uri.clone(), database: self.database.clone(), timeout };
        config.database_name()?;
        let common = CommonSinkSettings {
            user_batch_size: self.user_batch_size,
            user_flush_interval: self.user_flush_interval.clone(),
            user_flush_ms: self.user_flush_ms,
        };
        Ok((config, common.options()?))
    }
}

impl StageKind for MongoSinkKind {
    fn name(&self) -> &'static str {
        "mongo_sink"
    }
    fn summary(&self) -> &'static str {
        "stores batches of scored tweets in MongoDB collections tweets, users, users_engagements"
    }
    fn role(&self) -> Role {
        Role::Consumer
    }
    fn input(&self) -> Option<EventType> {
        Some(batch_events())
    }
    fn output(&self) -> Option<EventType> {
        None
    }
    fn settings(&self) -> &'static [SettingDoc] {
        const SETTINGS: [SettingDoc; 6] = [
            SettingDoc {
                name: "uri",
                required: true,
                help: "connection string, e.g. \"${MONGODB_URI}\" or \"mongodb://127.0.0.1:27017/tweets\"",
            },
            SettingDoc {
                name: "database",
                required: false,
                help: "database name (default: the URI's, else stageflow)",
            },
            SettingDoc {
                name: "timeout",
                required: false,
                help: "how long one try waits for a server, e.g. \"5s\" (default 5s; failed tries are retried)",
            },
            COMMON_SINK_SETTINGS[0],
            COMMON_SINK_SETTINGS[1],
            COMMON_SINK_SETTINGS[2],
        ];
        &SETTINGS
    }
    fn check_settings(&self, stage: &StageDecl) -> Result<(), String> {
        stage.settings_as::<MongoSettings>()?.resolve().map(|_| ())
    }
    fn build(
        &self,
        stage: &StageDecl,
        pipeline: &mut Pipeline,
        context: &BuildContext,
    ) -> Result<(), String> {
        let (config, options) = stage.settings_as::<MongoSettings>()?.resolve()?;
        build_sink(stage, pipeline, context, "mongo_sink", options, move || MongoSink::new(config.clone()))
    }
}

/// `kind = "null_sink"`: counts batches and discards them (for benchmarks).
pub struct NullSinkKind;

impl StageKind for NullSinkKind {
    fn name(&self) -> &'static str {
        "null_sink"
    }
    fn summary(&self) -> &'static str {
        "counts batches of scored tweets and discards them (for benchmarks)"
    }
    fn role(&self) -> Role {
        Role::Consumer
    }
    fn input(&self) -> Option<EventType> {
        Some(batch_events())
    }
    fn output(&self) -> Option<EventType> {
        None
    }
    fn settings(&self) -> &'static [SettingDoc] {
        &[]
    }
    fn check_settings(&self, _: &StageDecl) -> Result<(), String> {
        Ok(())
    }
    fn build(
        &self,
        stage: &StageDecl,
        pipeline: &mut Pipeline,
        context: &BuildContext,
    ) -> Result<(), String> {
        build_sink(stage, pipeline, context, "null_sink", SinkOptions::default(), || NullSink)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_come_as_text_or_milliseconds_not_both_never_zero() {
        let names = ("flush_interval", "flush_interval_ms");
        let default = Duration::from_secs(3);
        assert_eq!(duration_setting(None, None, names, default), Ok(default));
        assert_eq!(duration_setting(Some("250ms"), None, names, default), Ok(Duration::from_millis(250)));
        assert_eq!(duration_setting(None, Some(1500), names, default), Ok(Duration::from_millis(1500)));
        assert!(duration_setting(Some("1s"), Some(1), names, default).unwrap_err().contains("not both"));
        assert!(duration_setting(Some("soon"), None, names, default).unwrap_err().contains("flush_interval"));
        assert!(duration_setting(None, Some(0), names, default).unwrap_err().contains("longer than 0"));
    }
}
