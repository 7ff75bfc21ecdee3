//! The fault soak: `cargo bench --bench soak` (release; default 10 minutes,
//! `STAGEFLOW_SOAK_SECONDS` to change).
//!
//! - The tweet pipeline (`pipelines/tweets-mongo.toml`, a `stageflow run`
//!   child) into SecantusDB on disk, reading an emulator at a varying rate
//!   (50–500 events/s per stream) with kill messages on.
//! - A broker (`stageflow broker --sync always`, a child) with one publisher
//!   and 20 named subscribers: two never ack, one drops its connection and
//!   comes back every 3 s, the others ack everything.
//! - A telnet server (`stageflow serve`, a child, with an emulator of its
//!   own) and a session that connects, watches a few tweets and leaves, in a loop.
//! - Every fault period (60 s, or a quarter of a shorter run) the next
//!   fault, in turn: SecantusDB SIGKILLed and restarted on its data, the
//!   broker SIGKILLed and restarted on its data, the pipeline's SSE
//!   connections cut (its emulator restarted on the same port; the pipeline
//!   resumes with `Last-Event-ID`).
//!
//! At the end the emulator stops, the pipeline drains (SIGINT) and the soak
//! checks: every tweet the emulator sent (sequences 1..=last sent, per
//! stream, regenerated from the seed) is in the store exactly once; every
//! event the broker acknowledged to the publisher reached every acking
//! subscriber; and the RSS of each stageflow process, sampled each second,
//! has a slope under 1 % per hour after warm-up (the first third of the run;
//! for the broker, which a fault restarts, 30 s after its last restart).
//! Runs shorter than hours cannot resolve 1 %/h (on 26 MB that is 4 kB in
//! 10 minutes): the figure is reported and checked, but read it over a long
//! run (`STAGEFLOW_SOAK_SECONDS=7200`). Writes
//! `target/bench-report/soak.json` and `soak.svg` (RSS over time, faults
//! marked). Exits non-zero if a check fails.

#[path = "soak_parts/faults.rs"]
mod faults;
#[path = "load/plot.rs"]
#[allow(dead_code)]
mod plot;
#[path = "soak_parts/ranges.rs"]
mod ranges;
#[path = "load/report.rs"]
#[allow(dead_code)]
mod report;
#[path = "load/rss.rs"]
#[allow(dead_code)]
mod rss;
#[path = "../tests/support/secantus.rs"]
#[allow(dead_code)]
mod secantus;
#[path = "soak_parts/trend.rs"]
mod trend;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mongodb::bson::Document;
use plotters::prelude::SeriesLabelPosition;
use serde_json::json;
use stageflow_stages::broker_stages::client::{Connection, Incoming};
use stageflow_stages::emulator::generator::{GeneratedEvent, TweetGenerator, Vocabulary};
use stageflow_stages::emulator::{EmulatorConfig, EmulatorHandle, Rate, start_emulator};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant;

use faults::{Fault, faults_from};
use plot::{COLOURS, Line, Panel, Stroke};
use ranges::id_ranges;
use report::{Series, report_dir};
use rss::{rss_kb, status_kb};
use secantus::{Secantus, free_port, repository};
use trend::{BLOCK_S, MAX_SLOPE, Verdict, block_medians, slope_percent_per_hour, theil_sen, verdict};

const SEED: u64 = 42;
const KILL_RATIO: f64 = 0.002;
const SUBSCRIBERS: usize = 20;
const TOPIC: &str = "soak";
/// How long a restarted SecantusDB may take to answer: it reads its data back
/// first, and in a long soak that took 15–55 s after 90 minutes (a 140-minute
/// run died at 6 540 s on a limit of 60 s).
const MONGO_RESTART_LIMIT: Duration = Duration::from_secs(600);

fn emulator_config() -> EmulatorConfig {
    EmulatorConfig {
        rate: Rate::Varying { low: 50.0, high: 500.0, period: Duration::from_secs(5) },
        seed: SEED,
        limit: None,
        kill_ratio: KILL_RATIO,
        malformed_ratio: 0.0,
        close_after: None,
    }
}

/// The `stageflow` binary the soak runs: a copy made at its start, so a
/// build during a long soak cannot change what a restarted process runs.
static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// A `stageflow` child process, killed when dropped.
struct Process {
    name: &'static str,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    fn start(name: &'static str, args: Vec<String>, env: Vec<(String, String)>, logs: &Path) -> Process {
        let mut process = Process { name, args, env, log: logs.join(format!("{name}.log")), child: None };
        process.launch();
        process
    }

    fn launch(&mut self) {
        let log = std::fs::File::options().create(true).append(true).open(&self.log).expect("a log file");
        let binary = BINARY.get().map_or(Path::new(env!("CARGO_BIN_EXE_stageflow")), PathBuf::as_path);
        let child = Command::new(binary)
            .current_dir(repository())
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start stageflow {}: {error}", self.name));
        self.child = Some(child);
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGINT (drain and exit), then waits up to `limit`; true if it exited 0.
    async fn interrupt(&mut self, limit: Duration) -> bool {
        let Some(mut child) = self.child.take() else { return false };
        let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The 1-minute load average of the machine.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

// ---------------------------------------------------------------- broker load

#[derive(Default)]
struct BrokerBook {
    /// Ids the broker acknowledged (`ok`) to the publisher.
    published: BTreeSet<String>,
    /// Per subscriber, the ids delivered to it.
    delivered: Vec<HashSet<String>>,
    /// Reconnects per subscriber.
    reconnects: Vec<u64>,
}

async fn connect(addr: &str, window: usize) -> Connection {
    loop {
        if let Ok(connection) = Connection::open(addr, None, window, window + 64, &mut |_, _| {}).await {
            return connection;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn publisher(addr: String, book: Arc<Mutex<BrokerBook>>, stop: tokio::sync::watch::Receiver<bool>) {
    let mut connection = connect(&addr, 1).await;
    let mut next = 1u64;
    while !*stop.borrow() {
        let id = format!("p-{next}");
        let line =
            format!("pub {TOPIC} {}", json!({ "id": id, "priority": next % 10, "msg": { "n": next } }));
        match connection.request(&line, &mut |_, _| {}).await {
            Ok(Ok(_)) => {
                book.lock().unwrap().published.insert(id);
                next += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Refused or cut: the same id again on a new connection (the broker keeps it once).
            _ => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                connection = connect(&addr, 1).await;
            }
        }
    }
}

/// Subscriber `index`: acks (unless it is one of the two that never do) and records deliveries;
/// subscriber 2 leaves and comes back every 3 s.
async fn subscriber(
    addr: String,
    index: usize,
    book: Arc<Mutex<BrokerBook>>,
    ready: tokio::sync::mpsc::Sender<()>,
) {
    let acks = index >= 2;
    let mut announced = false;
    loop {
        let mut connection = connect(&addr, 50).await;
        let record = |topic: String, json: String, book: &Mutex<BrokerBook>| -> Option<String> {
            let event: serde_json::Value = serde_json::from_str(&json).ok()?;
            let id = event["id"].as_str()?.to_string();
            if topic == TOPIC {
                book.lock().unwrap().delivered[index].insert(id.clone());
            }
            Some(id)
        };
        let mut early = Vec::new();
        let named = connection.request(&format!("name sub-{index}"), &mut |t, j| early.push((t, j))).await;
        let resumed = matches!(&named, Ok(Ok(details)) if details.starts_with("resumed"));
        if !matches!(named, Ok(Ok(_))) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        if !resumed
            && !matches!(
                connection.request(&format!("sub {TOPIC}"), &mut |t, j| early.push((t, j))).await,
                Ok(Ok(_))
            )
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        if !announced {
            announced = true;
            let _ = ready.send(()).await;
        }
        let leave_at = (index == 2).then(|| Instant::now() + Duration::from_secs(3));
        let mut pending: Vec<(String, String)> = early;
        loop {
            for (topic, json) in pending.drain(..) {
                if let Some(id) = record(topic.clone(), json, &book)
                    && acks
                    && connection.send(&format!("ack {topic} {id}")).await.is_err()
                {
                    break;
                }
            }
            if connection.flush().await.is_err() {
                break;
            }
            let wait =
                leave_at.map_or(Duration::from_secs(3600), |at| at.saturating_duration_since(Instant::now()));
            match tokio::time::timeout(wait, connection.recv()).await {
                Ok(Ok(Incoming::Event { topic, json })) => pending.push((topic, json)),
                Ok(Ok(_)) => {}
                Ok(Err(_)) => break,
                Err(_) => break, // time to leave and come back
            }
        }
        book.lock().unwrap().reconnects[index] += 1;
        drop(connection);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------- telnet loop

async fn telnet_loop(addr: String, sessions: Arc<Mutex<(u64, u64)>>) {
    loop {
        let session = async {
            let stream = tokio::net::TcpStream::connect(&addr).await.ok()?;
            let (reader, mut writer) = stream.into_split();
            let mut lines = BufReader::new(reader).lines();
            writer.write_all(b"twitter\n").await.ok()?;
            let mut tweets = 0;
            while tweets < 5 {
                let line = lines.next_line().await.ok()??;
                if line.starts_with("tweet: ") {
                    tweets += 1;
                }
            }
            writer.write_all(b"quit\n").await.ok()?;
            Some(tweets)
        };
        let outcome = tokio::time::timeout(Duration::from_secs(20), session).await;
        {
            let mut counts = sessions.lock().unwrap();
            match outcome {
                Ok(Some(_)) => counts.0 += 1,
                _ => counts.1 += 1,
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

// ---------------------------------------------------------------- the soak

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    let passed = runtime.block_on(soak());
    if !passed {
        std::process::exit(1);
    }
}

/// Tweet ids the emulator sent on streams 1 and 2 up to `last[stream]`, originals of retweets included.
fn expected_ids(last: &BTreeMap<u32, u64>) -> BTreeSet<String> {
    let generator = TweetGenerator::new(SEED, KILL_RATIO, 0.0, Vocabulary::shipped());
    let mut ids = BTreeSet::new();
    for (&stream, &last) in last {
        for sequence in 1..=last {
            if let GeneratedEvent::Tweet(tweet) = generator.event(stream, sequence) {
                if let Some(original) = &tweet.retweeted_status {
                    ids.insert(original.id_str.clone());
                }
                ids.insert(tweet.id_str.clone());
            }
        }
    }
    ids
}

/// Stops `emulator` and adds the last sequence it sent per stream to `last`.
async fn stop_and_merge(last: &mut BTreeMap<u32, u64>, emulator: EmulatorHandle) {
    for connection in emulator.stop_and_count().await.connections {
        let entry = last.entry(connection.stream).or_default();
        *entry = (*entry).max(connection.last_sequence);
    }
}

/// Expected ids per range of the read-back, at the least. SecantusDB answers
/// a range on `_id` with a scan of the whole collection and holds the matches
/// before the first batch: one query for every id kept the server (and its
/// replies to the driver's monitor) busy for minutes and timed out. Ranges
/// keep each query's hold short; as each costs a scan, a long run reads in at
/// most `READ_RANGES` of them.
const READ_CHUNK: usize = 200_000;
/// Most ranges the read-back asks for.
const READ_RANGES: usize = 4;

/// A client for the read-back: the driver's monitor waits as long as a
/// range query may keep the (single-threaded) server busy, instead of
/// declaring it gone after the default 10 s and cutting the query.
async fn patient_client(server: &Secantus) -> Result<mongodb::Client, String> {
    let uri = format!(
        "{}&connectTimeoutMS=600000&serverSelectionTimeoutMS=600000&heartbeatFrequencyMS=600000",
        server.uri("admin")
    );
    mongodb::Client::with_uri_str(&uri).await.map_err(|e| e.to_string())
}

/// The string `_id`s stored in `[low, high)` (no bound where `None`).
async fn stored_range(
    client: &mongodb::Client,
    low: Option<&str>,
    high: Option<&str>,
) -> Result<Vec<String>, String> {
    let mut range = Document::new();
    range.insert("$gte", low.unwrap_or(""));
    if let Some(high) = high {
        range.insert("$lt", high);
    }
    let cursor = client
        .database("soak")
        .collection::<Document>("tweets")
        .find(mongodb::bson::doc! { "_id": range })
        .projection(mongodb::bson::doc! { "_id": 1 })
        .batch_size(10_000)
        .await
        .map_err(|e| e.to_string())?;
    let documents: Vec<Document> =
        futures::TryStreamExt::try_collect(cursor).await.map_err(|e| e.to_string())?;
    Ok(documents.iter().filter_map(|d| d.get_str("_id").ok().map(str::to_string)).collect())
}

/// Every stored tweet id, read range by range (each range tried up to five
/// times; a loaded machine can make one query fail), and how many stored
/// documents have an `_id` that is not a string (no range reads those).
/// Gives up with the last error once `limit` has passed.
async fn stored_ids(
    server: &Secantus,
    expected: &BTreeSet<String>,
    limit: Duration,
) -> Result<(BTreeSet<String>, u64), String> {
    let deadline = Instant::now() + limit;
    let client = patient_client(server).await?;
    let mut ids = BTreeSet::new();
    let ranges = id_ranges(expected, READ_CHUNK.max(expected.len().div_ceil(READ_RANGES)));
    for (index, (low, high)) in ranges.iter().enumerate() {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            let read = tokio::time::timeout(left, stored_range(&client, low.as_deref(), high.as_deref()))
                .await
                .unwrap_or_else(|_| Err(format!("the read-back's {} s ran out", limit.as_secs())));
            match read {
                Ok(found) => {
                    ids.extend(found);
                    break;
                }
                Err(error) if attempt < 5 && Instant::now() < deadline => {
                    eprintln!(
                        "soak: reading range {} of {} failed (try {attempt}): {error}",
                        index + 1,
                        ranges.len()
                    );
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                Err(error) => return Err(format!("range {} of {}: {error}", index + 1, ranges.len())),
            }
        }
    }
    let total = client
        .database("soak")
        .collection::<Document>("tweets")
        .count_documents(mongodb::bson::doc! {})
        .await
        .map_err(|e| e.to_string())?;
    let not_string = total.saturating_sub(ids.len() as u64);
    Ok((ids, not_string))
}

/// How many tweets are stored now.
async fn stored_count(server: &Secantus) -> Result<u64, String> {
    patient_client(server)
        .await?
        .database("soak")
        .collection::<Document>("tweets")
        .count_documents(mongodb::bson::doc! {})
        .await
        .map_err(|e| e.to_string())
}

async fn soak() -> bool {
    let seconds: u64 =
        std::env::var("STAGEFLOW_SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(600);
    let kinds = match faults_from(std::env::var("STAGEFLOW_SOAK_FAULTS").ok().as_deref()) {
        Ok(kinds) => kinds,
        Err(error) => {
            eprintln!("soak: {error}");
            return false;
        }
    };
    let fault_period = Duration::from_secs((seconds / 4).clamp(10, 60));
    let work = tempfile::tempdir().expect("a temporary directory");
    let logs = work.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    println!(
        "soak: {seconds} s, a fault every {fault_period:?} ({kinds:?} in turn); logs in {}",
        logs.display()
    );
    let binary = work.path().join("stageflow");
    std::fs::copy(env!("CARGO_BIN_EXE_stageflow"), &binary).expect("a copy of the stageflow binary");
    let _ = BINARY.set(binary);

    let Some(mut mongo) = Secantus::start(true).await else {
        eprintln!("soak: SecantusDB is not installed (scripts/test installs it into .venv/)");
        return false;
    };
    let mut emulator = start_emulator("127.0.0.1:0", emulator_config()).await.expect("the emulator starts");
    let emulator_addr = emulator.url("").trim_start_matches("http://").trim_end_matches('/').to_string();
    let telnet_emulator =
        start_emulator("127.0.0.1:0", emulator_config()).await.expect("an emulator for serve");

    let pipeline_env = vec![
        ("EMULATOR_URL".to_string(), format!("http://{emulator_addr}")),
        ("MONGODB_URI".to_string(), mongo.uri("soak")),
    ];
    let data = work.path().join("pipeline-data");
    let arg = |s: &str| s.to_string();
    let mut pipeline = Process::start(
        "pipeline",
        vec![
            arg("run"),
            arg("pipelines/tweets-mongo.toml"),
            arg("--data-dir"),
            data.display().to_string(),
            arg("--set"),
            arg("logger.output=\"none\""),
            arg("--drain-timeout"),
            arg("120s"),
        ],
        pipeline_env,
        &logs,
    );
    let broker_addr = format!("127.0.0.1:{}", free_port());
    let mut broker = Process::start(
        "broker",
        vec![
            arg("broker"),
            arg("--addr"),
            broker_addr.clone(),
            arg("--data-dir"),
            work.path().join("broker").display().to_string(),
            arg("--sync"),
            arg("always"),
        ],
        Vec::new(),
        &logs,
    );
    let telnet_addr = format!("127.0.0.1:{}", free_port());
    let serve = Process::start(
        "serve",
        vec![
            arg("serve"),
            arg("--addr"),
            telnet_addr.clone(),
            arg("--sse-url"),
            telnet_emulator.url("/tweets"),
            arg("--data-dir"),
            work.path().join("serve-data").display().to_string(),
        ],
        Vec::new(),
        &logs,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    let book = Arc::new(Mutex::new(BrokerBook {
        delivered: vec![HashSet::new(); SUBSCRIBERS],
        reconnects: vec![0; SUBSCRIBERS],
        ..BrokerBook::default()
    }));
    let (ready_tx, mut ready) = tokio::sync::mpsc::channel(SUBSCRIBERS);
    let mut tasks = Vec::new();
    for index in 0..SUBSCRIBERS {
        tasks.push(tokio::spawn(subscriber(broker_addr.clone(), index, book.clone(), ready_tx.clone())));
    }
    // The topic exists once something was published to it: the publisher's first event creates it.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    {
        let mut first = connect(&broker_addr, 1).await;
        let _ = first
            .request(
                &format!("pub {TOPIC} {}", json!({ "id": "p-0", "priority": 0, "msg": "created" })),
                &mut |_, _| {},
            )
            .await;
        book.lock().unwrap().published.insert("p-0".into());
    }
    for _ in 0..SUBSCRIBERS {
        let _ = tokio::time::timeout(Duration::from_secs(30), ready.recv()).await;
    }
    // p-0 may predate a subscription: only events after every subscriber joined count.
    book.lock().unwrap().published.clear();
    let publisher_task = tokio::spawn(publisher(broker_addr.clone(), book.clone(), stop_rx));
    let sessions = Arc::new(Mutex::new((0u64, 0u64)));
    tasks.push(tokio::spawn(telnet_loop(telnet_addr.clone(), sessions.clone())));

    let started = Instant::now();
    let mut rss: BTreeMap<&'static str, Vec<(f64, f64)>> = BTreeMap::new();
    // Anonymous memory (heap, stacks) beside the RSS: the RSS also holds the
    // binary's code pages, which come and go with memory pressure.
    let mut anon: BTreeMap<&'static str, Vec<(f64, f64)>> = BTreeMap::new();
    // When each fault came, what it was, and how long the fault took until
    // the process answered again.
    let mut faults: Vec<(f64, String, f64)> = Vec::new();
    // The machine's 1-minute load average: the soak shares its cores with whatever else runs.
    let mut loads: Vec<(f64, f64)> = Vec::new();
    let mut last_sent: BTreeMap<u32, u64> = BTreeMap::new();
    let mut next_fault = started + fault_period;
    let mut fault_index = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while started.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        let t = started.elapsed().as_secs_f64();
        if let Some(load) = load_average() {
            loads.push((t, load));
        }
        for process in [&pipeline, &broker, &serve] {
            if let Some(kb) = process.pid().and_then(rss_kb) {
                rss.entry(process.name).or_default().push((t, kb as f64 / 1024.0));
            }
            if let Some(kb) = process.pid().and_then(|pid| status_kb(pid, "RssAnon")) {
                anon.entry(process.name).or_default().push((t, kb as f64 / 1024.0));
            }
        }
        if Instant::now() >= next_fault {
            next_fault += fault_period;
            let fault_started = Instant::now();
            let what = match kinds[fault_index % kinds.len()] {
                Fault::Mongo => {
                    mongo.kill();
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    mongo.launch_within(MONGO_RESTART_LIMIT).await;
                    "SecantusDB SIGKILLed and restarted"
                }
                Fault::Broker => {
                    broker.kill();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    broker.launch();
                    "broker SIGKILLed and restarted"
                }
                Fault::Sse => {
                    stop_and_merge(&mut last_sent, emulator).await;
                    emulator = start_emulator(&emulator_addr, emulator_config())
                        .await
                        .expect("the emulator restarts on its port");
                    "SSE connections cut (emulator restarted)"
                }
            };
            fault_index += 1;
            let took = fault_started.elapsed().as_secs_f64();
            println!("soak: {:>6.0} s  {what} ({took:.0} s)", started.elapsed().as_secs_f64());
            faults.push((started.elapsed().as_secs_f64(), what.to_string(), took));
        }
    }

    // The end: no more publishing or sending; the pipeline stores what it read, drains and exits.
    let _ = stop_tx.send(true);
    let _ = publisher_task.await;
    stop_and_merge(&mut last_sent, emulator).await;
    let expected = expected_ids(&last_sent);
    let mut stable_since = Instant::now();
    let mut previous = 0;
    let drain_deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let stored = stored_count(&mongo).await.map(|count| count as usize).unwrap_or(previous);
        if stored != previous {
            previous = stored;
            stable_since = Instant::now();
        }
        if stored >= expected.len()
            || stable_since.elapsed() > Duration::from_secs(20)
            || Instant::now() > drain_deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let drained = pipeline.interrupt(Duration::from_secs(150)).await;
    // A generous bound that grows with the run: 10 minutes and a minute per 100 k tweets.
    let read_limit = Duration::from_secs(600 + 60 * (expected.len() as u64 / 100_000));
    let read_started = Instant::now();
    let (stored, not_string, store_error) = match stored_ids(&mongo, &expected, read_limit).await {
        Ok((ids, not_string)) => (ids, not_string, None),
        Err(error) => (BTreeSet::new(), 0, Some(error)),
    };
    let read_seconds = read_started.elapsed().as_secs_f64();
    let missing = expected.difference(&stored).count();
    let unexpected = stored.difference(&expected).count() + not_string as usize;

    // Every acknowledged broker event reaches every acking subscriber (give them 30 s).
    let broker_deadline = Instant::now() + Duration::from_secs(30);
    let undelivered = loop {
        let undelivered: usize = {
            let book = book.lock().unwrap();
            (2..SUBSCRIBERS)
                .map(|i| book.published.iter().filter(|id| !book.delivered[i].contains(*id)).count())
                .sum()
        };
        if undelivered == 0 || Instant::now() > broker_deadline {
            break undelivered;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for task in &tasks {
        task.abort();
    }
    let (published, reconnects) = {
        let book = book.lock().unwrap();
        (book.published.len(), book.reconnects[2])
    };
    let (sessions_ok, sessions_failed) = *sessions.lock().unwrap();

    // Warm-up: the first third of the run. A process restarted by a fault
    // (the broker) starts afresh each time: its first 30 s after every
    // restart are left out too, and the fit runs across its lives.
    let warm_up = seconds as f64 / 3.0;
    let restarts: Vec<f64> =
        faults.iter().filter(|(_, what, _)| what.starts_with("broker")).map(|(t, _, _)| *t).collect();
    let steady = |name: &str, t: f64| {
        t >= warm_up && (name != "broker" || !restarts.iter().any(|&at| t >= at && t < at + 30.0))
    };
    let mut trends: BTreeMap<&str, serde_json::Value> = BTreeMap::new();
    let mut verdicts: BTreeMap<&str, Verdict> = BTreeMap::new();
    for (name, points) in &rss {
        let after: Vec<(f64, f64)> = points.iter().copied().filter(|&(t, _)| steady(name, t)).collect();
        let blocks = block_medians(&after);
        let trend = theil_sen(&blocks);
        verdicts.insert(name, verdict(trend));
        let anon_after: Vec<(f64, f64)> =
            anon.get(name).into_iter().flatten().copied().filter(|&(t, _)| steady(name, t)).collect();
        let anon_blocks = block_medians(&anon_after);
        let anon_trend = theil_sen(&anon_blocks);
        trends.insert(
            name,
            json!({
                "theil_sen_percent_per_hour": trend.map(|t| t.slope),
                "interval_95_percent_per_hour": trend.map(|t| [t.low, t.high]),
                "block_medians": trend.map_or(0, |t| t.points),
                "least_squares_percent_per_hour": slope_percent_per_hour(&after),
                "first_block_mb": blocks.first().map(|b| b.1),
                "last_block_mb": blocks.last().map(|b| b.1),
                "verdict": format!("{:?}", verdict(trend)),
                "anonymous": {
                    "theil_sen_percent_per_hour": anon_trend.map(|t| t.slope),
                    "interval_95_percent_per_hour": anon_trend.map(|t| [t.low, t.high]),
                    "first_block_mb": anon_blocks.first().map(|b| b.1),
                    "last_block_mb": anon_blocks.last().map(|b| b.1),
                },
            }),
        );
    }
    let rss_ok = verdicts.values().all(|verdict| *verdict == Verdict::Under);
    let store_ok = store_error.is_none() && missing == 0 && unexpected == 0 && stored.len() == expected.len();
    let broker_ok = undelivered == 0;
    let passed = store_ok && broker_ok && rss_ok && drained;

    let dir = report_dir();
    std::fs::create_dir_all(&dir).expect("the report directory");
    let report = json!({
        "seconds": seconds,
        "fault_period_s": fault_period.as_secs(),
        "fault_kinds": kinds.iter().map(|kind| format!("{kind:?}")).collect::<Vec<_>>(),
        "faults": faults
            .iter()
            .map(|(t, what, took)| json!({ "at_s": t, "fault": what, "took_s": took }))
            .collect::<Vec<_>>(),
        "store": { "emulator_last_sequence": last_sent, "expected_tweets": expected.len(), "stored": stored.len(), "missing": missing, "unexpected": unexpected, "pipeline_drained": drained, "read_error": store_error, "read_seconds": read_seconds, "ok": store_ok },
        "broker": { "acknowledged_events": published, "undelivered_to_acking_subscribers": undelivered, "reconnects_of_subscriber_2": reconnects, "ok": broker_ok },
        "telnet": { "sessions_completed": sessions_ok, "sessions_failed": sessions_failed },
        "machine": {
            "cores": std::thread::available_parallelism().map_or(0, usize::from),
            "load_average_1m_mean": loads.iter().map(|(_, l)| l).sum::<f64>() / loads.len().max(1) as f64,
            "load_average_1m_max": loads.iter().map(|(_, l)| *l).fold(0.0, f64::max),
        },
        "rss": {
            "criterion": format!("slope under {MAX_SLOPE} % per hour after warm-up: passed when the 95 % interval of the Theil-Sen slope of {BLOCK_S} s block medians is under it"),
            "warm_up_s": warm_up,
            "broker_restarts_s": restarts,
            "trends": trends,
            "samples_mb": rss,
            "anonymous_samples_mb": anon,
            "ok": rss_ok,
        },
        "passed": passed,
    });
    let json_path = dir.join("soak.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report).unwrap()).expect("soak.json");

    // RSS over time, each fault a vertical mark at the top of the chart.
    let top = rss.values().flatten().map(|&(_, mb)| mb).fold(1.0, f64::max) * 1.1;
    let mut series: Vec<Series> =
        rss.iter().map(|(name, points)| Series::new(format!("{name} RSS"), points.clone())).collect();
    for (t, what, _) in &faults {
        series.push(Series::new(format!("fault: {what}"), vec![(*t, 0.0), (*t, top)]));
    }
    let lines: Vec<Line<'_>> = series
        .iter()
        .enumerate()
        .map(|(i, series)| Line {
            series,
            colour: COLOURS[i % COLOURS.len()],
            stroke: if series.name.starts_with("fault") { Stroke::Dashed } else { Stroke::Solid },
            markers: false,
        })
        .collect();
    let panel = Panel {
        title: format!(
            "RSS of each stageflow process; {} faults, one every {} s",
            faults.len(),
            fault_period.as_secs()
        ),
        x_label: "time (s)".into(),
        y_label: "RSS (MB)".into(),
        log_x: false,
        log_y: false,
        lines,
        legend: SeriesLabelPosition::LowerRight,
    };
    // The processes' logs, kept beside the report (the work directory goes).
    let kept_logs = dir.join("soak-logs");
    let _ = std::fs::remove_dir_all(&kept_logs);
    if std::fs::create_dir_all(&kept_logs).is_ok()
        && let Ok(entries) = std::fs::read_dir(&logs)
    {
        for entry in entries.flatten() {
            let _ = std::fs::copy(entry.path(), kept_logs.join(entry.file_name()));
        }
    }
    let svg = dir.join("soak.svg");
    if let Err(error) = plot::panels(&svg, (1200, 700), "Fault soak", (1, 1), &[panel]) {
        eprintln!("soak: cannot draw {}: {error}", svg.display());
    }
    if let Some(error) = &store_error {
        println!("soak: the stored tweets could not be read: {error}");
    }
    println!(
        "soak: store {} of {} tweets (missing {missing}, unexpected {unexpected}, drained {drained}); broker {published} acknowledged, {undelivered} undelivered; telnet {sessions_ok} sessions ({sessions_failed} failed); RSS {}",
        stored.len(),
        expected.len(),
        trends
            .iter()
            .map(|(name, trend)| format!(
                "{name} {:+.2} %/h (95 % {}, {})",
                trend["theil_sen_percent_per_hour"].as_f64().unwrap_or(f64::NAN),
                trend["interval_95_percent_per_hour"],
                trend["verdict"].as_str().unwrap_or("")
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    println!(
        "soak: {} -> {} and {}",
        if passed { "PASSED" } else { "FAILED" },
        json_path.display(),
        svg.display()
    );
    drop(serve);
    drop(broker);
    telnet_emulator.stop().await;
    mongo.kill();
    passed
}
