//! Scale-out on real servers: pipeline files cut into parts that run as
//! separate `stageflow run --part` processes, joined by a real
//! `nats-server` (JetStream), storing into a real SecantusDB.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use stageflow_stages::emulator::generator::{GeneratedEvent, TweetGenerator, Vocabulary};
use stageflow_stages::emulator::{EmulatorConfig, EmulatorHandle, Rate, start_emulator};
use support::nats::NatsServer;
use support::secantus::{Secantus, repository};
use tokio::time::Instant;

/// Held by each test for its whole run: they share the machine's two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SEED: u64 = 11;
const KILL_RATIO: f64 = 0.01;

/// A `stageflow` child process whose output is read as it comes (readable
/// while it runs), killed if the test ends first.
struct Stageflow {
    child: Child,
    stdout: Output,
    stderr: Output,
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// What a child wrote to one of its pipes so far.
type Output = std::sync::Arc<std::sync::Mutex<Vec<u8>>>;

fn drain(mut pipe: impl Read + Send + 'static, into: Output) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(read) = pipe.read(&mut chunk) {
            if read == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&chunk[..read]);
        }
    })
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.lock().unwrap()).into_owned()
}

impl Stageflow {
    fn start(args: &[&str], env: &[(&str, String)], data_dir: &Path) -> Stageflow {
        let mut command = Command::new(env!("CARGO_BIN_EXE_stageflow"));
        command.current_dir(repository()).args(args).arg("--data-dir").arg(data_dir);
        command.env_remove("EMULATOR_URL").env("RUST_LOG", "info,async_nats=warn");
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child =
            command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("stageflow starts");
        let (stdout, stderr) = (Output::default(), Output::default());
        let readers = vec![
            drain(child.stdout.take().expect("piped"), stdout.clone()),
            drain(child.stderr.take().expect("piped"), stderr.clone()),
        ];
        Stageflow { child, stdout, stderr, readers }
    }

    /// The partitions of its inbound cut edge it held when it last logged its live lines
    /// (not a terminal: every 5 s).
    fn partitions_held(&self) -> Option<u64> {
        let stderr = text(&self.stderr);
        let line = stderr.lines().rev().find(|line| line.contains("partitions held"))?;
        line.rsplit("partitions held").next()?.trim().parse().ok()
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("kill").args([signal, &self.child.id().to_string()]).status();
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().expect("waitable").is_none()
    }

    /// Waits for the process to end (at most `limit`); its exit and output.
    async fn finish(mut self, limit: Duration) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waitable") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let tail = |output: &Output| {
                    let all = text(output);
                    let lines: Vec<&str> = all.lines().collect();
                    lines[lines.len().saturating_sub(30)..].join("\n")
                };
                panic!(
                    "stageflow did not end within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                    tail(&self.stdout),
                    tail(&self.stderr)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        (status, text(&self.stdout), text(&self.stderr))
    }

    /// SIGINT (drain), then its output once it ended cleanly.
    async fn interrupt(self) -> (String, String) {
        self.signal("-INT");
        let (status, stdout, stderr) = self.finish(Duration::from_secs(60)).await;
        assert!(status.success(), "exit {status} after SIGINT\nstdout:\n{stdout}\nstderr:\n{stderr}");
        (stdout, stderr)
    }
}

impl Drop for Stageflow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The JetStream consumers of `stream`: (name, pending in the stream, delivered and unacked, pinned client).
async fn consumers(url: &str, stream: &str) -> Vec<(String, u64, usize, Option<String>)> {
    let client = async_nats::connect(url).await.expect("a NATS client");
    let js = jetstream::new(client);
    let Ok(stream) = js.get_stream(stream).await else { return Vec::new() };
    let mut names: Vec<String> = stream.consumer_names().try_collect().await.expect("consumer names");
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let info = stream.consumer_info(&name).await.expect("consumer info");
        let pinned = info.priority_groups.first().and_then(|group| group.pinned_client_id.clone());
        out.push((name, info.num_pending, info.num_ack_pending, pinned));
    }
    out
}

/// Waits until `done()` holds, failing with `what` after `limit`.
async fn until<F: std::future::Future<Output = bool>>(
    limit: Duration,
    what: &str,
    mut done: impl FnMut() -> F,
) {
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------- numbers across the cut

const NUMBERS: &str = r#"
[pipeline]
name = "numbers-cut"

[pipeline.cluster]
nats = "${NATS_URL}"
partitions = 4

[[stage]]
id = "source"
kind = "numbers"
part = "ingest"
start = 1
count = 3000

[[stage]]
id = "format"
kind = "format"
part = "process"
template = "n = {}"
subscribe_to = [{ id = "source", max_demand = 50 }]

[[stage]]
id = "print"
kind = "print"
part = "process"
subscribe_to = ["format"]
"#;

fn numbers_printed(stdout: &str) -> Vec<u64> {
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix("n = "))
        .map(|n| n.parse().expect("a number"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_number_crosses_the_cut_once_between_two_process_workers() {
    let _serial = SERIAL.lock().await;
    let Some(nats) = NatsServer::start().await else { return };
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("numbers.toml");
    std::fs::write(&file, NUMBERS).unwrap();
    let file = file.to_str().unwrap();
    let env = [("NATS_URL", nats.url())];
    let workers: Vec<Stageflow> =
        (0..2).map(|_| Stageflow::start(&["run", file, "--part", "process"], &env, data.path())).collect();
    let ingest = Stageflow::start(&["run", file, "--part", "ingest"], &env, data.path());
    let (status, stdout, stderr) = ingest.finish(Duration::from_secs(60)).await;
    assert!(status.success(), "ingest ends with its source: {status}\n{stdout}\n{stderr}");
    assert!(stdout.contains("| source.process | out | 3000"), "published and acked all:\n{stdout}");
    until(Duration::from_secs(60), "every message taken and acked", || async {
        let state = consumers(&nats.url(), "stageflow_numbers-cut").await;
        state.len() == 4 && state.iter().all(|(_, pending, unacked, _)| *pending == 0 && *unacked == 0)
    })
    .await;
    let mut printed = Vec::new();
    for worker in workers {
        let (stdout, _) = worker.interrupt().await;
        printed.extend(numbers_printed(&stdout));
    }
    printed.sort_unstable();
    assert_eq!(printed, (1..=3000).collect::<Vec<u64>>(), "each number printed exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_parts_in_one_process_need_no_nats() {
    let _serial = SERIAL.lock().await;
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("numbers.toml");
    std::fs::write(&file, NUMBERS).unwrap();
    // A URL nothing listens on: without --part it is never used.
    let env = [("NATS_URL", "nats://127.0.0.1:1".to_string())];
    let run = Stageflow::start(&["run", file.to_str().unwrap()], &env, data.path());
    let (status, stdout, stderr) = run.finish(Duration::from_secs(60)).await;
    assert!(status.success(), "{status}\n{stderr}");
    assert_eq!(numbers_printed(&stdout), (1..=3000).collect::<Vec<u64>>());
    assert!(!stderr.contains("NATS"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_nats_is_one_clear_line_then_retries_until_it_answers() {
    let _serial = SERIAL.lock().await;
    let Some(mut nats) = NatsServer::start().await else { return };
    nats.kill();
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("numbers.toml");
    std::fs::write(&file, NUMBERS).unwrap();
    let env = [("NATS_URL", nats.url())];
    let mut ingest =
        Stageflow::start(&["run", file.to_str().unwrap(), "--part", "ingest"], &env, data.path());
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(ingest.running(), "it keeps retrying");
    nats.launch().await;
    let (status, stdout, stderr) = ingest.finish(Duration::from_secs(60)).await;
    assert!(status.success(), "{status}\n{stderr}");
    let complaints: Vec<&str> = stderr.lines().filter(|line| line.contains("cannot reach NATS")).collect();
    assert_eq!(complaints.len(), 1, "one line, not one per retry:\n{stderr}");
    assert!(complaints[0].contains(&nats.url()), "it names the URL: {}", complaints[0]);
    assert!(stdout.contains("| source.process | out | 3000"), "{stdout}");
}

#[test]
fn check_names_file_line_and_setting_of_a_bad_cluster_table() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("bad.toml");
    let text = NUMBERS.replace("partitions = 4", "partitions = 0\nreplicas = \"three\"");
    std::fs::write(&file, text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_stageflow"))
        .args(["check", file.to_str().unwrap()])
        .env("NATS_URL", "nats://127.0.0.1:4222")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let path = file.display().to_string();
    assert!(
        stderr
            .contains(&format!("{path}:7:1: [pipeline.cluster] `partitions`: must be a whole number from 1")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{path}:8:1: [pipeline.cluster] `replicas`: must be a whole number")),
        "{stderr}"
    );
    assert!(stderr.contains("2 problems found"), "{stderr}");

    let text = NUMBERS.replace(
        "subscribe_to = [{ id = \"source\", max_demand = 50 }]",
        "subscribe_to = [{ id = \"source\", max_demand = 50, partition_by = \"user_id\" }]",
    );
    std::fs::write(&file, text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_stageflow"))
        .args(["check", file.to_str().unwrap()])
        .env("NATS_URL", "nats://127.0.0.1:4222")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("`partition_by = \"user_id\"` is not a key of u64 events"), "{stderr}");
}

// ---------------------------------------------------------------- the tweet pipeline across machines

/// Settings that make `pipelines/tweets-cluster.toml` quick in a test: a
/// logger without emulated work or output, short flushes, a sink that fails fast.
const FAST: &[&str] = &[
    "--set",
    "logger.sleep_mean_ms=0",
    "--set",
    "logger.output=\"none\"",
    "--set",
    "batcher.flush_interval=\"250ms\"",
    "--set",
    "store.user_flush_ms=200",
    "--set",
    "store.timeout=\"1s\"",
];

fn emulator_config(rate: Rate, limit: u64) -> EmulatorConfig {
    EmulatorConfig {
        rate,
        seed: SEED,
        limit: Some(limit),
        kill_ratio: KILL_RATIO,
        malformed_ratio: 0.0,
        close_after: None,
    }
}

async fn emulator(rate: Rate, limit: u64) -> EmulatorHandle {
    start_emulator("127.0.0.1:0", emulator_config(rate, limit)).await.expect("the emulator starts")
}

/// Tweet ids (originals extracted from retweets included) and per-user tweet counts the emulator's first `limit` events per stream make.
fn expected(limit: u64) -> (BTreeSet<String>, BTreeMap<String, u64>) {
    let generator = TweetGenerator::new(SEED, KILL_RATIO, 0.0, Vocabulary::shipped());
    let mut tweets = BTreeMap::new();
    for stream in 1..=2 {
        for sequence in 1..=limit {
            if let GeneratedEvent::Tweet(tweet) = generator.event(stream, sequence) {
                let mut next = Some(*tweet);
                while let Some(tweet) = next {
                    next = tweet.retweeted_status.as_deref().cloned();
                    tweets.entry(tweet.id_str.clone()).or_insert(tweet.user.id_str.clone());
                }
            }
        }
    }
    let mut per_user = BTreeMap::new();
    for user in tweets.values() {
        *per_user.entry(user.clone()).or_insert(0) += 1;
    }
    (tweets.into_keys().collect(), per_user)
}

/// The documents of one collection, by `_id`, as relaxed extended JSON, without
/// `engagement_counted` (the flush meant to count the tweet: a writer id, different in every run).
async fn collection(store: &Secantus, database: &str, name: &str) -> BTreeMap<String, String> {
    let client = store.client().await;
    let documents: Vec<Document> = client
        .database(database)
        .collection::<Document>(name)
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    documents
        .into_iter()
        .map(|mut document| {
            document.remove("engagement_counted");
            let id = document.get("_id").map(|id| id.to_string()).unwrap_or_default();
            (id.trim_matches('"').to_string(), Bson::Document(document).into_relaxed_extjson().to_string())
        })
        .collect()
}

async fn tweet_count(store: &Secantus, database: &str) -> u64 {
    let client = store.client().await;
    client.database(database).collection::<Document>("tweets").count_documents(doc! {}).await.unwrap_or(0)
}

/// Checks a store against the emulator's events: every tweet once, every
/// user's engagement counted once per tweet (a redelivery counted twice would show).
async fn assert_store_complete(store: &Secantus, database: &str, limit: u64) {
    let (tweets, per_user) = expected(limit);
    let stored = collection(store, database, "tweets").await;
    let stored_ids: BTreeSet<String> = stored.keys().cloned().collect();
    assert_eq!(stored_ids.len(), tweets.len(), "{database}: tweet count");
    assert_eq!(stored_ids, tweets, "{database}: tweet ids");
    let engagements = collection(store, database, "users_engagements").await;
    let mut missing = 0;
    for (user, count) in &per_user {
        let counted = engagements.get(user).map_or(0, |document| {
            let value: serde_json::Value = serde_json::from_str(document).unwrap();
            value
                .get("tweet_count")
                .and_then(|n| n.as_f64())
                .unwrap_or_else(|| panic!("tweet_count in {document}")) as u64
        });
        assert!(counted <= *count, "{database}: user {user} counted {counted} times for {count} tweets");
        missing += count - counted;
    }
    assert!(engagements.keys().all(|user| per_user.contains_key(user)), "{database}: only users who tweeted");
    assert_eq!(missing, 0, "{database}: every tweet counted in its user's engagement");
}

/// Waits until `database` holds `count` tweets.
async fn until_stored(store: &Secantus, database: &str, count: usize, limit: Duration) {
    until(limit, &format!("{count} tweets stored in {database}"), || async {
        tweet_count(store, database).await >= count as u64
    })
    .await;
}

fn tweets_cluster() -> String {
    repository().join("pipelines/tweets-cluster.toml").display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_and_two_process_workers_store_what_one_process_stores_id_for_id() {
    let _serial = SERIAL.lock().await;
    let Some(nats) = NatsServer::start().await else { return };
    let Some(store) = Secantus::start(false).await else { return };
    let limit = 400;
    let (tweets, _) = expected(limit);
    let file = tweets_cluster();
    let data = tempfile::tempdir().unwrap();

    // One process, every part: NATS is not used.
    let whole = emulator(Rate::Max, limit).await;
    let env = [
        ("EMULATOR_URL", whole.url("").trim_end_matches('/').to_string()),
        ("MONGODB_URI", store.uri("whole")),
        ("NATS_URL", "nats://127.0.0.1:1".into()),
    ];
    let mut args = vec!["run", &file];
    args.extend(FAST);
    let one = Stageflow::start(&args, &env, data.path());
    // A finite source: the run ends by itself, statistics and hashtags after the data.
    let (status, stdout, stderr) = one.finish(Duration::from_secs(120)).await;
    assert!(status.success(), "one process ends with its data: {status}\n{stdout}\n{stderr}");
    assert!(stdout.contains("pipeline 'tweets-cluster' finished"), "{stdout}");
    assert_store_complete(&store, "whole", limit).await;

    // The same events through the cut: one ingest process, two process workers.
    let cut = emulator(Rate::Max, limit).await;
    let env = [
        ("EMULATOR_URL", cut.url("").trim_end_matches('/').to_string()),
        ("MONGODB_URI", store.uri("cut")),
        ("NATS_URL", nats.url()),
    ];
    let mut args = vec!["run", &file, "--part", "process"];
    args.extend(FAST);
    let workers: Vec<Stageflow> = (0..2).map(|_| Stageflow::start(&args, &env, data.path())).collect();
    let mut args = vec!["run", &file, "--part", "ingest"];
    args.extend(FAST);
    let ingest = Stageflow::start(&args, &env, data.path());
    let (status, stdout, stderr) = ingest.finish(Duration::from_secs(120)).await;
    assert!(status.success(), "ingest ends when its streams end: {status}\n{stdout}\n{stderr}");
    until_stored(&store, "cut", tweets.len(), Duration::from_secs(90)).await;
    for worker in workers {
        let (stdout, _) = worker.interrupt().await;
        assert!(stdout.contains("| tweets.process | in"), "{stdout}");
    }
    assert_store_complete(&store, "cut", limit).await;
    for name in ["tweets", "users"] {
        let (cut, whole) = (collection(&store, "cut", name).await, collection(&store, "whole", name).await);
        let differing: Vec<&String> = whole.keys().filter(|id| cut.get(*id) != whole.get(*id)).collect();
        assert_eq!(
            (cut.len(), differing.len()),
            (whole.len(), 0),
            "{name}: id for id; first difference: {:?}",
            differing.first().map(|id| (cut.get(*id), &whole[*id]))
        );
    }
}

/// The pin id of each partition of the tweet edge (a pin belongs to one pull client, not one process).
async fn pin_ids(nats_url: &str) -> Vec<Option<String>> {
    consumers(nats_url, "stageflow_tweets-cluster")
        .await
        .into_iter()
        .map(|(_, _, _, pinned)| pinned)
        .collect()
}

fn process_args(file: &str) -> Vec<&str> {
    let mut args = vec!["run", file, "--part", "process"];
    args.extend(FAST);
    args
}

fn ingest_args(file: &str) -> Vec<&str> {
    let mut args = vec!["run", file, "--part", "ingest"];
    args.extend(FAST);
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_worker_killed_mid_stream_leaves_its_partitions_to_the_other_and_nothing_twice() {
    let _serial = SERIAL.lock().await;
    let Some(nats) = NatsServer::start().await else { return };
    let Some(store) = Secantus::start(false).await else { return };
    let limit = 2000;
    let (tweets, _) = expected(limit);
    let file = tweets_cluster();
    let data = tempfile::tempdir().unwrap();
    let source = emulator(Rate::Fixed(250.0), limit).await;
    let env = [
        ("EMULATOR_URL", source.url("").trim_end_matches('/').to_string()),
        ("MONGODB_URI", store.uri("kill")),
        ("NATS_URL", nats.url()),
    ];
    let mut workers: Vec<Stageflow> =
        (0..2).map(|_| Stageflow::start(&process_args(&file), &env, data.path())).collect();
    let ingest = Stageflow::start(&ingest_args(&file), &env, data.path());
    // The second worker gets its share: each holds some partitions.
    until(Duration::from_secs(60), "both workers to hold partitions", || {
        let held: Vec<Option<u64>> = workers.iter().map(Stageflow::partitions_held).collect();
        async move {
            held.iter().all(|held| held.is_some_and(|n| n > 0)) && held.iter().flatten().sum::<u64>() == 8
        }
    })
    .await;
    until_stored(&store, "kill", 300, Duration::from_secs(40)).await;
    let survivor_held = workers[1].partitions_held().expect("logged");
    let before = pin_ids(&nats.url()).await;
    let killed = workers.remove(0);
    killed.signal("-KILL");
    let killed_at = Instant::now();
    // The killed worker's partitions get new pins; the survivor's keep theirs.
    let orphaned = 8 - survivor_held as usize;
    until(Duration::from_secs(30), "the survivor to take over the killed worker's partitions", || async {
        let now = pin_ids(&nats.url()).await;
        now.iter().zip(&before).filter(|(now, before)| now.is_some() && now != before).count() >= orphaned
    })
    .await;
    let takeover = killed_at.elapsed();
    println!("takeover of {orphaned} partitions after SIGKILL: {:.1} s", takeover.as_secs_f64());
    let (status, stdout, stderr) = ingest.finish(Duration::from_secs(120)).await;
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    until_stored(&store, "kill", tweets.len(), Duration::from_secs(90)).await;
    // What the killed worker stored but had not counted comes back once its ack wait ends.
    until(Duration::from_secs(60), "every message acked", || async {
        let consumers = consumers(&nats.url(), "stageflow_tweets-cluster").await;
        !consumers.is_empty() && consumers.iter().all(|(_, pending, acks, _)| *pending == 0 && *acks == 0)
    })
    .await;
    let (stdout, _) = workers.remove(0).interrupt().await;
    assert!(stdout.contains("| tweets.process | in"), "{stdout}");
    assert_store_complete(&store, "kill", limit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_node_killed_mid_stream_loses_nothing_with_three_replicas() {
    let _serial = SERIAL.lock().await;
    let Some(mut servers) = NatsServer::cluster().await else { return };
    let Some(store) = Secantus::start(false).await else { return };
    let limit = 1500;
    let (tweets, _) = expected(limit);
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("tweets-cluster.toml");
    let text = std::fs::read_to_string(tweets_cluster()).unwrap().replace("replicas = 1", "replicas = 3");
    std::fs::write(&file, text).unwrap();
    let file = file.display().to_string();
    let source = emulator(Rate::Fixed(250.0), limit).await;
    let urls = servers.iter().map(NatsServer::url).collect::<Vec<_>>().join(",");
    let env = [
        ("EMULATOR_URL", source.url("").trim_end_matches('/').to_string()),
        ("MONGODB_URI", store.uri("replicated")),
        ("NATS_URL", urls),
    ];
    let worker = Stageflow::start(&process_args(&file), &env, data.path());
    let ingest = Stageflow::start(&ingest_args(&file), &env, data.path());
    until_stored(&store, "replicated", 300, Duration::from_secs(60)).await;
    servers[2].kill();
    let (status, stdout, stderr) = ingest.finish(Duration::from_secs(120)).await;
    assert!(status.success(), "ingest goes on with two of three nodes: {status}\n{stdout}\n{stderr}");
    until_stored(&store, "replicated", tweets.len(), Duration::from_secs(90)).await;
    worker.interrupt().await;
    assert_store_complete(&store, "replicated", limit).await;
}

/// Resident set size of a process in kB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Events the emulator has sent over both streams.
fn sent(source: &EmulatorHandle) -> u64 {
    let stats = source.stats();
    (1..=2).map(|stream| stats.for_stream(stream).map(|c| c.events_sent).sum::<u64>()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_store_caps_what_each_partition_hands_out_and_a_stopped_nats_stops_the_sse_reads() {
    let _serial = SERIAL.lock().await;
    let Some(mut nats) = NatsServer::start().await else { return };
    let Some(store) = Secantus::start(false).await else { return };
    let limit = 12_000;
    let file = tweets_cluster();
    let data = tempfile::tempdir().unwrap();
    let source = emulator(Rate::Fixed(1000.0), limit).await;
    let env = [
        ("EMULATOR_URL", source.url("").trim_end_matches('/').to_string()),
        ("MONGODB_URI", store.uri("pressure")),
        ("NATS_URL", nats.url()),
    ];
    let mut worker = Stageflow::start(&process_args(&file), &env, data.path());
    let mut ingest = Stageflow::start(&ingest_args(&file), &env, data.path());
    until_stored(&store, "pressure", 200, Duration::from_secs(60)).await;

    // NATS stops: the ingest side stops reading its SSE sockets.
    // What is already in the pipeline's credits (max_in_flight publishes,
    // buffers) and in the sockets' kernel buffers (megabytes on loopback)
    // fills first; then the emulator cannot send more.
    nats.kill();
    let stopped = sent(&source);
    let mut samples = vec![stopped];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        samples.push(sent(&source));
        let last = &samples[samples.len() - 3.min(samples.len())..];
        if last.len() == 3 && last[2] - last[0] < 100 {
            break;
        }
        assert!(Instant::now() < deadline, "the emulator's sent count did not plateau: {samples:?}");
    }
    let later = *samples.last().unwrap();
    println!("NATS stopped: the emulator's sent count every 2 s: {samples:?}");
    assert!(later < 2 * limit, "the streams have not ended yet");
    assert!(ingest.running() && worker.running(), "both wait for NATS");
    nats.launch().await;

    // The store stalls: each partition hands out at most max_demand
    // unacked messages; the rest waits in the stream, and the worker's
    // memory does not grow with it.
    store.pause();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_before = rss_kb(worker.child.id());
    let mut most_unacked = 0;
    let mut pending_seen = Vec::new();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let state = consumers(&nats.url(), "stageflow_tweets-cluster").await;
        for (name, _, unacked, _) in &state {
            // max_ack_pending is the largest max_demand of the subscriptions
            // sharing the edge: sentiment's default 1000.
            assert!(*unacked <= 1000, "{name}: {unacked} delivered and unacked, over max_demand 1000");
            most_unacked = most_unacked.max(*unacked);
        }
        pending_seen.push(state.iter().map(|(_, pending, _, _)| pending).sum::<u64>());
    }
    let rss_after = rss_kb(worker.child.id());
    println!(
        "stalled store: most unacked per partition {most_unacked}; pending in the stream {pending_seen:?}; worker RSS {rss_before} -> {rss_after} kB"
    );
    assert!(
        pending_seen.iter().max().is_some_and(|most| *most > 1000),
        "the backlog waits in the stream, not in the worker: {pending_seen:?}"
    );
    assert!(
        rss_after < rss_before + 64 * 1024,
        "worker RSS {rss_before} -> {rss_after} kB while the stream grew"
    );
    store.resume();

    // Everything read from the sockets was stored in the stream: the
    // ingest side ends with every publish acked (some retried), none lost.
    let (status, stdout, stderr) = ingest.finish(Duration::from_secs(180)).await;
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    let row = stdout.lines().find(|line| line.starts_with("| tweets.process")).expect("the cut edge's row");
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    let (published, acked) = (cells[3], cells[5]);
    assert_eq!(published, acked, "every publish acked: {row}");
    assert!(published.parse::<u64>().unwrap() >= 2 * limit, "every event read and published: {row}");
    assert_eq!(sent(&source), 2 * limit, "the emulator sent its whole streams");
    worker.interrupt().await;
}

// ---------------------------------------------------------------- the nats_publish and nats_subscribe kinds

const TO_NATS: &str = r#"
[pipeline]
name = "to-nats"

[[stage]]
id = "numbers"
kind = "numbers"
start = 1
count = 2000

[[stage]]
id = "text"
kind = "format"
template = "n = {}"
subscribe_to = ["numbers"]

[[stage]]
id = "publish"
kind = "nats_publish"
nats = "${NATS_URL}"
subject = "demo.lines"
stream = "demo"
subscribe_to = ["text"]
"#;

const FROM_NATS: &str = r#"
[pipeline]
name = "from-nats"

[[stage]]
id = "lines"
kind = "nats_subscribe"
nats = "${NATS_URL}"
stream = "demo"
subject = "demo.lines"
max_ack_pending = 100

[[stage]]
id = "print"
kind = "print"
subscribe_to = [{ id = "lines", max_demand = 50 }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_publishing_to_a_subject_and_a_file_reading_it_pass_every_line_once() {
    let _serial = SERIAL.lock().await;
    let Some(nats) = NatsServer::start().await else { return };
    let data = tempfile::tempdir().unwrap();
    let (to, from) = (data.path().join("to.toml"), data.path().join("from.toml"));
    std::fs::write(&to, TO_NATS).unwrap();
    std::fs::write(&from, FROM_NATS).unwrap();
    let env = [("NATS_URL", nats.url())];
    let publish = Stageflow::start(&["run", to.to_str().unwrap()], &env, data.path());
    let (status, stdout, stderr) = publish.finish(Duration::from_secs(60)).await;
    assert!(status.success(), "the publishing file ends with its numbers: {status}\n{stdout}\n{stderr}");
    let read = Stageflow::start(&["run", from.to_str().unwrap()], &env, data.path());
    until(Duration::from_secs(60), "every line read and acked", || async {
        let state = consumers(&nats.url(), "demo").await;
        state.len() == 1 && state[0].1 == 0 && state[0].2 == 0
    })
    .await;
    let (stdout, _) = read.interrupt().await;
    assert_eq!(numbers_printed(&stdout), (1..=2000).collect::<Vec<u64>>(), "each line once, in order");

    let bad = TO_NATS.replace("subject = \"demo.lines\"", "subject = \"demo.*\"");
    std::fs::write(&to, bad).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_stageflow"))
        .args(["check", to.to_str().unwrap()])
        .env("NATS_URL", nats.url())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("stage 'publish': `subject` must be tokens separated by dots, without wildcards"),
        "{stderr}"
    );
}
