//! The SSE receiver: a producer stage that reads a server-sent-event stream
//! of tweets (reqwest for HTTP, [`crate::sse_parser`] for the events) only
//! as fast as downstream asks.
//!
//! ## Backpressure
//!
//! `produce(demand, out)` awaits the first event, then takes whatever else
//! is already read, up to `demand`, and returns. The engine calls it only
//! while the stage holds demand, so when consumers stop asking, nobody polls
//! the HTTP body: hyper stops reading the socket, the TCP windows fill and
//! the server's writes block. Memory stays at the socket buffers plus one
//! parsed chunk, however fast the server is.
//!
//! ## Reconnects and unreachable sources
//!
//! When the stream ends or fails, the receiver connects again, sending
//! `Last-Event-ID` with the last id it saw so the server can resume. A
//! connection that delivered events is retried at once, unless the server
//! sent a `retry:` field (the SSE reconnection time, in ms): then the
//! receiver waits that long before every reconnect, as the SSE spec asks, so
//! a server that closes streams often is not hammered. Failed attempts back
//! off exponentially (`initial_backoff`, doubling up to `max_backoff`), and
//! never wait less than the server's reconnection time. A `retry:` takes
//! effect as soon as it is read, with or without an event.
//! Every failure is logged (`tracing`, warn) with the URL and recorded in
//! [`SseStats`]. By default the receiver keeps retrying forever, so a
//! source that is down for a while only pauses its own events — the other
//! sources of the pipeline keep running. With `give_up_after(n)` it ends
//! (normally, not as a failure) after `n` consecutive failed attempts, with
//! the error in `SseStats::last_error`; a consumer subscribed to other
//! producers as well keeps going with them. A `204 No Content` answer ends
//! the receiver too: it is SSE's way to say the stream is over.
//!
//! ## What it emits
//!
//! Tweets and kill messages, as [`SseEvent`]s carrying the SSE id. Payloads
//! that are neither are counted in [`SseStats`] (`malformed`), logged, and
//! skipped: they never crash the stage. So is an event over
//! `max_event_bytes` (1 MiB by default; a line of it too): it is never
//! buffered whole, and the warning names the URL, the id it came after and its size.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::collections::VecDeque;
use std::pin::Pin;

use bytes::Bytes;
use futures::{FutureExt, Stream, StreamExt};
use stageflow::{Emitter, Flow, Producer};

use crate::sse_parser::{DEFAULT_MAX_EVENT_BYTES, SseItem, SseParser};

use crate::tweet::{ParsedData, Tweet, parse_sse_data};
use stageflow::config::{BuildContext, DispatcherChoices, Kind, StageDecl, configure, kind};
use stageflow::{Nothing, Pipeline};

use crate::backoff::backoff;
use crate::settings::at_least_one;
use crate::sync::lock;
use crate::tweet::partition_of_id;

/// The first wait after a failed attempt, by default.
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between attempts, by default.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long connecting may take before the attempt counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the receiver emits: a tweet or a kill message.
#[derive(Debug, Clone, PartialEq)]
pub enum TweetMessage {
    /// A well-formed tweet.
    Tweet(Box<Tweet>),
    /// The kill message `{"message": panic}`.
    Kill,
}

/// One event read from the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    /// The SSE id (the emulator's per-stream sequence number); empty if the server sent none.
    pub id: String,
    /// The tweet or kill message it carried.
    pub message: TweetMessage,
}

/// Counters of one SSE source, shared by every incarnation of its receiver.
#[derive(Debug)]
pub struct SseStats {
    connection_attempts: AtomicU64,
    connections_opened: AtomicU64,
    failed_attempts: AtomicU64,
    events_received: AtomicU64,
    tweets: AtomicU64,
    kills: AtomicU64,
    malformed: AtomicU64,
    connected: AtomicBool,
    /// The server's reconnection time (`retry:`), ms; `u64::MAX` while none was given.
    reconnection_ms: AtomicU64,
    gave_up: AtomicBool,
    ended: AtomicBool,
    last_event_id: Mutex<String>,
    last_error: Mutex<Option<String>>,
}

/// A copy of an [`SseStats`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseStatsSnapshot {
    /// Requests sent (first connection and reconnects).
    pub connection_attempts: u64,
    /// Requests answered with an event stream.
    pub connections_opened: u64,
    /// Attempts that failed before delivering any event.
    pub failed_attempts: u64,
    /// SSE events read, whatever their payload.
    pub events_received: u64,
    /// Of which tweets.
    pub tweets: u64,
    /// Of which kill messages.
    pub kills: u64,
    /// Of which neither (counted, logged and skipped).
    pub malformed: u64,
    /// Whether a stream is open now.
    pub connected: bool,
    /// The reconnection time the server asked for with `retry:`, if it did.
    pub reconnection_time: Option<Duration>,
    /// Whether it stopped after `give_up_after` failed attempts.
    pub gave_up: bool,
    /// Whether the receiver has ended (the server said 204, or it gave up).
    pub ended: bool,
    /// The id of the last event read (sent as `Last-Event-ID` on reconnect).
    pub last_event_id: String,
    /// The last connection error, naming the URL.
    pub last_error: Option<String>,
}

impl Default for SseStats {
    fn default() -> Self {
        SseStats {
            connection_attempts: AtomicU64::default(),
            connections_opened: AtomicU64::default(),
            failed_attempts: AtomicU64::default(),
            events_received: AtomicU64::default(),
            tweets: AtomicU64::default(),
            kills: AtomicU64::default(),
            malformed: AtomicU64::default(),
            connected: AtomicBool::default(),
            reconnection_ms: AtomicU64::new(u64::MAX),
            gave_up: AtomicBool::default(),
            ended: AtomicBool::default(),
            last_event_id: Mutex::default(),
            last_error: Mutex::default(),
        }
    }
}

impl SseStats {
    /// The reconnection time the server asked for, if it did (kept across restarts of the stage).
    fn reconnection_time(&self) -> Option<Duration> {
        match self.reconnection_ms.load(Ordering::Relaxed) {
            u64::MAX => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> SseStatsSnapshot {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        SseStatsSnapshot {
            connection_attempts: read(&self.connection_attempts),
            connections_opened: read(&self.connections_opened),
            failed_attempts: read(&self.failed_attempts),
            events_received: read(&self.events_received),
            tweets: read(&self.tweets),
            kills: read(&self.kills),
            malformed: read(&self.malformed),
            connected: self.connected.load(Ordering::Relaxed),
            reconnection_time: self.reconnection_time(),
            gave_up: self.gave_up.load(Ordering::Relaxed),
            ended: self.ended.load(Ordering::Relaxed),
            last_event_id: lock(&self.last_event_id).clone(),
            last_error: lock(&self.last_error).clone(),
        }
    }

    /// Malformed payloads seen so far.
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }
}

/// The SSE sources of one pipeline and their counters: a resource of its
/// build context, read by the statistics hub and the HTTP view.
#[derive(Default)]
pub struct SseSources(Mutex<std::collections::BTreeMap<String, Arc<SseStats>>>);

impl SseSources {
    /// Adds the counters of the source stage `stage`.
    pub fn register(&self, stage: &str, stats: Arc<SseStats>) {
        lock(&self.0).insert(stage.to_string(), stats);
    }

    /// Every source by stage id, with its counters now.
    pub fn snapshot(&self) -> Vec<(String, SseStatsSnapshot)> {
        lock(&self.0).iter().map(|(stage, stats)| (stage.clone(), stats.snapshot())).collect()
    }
}

/// Where and how an [`SseReceiver`] connects; clone it into the stage factory.
#[derive(Debug, Clone)]
pub struct SseSourceConfig {
    url: reqwest::Url,
    client: reqwest::Client,
    initial_backoff: Duration,
    max_backoff: Duration,
    give_up_after: Option<u32>,
    max_event_bytes: usize,
    stats: Arc<SseStats>,
}

impl SseSourceConfig {
    /// A source reading `url` (http:// or https://), retrying forever with the default backoff.
    pub fn new(url: &str) -> Result<Self, String> {
        let parsed =
            reqwest::Url::parse(url).map_err(|error| format!("invalid SSE source URL '{url}': {error}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("invalid SSE source URL '{url}': the scheme must be http or https"));
        }
        // System proxy settings are not used: sources are reached directly.
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|error| format!("cannot build an HTTP client for SSE source {url}: {error}"))?;
        Ok(SseSourceConfig {
            url: parsed,
            client,
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            give_up_after: None,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            stats: Arc::new(SseStats::default()),
        })
    }

    /// Skips (and counts as malformed) events, or lines, over `bytes` instead of buffering them.
    pub fn max_event_bytes(mut self, bytes: usize) -> Self {
        self.max_event_bytes = bytes.max(1);
        self
    }

    /// Waits `initial` after the first failed attempt, doubling up to `max`.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// Ends the receiver after `attempts` consecutive failed attempts instead of retrying forever.
    pub fn give_up_after(mut self, attempts: u32) -> Self {
        self.give_up_after = Some(attempts.max(1));
        self
    }

    /// The counters every receiver built from this config updates.
    pub fn stats(&self) -> Arc<SseStats> {
        self.stats.clone()
    }

    /// The URL it reads.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }
}

/// How long to wait before the next attempt: the backoff after `failures`
/// consecutive failed attempts, but never less than the server's
/// reconnection time (`retry:`) once it gave one. Without one, a reconnect
/// after a stream that delivered events (`failures == 0`) is immediate.
pub fn reconnect_delay(
    failures: u32,
    reconnection_time: Option<Duration>,
    initial: Duration,
    max: Duration,
) -> Duration {
    backoff(failures, initial, max).max(reconnection_time.unwrap_or(Duration::ZERO))
}

/// An open event stream: the response body and the parser reading it.
struct Source {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    parser: SseParser,
    parsed: VecDeque<SseItem>,
}

impl Source {
    fn new(response: reqwest::Response, max_event_bytes: usize) -> Self {
        Source {
            body: Box::pin(response.bytes_stream()),
            parser: SseParser::new(max_event_bytes),
            parsed: VecDeque::new(),
        }
    }

    /// The next item; `None` when the stream ended. Cancel-safe: what was
    /// read before a cancel is in the parser or the queue.
    async fn next(&mut self) -> Option<Result<SseItem, reqwest::Error>> {
        let mut items = Vec::new();
        loop {
            if let Some(item) = self.parsed.pop_front() {
                return Some(Ok(item));
            }
            match self.body.next().await? {
                Ok(chunk) => {
                    self.parser.feed(&chunk, &mut items);
                    self.parsed.extend(items.drain(..));
                }
                Err(error) => return Some(Err(error)),
            }
        }
    }
}

/// A producer stage reading one SSE stream of tweets, only against demand.
pub struct SseReceiver {
    config: SseSourceConfig,
    source: Option<Source>,
    /// Consecutive attempts that failed before delivering an event.
    failures: u32,
    /// Whether the current connection has delivered an event.
    delivered: bool,
    last_event_id: String,
    finished: bool,
    /// Whether a connection was tried before: the first one never waits.
    reconnecting: bool,
}

impl SseReceiver {
    /// A receiver for `config`'s source; it resumes from the last id its stats saw (after a restart too).
    pub fn new(config: &SseSourceConfig) -> Self {
        let last_event_id = lock(&config.stats.last_event_id).clone();
        SseReceiver {
            config: config.clone(),
            source: None,
            failures: 0,
            delivered: false,
            last_event_id,
            finished: false,
            reconnecting: false,
        }
    }

    /// Opens a stream after the backoff; false when it gives up instead.
    async fn connect(&mut self) -> bool {
        let stats = self.config.stats.clone();
        if let Some(limit) = self.config.give_up_after
            && self.failures >= limit
        {
            let error = lock(&stats.last_error).clone().unwrap_or_default();
            tracing::error!(url = %self.config.url, attempts = self.failures, %error, "SSE source: giving up");
            stats.gave_up.store(true, Ordering::Relaxed);
            self.finish();
            return false;
        }
        let reconnection_time = if self.reconnecting { stats.reconnection_time() } else { None };
        self.reconnecting = true;
        let delay = reconnect_delay(
            self.failures,
            reconnection_time,
            self.config.initial_backoff,
            self.config.max_backoff,
        );
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut request = self
            .config
            .client
            .get(self.config.url.clone())
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if !self.last_event_id.is_empty() {
            request = request.header("Last-Event-ID", self.last_event_id.as_str());
        }
        stats.connection_attempts.fetch_add(1, Ordering::Relaxed);
        self.delivered = false;
        let url = self.config.url.clone();
        let failed = |receiver: &mut SseReceiver, why: String| {
            let message = format!("SSE source {url}: {why}");
            tracing::warn!("{message}");
            *lock(&receiver.config.stats.last_error) = Some(message);
            receiver.drop_connection();
            true
        };
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => return failed(self, describe(&error)),
        };
        let status = response.status();
        if status == reqwest::StatusCode::NO_CONTENT {
            tracing::info!(url = %self.config.url, "SSE source: the server says the stream is over (204)");
            self.finish();
            return false;
        }
        if !status.is_success() {
            return failed(self, format!("answered HTTP {status}, not an event stream"));
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
            .unwrap_or_default();
        if !content_type.trim_start().to_ascii_lowercase().starts_with("text/event-stream") {
            return failed(
                self,
                format!("answered with content type {content_type:?}, not text/event-stream"),
            );
        }
        stats.connections_opened.fetch_add(1, Ordering::Relaxed);
        stats.connected.store(true, Ordering::Relaxed);
        tracing::info!(url = %self.config.url, last_event_id = %self.last_event_id, "SSE source connected");
        self.source = Some(Source::new(response, self.config.max_event_bytes));
        true
    }

    fn finish(&mut self) {
        self.finished = true;
        self.source = None;
        self.config.stats.ended.store(true, Ordering::Relaxed);
        self.config.stats.connected.store(false, Ordering::Relaxed);
    }

    /// Handles one item of the stream (`None`: it ended); true if it emitted an event.
    fn handle(&mut self, item: Option<Result<SseItem, reqwest::Error>>, out: &mut Emitter<SseEvent>) -> bool {
        let stats = self.config.stats.clone();
        match item {
            Some(Ok(SseItem::Retry(retry))) => {
                let ms = u64::try_from(retry.as_millis()).unwrap_or(u64::MAX - 1).min(u64::MAX - 1);
                stats.reconnection_ms.store(ms, Ordering::Relaxed);
                false
            }
            Some(Ok(SseItem::TooLong { id, bytes })) => {
                self.delivered = true;
                self.failures = 0;
                stats.events_received.fetch_add(1, Ordering::Relaxed);
                self.remember_id(&id);
                let count = stats.malformed.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(
                    url = %self.config.url,
                    after_id = %id,
                    malformed_so_far = count,
                    "SSE source: skipping an event of {bytes} bytes or more, over the {} byte cap (max_event_bytes)",
                    self.config.max_event_bytes
                );
                false
            }
            Some(Ok(SseItem::Message(message))) => {
                self.delivered = true;
                self.failures = 0;
                stats.events_received.fetch_add(1, Ordering::Relaxed);
                self.remember_id(&message.id);
                let message = match parse_sse_data(&message.data) {
                    ParsedData::Tweet(tweet) => {
                        stats.tweets.fetch_add(1, Ordering::Relaxed);
                        TweetMessage::Tweet(tweet)
                    }
                    ParsedData::Kill => {
                        stats.kills.fetch_add(1, Ordering::Relaxed);
                        TweetMessage::Kill
                    }
                    ParsedData::Malformed(why) => {
                        let count = stats.malformed.fetch_add(1, Ordering::Relaxed) + 1;
                        tracing::warn!(url = %self.config.url, id = %message.id, malformed_so_far = count, "SSE source: skipping a malformed event: {why}");
                        return false;
                    }
                };
                out.emit(SseEvent { id: self.last_event_id.clone(), message });
                true
            }
            None => {
                tracing::info!(url = %self.config.url, last_event_id = %self.last_event_id, "SSE source: stream ended, reconnecting");
                self.drop_connection();
                false
            }
            Some(Err(error)) => {
                let message = format!("SSE source {}: {}", self.config.url, describe(&error));
                tracing::warn!("{message}");
                *lock(&stats.last_error) = Some(message);
                self.drop_connection();
                false
            }
        }
    }

    /// Keeps `id` as the one to resume from (`Last-Event-ID`), here and for a restarted stage.
    fn remember_id(&mut self, id: &str) {
        if !id.is_empty() && id != self.last_event_id {
            id.clone_into(&mut self.last_event_id);
            lock(&self.config.stats.last_event_id).clone_from(&self.last_event_id);
        }
    }

    /// Forgets the current stream; the next attempt backs off unless it delivered events.
    fn drop_connection(&mut self) {
        self.source = None;
        self.config.stats.connected.store(false, Ordering::Relaxed);
        if !self.delivered {
            self.failures = self.failures.saturating_add(1);
            self.config.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// An error and its causes, e.g. `error sending request for url (...): client error (Connect): ... refused`.
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(error) = cause {
        let line = error.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        cause = error.source();
    }
    text
}

impl Producer for SseReceiver {
    type Out = SseEvent;

    async fn produce(&mut self, demand: usize, out: &mut Emitter<SseEvent>) -> Flow {
        // Wait for the first event, (re)connecting as needed.
        loop {
            if self.finished {
                return Flow::Done;
            }
            if self.source.is_none() && !self.connect().await {
                return Flow::Done;
            }
            let Some(source) = self.source.as_mut() else { continue };
            let item = source.next().await;
            if self.handle(item, out) {
                break;
            }
        }
        // Then take only what is already read, up to the demand.
        while out.len() < demand {
            let Some(source) = self.source.as_mut() else { break };
            let Some(item) = source.next().now_or_never() else { break };
            self.handle(item, out);
        }
        Flow::Continue
    }
}

/// reads an SSE stream of tweets (and kill messages) only as fast as downstream asks; reconnects with backoff
#[kind("sse", Nothing -> SseEvent)]
pub struct SseKind {
    /// the stream, e.g. "http://localhost:4000/tweets/1"
    url: String,
    /// wait after the first failed attempt, doubling (default 100)
    #[default(DEFAULT_INITIAL_BACKOFF.as_millis() as u64)]
    initial_backoff_ms: u64,
    /// longest wait between attempts (default 5000)
    #[default(DEFAULT_MAX_BACKOFF.as_millis() as u64)]
    max_backoff_ms: u64,
    /// end after this many failed attempts in a row (default: retry forever)
    give_up_after: Option<u32>,
    /// largest event (its data lines together, or one line), bytes; a larger one is skipped and counted as malformed (default 1048576)
    #[default(DEFAULT_MAX_EVENT_BYTES)]
    max_event_bytes: usize,
}

impl SseKind {
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
        at_least_one("max_event_bytes", self.max_event_bytes as u64)?;
        Ok(source.max_event_bytes(self.max_event_bytes))
    }
}

impl Kind for SseKind {
    fn check(&self, _: &StageDecl) -> Result<(), String> {
        self.source().map(|_| ())
    }

    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, context: &BuildContext) -> Result<(), String> {
        let source = self.source()?;
        context.resources.get_or_default::<SseSources>().register(&stage.id, source.stats());
        let config = pipeline.producer(&stage.id, move || SseReceiver::new(&source));
        let choices =
            DispatcherChoices::cloneable().with_partition(|event: &SseEvent| match &event.message {
                TweetMessage::Tweet(tweet) => partition_of_id(&tweet.id_str),
                TweetMessage::Kill => 0,
            });
        configure(stage, config, &choices, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_reconnection_time_is_a_floor_and_without_it_a_reconnect_is_immediate() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let second = Some(Duration::from_secs(1));
        assert_eq!(reconnect_delay(0, None, initial, max), Duration::ZERO);
        assert_eq!(reconnect_delay(0, second, initial, max), Duration::from_secs(1));
        assert_eq!(reconnect_delay(2, second, initial, max), Duration::from_secs(1));
        assert_eq!(reconnect_delay(5, second, initial, max), Duration::from_millis(1600));
        assert_eq!(reconnect_delay(3, None, initial, max), Duration::from_millis(400));
    }

    #[test]
    fn a_bad_url_is_named_in_the_error() {
        let error = SseSourceConfig::new("not a url").unwrap_err();
        assert!(error.contains("'not a url'"), "{error}");
        let error = SseSourceConfig::new("ftp://127.0.0.1/x").unwrap_err();
        assert!(error.contains("'ftp://127.0.0.1/x'") && error.contains("http or https"), "{error}");
    }

    #[test]
    fn give_up_after_counts_at_least_one_attempt() {
        let config = SseSourceConfig::new("http://127.0.0.1:1/tweets/1").unwrap().give_up_after(0);
        assert_eq!(config.give_up_after, Some(1));
        assert_eq!(config.url(), "http://127.0.0.1:1/tweets/1");
    }
}
