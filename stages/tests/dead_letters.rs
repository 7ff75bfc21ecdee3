//! Dead letters end to end: documents the stores really reject, mixed into
//! batches of good ones (SQLite's constraints; SecantusDB's collection
//! validator and the 16 MB document limit), events a stage panics on
//! (the logger's kill messages, when the file asks), `stageflow
//! dead-letters` and `stageflow replay`.
//!
//! Every server a test starts (SecantusDB) is stopped by its handle; every
//! run has a deadline.

mod support;
use support::broker_process::BrokerProcess;
use support::nats::NatsServer;
use support::secantus::Secantus;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use stageflow::config::{
    BuildContext, DispatcherChoices, Kind, PipelineFile, StageDecl, configure, kind, parse_pipeline,
};
use stageflow::{Nothing, Pipeline};
use stageflow_stages::analysis::logger::KILL_PANIC;
use stageflow_stages::dead_letters::{DeadLetterCounts, Record, read_records};
use stageflow_stages::http::{Observed, PipelineView, start_http};
use stageflow_stages::scored::ScoredTweet;
use stageflow_stages::tweet::{Entities, Tweet, User};

const DEADLINE: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------- data

fn tweet(id: &str, user: u64) -> Tweet {
    Tweet {
        id_str: id.to_string(),
        text: format!("tweet {id} ☀️"),
        created_at: "Fri Mar 01 00:00:00 +0000 2024".into(),
        favorite_count: 1,
        retweet_count: 2,
        lang: Some("en".into()),
        entities: Entities::default(),
        user: User {
            id_str: format!("u{user}"),
            screen_name: format!("user{user}"),
            followers_count: 3,
            ..User::default()
        },
        retweeted_status: None,
    }
}

/// More than MongoDB's (and our SQLite tables') 16 MiB document limit.
const HUGE: usize = 17 << 20;

/// Tweets 1..=40: 10 is over 16 MiB, 20 has a language the Mongo validator
/// refuses, 30 has an empty id; the rest are fine.
fn mixed() -> Vec<ScoredTweet> {
    (1..=40u64)
        .map(|n| {
            let mut tweet = tweet(&n.to_string(), n % 7);
            match n {
                10 => tweet.text = "x".repeat(HUGE),
                20 => tweet.lang = Some("not-a-language-code".into()),
                30 => tweet.id_str = String::new(),
                _ => {}
            }
            ScoredTweet {
                tweet,
                extracted: false,
                sentiment: 0.0,
                engagement: 1.0,
                receipt: Default::default(),
            }
        })
        .collect()
}

fn good_ids(except: &[u64]) -> BTreeSet<String> {
    (1..=40u64).filter(|n| !except.contains(n)).map(|n| n.to_string()).collect()
}

/// emits tweets 1..=40, some of which stores reject (tests)
#[kind("mixed_tweets", Nothing -> ScoredTweet)]
struct MixedTweetsKind {}

impl Kind for MixedTweetsKind {
    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let config = pipeline.producer(&stage.id, || stageflow::ops::FromIter::new(mixed().into_iter()));
        configure(stage, config, &DispatcherChoices::cloneable(), None)
    }
}

fn load(text: &str) -> PipelineFile {
    parse_pipeline(Path::new("dead.toml"), text, &|_| None).unwrap_or_else(|errors| panic!("{errors}"))
}

/// Builds and runs `text` to its end in `data_dir`; returns the dead-letter counts by stage.
async fn run_file(text: &str, data_dir: &Path) -> std::collections::BTreeMap<String, u64> {
    run_file_viewed(text, data_dir).await.0
}

/// Like [`run_file`], also returning the view `--http` serves of the pipeline.
async fn run_file_viewed(
    text: &str,
    data_dir: &Path,
) -> (std::collections::BTreeMap<String, u64>, PipelineView) {
    let mut registry = stageflow_stages::registry();
    registry.add::<MixedTweetsKind>();
    let file = load(text);
    let context = BuildContext::for_file(&file, data_dir.to_path_buf());
    let pipeline = registry.build(&file, &context).unwrap_or_else(|errors| panic!("{errors}"));
    let mut running = pipeline.start().expect("starts");
    let view = PipelineView::new(&file, &registry, &running, &context.resources);
    match tokio::time::timeout(DEADLINE, running.wait()).await {
        Ok(result) => {
            result.expect("the pipeline ends cleanly");
        }
        Err(_) => panic!("the pipeline did not end within {DEADLINE:?}: {:?}", running.metrics()),
    }
    (DeadLetterCounts::of(&context).snapshot(), view)
}

fn sink_file(sink: &str, extra: &str) -> String {
    format!(
        r#"
[pipeline]
name = "dead-letters-{sink}"

[[stage]]
id = "tweets"
kind = "mixed_tweets"

[[stage]]
id = "batch"
kind = "batcher"
batch_size = 15
flush_interval = "100ms"
subscribe_to = ["tweets"]

[[stage]]
id = "store"
kind = "{sink}"
{extra}
subscribe_to = ["batch"]
"#
    )
}

/// The ids of the tweets in the dead letters of `path`, and their errors.
fn letters(path: &Path) -> Vec<(String, String)> {
    let records = read_records(path).unwrap_or_else(|error| panic!("{error}"));
    records
        .into_iter()
        .map(|record: Record| {
            assert_eq!((record.stage.as_str(), record.attempts), ("store", 1));
            let id =
                record.event["tweet"]["id_str"].as_str().expect("a scored tweet as the event").to_string();
            (id, record.error)
        })
        .collect()
}

// ---------------------------------------------------------------- sinks

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_stores_exactly_the_good_documents_and_dead_letters_the_ones_its_constraints_refuse() {
    let directory = tempfile::tempdir().unwrap();
    let counts = run_file(&sink_file("sqlite_sink", ""), directory.path()).await;

    let connection = rusqlite::Connection::open(directory.path().join("stageflow.db")).unwrap();
    let mut statement = connection.prepare("SELECT id FROM tweets").unwrap();
    let stored: BTreeSet<String> =
        statement.query_map([], |row| row.get(0)).unwrap().map(Result::unwrap).collect();
    assert_eq!(
        stored,
        good_ids(&[10, 30]),
        "exactly the good tweets are stored (the language is no constraint)"
    );

    let mut letters = letters(&directory.path().join("dead-letters/store.jsonl"));
    letters.sort();
    let ids: Vec<&str> = letters.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["", "10"]);
    for (id, error) in &letters {
        assert!(error.starts_with(&format!("tweets rejected document {id:?}: sqlite")), "{error}");
        assert!(error.contains("CHECK constraint failed"), "the store's own error: {error}");
    }
    assert_eq!(counts.get("store"), Some(&2), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_count_the_dead_letters_of_each_stage() {
    let directory = tempfile::tempdir().unwrap();
    let (counts, view) = run_file_viewed(&sink_file("sqlite_sink", ""), directory.path()).await;
    assert_eq!(counts.get("store"), Some(&2), "{counts:?}");
    let server = start_http("127.0.0.1:0".parse().unwrap(), Observed::pipeline(view)).await.expect("serves");
    let scrape = async { reqwest::get(format!("{}/metrics", server.url())).await?.text().await };
    let text = tokio::time::timeout(DEADLINE, scrape).await.expect("answers in time").expect("scraped");
    let value = |stage: &str| {
        let series = format!(
            r#"stageflow_events_dead_lettered_total{{pipeline="dead-letters-sqlite_sink",stage="{stage}"}} "#
        );
        text.lines().find_map(|line| line.strip_prefix(&series)).map(str::to_string)
    };
    assert_eq!(value("store").as_deref(), Some("2"), "the sink's two rejected documents: {text}");
    assert_eq!(value("batch").as_deref(), Some("0"), "{text}");
    assert!(text.contains("# TYPE stageflow_events_dead_lettered_total counter"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_stores_exactly_the_good_documents_and_dead_letters_what_secantusdb_rejects() {
    let Some(server) = Secantus::start(false).await else { return };
    let uri = server.uri("dead");
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let database = client.database("dead");
    // A validator the server enforces per document: a language code of at most 8 characters, a non-empty id.
    let validator = doc! { "$jsonSchema": { "bsonType": "object", "properties": {
        "lang": { "bsonType": "string", "maxLength": 8 },
        "id_str": { "bsonType": "string", "minLength": 1 },
    } } };
    database.create_collection("tweets").validator(validator).await.expect("SecantusDB takes a validator");

    let directory = tempfile::tempdir().unwrap();
    let counts = run_file(&sink_file("mongo_sink", &format!("uri = \"{uri}\"")), directory.path()).await;

    let stored: BTreeSet<String> = database
        .collection::<Document>("tweets")
        .find(doc! {})
        .await
        .unwrap()
        .try_collect::<Vec<Document>>()
        .await
        .unwrap()
        .iter()
        .map(|document| document.get_str("_id").unwrap().to_string())
        .collect();
    assert_eq!(stored, good_ids(&[10, 20, 30]));

    let mut letters = letters(&directory.path().join("dead-letters/store.jsonl"));
    letters.sort();
    let ids: Vec<&str> = letters.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["", "10", "20"]);
    let error_of = |id: &str| letters.iter().find(|(i, _)| i == id).map(|(_, e)| e.as_str()).unwrap();
    // The server's per-document answer to its validator.
    for id in ["", "20"] {
        assert!(error_of(id).contains("mongodb error 121: Document failed validation"), "{}", error_of(id));
    }
    // The driver refuses a document over the server's maxBsonObjectSize before sending it.
    assert!(error_of("10").contains("16777216"), "{}", error_of("10"));
    assert_eq!(counts.get("store"), Some(&3), "{counts:?}");
    drop(server);
}

// ---------------------------------------------------------------- panics, listing, replay

/// The tweet pipeline's front: SSE tweets -> tweets -> logger, which asks for its kill messages to be dead-lettered.
const LOGGER_FILE: &str = r#"
[pipeline]
name = "dead-logger"

[[stage]]
id = "stream"
kind = "sse"
url = "http://127.0.0.1:9/tweets/1"

[[stage]]
id = "tweets"
kind = "tweets"
subscribe_to = ["stream"]

[[stage]]
id = "logger"
kind = "logger"
output = "none"
sleep_mean_ms = 0
max_attempts = 2
dead_letter = "file"
subscribe_to = ["tweets"]
"#;

/// Runs `stageflow args`; fails the test if it has not ended within the deadline.
fn stageflow(args: &[&str]) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stageflow"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("stageflow starts");
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("piped")));
    let stderr = read(Box::new(child.stderr.take().expect("piped")));
    let deadline = std::time::Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waitable") {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("stageflow {args:?} did not end within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.success(), stdout.join().expect("reader"), stderr.join().expect("reader"))
}

#[test]
fn kill_messages_are_dead_lettered_when_the_file_asks_listed_and_replayed() {
    let directory = tempfile::tempdir().unwrap();
    let (data, pipeline, input) =
        (directory.path().join("data"), directory.path().join("p.toml"), directory.path().join("in.jsonl"));
    std::fs::write(&pipeline, LOGGER_FILE).unwrap();
    // Dead letters of the SSE stage's consumer: five tweets and two kill messages.
    let mut lines = String::new();
    for n in 1..=7u64 {
        let event = if n % 3 == 0 {
            serde_json::json!({ "id": n.to_string(), "kill": true })
        } else {
            serde_json::json!({ "id": n.to_string(), "tweet": tweet(&n.to_string(), n) })
        };
        let record =
            Record { stage: "tweets".into(), error: "earlier".into(), at: "t".into(), attempts: 1, event };
        lines.push_str(&record.to_line());
        lines.push('\n');
    }
    std::fs::write(&input, lines).unwrap();
    let data_arg = data.to_str().unwrap();

    let (ok, stdout, stderr) = stageflow(&[
        "replay",
        input.to_str().unwrap(),
        "--into",
        pipeline.to_str().unwrap(),
        "--stage",
        "tweets",
        "--data-dir",
        data_arg,
    ]);
    assert!(ok, "replay failed: {stderr}");
    assert!(stdout.contains("replaying 7 dead letters of 'tweets'"), "{stdout}");
    let logger_row =
        stdout.lines().find(|line| line.starts_with("| logger ")).unwrap_or_else(|| panic!("{stdout}"));
    let cells: Vec<&str> = logger_row.split('|').map(str::trim).collect();
    // stage, in, out, events/s, dropped, lost, dead-lettered, restarts: two kills, each tried twice.
    assert_eq!((cells[1], cells[6], cells[7], cells[8]), ("logger", "0", "2", "4"), "{stdout}");

    let letters_file = data.join("dead-letters/logger.jsonl");
    let letters = read_records(&letters_file).unwrap();
    assert_eq!(letters.len(), 2);
    for letter in &letters {
        assert_eq!(
            (letter.stage.as_str(), letter.error.as_str(), letter.attempts),
            ("logger", KILL_PANIC, 2)
        );
        assert_eq!(letter.event, serde_json::json!({ "kill": true }));
    }

    let (ok, listing, stderr) = stageflow(&["dead-letters", data_arg]);
    assert!(ok, "{stderr}");
    let row = listing.lines().find(|line| line.contains(KILL_PANIC)).unwrap_or_else(|| panic!("{listing}"));
    assert!(row.starts_with("| logger ") && row.contains("| 2 "), "{listing}");
    assert!(listing.contains("2 dead letters"), "{listing}");

    // Fed back into the logger, the kill messages crash it again and land in its file again.
    let (ok, _, stderr) = stageflow(&[
        "replay",
        letters_file.to_str().unwrap(),
        "--into",
        pipeline.to_str().unwrap(),
        "--stage",
        "logger",
        "--data-dir",
        data_arg,
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(read_records(&letters_file).unwrap().len(), 4);
}

#[test]
fn the_commands_say_what_is_wrong_with_bad_input() {
    let directory = tempfile::tempdir().unwrap();
    let pipeline = directory.path().join("p.toml");
    std::fs::write(&pipeline, LOGGER_FILE).unwrap();
    let bad = directory.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"stage\": \"tweets\"}\n").unwrap();
    let pipeline = pipeline.to_str().unwrap();
    for (args, expected) in [
        (vec!["dead-letters", "/nonexistent/data"], "cannot read the directory /nonexistent/data"),
        (
            vec!["replay", "/nonexistent.jsonl", "--into", pipeline, "--stage", "tweets"],
            "/nonexistent.jsonl: no such dead-letter file",
        ),
        (
            vec!["replay", bad.to_str().unwrap(), "--into", pipeline, "--stage", "nope"],
            "has no stage 'nope'; its stages are: stream, tweets, logger",
        ),
        (
            vec!["replay", bad.to_str().unwrap(), "--into", pipeline, "--stage", "stream"],
            "stage 'stream' (kind \"sse\") takes no events",
        ),
        (
            vec!["replay", bad.to_str().unwrap(), "--into", pipeline, "--stage", "tweets"],
            "bad.jsonl:1: not a dead letter",
        ),
    ] {
        let (ok, _, stderr) = stageflow(&args);
        assert!(!ok && stderr.contains(expected), "{args:?}: {stderr}");
    }
}

// ---------------------------------------------------------------- other targets

/// Writes the SSE-event letters of stage `tweets` used by the target tests: tweets 1, 2 and kill messages 3 and 6.
fn kill_letters(path: &Path) {
    let mut lines = String::new();
    for n in [1u64, 2, 3, 6] {
        let event = if n % 3 == 0 {
            serde_json::json!({ "id": n.to_string(), "kill": true })
        } else {
            serde_json::json!({ "id": n.to_string(), "tweet": tweet(&n.to_string(), n) })
        };
        let record =
            Record { stage: "tweets".into(), error: "earlier".into(), at: "t".into(), attempts: 1, event };
        lines.push_str(&record.to_line());
        lines.push('\n');
    }
    std::fs::write(path, lines).unwrap();
}

/// Replays `kill_letters` into `tweets` of the logger pipeline with `dead_letter = target`.
async fn replay_kills_to(target: &str) {
    let directory = tempfile::tempdir().unwrap();
    let (pipeline, input) = (directory.path().join("p.toml"), directory.path().join("in.jsonl"));
    std::fs::write(
        &pipeline,
        LOGGER_FILE.replace("dead_letter = \"file\"", &format!("dead_letter = \"{target}\"")),
    )
    .unwrap();
    kill_letters(&input);
    let data = directory.path().join("data");
    let args: Vec<String> =
        ["replay", input.to_str().unwrap(), "--into", pipeline.to_str().unwrap(), "--stage", "tweets"]
            .into_iter()
            .map(str::to_string)
            .chain(["--data-dir".to_string(), data.display().to_string()])
            .collect();
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        stageflow(&args)
    })
    .await
    .unwrap();
    assert!(ok, "{stdout}\n{stderr}");
    assert!(!data.join("dead-letters").exists(), "nothing fell back to a file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_can_go_to_a_broker_topic() {
    use stageflow_stages::broker_stages::client::{Connection, Incoming};
    let broker_data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(broker_data.path(), "127.0.0.1:0", &[]);
    let addr = broker.addr.to_string();
    let mut subscriber = Connection::open(&addr, None, 10, 64, &mut |_, _| {}).await.expect("connects");
    let create = r#"pub dead {"id":"warm-up","priority":0,"msg":"creates the topic"}"#;
    assert!(subscriber.request(create, &mut |_, _| {}).await.unwrap().is_ok());
    assert!(subscriber.request("sub dead", &mut |_, _| {}).await.unwrap().is_ok());

    replay_kills_to(&format!("broker://{addr}/dead")).await;

    let mut letters = Vec::new();
    while letters.len() < 2 {
        let next =
            tokio::time::timeout(DEADLINE, subscriber.recv()).await.expect("a delivery in time").unwrap();
        if let Incoming::Event { topic, json } = next {
            let event: serde_json::Value = serde_json::from_str(&json).unwrap();
            if event["id"] != "warm-up" {
                assert_eq!(topic, "dead");
                letters.push(event["msg"].clone());
            }
        }
    }
    for letter in letters {
        let record: Record = serde_json::from_value(letter).expect("the record as msg");
        assert_eq!((record.stage.as_str(), record.error.as_str()), ("logger", KILL_PANIC));
        assert_eq!(record.event, serde_json::json!({ "kill": true }));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_can_go_to_a_jetstream_subject() {
    let Some(server) = NatsServer::start().await else { return };
    replay_kills_to(&format!("nats://127.0.0.1:{}/dead.logger", server.port)).await;

    let client = async_nats::connect(server.url()).await.expect("connects");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("DEAD_LETTERS_dead_logger").await.expect("the stream the target created");
    let info = stream.info().await.unwrap();
    assert_eq!(info.state.messages, 2, "{info:?}");
    for sequence in 1..=2 {
        let message = stream.get_raw_message(sequence).await.unwrap();
        assert_eq!(message.subject.as_str(), "dead.logger");
        let record: Record = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(
            (record.stage.as_str(), record.error.as_str(), record.attempts),
            ("logger", KILL_PANIC, 2)
        );
    }
    drop(server);
}

// ---------------------------------------------------------------- replay into a join and into a sink

/// SSE tweets scored twice and joined, stored in SQLite: the aggregator's letters are halves of joins.
const JOIN_FILE: &str = r#"
[pipeline]
name = "join-replay"

[[stage]]
id = "stream"
kind = "sse"
url = "http://127.0.0.1:9/tweets/1"

[[stage]]
id = "tweets"
kind = "tweets"
subscribe_to = ["stream"]
dispatcher = "broadcast"

[[stage]]
id = "sentiment"
kind = "sentiment"
subscribe_to = [{ id = "tweets", selector = "tweets" }]

[[stage]]
id = "engagement"
kind = "engagement"
subscribe_to = [{ id = "tweets", selector = "tweets" }]

[[stage]]
id = "aggregator"
kind = "aggregator"
subscribe_to = ["sentiment", "engagement"]

[[stage]]
id = "batcher"
kind = "batcher"
flush_interval = "50ms"
subscribe_to = ["aggregator"]

[[stage]]
id = "store"
kind = "sqlite_sink"
subscribe_to = ["batcher"]
"#;

#[test]
fn an_aggregators_letters_are_replayed_through_the_scorers_each_tweet_stored_once() {
    let directory = tempfile::tempdir().unwrap();
    let (data, pipeline, input) =
        (directory.path().join("data"), directory.path().join("p.toml"), directory.path().join("in.jsonl"));
    std::fs::write(&pipeline, JOIN_FILE).unwrap();
    // Tweet 1's two halves and tweet 2's sentiment half, as the aggregator dead-letters them.
    let half = |id: &str, score: serde_json::Value| {
        let mut event = serde_json::json!({ "tweet": tweet(id, 3), "extracted": false });
        event.as_object_mut().unwrap().extend(score.as_object().unwrap().clone());
        let record =
            Record { stage: "aggregator".into(), error: "boom".into(), at: "t".into(), attempts: 1, event };
        record.to_line() + "\n"
    };
    let lines = [
        half("1", serde_json::json!({ "sentiment": 0.5 })),
        half("1", serde_json::json!({ "engagement": 2.0 })),
        half("2", serde_json::json!({ "sentiment": -0.5 })),
    ]
    .concat();
    std::fs::write(&input, lines).unwrap();

    let args = |stage: &'static str| {
        let input = input.to_str().unwrap().to_string();
        let (pipeline, data) = (pipeline.to_str().unwrap().to_string(), data.to_str().unwrap().to_string());
        move || {
            let args = ["replay", &input, "--into", &pipeline, "--stage", stage, "--data-dir", &data];
            stageflow(&args)
        }
    };
    let (ok, stdout, stderr) = args("aggregator")();
    assert!(ok, "replay failed: {stdout}\n{stderr}");
    assert!(stdout.contains("replaying 3 dead letters of 'aggregator'"), "{stdout}");
    assert!(
        stdout.contains("fed, once per tweet, into 'engagement' and 'sentiment' instead"),
        "the replay says how it feeds a join: {stdout}"
    );
    let connection = rusqlite::Connection::open(data.join("stageflow.db")).unwrap();
    let mut statement = connection.prepare("SELECT id FROM tweets ORDER BY id").unwrap();
    let stored: Vec<String> =
        statement.query_map([], |row| row.get(0)).unwrap().map(Result::unwrap).collect();
    assert_eq!(stored, ["1", "2"], "each tweet of the letters joined and stored once");

    // A stage nothing can be fed through is refused with why and what to do.
    let (ok, _, stderr) = args("stream")();
    assert!(!ok);
    assert!(
        stderr.contains("stage 'stream' (kind \"sse\") takes no events") && stderr.contains("give --stage"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sinks_letters_are_stored_exactly_once_when_replayed_after_the_cause_is_fixed() {
    let Some(server) = Secantus::start(false).await else { return };
    let uri = server.uri("fixed");
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let database = client.database("fixed");
    // A validator too strict for tweet 20's language code.
    let strict = doc! { "$jsonSchema": { "bsonType": "object", "properties": {
        "lang": { "bsonType": "string", "maxLength": 8 },
        "id_str": { "bsonType": "string", "minLength": 1 },
    } } };
    database.create_collection("tweets").validator(strict).await.expect("SecantusDB takes a validator");
    let directory = tempfile::tempdir().unwrap();
    let text = sink_file("mongo_sink", &format!("uri = \"{uri}\""));
    run_file(&text, directory.path()).await;
    let tweets = database.collection::<Document>("tweets");
    let stored = || async {
        let documents: Vec<Document> = tweets.find(doc! {}).await.unwrap().try_collect().await.unwrap();
        let mut ids: Vec<String> = documents.iter().map(|d| d.get_str("_id").unwrap().to_string()).collect();
        ids.sort();
        ids
    };
    let sorted = |ids: BTreeSet<String>| ids.into_iter().collect::<Vec<_>>();
    assert_eq!(
        stored().await,
        sorted(good_ids(&[10, 20, 30])),
        "rejected: 10 (size), 20 (validator), 30 (empty id)"
    );
    let letters_path = directory.path().join("dead-letters/store.jsonl");
    assert_eq!(letters(&letters_path).len(), 3);

    // The cause of 20's rejection is fixed: the validator accepts any language code.
    let relaxed = doc! { "$jsonSchema": { "bsonType": "object", "properties": {
        "id_str": { "bsonType": "string", "minLength": 1 },
    } } };
    database
        .run_command(doc! { "collMod": "tweets", "validator": relaxed })
        .await
        .expect("SecantusDB changes a validator");

    // Replayed into the sink (a copy of the file: the sink appends what it rejects again to it).
    let replayed_letters = directory.path().join("replayed.jsonl");
    std::fs::copy(&letters_path, &replayed_letters).unwrap();
    let mut registry = stageflow_stages::registry();
    registry.add::<MixedTweetsKind>();
    let file = load(&text);
    let replay =
        stageflow_stages::dead_letters::replay::replay_file(&registry, &file, &replayed_letters, "store")
            .expect("a replay pipeline");
    let context = BuildContext::for_file(&replay, directory.path().to_path_buf());
    let mut running =
        registry.build(&replay, &context).unwrap_or_else(|e| panic!("{e}")).start().expect("starts");
    tokio::time::timeout(DEADLINE, running.wait()).await.expect("in time").expect("the replay ends cleanly");
    assert_eq!(stored().await, sorted(good_ids(&[10, 30])), "20 is stored now, once; nothing else twice");
    // What the store still refuses is dead-lettered again, with the server's reason.
    let again: Vec<String> = letters(&letters_path).into_iter().skip(3).map(|(id, _)| id).collect();
    assert_eq!(again.len(), 2, "10 and the empty id again: {again:?}");
    assert!(again.contains(&"10".to_string()) && again.contains(&String::new()), "{again:?}");

    // Replaying the same letters once more stores nothing twice.
    let mut running =
        registry.build(&replay, &context).unwrap_or_else(|e| panic!("{e}")).start().expect("starts");
    tokio::time::timeout(DEADLINE, running.wait()).await.expect("in time").expect("the replay ends cleanly");
    assert_eq!(stored().await, sorted(good_ids(&[10, 30])));
    let count = tweets.count_documents(doc! { "_id": "20" }).await.unwrap();
    assert_eq!(count, 1, "tweet 20 exactly once");
    drop(server);
}
