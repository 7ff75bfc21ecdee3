//! `stageflow serve` over real TCP: sessions sharing one tweet pipeline, a
//! client that stops reading beside one that keeps reading, the pipeline
//! stopping when the last watcher leaves, kill-message crashes in `stats`,
//! and bad input.
//!
//! The server and the emulator run in-process on 127.0.0.1 port 0 (so the
//! server's status and the emulator's per-connection stats can be read) and
//! are stopped by their handles when each test ends. The pipeline is the
//! real `pipelines/tweets.toml` under a name of its own per test. Waits poll
//! with deadlines; nothing sleeps and hopes.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stageflow_stages::analysis::logger::KILL_PANIC;
use stageflow_stages::emulator::{EmulatorConfig, EmulatorHandle, Rate, start_emulator};
use stageflow_stages::serve::{STATS_LINES, ServeConfig, ServeHandle, ServeStatus, start_serve};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Generous bound for anything that should take well under a second.
const DEADLINE: Duration = Duration::from_secs(60);

// ---- helpers ---------------------------------------------------------------

/// `pipelines/tweets.toml` renamed to `name` (so tests in this process keep
/// their statistics apart), written into `dir`.
fn pipeline_file(dir: &Path, name: &str) -> PathBuf {
    let original = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/tweets.toml");
    let text = std::fs::read_to_string(&original).expect("pipelines/tweets.toml is readable");
    assert!(text.contains("name = \"tweets\""), "the file names its pipeline");
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text.replacen("name = \"tweets\"", &format!("name = \"{name}\""), 1)).unwrap();
    path
}

async fn emulator(rate: f64, kill_ratio: f64) -> EmulatorHandle {
    let config = EmulatorConfig { rate: Rate::Fixed(rate), seed: 7, kill_ratio, ..EmulatorConfig::default() };
    start_emulator("127.0.0.1:0", config).await.expect("the emulator starts")
}

/// A server for `emulator`'s streams, the logger without emulated work, then `tweak`ed.
async fn server(
    dir: &Path,
    name: &str,
    emulator: &EmulatorHandle,
    tweak: impl FnOnce(&mut ServeConfig),
) -> ServeHandle {
    let mut config = ServeConfig::new("127.0.0.1:0".parse().unwrap(), pipeline_file(dir, name));
    config.sse_url = emulator.url("/tweets");
    config.data_dir = dir.join("data");
    config.overrides = vec!["logger.sleep_mean_ms=0".into(), "statistics.output=\"none\"".into()];
    tweak(&mut config);
    start_serve(config).await.expect("the server starts")
}

/// Polls `check` until it holds or the deadline passes (then fails with `what`).
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < DEADLINE, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_tweet(line: &str) -> bool {
    line.starts_with("tweet: ") || line.starts_with("[skipped ")
}

/// A line client, as `nc` would be.
struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Client {
    /// Connects and reads the greeting.
    async fn connect(addr: SocketAddr) -> Client {
        Client::greeted(TcpStream::connect(addr).await.expect("connects")).await
    }

    /// Connects with a small receive buffer, so that a client that stops
    /// reading fills its socket (and the server's outbox) sooner.
    async fn connect_small(addr: SocketAddr) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        Client::greeted(socket.connect(addr).await.expect("connects")).await
    }

    async fn greeted(stream: TcpStream) -> Client {
        let (reader, writer) = stream.into_split();
        let mut client = Client { reader: BufReader::new(reader), writer };
        let greeting = client.line().await.expect("a greeting");
        assert!(greeting.contains("type twitter"), "{greeting}");
        client
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("sends");
    }

    async fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\n").as_bytes()).await;
    }

    /// The next line, `None` at the end of the connection.
    async fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        let read = tokio::time::timeout(DEADLINE, self.reader.read_line(&mut line))
            .await
            .expect("a line within the deadline")
            .expect("reads");
        (read > 0).then(|| line.trim_end_matches(['\r', '\n']).to_string())
    }

    /// The next line that is not a tweet line (a reply).
    async fn reply(&mut self) -> String {
        loop {
            let line = self.line().await.expect("a reply before the connection closed");
            if !is_tweet(&line) {
                return line;
            }
        }
    }

    /// Sends `command` and returns its reply.
    async fn ask(&mut self, command: &str) -> String {
        self.send(command).await;
        self.reply().await
    }

    /// `stats`: the first line and the lines `stats: ...` that follow it when a pipeline runs.
    async fn stats(&mut self) -> Vec<String> {
        let first = self.ask("stats").await;
        let mut lines = vec![first.clone()];
        if first.starts_with("ok stats of pipeline") {
            while lines.len() <= STATS_LINES {
                let line = self.line().await.expect("stats lines");
                assert!(line.starts_with("stats: "), "stats lines come together: {line}");
                lines.push(line);
            }
        }
        lines
    }

    /// The next `count` tweet lines, skipping replies.
    async fn tweets(&mut self, count: usize) -> Vec<String> {
        let mut tweets = Vec::with_capacity(count);
        while tweets.len() < count {
            let line = self.line().await.expect("tweet lines");
            if line.starts_with("tweet: ") {
                tweets.push(line);
            }
        }
        tweets
    }
}

/// Reads every line of a client in the background, keeping them with when they came.
#[derive(Clone, Default)]
struct Collected(Arc<Mutex<Vec<(Instant, String)>>>);

impl Collected {
    fn spawn(mut client: Client) -> (Collected, tokio::task::JoinHandle<Client>) {
        let collected = Collected::default();
        let lines = collected.clone();
        let task = tokio::spawn(async move {
            let mut line = String::new();
            loop {
                line.clear();
                match client.reader.read_line(&mut line).await {
                    Ok(0) | Err(_) => return client,
                    Ok(_) => lines.0.lock().unwrap().push((Instant::now(), line.trim_end().to_string())),
                }
            }
        });
        (collected, task)
    }

    fn tweets(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, l)| l.starts_with("tweet: "))
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// Tweet lines received in the last `window`.
    fn rate(&self, window: Duration) -> f64 {
        let now = Instant::now();
        let count = self
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, l)| now.duration_since(*at) <= window && l.starts_with("tweet: "))
            .count();
        count as f64 / window.as_secs_f64()
    }
}

/// The test process's resident memory, KiB (Linux).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

fn open_streams(emulator: &EmulatorHandle) -> Vec<u32> {
    let mut streams: Vec<u32> =
        emulator.stats().connections.iter().filter(|c| c.open).map(|c| c.stream).collect();
    streams.sort_unstable();
    streams
}

// ---- tests -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_watchers_share_one_pipeline_a_stalled_one_loses_lines_not_memory_and_it_stops_when_they_leave() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = emulator(600.0, 0.0).await;
    let outbox_lines = 200;
    let server =
        server(dir.path(), "serve-shared", &emulator, |config| config.outbox_lines = outbox_lines).await;
    let idle: ServeStatus = server.status();
    assert_eq!((idle.stages_running, idle.watching, idle.pipelines_started), (0, 0, 0));

    let mut first = Client::connect(server.local_addr()).await;
    let mut second = Client::connect_small(server.local_addr()).await;
    let mut third = Client::connect(server.local_addr()).await;
    let reply = first.ask("twitter").await;
    assert!(reply.starts_with("ok started pipeline 'serve-shared'; 1 session watching"), "{reply}");
    let (first_lines, first_reader) = Collected::spawn(first);
    let reply = second.ask("twitter").await;
    assert!(reply.starts_with("ok joined pipeline 'serve-shared'; 2 sessions watching"), "{reply}");
    let second_tweets = second.tweets(100).await;
    eventually("the first session got 100 tweets too", || first_lines.tweets().len() >= 100).await;

    // One pipeline: one SSE connection per stream at the emulator, every line of the joiner seen by the starter.
    let status = server.status();
    assert_eq!(status.pipelines_started, 1);
    assert_eq!(status.watching, 2);
    let stages_running = status.stages_running;
    assert!(stages_running >= 10, "the tweets.toml stages and log_lines run: {stages_running}");
    assert_eq!(open_streams(&emulator), [1, 2], "one connection per stream, not per client");
    assert_eq!(emulator.stats().connections.len(), 2);
    eventually("the starter saw every line the joiner saw", || {
        let seen: HashSet<String> = first_lines.tweets().into_iter().collect();
        second_tweets.iter().all(|line| seen.contains(line))
    })
    .await;

    // The third client, not watching, is served meanwhile.
    let stats = third.stats().await;
    assert!(stats[0].contains("2 watching"), "{stats:?}");
    assert!(stats.iter().any(|l| l.starts_with("stats: workers") && l.contains("logger")), "{stats:?}");

    // The second stops reading entirely: the server drops its oldest lines, in a bounded outbox.
    let stall_started = Instant::now();
    let skipped =
        |server: &ServeHandle| server.status().outboxes.values().map(|o| o.skipped).max().unwrap_or(0);
    eventually("the stalled session's outbox dropped 2000 lines", || skipped(&server) >= 2000).await;
    let overflowing_after = stall_started.elapsed();
    let rss_before = rss_kib();
    // What the reading session (the first connection) was offered meanwhile: received or, if it read too slowly, skipped.
    let reader_skipped =
        |server: &ServeHandle| server.status().outboxes.values().next().map_or(0, |o| o.skipped);
    let offered_to_reader = || first_lines.tweets().len() as u64 + reader_skipped(&server);
    let (stalled_from, reader_from) = (skipped(&server), offered_to_reader());
    eventually("it dropped 6000 more", || skipped(&server) >= 8000).await;
    let rss_after = rss_kib();
    let (stalled_dropped, reader_offered) =
        (skipped(&server) - stalled_from, offered_to_reader() - reader_from);
    let status = server.status();
    let stalled = status.outboxes.values().find(|outbox| outbox.skipped >= 8000).copied().unwrap();
    // Meanwhile the first receives at the pipeline's full rate.
    let window = Duration::from_secs(2);
    let reader_rate = first_lines.rate(window);
    let stats = third.stats().await;
    let logged_rate: f64 = stats
        .iter()
        .find_map(|line| line.split("logged ").nth(1)?.split(',').next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("a logged rate in {stats:?}"));
    eprintln!(
        "stalled session: {stalled:?} (overflowing {:.1} s after it stopped reading); \
         reader {reader_rate:.0} lines/s, pipeline logged {logged_rate:.0} tweets/s; \
         test-process VmRSS {rss_before} KiB -> {rss_after} KiB while 6000 more lines were dropped; \
         lines seen by the reader: {}",
        overflowing_after.as_secs_f64(),
        first_lines.tweets().len()
    );
    assert!(stalled.peak_lines <= outbox_lines, "the outbox never held more than its bound: {stalled:?}");
    assert!(stalled.bytes <= 256 * 1024);
    // The stalled session held nobody back: while it dropped lines, the reading session was offered as
    // many (less what sat in the two outboxes and socket buffers), whether its client read them all in
    // time or not (a loaded machine may read slower than the pipeline logs; that is not what this checks).
    assert!(
        reader_rate > 0.0 && reader_offered + 1000 >= stalled_dropped,
        "the reader was offered {reader_offered} lines while the stalled session dropped {stalled_dropped} \
         (reader {reader_rate:.0}/s of {logged_rate:.0}/s logged)"
    );
    assert!(
        rss_after < rss_before + 32 * 1024,
        "memory stays bounded: {rss_before} KiB then {rss_after} KiB"
    );
    assert_eq!(open_streams(&emulator), [1, 2], "still one connection per stream");

    // The third's commands still answer while one session stalls.
    assert!(third.ask("help").await.starts_with("ok commands: twitter"));

    // Both watchers leave, the stalled one abruptly with unread data: the pipeline drains and stops.
    drop(second);
    first_reader.abort();
    let _ = first_reader.await;
    eventually("the server is idle again", || {
        let status = server.status();
        status.watching == 0 && status.stages_running == 0
    })
    .await;
    eventually("the emulator saw its connections close", || open_streams(&emulator).is_empty()).await;
    assert_eq!(emulator.stats().connections.len(), 2, "never more than one connection per stream");
    assert_eq!(third.ask("stats").await, "ok no pipeline is running; twitter starts it");

    // A later `twitter` starts it again.
    let reply = third.ask("twitter").await;
    assert!(reply.starts_with("ok started pipeline 'serve-shared'; 1 session watching"), "{reply}");
    assert_eq!(third.tweets(20).await.len(), 20);
    assert_eq!(third.ask("stop").await, "ok stopped watching");
    eventually("idle after stop", || server.status().stages_running == 0).await;
    assert_eq!(server.status().pipelines_started, 2);
    assert_eq!(third.ask("quit").await, "ok bye");
    assert_eq!(third.line().await, None, "quit closes the connection");
    eventually("every session gone", || server.status().sessions == 0).await;

    server.stop().await;
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_message_crashes_show_in_stats_and_the_pipeline_keeps_going() {
    // The logger panics on purpose on each kill message: keep those out of the test output.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.to_string().contains(KILL_PANIC) {
            default_hook(info)
        }
    }));
    let dir = tempfile::tempdir().unwrap();
    // 2 streams × 200 events/s × 1% kill messages: about 4 logger crashes a second, under its 100 per 5 s.
    let emulator = emulator(200.0, 0.01).await;
    let server = server(dir.path(), "serve-crashes", &emulator, |_| {}).await;
    let mut client = Client::connect(server.local_addr()).await;
    assert!(client.ask("twitter").await.starts_with("ok started pipeline 'serve-crashes'"));
    assert!(client.ask("twitter").await.starts_with("ok already watching"), "twice is not a second pipeline");
    assert_eq!(server.status().pipelines_started, 1);

    let crashes_of = |stats: &[String]| -> u64 {
        let line = stats.iter().find(|l| l.starts_with("stats: crashes")).expect("a crashes line");
        line.split_whitespace().nth(2).and_then(|n| n.parse().ok()).expect("a count")
    };
    let logged_of = |stats: &[String]| -> u64 {
        let line = stats.iter().find(|l| l.starts_with("stats: events/s")).expect("an events line");
        let after = line.split("logged ").last().unwrap_or_default();
        after.trim().parse().unwrap_or_else(|_| panic!("a logged total in: {line}"))
    };
    let mut stats = client.stats().await;
    let started = Instant::now();
    while crashes_of(&stats) < 5 {
        assert!(started.elapsed() < DEADLINE, "no crashes reported: {stats:?}");
        client.tweets(10).await;
        stats = client.stats().await;
    }
    let crashes = crashes_of(&stats);
    let logged = logged_of(&stats);
    eprintln!("stats after crashes:\n{}", stats.join("\n"));
    // The pipeline goes on: more tweets arrive and are logged, and crashes keep being counted.
    assert_eq!(client.tweets(200).await.len(), 200);
    let later = client.stats().await;
    assert!(logged_of(&later) > logged, "more tweets logged after the crashes: {later:?}");
    assert!(crashes_of(&later) >= crashes);
    assert!(later.iter().any(|l| l.contains("events lost")), "{later:?}");
    assert_eq!(server.status().pipelines_started, 1, "the crashes did not restart the pipeline");
    drop(client);
    eventually("idle after the watcher left", || server.status().stages_running == 0).await;
    server.stop().await;
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_errors_and_the_connection_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = emulator(100.0, 0.0).await;
    let server = server(dir.path(), "serve-input", &emulator, |config| {
        config.max_line_bytes = 64;
        config.max_connections = 3;
    })
    .await;
    let mut client = Client::connect(server.local_addr()).await;
    assert_eq!(client.ask("twiter").await, "error: unknown command 'twiter'; type help for the commands");
    assert_eq!(client.ask("").await, "error: empty line; type help for the commands");
    assert!(client.ask("stop now").await.contains("takes no arguments"));
    client.send_raw(b"\xff\xfe\xfd\r\n").await;
    assert!(client.reply().await.contains("not valid UTF-8"));
    client.send_raw(&[b'x'; 100_000]).await;
    client.send_raw(b"\n").await;
    assert_eq!(client.reply().await, "error: line longer than the 64 byte limit; it was skipped");
    assert_eq!(client.ask("stop").await, "ok not watching; twitter starts");
    assert_eq!(client.ask("stats").await, "ok no pipeline is running; twitter starts it");
    assert!(client.ask("HELP\r").await.starts_with("ok commands: twitter"));
    assert_eq!(server.status().stages_running, 0, "nothing started by bad input");

    // An abrupt disconnect in the middle of a line disturbs nobody.
    let mut other = Client::connect(server.local_addr()).await;
    other.send_raw(b"twit").await;
    drop(other);
    eventually("the dropped session is gone", || server.status().sessions == 1).await;
    let mut third = Client::connect(server.local_addr()).await;
    let _fourth = Client::connect(server.local_addr()).await;
    let mut fifth = TcpStream::connect(server.local_addr()).await.unwrap();
    let mut refused = String::new();
    let mut reader = BufReader::new(&mut fifth);
    tokio::time::timeout(DEADLINE, reader.read_line(&mut refused)).await.unwrap().unwrap();
    assert_eq!(refused.trim_end(), "error: too many connections (limit 3); try again later");
    assert!(third.ask("help").await.starts_with("ok commands"));
    assert_eq!(client.ask("quit").await, "ok bye");
    assert_eq!(client.line().await, None);
    eventually("closed sessions are forgotten", || server.status().sessions == 2).await;
    server.stop().await;
    emulator.stop().await;
}

#[tokio::test]
async fn a_file_serve_cannot_run_is_refused_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-logger.toml");
    std::fs::write(
        &path,
        "[pipeline]\nname = \"x\"\n\n[[stage]]\nid = \"n\"\nkind = \"numbers\"\n\n[[stage]]\nid = \"s\"\nkind = \"sum\"\nsubscribe_to = [\"n\"]\n",
    )
    .unwrap();
    let config = ServeConfig::new("127.0.0.1:0".parse().unwrap(), &path);
    let error = start_serve(config).await.err().expect("refused");
    assert!(error.contains("no stage of kind \"logger\""), "{error}");
    let missing = ServeConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("missing.toml"));
    assert!(start_serve(missing).await.err().expect("refused").contains("cannot read"));
    let mut streams =
        ServeConfig::new("127.0.0.1:0".parse().unwrap(), pipeline_file(dir.path(), "serve-streams"));
    streams.streams = Some(17);
    assert!(start_serve(streams).await.err().expect("refused").contains("--streams must be from 1 to 16"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_sets_how_many_sse_connections_the_pipeline_opens() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = emulator(100.0, 0.0).await;
    let server = server(dir.path(), "serve-three", &emulator, |config| config.streams = Some(3)).await;
    let mut client = Client::connect(server.local_addr()).await;
    assert!(client.ask("twitter").await.starts_with("ok started"));
    client.tweets(10).await;
    eventually("three streams are open", || open_streams(&emulator) == [1, 2, 3]).await;
    assert_eq!(client.ask("quit").await, "ok bye");
    eventually("idle", || server.status().stages_running == 0).await;
    eventually("the streams closed", || open_streams(&emulator).is_empty()).await;
    server.stop().await;
    emulator.stop().await;
}

/// GETs `url` (within [`DEADLINE`]) and returns the status and body.
async fn http_get(url: &str) -> (u16, String) {
    let client = reqwest::Client::builder().timeout(DEADLINE).build().expect("a client");
    let response = client.get(url).send().await.expect("answers");
    (response.status().as_u16(), response.text().await.expect("a body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_shows_the_shared_pipeline_while_someone_watches() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = emulator(300.0, 0.0).await;
    let server = server(dir.path(), "serve-http", &emulator, |config| {
        config.http = Some("127.0.0.1:0".parse().unwrap())
    })
    .await;
    let url = server.http_url().expect("--http was set");
    let graph = |body: String| serde_json::from_str::<serde_json::Value>(&body).expect("JSON");
    assert_eq!(graph(http_get(&format!("{url}/api/graph")).await.1)["pipeline"], serde_json::Value::Null);
    assert_eq!(http_get(&format!("{url}/readyz")).await, (200, "ready\n".to_string()), "idle is ready");

    let mut watcher = Client::connect(server.local_addr()).await;
    assert!(watcher.ask("twitter").await.starts_with("ok started pipeline 'serve-http'"));
    assert_eq!(watcher.tweets(5).await.len(), 5);
    let shown = graph(http_get(&format!("{url}/api/graph")).await.1);
    assert_eq!(shown["pipeline"], "serve-http");
    let edges = shown["edges"].as_array().expect("edges");
    assert!(edges.iter().any(|e| e["from"] == "logger" && e["to"] == "log_lines"), "{shown}");
    let series = r#"stageflow_events_out_total{pipeline="serve-http",stage="log_lines"} "#;
    let started = Instant::now();
    loop {
        let metrics = http_get(&format!("{url}/metrics")).await.1;
        let out = metrics.lines().find_map(|line| line.strip_prefix(series)?.parse::<f64>().ok());
        if out.is_some_and(|out| out > 0.0) {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "no log lines counted in\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The last watcher leaves: the pipeline drains, and the page shows none again.
    assert_eq!(watcher.ask("stop").await, "ok stopped watching");
    eventually("idle after stop", || server.status().stages_running == 0).await;
    let started = Instant::now();
    while graph(http_get(&format!("{url}/api/graph")).await.1)["pipeline"] != serde_json::Value::Null {
        assert!(started.elapsed() < DEADLINE, "the stopped pipeline is still shown");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
    emulator.stop().await;
}
