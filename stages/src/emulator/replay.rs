//! Tweet streams rendered once and served from memory: the emulator's own
//! events, byte for byte as its `/tweets/N` sends them, without the
//! generator's cost per event. A benchmark reading them measures the reader,
//! not the generator (which makes about 200 k events/s on one core).
//!
//! The server answers like the emulator with a `limit`: `Last-Event-ID: N`
//! resumes at event N + 1, a request past the end gets `204 No Content`,
//! and `/stats` counts the events and bytes sent per connection.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;

use super::generator::TweetGenerator;
use super::server::{
    ConnectionStats, EmulatorHandle, SentKind, event_stream_response, sse_frame, start_serving,
    stream_request,
};

/// Bytes per body chunk handed to HTTP: large enough that chunking costs nothing per event.
const CHUNK_BYTES: usize = 64 * 1024;

/// Events 1 to N of one tweet stream as SSE bytes, with where each event ends.
#[derive(Debug, Clone)]
pub struct RenderedStream {
    stream: u32,
    bytes: Bytes,
    /// `ends[i]`: the offset just past event `i + 1`.
    ends: Vec<usize>,
    kinds: Vec<SentKind>,
}

impl RenderedStream {
    /// Events 1 to `events` of stream `stream`, exactly as the emulator with
    /// `generator`'s seed and ratios sends them.
    pub fn render(generator: &TweetGenerator, stream: u32, events: u64) -> Self {
        let mut bytes = Vec::new();
        let mut ends = Vec::with_capacity(events as usize);
        let mut kinds = Vec::with_capacity(events as usize);
        for sequence in 1..=events {
            let event = generator.event(stream, sequence);
            bytes.extend_from_slice(&sse_frame(sequence, &event.sse_data()));
            ends.push(bytes.len());
            kinds.push(SentKind::of(&event));
        }
        RenderedStream { stream, bytes: Bytes::from(bytes), ends, kinds }
    }

    /// The stream number (`/tweets/N`).
    pub fn stream(&self) -> u32 {
        self.stream
    }

    /// How many events it holds.
    pub fn events(&self) -> u64 {
        self.ends.len() as u64
    }

    /// Every event's bytes, in order.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The bytes of the events after event `last_seen` (all of them after 0, none past the end).
    pub fn after(&self, last_seen: u64) -> Bytes {
        let start = match last_seen {
            0 => 0,
            seen => self.ends.get(seen as usize - 1).copied().unwrap_or(self.bytes.len()),
        };
        self.bytes.slice(start.min(self.bytes.len())..)
    }
}

/// Serves `streams` at `/tweets/N` on `addr` (port 0 picks a free one) until
/// the handle is dropped or stopped; `/stats` as the emulator's.
pub async fn start_replay(addr: &str, streams: Vec<RenderedStream>) -> Result<EmulatorHandle, String> {
    let streams = Arc::new(streams);
    start_serving(addr, move |registry| {
        Router::new().route("/tweets/{stream}", get(replay)).with_state(streams).route(
            "/stats",
            get(move || {
                let registry = registry.clone();
                async move { Json(registry.snapshot()) }
            }),
        )
    })
    .await
}

async fn replay(
    Path(stream): Path<String>,
    headers: HeaderMap,
    State(streams): State<Arc<Vec<RenderedStream>>>,
    Extension(connection): Extension<Arc<ConnectionStats>>,
) -> Response {
    let (stream, last_seen) = match stream_request(&stream, &headers) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    let Some(rendered) = streams.iter().find(|rendered| rendered.stream == stream) else {
        let message = format!("stream {stream} was not recorded: this replay serves {}\n", served(&streams));
        return (StatusCode::NOT_FOUND, message).into_response();
    };
    if last_seen >= rendered.events() {
        // The SSE way to say "this stream is over, do not reconnect".
        return StatusCode::NO_CONTENT.into_response();
    }
    connection.stream_requested(stream);
    for (index, kind) in rendered.kinds.iter().enumerate().skip(last_seen as usize) {
        connection.event_sent(*kind, index as u64 + 1);
    }
    let bytes = rendered.after(last_seen);
    let chunks = (0..bytes.len().div_ceil(CHUNK_BYTES)).map(move |index| {
        let start = index * CHUNK_BYTES;
        Ok::<Bytes, std::convert::Infallible>(bytes.slice(start..(start + CHUNK_BYTES).min(bytes.len())))
    });
    event_stream_response()
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap_or_else(|error| (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response())
}

/// `/tweets/1, /tweets/2`: the paths a replay serves.
fn served(streams: &[RenderedStream]) -> String {
    let paths: Vec<String> = streams.iter().map(|rendered| format!("/tweets/{}", rendered.stream)).collect();
    if paths.is_empty() { "no stream".to_string() } else { paths.join(", ") }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::generator::Vocabulary;
    use super::super::{EmulatorConfig, Rate, start_emulator};
    use super::*;

    const LIMIT: Duration = Duration::from_secs(30);

    fn generator() -> TweetGenerator {
        TweetGenerator::new(9, 0.05, 0.05, Vocabulary::shipped())
    }

    async fn get(url: &str, last_event_id: Option<&str>) -> (StatusCode, Bytes) {
        let client = reqwest::Client::builder().no_proxy().build().expect("a client");
        let mut request = client.get(url);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = tokio::time::timeout(LIMIT, request.send()).await.expect("in time").expect("answers");
        let status = response.status();
        (status, tokio::time::timeout(LIMIT, response.bytes()).await.expect("in time").expect("a body"))
    }

    #[test]
    fn after_skips_whole_events() {
        let rendered = RenderedStream::render(&generator(), 3, 20);
        assert_eq!(rendered.events(), 20);
        assert_eq!(rendered.after(0), rendered.bytes());
        assert!(rendered.after(7).starts_with(b"id: 8\n"));
        let seventh_end = rendered.bytes().len() - rendered.after(7).len();
        assert!(rendered.bytes()[..seventh_end].ends_with(b"\n\n"));
        assert!(rendered.after(20).is_empty());
        assert!(rendered.after(99).is_empty());
    }

    #[tokio::test]
    async fn the_replay_serves_exactly_the_bytes_the_emulator_sends() {
        let rendered = RenderedStream::render(&generator(), 2, 300);
        let config = EmulatorConfig {
            rate: Rate::Max,
            seed: 9,
            limit: Some(300),
            kill_ratio: 0.05,
            malformed_ratio: 0.05,
            close_after: None,
        };
        let emulator = start_emulator("127.0.0.1:0", config).await.expect("the emulator starts");
        let (status, from_emulator) = get(&emulator.url("/tweets/2"), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(from_emulator, rendered.bytes(), "the emulator's own bytes");

        let replay = start_replay("127.0.0.1:0", vec![rendered.clone()]).await.expect("the replay starts");
        let (status, body) = get(&replay.url("/tweets/2"), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, rendered.bytes());
        let (status, rest) = get(&replay.url("/tweets/2"), Some("250")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(rest, rendered.after(250));
        assert!(rest.starts_with(b"id: 251\n"));

        let stats = replay.stats();
        let first = stats.for_stream(2).next().expect("the first connection is counted");
        assert_eq!(first.events_sent, 300);
        assert_eq!(first.last_sequence, 300);
        assert_eq!(first.tweets_sent + first.kills_sent + first.malformed_sent, 300);
        assert!(first.kills_sent > 0 && first.malformed_sent > 0, "{first:?}");
        assert!(first.bytes_written as usize > rendered.bytes().len(), "headers and chunking included");
    }

    #[tokio::test]
    async fn the_replay_refuses_what_it_does_not_have() {
        let replay = start_replay("127.0.0.1:0", vec![RenderedStream::render(&generator(), 1, 10)])
            .await
            .expect("the replay starts");
        assert_eq!(get(&replay.url("/tweets/1"), Some("10")).await.0, StatusCode::NO_CONTENT);
        let (status, body) = get(&replay.url("/tweets/2"), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(String::from_utf8_lossy(&body).contains("serves /tweets/1"), "{body:?}");
        assert_eq!(get(&replay.url("/tweets/99"), None).await.0, StatusCode::NOT_FOUND);
        assert_eq!(get(&replay.url("/tweets/1"), Some("x")).await.0, StatusCode::BAD_REQUEST);
        assert!(start_replay("256.0.0.1:0", Vec::new()).await.is_err());
    }
}
