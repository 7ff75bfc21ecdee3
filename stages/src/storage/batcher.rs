//! The batcher: scored tweets in, [`Batch`]es of them out.
//!
//! A batch goes out when it holds `batch_size` tweets, or when its oldest
//! tweet has waited `flush_interval` (checked every quarter of it), and
//! whatever is held goes out when the upstream ends.
//!
//! ## Demand only after the sink accepted the previous batch
//!
//! The batcher subscribes to its upstream with **manual demand** and does
//! its own asking. It asks for `batch_size` tweets at the start; every batch
//! it emits carries a receipt holding the upstream's [`DemandHandle`], and
//! when the consumer is done with the batch — the sink drops it once it is
//! stored — the receipt asks upstream for as many tweets as the batch held.
//! So at any time
//!
//! ```text
//! tweets held + tweets asked for and not yet arrived + tweets in the sink's batch = batch_size
//! ```
//!
//! While the sink stores a batch, the batcher has asked for nothing more:
//! a slow database holds the whole chain back to the source, and memory is
//! bounded by one batch, whatever the engine's rule for producer-consumers.
//! A batch due by age waits while the previous one is still in the sink.
//! Upstream is asked in units of up to a batch, so stages before it (worker
//! pools, joins) get enough credits to work in parallel.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use stageflow::{DemandHandle, Emitter, Events, ProducerConsumer};
use tokio::time::Instant;

use super::documents::flush_due;
use super::tick_for;
use crate::scored::ScoredTweet;
use stageflow::config::{BuildContext, DispatcherChoices, Kind, StageDecl, configure, kind};
use stageflow::{Pipeline, SubscribeOptions};

use crate::settings::{at_least_one, duration_setting};

/// The default largest batch.
pub const DEFAULT_BATCH_SIZE: usize = 200;
/// The default longest wait of a tweet in the batcher.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(3);

/// A batch of scored tweets; it counts as accepted when the consumer drops it (every clone of it).
#[derive(Debug, Clone, Default)]
pub struct Batch {
    tweets: Vec<ScoredTweet>,
    /// Asks the batcher's upstream for more once the batch is dropped.
    _receipt: Option<Arc<Receipt>>,
}

impl Batch {
    /// A batch with no batcher behind it (tests, other producers).
    pub fn new(tweets: Vec<ScoredTweet>) -> Self {
        Batch { tweets, _receipt: None }
    }

    /// The tweets.
    pub fn tweets(&self) -> &[ScoredTweet] {
        &self.tweets
    }

    /// How many tweets.
    pub fn len(&self) -> usize {
        self.tweets.len()
    }

    /// Whether it holds no tweet.
    pub fn is_empty(&self) -> bool {
        self.tweets.is_empty()
    }
}

/// Dropped with the last clone of a batch: gives the batch's credits back upstream.
#[derive(Debug)]
struct Receipt {
    tweets: usize,
    upstream: DemandHandle,
    in_sink: Arc<AtomicUsize>,
}

impl Drop for Receipt {
    fn drop(&mut self) {
        self.in_sink.fetch_sub(self.tweets, Ordering::AcqRel);
        self.upstream.ask(self.tweets);
    }
}

/// Groups scored tweets into batches of at most `batch_size`, or by age.
#[derive(Debug)]
pub struct Batcher {
    batch_size: usize,
    flush_interval: Duration,
    held: Vec<ScoredTweet>,
    /// When the oldest held tweet arrived.
    oldest: Option<Instant>,
    /// The upstream subscription, in manual demand mode.
    upstream: Option<DemandHandle>,
    /// Tweets in emitted batches not yet accepted.
    in_sink: Arc<AtomicUsize>,
}

impl Batcher {
    /// A batcher of at most `batch_size` (at least 1) tweets, each waiting at most about `flush_interval`.
    pub fn new(batch_size: usize, flush_interval: Duration) -> Self {
        let batch_size = batch_size.max(1);
        Batcher {
            batch_size,
            flush_interval,
            held: Vec::with_capacity(batch_size),
            oldest: None,
            upstream: None,
            in_sink: Arc::default(),
        }
    }

    /// Tweets held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Tweets in emitted batches the consumer has not dropped yet.
    pub fn in_sink(&self) -> usize {
        self.in_sink.load(Ordering::Acquire)
    }

    /// Adds one tweet; returns a full batch when it completes one.
    pub fn push(&mut self, tweet: ScoredTweet) -> Option<Batch> {
        self.oldest.get_or_insert_with(Instant::now);
        self.held.push(tweet);
        if self.held.len() >= self.batch_size { self.take() } else { None }
    }

    /// Returns what is held if the oldest tweet waited `flush_interval` by
    /// `now` and no earlier batch is still with the consumer.
    pub fn due(&mut self, now: Instant) -> Option<Batch> {
        let age = self.oldest.map(|oldest| now.saturating_duration_since(oldest));
        let due = flush_due(self.held.len(), self.batch_size, age, self.flush_interval);
        if due && self.in_sink() == 0 { self.take() } else { None }
    }

    /// Returns whatever is held (none when empty), with its receipt.
    pub fn take(&mut self) -> Option<Batch> {
        if self.held.is_empty() {
            return None;
        }
        self.oldest = None;
        let tweets = std::mem::replace(&mut self.held, Vec::with_capacity(self.batch_size));
        let receipt = self.upstream.clone().map(|upstream| {
            self.in_sink.fetch_add(tweets.len(), Ordering::AcqRel);
            Arc::new(Receipt { tweets: tweets.len(), upstream, in_sink: self.in_sink.clone() })
        });
        Some(Batch { tweets, _receipt: receipt })
    }
}

impl ProducerConsumer for Batcher {
    type In = ScoredTweet;
    type Out = Batch;

    async fn handle_events(&mut self, events: &mut Events<ScoredTweet>, out: &mut Emitter<Batch>) {
        for tweet in events {
            if let Some(batch) = self.push(tweet) {
                out.emit(batch);
            }
        }
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(tick_for(self.flush_interval))
    }

    async fn handle_tick(&mut self, out: &mut Emitter<Batch>) {
        if let Some(batch) = self.due(Instant::now()) {
            out.emit(batch);
        }
    }

    async fn flush(&mut self, out: &mut Emitter<Batch>) {
        if let Some(batch) = self.take() {
            out.emit(batch);
        }
    }

    /// Takes the first manual subscription and asks it for one batch.
    fn handle_subscribe(&mut self, upstream: DemandHandle) {
        if self.upstream.is_none() {
            upstream.ask(self.batch_size);
            self.upstream = Some(upstream);
        }
    }
}

/// groups scored tweets into batches of `batch_size`, or what came within `flush_interval`
#[kind("batcher", ScoredTweet -> Batch)]
pub struct BatcherKind {
    /// largest batch (default 200)
    batch_size: Option<usize>,
    /// longest a tweet waits for its batch, e.g. "3s" (default 3s)
    flush_interval: Option<String>,
    /// the same in milliseconds
    flush_interval_ms: Option<u64>,
}

impl BatcherKind {
    fn resolve(&self) -> Result<(usize, Duration), String> {
        let batch_size = self.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
        at_least_one("batch_size", batch_size as u64)?;
        let interval = duration_setting(
            self.flush_interval.as_deref(),
            self.flush_interval_ms,
            ("flush_interval", "flush_interval_ms"),
            DEFAULT_FLUSH_INTERVAL,
        )?;
        Ok((batch_size, interval))
    }
}

impl Kind for BatcherKind {
    /// A batcher takes one upstream (its demand follows its batches), runs as one stage, no selector.
    fn check(&self, stage: &StageDecl) -> Result<(), String> {
        if stage.subscribe_to.len() != 1 {
            return Err(format!(
                "a batcher subscribes to exactly one stage (it asks it for a batch at a time), got {}",
                stage.subscribe_to.len()
            ));
        }
        if stage.subscribe_to[0].selector.is_some() {
            return Err("this stage kind has no selectors".into());
        }
        if stage.workers.is_some() {
            return Err("a batcher runs as one stage: remove `workers`".into());
        }
        self.resolve().map(|_| ())
    }

    /// The one subscription is made in manual demand mode: the batcher does its own asking.
    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let (batch_size, interval) = self.resolve()?;
        let config = pipeline.producer_consumer(&stage.id, move || Batcher::new(batch_size, interval));
        let upstream = &stage.subscribe_to[0];
        let mut options = SubscribeOptions::bounds(upstream.bounds).with_cancel(upstream.cancel).manual();
        options.partition = upstream.partition;
        config.subscribe_to(&upstream.producer, options);
        let mut rest = stage.clone();
        rest.subscribe_to.clear();
        configure(&rest, config, &DispatcherChoices::cloneable(), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tweet::{Tweet, User};

    fn scored(id: u64) -> ScoredTweet {
        ScoredTweet {
            tweet: Tweet {
                id_str: id.to_string(),
                text: String::new(),
                created_at: String::new(),
                favorite_count: 0,
                retweet_count: 0,
                lang: None,
                entities: Default::default(),
                user: User { id_str: "u".into(), ..User::default() },
                retweeted_status: None,
            },
            extracted: false,
            sentiment: 0.0,
            engagement: 0.0,
            receipt: Default::default(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_completes_at_batch_size() {
        let mut batcher = Batcher::new(3, Duration::from_secs(3));
        assert!(batcher.push(scored(1)).is_none());
        assert!(batcher.push(scored(2)).is_none());
        let batch = batcher.push(scored(3)).expect("the third tweet completes a batch");
        let ids: Vec<_> = batch.tweets().iter().map(|t| t.tweet.id_str.as_str()).collect();
        assert_eq!(ids, ["1", "2", "3"]);
        assert_eq!(batcher.held(), 0);
        assert!(batcher.take().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_batch_is_due_once_its_oldest_tweet_waited_the_interval() {
        let mut batcher = Batcher::new(200, Duration::from_secs(3));
        let start = Instant::now();
        assert!(batcher.due(start + Duration::from_secs(60)).is_none(), "nothing held, nothing due");
        batcher.push(scored(1));
        tokio::time::advance(Duration::from_secs(2)).await;
        batcher.push(scored(2));
        assert!(batcher.due(Instant::now()).is_none(), "oldest waited 2 s");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(batcher.due(Instant::now()).map(|b| b.len()), Some(2), "oldest waited 3 s");
        batcher.push(scored(3));
        assert!(batcher.due(Instant::now()).is_none(), "the age restarts with the next batch");
    }
}
