//! The publishing sinks: a consumer that turns each batch of events into
//! `pub` lines ([`Encode`]) and returns only once the broker accepted them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};
use stageflow::{Consumer, Events};

use super::client::{ClientError, Connection, Incoming};
use crate::analysis::StatsFrame;
use crate::backoff::backoff;
use crate::broker::protocol::parse_event;
use crate::scored::ScoredTweet;
use crate::storage::documents::split_batch;
use std::time::{SystemTime, UNIX_EPOCH};

use stageflow::config::{BuildContext, DispatcherChoices, Kind, StageDecl, configure, kind, settings};
use stageflow::{Nothing, Pipeline};

use super::client::ConnectSettings;
use crate::broker::protocol::{MAX_ID_LEN, MAX_PRIORITY, check_name};

/// One event ready to publish: its topic, id and the JSON of the `pub` line.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The topic.
    pub topic: String,
    /// The event id (also inside `json`), for messages.
    pub id: String,
    /// `{"id": ..., "priority": ..., "msg": ...}` on one line.
    pub json: String,
}

impl Outgoing {
    /// An event `{"id", "priority", "msg"}` for `topic`.
    pub fn new(topic: &str, id: &str, priority: u8, msg: &Value) -> Outgoing {
        #[derive(Serialize)]
        struct Event<'a> {
            id: &'a str,
            priority: u8,
            msg: &'a Value,
        }
        // A `Value` and a string always serialise; JSON escapes line breaks.
        let json = serde_json::to_string(&Event { id, priority, msg }).unwrap_or_default();
        Outgoing { topic: topic.to_string(), id: id.to_string(), json }
    }
}

/// Turns the events a publishing stage takes into broker events.
pub trait Encode: Send + 'static {
    /// The events the stage takes.
    type In: Send + 'static;
    /// Appends the broker events for `batch` to `out`; returns how many inputs it could not encode.
    fn encode(&mut self, batch: Vec<Self::In>, out: &mut Vec<Outgoing>) -> u64;
}

/// What a publishing stage did, shared across its restarts.
#[derive(Debug, Default)]
pub struct PublishStats {
    /// Events the broker accepted with `ok`.
    pub published: AtomicU64,
    /// Events the broker refused with `error: ...`, or that could not be encoded (skipped, logged).
    pub rejected: AtomicU64,
    /// Connection failures retried.
    pub retries: AtomicU64,
}

impl PublishStats {
    /// Events accepted so far.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Events refused or skipped so far.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Connection failures retried so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
}

/// Where and how a publishing stage talks to the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOptions {
    /// `HOST:PORT` of the broker.
    pub addr: String,
    /// The shared secret, if the broker wants one.
    pub token: Option<String>,
    /// `pub`s sent before their `ok` came back, at most.
    pub max_outstanding: usize,
    /// First wait before reconnecting; doubles each time.
    pub retry_initial: Duration,
    /// Longest wait between reconnects.
    pub retry_max: Duration,
}

/// A consumer publishing what it takes to the broker. `handle_events`
/// returns, and so its demand comes back, only once the broker answered
/// every `pub` of the batch; connection failures are retried with backoff
/// from the first unanswered `pub`, holding the credit, so nothing is
/// dropped (an event whose `ok` was lost with the connection is published
/// again: at least once, same id). A broker that refuses the token before
/// any event is taken fails the stage (and, past the restart limit, the
/// pipeline); one that starts refusing mid-stream is logged and retried.
pub struct PublishStage<E> {
    stage: String,
    options: PublishOptions,
    encoder: E,
    connection: Option<Connection>,
    stats: Arc<PublishStats>,
}

impl<E: Encode> PublishStage<E> {
    /// A stage `stage` publishing what `encoder` makes of its events.
    pub fn new(stage: &str, options: PublishOptions, encoder: E, stats: Arc<PublishStats>) -> Self {
        PublishStage { stage: stage.to_string(), options, encoder, connection: None, stats }
    }

    /// Connects unless connected, retrying transient failures with backoff;
    /// an error only for what retrying cannot fix (a wrong or missing token).
    pub async fn connect(&mut self) -> Result<(), ClientError> {
        let mut attempt = 0u32;
        while self.connection.is_none() {
            match Connection::open(
                &self.options.addr,
                self.options.token.as_deref(),
                1,
                self.options.max_outstanding + 16,
                &mut |_, _| {},
            )
            .await
            {
                Ok(connection) => self.connection = Some(connection),
                Err(error) if error.transient => {
                    attempt += 1;
                    self.wait_to_retry(attempt, &error, None).await;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Publishes every event, retrying failures until each got its reply.
    /// A failure retrying cannot fix is logged as an error and retried too
    /// (more slowly), so the events wait instead of being dropped.
    pub async fn publish_all(&mut self, events: &[Outgoing]) {
        let mut answered = 0;
        let mut attempt = 0u32;
        while answered < events.len() {
            match self.publish_from(&events[answered..], &mut answered).await {
                Ok(()) => return,
                Err(error) => {
                    self.connection = None;
                    attempt += 1;
                    self.wait_to_retry(attempt, &error, Some(events.len() - answered)).await;
                }
            }
        }
    }

    /// Logs a failure and waits before trying again.
    async fn wait_to_retry(&mut self, attempt: u32, error: &ClientError, waiting: Option<usize>) {
        self.stats.retries.fetch_add(1, Ordering::Relaxed);
        let (initial, max) = (self.options.retry_initial, self.options.retry_max);
        let wait = if error.transient { backoff(attempt, initial, max) } else { max };
        let waiting =
            waiting.map(|count| format!("; {count} event(s) wait for the broker")).unwrap_or_default();
        if error.transient {
            tracing::warn!(stage = %self.stage, attempt, wait = ?wait, "{error}{waiting}; retrying");
        } else {
            tracing::error!(stage = %self.stage, attempt, wait = ?wait, "{error}{waiting}; retrying");
        }
        tokio::time::sleep(wait).await;
    }

    /// Pipelines `pub`s (at most `max_outstanding` unanswered), counting each reply into `answered`.
    async fn publish_from(&mut self, events: &[Outgoing], answered: &mut usize) -> Result<(), ClientError> {
        if self.connection.is_none() {
            let connection = Connection::open(
                &self.options.addr,
                self.options.token.as_deref(),
                1,
                self.options.max_outstanding + 16,
                &mut |_, _| {},
            )
            .await?;
            self.connection = Some(connection);
        }
        let Some(connection) = self.connection.as_mut() else { return Ok(()) };
        let limit = self.options.max_outstanding.max(1);
        let (mut sent, mut replied) = (0, 0);
        while replied < events.len() {
            while sent < events.len() && sent - replied < limit {
                let event = &events[sent];
                connection.send(&format!("pub {} {}", event.topic, event.json)).await?;
                sent += 1;
            }
            connection.flush().await?;
            match connection.recv().await? {
                Incoming::Ok(_) => {
                    self.stats.published.fetch_add(1, Ordering::Relaxed);
                }
                Incoming::Error(why) => {
                    let event = &events[replied];
                    self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        stage = %self.stage, topic = %event.topic, id = %event.id,
                        "the broker refused the event: {why}"
                    );
                }
                // A publisher subscribes to nothing; a stray delivery is not a reply.
                Incoming::Event { .. } => continue,
            }
            replied += 1;
            *answered += 1;
        }
        Ok(())
    }

    /// What the stage did so far.
    pub fn stats(&self) -> Arc<PublishStats> {
        self.stats.clone()
    }
}

impl<E: Encode> Consumer for PublishStage<E> {
    type In = E::In;

    async fn handle_events(&mut self, events: &mut Events<E::In>) {
        if let Err(error) = self.connect().await {
            // Before any event is taken: the engine hands them all to the
            // restarted stage and, past its restart limit, fails the
            // pipeline with this message. Nothing is lost.
            panic!("stage '{}': {error}", self.stage);
        }
        let mut outgoing = Vec::with_capacity(events.remaining());
        let skipped = self.encoder.encode(events.take_batch(), &mut outgoing);
        self.stats.rejected.fetch_add(skipped, Ordering::Relaxed);
        self.publish_all(&outgoing).await;
    }
}

/// How `broker_publish` turns a line of text into an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrap {
    /// A line that is a valid event goes as it is; any other line is wrapped.
    Auto,
    /// Every line is wrapped, even one that looks like an event.
    Always,
    /// Every line must be a valid event; other lines are skipped and logged.
    Never,
}

impl Wrap {
    /// The mode named `name` (`auto`, `always`, `never`).
    pub fn named(name: &str) -> Result<Wrap, String> {
        match name {
            "auto" => Ok(Wrap::Auto),
            "always" => Ok(Wrap::Always),
            "never" => Ok(Wrap::Never),
            other => Err(format!("`wrap` must be \"auto\", \"always\" or \"never\", got \"{other}\"")),
        }
    }
}

/// Lines of text to events of one topic: passed through when a line is an
/// event, else wrapped as `{"id": "<prefix>-<n>", "priority": <priority>,
/// "msg": <the line's JSON value, or the line as a string when it is not JSON>}`.
pub struct TextEncoder {
    stage: String,
    topic: String,
    priority: u8,
    wrap: Wrap,
    id_prefix: String,
    /// Shared across restarts of the stage, so ids stay unique.
    next: Arc<AtomicU64>,
}

impl TextEncoder {
    /// Lines to events of `topic`; wrapped ones numbered from `next` after `id_prefix`.
    pub fn new(
        stage: &str,
        topic: &str,
        priority: u8,
        wrap: Wrap,
        id_prefix: &str,
        next: Arc<AtomicU64>,
    ) -> Self {
        TextEncoder {
            stage: stage.to_string(),
            topic: topic.to_string(),
            priority,
            wrap,
            id_prefix: id_prefix.to_string(),
            next,
        }
    }

    /// The event for one line, or why it has none.
    pub fn encode_line(&self, line: &str) -> Result<Outgoing, String> {
        if self.wrap != Wrap::Always {
            match parse_event(line.trim()) {
                Ok(event) => return Ok(Outgoing::new(&self.topic, &event.id, event.priority, &event.msg)),
                Err(why) if self.wrap == Wrap::Never => return Err(why),
                Err(_) => {}
            }
        }
        let msg = serde_json::from_str::<Value>(line).unwrap_or_else(|_| Value::String(line.to_string()));
        let id = format!("{}-{}", self.id_prefix, self.next.fetch_add(1, Ordering::Relaxed));
        Ok(Outgoing::new(&self.topic, &id, self.priority, &msg))
    }
}

impl Encode for TextEncoder {
    type In = String;

    fn encode(&mut self, batch: Vec<String>, out: &mut Vec<Outgoing>) -> u64 {
        let mut skipped = 0;
        for line in batch {
            match self.encode_line(&line) {
                Ok(event) => out.push(event),
                Err(why) => {
                    skipped += 1;
                    let shown: String = line.chars().take(80).collect();
                    tracing::warn!(stage = %self.stage, "skipped a line that is not an event ({why}): {shown:?}");
                }
            }
        }
        skipped
    }
}

/// Scored tweets to the `tweets` and `users` topics, split like the storage
/// sinks split them: the tweet document (with scores, `user_id` instead of
/// `user`) under the tweet's `id_str`, the user document under the user's
/// `id_str`; each id once per batch.
pub struct TweetEncoder {
    tweets_topic: String,
    users_topic: String,
    priority: u8,
}

impl TweetEncoder {
    /// Tweets to `tweets_topic`, users to `users_topic`, all at `priority`.
    pub fn new(tweets_topic: &str, users_topic: &str, priority: u8) -> Self {
        TweetEncoder {
            tweets_topic: tweets_topic.to_string(),
            users_topic: users_topic.to_string(),
            priority,
        }
    }
}

impl Encode for TweetEncoder {
    type In = ScoredTweet;

    fn encode(&mut self, batch: Vec<ScoredTweet>, out: &mut Vec<Outgoing>) -> u64 {
        let split = split_batch(&batch);
        for tweet in &split.tweets {
            out.push(Outgoing::new(&self.tweets_topic, &tweet.id, self.priority, &tweet.doc));
        }
        for user in &split.users {
            out.push(Outgoing::new(&self.users_topic, &user.id, self.priority, &user.doc));
        }
        0
    }
}

/// Stats frames to three topics: the logger's timings, crashes and drops to
/// `logger_stats`; the `tweets` insert timings and tweets ingested to
/// `tweets_stats`; the `users` ones to `users_stats`. Each message carries
/// the frame's `pipeline`, `sequence`, `at` and `frame_ms`; the event id is
/// `<pipeline>-<run>-<sequence>` (the run: when the stage was built).
pub struct StatsEncoder {
    logger_topic: String,
    tweets_topic: String,
    users_topic: String,
    priority: u8,
    run: String,
}

impl StatsEncoder {
    /// Frames to these three topics at `priority`; `run` keeps ids of different runs apart.
    pub fn new(logger_topic: &str, tweets_topic: &str, users_topic: &str, priority: u8, run: &str) -> Self {
        StatsEncoder {
            logger_topic: logger_topic.to_string(),
            tweets_topic: tweets_topic.to_string(),
            users_topic: users_topic.to_string(),
            priority,
            run: run.to_string(),
        }
    }

    /// The three messages of one frame: (logger, tweets, users).
    pub fn messages(frame: &StatsFrame) -> (Value, Value, Value) {
        let head = || {
            let mut map = Map::new();
            map.insert("pipeline".into(), Value::String(frame.pipeline.clone()));
            map.insert("sequence".into(), Value::from(frame.sequence));
            map.insert("at".into(), Value::String(frame.at.clone()));
            map.insert("frame_ms".into(), Value::from(frame.frame_ms));
            map
        };
        let mut logger = head();
        logger.insert("logger".into(), to_json(&frame.logger));
        logger.insert("crashes".into(), Value::from(frame.crashes));
        logger.insert("lost".into(), Value::from(frame.lost));
        logger.insert("dropped".into(), Value::from(frame.dropped));
        logger.insert("dropped_by".into(), to_json(&frame.dropped_by));
        logger.insert("dead_lettered".into(), to_json(&frame.dead_lettered));
        let mut tweets = head();
        tweets.insert("insert".into(), to_json(&frame.tweets_insert));
        tweets.insert("ingested".into(), Value::from(frame.tweets_ingested));
        let mut users = head();
        users.insert("insert".into(), to_json(&frame.users_insert));
        users.insert("ingested".into(), Value::from(frame.users_ingested));
        (Value::Object(logger), Value::Object(tweets), Value::Object(users))
    }
}

/// A field of a frame as JSON (`null` if it cannot be: it always can).
fn to_json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

impl Encode for StatsEncoder {
    type In = StatsFrame;

    fn encode(&mut self, batch: Vec<StatsFrame>, out: &mut Vec<Outgoing>) -> u64 {
        for frame in batch {
            let pipeline: String = frame
                .pipeline
                .chars()
                .map(|c| if c.is_whitespace() || c.is_control() { '_' } else { c })
                .collect();
            let id = format!("{pipeline}-{}-{}", self.run, frame.sequence);
            let (logger, tweets, users) = StatsEncoder::messages(&frame);
            out.push(Outgoing::new(&self.logger_topic, &id, self.priority, &logger));
            out.push(Outgoing::new(&self.tweets_topic, &id, self.priority, &tweets));
            out.push(Outgoing::new(&self.users_topic, &id, self.priority, &users));
        }
        0
    }
}

/// Priority of published events unless `priority` says otherwise.
pub const DEFAULT_PRIORITY: u8 = 5;
/// `pub`s awaiting their `ok` at once unless `max_outstanding` says otherwise.
pub const DEFAULT_MAX_OUTSTANDING: usize = 64;
/// Most `pub`s awaiting their `ok` at once.
pub const MAX_OUTSTANDING: usize = 10_000;

/// The settings every publishing broker kind has.
#[settings]
pub struct PublishSettings {
    #[serde(flatten)]
    connect: ConnectSettings,
    /// priority of the events published, 0-9 (default 5)
    #[default(DEFAULT_PRIORITY)]
    priority: u8,
    /// pubs sent before their ok came back, at most (default 64)
    #[default(DEFAULT_MAX_OUTSTANDING)]
    max_outstanding: usize,
}

impl PublishSettings {
    /// Checks the connection, priority, window and `topics` (setting, topic) without connecting.
    fn check(&self, topics: &[(&str, &str)]) -> Result<(), String> {
        self.connect.check()?;
        for (key, topic) in topics {
            check_name("topic", topic).map_err(|why| format!("`{key}`: {why}"))?;
        }
        if self.priority > MAX_PRIORITY {
            return Err(format!("`priority` must be from 0 to {MAX_PRIORITY}, got {}", self.priority));
        }
        if !(1..=MAX_OUTSTANDING).contains(&self.max_outstanding) {
            return Err(format!(
                "`max_outstanding` must be from 1 to {MAX_OUTSTANDING}, got {}",
                self.max_outstanding
            ));
        }
        Ok(())
    }

    fn options(&self) -> PublishOptions {
        let (retry_initial, retry_max) = self.connect.retry();
        PublishOptions {
            addr: self.connect.addr.clone(),
            token: self.connect.token.clone(),
            max_outstanding: self.max_outstanding,
            retry_initial,
            retry_max,
        }
    }

    /// Adds a publishing consumer `stage` whose workers encode with `encoder()`.
    fn build<E: Encode>(
        &self,
        stage: &StageDecl,
        pipeline: &mut Pipeline,
        encoder: impl Fn() -> E + Send + Sync + 'static,
    ) -> Result<(), String> {
        let (id, options) = (stage.id.clone(), self.options());
        let stats = Arc::new(PublishStats::default());
        let config = pipeline
            .consumer(&stage.id, move || PublishStage::new(&id, options.clone(), encoder(), stats.clone()));
        configure(stage, config, &DispatcherChoices::demand_only(), None)
    }
}

/// When this build happened, in hex milliseconds: keeps generated ids of different runs apart.
fn run_token() -> String {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis());
    format!("{millis:x}")
}

/// publishes lines of text to a broker topic (an event line as is, other lines wrapped); waits for each ok
#[kind("broker_publish", String -> Nothing)]
pub struct BrokerPublishKind {
    #[serde(flatten)]
    publish: PublishSettings,
    /// the topic to publish to (created by the first pub)
    topic: String,
    /// "auto" (default): a line that is an event {"id","priority","msg"} goes as is,
    /// others become `{"id": "<id_prefix>-<n>", "priority", "msg": <the line's JSON, or the line as a string>}`;
    /// "always": wrap every line; "never": skip (and log) lines that are not events
    #[default("auto")]
    wrap: String,
    /// ids of wrapped lines are `<id_prefix>-<n>` (default `<stage id>-<start time in hex ms>`)
    id_prefix: Option<String>,
}

impl Kind for BrokerPublishKind {
    fn check(&self, _: &StageDecl) -> Result<(), String> {
        self.publish.check(&[("topic", &self.topic)])?;
        if let Some(prefix) = &self.id_prefix
            && (prefix.is_empty()
                || prefix.len() > MAX_ID_LEN / 2
                || prefix.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(format!(
                "`id_prefix` must be 1 to {} bytes without spaces or control characters",
                MAX_ID_LEN / 2
            ));
        }
        Wrap::named(&self.wrap).map(|_| ())
    }

    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let wrap = Wrap::named(&self.wrap)?;
        let prefix = self.id_prefix.clone().unwrap_or_else(|| format!("{}-{}", stage.id, run_token()));
        let (id, topic, priority) = (stage.id.clone(), self.topic.clone(), self.publish.priority);
        let next = Arc::new(AtomicU64::new(0));
        self.publish.build(stage, pipeline, move || {
            TextEncoder::new(&id, &topic, priority, wrap, &prefix, next.clone())
        })
    }
}

/// publishes each scored tweet's document to `tweets` and its user's to `users`, ids = id_str
#[kind("broker_tweets", ScoredTweet -> Nothing)]
pub struct BrokerTweetsKind {
    #[serde(flatten)]
    publish: PublishSettings,
    /// topic of the tweet documents (default "tweets")
    #[default("tweets")]
    tweets_topic: String,
    /// topic of the user documents (default "users")
    #[default("users")]
    users_topic: String,
}

impl Kind for BrokerTweetsKind {
    fn check(&self, _: &StageDecl) -> Result<(), String> {
        self.publish.check(&[("tweets_topic", &self.tweets_topic), ("users_topic", &self.users_topic)])
    }

    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let (tweets, users, priority) =
            (self.tweets_topic.clone(), self.users_topic.clone(), self.publish.priority);
        self.publish.build(stage, pipeline, move || TweetEncoder::new(&tweets, &users, priority))
    }
}

/// publishes each stats frame to logger_stats, tweets_stats and users_stats
#[kind("broker_stats", StatsFrame -> Nothing)]
pub struct BrokerStatsKind {
    #[serde(flatten)]
    publish: PublishSettings,
    /// topic of logger timings, crashes and drops (default "logger_stats")
    #[default("logger_stats")]
    logger_topic: String,
    /// topic of tweets insert timings and tweets ingested (default "tweets_stats")
    #[default("tweets_stats")]
    tweets_topic: String,
    /// topic of users insert timings and users ingested (default "users_stats")
    #[default("users_stats")]
    users_topic: String,
}

impl Kind for BrokerStatsKind {
    fn check(&self, _: &StageDecl) -> Result<(), String> {
        self.publish.check(&[
            ("logger_topic", &self.logger_topic),
            ("tweets_topic", &self.tweets_topic),
            ("users_topic", &self.users_topic),
        ])
    }

    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let topics = [self.logger_topic.clone(), self.tweets_topic.clone(), self.users_topic.clone()];
        let (priority, run) = (self.publish.priority, run_token());
        self.publish.build(stage, pipeline, move || {
            StatsEncoder::new(&topics[0], &topics[1], &topics[2], priority, &run)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn encoder(wrap: Wrap) -> TextEncoder {
        TextEncoder::new("p", "numbers", 4, wrap, "p-run", Arc::default())
    }

    fn parsed(event: &Outgoing) -> Value {
        serde_json::from_str(&event.json).expect("the pub line carries JSON")
    }

    #[test]
    fn an_event_line_passes_through_and_other_lines_are_wrapped() {
        let auto = encoder(Wrap::Auto);
        let event = auto.encode_line(r#" {"id":"e1","priority":9,"msg":{"a":1}} "#).unwrap();
        assert_eq!(parsed(&event), json!({"id": "e1", "priority": 9, "msg": {"a": 1}}));
        assert_eq!(event.id, "e1");
        let text = auto.encode_line("n = 5\nsix").unwrap();
        assert_eq!(parsed(&text), json!({"id": "p-run-0", "priority": 4, "msg": "n = 5\nsix"}));
        assert!(!text.json.contains('\n'), "one line on the wire");
        let number = auto.encode_line("42").unwrap();
        assert_eq!(parsed(&number), json!({"id": "p-run-1", "priority": 4, "msg": 42}));
        let object = auto.encode_line(r#"{"id":"x"}"#).unwrap();
        assert_eq!(parsed(&object)["msg"], json!({"id": "x"}), "not an event: wrapped");
    }

    #[test]
    fn always_wraps_events_too_and_never_refuses_plain_text() {
        let event = r#"{"id":"e1","priority":9,"msg":1}"#;
        let always = encoder(Wrap::Always).encode_line(event).unwrap();
        assert_eq!(parsed(&always)["msg"], json!({"id": "e1", "priority": 9, "msg": 1}));
        let never = encoder(Wrap::Never);
        assert!(never.encode_line("hello").unwrap_err().contains("not valid JSON"));
        assert_eq!(never.encode_line(event).unwrap().id, "e1");
        let mut out = Vec::new();
        let skipped = encoder(Wrap::Never).encode(vec!["x".into(), event.into()], &mut out);
        assert_eq!((skipped, out.len()), (1, 1));
    }

    #[test]
    fn a_stats_frame_goes_to_three_topics_under_one_id() {
        use crate::analysis::TimingSummary;
        let timing = |count| TimingSummary { count, p75_ms: 1.0, p85_ms: 2.0, p95_ms: 3.0 };
        let frame = StatsFrame {
            pipeline: "tweets pipeline".into(),
            sequence: 7,
            at: "2024-03-01T00:00:05Z".into(),
            frame_ms: 5000,
            logger: timing(10),
            tweets_insert: timing(2),
            users_insert: timing(3),
            crashes: 1,
            lost: 2,
            tweets_ingested: 400,
            users_ingested: 90,
            dropped: 4,
            dropped_by: [("sse.malformed".to_string(), 4)].into_iter().collect(),
            dead_lettered: [("store".to_string(), 3)].into_iter().collect(),
        };
        let mut out = Vec::new();
        let mut encoder = StatsEncoder::new("logger_stats", "tweets_stats", "users_stats", 6, "r1");
        assert_eq!(encoder.encode(vec![frame], &mut out), 0);
        let topics: Vec<&str> = out.iter().map(|event| event.topic.as_str()).collect();
        assert_eq!(topics, ["logger_stats", "tweets_stats", "users_stats"]);
        assert!(out.iter().all(|event| event.id == "tweets_pipeline-r1-7"), "one id, no spaces");
        let (logger, tweets, users) = (parsed(&out[0]), parsed(&out[1]), parsed(&out[2]));
        assert_eq!(logger["priority"], json!(6));
        assert_eq!(
            logger["msg"]["logger"],
            json!({"count": 10, "p75_ms": 1.0, "p85_ms": 2.0, "p95_ms": 3.0})
        );
        assert_eq!(logger["msg"]["crashes"], json!(1));
        assert_eq!(logger["msg"]["dropped_by"], json!({"sse.malformed": 4}));
        assert_eq!(tweets["msg"]["insert"]["count"], json!(2));
        assert_eq!(tweets["msg"]["ingested"], json!(400));
        assert_eq!(users["msg"]["insert"]["count"], json!(3));
        assert_eq!(users["msg"]["ingested"], json!(90));
        assert_eq!(users["msg"]["sequence"], json!(7));
        assert_eq!(users["msg"]["at"], json!("2024-03-01T00:00:05Z"));
    }

    #[test]
    fn wrap_modes_are_named() {
        assert_eq!(Wrap::named("auto"), Ok(Wrap::Auto));
        assert!(Wrap::named("sometimes").unwrap_err().contains("\"auto\", \"always\" or \"never\""));
    }
}
