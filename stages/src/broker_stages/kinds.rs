//! The broker stage kinds: `broker_publish`, `broker_tweets`, `broker_stats`, `broker_subscribe`.
//!
//! Every kind takes `addr` (default `127.0.0.1:8000`), `token`,
//! `retry_initial_ms` (100) and `retry_max_ms` (5000). Checking a file
//! validates the settings only; stages connect when the pipeline starts.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use stageflow::Pipeline;
use stageflow::config::{
    BuildContext, DispatcherChoices, EventType, Role, SettingDoc, StageDecl, StageKind, configure,
};

use super::publish::{
    PublishOptions, PublishStage, PublishStats, StatsEncoder, TextEncoder, TweetEncoder, Wrap,
};
use super::subscribe::{Emit, SubscribeOptions, SubscribeStage, SubscribeStats};
use crate::analysis::kinds::{scored_tweet_events, stats_frame_events};
use crate::broker::DEFAULT_WINDOW;
use crate::broker::protocol::{MAX_ID_LEN, MAX_PRIORITY, MAX_WINDOW, check_name};

/// Where a broker listens unless `addr` says otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8000";
/// Priority of published events unless `priority` says otherwise.
pub const DEFAULT_PRIORITY: u8 = 5;
/// `pub`s awaiting their `ok` at once unless `max_outstanding` says otherwise.
pub const DEFAULT_MAX_OUTSTANDING: usize = 64;
/// Most `pub`s awaiting their `ok` at once.
pub const MAX_OUTSTANDING: usize = 10_000;

fn text_events() -> EventType {
    EventType::of::<String>("text")
}

fn default_addr() -> String {
    DEFAULT_ADDR.into()
}
fn default_retry_initial_ms() -> u64 {
    100
}
fn default_retry_max_ms() -> u64 {
    5000
}
fn default_priority() -> u8 {
    DEFAULT_PRIORITY
}
fn default_max_outstanding() -> usize {
    DEFAULT_MAX_OUTSTANDING
}

/// The settings every broker kind has.
#[derive(Deserialize)]
struct ConnectSettings {
    #[serde(default = "default_addr")]
    addr: String,
    token: Option<String>,
    #[serde(default = "default_retry_initial_ms")]
    retry_initial_ms: u64,
    #[serde(default = "default_retry_max_ms")]
    retry_max_ms: u64,
}

impl ConnectSettings {
    fn check(&self) -> Result<(), String> {
        check_addr(&self.addr)?;
        if let Some(token) = &self.token
            && (token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err("`token` must be one word: no spaces or control characters".into());
        }
        if self.retry_initial_ms == 0 {
            return Err("`retry_initial_ms` must be at least 1".into());
        }
        if self.retry_max_ms < self.retry_initial_ms {
            return Err(format!(
                "`retry_max_ms` ({}) must be at least `retry_initial_ms` ({})",
                self.retry_max_ms, self.retry_initial_ms
            ));
        }
        Ok(())
    }

    fn retry(&self) -> (Duration, Duration) {
        (Duration::from_millis(self.retry_initial_ms), Duration::from_millis(self.retry_max_ms))
    }
}

/// Checks `HOST:PORT` without resolving anything.
fn check_addr(addr: &str) -> Result<(), String> {
    let valid = addr.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains(char::is_whitespace) && port.parse::<u16>().is_ok()
    });
    if valid {
        Ok(())
    } else {
        Err(format!("`addr` must be HOST:PORT, e.g. \"{DEFAULT_ADDR}\"; got \"{addr}\""))
    }
}

fn check_priority(priority: u8) -> Result<(), String> {
    if priority > MAX_PRIORITY {
        return Err(format!("`priority` must be from 0 to {MAX_PRIORITY}, got {priority}"));
    }
    Ok(())
}

fn check_topic(key: &str, topic: &str) -> Result<(), String> {
    check_name("topic", topic).map_err(|why| format!("`{key}`: {why}"))
}

fn check_max_outstanding(max: usize) -> Result<(), String> {
    if !(1..=MAX_OUTSTANDING).contains(&max) {
        return Err(format!("`max_outstanding` must be from 1 to {MAX_OUTSTANDING}, got {max}"));
    }
    Ok(())
}

fn publish_options(connect: &ConnectSettings, max_outstanding: usize) -> PublishOptions {
    let (retry_initial, retry_max) = connect.retry();
    PublishOptions {
        addr: connect.addr.clone(),
        token: connect.token.clone(),
        max_outstanding,
        retry_initial,
        retry_max,
    }
}

/// When this build happened, in hex milliseconds: keeps generated ids of different runs apart.
fn run_token() -> String {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis());
    format!("{millis:x}")
}

const CONNECT_DOCS: [SettingDoc; 4] = [
    SettingDoc { name: "addr", required: false, help: "the broker's HOST:PORT (default \"127.0.0.1:8000\")" },
    SettingDoc {
        name: "token",
        required: false,
        help: "shared secret sent with `auth` (when the broker has --token)",
    },
    SettingDoc {
        name: "retry_initial_ms",
        required: false,
        help: "first wait before reconnecting, doubling each time (default 100)",
    },
    SettingDoc {
        name: "retry_max_ms",
        required: false,
        help: "longest wait between reconnects (default 5000)",
    },
];

const PRIORITY_DOC: SettingDoc = SettingDoc {
    name: "priority",
    required: false,
    help: "priority of the events published, 0-9 (default 5)",
};
const MAX_OUTSTANDING_DOC: SettingDoc = SettingDoc {
    name: "max_outstanding",
    required: false,
    help: "pubs sent before their ok came back, at most (default 64)",
};

// ---------------------------------------------------------------- broker_publish

/// `kind = "broker_publish"`: publishes lines of text to a topic.
pub struct BrokerPublishKind;

#[derive(Deserialize)]
struct PublishSettings {
    #[serde(flatten)]
    connect: ConnectSettings,
    topic: String,
    #[serde(default = "default_priority")]
    priority: u8,
    #[serde(default = "default_wrap")]
    wrap: String,
    id_prefix: Option<String>,
    #[serde(default = "default_max_outstanding")]
    max_outstanding: usize,
}

fn default_wrap() -> String {
    "auto".into()
}

impl PublishSettings {
    fn checked(stage: &StageDecl) -> Result<(PublishSettings, Wrap), String> {
        let settings: PublishSettings = stage.settings_as()?;
        settings.connect.check()?;
        check_topic("topic", &settings.topic)?;
        check_priority(settings.priority)?;
        check_max_outstanding(settings.max_outstanding)?;
        if let Some(prefix) = &settings.id_prefix
            && (prefix.is_empty()
                || prefix.len() > MAX_ID_LEN / 2
                || prefix.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(format!(
                "`id_prefix` must be 1 to {} bytes without spaces or control characters",
                MAX_ID_LEN / 2
            ));
        }
        let wrap = Wrap::named(&settings.wrap)?;
        Ok((settings, wrap))
    }
}

impl StageKind for BrokerPublishKind {
    fn name(&self) -> &'static str {
        "broker_publish"
    }
    fn summary(&self) -> &'static str {
        "publishes lines of text to a broker topic (an event line as is, other lines wrapped); waits for each ok"
    }
    fn role(&self) -> Role {
        Role::Consumer
    }
    fn input(&self) -> Option<EventType> {
        Some(text_events())
    }
    fn output(&self) -> Option<EventType> {
        None
    }
    fn settings(&self) -> &'static [SettingDoc] {
        const DOCS: [SettingDoc; 9] = [
            CONNECT_DOCS[0],
            CONNECT_DOCS[1],
            CONNECT_DOCS[2],
            CONNECT_DOCS[3],
            SettingDoc {
                name: "topic",
                required: true,
                help: "the topic to publish to (created by the first pub)",
            },
            PRIORITY_DOC,
            SettingDoc {
                name: "wrap",
                required: false,
                help: "\"auto\" (default): a line that is an event {\"id\",\"priority\",\"msg\"} goes as is, \
                       others become {\"id\": <id_prefix>-<n>, \"priority\", \"msg\": <the line's JSON, or the line as a string>}; \
                       \"always\": wrap every line; \"never\": skip (and log) lines that are not events",
            },
            SettingDoc {
                name: "id_prefix",
                required: false,
                help: "ids of wrapped lines are <id_prefix>-<n> (default <stage id>-<start time in hex ms>)",
            },
            MAX_OUTSTANDING_DOC,
        ];
        &DOCS
    }
    fn check_settings(&self, stage: &StageDecl) -> Result<(), String> {
        PublishSettings::checked(stage).map(|_| ())
    }
    fn build(&self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let (settings, wrap) = PublishSettings::checked(stage)?;
        let options = publish_options(&settings.connect, settings.max_outstanding);
        let prefix = settings.id_prefix.clone().unwrap_or_else(|| format!("{}-{}", stage.id, run_token()));
        let (id, topic, priority) = (stage.id.clone(), settings.topic.clone(), settings.priority);
        let (next, stats) = (Arc::new(AtomicU64::new(0)), Arc::new(PublishStats::default()));
        let config = pipeline.consumer(&stage.id, move || {
            let encoder = TextEncoder::new(&id, &topic, priority, wrap, &prefix, next.clone());
            PublishStage::new(&id, options.clone(), encoder, stats.clone())
        });
        configure(stage, config, &DispatcherChoices::demand_only(), None)
    }
}

// ---------------------------------------------------------------- broker_tweets

/// `kind = "broker_tweets"`: publishes scored tweets to `tweets` and their users to `users`.
pub struct BrokerTweetsKind;

#[derive(Deserialize)]
struct TweetsSettings {
    #[serde(flatten)]
    connect: ConnectSettings,
    #[serde(default = "default_tweets_topic")]
    tweets_topic: String,
    #[serde(default = "default_users_topic")]
    users_topic: String,
    #[serde(default = "default_priority")]
    priority: u8,
    #[serde(default = "default_max_outstanding")]
    max_outstanding: usize,
}

fn default_tweets_topic() -> String {
    "tweets".into()
}
fn default_users_topic() -> String {
    "users".into()
}

impl TweetsSettings {
    fn checked(stage: &StageDecl) -> Result<TweetsSettings, String> {
        let settings: TweetsSettings = stage.settings_as()?;
        settings.connect.check()?;
        check_topic("tweets_topic", &settings.tweets_topic)?;
        check_topic("users_topic", &settings.users_topic)?;
        check_priority(settings.priority)?;
        check_max_outstanding(settings.max_outstanding)?;
        Ok(settings)
    }
}

impl StageKind for BrokerTweetsKind {
    fn name(&self) -> &'static str {
        "broker_tweets"
    }
    fn summary(&self) -> &'static str {
        "publishes each scored tweet's document to `tweets` and its user's to `users`, ids = id_str"
    }
    fn role(&self) -> Role {
        Role::Consumer
    }
    fn input(&self) -> Option<EventType> {
        Some(scored_tweet_events())
    }
    fn output(&self) -> Option<EventType> {
        None
    }
    fn settings(&self) -> &'static [SettingDoc] {
        const DOCS: [SettingDoc; 8] = [
            CONNECT_DOCS[0],
            CONNECT_DOCS[1],
            CONNECT_DOCS[2],
            CONNECT_DOCS[3],
            SettingDoc {
                name: "tweets_topic",
                required: false,
                help: "topic of the tweet documents (default \"tweets\")",
            },
            SettingDoc {
                name: "users_topic",
                required: false,
                help: "topic of the user documents (default \"users\")",
            },
            PRIORITY_DOC,
            MAX_OUTSTANDING_DOC,
        ];
        &DOCS
    }
    fn check_settings(&self, stage: &StageDecl) -> Result<(), String> {
        TweetsSettings::checked(stage).map(|_| ())
    }
    fn build(&self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let settings = TweetsSettings::checked(stage)?;
        let options = publish_options(&settings.connect, settings.max_outstanding);
        let id = stage.id.clone();
        let stats = Arc::new(PublishStats::default());
        let config = pipeline.consumer(&stage.id, move || {
            let encoder = TweetEncoder::new(&settings.tweets_topic, &settings.users_topic, settings.priority);
            PublishStage::new(&id, options.clone(), encoder, stats.clone())
        });
        configure(stage, config, &DispatcherChoices::demand_only(), None)
    }
}

// ---------------------------------------------------------------- broker_stats

/// `kind = "broker_stats"`: publishes stats frames to `logger_stats`, `tweets_stats` and `users_stats`.
pub struct BrokerStatsKind;

#[derive(Deserialize)]
struct StatsSettings {
    #[serde(flatten)]
    connect: ConnectSettings,
    #[serde(default = "default_logger_stats")]
    logger_topic: String,
    #[serde(default = "default_tweets_stats")]
    tweets_topic: String,
    #[serde(default = "default_users_stats")]
    users_topic: String,
    #[serde(default = "default_priority")]
    priority: u8,
    #[serde(default = "default_max_outstanding")]
    max_outstanding: usize,
}

fn default_logger_stats() -> String {
    "logger_stats".into()
}
fn default_tweets_stats() -> String {
    "tweets_stats".into()
}
fn default_users_stats() -> String {
    "users_stats".into()
}

impl StatsSettings {
    fn checked(stage: &StageDecl) -> Result<StatsSettings, String> {
        let settings: StatsSettings = stage.settings_as()?;
        settings.connect.check()?;
        check_topic("logger_topic", &settings.logger_topic)?;
        check_topic("tweets_topic", &settings.tweets_topic)?;
        check_topic("users_topic", &settings.users_topic)?;
        check_priority(settings.priority)?;
        check_max_outstanding(settings.max_outstanding)?;
        Ok(settings)
    }
}

impl StageKind for BrokerStatsKind {
    fn name(&self) -> &'static str {
        "broker_stats"
    }
    fn summary(&self) -> &'static str {
        "publishes each stats frame to logger_stats, tweets_stats and users_stats"
    }
    fn role(&self) -> Role {
        Role::Consumer
    }
    fn input(&self) -> Option<EventType> {
        Some(stats_frame_events())
    }
    fn output(&self) -> Option<EventType> {
        None
    }
    fn settings(&self) -> &'static [SettingDoc] {
        const DOCS: [SettingDoc; 9] = [
            CONNECT_DOCS[0],
            CONNECT_DOCS[1],
            CONNECT_DOCS[2],
            CONNECT_DOCS[3],
            SettingDoc {
                name: "logger_topic",
                required: false,
                help: "topic of logger timings, crashes and drops (default \"logger_stats\")",
            },
            SettingDoc {
                name: "tweets_topic",
                required: false,
                help: "topic of tweets insert timings and tweets ingested (default \"tweets_stats\")",
            },
            SettingDoc {
                name: "users_topic",
                required: false,
                help: "topic of users insert timings and users ingested (default \"users_stats\")",
            },
            PRIORITY_DOC,
            MAX_OUTSTANDING_DOC,
        ];
        &DOCS
    }
    fn check_settings(&self, stage: &StageDecl) -> Result<(), String> {
        StatsSettings::checked(stage).map(|_| ())
    }
    fn build(&self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let settings = StatsSettings::checked(stage)?;
        let options = publish_options(&settings.connect, settings.max_outstanding);
        let (id, run) = (stage.id.clone(), run_token());
        let stats = Arc::new(PublishStats::default());
        let config = pipeline.consumer(&stage.id, move || {
            let encoder = StatsEncoder::new(
                &settings.logger_topic,
                &settings.tweets_topic,
                &settings.users_topic,
                settings.priority,
                &run,
            );
            PublishStage::new(&id, options.clone(), encoder, stats.clone())
        });
        configure(stage, config, &DispatcherChoices::demand_only(), None)
    }
}

// ---------------------------------------------------------------- broker_subscribe

/// `kind = "broker_subscribe"`: emits a topic's events as text, acking them as demand returns.
pub struct BrokerSubscribeKind;

#[derive(Deserialize)]
struct SubscribeSettings {
    #[serde(flatten)]
    connect: ConnectSettings,
    topic: String,
    name: Option<String>,
    #[serde(default = "default_window")]
    window: usize,
    #[serde(default = "default_emit")]
    emit: String,
}

fn default_window() -> usize {
    DEFAULT_WINDOW
}
fn default_emit() -> String {
    "msg".into()
}

impl SubscribeSettings {
    fn checked(stage: &StageDecl) -> Result<SubscribeOptions, String> {
        let settings: SubscribeSettings = stage.settings_as()?;
        settings.connect.check()?;
        check_topic("topic", &settings.topic)?;
        if let Some(name) = &settings.name {
            check_name("subscriber name", name).map_err(|why| format!("`name`: {why}"))?;
        }
        if !(1..=MAX_WINDOW).contains(&settings.window) {
            return Err(format!("`window` must be from 1 to {MAX_WINDOW}, got {}", settings.window));
        }
        let emit = Emit::named(&settings.emit)?;
        let (retry_initial, retry_max) = settings.connect.retry();
        Ok(SubscribeOptions {
            addr: settings.connect.addr,
            token: settings.connect.token,
            topic: settings.topic,
            name: settings.name,
            window: settings.window,
            emit,
            retry_initial,
            retry_max,
        })
    }
}

impl StageKind for BrokerSubscribeKind {
    fn name(&self) -> &'static str {
        "broker_subscribe"
    }
    fn summary(&self) -> &'static str {
        "emits a broker topic's events as text against demand; acks them when the pipeline asks for more"
    }
    fn role(&self) -> Role {
        Role::Producer
    }
    fn input(&self) -> Option<EventType> {
        None
    }
    fn output(&self) -> Option<EventType> {
        Some(text_events())
    }
    fn settings(&self) -> &'static [SettingDoc] {
        const DOCS: [SettingDoc; 8] = [
            CONNECT_DOCS[0],
            CONNECT_DOCS[1],
            CONNECT_DOCS[2],
            CONNECT_DOCS[3],
            SettingDoc {
                name: "topic",
                required: true,
                help: "the topic to subscribe to (waits until it exists)",
            },
            SettingDoc {
                name: "name",
                required: false,
                help: "durable subscriber name: unacked events wait at the broker across reconnects and restarts (default: anonymous)",
            },
            SettingDoc {
                name: "window",
                required: false,
                help: "deliveries awaiting an ack at once, 1-10000 (default 10)",
            },
            SettingDoc {
                name: "emit",
                required: false,
                help: "\"msg\" (default): the event's msg (a string as is, other JSON as text); \"event\": the whole event as JSON",
            },
        ];
        &DOCS
    }
    fn check_settings(&self, stage: &StageDecl) -> Result<(), String> {
        SubscribeSettings::checked(stage).map(|_| ())
    }
    fn build(&self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let options = SubscribeSettings::checked(stage)?;
        let id = stage.id.clone();
        let stats = Arc::new(SubscribeStats::default());
        let config =
            pipeline.producer(&stage.id, move || SubscribeStage::new(&id, options.clone(), stats.clone()));
        configure(stage, config, &DispatcherChoices::cloneable(), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_host_and_port() {
        assert!(check_addr("127.0.0.1:8000").is_ok());
        assert!(check_addr("[::1]:8000").is_ok());
        assert!(check_addr("broker.local:9000").is_ok());
        for bad in ["127.0.0.1", ":8000", "host:port", "host:70000", "a b:1"] {
            assert!(check_addr(bad).unwrap_err().contains("HOST:PORT"), "{bad}");
        }
    }
}
