//! The emulator's HTTP server: axum routes on hyper connections, each
//! connection's socket wrapped to count the bytes it writes.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::sync::lock;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::generator::{GeneratedEvent, MAX_STREAM, TweetGenerator, Vocabulary, lexicon, lexicon_lines};
use super::{EmulatorConfig, Rate};

/// At most this many connections are served at once; more wait in the listen backlog.
const MAX_OPEN_CONNECTIONS: usize = 1024;
/// `/stats` remembers at most this many connections (the oldest closed ones are forgotten first).
const MAX_TRACKED_CONNECTIONS: usize = 1024;
/// A paced stream that fell further behind than this (a stalled reader) does not burst to catch up.
const MAX_PACING_LAG: Duration = Duration::from_secs(1);

/// What an event sent was, for the counters of `/stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SentKind {
    Tweet,
    Kill,
    Malformed,
}

impl SentKind {
    /// The kind of a generated event.
    pub(super) fn of(event: &GeneratedEvent) -> SentKind {
        match event {
            GeneratedEvent::Tweet(_) => SentKind::Tweet,
            GeneratedEvent::Kill => SentKind::Kill,
            GeneratedEvent::Malformed(_) => SentKind::Malformed,
        }
    }
}

/// Counters of one connection, shared by its socket wrapper and its SSE stream.
#[derive(Debug)]
pub struct ConnectionStats {
    id: u64,
    remote: SocketAddr,
    /// The stream served last on this connection (0: none yet).
    stream: AtomicU32,
    sse_requests: AtomicU64,
    events_sent: AtomicU64,
    tweets_sent: AtomicU64,
    kills_sent: AtomicU64,
    malformed_sent: AtomicU64,
    last_sequence: AtomicU64,
    bytes_written: AtomicU64,
    open: AtomicBool,
}

/// What `/stats` says about one connection that asked for a tweet stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionSnapshot {
    /// Connection number, from 1 in accept order.
    pub id: u64,
    /// The client's address.
    pub remote: String,
    /// The tweet stream it asked for (`/tweets/N`).
    pub stream: u32,
    /// SSE requests served on it (one, unless the client reuses connections).
    pub sse_requests: u64,
    /// Events handed to the HTTP layer (tweets, kill messages and malformed events).
    pub events_sent: u64,
    /// Of which tweets.
    pub tweets_sent: u64,
    /// Of which kill messages.
    pub kills_sent: u64,
    /// Of which deliberately malformed events.
    pub malformed_sent: u64,
    /// The sequence number of the last event sent.
    pub last_sequence: u64,
    /// Bytes written to the socket (headers and framing included).
    pub bytes_written: u64,
    /// Whether the connection is still open.
    pub open: bool,
}

/// The emulator's statistics, as `GET /stats` serves them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmulatorStats {
    /// Connections that asked for a tweet stream, oldest first.
    pub connections: Vec<ConnectionSnapshot>,
}

impl EmulatorStats {
    /// The connections that asked for stream `stream`.
    pub fn for_stream(&self, stream: u32) -> impl Iterator<Item = &ConnectionSnapshot> {
        self.connections.iter().filter(move |connection| connection.stream == stream)
    }
}

impl ConnectionStats {
    /// Counts an SSE request for stream `stream` on this connection.
    pub(super) fn stream_requested(&self, stream: u32) {
        self.stream.store(stream, Ordering::Relaxed);
        self.sse_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts event `sequence`, of kind `kind`, handed to HTTP.
    pub(super) fn event_sent(&self, kind: SentKind, sequence: u64) {
        let counter = match kind {
            SentKind::Tweet => &self.tweets_sent,
            SentKind::Kill => &self.kills_sent,
            SentKind::Malformed => &self.malformed_sent,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.events_sent.fetch_add(1, Ordering::Relaxed);
        self.last_sequence.store(sequence, Ordering::Relaxed);
    }

    fn snapshot(&self) -> ConnectionSnapshot {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ConnectionSnapshot {
            id: self.id,
            remote: self.remote.to_string(),
            stream: self.stream.load(Ordering::Relaxed),
            sse_requests: read(&self.sse_requests),
            events_sent: read(&self.events_sent),
            tweets_sent: read(&self.tweets_sent),
            kills_sent: read(&self.kills_sent),
            malformed_sent: read(&self.malformed_sent),
            last_sequence: read(&self.last_sequence),
            bytes_written: read(&self.bytes_written),
            open: self.open.load(Ordering::Relaxed),
        }
    }
}

/// Every tracked connection, bounded.
#[derive(Debug, Default)]
pub(super) struct StatsRegistry {
    connections: Mutex<VecDeque<Arc<ConnectionStats>>>,
    next_id: AtomicU64,
}

impl StatsRegistry {
    fn open(&self, remote: SocketAddr) -> Arc<ConnectionStats> {
        let stats = Arc::new(ConnectionStats {
            id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            remote,
            stream: AtomicU32::new(0),
            sse_requests: AtomicU64::new(0),
            events_sent: AtomicU64::new(0),
            tweets_sent: AtomicU64::new(0),
            kills_sent: AtomicU64::new(0),
            malformed_sent: AtomicU64::new(0),
            last_sequence: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            open: AtomicBool::new(true),
        });
        let mut connections = lock(&self.connections);
        if connections.len() >= MAX_TRACKED_CONNECTIONS {
            let oldest_closed = connections.iter().position(|c| !c.open.load(Ordering::Relaxed));
            connections.remove(oldest_closed.unwrap_or(0));
        }
        connections.push_back(stats.clone());
        stats
    }

    pub(super) fn snapshot(&self) -> EmulatorStats {
        let connections = lock(&self.connections);
        EmulatorStats {
            connections: connections
                .iter()
                .filter(|c| c.sse_requests.load(Ordering::Relaxed) > 0)
                .map(|c| c.snapshot())
                .collect(),
        }
    }
}

/// A socket that counts the bytes written through it.
struct CountingIo {
    inner: TcpStream,
    stats: Arc<ConnectionStats>,
}

impl CountingIo {
    fn count(&self, written: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(bytes)) = written {
            self.stats.bytes_written.fetch_add(*bytes as u64, Ordering::Relaxed);
        }
    }
}

impl AsyncRead for CountingIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountingIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.count(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.count(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What every request handler shares.
#[derive(Clone)]
struct AppState {
    config: Arc<EmulatorConfig>,
    generator: Arc<TweetGenerator>,
    registry: Arc<StatsRegistry>,
    lexicon: Bytes,
}

/// A running emulator. Dropping it (or `stop`) closes the listener and every connection.
pub struct EmulatorHandle {
    addr: SocketAddr,
    registry: Arc<StatsRegistry>,
    server: JoinHandle<()>,
}

impl EmulatorHandle {
    /// The address it listens on (the real port when it was asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` followed by `path`, e.g. `handle.url("/tweets/1")`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The current statistics, the same as `GET /stats` answers.
    pub fn stats(&self) -> EmulatorStats {
        self.registry.snapshot()
    }

    /// Stops serving: the listener and every open connection close at once.
    pub async fn stop(mut self) {
        self.server.abort();
        let _ = (&mut self.server).await;
    }

    /// Stops serving, then returns the final statistics: nothing is sent after
    /// them (a snapshot taken before `stop` may miss the last events).
    pub async fn stop_and_count(mut self) -> EmulatorStats {
        self.server.abort();
        let _ = (&mut self.server).await;
        self.registry.snapshot()
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Binds `addr` and serves the emulator on it until the handle is dropped.
pub async fn start_emulator(addr: &str, config: EmulatorConfig) -> Result<EmulatorHandle, String> {
    config.validate()?;
    let generator =
        TweetGenerator::new(config.seed, config.kill_ratio, config.malformed_ratio, Vocabulary::shipped());
    start_serving(addr, move |registry| {
        let state = AppState {
            generator: Arc::new(generator),
            config: Arc::new(config),
            registry,
            lexicon: Bytes::from(lexicon_lines(lexicon())),
        };
        Router::new()
            .route("/", get(index))
            .route("/tweets/{stream}", get(tweets))
            .route("/emotion_values", get(emotion_values))
            .route("/stats", get(stats))
            .with_state(state)
    })
    .await
}

/// Binds `addr` and serves `router` with the emulator's connection handling:
/// each handler finds its connection's counters as an
/// `Extension<Arc<ConnectionStats>>`, and `/stats` answers from them.
pub(super) async fn start_serving(
    addr: &str,
    router: impl FnOnce(Arc<StatsRegistry>) -> Router,
) -> Result<EmulatorHandle, String> {
    let listener =
        TcpListener::bind(addr).await.map_err(|error| format!("cannot listen on {addr}: {error}"))?;
    let local =
        listener.local_addr().map_err(|error| format!("cannot read the address of {addr}: {error}"))?;
    let registry = Arc::new(StatsRegistry::default());
    let router = router(registry.clone());
    let server = tokio::spawn(serve(listener, router, registry.clone()));
    Ok(EmulatorHandle { addr: local, registry, server })
}

/// Accepts connections and serves each on its own task; the tasks live in
/// a `JoinSet`, so aborting this task closes every connection.
async fn serve(listener: TcpListener, router: Router, registry: Arc<StatsRegistry>) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        if connections.len() >= MAX_OPEN_CONNECTIONS {
            connections.join_next().await;
            continue;
        }
        let (socket, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "emulator: accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let stats = registry.open(remote);
        let service = router.clone().layer(Extension(stats.clone()));
        connections.spawn(async move {
            let io = hyper_util::rt::TokioIo::new(CountingIo { inner: socket, stats: stats.clone() });
            let service = hyper_util::service::TowerToHyperService::new(service);
            if let Err(error) = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await
            {
                tracing::debug!(%error, %remote, "emulator: connection ended with an error");
            }
            stats.open.store(false, Ordering::Relaxed);
        });
    }
}

async fn index() -> &'static str {
    "stageflow tweet emulator\n\
     GET /tweets/1, /tweets/2 (up to /tweets/16): tweets as server-sent events (Last-Event-ID resumes)\n\
     GET /emotion_values: the sentiment lexicon, word<TAB>score per line\n\
     GET /stats: events and bytes written per connection, as JSON\n"
}

async fn emotion_values(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], state.lexicon).into_response()
}

async fn stats(State(state): State<AppState>) -> Json<EmulatorStats> {
    Json(state.registry.snapshot())
}

async fn tweets(
    Path(stream): Path<String>,
    headers: HeaderMap,
    State(state): State<AppState>,
    Extension(connection): Extension<Arc<ConnectionStats>>,
) -> Response {
    let (stream, last_seen) = match stream_request(&stream, &headers) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    if state.config.limit.is_some_and(|limit| last_seen >= limit) {
        // The SSE way to say "this stream is over, do not reconnect".
        return StatusCode::NO_CONTENT.into_response();
    }
    connection.stream_requested(stream);
    let events = EventStream {
        generator: state.generator.clone(),
        stream,
        next_sequence: last_seen.saturating_add(1),
        limit: state.config.limit,
        remaining_on_connection: state.config.close_after,
        pacer: Pacer::new(state.config.rate, stream),
        connection,
    };
    let body = futures::stream::unfold(events, |mut events| async move {
        let chunk = events.next_chunk().await?;
        Some((Ok::<Bytes, Infallible>(chunk), events))
    });
    let mut response = event_stream_response();
    if state.config.close_after.is_some() {
        // The connection closes with the response, so the client must connect again.
        response = response.header(header::CONNECTION, "close");
    }
    response
        .body(Body::from_stream(body))
        .unwrap_or_else(|error| (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response())
}

/// The stream number of `/tweets/{stream}` and the `Last-Event-ID` (0 when
/// absent) of a request, or the status and message that refuse it (404 for
/// a stream that does not exist, 400 for an id that is not a sequence number).
pub(super) fn stream_request(stream: &str, headers: &HeaderMap) -> Result<(u32, u64), (StatusCode, String)> {
    let stream = match stream.parse::<u32>() {
        Ok(number) if (1..=MAX_STREAM).contains(&number) => number,
        _ => {
            let message =
                format!("no tweet stream '{stream}': streams are /tweets/1 to /tweets/{MAX_STREAM}\n");
            return Err((StatusCode::NOT_FOUND, message));
        }
    };
    let last_seen = match headers.get("last-event-id").map(|value| value.to_str().map(str::trim)) {
        None | Some(Ok("")) => 0,
        Some(Ok(text)) => match text.parse::<u64>() {
            Ok(sequence) => sequence,
            Err(_) => {
                let message = format!("Last-Event-ID must be a sequence number, got '{text}'\n");
                return Err((StatusCode::BAD_REQUEST, message));
            }
        },
        Some(Err(_)) => {
            return Err((StatusCode::BAD_REQUEST, "Last-Event-ID must be a sequence number\n".to_string()));
        }
    };
    Ok((stream, last_seen))
}

/// The headers of a `text/event-stream` answer.
pub(super) fn event_stream_response() -> axum::http::response::Builder {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
}

/// One connection's tweet stream, event by event.
struct EventStream {
    generator: Arc<TweetGenerator>,
    stream: u32,
    next_sequence: u64,
    limit: Option<u64>,
    remaining_on_connection: Option<u64>,
    pacer: Pacer,
    connection: Arc<ConnectionStats>,
}

impl EventStream {
    /// The next event as SSE bytes, paced; `None` when the stream or the connection's share ends.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.limit.is_some_and(|limit| self.next_sequence > limit)
            || self.remaining_on_connection == Some(0)
        {
            return None;
        }
        self.pacer.wait(&self.generator).await;
        let sequence = self.next_sequence;
        let event = self.generator.event(self.stream, sequence);
        let chunk = sse_frame(sequence, &event.sse_data());
        self.next_sequence = self.next_sequence.saturating_add(1);
        self.remaining_on_connection = self.remaining_on_connection.map(|left| left - 1);
        self.connection.event_sent(SentKind::of(&event), sequence);
        Some(chunk)
    }
}

/// One SSE event: `id: N`, one `data:` line per line of `data`, and a blank line.
pub fn sse_frame(id: u64, data: &str) -> Bytes {
    let mut frame = String::with_capacity(data.len() + 32);
    frame.push_str("id: ");
    frame.push_str(&id.to_string());
    frame.push('\n');
    for line in data.split('\n') {
        frame.push_str("data: ");
        frame.push_str(line.strip_suffix('\r').unwrap_or(line));
        frame.push('\n');
    }
    frame.push('\n');
    Bytes::from(frame)
}

/// Spaces a stream's events to its rate.
struct Pacer {
    rate: Rate,
    stream: u32,
    started: Instant,
    next_due: Instant,
}

impl Pacer {
    fn new(rate: Rate, stream: u32) -> Self {
        let now = Instant::now();
        Pacer { rate, stream, started: now, next_due: now }
    }

    /// Waits until the next event is due (returns at once at `Rate::Max`).
    async fn wait(&mut self, generator: &TweetGenerator) {
        let now = Instant::now();
        let per_second = match self.rate {
            Rate::Max => return,
            Rate::Fixed(per_second) => per_second,
            Rate::Varying { low, high, period } => {
                let index = now.duration_since(self.started).as_millis() / period.as_millis().max(1);
                generator.varying_rate(self.stream, index as u64, low, high)
            }
        };
        if self.next_due + MAX_PACING_LAG < now {
            self.next_due = now;
        }
        if self.next_due > now {
            tokio::time::sleep_until(self.next_due).await;
        }
        self.next_due += Duration::from_secs_f64(1.0 / per_second.max(1e-3));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_sse_frame_has_its_id_and_one_data_line_per_line() {
        assert_eq!(&sse_frame(7, r#"{"a":1}"#)[..], b"id: 7\ndata: {\"a\":1}\n\n");
        assert_eq!(&sse_frame(1, "x\r\ny")[..], b"id: 1\ndata: x\ndata: y\n\n");
    }

    #[test]
    fn the_registry_forgets_the_oldest_closed_connection_first() {
        let registry = StatsRegistry::default();
        let remote: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let all: Vec<_> = (0..MAX_TRACKED_CONNECTIONS).map(|_| registry.open(remote)).collect();
        for stats in &all {
            stats.sse_requests.store(1, Ordering::Relaxed);
        }
        all[5].open.store(false, Ordering::Relaxed);
        registry.open(remote).sse_requests.store(1, Ordering::Relaxed);
        let ids: Vec<u64> = registry.snapshot().connections.iter().map(|c| c.id).collect();
        assert_eq!(ids.len(), MAX_TRACKED_CONNECTIONS);
        assert!(!ids.contains(&6) && ids.contains(&1) && ids.contains(&(MAX_TRACKED_CONNECTIONS as u64 + 1)));
    }
}
