//! `stageflow run pipelines/tweets.toml` as a user runs it: a subprocess with
//! its own data directory, ended by `--for` or by SIGINT; afterwards the
//! store holds exactly the tweets the two SSE receivers delivered.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stageflow_stages::analysis::HashtagWindow;
use stageflow_stages::cmd::run::embedded_emulator;
use stageflow_stages::emulator::generator::{GeneratedEvent, TweetGenerator, Vocabulary};
use stageflow_stages::emulator::{EmulatorConfig, EmulatorHandle, Rate, start_emulator};
use stageflow_stages::tweet::Tweet;

mod support;
use support::broker_process::BrokerProcess;
use support::secantus::Secantus;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("stages/ is inside the repository").to_path_buf()
}

/// A `stageflow` child process whose output is read as it comes (so a full
/// pipe never stalls it), killed if the test ends before it does.
struct Running {
    child: Child,
    output: Option<(PipeReader, PipeReader)>,
}

/// A thread reading one of the child's pipes to its end.
type PipeReader = std::thread::JoinHandle<Vec<u8>>;

/// Reads a pipe to its end on a thread of its own.
fn drain(mut pipe: impl Read + Send + 'static) -> PipeReader {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

impl Running {
    fn start(args: &[&str], data_dir: &Path) -> Running {
        Running::start_with(args, data_dir, &[])
    }

    /// As `start`, with these environment variables set.
    fn start_with(args: &[&str], data_dir: &Path, env: &[(&str, &str)]) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_stageflow"))
            .current_dir(repository())
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .env_remove("EMULATOR_URL")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("stageflow starts");
        let stdout = drain(child.stdout.take().expect("piped"));
        let stderr = drain(child.stderr.take().expect("piped"));
        Running { child, output: Some((stdout, stderr)) }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to end (at most `limit`); returns its exit and output.
    fn finish(mut self, limit: Duration) -> (std::process::ExitStatus, String, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waitable") {
                break status;
            }
            assert!(Instant::now() < deadline, "stageflow did not end within {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        };
        let (stdout, stderr) = self.output.take().expect("read once");
        let stdout = String::from_utf8_lossy(&stdout.join().expect("reader")).into_owned();
        let stderr = String::from_utf8_lossy(&stderr.join().expect("reader")).into_owned();
        (status, stdout, stderr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Column `column` (1: stage, 2: in, 3: out, ...) of a stage's row in the summary table.
fn summary_cell(stdout: &str, stage: &str, column: usize) -> u64 {
    let row = stdout
        .lines()
        .find(|line| line.starts_with(&format!("| {stage} ")))
        .unwrap_or_else(|| panic!("no summary row for {stage} in:\n{stdout}"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    cells[column].parse().unwrap_or_else(|_| panic!("bad cell {column} in {row}"))
}

/// The `out` column of a stage's row in the summary table.
fn events_out(stdout: &str, stage: &str) -> u64 {
    summary_cell(stdout, stage, 3)
}

/// Tweet ids and user ids of the first `count` events of `stream`, with the
/// originals extracted from retweets, as the emulator generates them.
fn expected(
    generator: &TweetGenerator,
    stream: u32,
    count: u64,
    tweets: &mut BTreeSet<String>,
    users: &mut BTreeSet<String>,
) {
    fn add(tweet: &Tweet, tweets: &mut BTreeSet<String>, users: &mut BTreeSet<String>) {
        tweets.insert(tweet.id_str.clone());
        users.insert(tweet.user.id_str.clone());
        if let Some(original) = &tweet.retweeted_status {
            add(original, tweets, users);
        }
    }
    for sequence in 1..=count {
        if let GeneratedEvent::Tweet(tweet) = generator.event(stream, sequence) {
            add(&tweet, tweets, users);
        }
    }
}

fn stored_ids(database: &Path, table: &str) -> BTreeSet<String> {
    let connection = rusqlite::Connection::open(database).expect("the store exists");
    let mut statement = connection.prepare(&format!("SELECT id FROM {table}")).expect("the table exists");
    statement
        .query_map([], |row| row.get::<_, String>(0))
        .expect("readable")
        .map(|id| id.expect("an id"))
        .collect()
}

/// The emulator `tweets.toml` embeds (its seed and kill ratio).
fn shipped_emulator() -> EmulatorConfig {
    let path = repository().join("pipelines/tweets.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    embedded_emulator(&text, &path).unwrap().expect("tweets.toml embeds the emulator")
}

/// Tweet ids (originals included) and user ids of what the two receivers
/// delivered, by the summary's `out` counts.
fn delivered(stdout: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let config = shipped_emulator();
    let generator =
        TweetGenerator::new(config.seed, config.kill_ratio, config.malformed_ratio, Vocabulary::shipped());
    let (first, second) = (events_out(stdout, "stream1"), events_out(stdout, "stream2"));
    assert!(first + second > 100, "tweets flowed: {first} + {second} events");
    let (mut tweets, mut users) = (BTreeSet::new(), BTreeSet::new());
    expected(&generator, 1, first, &mut tweets, &mut users);
    expected(&generator, 2, second, &mut tweets, &mut users);
    (tweets, users)
}

/// Checks the store holds exactly what the two receivers delivered.
fn assert_store_matches_delivered(stdout: &str, data_dir: &Path) {
    let (tweets, users) = delivered(stdout);
    let database = data_dir.join("stageflow.db");
    let stored_tweets = stored_ids(&database, "tweets");
    assert_eq!(
        stored_tweets.len(),
        tweets.len(),
        "{} delivered tweets, {} stored",
        tweets.len(),
        stored_tweets.len()
    );
    assert_eq!(stored_tweets, tweets, "every delivered tweet and extracted original is stored once");
    assert_eq!(stored_ids(&database, "users"), users, "every user once");
    assert_eq!(stored_ids(&database, "users_engagements"), users);
}

#[test]
fn run_for_ten_seconds_stores_every_delivered_tweet_and_summarises() {
    let data = tempfile::tempdir().unwrap();
    let run = Running::start(&["run", "pipelines/tweets.toml", "--for", "10s"], data.path());
    let (status, stdout, stderr) = run.finish(Duration::from_secs(120));
    assert!(status.success(), "exit {status:?}\n{stderr}");
    assert!(stdout.contains("pipeline 'tweets' finished"), "{stdout}");
    assert!(
        stdout.lines().any(|line| line.starts_with("tweet: ") || line.contains(' ')),
        "tweets were printed"
    );
    for stage in [
        "stream1",
        "stream2",
        "tweets",
        "logger",
        "sentiment",
        "engagement",
        "aggregator",
        "batcher",
        "store",
    ] {
        events_out(&stdout, stage);
    }
    assert!(stderr.contains("--for 10s passed: draining"), "{stderr}");
    assert_store_matches_delivered(&stdout, data.path());
    let hashtags = std::fs::read_to_string(data.path().join("hashtags.json")).expect("hashtags written");
    assert!(hashtags.contains("\"top\""), "{hashtags}");
}

#[test]
fn sigint_drains_everything_accepted_into_the_store() {
    let data = tempfile::tempdir().unwrap();
    let run = Running::start(&["run", "pipelines/tweets.toml"], data.path());
    let database = data.path().join("stageflow.db");
    let deadline = Instant::now() + Duration::from_secs(60);
    // Interrupt once the store has taken something: the pipeline is mid-run.
    loop {
        assert!(Instant::now() < deadline, "nothing was stored within 60 s");
        if database.exists()
            && rusqlite::Connection::open(&database)
                .and_then(|c| c.query_row("SELECT count(*) FROM tweets", [], |row| row.get::<_, i64>(0)))
                .is_ok_and(|count| count > 0)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let signal = Command::new("kill").args(["-INT", &run.pid().to_string()]).status().expect("kill runs");
    assert!(signal.success());
    let (status, stdout, stderr) = run.finish(Duration::from_secs(120));
    assert!(status.success(), "a drained interrupt exits 0: {status:?}\n{stderr}");
    assert!(stderr.contains("interrupted: draining"), "{stderr}");
    assert_store_matches_delivered(&stdout, data.path());
}

#[test]
fn csv_import_stores_the_good_rows_and_names_the_bad_one() {
    let data = tempfile::tempdir().unwrap();
    let run = Running::start(&["run", "pipelines/csv-import.toml"], data.path());
    let (status, stdout, stderr) = run.finish(Duration::from_secs(60));
    assert!(status.success(), "exit {status:?}\n{stderr}");
    assert!(
        stderr.contains("sample-tweets.csv:9: bad row skipped"),
        "the bad row is named with its file and line: {stderr}"
    );
    assert!(
        stdout.contains("store:") && stdout.contains("stageflow.db"),
        "the summary says where the data went: {stdout}"
    );
    let stored = stored_ids(&data.path().join("stageflow.db"), "tweets");
    let expected: BTreeSet<String> =
        (1001..=1012).filter(|id| *id != 1008).map(|id| id.to_string()).collect();
    assert_eq!(stored, expected, "every good row stored, the bad one skipped");
}

// ---- a run ends when its data ends ------------------------------------------

/// Events per stream the limited emulator serves.
const LIMIT: u64 = 500;

/// `stageflow emulate --limit 500` with `tweets.toml`'s seed, as fast as it
/// goes, on a runtime of the test's (the server lives as long as both).
fn limited_emulator() -> (tokio::runtime::Runtime, EmulatorHandle, String) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let config = EmulatorConfig { rate: Rate::Max, limit: Some(LIMIT), ..shipped_emulator() };
    let emulator = runtime.block_on(start_emulator("127.0.0.1:0", config)).expect("the emulator starts");
    let url = emulator.url("").trim_end_matches('/').to_string();
    (runtime, emulator, url)
}

/// `ingested N tweets, M users` of the last statistics frame written to stderr.
fn final_frame_ingested(stderr: &str) -> (u64, u64) {
    let line = stderr
        .lines()
        .rfind(|line| line.contains("stats #"))
        .unwrap_or_else(|| panic!("no frame in:\n{stderr}"));
    let counts = line.split("ingested ").nth(1).expect("the frame names what was ingested");
    let numbers: Vec<u64> = counts.split([' ', ',']).filter_map(|word| word.parse().ok()).take(2).collect();
    (numbers[0], numbers[1])
}

/// Runs `file` against the limited emulator until it ends by itself (within
/// two minutes) and checks what every finite run must leave: exit 0, the
/// summary, every event of both streams read, a final statistics frame that
/// counts everything stored, and a final hashtag window (the only one: the
/// window is set longer than the run) that counts every tweet.
fn run_to_its_end(file: &str, data_dir: &Path, env: &[(&str, &str)]) -> (String, (u64, u64)) {
    let (_runtime, _emulator, url) = limited_emulator();
    let mut env = env.to_vec();
    env.push(("EMULATOR_URL", &url));
    let run = Running::start_with(&["run", file, "--set", "hashtags.every_ms=3600000"], data_dir, &env);
    let (status, stdout, stderr) = run.finish(Duration::from_secs(120));
    assert!(status.success(), "{file}: exit {status:?}\n{stderr}");
    assert!(stdout.contains("finished in"), "{file}: the summary is printed: {stdout}");
    assert_eq!((events_out(&stdout, "stream1"), events_out(&stdout, "stream2")), (LIMIT, LIMIT), "{file}");
    let window: HashtagWindow = serde_json::from_slice(
        &std::fs::read(data_dir.join("hashtags.json")).expect("the last window is written"),
    )
    .expect("a whole window");
    assert_eq!(
        window.tweets,
        summary_cell(&stdout, "hashtags", 2),
        "{file}: the last window counts every tweet"
    );
    (stdout, final_frame_ingested(&stderr))
}

#[test]
fn tweets_toml_with_a_finite_source_ends_by_itself_with_the_store_complete() {
    let data = tempfile::tempdir().unwrap();
    let (stdout, ingested) = run_to_its_end("pipelines/tweets.toml", data.path(), &[]);
    assert_store_matches_delivered(&stdout, data.path());
    let (tweets, users) = delivered(&stdout);
    assert_eq!(ingested, (tweets.len() as u64, users.len() as u64), "the final frame covers the tail");
}

#[test]
fn tweets_mongo_toml_with_a_finite_source_ends_by_itself_with_the_store_complete() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let Some(server) = runtime.block_on(Secantus::start(false)) else { return };
    let uri = server.uri("finite");
    let data = tempfile::tempdir().unwrap();
    let (stdout, ingested) =
        run_to_its_end("pipelines/tweets-mongo.toml", data.path(), &[("MONGODB_URI", uri.as_str())]);
    let (tweets, users) = delivered(&stdout);
    let stored = runtime.block_on(async {
        let client = mongodb::Client::with_uri_str(&uri).await.expect("a client");
        let database = client.database("finite");
        let count = |name: &str| {
            let collection = database.collection::<mongodb::bson::Document>(name);
            async move { collection.count_documents(mongodb::bson::doc! {}).await.expect("countable") }
        };
        (count("tweets").await, count("users").await)
    });
    assert_eq!(
        stored,
        (tweets.len() as u64, users.len() as u64),
        "every delivered tweet and user stored once"
    );
    assert_eq!(ingested, stored, "the final frame covers the tail");
}

#[test]
fn tweets_broker_toml_with_a_finite_source_ends_by_itself_with_the_store_complete() {
    let broker_data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(broker_data.path(), "127.0.0.1:0", &[]);
    let addr = broker.addr.to_string();
    let data = tempfile::tempdir().unwrap();
    let (stdout, ingested) =
        run_to_its_end("pipelines/tweets-broker.toml", data.path(), &[("BROKER_ADDR", addr.as_str())]);
    assert_store_matches_delivered(&stdout, data.path());
    let (tweets, users) = delivered(&stdout);
    assert_eq!(ingested, (tweets.len() as u64, users.len() as u64), "the final frame covers the tail");
    assert!(
        summary_cell(&stdout, "publish_stats", 2) >= 1,
        "the final frame reached the broker sink: {stdout}"
    );
}
