//! Storage, the end of the tweet pipeline: the batcher and the sinks.
//!
//! ```text
//! aggregator --ScoredTweet--> batcher --Batch--> mongo_sink | sqlite_sink | null_sink
//! ```
//!
//! The [`Batcher`](batcher::Batcher) is a producer-consumer that groups
//! scored tweets into batches of at most `batch_size`, or whatever it holds
//! once the oldest has waited `flush_interval`. It subscribes upstream with
//! manual demand and asks for more only when the consumer of its previous
//! batch has dropped it — a sink drops a batch once it is stored — so a slow
//! database slows the whole chain back to the source instead of growing
//! memory: at most one batch of tweets is between the aggregator and the
//! database (see [`batcher`]).
//!
//! Every sink implements [`Sink`]; [`SinkStage`] runs one as a stage:
//! splits each batch into tweet and user documents
//! ([`documents::split_batch`]), inserts them, retries transient failures
//! with backoff (holding its credit, so the pipeline waits and nothing is
//! dropped), counts the engagement of the tweets that were new per user and
//! upserts it in batches ([`documents::EngagementBatch`]), and records
//! insert times in [`SinkMetrics`].
//!
//! ## Engagement counted once
//!
//! Engagement is counted exactly once per stored tweet, even across crashes
//! of a worker whose input is redelivered (a JetStream cut): a tweet is
//! stored marked with the flush meant to count it, the flush is applied once
//! per [`FlushId`], and the [`Receipt`]s of the counted tweets (their acks)
//! are held until the flush is written. A redelivered tweet that is already
//! stored is counted again only if its flush never reached the store (see
//! [`Sink`]).
//!
//! ## Transient and permanent failures
//!
//! Each sink sorts its errors ([`SinkError::transient`]): a refused or
//! reset connection, a timeout, a server that is not primary or is busy
//! may pass, and the batch is retried with backoff, held. A document the
//! store will never take (over its size limit, failing a validator or a
//! constraint, malformed) is permanent: the sink reports such documents in
//! [`Inserted::rejected`] when the store says which ones they were (MongoDB's
//! per-document write errors), and when the whole batch was refused
//! (SQLite's transaction, the driver's size check) the stage stores its
//! documents one at a time to find them. Every document that is fine is
//! stored, each rejected one is dead-lettered with the store's error — its
//! scored tweet as the event, so `stageflow replay` can store it once the
//! cause is fixed — and the pipeline goes on.

pub mod batcher;
pub mod documents;
pub mod metrics;
pub mod mongo;
pub mod null;
pub mod sqlite;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use stageflow::{Consumer, Events};

use crate::receipt::Receipt;
use crate::scored::ScoredTweet;
use batcher::Batch;
use documents::{DocumentForm, EngagementBatch, EngagementDelta, SplitBatch};
pub use metrics::{InsertTimes, PublishedSink, PublishedSinks, SinkCounters, SinkMetrics, published_sinks};
use stageflow::config::{BuildContext, DispatcherChoices, StageDecl, configure, settings};
use stageflow::{DemandBounds, Pipeline};

use crate::backoff::backoff;
use crate::dead_letters::{DeadLetterOut, Record};
use crate::settings::duration_setting;
use crate::timings::InsertTimings;
use stageflow::config::DeadLetterRecord;

/// Why a sink could not write, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkError {
    /// True for failures that may pass (connection refused, timeout, server busy): retried.
    pub transient: bool,
    /// What went wrong.
    pub message: String,
}

impl SinkError {
    /// A failure worth retrying.
    pub fn transient(message: impl Into<String>) -> Self {
        SinkError { transient: true, message: message.into() }
    }

    /// A failure retrying cannot fix (bad configuration, rejected document).
    pub fn permanent(message: impl Into<String>) -> Self {
        SinkError { transient: false, message: message.into() }
    }
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.transient { "transient" } else { "permanent" };
        write!(f, "{kind} failure: {}", self.message)
    }
}

impl std::error::Error for SinkError {}

/// A token unique to this call in this process and across processes (a sink stage's writer id, a message id).
pub fn unique_token() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static STARTED: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    let started = STARTED.get_or_init(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_nanos())
    });
    format!("{:x}-{:x}-{:x}", started, std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Which collection refused a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collection {
    /// `tweets`: the index is into [`SplitBatch::tweets`].
    Tweets,
    /// `users`: the index is into [`SplitBatch::users`].
    Users,
}

/// A document the store refused for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Its collection.
    pub collection: Collection,
    /// Its index in the batch's documents of that collection.
    pub index: usize,
    /// The store's error.
    pub error: String,
}

/// What a successful insert did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inserted {
    /// Documents the store refused for good (the others were stored).
    pub rejected: Vec<Rejected>,
    /// Indices (into [`SplitBatch::tweets`]) of the tweets that were new; the others were already stored.
    pub new_tweets: Vec<usize>,
    /// Indices of tweets already stored whose engagement never reached the
    /// store (stored by a try or a worker that failed before its flush).
    pub uncounted: Vec<usize>,
    /// Users that were new.
    pub new_users: usize,
    /// How long the tweets bulk insert took.
    pub tweets_time: Duration,
    /// How long the users bulk insert took.
    pub users_time: Duration,
}

/// Names one engagement flush: its writer and its number (the same on every retry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushId {
    /// Unique per sink stage instance (a restarted stage is a new writer).
    pub writer: String,
    /// 0, 1, 2, … per writer: flushes of one writer are written in this order.
    pub seq: u64,
}

/// One engagement flush: the increments and the tweets they count.
#[derive(Debug, Clone, PartialEq)]
pub struct EngagementFlush {
    /// Which flush this is.
    pub id: FlushId,
    /// Per-user increments.
    pub deltas: Vec<EngagementDelta>,
    /// The tweets counted by these increments.
    pub tweet_ids: Vec<String>,
}

/// A place scored tweets are stored: idempotent inserts and engagement upserts.
///
/// Both calls may be repeated with the same arguments after a transient
/// error, whether or not the failed call had taken effect; implementations
/// make that safe. A tweet is stored once, and its engagement counted once
/// even when a worker dies between the two writes and the tweet is
/// redelivered: `insert` learns which flush will count the new tweets
/// (`next`) and reports the already stored tweets whose count never reached
/// the store ([`Inserted::uncounted`]); `add_engagements` applies a flush
/// once per [`FlushId`].
pub trait Sink: Send + 'static {
    /// The form [`Sink::insert`] takes the documents in: values, JSON text, or none (keys and scores are enough).
    const DOCUMENTS: DocumentForm = DocumentForm::Values;
    /// Whether the sink stores engagement (false: nothing is counted or flushed).
    const STORES_ENGAGEMENT: bool = true;

    /// Stores the tweets and users of a batch, each key once; says which
    /// tweets were new, which were stored but not counted (flush `next` will
    /// count both) and which documents the store refused for good (when it
    /// says so per document; a permanent error for the whole batch makes the
    /// stage try its documents one at a time).
    fn insert(
        &mut self,
        batch: &SplitBatch,
        next: &FlushId,
    ) -> impl Future<Output = Result<Inserted, SinkError>> + Send;

    /// Adds per-user engagement increments to `users_engagements` (count, sum and their ratio).
    fn add_engagements(
        &mut self,
        flush: &EngagementFlush,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// How a [`SinkStage`] batches engagement upserts and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkOptions {
    /// Engagement upserts are written once this many users have increments (default 100).
    pub user_batch_size: usize,
    /// … or once the oldest increment waited this long (default 3 s).
    pub user_flush_interval: Duration,
    /// First wait before a retry (default 100 ms); doubles each time.
    pub retry_initial: Duration,
    /// Longest wait between retries (default 5 s).
    pub retry_max: Duration,
}

impl Default for SinkOptions {
    fn default() -> Self {
        SinkOptions {
            user_batch_size: 100,
            user_flush_interval: Duration::from_secs(3),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
        }
    }
}

/// A sink run as a stage taking batches of scored tweets.
pub struct SinkStage<S> {
    stage: String,
    sink: S,
    options: SinkOptions,
    engagements: EngagementBatch,
    /// The flush that will count what is inserted next.
    next_flush: FlushId,
    /// Receipts of the tweets counted in `engagements`: acked once the flush is written.
    held: Vec<Receipt>,
    metrics: Arc<SinkMetrics>,
    dead_letters: Option<DeadLetterOut>,
}

impl<S: Sink> SinkStage<S> {
    /// A stage `stage` writing to `sink`, recording into `metrics`.
    pub fn new(stage: &str, sink: S, options: SinkOptions, metrics: Arc<SinkMetrics>) -> Self {
        SinkStage {
            stage: stage.to_string(),
            engagements: EngagementBatch::new(options.user_batch_size, options.user_flush_interval),
            next_flush: FlushId { writer: unique_token(), seq: 0 },
            held: Vec::new(),
            sink,
            options,
            metrics,
            dead_letters: None,
        }
    }

    /// Sends documents the store rejects to `out` (without, they are logged and counted only).
    pub fn with_dead_letters(mut self, out: DeadLetterOut) -> Self {
        self.dead_letters = Some(out);
        self
    }

    /// Writes one batch, retrying transient failures until it is stored;
    /// documents the store rejects for good are dead-lettered.
    pub async fn write_batch(&mut self, batch: &[ScoredTweet]) {
        if batch.is_empty() {
            return;
        }
        let split = documents::split(batch, S::DOCUMENTS);
        let mut attempt = 0;
        let inserted = match self.insert_retrying(&split, &mut attempt).await {
            Ok(inserted) => inserted,
            Err(error) => self.insert_one_by_one(&split, &mut attempt, &error).await,
        };
        self.metrics.record_batch(&inserted, split.tweets.len(), split.users.len());
        if !inserted.rejected.is_empty() {
            self.dead_letter(batch, &split, &inserted.rejected).await;
        }
        if !S::STORES_ENGAGEMENT {
            return;
        }
        for &index in inserted.new_tweets.iter().chain(&inserted.uncounted) {
            if let Some(tweet) = split.tweets.get(index) {
                self.engagements.add(&tweet.id, &tweet.user_id, tweet.engagement);
            }
        }
        let counted = batch
            .iter()
            .filter(|scored| scored.receipt.is_some() && self.engagements.holds(&scored.tweet.id_str));
        self.held.extend(counted.map(|scored| scored.receipt.clone()));
        // Held receipts are acks a redelivery waits on: written now, not
        // when `user_batch_size` users have gathered.
        if !self.held.is_empty() || self.engagements.is_due(tokio::time::Instant::now()) {
            self.flush_engagements().await;
        }
    }

    /// Inserts `split`, retrying transient failures; a permanent one is returned.
    async fn insert_retrying(
        &mut self,
        split: &SplitBatch,
        attempt: &mut u32,
    ) -> Result<Inserted, SinkError> {
        loop {
            match self.sink.insert(split, &self.next_flush).await {
                Ok(inserted) => return Ok(inserted),
                Err(error) if error.transient => self.wait_to_retry(&error, attempt, "batch insert").await,
                Err(error) => return Err(error),
            }
        }
    }

    /// After the store refused a whole batch for good: stores its documents
    /// one at a time, collecting those it refuses.
    async fn insert_one_by_one(
        &mut self,
        split: &SplitBatch,
        attempt: &mut u32,
        error: &SinkError,
    ) -> Inserted {
        tracing::warn!(
            stage = %self.stage,
            "the store refused a batch ({error}); storing its {} tweets and {} users one at a time to find the documents it rejects",
            split.tweets.len(),
            split.users.len()
        );
        let mut total = Inserted::default();
        for (index, tweet) in split.tweets.iter().enumerate() {
            let one = SplitBatch { tweets: vec![tweet.clone()], users: Vec::new() };
            match self.insert_retrying(&one, attempt).await {
                Ok(inserted) => {
                    if !inserted.new_tweets.is_empty() {
                        total.new_tweets.push(index);
                    }
                    if !inserted.uncounted.is_empty() {
                        total.uncounted.push(index);
                    }
                    total.tweets_time += inserted.tweets_time;
                    total.rejected.extend(inserted.rejected.into_iter().map(|r| Rejected { index, ..r }));
                }
                Err(error) => total.rejected.push(Rejected {
                    collection: Collection::Tweets,
                    index,
                    error: error.message,
                }),
            }
        }
        for (index, user) in split.users.iter().enumerate() {
            let one = SplitBatch { tweets: Vec::new(), users: vec![user.clone()] };
            match self.insert_retrying(&one, attempt).await {
                Ok(inserted) => {
                    total.new_users += inserted.new_users;
                    total.users_time += inserted.users_time;
                    total.rejected.extend(inserted.rejected.into_iter().map(|r| Rejected { index, ..r }));
                }
                Err(error) => total.rejected.push(Rejected {
                    collection: Collection::Users,
                    index,
                    error: error.message,
                }),
            }
        }
        total
    }

    /// Dead-letters the rejected documents: for each, the scored tweet it came from, with the store's error.
    async fn dead_letter(&mut self, batch: &[ScoredTweet], split: &SplitBatch, rejected: &[Rejected]) {
        self.metrics.record_rejected(rejected.len());
        let mut records = Vec::with_capacity(rejected.len());
        for rejection in rejected {
            let (collection, key, source) = match rejection.collection {
                Collection::Tweets => {
                    let id = split.tweets.get(rejection.index).map_or("", |doc| doc.id.as_str());
                    ("tweets", id, batch.iter().find(|scored| scored.tweet.id_str == id))
                }
                Collection::Users => {
                    let id = split.users.get(rejection.index).map_or("", |doc| doc.id.as_str());
                    ("users", id, batch.iter().find(|scored| scored.tweet.user.id_str == id))
                }
            };
            let error = format!("{collection} rejected document {key:?}: {}", rejection.error);
            tracing::error!(stage = %self.stage, "{error}");
            records.push(DeadLetterRecord {
                stage: self.stage.clone(),
                error,
                attempts: 1,
                event: source.and_then(stageflow::config::Event::to_json),
            });
        }
        match &self.dead_letters {
            Some(out) => out.write(records.into_iter().map(Record::now).collect()).await,
            None => {
                tracing::error!(stage = %self.stage, "{} rejected documents: this sink has no dead-letter target", records.len())
            }
        }
    }

    /// Writes the engagement increments held back, retrying transient failures.
    pub async fn flush_engagements(&mut self) {
        if self.engagements.is_empty() {
            return;
        }
        let flush = EngagementFlush {
            id: self.next_flush.clone(),
            deltas: self.engagements.deltas(),
            tweet_ids: self.engagements.tweet_ids(),
        };
        let mut attempt = 0;
        loop {
            match self.sink.add_engagements(&flush).await {
                Ok(()) => break,
                Err(error) => self.failed(&error, &mut attempt, "engagement upsert").await,
            }
        }
        self.next_flush.seq += 1;
        self.metrics.record_engagements(flush.deltas.len());
        self.engagements.clear();
        // The counted tweets are finished with: their acks may go.
        self.held.clear();
    }

    /// Waits before the next try of a transient failure; a permanent one fails the stage.
    async fn failed(&mut self, error: &SinkError, attempt: &mut u32, what: &str) {
        if !error.transient {
            // The engine counts the batch as lost, restarts the stage and,
            // past its restart limit, fails the pipeline with this message.
            panic!("sink '{}': {what} failed: {error}", self.stage);
        }
        self.wait_to_retry(error, attempt, what).await;
    }

    /// Waits before the next try of a transient failure.
    async fn wait_to_retry(&mut self, error: &SinkError, attempt: &mut u32, what: &str) {
        *attempt += 1;
        self.metrics.record_retry();
        let wait = backoff(*attempt, self.options.retry_initial, self.options.retry_max);
        tracing::warn!(stage = %self.stage, attempt = *attempt, wait = ?wait, "{what}: {error}; retrying");
        tokio::time::sleep(wait).await;
    }

    /// The stage's metrics.
    pub fn metrics(&self) -> Arc<SinkMetrics> {
        self.metrics.clone()
    }
}

impl<S: Sink> Consumer for SinkStage<S> {
    type In = Batch;

    /// Stores each batch, then drops it: that is what lets the batcher ask for more.
    async fn handle_events(&mut self, events: &mut Events<Batch>) {
        for batch in events {
            self.write_batch(batch.tweets()).await;
        }
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(tick_for(self.options.user_flush_interval))
    }

    async fn handle_tick(&mut self) {
        if self.engagements.is_due(tokio::time::Instant::now()) {
            self.flush_engagements().await;
        }
    }

    async fn flush(&mut self) {
        self.flush_engagements().await;
    }
}

/// How often to check an age limit: a quarter of it, between 1 ms and 1 s.
pub fn tick_for(max_age: Duration) -> Duration {
    (max_age / 4).clamp(Duration::from_millis(1), Duration::from_secs(1))
}

/// Settings every sink kind has.
#[settings]
pub struct CommonSinkSettings {
    /// engagement upserts are written at this many users (default 100)
    user_batch_size: Option<usize>,
    /// ... or when the oldest waited this long, e.g. "3s" (default 3s)
    user_flush_interval: Option<String>,
    /// the same in milliseconds
    user_flush_ms: Option<u64>,
}

impl CommonSinkSettings {
    /// The sink options these settings ask for.
    pub fn options(&self) -> Result<SinkOptions, String> {
        let defaults = SinkOptions::default();
        let user_batch_size = self.user_batch_size.unwrap_or(defaults.user_batch_size);
        if user_batch_size == 0 {
            return Err("`user_batch_size` must be at least 1".into());
        }
        let user_flush_interval = duration_setting(
            self.user_flush_interval.as_deref(),
            self.user_flush_ms,
            ("user_flush_interval", "user_flush_ms"),
            defaults.user_flush_interval,
        )?;
        Ok(SinkOptions { user_batch_size, user_flush_interval, ..defaults })
    }
}

/// The stage with subscriptions at default bounds set to one batch at a time.
fn one_batch_at_a_time(stage: &StageDecl) -> StageDecl {
    let mut stage = stage.clone();
    for subscription in &mut stage.subscribe_to {
        if subscription.bounds == DemandBounds::default() {
            subscription.bounds = DemandBounds::new(1, 0).expect("1 / 0 are valid bounds");
        }
    }
    stage
}

/// Adds a sink stage of kind `kind` running `make()` and publishes its metrics;
/// documents the store rejects go to the stage's `dead_letter` target
/// (default `dead-letters/<stage>.jsonl` in the data directory).
/// A subscription that leaves the credit bounds at their defaults gets
/// `max_demand = 1, min_demand = 0`: one batch at a time.
pub fn build_sink<S: Sink>(
    stage: &StageDecl,
    pipeline: &mut Pipeline,
    context: &BuildContext,
    kind: &'static str,
    options: SinkOptions,
    make: impl Fn() -> S + Send + Sync + 'static,
) -> Result<(), String> {
    let metrics = SinkMetrics::new();
    metrics.forward_to(context.resources.get_or_default::<InsertTimings>());
    context.resources.get_or_default::<PublishedSinks>().publish(&stage.id, kind, metrics.clone());
    let target = stage.dead_letter.as_ref().map(|(target, _)| target.as_str());
    let dead_letters = DeadLetterOut::open(&stage.id, target, context)?;
    let id = stage.id.clone();
    let config = pipeline.consumer(&stage.id, move || {
        SinkStage::new(&id, make(), options, metrics.clone()).with_dead_letters(dead_letters.clone())
    });
    configure(&one_batch_at_a_time(stage), config, &DispatcherChoices::demand_only(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_tokens_are_unique() {
        assert_ne!(unique_token(), unique_token());
    }

    #[test]
    fn ticks_are_a_quarter_of_the_age_within_bounds() {
        assert_eq!(tick_for(Duration::from_secs(3)), Duration::from_millis(750));
        assert_eq!(tick_for(Duration::from_secs(60)), Duration::from_secs(1));
        assert_eq!(tick_for(Duration::ZERO), Duration::from_millis(1));
    }
}
