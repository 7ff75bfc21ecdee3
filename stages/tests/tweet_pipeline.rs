//! The whole tweet pipeline end to end (issue 4), built from a pipeline file
//! and fed by the real emulator over SSE:
//!
//! ```text
//! emulator ─▶ sse ×2 ─▶ tweets ─┬─▶ logger (output none, sleep 0)
//!                               ├─▶ sentiment ─┐
//!                               └─▶ engagement ┴─▶ aggregator ─▶ batcher ─▶ sink
//! ```
//!
//! - into `mongo_sink` (SecantusDB) and into `sqlite_sink`: the stores hold
//!   exactly the distinct tweets the emulator sent plus their retweeted
//!   originals (kill messages excluded, as the generator says), each user
//!   once, engagement counts adding up, documents field by field; the same
//!   seed run again changes nothing;
//! - the fault test: SecantusDB on disk is killed mid-run and restarted on
//!   the same path and port; every tweet is stored exactly once;
//! - the backpressure test: a sink taking one batch per second holds the
//!   emulator's send count to what the sink takes, stops it when the sink
//!   stops, and the process's memory stays flat.
//!
//! The tests run one at a time (they share two cores and the RSS reading).
//! Mongo tests start their own SecantusDB as `tests/storage.rs` does; without
//! it they say so and pass, except under `CI=true`, where they fail.

mod support;
use support::secantus::Secantus;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::TryStreamExt;
use mongodb::Client;
use mongodb::bson::{Bson, Document, doc};
use serde_json::Value;
use stageflow::config::{
    BuildContext, DispatcherChoices, Kind, Resources, StageDecl, configure, kind, parse_pipeline,
};
use stageflow::{Nothing, Pipeline, PipelineSummary};
use stageflow_stages::analysis::engagement::engagement_of;
use stageflow_stages::analysis::{Lexicon, sentiment_score};
use stageflow_stages::emulator::generator::{GeneratedEvent, TweetGenerator, Vocabulary};
use stageflow_stages::emulator::{EmulatorConfig, EmulatorHandle, Rate, start_emulator};
use stageflow_stages::storage::batcher::Batch;
use stageflow_stages::storage::documents::{DocumentForm, SplitBatch};
use stageflow_stages::storage::{
    EngagementFlush, FlushId, Inserted, Sink, SinkCounters, SinkError, SinkMetrics, SinkOptions, SinkStage,
    published_sinks,
};
use stageflow_stages::tweet::{Tweet, User};
use tokio::sync::watch;
use tokio::time::Instant;

/// The seed of every emulator here.
const SEED: u64 = 4_2024;
/// One kill message in 100 events.
const KILL_RATIO: f64 = 0.01;

/// Held by each test for its whole run, so they never overlap.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------- the pipeline file

/// The tweet pipeline of `pipelines/tweets.toml` with a fast logger and `${SINK}` at the end.
const PIPELINE: &str = r#"
[pipeline]
name = "${NAME}"

[[stage]]
id = "stream1"
kind = "sse"
url = "${EMULATOR}/tweets/1"
initial_backoff_ms = 10
max_backoff_ms = 200
give_up_after = 25

[[stage]]
id = "stream2"
kind = "sse"
url = "${EMULATOR}/tweets/2"
initial_backoff_ms = 10
max_backoff_ms = 200
give_up_after = 25

[[stage]]
id = "tweets"
kind = "tweets"
subscribe_to = [{ id = "stream1", max_demand = 200 }, { id = "stream2", max_demand = 200 }]
dispatcher = "broadcast"

[[stage]]
id = "logger"
kind = "logger"
output = "none"
sleep_mean_ms = 0
subscribe_to = [{ id = "tweets", selector = "all", max_demand = 400 }]
workers = { min = 1, max = 4, autoscale = true }

[[stage]]
id = "sentiment"
kind = "sentiment"
subscribe_to = [{ id = "tweets", selector = "tweets" }]
workers = { min = 1, max = 2, autoscale = true, events_per_worker = 500 }

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
batch_size = ${BATCH}
flush_interval = "250ms"
subscribe_to = [{ id = "aggregator", max_demand = ${BATCH} }]

${SINK}
"#;

/// The `mongo_sink` stage writing to `${MONGO_URI}`.
const MONGO_SINK: &str = r#"
[[stage]]
id = "store"
kind = "mongo_sink"
uri = "${MONGO_URI}"
timeout = "1s"
user_flush_ms = 200
subscribe_to = ["batcher"]
"#;

/// The `sqlite_sink` stage writing `stageflow.db` in the data directory.
const SQLITE_SINK: &str = r#"
[[stage]]
id = "store"
kind = "sqlite_sink"
user_flush_ms = 200
subscribe_to = ["batcher"]
"#;

/// The test-only `slow_sink` stage, one batch at a time.
const SLOW_SINK: &str = r#"
[[stage]]
id = "store"
kind = "slow_sink"
subscribe_to = [{ id = "batcher", max_demand = 1, min_demand = 0 }]
"#;

/// Builds the pipeline file with `sink`, batches of `batch`, `${VAR}`s from `variables`, and the slow sink, if any, in its build context.
fn build(
    sink: &str,
    batch: u64,
    variables: &[(&str, String)],
    data_dir: &Path,
    slow_sink: Option<SlowSink>,
) -> (Pipeline, Resources) {
    let variables: HashMap<String, String> =
        variables.iter().map(|(name, value)| (name.to_string(), value.clone())).collect();
    // `${VAR}`s are expanded in stage settings only: the name and numbers go in as text.
    let text = PIPELINE
        .replace("${SINK}", sink)
        .replace("${BATCH}", &batch.to_string())
        .replace("${NAME}", &variables["NAME"]);
    let file = parse_pipeline(Path::new("tweet_pipeline.toml"), &text, &|name| variables.get(name).cloned())
        .unwrap_or_else(|errors| panic!("the pipeline file parses: {errors}"));
    let mut registry = stageflow_stages::registry();
    registry.add::<SlowSinkKind>();
    let context = BuildContext::for_file(&file, data_dir.to_path_buf());
    if let Some(sink) = slow_sink {
        context.resources.insert(sink);
    }
    let pipeline =
        registry.build(&file, &context).unwrap_or_else(|errors| panic!("the pipeline builds: {errors}"));
    (pipeline, context.resources)
}

/// The emulator's settings here: `SEED`, `KILL_RATIO`, no malformed events, no forced closes.
fn emulator_config(rate: Rate, limit: Option<u64>) -> EmulatorConfig {
    EmulatorConfig {
        rate,
        seed: SEED,
        limit,
        kill_ratio: KILL_RATIO,
        malformed_ratio: 0.0,
        close_after: None,
    }
}

/// Starts an emulator on a free 127.0.0.1 port (stopped when its handle drops).
async fn emulator(rate: Rate, limit: Option<u64>) -> EmulatorHandle {
    start_emulator("127.0.0.1:0", emulator_config(rate, limit)).await.expect("the emulator starts")
}

/// `http://127.0.0.1:PORT`, without a trailing slash.
fn base_url(emulator: &EmulatorHandle) -> String {
    emulator.url("").trim_end_matches('/').to_string()
}

/// Starts a pipeline and waits for it to end by itself, failing after `within`.
async fn run_to_end(pipeline: Pipeline, within: Duration) -> PipelineSummary {
    let mut running = pipeline.start().expect("a valid pipeline");
    tokio::time::timeout(within, running.wait())
        .await
        .unwrap_or_else(|_| panic!("the pipeline did not end by itself within {within:?}"))
        .expect("the pipeline ends cleanly")
}

/// The counters of the one sink stage of the pipeline built with `resources`.
fn sink_counters(resources: &Resources) -> SinkCounters {
    let sinks = published_sinks(resources);
    assert_eq!(sinks.len(), 1, "one sink: {sinks:?}");
    sinks[0].metrics.counters()
}

/// Events the emulator sent on stream `stream`, over all its connections, and of which kill messages.
fn sent_on(emulator: &EmulatorHandle, stream: u32) -> (u64, u64) {
    let stats = emulator.stats();
    stats.for_stream(stream).fold((0, 0), |(events, kills), c| (events + c.events_sent, kills + c.kills_sent))
}

/// Checks every stage of a finished run: nothing dropped, lost only to kill messages.
fn assert_clean_run(summary: &PipelineSummary, expected: &Expected) {
    for stage in &summary.stages {
        assert_eq!(stage.dropped, 0, "stage {} dropped events: {stage:?}", stage.stage);
        assert_eq!(stage.credit_violations, 0, "{stage:?}");
        if stage.stage != "logger" {
            assert_eq!((stage.restarts, stage.lost), (0, 0), "{stage:?}");
        }
    }
    let logger = summary.stages.iter().find(|stage| stage.stage == "logger").expect("the logger ran");
    assert_eq!(
        (logger.restarts, logger.lost),
        (expected.kills, expected.kills),
        "the logger crashed once per kill message and lost only those"
    );
}

// ---------------------------------------------------------------- what must be stored

/// What the emulator sends on streams 1 and 2, sequences 1..=limit, as the stores must hold it.
struct Expected {
    /// Tweet id → the tweet and whether it is an extracted original.
    tweets: BTreeMap<String, (Tweet, bool)>,
    /// User id → the user.
    users: BTreeMap<String, User>,
    /// User id → (distinct tweets, sum of their engagement scores).
    engagements: BTreeMap<String, (u64, f64)>,
    /// Events sent on both streams.
    events: u64,
    /// Of which kill messages.
    kills: u64,
    /// Retweets among the sent tweets.
    retweets: u64,
}

/// Computes [`Expected`] from the generator alone, without the pipeline.
fn expected(limit: u64) -> Expected {
    let generator = TweetGenerator::new(SEED, KILL_RATIO, 0.0, Vocabulary::shipped());
    let mut tweets = BTreeMap::new();
    let (mut kills, mut retweets) = (0, 0);
    for stream in 1..=2 {
        for sequence in 1..=limit {
            match generator.event(stream, sequence) {
                GeneratedEvent::Tweet(tweet) => {
                    if let Some(original) = &tweet.retweeted_status {
                        retweets += 1;
                        tweets.entry(original.id_str.clone()).or_insert(((**original).clone(), true));
                    }
                    tweets.entry(tweet.id_str.clone()).or_insert((*tweet, false));
                }
                GeneratedEvent::Kill => kills += 1,
                GeneratedEvent::Malformed(_) => panic!("the malformed ratio is 0"),
            }
        }
    }
    let mut users = BTreeMap::new();
    let mut engagements: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    for (tweet, _) in tweets.values() {
        users.entry(tweet.user.id_str.clone()).or_insert_with(|| tweet.user.clone());
        let entry = engagements.entry(tweet.user.id_str.clone()).or_default();
        entry.0 += 1;
        entry.1 += engagement_of(tweet);
    }
    Expected { tweets, users, engagements, events: 2 * limit, kills, retweets }
}

/// The three collections (or tables) of a store, each document as JSON by key.
#[derive(Debug, Clone, PartialEq)]
struct Stored {
    tweets: BTreeMap<String, Value>,
    users: BTreeMap<String, Value>,
    engagements: BTreeMap<String, Value>,
}

/// A JSON number as f64 (integers and doubles alike), failing on anything else.
fn number(doc: &Value, field: &str) -> f64 {
    doc.get(field).and_then(Value::as_f64).unwrap_or_else(|| panic!("`{field}` is not a number in {doc}"))
}

/// A JSON string field, failing when missing.
fn text<'a>(doc: &'a Value, field: &str) -> &'a str {
    doc.get(field).and_then(Value::as_str).unwrap_or_else(|| panic!("`{field}` is not a string in {doc}"))
}

/// Asserts two key sets are equal, naming a few keys missing and extra.
fn assert_same_keys<'a>(
    what: &str,
    got: impl Iterator<Item = &'a String>,
    want: impl Iterator<Item = &'a String>,
) {
    let got: BTreeSet<&String> = got.collect();
    let want: BTreeSet<&String> = want.collect();
    let missing: Vec<_> = want.difference(&got).take(5).collect();
    let extra: Vec<_> = got.difference(&want).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: stored {} != expected {}; missing e.g. {missing:?}, unexpected e.g. {extra:?}",
        got.len(),
        want.len()
    );
}

/// Checks a store against what the emulator sent; returns a one-line summary of the counts.
fn assert_stored(stored: &Stored, expected: &Expected) -> String {
    assert_same_keys("tweets", stored.tweets.keys(), expected.tweets.keys());
    assert_same_keys("users", stored.users.keys(), expected.users.keys());
    assert_same_keys("users_engagements", stored.engagements.keys(), expected.users.keys());

    // Every tweet: the fields the analysis half and the split decide.
    let vader = Lexicon::vader();
    for (id, (tweet, extracted)) in &expected.tweets {
        let doc = &stored.tweets[id];
        assert_eq!(text(doc, "id_str"), id);
        assert_eq!(text(doc, "text"), tweet.text, "text of {id}");
        assert_eq!(text(doc, "user_id"), tweet.user.id_str, "user of {id}");
        assert!(doc.get("user").is_none(), "tweet {id} keeps only the user's id: {doc}");
        assert!(doc.get("retweeted_status").is_none(), "tweet {id} keeps only the original's id: {doc}");
        assert_eq!(doc.get("extracted").and_then(Value::as_bool), Some(*extracted), "extracted of {id}");
        let original = tweet.retweeted_status.as_ref().map(|original| original.id_str.as_str());
        assert_eq!(doc.get("retweeted_status_id").and_then(Value::as_str), original, "retweet link of {id}");
        let (sentiment, engagement) = (number(doc, "sentiment"), number(doc, "engagement"));
        assert!(sentiment.is_finite() && engagement.is_finite(), "scores of {id}: {doc}");
        assert!((sentiment - sentiment_score(&tweet.text, &vader)).abs() < 1e-12, "sentiment of {id}");
        assert!((engagement - engagement_of(tweet)).abs() < 1e-12, "engagement of {id}");
    }

    // A few documents field by field: the first retweet, its original, the first plain tweet.
    let retweet = expected.tweets.values().find(|(t, _)| t.retweeted_status.is_some()).expect("a retweet");
    let original = &expected.tweets[&retweet.0.retweeted_status.as_ref().unwrap().id_str];
    let plain = expected.tweets.values().find(|(t, x)| !x && t.retweeted_status.is_none()).expect("a tweet");
    for (tweet, _) in [retweet, original, plain] {
        let doc = &stored.tweets[&tweet.id_str];
        assert_eq!(text(doc, "created_at"), tweet.created_at, "{doc}");
        assert_eq!(number(doc, "favorite_count"), tweet.favorite_count as f64, "{doc}");
        assert_eq!(number(doc, "retweet_count"), tweet.retweet_count as f64, "{doc}");
        assert_eq!(doc.get("lang").and_then(Value::as_str), tweet.lang.as_deref(), "{doc}");
        let hashtags: Vec<&str> = doc["entities"]["hashtags"]
            .as_array()
            .unwrap_or_else(|| panic!("entities.hashtags in {doc}"))
            .iter()
            .map(|tag| text(tag, "text"))
            .collect();
        let want: Vec<&str> = tweet.entities.hashtags.iter().map(|tag| tag.text.as_str()).collect();
        assert_eq!(hashtags, want, "{doc}");
        let user = &stored.users[&tweet.user.id_str];
        assert_eq!(text(user, "id_str"), tweet.user.id_str);
        assert_eq!(text(user, "screen_name"), tweet.user.screen_name, "{user}");
        assert_eq!(text(user, "name"), tweet.user.name, "{user}");
        assert_eq!(number(user, "followers_count"), tweet.user.followers_count as f64, "{user}");
    }
    assert!(
        retweet.0.text.starts_with("RT @") && original.1 && !retweet.1,
        "the retweet and its extracted original"
    );

    // Engagements: per user exact, and the counts add up to the tweets.
    let mut counted = 0;
    for (user, (count, sum)) in &expected.engagements {
        let doc = &stored.engagements[user];
        let (got_count, got_sum, ratio) =
            (number(doc, "tweet_count"), number(doc, "engagement_sum"), number(doc, "ratio"));
        assert_eq!(got_count, *count as f64, "tweet_count of {user}: {doc}");
        assert!(
            (got_sum - sum).abs() <= 1e-9 * sum.abs().max(1.0),
            "engagement_sum of {user}: {got_sum} != {sum}"
        );
        assert!((ratio - sum / *count as f64).abs() <= 1e-9 * ratio.abs().max(1.0), "ratio of {user}: {doc}");
        counted += got_count as u64;
    }
    assert_eq!(counted, stored.tweets.len() as u64, "users_engagements tweet counts add up to the tweets");
    format!(
        "{} tweets ({} extracted originals of {} retweets), {} users, engagement counts summing to {counted}",
        stored.tweets.len(),
        expected.tweets.values().filter(|(_, extracted)| *extracted).count(),
        expected.retweets,
        stored.users.len()
    )
}

/// Asserts a store is unchanged since `before`, naming the first documents that differ.
fn assert_unchanged(before: &Stored, after: &Stored) {
    for (what, old, new) in [
        ("tweets", &before.tweets, &after.tweets),
        ("users", &before.users, &after.users),
        ("users_engagements", &before.engagements, &after.engagements),
    ] {
        let changed: Vec<&String> =
            old.keys().chain(new.keys()).filter(|key| old.get(*key) != new.get(*key)).take(3).collect();
        assert!(
            changed.is_empty(),
            "{what}: {} documents before, {} after; differing e.g. {:?}",
            old.len(),
            new.len(),
            changed.iter().map(|key| (key, old.get(*key), new.get(*key))).collect::<Vec<_>>()
        );
    }
}

/// One collection as JSON documents by `_id`.
async fn mongo_collection(client: &Client, database: &str, name: &str) -> BTreeMap<String, Value> {
    let collection = client.database(database).collection::<Document>(name);
    let documents: Vec<Document> =
        collection.find(doc! {}).await.expect("find").try_collect().await.expect("the documents");
    let mut by_id = BTreeMap::new();
    for document in documents {
        let id = document.get_str("_id").unwrap_or_else(|_| panic!("a string _id in {document}")).to_string();
        let json = Bson::Document(document).into_relaxed_extjson();
        assert!(by_id.insert(id.clone(), json).is_none(), "{name}: _id {id} twice");
    }
    by_id
}

/// The three collections of `database`.
async fn mongo_stored(client: &Client, database: &str) -> Stored {
    Stored {
        tweets: mongo_collection(client, database, "tweets").await,
        users: mongo_collection(client, database, "users").await,
        engagements: mongo_collection(client, database, "users_engagements").await,
    }
}

// ---------------------------------------------------------------- SQLite

/// One table as JSON documents by id.
fn sqlite_table(path: &Path, table: &str) -> BTreeMap<String, Value> {
    let connection = rusqlite::Connection::open(path).expect("the database opens");
    let mut query = connection.prepare(&format!("SELECT id, doc FROM {table}")).expect("the table exists");
    query
        .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))
        .expect("rows")
        .map(|row| {
            let (id, doc) = row.expect("a row");
            let json =
                serde_json::from_str(&doc).unwrap_or_else(|error| panic!("{table} {id}: {error}: {doc}"));
            (id, json)
        })
        .collect()
}

/// The three tables of the SQLite file at `path`.
fn sqlite_stored(path: &Path) -> Stored {
    Stored {
        tweets: sqlite_table(path, "tweets"),
        users: sqlite_table(path, "users"),
        engagements: sqlite_table(path, "users_engagements"),
    }
}

// ---------------------------------------------------------------- end to end, twice

/// Events per stream in the end-to-end tests.
const LIMIT: u64 = 500;

/// Runs the emulator (`LIMIT` per stream, rate max) through the pipeline with `sink` to its end; checks the run.
/// Returns the counters of its sink.
async fn run_once(
    name: &str,
    sink: &str,
    extra: &[(&str, String)],
    data_dir: &Path,
    expected: &Expected,
) -> SinkCounters {
    let emulator = emulator(Rate::Max, Some(LIMIT)).await;
    let mut variables = vec![("NAME", name.to_string()), ("EMULATOR", base_url(&emulator))];
    variables.extend(extra.iter().cloned());
    let started = Instant::now();
    let (pipeline, resources) = build(sink, 100, &variables, data_dir, None);
    let summary = run_to_end(pipeline, Duration::from_secs(60)).await;
    for stream in 1..=2 {
        assert_eq!(sent_on(&emulator, stream).0, LIMIT, "stream {stream} sent each event once, to its limit");
    }
    let kills = sent_on(&emulator, 1).1 + sent_on(&emulator, 2).1;
    assert_eq!(kills, expected.kills, "the emulator sent the kill messages the generator says");
    assert_clean_run(&summary, expected);
    eprintln!(
        "{name}: {} events ({kills} kills) through the pipeline in {:?}",
        expected.events,
        started.elapsed()
    );
    sink_counters(&resources)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_to_mongo_stores_every_tweet_and_original_once_and_a_rerun_adds_nothing() {
    let _serial = SERIAL.lock().await;
    let Some(server) = Secantus::start(false).await else { return };
    let expected = expected(LIMIT);
    assert!(expected.kills > 0 && expected.retweets > 0, "the seed exercises kills and retweets");
    let data = tempfile::tempdir().expect("a temporary directory");
    let uri = [("MONGO_URI", server.uri("tweets_e2e"))];
    let client = server.client().await;

    let counters = run_once("e2e-mongo-1", MONGO_SINK, &uri, data.path(), &expected).await;
    let first = mongo_stored(&client, "tweets_e2e").await;
    let summary = assert_stored(&first, &expected);
    assert_eq!(counters.tweets_inserted, expected.tweets.len() as u64, "{counters:?}");
    assert_eq!(counters.users_inserted, expected.users.len() as u64, "{counters:?}");
    eprintln!("mongo, first run: {summary}; sink {counters:?}");

    // The same seed again, into the same database: every insert is a replay.
    let counters = run_once("e2e-mongo-2", MONGO_SINK, &uri, data.path(), &expected).await;
    let second = mongo_stored(&client, "tweets_e2e").await;
    assert_unchanged(&first, &second);
    assert!(counters.batches > 0, "the second run reached the sink: {counters:?}");
    assert_eq!((counters.tweets_inserted, counters.users_inserted), (0, 0), "{counters:?}");
    assert_eq!(counters.engagement_updates, 0, "{counters:?}");
    eprintln!("mongo, second run: nothing added; sink {counters:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_to_sqlite_stores_every_tweet_and_original_once_and_a_rerun_adds_nothing() {
    let _serial = SERIAL.lock().await;
    let expected = expected(LIMIT);
    let data = tempfile::tempdir().expect("a temporary directory");
    let path = data.path().join("stageflow.db");

    let counters = run_once("e2e-sqlite-1", SQLITE_SINK, &[], data.path(), &expected).await;
    let first = sqlite_stored(&path);
    let summary = assert_stored(&first, &expected);
    assert_eq!(counters.tweets_inserted, expected.tweets.len() as u64, "{counters:?}");
    eprintln!("sqlite, first run: {summary}; sink {counters:?}");

    let counters = run_once("e2e-sqlite-2", SQLITE_SINK, &[], data.path(), &expected).await;
    assert_unchanged(&first, &sqlite_stored(&path));
    assert!(counters.batches > 0, "the second run reached the sink: {counters:?}");
    assert_eq!((counters.tweets_inserted, counters.users_inserted), (0, 0), "{counters:?}");
    eprintln!("sqlite, second run: nothing added; sink {counters:?}");
}

// ---------------------------------------------------------------- fault

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mongo_server_killed_mid_run_and_restarted_ends_with_every_tweet_stored_once() {
    let _serial = SERIAL.lock().await;
    let Some(mut server) = Secantus::start(true).await else { return };
    const FAULT_LIMIT: u64 = 1500;
    let expected = expected(FAULT_LIMIT);
    let total = expected.tweets.len() as u64;
    // A fixed rate, so the run lasts about 10 s and the kill (after 400 stored)
    // lands inside it even when the machine is busy.
    let emulator = emulator(Rate::Fixed(150.0), Some(FAULT_LIMIT)).await;
    let data = tempfile::tempdir().expect("a temporary directory");
    let name = "e2e-mongo-fault";
    let variables =
        [("NAME", name.to_string()), ("EMULATOR", base_url(&emulator)), ("MONGO_URI", server.uri("fault"))];
    let (pipeline, resources) = build(MONGO_SINK, 100, &variables, data.path(), None);
    let mut running = pipeline.start().expect("a valid pipeline");
    let counters = || sink_counters(&resources);

    let deadline = Instant::now() + Duration::from_secs(30);
    while counters().tweets_inserted < 400 {
        assert!(Instant::now() < deadline, "no progress before the kill: {:?}", counters());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill();
    let killed_at = counters();
    let sent_at_kill = sent_on(&emulator, 1).0 + sent_on(&emulator, 2).0;
    while counters().retries < 3 {
        assert!(Instant::now() < deadline, "the sink never retried: {:?}", counters());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before_restart = counters();
    server.launch().await;
    let summary = tokio::time::timeout(Duration::from_secs(60), running.wait())
        .await
        .expect("the pipeline ends by itself after the restart")
        .expect("the pipeline ends cleanly");
    assert_clean_run(&summary, &expected);

    let ended = counters();
    assert!(killed_at.tweets_inserted < total, "killed mid-run: {killed_at:?} of {total}");
    assert!(sent_at_kill < expected.events, "the emulator was still sending: {sent_at_kill}");
    let stored = mongo_stored(&server.client().await, "fault").await;
    let summary = assert_stored(&stored, &expected);
    assert_eq!(ended.tweets_inserted, total, "every tweet counted new exactly once: {ended:?}");
    eprintln!(
        "fault: killed after {} of {total} tweets stored ({sent_at_kill} of {} events sent), \
         {} retries while down; ended with {summary}; sink {ended:?}",
        killed_at.tweets_inserted, expected.events, before_restart.retries
    );
}

// ---------------------------------------------------------------- backpressure

/// A sink taking `delay_ms` (1 s) per batch, and nothing while its gate is closed.
#[derive(Clone)]
struct SlowSink {
    gate: watch::Receiver<bool>,
    delay_ms: Arc<AtomicU64>,
    stored: Arc<AtomicU64>,
}

impl Sink for SlowSink {
    const DOCUMENTS: DocumentForm = DocumentForm::Keys;

    async fn insert(&mut self, batch: &SplitBatch, _: &FlushId) -> Result<Inserted, SinkError> {
        self.gate.wait_for(|open| *open).await.expect("the test holds the gate");
        tokio::time::sleep(Duration::from_millis(self.delay_ms.load(Ordering::SeqCst))).await;
        self.stored.fetch_add(batch.tweets.len() as u64, Ordering::SeqCst);
        Ok(Inserted { new_tweets: (0..batch.tweets.len()).collect(), ..Inserted::default() })
    }

    async fn add_engagements(&mut self, _: &EngagementFlush) -> Result<(), SinkError> {
        Ok(())
    }
}

/// takes one batch per second (test only); the [`SlowSink`] comes from the build context
#[kind("slow_sink", Batch -> Nothing)]
struct SlowSinkKind {}

impl Kind for SlowSinkKind {
    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, context: &BuildContext) -> Result<(), String> {
        let sink = context.resources.get::<SlowSink>().ok_or("the test puts a SlowSink in the context")?;
        let (id, metrics) = (stage.id.clone(), SinkMetrics::new());
        let config = pipeline.consumer(&stage.id, move || {
            SinkStage::new(&id, (*sink).clone(), SinkOptions::default(), metrics.clone())
        });
        configure(stage, config, &DispatcherChoices::demand_only(), None)
    }
}

/// This process's resident set size in kB (VmRSS in /proc/self/status).
fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

/// Events the emulator has sent on streams 1 and 2 together.
fn sent(emulator: &EmulatorHandle) -> u64 {
    sent_on(emulator, 1).0 + sent_on(emulator, 2).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_taking_one_batch_a_second_holds_the_emulator_back_and_memory_flat() {
    let _serial = SERIAL.lock().await;
    const BATCH: u64 = 200;
    let emulator = emulator(Rate::Max, None).await;
    let (open, gate) = watch::channel(true);
    let sink = SlowSink { gate, delay_ms: Arc::new(AtomicU64::new(1000)), stored: Arc::default() };
    let (stored, delay_ms) = (sink.stored.clone(), sink.delay_ms.clone());
    let began = Instant::now();
    let data = tempfile::tempdir().expect("a temporary directory");
    let variables = [("NAME", "e2e-backpressure".to_string()), ("EMULATOR", base_url(&emulator))];
    let running = build(SLOW_SINK, BATCH, &variables, data.path(), Some(sink)).0.start().expect("valid");

    // Warm up: two batches stored, then the buffers between socket and sink fill.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored.load(Ordering::SeqCst) < 2 * BATCH {
        assert!(Instant::now() < deadline, "the sink stored {} in 30 s", stored.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let warm = began.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;

    // One batch a second for 10 s: the emulator sends only what the sink takes.
    let (sent_0, stored_0, rss_0) = (sent(&emulator), stored.load(Ordering::SeqCst), rss_kb());
    let mut rss_max = rss_0;
    let mut samples = Vec::new();
    let start = Instant::now();
    for second in 1..=10u64 {
        tokio::time::sleep_until(start + Duration::from_secs(second)).await;
        let (sent_now, stored_now, rss) = (sent(&emulator), stored.load(Ordering::SeqCst), rss_kb());
        rss_max = rss_max.max(rss);
        samples.push((sent_now - sent_0, stored_now - stored_0, rss as i64 - rss_0 as i64));
    }
    let (sent_growth, stored_growth, _) = *samples.last().unwrap();
    eprintln!(
        "slow sink ({warm:?} to store 2 batches, +3 s): 10 s from {sent_0} events sent / {stored_0} \
         tweets stored at RSS {rss_0} kB; each second (events sent, tweets stored, RSS kB) since: {samples:?}"
    );
    assert!(
        (5 * BATCH..=12 * BATCH).contains(&stored_growth),
        "about one batch a second stored: {stored_growth} in 10 s"
    );
    // An event is one tweet, or two (a retweet and its original), or none
    // (a kill), so the events the pipeline took follow the tweets stored;
    // the emulator refills each socket in chunks (about 1 800 events here),
    // hence the slack. At rate max, unheld, it sends that much in well
    // under a second.
    assert!(
        sent_growth <= stored_growth + 6000,
        "the emulator sent {sent_growth} events while the sink stored {stored_growth} tweets"
    );
    assert!(rss_max <= rss_0 + 32 * 1024, "RSS grew from {rss_0} kB to {rss_max} kB while the sink was slow");

    // The sink takes nothing: the emulator's count plateaus, exactly.
    open.send(false).expect("the sink holds the gate");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let plateau = sent(&emulator);
    let mut flat = Vec::new();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        flat.push(sent(&emulator));
        rss_max = rss_max.max(rss_kb());
    }
    eprintln!(
        "sink stopped: events sent {plateau}, then each second {flat:?}; RSS max {rss_max} kB (from {rss_0})"
    );
    assert!(flat.iter().all(|&now| now == plateau), "the emulator kept sending: {plateau} then {flat:?}");
    assert!(rss_max <= rss_0 + 32 * 1024, "RSS grew from {rss_0} kB to {rss_max} kB");
    let per_connection: Vec<(u32, u64, u64, bool)> = emulator
        .stats()
        .connections
        .iter()
        .map(|c| (c.stream, c.events_sent, c.bytes_written, c.open))
        .collect();
    assert_eq!(per_connection.len(), 2, "one connection per stream, never dropped: {per_connection:?}");
    assert!(per_connection.iter().all(|c| c.3), "{per_connection:?}");

    // The sink goes on, fast now: so does the emulator.
    delay_ms.store(0, Ordering::SeqCst);
    open.send(true).expect("the sink holds the gate");
    let deadline = Instant::now() + Duration::from_secs(15);
    while sent(&emulator) == plateau {
        assert!(Instant::now() < deadline, "the emulator never resumed after the sink did");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "sink resumed: events sent {}; (stream, events sent, bytes, open) while stopped: {per_connection:?}; {:?} in all",
        sent(&emulator),
        began.elapsed()
    );
    running.stop().await.expect("stops cleanly");
}
