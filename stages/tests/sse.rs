//! The tweet emulator and the SSE receiver, end to end over real sockets on
//! 127.0.0.1: backpressure down to the emulator's socket, reconnects with
//! `Last-Event-ID`, unreachable sources, kill messages and malformed events.
//!
//! Every emulator binds port 0 and is stopped by its handle when the test
//! ends. Waits poll a condition until a generous deadline; nothing asserts
//! speed.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stageflow::ops::ForEach;
use stageflow::{Consumer, DemandHandle, Events, Pipeline, PipelineHandle, SubscribeOptions};
use stageflow_stages::emulator::generator::{GeneratedEvent, TweetGenerator, Vocabulary};
use stageflow_stages::emulator::{EmulatorConfig, EmulatorHandle, EmulatorStats, Rate, start_emulator};
use stageflow_stages::sse::{SseEvent, SseReceiver, SseSourceConfig, TweetMessage};
use tokio::time::Instant;

// ---- helpers --------------------------------------------------------------

/// How long any wait may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);
/// How often waits look again.
const POLL: Duration = Duration::from_millis(20);

/// What a consumer received, in order.
type Received = Arc<Mutex<Vec<SseEvent>>>;

/// Polls `condition` until it holds; fails naming `what` and the last `observed` value after the deadline.
async fn wait_until<T: std::fmt::Debug>(
    what: &str,
    mut observe: impl FnMut() -> T,
    condition: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let observed = observe();
        if condition(&observed) {
            return observed;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}; last seen: {observed:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits for a pipeline to end by itself, within the deadline.
async fn wait_for_end(running: &mut PipelineHandle) {
    match tokio::time::timeout(DEADLINE, running.wait()).await {
        Ok(result) => {
            result.expect("the pipeline ends cleanly");
        }
        Err(_) => panic!("the pipeline did not end within {DEADLINE:?}: {:?}", running.metrics()),
    }
}

/// An emulator on a free port of 127.0.0.1.
async fn emulator(config: EmulatorConfig) -> EmulatorHandle {
    start_emulator("127.0.0.1:0", config).await.expect("the emulator starts")
}

/// The ids of what was received, as sequence numbers.
fn ids(received: &Received) -> Vec<u64> {
    received.lock().unwrap().iter().map(|event| event.id.parse::<u64>().expect("numeric SSE ids")).collect()
}

/// A consumer stage factory that records every event (automatic demand).
fn recorder(
    received: &Received,
) -> impl Fn() -> ForEach<Box<dyn FnMut(SseEvent) + Send>, SseEvent> + Send + Sync + 'static {
    let received = received.clone();
    move || {
        let received = received.clone();
        ForEach::new(Box::new(move |event: SseEvent| received.lock().unwrap().push(event))
            as Box<dyn FnMut(SseEvent) + Send>)
    }
}

/// A manual-demand consumer: asks `initial` credits when it subscribes, then
/// only what the test asks through the shared handle.
struct StallingConsumer {
    initial: u64,
    received: Received,
    upstream: Arc<Mutex<Option<DemandHandle>>>,
}

impl Consumer for StallingConsumer {
    type In = SseEvent;

    fn handle_events(&mut self, events: &mut Events<SseEvent>) -> impl Future<Output = ()> + Send {
        self.received.lock().unwrap().extend(events);
        async {}
    }

    fn handle_subscribe(&mut self, upstream: DemandHandle) {
        upstream.ask(self.initial as usize);
        *self.upstream.lock().unwrap() = Some(upstream);
    }
}

/// The resident set size of this process, in kB, from /proc/self/status.
fn vm_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status is readable");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line in /proc/self/status")
}

/// Events sent and bytes written on the single connection serving `stream`.
fn single_connection(stats: &EmulatorStats, stream: u32) -> (u64, u64) {
    let connections: Vec<_> = stats.for_stream(stream).collect();
    assert_eq!(connections.len(), 1, "one connection for stream {stream}: {stats:?}");
    (connections[0].events_sent, connections[0].bytes_written)
}

fn url_of_a_closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = listener.local_addr().expect("its address").port();
    drop(listener);
    format!("http://127.0.0.1:{port}/tweets/1")
}

// ---- backpressure ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_consumer_stops_the_emulator_socket_then_resumes_with_no_gap_or_duplicate() {
    let emulator = emulator(EmulatorConfig { rate: Rate::Max, seed: 11, ..EmulatorConfig::default() }).await;
    let source = SseSourceConfig::new(&emulator.url("/tweets/1")).unwrap();
    let source_stats = source.stats();
    let received = Received::default();
    let upstream = Arc::new(Mutex::new(None));
    let mut pipeline = Pipeline::new();
    pipeline.producer("tweets", move || SseReceiver::new(&source));
    let (consumer_received, consumer_upstream) = (received.clone(), upstream.clone());
    pipeline
        .consumer("stalling", move || StallingConsumer {
            initial: 100,
            received: consumer_received.clone(),
            upstream: consumer_upstream.clone(),
        })
        .subscribe_to("tweets", SubscribeOptions::default().manual());
    let running = pipeline.start().unwrap();

    wait_until("the first 100 events", || received.lock().unwrap().len(), |&n| n == 100).await;

    // With no demand left nobody reads the body: the emulator's counts must stop growing.
    let mut last = (0, 0);
    let mut unchanged_since = Instant::now();
    let plateau = wait_until(
        "the emulator's written counts to stay unchanged for 1 s",
        || {
            let now = single_connection(&emulator.stats(), 1);
            if now != last {
                last = now;
                unchanged_since = Instant::now();
            }
            (now, unchanged_since.elapsed())
        },
        |(_, unchanged_for)| *unchanged_for >= Duration::from_secs(1),
    )
    .await
    .0;
    let rss_at_plateau = vm_rss_kb();
    // Watch it for two more seconds: a plateau, not a slowdown.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = single_connection(&emulator.stats(), 1);
    let rss_after = vm_rss_kb();
    let (events_at_plateau, bytes_at_plateau) = plateau;
    println!(
        "plateau: emulator sent {events_at_plateau} events / {bytes_at_plateau} bytes; 2 s later {} events / {} bytes; \
         receiver read {} events; RSS {rss_at_plateau} kB -> {rss_after} kB",
        after.0,
        after.1,
        source_stats.snapshot().events_received,
    );
    assert_eq!(after, plateau, "the emulator kept writing to a consumer that asked for nothing");
    assert!(events_at_plateau > 100, "the emulator wrote ahead of the reader ({events_at_plateau} events)");
    assert!(
        bytes_at_plateau < 64 << 20,
        "only socket and HTTP buffers' worth may be written ahead: {bytes_at_plateau} bytes ({events_at_plateau} events)"
    );
    assert_eq!(source_stats.snapshot().events_received, 100, "the receiver read exactly what was asked for");
    assert_eq!(received.lock().unwrap().len(), 100);
    assert!(
        rss_after <= rss_at_plateau + 16 * 1024,
        "memory grew while stalled: {rss_at_plateau} kB -> {rss_after} kB"
    );

    // Demand again: events flow on from 101, in order, nothing lost or repeated.
    upstream.lock().unwrap().as_ref().expect("the consumer subscribed").ask(5_000);
    wait_until("5 100 events in all", || received.lock().unwrap().len(), |&n| n >= 5_100).await;
    assert_eq!(ids(&received), (1..=5_100).collect::<Vec<u64>>());
    let resumed = single_connection(&emulator.stats(), 1);
    assert!(resumed.0 > events_at_plateau, "writes resumed: {events_at_plateau} -> {}", resumed.0);
    running.stop().await.expect("a clean stop");
}

// ---- reconnects -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_server_closes_mid_stream_the_receiver_resumes_from_last_event_id() {
    let emulator = emulator(EmulatorConfig {
        rate: Rate::Max,
        seed: 3,
        limit: Some(200),
        close_after: Some(50),
        ..EmulatorConfig::default()
    })
    .await;
    let source = SseSourceConfig::new(&emulator.url("/tweets/2")).unwrap();
    let stats = source.stats();
    let received = Received::default();
    let mut pipeline = Pipeline::new();
    pipeline.producer("tweets", move || SseReceiver::new(&source));
    pipeline.consumer("record", recorder(&received)).subscribe_to("tweets", SubscribeOptions::default());
    let mut running = pipeline.start().unwrap();
    wait_for_end(&mut running).await;

    assert_eq!(ids(&received), (1..=200).collect::<Vec<u64>>(), "no gap, no duplicate across reconnects");
    let per_connection: Vec<u64> = emulator.stats().for_stream(2).map(|c| c.events_sent).collect();
    assert_eq!(per_connection, [50, 50, 50, 50], "the server closed every connection after 50 events");
    let stats = stats.snapshot();
    assert_eq!((stats.connections_opened, stats.failed_attempts, stats.events_received), (4, 0, 200));
    assert!(stats.ended && !stats.gave_up, "ended on the server's 204: {stats:?}");
    assert_eq!(stats.last_event_id, "200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_server_goes_away_and_comes_back_the_receiver_backs_off_and_continues() {
    let config = EmulatorConfig { rate: Rate::Fixed(2_000.0), seed: 5, ..EmulatorConfig::default() };
    let first = emulator(config.clone()).await;
    let addr = first.addr();
    let source = SseSourceConfig::new(&first.url("/tweets/1"))
        .unwrap()
        .backoff(Duration::from_millis(20), Duration::from_millis(200));
    let stats = source.stats();
    let received = Received::default();
    let mut pipeline = Pipeline::new();
    pipeline.producer("tweets", move || SseReceiver::new(&source));
    pipeline.consumer("record", recorder(&received)).subscribe_to("tweets", SubscribeOptions::default());
    let running = pipeline.start().unwrap();

    wait_until("50 events from the first server", || received.lock().unwrap().len(), |&n| n >= 50).await;
    first.stop().await;
    let down = wait_until(
        "failed reconnects while the server is down",
        || stats.snapshot(),
        |s| s.failed_attempts >= 3,
    )
    .await;
    assert!(!down.connected && !down.ended, "still trying: {down:?}");
    let error = down.last_error.clone().unwrap_or_default();
    assert!(error.contains(&format!("http://{addr}/tweets/1")), "the error names the URL: {error}");
    let before_restart = received.lock().unwrap().len();

    let _second =
        start_emulator(&addr.to_string(), config).await.expect("the server restarts on the same port");
    wait_until(
        "events from the restarted server",
        || received.lock().unwrap().len(),
        |&n| n >= before_restart + 50,
    )
    .await;
    let ids = ids(&received);
    assert_eq!(
        ids,
        (1..=ids.len() as u64).collect::<Vec<u64>>(),
        "resumed after {before_restart} with no gap"
    );
    assert!(stats.snapshot().connections_opened >= 2);
    running.stop().await.expect("a clean stop");
}

// ---- unreachable sources --------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_source_that_gives_up_names_its_url_and_the_other_source_runs_on() {
    let live =
        emulator(EmulatorConfig { rate: Rate::Max, limit: Some(300), ..EmulatorConfig::default() }).await;
    let dead_url = url_of_a_closed_port();
    let dead = SseSourceConfig::new(&dead_url)
        .unwrap()
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .give_up_after(3);
    let dead_stats = dead.stats();
    let live_source = SseSourceConfig::new(&live.url("/tweets/1")).unwrap();
    let received = Received::default();
    let mut pipeline = Pipeline::new();
    pipeline.producer("dead", move || SseReceiver::new(&dead));
    pipeline.producer("live", move || SseReceiver::new(&live_source));
    pipeline
        .consumer("record", recorder(&received))
        .subscribe_to("dead", SubscribeOptions::default())
        .subscribe_to("live", SubscribeOptions::default());
    let mut running = pipeline.start().unwrap();
    wait_for_end(&mut running).await;

    let dead = dead_stats.snapshot();
    assert!(dead.gave_up && dead.ended, "{dead:?}");
    assert_eq!((dead.connection_attempts, dead.failed_attempts, dead.events_received), (3, 3, 0));
    let error = dead.last_error.unwrap_or_default();
    assert!(error.contains(&dead_url), "the error names the URL: {error}");
    assert!(error.to_lowercase().contains("connect"), "the error says what failed: {error}");
    assert_eq!(ids(&received), (1..=300).collect::<Vec<u64>>(), "the live source delivered everything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_an_unreachable_source_keeps_retrying_without_stopping_the_pipeline() {
    let live =
        emulator(EmulatorConfig { rate: Rate::Max, limit: Some(300), ..EmulatorConfig::default() }).await;
    let dead_url = url_of_a_closed_port();
    let dead = SseSourceConfig::new(&dead_url)
        .unwrap()
        .backoff(Duration::from_millis(10), Duration::from_millis(50));
    let dead_stats = dead.stats();
    let live_source = SseSourceConfig::new(&live.url("/tweets/1")).unwrap();
    let received = Received::default();
    let mut pipeline = Pipeline::new();
    pipeline.producer("dead", move || SseReceiver::new(&dead));
    pipeline.producer("live", move || SseReceiver::new(&live_source));
    pipeline
        .consumer("record", recorder(&received))
        .subscribe_to("dead", SubscribeOptions::default())
        .subscribe_to("live", SubscribeOptions::default());
    let running = pipeline.start().unwrap();

    wait_until("all 300 live events", || received.lock().unwrap().len(), |&n| n == 300).await;
    let dead = wait_until("5 failed attempts", || dead_stats.snapshot(), |s| s.failed_attempts >= 5).await;
    assert!(!dead.ended && !dead.gave_up, "still retrying: {dead:?}");
    assert!(dead.last_error.unwrap_or_default().contains(&dead_url));
    let summary = running.stop().await.expect("stopping is clean");
    let restarts: u64 = summary.stages.iter().map(|stage| stage.restarts).sum();
    assert_eq!(restarts, 0, "nothing crashed");
}

// ---- kill messages and malformed events -----------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_messages_pass_through_as_their_own_kind() {
    let config = EmulatorConfig {
        rate: Rate::Max,
        seed: 21,
        limit: Some(300),
        kill_ratio: 0.3,
        ..EmulatorConfig::default()
    };
    let generator =
        TweetGenerator::new(config.seed, config.kill_ratio, config.malformed_ratio, Vocabulary::shipped());
    let emulator = emulator(config).await;
    let source = SseSourceConfig::new(&emulator.url("/tweets/1")).unwrap();
    let stats = source.stats();
    let received = Received::default();
    let mut pipeline = Pipeline::new();
    pipeline.producer("tweets", move || SseReceiver::new(&source));
    pipeline.consumer("record", recorder(&received)).subscribe_to("tweets", SubscribeOptions::default());
    let mut running = pipeline.start().unwrap();
    wait_for_end(&mut running).await;

    let received = received.lock().unwrap();
    assert_eq!(received.len(), 300);
    for (sequence, event) in (1..).zip(received.iter()) {
        assert_eq!(event.id, sequence.to_string());
        match (generator.event(1, sequence), &event.message) {
            (GeneratedEvent::Kill, TweetMessage::Kill) => {}
            (GeneratedEvent::Tweet(sent), TweetMessage::Tweet(got)) => assert_eq!(&sent, got),
            (sent, got) => panic!("event {sequence}: the emulator sent {sent:?}, the receiver gave {got:?}"),
        }
    }
    let kills = received.iter().filter(|event| event.message == TweetMessage::Kill).count() as u64;
    let sent: u64 = emulator.stats().for_stream(1).map(|c| c.kills_sent).sum();
    assert!(kills > 30, "a 0.3 kill ratio gives kills: {kills}");
    assert_eq!((stats.snapshot().kills, stats.snapshot().tweets), (kills, 300 - kills));
    assert_eq!(sent, kills);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_events_are_counted_and_skipped_without_a_crash() {
    let config = EmulatorConfig {
        rate: Rate::Max,
        seed: 8,
        limit: Some(300),
        kill_ratio: 0.05,
        malformed_ratio: 0.2,
        ..EmulatorConfig::default()
    };
    let generator =
        TweetGenerator::new(config.seed, config.kill_ratio, config.malformed_ratio, Vocabulary::shipped());
    let expected_malformed: Vec<u64> =
        (1..=300).filter(|&s| matches!(generator.event(1, s), GeneratedEvent::Malformed(_))).collect();
    let emulator = emulator(config).await;
    let source = SseSourceConfig::new(&emulator.url("/tweets/1")).unwrap();
    let stats = source.stats();
    let received = Received::default();
    let mut pipeline = Pipeline::new();
    pipeline.producer("tweets", move || SseReceiver::new(&source));
    pipeline.consumer("record", recorder(&received)).subscribe_to("tweets", SubscribeOptions::default());
    let mut running = pipeline.start().unwrap();
    wait_for_end(&mut running).await;

    let got = ids(&received);
    let expected: Vec<u64> = (1..=300).filter(|s| !expected_malformed.contains(s)).collect();
    assert!(
        expected_malformed.len() > 20,
        "a 0.2 ratio gives malformed events: {}",
        expected_malformed.len()
    );
    assert_eq!(got, expected, "every event but the malformed ones, in order");
    let stats = stats.snapshot();
    assert_eq!(stats.malformed, expected_malformed.len() as u64);
    assert_eq!(stats.events_received, 300);
    let sent: u64 = emulator.stats().for_stream(1).map(|c| c.malformed_sent).sum();
    assert_eq!(sent, stats.malformed);
    let restarts: u64 = running.metrics().iter().map(|stage| stage.restarts).sum();
    assert_eq!(restarts, 0, "a malformed event is no crash");
}

// ---- the emulator's other endpoints ---------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_serves_the_lexicon_stats_and_clear_errors() {
    let emulator =
        emulator(EmulatorConfig { rate: Rate::Max, limit: Some(5), ..EmulatorConfig::default() }).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let get = |path: &str, last_event_id: Option<&str>| {
        let mut request = client.get(emulator.url(path));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        async move {
            let response = request.send().await.expect("the emulator answers");
            (response.status().as_u16(), response.text().await.expect("a body"))
        }
    };

    let (status, lexicon) = get("/emotion_values", None).await;
    assert_eq!(status, 200);
    assert!(lexicon.lines().count() > 7_000, "{} lexicon lines", lexicon.lines().count());
    assert!(lexicon.lines().all(|line| line.split('\t').nth(1).is_some_and(|s| s.parse::<f64>().is_ok())));
    assert!(lexicon.lines().any(|line| line == "good\t1.9"));

    let (status, body) = get("/tweets/1", None).await;
    assert_eq!(status, 200);
    assert_eq!(body.matches("\n\n").count(), 5, "--limit 5 ends the stream after 5 events");
    assert!(body.starts_with("id: 1\ndata: {\"message\":{\"tweet\":{"), "{body}");
    assert_eq!(
        get("/tweets/1", Some("3")).await.1.matches("\n\n").count(),
        2,
        "Last-Event-ID 3 resumes at 4"
    );
    assert_eq!(get("/tweets/1", Some("5")).await.0, 204, "past the end: 204 No Content");
    assert_eq!(
        get("/tweets/1", Some(&u64::MAX.to_string())).await.0,
        204,
        "the largest id is past the end too"
    );
    let (status, message) = get("/tweets/1", Some("abc")).await;
    assert_eq!((status, message.trim()), (400, "Last-Event-ID must be a sequence number, got 'abc'"));
    let (status, message) = get("/tweets/99", None).await;
    assert_eq!((status, message.trim()), (404, "no tweet stream '99': streams are /tweets/1 to /tweets/16"));

    let (status, stats) = get("/stats", None).await;
    assert_eq!(status, 200);
    let stats: EmulatorStats = serde_json::from_str(&stats).expect("stats are JSON");
    let served: u64 = stats.for_stream(1).map(|c| c.events_sent).sum();
    let streams: u64 = stats.for_stream(1).map(|c| c.sse_requests).sum();
    assert_eq!((served, streams), (7, 2), "the 204, 400 and 404 answers sent no events: {stats:?}");
    assert!(stats.connections.iter().all(|c| c.bytes_written > 0));

    // The same seed serves the same bytes.
    let twin = start_emulator(
        "127.0.0.1:0",
        EmulatorConfig { rate: Rate::Max, limit: Some(5), ..EmulatorConfig::default() },
    )
    .await
    .unwrap();
    let twin_body = client.get(twin.url("/tweets/1")).send().await.unwrap().text().await.unwrap();
    assert_eq!(twin_body, body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_over_the_cap_is_skipped_named_and_the_stream_goes_on() {
    // A server of one response: event 1, event 2 of 4 MiB in 64 KiB data lines, event 3, then the end.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/tweets/1", listener.local_addr().unwrap());
    let generator = TweetGenerator::new(3, 0.0, 0.0, Vocabulary::shipped());
    let tweet = |sequence| match generator.event(1, sequence) {
        GeneratedEvent::Tweet(tweet) => stageflow_stages::tweet::tweet_sse_data(&tweet),
        other => panic!("not a tweet: {other:?}"),
    };
    let (first, last) = (tweet(1), tweet(3));
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 4096];
        let _ = socket.read(&mut request).await;
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
        socket.write_all(head.as_bytes()).await.unwrap();
        socket.write_all(format!("id: 1\ndata: {first}\n\nid: 2\n").as_bytes()).await.unwrap();
        let line = format!("data: {}\n", "x".repeat(64 << 10));
        for _ in 0..64 {
            socket.write_all(line.as_bytes()).await.unwrap();
        }
        socket.write_all(format!("\nid: 3\ndata: {last}\n\n").as_bytes()).await.unwrap();
        // Later connections find the port closed: the receiver gives up.
    });
    let source = SseSourceConfig::new(&url)
        .unwrap()
        .max_event_bytes(256 << 10)
        .backoff(Duration::from_millis(10), Duration::from_millis(10))
        .give_up_after(1);
    let stats = source.stats();
    let received = Received::default();
    let mut pipeline = Pipeline::new();
    pipeline.producer("tweets", move || SseReceiver::new(&source));
    pipeline.consumer("record", recorder(&received)).subscribe_to("tweets", SubscribeOptions::default());
    let mut running = pipeline.start().unwrap();
    wait_for_end(&mut running).await;
    server.await.unwrap();

    assert_eq!(ids(&received), [1, 3], "the events around the one over the cap");
    let stats = stats.snapshot();
    assert_eq!((stats.events_received, stats.tweets, stats.malformed), (3, 2, 1), "{stats:?}");
    assert_eq!(stats.last_event_id, "3");
    let restarts: u64 = running.metrics().iter().map(|stage| stage.restarts).sum();
    assert_eq!(restarts, 0, "an event over the cap is no crash");
}
