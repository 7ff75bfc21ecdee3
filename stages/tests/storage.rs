//! Storage: the batcher and the sinks in engine pipelines.
//!
//! - batches by size and by age, everything delivered;
//! - backpressure: a sink taking one batch per second (then none) holds the
//!   source to what the sink stored plus the batch being written;
//! - idempotence of the SQLite and MongoDB sinks: a stream with replays,
//!   written twice, stores each tweet and user once and counts engagement once;
//! - the fault test: SecantusDB on disk is stopped mid-run and restarted,
//!   and every tweet ends up stored exactly once, engagements exact;
//! - the kinds, built from a pipeline file.
//!
//! MongoDB tests start their own SecantusDB (`secantusd-py`, from
//! `STAGEFLOW_SECANTUSD` or `.venv/bin/secantusd-py`, which `scripts/test`
//! installs) on a free 127.0.0.1 port and kill it when they end. Without it
//! they say so and pass, except under `CI=true`, where they fail.

mod support;
use support::secantus::Secantus;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::TryStreamExt;
use mongodb::Client;
use mongodb::bson::{Document, doc};
use stageflow::config::{
    BuildContext, DispatcherChoices, Kind, Resources, StageDecl, configure, kind, parse_pipeline,
};
use stageflow::ops::FromIter;
use stageflow::{DemandBounds, Emitter, Flow, Nothing, Pipeline, Producer, SubscribeOptions};
use stageflow_stages::receipt::Receipt;
use stageflow_stages::scored::ScoredTweet;
use stageflow_stages::storage::batcher::{Batch, Batcher};
use stageflow_stages::storage::documents::{DocumentForm, EngagementDelta, SplitBatch, split_batch};
use stageflow_stages::storage::mongo::{MongoConfig, MongoSink};
use stageflow_stages::storage::sqlite::SqliteSink;
use stageflow_stages::storage::{
    EngagementFlush, FlushId, Inserted, Sink, SinkError, SinkMetrics, SinkOptions, SinkStage, published_sinks,
};
use stageflow_stages::timings::InsertTimings;
use stageflow_stages::tweet::{Entities, Tweet, User};
use tokio::sync::watch;
use tokio::time::Instant;

// ---------------------------------------------------------------- data

fn tweet(id: u64, user: u64) -> Tweet {
    Tweet {
        id_str: id.to_string(),
        text: format!("tweet {id} ☀️ #storage"),
        created_at: "Fri Mar 01 00:00:00 +0000 2024".into(),
        favorite_count: id % 5,
        retweet_count: id % 3,
        lang: Some("en".into()),
        entities: Entities::default(),
        user: User {
            id_str: format!("u{user}"),
            screen_name: format!("user{user}"),
            followers_count: user + 1,
            ..User::default()
        },
        retweeted_status: None,
    }
}

fn engagement_of(id: u64) -> f64 {
    (id % 5) as f64 * 0.25
}

fn scored(tweet: Tweet, extracted: bool) -> ScoredTweet {
    let id: u64 = tweet.id_str.parse().expect("numeric ids");
    ScoredTweet {
        tweet,
        extracted,
        sentiment: 0.1,
        engagement: engagement_of(id),
        receipt: Default::default(),
    }
}

/// `count` distinct tweets from 37 users, as the analysis half emits them:
/// every 7th is a retweet of the one before, whose original then comes again
/// (extracted) — a replay the sinks must not store or count twice.
fn stream(first_id: u64, count: u64) -> Vec<ScoredTweet> {
    let mut out = Vec::new();
    for i in 0..count {
        let id = first_id + i;
        let mut current = tweet(id, i % 37);
        if i % 7 == 6 {
            let original = tweet(id - 1, (i - 1) % 37);
            current.retweeted_status = Some(Box::new(original.clone()));
            out.push(scored(current, false));
            out.push(scored(original, true));
        } else {
            out.push(scored(current, false));
        }
    }
    out
}

/// What the stores must hold for `tweets`: per user, (distinct tweets, engagement sum).
fn expected_engagements(tweets: &[ScoredTweet]) -> BTreeMap<String, (u64, f64)> {
    let mut seen = HashSet::new();
    let mut totals: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    for scored in tweets {
        if seen.insert(scored.tweet.id_str.clone()) {
            let entry = totals.entry(scored.tweet.user.id_str.clone()).or_default();
            entry.0 += 1;
            entry.1 += scored.engagement;
        }
    }
    totals
}

fn distinct_ids(tweets: &[ScoredTweet]) -> HashSet<String> {
    tweets.iter().map(|scored| scored.tweet.id_str.clone()).collect()
}

fn assert_engagements(got: &BTreeMap<String, (u64, f64, f64)>, expected: &BTreeMap<String, (u64, f64)>) {
    assert_eq!(got.len(), expected.len(), "one users_engagements entry per user");
    for (user, (count, sum)) in expected {
        let (got_count, got_sum, got_ratio) =
            got.get(user).unwrap_or_else(|| panic!("no engagement for {user}"));
        assert_eq!(got_count, count, "tweet count of {user}");
        assert!((got_sum - sum).abs() < 1e-9, "engagement sum of {user}: {got_sum} != {sum}");
        assert!((got_ratio - sum / *count as f64).abs() < 1e-9, "ratio of {user}");
    }
}

// ---------------------------------------------------------------- pipelines

fn fast_retries() -> SinkOptions {
    SinkOptions {
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_millis(500),
        ..SinkOptions::default()
    }
}

fn one_batch_at_a_time() -> SubscribeOptions<Batch> {
    SubscribeOptions::bounds(DemandBounds::new(1, 0).expect("valid bounds"))
}

/// `source` → batcher (asking by hand, as the batcher kind subscribes it) → sink, one batch at a time.
fn storage_pipeline<P, S>(
    source: impl Fn() -> P + Send + Sync + 'static,
    batch_size: usize,
    flush_interval: Duration,
    sink: impl Fn() -> S + Send + Sync + 'static,
    options: SinkOptions,
    metrics: Arc<SinkMetrics>,
) -> Pipeline
where
    P: Producer<Out = ScoredTweet>,
    S: Sink,
{
    let mut pipeline = Pipeline::new();
    pipeline.producer("source", source);
    pipeline
        .producer_consumer("batcher", move || Batcher::new(batch_size, flush_interval))
        .subscribe_to("source", SubscribeOptions::default().manual());
    pipeline
        .consumer("sink", move || SinkStage::new("sink", sink(), options, metrics.clone()))
        .subscribe_to("batcher", one_batch_at_a_time());
    pipeline
}

fn from_vec(
    tweets: Vec<ScoredTweet>,
) -> impl Fn() -> FromIter<std::vec::IntoIter<ScoredTweet>> + Send + Sync {
    move || FromIter::new(tweets.clone().into_iter())
}

async fn run_to_end(pipeline: Pipeline, within: Duration) {
    let mut running = pipeline.start().expect("a valid pipeline");
    tokio::time::timeout(within, running.wait())
        .await
        .unwrap_or_else(|_| panic!("the pipeline did not end within {within:?}"))
        .expect("the pipeline ends cleanly");
}

/// A sink for tests: records batch sizes, takes `delay` per batch, waits while the gate is closed.
#[derive(Clone)]
struct TestSink {
    delay: Duration,
    gate: watch::Receiver<bool>,
    batches: Arc<Mutex<Vec<(usize, Instant)>>>,
    stored: Arc<AtomicU64>,
}

impl TestSink {
    fn new(delay: Duration) -> (Self, watch::Sender<bool>) {
        let (open, gate) = watch::channel(true);
        let sink = TestSink { delay, gate, batches: Arc::default(), stored: Arc::default() };
        (sink, open)
    }
}

impl Sink for TestSink {
    const DOCUMENTS: DocumentForm = DocumentForm::Keys;

    async fn insert(&mut self, batch: &SplitBatch, _: &FlushId) -> Result<Inserted, SinkError> {
        self.gate.wait_for(|open| *open).await.expect("the gate sender lives as long as the test");
        tokio::time::sleep(self.delay).await;
        self.batches.lock().unwrap().push((batch.tweets.len(), Instant::now()));
        self.stored.fetch_add(batch.tweets.len() as u64, Ordering::SeqCst);
        Ok(Inserted { new_tweets: (0..batch.tweets.len()).collect(), ..Inserted::default() })
    }

    async fn add_engagements(&mut self, _: &EngagementFlush) -> Result<(), SinkError> {
        Ok(())
    }
}

/// An endless source counting what it emitted.
fn counting_source(
    emitted: Arc<AtomicU64>,
) -> impl Fn() -> FromIter<Box<dyn Iterator<Item = ScoredTweet> + Send>> {
    move || {
        let emitted = emitted.clone();
        let tweets = (0u64..).map(move |i| {
            emitted.fetch_add(1, Ordering::SeqCst);
            scored(tweet(1_000_000 + i, i % 37), false)
        });
        FromIter::new(Box::new(tweets) as Box<dyn Iterator<Item = ScoredTweet> + Send>)
    }
}

// ---------------------------------------------------------------- batcher

#[tokio::test(start_paused = true)]
async fn batches_hold_at_most_batch_size_and_everything_arrives() {
    let (sink, _gate) = TestSink::new(Duration::ZERO);
    let batches = sink.batches.clone();
    let tweets = stream(1, 1000); // 1000 distinct + 142 replays = 1142 events
    let events = tweets.len();
    let pipeline = storage_pipeline(
        from_vec(tweets),
        200,
        Duration::from_secs(3),
        move || sink.clone(),
        SinkOptions::default(),
        SinkMetrics::new(),
    );
    run_to_end(pipeline, Duration::from_secs(60)).await;
    let sizes: Vec<usize> = batches.lock().unwrap().iter().map(|(size, _)| *size).collect();
    assert!(sizes.iter().all(|&size| size <= 200), "{sizes:?}");
    // Batches are split per batch (replays inside one batch are stored once),
    // so count events by batch: 5 full batches and the rest.
    assert_eq!(sizes.len(), events.div_ceil(200), "{sizes:?}");
}

/// A source that emits `count` tweets, then waits (without ending) until the test ends it.
struct ThenWait {
    tweets: Vec<ScoredTweet>,
    end: watch::Receiver<bool>,
}

impl Producer for ThenWait {
    type Out = ScoredTweet;

    async fn produce(&mut self, demand: usize, out: &mut Emitter<ScoredTweet>) -> Flow {
        if self.tweets.is_empty() {
            let _ = self.end.wait_for(|end| *end).await;
            return Flow::Done;
        }
        let take = demand.min(self.tweets.len());
        out.extend(self.tweets.drain(..take));
        Flow::Continue
    }
}

#[tokio::test(start_paused = true)]
async fn a_partial_batch_goes_out_once_its_oldest_tweet_waited_the_flush_interval() {
    let (sink, _gate) = TestSink::new(Duration::ZERO);
    let batches = sink.batches.clone();
    let (end, ended) = watch::channel(false);
    let tweets = stream(1, 5);
    let started = Instant::now();
    let pipeline = storage_pipeline(
        move || ThenWait { tweets: tweets.clone(), end: ended.clone() },
        200,
        Duration::from_secs(3),
        move || sink.clone(),
        SinkOptions::default(),
        SinkMetrics::new(),
    );
    let running = pipeline.start().expect("a valid pipeline");
    tokio::time::sleep(Duration::from_millis(2900)).await;
    assert!(batches.lock().unwrap().is_empty(), "nothing before the flush interval");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = batches.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, 5);
    let waited = got[0].1 - started;
    // Checked every quarter of the interval: out between 3 s and 3.75 s.
    assert!(waited >= Duration::from_secs(3) && waited <= Duration::from_millis(3760), "{waited:?}");
    end.send(true).expect("the source listens");
    running.stop().await.expect("stops cleanly");
}

// ---------------------------------------------------------------- backpressure

#[tokio::test(start_paused = true)]
async fn a_slow_sink_holds_the_source_to_what_it_stored_plus_one_batch() {
    const BATCH: u64 = 200;
    let emitted = Arc::new(AtomicU64::new(0));
    let (sink, gate) = TestSink::new(Duration::from_secs(1));
    let stored = sink.stored.clone();
    let pipeline = storage_pipeline(
        counting_source(emitted.clone()),
        BATCH as usize,
        Duration::from_secs(3),
        move || sink.clone(),
        SinkOptions::default(),
        SinkMetrics::new(),
    );
    let running = pipeline.start().expect("a valid pipeline");
    let start = Instant::now();
    // One batch per second. The batcher asks for a batch's worth only when
    // the sink has dropped the previous batch, so the source runs ahead of
    // what is stored by at most one batch: the one being written, or being
    // filled.
    let mut gaps = Vec::new();
    for second in 1..=30u64 {
        tokio::time::sleep_until(start + Duration::from_millis(second * 1000 + 500)).await;
        let (emitted, stored) = (emitted.load(Ordering::SeqCst), stored.load(Ordering::SeqCst));
        gaps.push(emitted - stored);
        assert!(
            emitted <= stored + BATCH,
            "at {second}.5 s the source emitted {emitted}, the sink stored {stored}"
        );
    }
    let stored_at_30 = stored.load(Ordering::SeqCst);
    assert!(
        (25 * BATCH..=31 * BATCH).contains(&stored_at_30),
        "about one batch per second: {stored_at_30} stored in 30 s"
    );
    let metrics = running.metrics();
    let source = metrics.iter().find(|stage| stage.stage == "source").expect("the source's metrics");
    assert_eq!(source.buffer_fill, 0, "nothing piles up in the source's buffer");
    assert!(source.demand_held <= 1, "the source holds at most one credit: {}", source.demand_held);

    // The sink stops taking batches: the source stops, flat, for a minute.
    gate.send(false).expect("the sink listens");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let plateau = emitted.load(Ordering::SeqCst);
    let stored_now = stored.load(Ordering::SeqCst);
    assert!(plateau <= stored_now + BATCH, "emitted {plateau}, stored {stored_now}");
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(emitted.load(Ordering::SeqCst), plateau, "the source emitted while the sink took nothing");
    }
    gate.send(true).expect("the sink listens");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(emitted.load(Ordering::SeqCst) > plateau, "the source goes on once the sink does");
    running.stop().await.expect("stops cleanly");
    eprintln!("gaps between emitted and stored, once a second: {gaps:?}");
}

// ---------------------------------------------------------------- SQLite

fn sqlite_engagements(path: &Path) -> BTreeMap<String, (u64, f64, f64)> {
    let connection = rusqlite::Connection::open(path).expect("the database opens");
    let mut query = connection
        .prepare(
            "SELECT id, json_extract(doc, '$.tweet_count'), json_extract(doc, '$.engagement_sum'),
                    json_extract(doc, '$.ratio') FROM users_engagements",
        )
        .unwrap();
    query
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, (row.get::<_, i64>(1)? as u64, row.get(2)?, row.get(3)?)))
        })
        .unwrap()
        .map(|row| row.expect("a row"))
        .collect()
}

fn sqlite_ids(path: &Path, table: &str) -> Vec<String> {
    let connection = rusqlite::Connection::open(path).expect("the database opens");
    let mut query = connection.prepare(&format!("SELECT id FROM {table}")).unwrap();
    query.query_map([], |row| row.get(0)).unwrap().map(|id| id.expect("an id")).collect()
}

#[tokio::test]
async fn the_sqlite_sink_stores_each_tweet_and_user_once_and_counts_engagement_once() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let path = directory.path().join("stageflow.db");
    let tweets = stream(5_000, 700);
    for run in 0..2 {
        let metrics = SinkMetrics::new();
        let sink_path = path.clone();
        let pipeline = storage_pipeline(
            from_vec(tweets.clone()),
            64,
            Duration::from_secs(3),
            move || SqliteSink::new(sink_path.clone()),
            SinkOptions::default(),
            metrics.clone(),
        );
        run_to_end(pipeline, Duration::from_secs(60)).await;
        let counters = metrics.counters();
        let expected_new = if run == 0 { 700 } else { 0 };
        assert_eq!(counters.tweets_inserted, expected_new, "run {run}: {counters:?}");
        assert!(counters.batches > 0 && metrics.total().tweets.len() == counters.batches);
    }
    let ids = sqlite_ids(&path, "tweets");
    assert_eq!(ids.len(), 700);
    assert_eq!(ids.into_iter().collect::<HashSet<_>>(), distinct_ids(&tweets));
    assert_eq!(sqlite_ids(&path, "users").len(), 37);
    assert_engagements(&sqlite_engagements(&path), &expected_engagements(&tweets));

    let connection = rusqlite::Connection::open(&path).unwrap();
    let doc: String =
        connection.query_row("SELECT doc FROM tweets WHERE id = '5006'", [], |row| row.get(0)).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc["user_id"], "u6");
    assert_eq!(doc["retweeted_status_id"], "5005");
    assert!(doc.get("user").is_none());
}

async fn mongo_ids(client: &Client, database: &str, collection: &str) -> Vec<String> {
    let collection = client.database(database).collection::<Document>(collection);
    let documents: Vec<Document> = collection.find(doc! {}).await.unwrap().try_collect().await.unwrap();
    documents.iter().map(|document| document.get_str("_id").expect("string ids").to_string()).collect()
}

async fn mongo_engagements(client: &Client, database: &str) -> BTreeMap<String, (u64, f64, f64)> {
    let collection = client.database(database).collection::<Document>("users_engagements");
    let documents: Vec<Document> = collection.find(doc! {}).await.unwrap().try_collect().await.unwrap();
    documents
        .iter()
        .map(|document| {
            let count = document.get_i64("tweet_count").expect("tweet_count") as u64;
            let sum = document.get_f64("engagement_sum").expect("engagement_sum");
            let ratio = document.get_f64("ratio").expect("ratio");
            (document.get_str("_id").unwrap().to_string(), (count, sum, ratio))
        })
        .collect()
}

#[tokio::test]
async fn the_mongo_sink_stores_each_tweet_and_user_once_and_counts_engagement_once() {
    let Some(server) = Secantus::start(false).await else { return };
    let tweets = stream(9_000, 700);
    for run in 0..2 {
        let metrics = SinkMetrics::new();
        let config = MongoConfig::new(server.uri("idempotence"));
        let pipeline = storage_pipeline(
            from_vec(tweets.clone()),
            64,
            Duration::from_secs(3),
            move || MongoSink::new(config.clone()),
            SinkOptions::default(),
            metrics.clone(),
        );
        run_to_end(pipeline, Duration::from_secs(120)).await;
        let counters = metrics.counters();
        let expected_new = if run == 0 { 700 } else { 0 };
        assert_eq!(counters.tweets_inserted, expected_new, "run {run}: {counters:?}");
        assert_eq!(counters.retries, 0, "run {run}: {counters:?}");
    }
    let client = server.client().await;
    let ids = mongo_ids(&client, "idempotence", "tweets").await;
    assert_eq!(ids.len(), 700);
    assert_eq!(ids.into_iter().collect::<HashSet<_>>(), distinct_ids(&tweets));
    assert_eq!(mongo_ids(&client, "idempotence", "users").await.len(), 37);
    assert_engagements(&mongo_engagements(&client, "idempotence").await, &expected_engagements(&tweets));

    let tweets_collection = client.database("idempotence").collection::<Document>("tweets");
    let retweet = tweets_collection.find_one(doc! { "_id": "9006" }).await.unwrap().expect("stored");
    assert_eq!(retweet.get_str("user_id").unwrap(), "u6");
    assert_eq!(retweet.get_str("retweeted_status_id").unwrap(), "9005");
    assert_eq!(retweet.get_str("text").unwrap(), "tweet 9006 ☀️ #storage");
    assert!(retweet.get("user").is_none());
    let user = client.database("idempotence").collection::<Document>("users");
    let user = user.find_one(doc! { "_id": "u6" }).await.unwrap().expect("stored");
    assert_eq!(user.get_str("screen_name").unwrap(), "user6");
}

#[tokio::test]
async fn a_mongo_flush_repeated_after_a_lost_reply_is_applied_once() {
    let Some(server) = Secantus::start(false).await else { return };
    let mut sink = MongoSink::new(MongoConfig::new(server.uri("retry")));
    let batch = split_batch(&stream(1, 20));
    let next = FlushId { writer: "w".into(), seq: 0 };
    let first = sink.insert(&batch, &next).await.expect("stored");
    assert_eq!(first.new_tweets.len(), 20);
    // The same tweets again (a redelivery): nothing new, all still to count.
    let again = sink.insert(&batch, &next).await.expect("stored");
    assert!(again.new_tweets.is_empty());
    assert_eq!(again.uncounted.len(), 20);

    let flush = |seq| EngagementFlush {
        id: FlushId { writer: "w".into(), seq },
        deltas: vec![EngagementDelta { user_id: "u1".into(), tweets: 2, engagement_sum: 0.5 }],
        tweet_ids: Vec::new(),
    };
    sink.add_engagements(&flush(0)).await.expect("applied");
    sink.add_engagements(&flush(0)).await.expect("a repeat is a no-op");
    sink.add_engagements(&flush(1)).await.expect("applied");
    let client = server.client().await;
    let engagements = mongo_engagements(&client, "retry").await;
    assert_eq!(engagements["u1"], (4, 1.0, 0.25), "two flushes applied, the repeat not");
    // Flush 0 reached user u1 only: u1's tweets are counted, the others are not.
    let replay = sink.insert(&batch, &FlushId { writer: "v".into(), seq: 0 }).await.expect("stored");
    let others: Vec<usize> = (0..batch.tweets.len()).filter(|&i| batch.tweets[i].user_id != "u1").collect();
    assert!(others.len() < batch.tweets.len());
    assert_eq!(replay.uncounted, others);
}

/// Counts how many receipts were released (acks sent).
struct Released(Arc<AtomicU64>);

impl Drop for Released {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A real sink whose first engagement flush fails (transiently), noting how
/// many acks had been released by then.
struct FirstFlushFails<S> {
    sink: S,
    released: Arc<AtomicU64>,
    released_at_flush: Arc<Mutex<Option<u64>>>,
}

impl<S: Sink> Sink for FirstFlushFails<S> {
    async fn insert(&mut self, batch: &SplitBatch, next: &FlushId) -> Result<Inserted, SinkError> {
        self.sink.insert(batch, next).await
    }

    async fn add_engagements(&mut self, flush: &EngagementFlush) -> Result<(), SinkError> {
        let first = {
            let mut seen = self.released_at_flush.lock().unwrap();
            let first = seen.is_none();
            seen.get_or_insert(self.released.load(Ordering::SeqCst));
            first
        };
        if first {
            return Err(SinkError::transient("the first flush fails"));
        }
        self.sink.add_engagements(flush).await
    }
}

/// A worker dies after storing its tweets and before writing their
/// engagement (its stage is dropped unflushed, as by SIGKILL); the tweets
/// are redelivered to another and are counted once, and a redelivery after
/// the count changes nothing. Acks wait for the count.
async fn crash_before_the_flush_then_replay<S: Sink>(
    make: impl Fn() -> S,
    engagements: impl AsyncFn() -> BTreeMap<String, (u64, f64, f64)>,
) {
    let tweets = stream(500, 60);
    let options = SinkOptions {
        user_batch_size: 10_000,
        user_flush_interval: Duration::from_secs(3600),
        retry_initial: Duration::from_millis(10),
        ..Default::default()
    };
    let mut dying = SinkStage::new("store", make(), options, SinkMetrics::new());
    dying.write_batch(&tweets).await;
    drop(dying);
    assert!(engagements().await.is_empty(), "the dead worker wrote no engagement");

    let released = Arc::new(AtomicU64::new(0));
    let released_at_flush = Arc::new(Mutex::new(None));
    let redelivered: Vec<ScoredTweet> = tweets
        .iter()
        .map(|scored| ScoredTweet { receipt: Receipt::new(Released(released.clone())), ..scored.clone() })
        .collect();
    let sink = FirstFlushFails {
        sink: make(),
        released: released.clone(),
        released_at_flush: released_at_flush.clone(),
    };
    let mut survivor = SinkStage::new("store", sink, options, SinkMetrics::new());
    survivor.write_batch(&redelivered).await;
    drop(redelivered);
    assert_eq!(*released_at_flush.lock().unwrap(), Some(0), "no ack before the engagement is written");
    assert_eq!(released.load(Ordering::SeqCst), tweets.len() as u64, "every ack once it is");
    let counts = |stored: BTreeMap<String, (u64, f64, f64)>| -> BTreeMap<String, u64> {
        stored.into_iter().map(|(user, (count, _, _))| (user, count)).collect()
    };
    let wanted: BTreeMap<String, u64> =
        expected_engagements(&tweets).into_iter().map(|(user, (count, _))| (user, count)).collect();
    assert_eq!(counts(engagements().await), wanted, "each tweet counted once");

    survivor.write_batch(&tweets).await;
    survivor.flush_engagements().await;
    assert_eq!(counts(engagements().await), wanted, "a redelivery after the count is not counted");
}

#[tokio::test]
async fn the_mongo_sink_counts_a_redelivered_tweet_once_after_a_crash_before_its_flush() {
    let Some(server) = Secantus::start(false).await else { return };
    let client = server.client().await;
    let uri = server.uri("crash");
    crash_before_the_flush_then_replay(
        || MongoSink::new(MongoConfig::new(uri.clone())),
        async || mongo_engagements(&client, "crash").await,
    )
    .await;
}

#[tokio::test]
async fn the_sqlite_sink_counts_a_redelivered_tweet_once_after_a_crash_before_its_flush() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("crash.db");
    crash_before_the_flush_then_replay(|| SqliteSink::new(&path), async || sqlite_engagements(&path)).await;
}

/// Emits its tweets at most 10 per millisecond; after `hold_after` of them
/// it waits until `go` opens, so the test can be sure the rest meets the fault.
struct Paced {
    tweets: std::vec::IntoIter<ScoredTweet>,
    emitted: usize,
    hold_after: usize,
    go: watch::Receiver<bool>,
}

impl Producer for Paced {
    type Out = ScoredTweet;

    async fn produce(&mut self, demand: usize, out: &mut Emitter<ScoredTweet>) -> Flow {
        if self.emitted >= self.hold_after {
            let _ = self.go.wait_for(|go| *go).await;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        let take = demand.min(10).min(self.hold_after.saturating_sub(self.emitted).max(1));
        let before = out.len();
        out.extend(self.tweets.by_ref().take(take));
        self.emitted += out.len() - before;
        if self.tweets.len() == 0 { Flow::Done } else { Flow::Continue }
    }
}

#[tokio::test]
async fn a_mongo_server_stopped_mid_run_loses_nothing_and_duplicates_nothing() {
    let Some(mut server) = Secantus::start(true).await else { return };
    let tweets = stream(20_000, 3000);
    let metrics = SinkMetrics::new();
    let config = MongoConfig { timeout: Duration::from_secs(1), ..MongoConfig::new(server.uri("fault")) };
    let source = tweets.clone();
    let (go, gate) = watch::channel(false);
    let pipeline = storage_pipeline(
        move || Paced { tweets: source.clone().into_iter(), emitted: 0, hold_after: 1500, go: gate.clone() },
        100,
        Duration::from_millis(500),
        move || MongoSink::new(config.clone()),
        SinkOptions { user_batch_size: 10, ..fast_retries() },
        metrics.clone(),
    );
    let mut running = pipeline.start().expect("a valid pipeline");
    let deadline = Instant::now() + Duration::from_secs(120);
    while metrics.counters().tweets_inserted < 800 {
        assert!(Instant::now() < deadline, "no progress: {:?}", metrics.counters());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.stop().await;
    let stopped_at = metrics.counters();
    go.send(true).expect("the source listens");
    while metrics.counters().retries < 3 {
        assert!(Instant::now() < deadline, "the sink never retried: {:?}", metrics.counters());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.launch().await;
    tokio::time::timeout(Duration::from_secs(180), running.wait())
        .await
        .expect("the pipeline ends after the restart")
        .expect("the pipeline ends cleanly");
    let counters = metrics.counters();
    assert!(stopped_at.tweets_inserted < 3000, "the server was stopped mid-run: {stopped_at:?}");
    assert!(counters.retries >= 3, "{counters:?}");
    assert_eq!(counters.tweets_inserted, 3000, "{counters:?}");

    let client = server.client().await;
    let ids = mongo_ids(&client, "fault", "tweets").await;
    assert_eq!(ids.len(), 3000, "every tweet once");
    assert_eq!(ids.into_iter().collect::<HashSet<_>>(), distinct_ids(&tweets));
    assert_eq!(mongo_ids(&client, "fault", "users").await.len(), 37);
    assert_engagements(&mongo_engagements(&client, "fault").await, &expected_engagements(&tweets));
    eprintln!("fault test: stopped at {stopped_at:?}, ended with {counters:?}");
}

// ---------------------------------------------------------------- kinds

/// emits `count` distinct scored tweets (tests; no replays)
#[kind("test_tweets", Nothing -> ScoredTweet)]
struct TestTweetsKind {
    /// how many
    count: u64,
}

impl Kind for TestTweetsKind {
    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let tweets = (1..=self.count).map(|id| scored(tweet(id, id % 37), false)).collect();
        let config = pipeline.producer(&stage.id, from_vec(tweets));
        configure(stage, config, &DispatcherChoices::cloneable(), None)
    }
}

/// The pipeline in `text`, and the resources its stages share (its sinks, its insert timings).
fn build_file(text: &str, data_dir: &Path) -> Result<(Pipeline, Resources), String> {
    let mut registry = stageflow_stages::registry();
    registry.add::<TestTweetsKind>();
    let file = parse_pipeline(Path::new("storage.toml"), text, &|_| None).map_err(|e| e.to_string())?;
    let context = BuildContext::for_file(&file, data_dir.to_path_buf());
    let pipeline = registry.build(&file, &context).map_err(|errors| errors.to_string())?;
    Ok((pipeline, context.resources))
}

const FILE: &str = r#"
[pipeline]
name = "storage-kinds"

[[stage]]
id = "tweets"
kind = "test_tweets"
count = 500

[[stage]]
id = "batch"
kind = "batcher"
batch_size = 50
flush_interval = "1s"
subscribe_to = ["tweets"]

[[stage]]
id = "store"
kind = "sqlite_sink"
file = "kinds.db"
user_flush_ms = 200
subscribe_to = ["batch"]

[[stage]]
id = "count"
kind = "null_sink"
subscribe_to = ["batch"]
"#;

#[tokio::test]
async fn the_kinds_build_from_a_pipeline_file_and_publish_their_metrics() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    // Two sinks on one demand-dispatched batcher share its batches.
    let (pipeline, resources) = build_file(FILE, directory.path()).expect("a valid file");
    run_to_end(pipeline, Duration::from_secs(60)).await;
    let sinks = published_sinks(&resources);
    let total: u64 = sinks.iter().map(|sink| sink.metrics.counters().tweets_inserted).sum();
    assert_eq!(sinks.len(), 2, "{sinks:?}");
    assert_eq!(total, 500, "each batch went to one of the two sinks");
    let stored = sqlite_ids(&directory.path().join("kinds.db"), "tweets").len() as u64;
    let sqlite = sinks.iter().find(|sink| sink.kind == "sqlite_sink").expect("the sqlite sink");
    assert_eq!(stored, sqlite.metrics.counters().tweets_inserted);
    // The statistics stage reads the same inserts from the pipeline's resources.
    let timings = resources.get::<InsertTimings>().expect("the sinks record into the pipeline's timings");
    assert_eq!(timings.tweets_ingested(), 500);
    assert_eq!(
        timings.users_ingested(),
        sinks.iter().map(|sink| sink.metrics.counters().users_inserted).sum::<u64>()
    );
}

/// Two pipelines of one name in one process (the telnet server, tests) share
/// nothing: each build context keeps its own sinks and insert timings.
#[tokio::test]
async fn two_pipelines_with_one_name_keep_their_own_counters() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let file = |count: u64| {
        format!(
            "[pipeline]\nname = \"twin\"\n\n\
             [[stage]]\nid = \"tweets\"\nkind = \"test_tweets\"\ncount = {count}\n\n\
             [[stage]]\nid = \"batch\"\nkind = \"batcher\"\nbatch_size = 10\nsubscribe_to = [\"tweets\"]\n\n\
             [[stage]]\nid = \"store\"\nkind = \"null_sink\"\nsubscribe_to = [\"batch\"]\n"
        )
    };
    let (small, small_resources) = build_file(&file(30), directory.path()).expect("a valid file");
    let (large, large_resources) = build_file(&file(70), directory.path()).expect("a valid file");
    let within = Duration::from_secs(60);
    tokio::join!(run_to_end(small, within), run_to_end(large, within));
    for (resources, count) in [(&small_resources, 30), (&large_resources, 70)] {
        let sinks = published_sinks(resources);
        assert_eq!(sinks.len(), 1, "one sink per pipeline: {sinks:?}");
        assert_eq!(sinks[0].metrics.counters().tweets_inserted, count, "{sinks:?}");
        let timings = resources.get::<InsertTimings>().expect("the sink records into its pipeline's timings");
        assert_eq!(timings.tweets_ingested(), count);
    }
}

#[test]
fn sink_kinds_report_bad_settings_with_the_stage() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let bad_uri = FILE.replace(
        "kind = \"sqlite_sink\"\nfile = \"kinds.db\"",
        "kind = \"mongo_sink\"\nuri = \"mongodb://127.0.0.1:notaport/x\"",
    );
    let error = build_file(&bad_uri, directory.path()).map(|_| ()).expect_err("a malformed URI");
    assert!(
        error.contains("stage 'store': invalid MongoDB URI \"mongodb://127.0.0.1:notaport/x\""),
        "{error}"
    );

    let bad_interval = FILE.replace("flush_interval = \"1s\"", "flush_interval = \"soon\"");
    let error = build_file(&bad_interval, directory.path()).map(|_| ()).expect_err("a bad duration");
    assert!(error.contains("stage 'batch': `flush_interval` = \"soon\""), "{error}");

    let two_upstreams = FILE.replace(
        "flush_interval = \"1s\"\nsubscribe_to = [\"tweets\"]",
        "flush_interval = \"1s\"\nsubscribe_to = [\"tweets\", \"tweets\"]",
    );
    let error = build_file(&two_upstreams, directory.path()).map(|_| ()).expect_err("two upstreams");
    assert!(error.contains("stage 'batch': a batcher subscribes to exactly one stage"), "{error}");

    let blocked = directory.path().join("a-file");
    std::fs::write(&blocked, "not a directory").unwrap();
    let error = build_file(FILE, &blocked).map(|_| ()).expect_err("an unusable data directory");
    assert!(error.contains("stage 'store'") && error.contains("a-file"), "{error}");

    let wrong_input = FILE.replace(
        "subscribe_to = [\"batch\"]\n\n[[stage]]\nid = \"count\"",
        "subscribe_to = [\"tweets\"]\n\n[[stage]]\nid = \"count\"",
    );
    let error = build_file(&wrong_input, directory.path()).map(|_| ()).expect_err("a sink fed single tweets");
    assert!(error.contains("takes batch of scored tweets events but 'tweets'"), "{error}");
}
