//! The aggregator: joins each tweet's sentiment and engagement into a [`ScoredTweet`].
//!
//! The join is a pure state machine, [`JoinState`], driven with an explicit
//! clock. A half-joined entry waits at most `ttl`, and at most `max_pending`
//! entries wait at once: past either bound the oldest entries are evicted and
//! counted in [`JoinStats`]. The key is the flow sequence of the tweet
//! ([`FlowTweet::seq`](super::FlowTweet)), so the same tweet id travelling
//! twice (an original retweeted twice) joins each copy with its own scores.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use stageflow::{Emitter, Events, ProducerConsumer};
use tokio::time::Instant;

use super::flow::{FlowTweet, Score, TweetScore};
use crate::scored::ScoredTweet;
use stageflow::Pipeline;
use stageflow::config::{BuildContext, DispatcherChoices, Kind, StageDecl, configure, kind};

use super::StatsHub;
use crate::settings::at_least_one;
use crate::tweet::partition_of_id;

/// Counters of a join, shared by the stage, its restarts and the statistics.
#[derive(Debug, Default)]
pub struct JoinStats {
    joined: AtomicU64,
    expired: AtomicU64,
    overflowed: AtomicU64,
    abandoned: AtomicU64,
    duplicates: AtomicU64,
}

impl JoinStats {
    /// Tweets emitted with both scores.
    pub fn joined(&self) -> u64 {
        self.joined.load(Ordering::Relaxed)
    }

    /// Half-joined entries evicted because they waited longer than the TTL.
    pub fn expired(&self) -> u64 {
        self.expired.load(Ordering::Relaxed)
    }

    /// Half-joined entries evicted to keep at most `max_pending` waiting.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Half-joined entries still waiting when every producer had ended.
    pub fn abandoned(&self) -> u64 {
        self.abandoned.load(Ordering::Relaxed)
    }

    /// Every eviction: expired, overflowed and abandoned.
    pub fn evicted(&self) -> u64 {
        self.expired() + self.overflowed() + self.abandoned()
    }

    /// Second scores of the same kind for one entry (ignored; the first one counts).
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }
}

fn bump(counter: &AtomicU64, by: usize) {
    counter.fetch_add(by as u64, Ordering::Relaxed);
}

/// One half-joined tweet.
#[derive(Debug)]
struct Pending {
    tweet: FlowTweet,
    sentiment: Option<f64>,
    engagement: Option<f64>,
    since: Instant,
}

/// The join's waiting entries, bounded by age and count.
#[derive(Debug)]
pub struct JoinState {
    ttl: Duration,
    max_pending: usize,
    /// Keyed by flow sequence: process-made numbers, hashed with foldhash
    /// rather than SipHash, twice for every tweet.
    pending: HashMap<u64, Pending, foldhash::fast::FixedState>,
    by_age: BTreeSet<(Instant, u64)>,
    stats: Arc<JoinStats>,
}

impl JoinState {
    /// An empty join: entries wait at most `ttl`, at most `max_pending` (≥ 1) at once.
    pub fn new(ttl: Duration, max_pending: usize, stats: Arc<JoinStats>) -> Self {
        JoinState {
            ttl,
            max_pending: max_pending.max(1),
            pending: HashMap::default(),
            by_age: BTreeSet::new(),
            stats,
        }
    }

    /// Entries waiting for their other score.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<JoinStats> {
        &self.stats
    }

    /// Takes one score at `now`: the joined tweet if this was its second score.
    /// Entries older than the TTL are evicted first.
    pub fn offer(&mut self, scored: TweetScore, now: Instant) -> Option<ScoredTweet> {
        self.expire(now);
        let key = scored.tweet.seq;
        if let Some(entry) = self.pending.get_mut(&key) {
            let slot = match scored.score {
                Score::Sentiment(value) => (&mut entry.sentiment, value),
                Score::Engagement(value) => (&mut entry.engagement, value),
            };
            if slot.0.is_some() {
                bump(&self.stats.duplicates, 1);
                return None;
            }
            *slot.0 = Some(slot.1);
            let (Some(sentiment), Some(engagement)) = (entry.sentiment, entry.engagement) else {
                return None;
            };
            let entry = self.pending.remove(&key).expect("just found");
            self.by_age.remove(&(entry.since, key));
            bump(&self.stats.joined, 1);
            // This score's share of the tweet goes first, so the tweet is
            // moved out of its `Arc` rather than copied when no one else holds it.
            drop(scored.tweet);
            let FlowTweet { tweet, extracted, receipt, .. } = entry.tweet;
            return Some(ScoredTweet {
                tweet: Arc::unwrap_or_clone(tweet),
                extracted,
                sentiment,
                engagement,
                receipt,
            });
        }
        while self.pending.len() >= self.max_pending {
            let Some((_, oldest)) = self.by_age.pop_first() else { break };
            self.pending.remove(&oldest);
            bump(&self.stats.overflowed, 1);
        }
        let (sentiment, engagement) = match scored.score {
            Score::Sentiment(value) => (Some(value), None),
            Score::Engagement(value) => (None, Some(value)),
        };
        self.by_age.insert((now, key));
        self.pending.insert(key, Pending { tweet: scored.tweet, sentiment, engagement, since: now });
        None
    }

    /// Evicts the entries that have waited longer than the TTL at `now`; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut evicted = 0;
        while let Some(&(since, key)) = self.by_age.first() {
            if now.saturating_duration_since(since) <= self.ttl {
                break;
            }
            self.by_age.pop_first();
            self.pending.remove(&key);
            evicted += 1;
        }
        bump(&self.stats.expired, evicted);
        evicted
    }

    /// Evicts everything still waiting (no more scores will come); returns how many.
    pub fn abandon(&mut self) -> usize {
        let evicted = self.pending.len();
        self.pending.clear();
        self.by_age.clear();
        bump(&self.stats.abandoned, evicted);
        evicted
    }
}

/// The aggregator stage: a [`JoinState`] on the tokio clock, expiring on a timer.
#[derive(Debug)]
pub struct Aggregator {
    join: JoinState,
}

impl Aggregator {
    /// A stage joining with these bounds; `stats` survives restarts.
    pub fn new(ttl: Duration, max_pending: usize, stats: Arc<JoinStats>) -> Self {
        Aggregator { join: JoinState::new(ttl, max_pending, stats) }
    }
}

impl ProducerConsumer for Aggregator {
    type In = TweetScore;
    type Out = ScoredTweet;

    async fn handle_events(&mut self, events: &mut Events<TweetScore>, out: &mut Emitter<ScoredTweet>) {
        let now = Instant::now();
        for scored in events {
            if let Some(joined) = self.join.offer(scored, now) {
                out.emit(joined);
            }
        }
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some((self.join.ttl / 2).clamp(Duration::from_millis(10), Duration::from_secs(1)))
    }

    async fn handle_tick(&mut self, _: &mut Emitter<ScoredTweet>) {
        self.join.expire(Instant::now());
    }

    async fn flush(&mut self, _: &mut Emitter<ScoredTweet>) {
        let abandoned = self.join.abandon();
        if abandoned > 0 {
            tracing::warn!(abandoned, "aggregator: half-joined tweets left when its producers ended");
        }
    }
}

/// joins each tweet's sentiment and engagement scores into a scored tweet; half-joined tweets wait at most ttl_ms, at most max_pending of them, evictions counted
#[kind("aggregator", TweetScore -> ScoredTweet)]
pub struct AggregatorKind {
    /// how long a tweet with one score waits for the other before it is evicted (default 30000)
    #[default(30_000)]
    ttl_ms: u64,
    /// most half-joined tweets waiting at once; the oldest is evicted past it (default 100000)
    #[default(100_000)]
    max_pending: u64,
}

impl Kind for AggregatorKind {
    fn check(&self, _: &StageDecl) -> Result<(), String> {
        at_least_one("ttl_ms", self.ttl_ms)?;
        at_least_one("max_pending", self.max_pending)
    }

    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, context: &BuildContext) -> Result<(), String> {
        let ttl = Duration::from_millis(self.ttl_ms);
        let max_pending = usize::try_from(self.max_pending).unwrap_or(usize::MAX);
        let stats = Arc::new(JoinStats::default());
        StatsHub::of(context).watch_join(&stage.id, stats.clone());
        let config =
            pipeline.producer_consumer(&stage.id, move || Aggregator::new(ttl, max_pending, stats.clone()));
        let choices = DispatcherChoices::cloneable()
            .with_partition(|scored: &ScoredTweet| partition_of_id(&scored.tweet.user.id_str));
        configure(stage, config, &choices, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::flow::tests::tweet;

    fn flow(id: &str) -> FlowTweet {
        FlowTweet::new(tweet(id, "text"), false)
    }

    fn sentiment(tweet: &FlowTweet, value: f64) -> TweetScore {
        TweetScore { tweet: tweet.clone(), score: Score::Sentiment(value) }
    }

    fn engagement(tweet: &FlowTweet, value: f64) -> TweetScore {
        TweetScore { tweet: tweet.clone(), score: Score::Engagement(value) }
    }

    fn join(ttl_ms: u64, max: usize) -> JoinState {
        JoinState::new(Duration::from_millis(ttl_ms), max, Arc::default())
    }

    #[test]
    fn both_scores_in_either_order_join_into_one_scored_tweet() {
        let start = Instant::now();
        let mut state = join(1000, 10);
        let (a, b) = (flow("a"), flow("b"));
        assert_eq!(state.offer(sentiment(&a, 0.5), start), None);
        assert_eq!(state.offer(engagement(&b, 2.0), start), None);
        assert_eq!(state.pending(), 2);
        let joined = state.offer(engagement(&a, 1.5), start).expect("a is complete");
        assert_eq!((joined.tweet.id_str.as_str(), joined.sentiment, joined.engagement), ("a", 0.5, 1.5));
        assert!(!joined.extracted);
        let joined = state.offer(sentiment(&b, -1.0), start).expect("b is complete");
        assert_eq!((joined.tweet.id_str.as_str(), joined.sentiment, joined.engagement), ("b", -1.0, 2.0));
        assert_eq!(state.pending(), 0);
        assert_eq!(state.stats().joined(), 2);
        assert_eq!(state.stats().evicted(), 0);
    }

    #[test]
    fn the_extracted_flag_is_kept() {
        let original = FlowTweet::new(tweet("o", "x"), true);
        let mut state = join(1000, 10);
        let now = Instant::now();
        state.offer(sentiment(&original, 0.0), now);
        assert!(state.offer(engagement(&original, 0.0), now).unwrap().extracted);
    }

    #[test]
    fn copies_of_the_same_tweet_id_join_separately() {
        let (first, second) = (flow("same"), flow("same"));
        let mut state = join(1000, 10);
        let now = Instant::now();
        assert_eq!(state.offer(sentiment(&first, 1.0), now), None);
        assert_eq!(state.offer(sentiment(&second, 1.0), now), None);
        assert_eq!(state.offer(engagement(&second, 7.0), now).unwrap().engagement, 7.0);
        assert_eq!(state.offer(engagement(&first, 3.0), now).unwrap().engagement, 3.0);
    }

    #[test]
    fn entries_older_than_the_ttl_are_evicted_and_counted() {
        let start = Instant::now();
        let mut state = join(100, 10);
        let (a, b) = (flow("a"), flow("b"));
        state.offer(sentiment(&a, 1.0), start);
        state.offer(sentiment(&b, 1.0), start + Duration::from_millis(60));
        assert_eq!(state.expire(start + Duration::from_millis(100)), 0, "exactly the TTL still waits");
        assert_eq!(state.expire(start + Duration::from_millis(101)), 1);
        assert_eq!(state.pending(), 1);
        // The late half of `a` starts a new entry; `b` still joins.
        assert_eq!(state.offer(engagement(&a, 1.0), start + Duration::from_millis(150)), None);
        assert!(state.offer(engagement(&b, 1.0), start + Duration::from_millis(150)).is_some());
        // Offering also expires: `a`'s new entry is gone after another TTL.
        state.offer(sentiment(&flow("c"), 1.0), start + Duration::from_millis(251));
        assert_eq!(state.stats().expired(), 2);
        assert_eq!(state.pending(), 1);
    }

    #[test]
    fn past_max_pending_the_oldest_entries_are_evicted_and_counted() {
        let start = Instant::now();
        let mut state = join(60_000, 3);
        let tweets: Vec<FlowTweet> = (0..5).map(|i| flow(&i.to_string())).collect();
        for (i, tweet) in tweets.iter().enumerate() {
            state.offer(sentiment(tweet, 0.0), start + Duration::from_millis(i as u64));
        }
        assert_eq!(state.pending(), 3);
        assert_eq!(state.stats().overflowed(), 2);
        assert_eq!(state.offer(engagement(&tweets[0], 0.0), start), None, "0 was evicted");
        assert_eq!(state.stats().overflowed(), 3, "and its late half evicted 2 to make room");
        assert!(state.offer(engagement(&tweets[4], 0.0), start).is_some());
        assert!(state.offer(engagement(&tweets[3], 0.0), start).is_some());
    }

    #[test]
    fn a_duplicate_score_is_ignored_and_counted() {
        let now = Instant::now();
        let mut state = join(1000, 10);
        let a = flow("a");
        state.offer(sentiment(&a, 1.0), now);
        assert_eq!(state.offer(sentiment(&a, 9.0), now), None);
        assert_eq!(state.stats().duplicates(), 1);
        assert_eq!(state.offer(engagement(&a, 0.0), now).unwrap().sentiment, 1.0);
    }

    #[test]
    fn abandoning_counts_what_was_waiting() {
        let now = Instant::now();
        let mut state = join(1000, 10);
        state.offer(sentiment(&flow("a"), 1.0), now);
        state.offer(engagement(&flow("b"), 1.0), now);
        assert_eq!(state.abandon(), 2);
        assert_eq!(state.stats().abandoned(), 2);
        assert_eq!(state.stats().evicted(), 2);
        assert_eq!(state.pending(), 0);
    }
}
