//! The SSE receiver against a server that closes every stream after 50
//! events: with `retry: 1000` it waits a second before each reconnect (the
//! SSE reconnection time); without `retry:` it reconnects at once.
//!
//! The server is a plain TCP listener on 127.0.0.1 writing HTTP/1.1 by hand,
//! so the test controls exactly what is sent; it is stopped when the test
//! ends (its task is aborted by the guard). Every wait has a deadline.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use stageflow::{Emitter, Producer};
use stageflow_stages::sse::{SseEvent, SseReceiver, SseSourceConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// How long a test may take before it fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(60);
/// Events per stream before the server closes it.
const EVENTS_PER_STREAM: u64 = 50;

/// Stops the server task when the test ends, however it ends.
struct Server {
    url: String,
    /// When each connection was accepted, in order.
    accepted: Arc<Mutex<Vec<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server that answers every request with `EVENTS_PER_STREAM` kill
/// messages (ids continuing across connections), the first carrying
/// `retry: <retry_ms>` when given, then closes the connection.
async fn closing_server(retry_ms: Option<u64>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    let url = format!("http://{}/tweets/1", listener.local_addr().expect("its address"));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let log = accepted.clone();
    let task = tokio::spawn(async move {
        let mut next_id = 1u64;
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            log.lock().unwrap().push(Instant::now());
            // Read the request head; its content does not matter.
            let mut head = Vec::new();
            let mut buffer = [0u8; 1024];
            while !head.windows(4).any(|window| window == b"\r\n\r\n") {
                match socket.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buffer[..n]),
                }
            }
            let mut body = String::from(
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
            );
            for index in 0..EVENTS_PER_STREAM {
                body.push_str(&format!("id: {next_id}\n"));
                if let (0, Some(ms)) = (index, retry_ms) {
                    body.push_str(&format!("retry: {ms}\n"));
                }
                body.push_str("data: {\"message\": panic}\n\n");
                next_id += 1;
            }
            let _ = socket.write_all(body.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
    });
    Server { url, accepted, task }
}

/// Reads from `server` until it accepted `connections` connections; returns the events read.
async fn read_until_connections(server: &Server, connections: usize) -> Vec<SseEvent> {
    let config = SseSourceConfig::new(&server.url).expect("a valid URL");
    let mut receiver = SseReceiver::new(&config);
    let mut out = Emitter::default();
    let reading = async {
        while server.accepted.lock().unwrap().len() < connections {
            receiver.produce(1_000, &mut out).await;
        }
    };
    tokio::time::timeout(DEADLINE, reading).await.unwrap_or_else(|_| {
        panic!(
            "no {connections} connections within {DEADLINE:?}: {:?}; receiver {:?}",
            server.accepted.lock().unwrap().len(),
            config.stats().snapshot()
        )
    });
    out.take()
}

/// The gaps between consecutive accepted connections.
fn gaps(server: &Server) -> Vec<Duration> {
    let accepted = server.accepted.lock().unwrap();
    accepted.windows(2).map(|pair| pair[1] - pair[0]).collect()
}

#[tokio::test]
async fn with_retry_1000_the_receiver_waits_a_second_before_each_reconnect() {
    let server = closing_server(Some(1_000)).await;
    let events = read_until_connections(&server, 4).await;
    let gaps = gaps(&server);
    assert_eq!(gaps.len(), 3, "{gaps:?}");
    // The wait starts after the stream ended, which is after it was accepted:
    // a gap can only be longer than the reconnection time, never shorter.
    for gap in &gaps {
        assert!(
            *gap >= Duration::from_millis(1_000),
            "reconnected after {gap:?} despite retry: 1000: {gaps:?}"
        );
    }
    // Every event of the first three streams arrived, in order, each once.
    let ids: Vec<u64> = events.iter().map(|event| event.id.parse().expect("numeric ids")).collect();
    assert!(ids.len() as u64 >= 3 * EVENTS_PER_STREAM, "{} events", ids.len());
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn without_retry_the_receiver_reconnects_at_once_after_a_stream_that_delivered() {
    let server = closing_server(None).await;
    let events = read_until_connections(&server, 6).await;
    let gaps = gaps(&server);
    assert_eq!(gaps.len(), 5, "{gaps:?}");
    // Immediate means no wait at all: the bound is only generous room for a
    // busy machine; waiting a reconnection time of 1 s would take 5 s.
    let total: Duration = gaps.iter().sum();
    assert!(total < Duration::from_millis(500 * 5), "five reconnects took {total:?}: {gaps:?}");
    assert!(events.len() as u64 >= 5 * EVENTS_PER_STREAM, "{} events", events.len());
}
