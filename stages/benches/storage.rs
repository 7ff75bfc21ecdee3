//! The MongoDB sink against the raw driver: `cargo bench --bench storage`.
//!
//! Starts its own SecantusDB (`$STAGEFLOW_SECANTUSD` or
//! `.venv/bin/secantusd-py`, data on disk in a temporary directory, a free
//! 127.0.0.1 port) and writes the same tweets into it two ways, each into a
//! fresh database:
//!
//! - `storage_mongo_sink` / `tweets_per_s`: batches of 200 scored tweets
//!   (the emulator's tweets, seed 42; a quarter are retweets and the 10 000
//!   authors repeat, so later batches meet users already stored) from a
//!   producer into the `mongo_sink` stage (`SinkStage<MongoSink>`,
//!   subscribed one batch at a time as the kind subscribes it, default
//!   options), which splits each batch, inserts tweets and users with
//!   unordered `insert_many`, and upserts the authors' engagement totals.
//! - `storage_driver` / `tweets_per_s`: the same batches split beforehand
//!   (`split_batch`) and written with the `mongodb` crate alone: each
//!   batch's tweet documents, then its user documents, turned into BSON
//!   (`keyed`, as the sink does) and inserted with one unordered
//!   `insert_many` each, duplicate users ignored, with the sink's write
//!   concern (`j: true`). No engagement upserts: the baseline is the raw
//!   insert of the split documents.
//! - `storage_driver_same_writes` / `tweets_per_s`: the driver doing every
//!   write the sink does: the inserts above, then per batch one `update`
//!   command upserting the authors' engagement increments, built with the
//!   sink's own `engagement_upsert` (the sink flushes them after every
//!   batch too: a batch brings more than its `user_batch_size` of 100 users).
//! - `storage_mongo_sink` / `ratio_vs_driver` and `ratio_vs_driver_same_writes`:
//!   the sink's share of each baseline's rate, per round (target ≥ 0.9 of the first).
//!
//! `STAGEFLOW_BENCH_STORAGE_TWEETS` tweets per run (default 10 000),
//! `STAGEFLOW_BENCH_STORAGE_ROUNDS` interleaved rounds (default 5; each
//! starts with a different side); every
//! figure is the median over the rounds with `_min` and `_max`. Figures are
//! printed as JSON lines and written to `target/bench-report/storage/report.json`.

#[allow(dead_code)]
#[path = "load/report.rs"]
mod report;
#[path = "load/scored.rs"]
mod scored;
#[allow(dead_code)]
#[path = "../tests/support/secantus.rs"]
mod secantus;

use std::time::{Duration, Instant};

use mongodb::bson::{Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::WriteConcern;
use stageflow::ops::FromIter;
use stageflow::{DemandBounds, Pipeline, SubscribeOptions};
use stageflow_stages::storage::batcher::Batch;
use stageflow_stages::storage::documents::{EngagementBatch, SplitBatch, split_batch};
use stageflow_stages::storage::mongo::{MongoConfig, MongoSink, engagement_upsert, keyed};
use stageflow_stages::storage::{FlushId, SinkMetrics, SinkOptions, SinkStage};

use report::Report;
use scored::scored_batches;
use secantus::Secantus;

/// Tweets per run.
const TWEETS_VAR: &str = "STAGEFLOW_BENCH_STORAGE_TWEETS";
/// Rounds of both sides.
const ROUNDS_VAR: &str = "STAGEFLOW_BENCH_STORAGE_ROUNDS";
/// Tweets per batch, as tweets.toml's batcher.
const BATCH_SIZE: usize = 200;
/// The duplicate-key error code.
const DUPLICATE_KEY: i32 = 11000;
/// A run still going after this long fails the bench.
const RUN_CAP: Duration = Duration::from_secs(600);

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|text| text.trim().parse().ok()).unwrap_or(default)
}

/// Producer → `SinkStage<MongoSink>` one batch at a time, until every batch is stored.
async fn sink_run(uri: String, batches: Vec<Batch>) -> Result<(), String> {
    let metrics = SinkMetrics::new();
    let counters = metrics.clone();
    let expected = batches.iter().map(|batch| batch.tweets().len() as u64).sum::<u64>();
    let mut pipeline = Pipeline::new();
    pipeline.producer("batches", move || FromIter::new(batches.clone().into_iter()));
    pipeline
        .consumer("store", move || {
            SinkStage::new(
                "store",
                MongoSink::new(MongoConfig::new(uri.clone())),
                SinkOptions::default(),
                metrics.clone(),
            )
        })
        .subscribe_to("batches", SubscribeOptions::bounds(DemandBounds::new(1, 0).expect("valid bounds")));
    let mut running = pipeline.start().map_err(|error| error.to_string())?;
    running.wait().await.map_err(|error| error.to_string())?;
    let stored = counters.counters();
    if stored.tweets_inserted != expected {
        return Err(format!("the sink stored {} of {expected} tweets: {stored:?}", stored.tweets_inserted));
    }
    Ok(())
}

/// The same documents inserted with the driver alone.
async fn driver_run(uri: &str, split: &[SplitBatch]) -> Result<(), String> {
    let client = mongodb::Client::with_uri_str(uri).await.map_err(|error| error.to_string())?;
    let database = client.default_database().ok_or("the URI names no database")?;
    let concern = WriteConcern::builder().journal(true).build();
    let tweets = database.collection::<Document>("tweets");
    let users = database.collection::<Document>("users");
    for batch in split {
        let documents: Vec<Document> =
            batch.tweets.iter().map(|tweet| keyed(&tweet.id, &tweet.doc)).collect();
        ignore_duplicates(tweets.insert_many(documents).ordered(false).write_concern(concern.clone()).await)?;
        let documents: Vec<Document> = batch.users.iter().map(|user| keyed(&user.id, &user.doc)).collect();
        ignore_duplicates(users.insert_many(documents).ordered(false).write_concern(concern.clone()).await)?;
    }
    Ok(())
}

/// The inserts of [`driver_run`], and after each batch the sink's engagement upserts for it.
async fn driver_same_writes_run(uri: &str, split: &[SplitBatch]) -> Result<(), String> {
    let client = mongodb::Client::with_uri_str(uri).await.map_err(|error| error.to_string())?;
    let database = client.default_database().ok_or("the URI names no database")?;
    let concern = WriteConcern::builder().journal(true).build();
    let tweets = database.collection::<Document>("tweets");
    let users = database.collection::<Document>("users");
    for (seq, batch) in split.iter().enumerate() {
        let documents: Vec<Document> =
            batch.tweets.iter().map(|tweet| keyed(&tweet.id, &tweet.doc)).collect();
        ignore_duplicates(tweets.insert_many(documents).ordered(false).write_concern(concern.clone()).await)?;
        let documents: Vec<Document> = batch.users.iter().map(|user| keyed(&user.id, &user.doc)).collect();
        ignore_duplicates(users.insert_many(documents).ordered(false).write_concern(concern.clone()).await)?;
        let mut engagements = EngagementBatch::new(usize::MAX, Duration::MAX);
        for tweet in &batch.tweets {
            engagements.add(&tweet.id, &tweet.user_id, tweet.engagement);
        }
        let flush = FlushId { writer: "driver".to_string(), seq: seq as u64 };
        let updates: Vec<Document> =
            engagements.deltas().iter().map(|delta| engagement_upsert(delta, &flush)).collect();
        let command = doc! {
            "update": "users_engagements", "updates": updates, "ordered": false, "writeConcern": { "j": true },
        };
        let reply = database.run_command(command).await.map_err(|error| error.to_string())?;
        if reply.get_array("writeErrors").is_ok_and(|errors| !errors.is_empty()) {
            return Err(format!("the engagement upserts failed: {reply}"));
        }
    }
    Ok(())
}

/// Ok for a write whose only errors are duplicate keys.
fn ignore_duplicates<T>(outcome: mongodb::error::Result<T>) -> Result<(), String> {
    let Err(error) = outcome else { return Ok(()) };
    if let ErrorKind::InsertMany(failure) = error.kind.as_ref()
        && failure.write_concern_error.is_none()
        && failure.write_errors.as_ref().is_some_and(|errors| errors.iter().all(|e| e.code == DUPLICATE_KEY))
    {
        return Ok(());
    }
    if let ErrorKind::Write(WriteFailure::WriteError(write)) = error.kind.as_ref()
        && write.code == DUPLICATE_KEY
    {
        return Ok(());
    }
    Err(error.to_string())
}

async fn timed<F: std::future::Future<Output = Result<(), String>>>(run: F) -> f64 {
    let started = Instant::now();
    match tokio::time::timeout(RUN_CAP, run).await {
        Ok(Ok(())) => started.elapsed().as_secs_f64(),
        Ok(Err(error)) => panic!("a run failed: {error}"),
        Err(_) => panic!("a run took over {RUN_CAP:?}"),
    }
}

fn main() {
    let count = env_number(TWEETS_VAR, 10_000).max(1);
    let rounds = env_number(ROUNDS_VAR, 5).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    let batches = scored_batches(&[1], count as u64, BATCH_SIZE);
    let split: Vec<SplitBatch> = batches.iter().map(|batch| split_batch(batch.tweets())).collect();
    let users: usize = split.iter().map(|batch| batch.users.len()).sum();
    let mut report = Report::default();
    runtime.block_on(async {
        let Some(server) = Secantus::start(true).await else {
            report.note("SecantusDB is not installed: nothing measured");
            return;
        };
        let (mut sink_rates, mut driver_rates, mut same_rates) = (Vec::new(), Vec::new(), Vec::new());
        let (mut ratios, mut same_ratios) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            // Each round starts with a different side, so none always meets the fullest server.
            let (mut driver, mut same, mut sink) = (0.0, 0.0, 0.0);
            for turn in 0..3 {
                match (round + turn) % 3 {
                    0 => driver = count as f64 / timed(driver_run(&server.uri(&format!("driver{round}")), &split)).await,
                    1 => same = count as f64
                        / timed(driver_same_writes_run(&server.uri(&format!("same{round}")), &split)).await,
                    _ => sink = count as f64
                        / timed(sink_run(server.uri(&format!("sink{round}")), batches.clone())).await,
                }
            }
            println!(
                "round {round}: driver inserts {driver:.0} tweets/s, driver same writes {same:.0}, mongo_sink {sink:.0}"
            );
            driver_rates.push(driver);
            same_rates.push(same);
            sink_rates.push(sink);
            ratios.push(sink / driver);
            same_ratios.push(sink / same);
        }
        report.spread("storage_driver", "tweets_per_s", &driver_rates);
        report.spread("storage_driver_same_writes", "tweets_per_s", &same_rates);
        report.spread("storage_mongo_sink", "tweets_per_s", &sink_rates);
        report.spread("storage_mongo_sink", "ratio_vs_driver", &ratios);
        report.spread("storage_mongo_sink", "ratio_vs_driver_same_writes", &same_ratios);
        report.figure("storage", "tweets_per_run", count as f64);
        report.figure("storage", "user_documents_per_run", users as f64);
    });
    let dir = report::report_dir().join("storage");
    let run = serde_json::json!({"tweets": count, "rounds": rounds, "batch_size": BATCH_SIZE});
    match std::fs::create_dir_all(&dir).and_then(|()| report.write(&dir, run)) {
        Ok(path) => println!("report: {}", path.display()),
        Err(error) => panic!("cannot write the report into {}: {error}", dir.display()),
    }
}
