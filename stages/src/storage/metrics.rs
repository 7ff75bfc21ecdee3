//! What a sink measures: bulk-insert times of tweets and users (hdrhistogram)
//! and counters, shared with whoever reads them (the statistics stage).
//!
//! Each sink stage built from a pipeline file publishes its [`SinkMetrics`]
//! under its stage id in the build context's [`PublishedSinks`];
//! [`published_sinks`] lists them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hdrhistogram::Histogram;

use stageflow::config::Resources;

use crate::sync::lock;
use crate::timings::InsertTimings;

/// Largest time recorded, in microseconds (one hour); longer ones are clamped.
const MAX_MICROS: u64 = 3_600_000_000;

/// An empty histogram of microseconds, 1 µs to one hour, 3 significant digits.
pub fn micros_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds")
}

/// Bulk-insert times of one period, in microseconds.
#[derive(Debug, Clone)]
pub struct InsertTimes {
    /// Time of each tweets bulk insert.
    pub tweets: Histogram<u64>,
    /// Time of each users bulk insert.
    pub users: Histogram<u64>,
}

impl Default for InsertTimes {
    fn default() -> Self {
        InsertTimes { tweets: micros_histogram(), users: micros_histogram() }
    }
}

impl InsertTimes {
    /// The tweets insert time at `quantile` (0.0–1.0), zero when nothing was recorded.
    pub fn tweets_at(&self, quantile: f64) -> Duration {
        at_quantile(&self.tweets, quantile)
    }

    /// The users insert time at `quantile` (0.0–1.0), zero when nothing was recorded.
    pub fn users_at(&self, quantile: f64) -> Duration {
        at_quantile(&self.users, quantile)
    }
}

fn at_quantile(histogram: &Histogram<u64>, quantile: f64) -> Duration {
    if histogram.is_empty() {
        Duration::ZERO
    } else {
        Duration::from_micros(histogram.value_at_quantile(quantile))
    }
}

/// Counters of a sink since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkCounters {
    /// Batches written.
    pub batches: u64,
    /// Tweets that were new (inserted).
    pub tweets_inserted: u64,
    /// Tweets that were already stored (replays).
    pub tweets_duplicate: u64,
    /// Users that were new (inserted).
    pub users_inserted: u64,
    /// Writes tried again after a transient failure.
    pub retries: u64,
    /// Per-user engagement upserts applied.
    pub engagement_updates: u64,
    /// Documents the store rejected for good (dead-lettered).
    pub rejected: u64,
}

/// Timings and counters of one sink stage, shared between the stage and its readers.
#[derive(Debug, Default)]
pub struct SinkMetrics {
    frame: Mutex<InsertTimes>,
    total: Mutex<InsertTimes>,
    batches: AtomicU64,
    tweets_inserted: AtomicU64,
    tweets_duplicate: AtomicU64,
    users_inserted: AtomicU64,
    retries: AtomicU64,
    engagement_updates: AtomicU64,
    rejected: AtomicU64,
    /// The statistics stage's recorder, also fed every insert.
    forward: OnceLock<Arc<InsertTimings>>,
}

fn micros(duration: Duration) -> u64 {
    (duration.as_micros().min(MAX_MICROS as u128) as u64).max(1)
}

impl SinkMetrics {
    /// Fresh metrics, shared.
    pub fn new() -> Arc<Self> {
        Arc::new(SinkMetrics::default())
    }

    /// Also records every insert into `timings` (the pipeline's statistics; set once).
    pub fn forward_to(&self, timings: Arc<InsertTimings>) {
        let _ = self.forward.set(timings);
    }

    /// Records one batch written: its insert times and what was new.
    pub fn record_batch(&self, written: &crate::storage::Inserted, tweets: usize, users: usize) {
        if let Some(forward) = self.forward.get() {
            if tweets > 0 {
                forward.record_tweets(written.tweets_time, written.new_tweets.len() as u64);
            }
            if users > 0 {
                forward.record_users(written.users_time, written.new_users as u64);
            }
        }
        for times in [&self.frame, &self.total] {
            let mut times = lock(times);
            if tweets > 0 {
                times.tweets.saturating_record(micros(written.tweets_time));
            }
            if users > 0 {
                times.users.saturating_record(micros(written.users_time));
            }
        }
        let new = written.new_tweets.len();
        // A rejected tweet is neither new nor a duplicate: it is counted in `rejected`.
        let rejected =
            written.rejected.iter().filter(|r| r.collection == crate::storage::Collection::Tweets).count();
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.tweets_inserted.fetch_add(new as u64, Ordering::Relaxed);
        self.tweets_duplicate.fetch_add(tweets.saturating_sub(new + rejected) as u64, Ordering::Relaxed);
        self.users_inserted.fetch_add(written.new_users as u64, Ordering::Relaxed);
    }

    /// Records a write tried again after a transient failure.
    pub fn record_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Records documents the store rejected for good.
    pub fn record_rejected(&self, documents: usize) {
        self.rejected.fetch_add(documents as u64, Ordering::Relaxed);
    }

    /// Records `users` per-user engagement upserts applied.
    pub fn record_engagements(&self, users: usize) {
        self.engagement_updates.fetch_add(users as u64, Ordering::Relaxed);
    }

    /// The insert times since the previous call (for one reader: the statistics stage), and starts a new period.
    pub fn take_frame(&self) -> InsertTimes {
        std::mem::take(&mut *lock(&self.frame))
    }

    /// Every insert time since the sink started.
    pub fn total(&self) -> InsertTimes {
        lock(&self.total).clone()
    }

    /// The counters now.
    pub fn counters(&self) -> SinkCounters {
        SinkCounters {
            batches: self.batches.load(Ordering::Relaxed),
            tweets_inserted: self.tweets_inserted.load(Ordering::Relaxed),
            tweets_duplicate: self.tweets_duplicate.load(Ordering::Relaxed),
            users_inserted: self.users_inserted.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            engagement_updates: self.engagement_updates.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }
}

/// A sink stage's metrics, as published by its kind.
#[derive(Debug, Clone)]
pub struct PublishedSink {
    /// The sink stage's id.
    pub stage: String,
    /// Its kind (`mongo_sink`, `sqlite_sink`, `null_sink`).
    pub kind: &'static str,
    /// Its metrics.
    pub metrics: Arc<SinkMetrics>,
}

/// The sinks of one pipeline: a resource of its build context, where each
/// sink kind publishes its metrics and whoever started the pipeline reads them.
#[derive(Debug, Default)]
pub struct PublishedSinks(Mutex<Vec<PublishedSink>>);

impl PublishedSinks {
    /// Publishes a sink's metrics (replacing an earlier sink of the same stage id).
    pub fn publish(&self, stage: &str, kind: &'static str, metrics: Arc<SinkMetrics>) {
        let mut sinks = lock(&self.0);
        sinks.retain(|sink| sink.stage != stage);
        sinks.push(PublishedSink { stage: stage.to_string(), kind, metrics });
    }

    /// The sinks published so far.
    pub fn list(&self) -> Vec<PublishedSink> {
        lock(&self.0).clone()
    }
}

/// The sinks published in `resources` (a pipeline's build context's).
pub fn published_sinks(resources: &Resources) -> Vec<PublishedSink> {
    resources.get::<PublishedSinks>().map(|sinks| sinks.list()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Inserted;

    #[test]
    fn a_frame_holds_the_times_since_the_last_frame_the_total_all() {
        let metrics = SinkMetrics::new();
        let written = |ms| Inserted {
            new_tweets: vec![0, 1],
            new_users: 1,
            tweets_time: Duration::from_millis(ms),
            users_time: Duration::from_millis(ms / 2),
            ..Inserted::default()
        };
        for ms in [10, 20, 30, 40] {
            metrics.record_batch(&written(ms), 3, 2);
        }
        let frame = metrics.take_frame();
        assert_eq!(frame.tweets.len(), 4);
        let p75 = frame.tweets_at(0.75).as_millis();
        assert!((29..=31).contains(&p75), "p75 {p75} ms");
        assert_eq!(metrics.take_frame().tweets.len(), 0, "a new frame starts empty");
        metrics.record_batch(&written(50), 3, 0);
        assert_eq!(metrics.total().tweets.len(), 5);
        assert_eq!(metrics.total().users.len(), 4, "no users, no users insert");
        let counters = metrics.counters();
        assert_eq!((counters.batches, counters.tweets_inserted, counters.tweets_duplicate), (5, 10, 5));
    }

    #[test]
    fn published_sinks_are_listed_per_resources_the_latest_per_stage() {
        let (ours, theirs) = (Resources::default(), Resources::default());
        let second = SinkMetrics::new();
        ours.get_or_default::<PublishedSinks>().publish("store", "null_sink", SinkMetrics::new());
        ours.get_or_default::<PublishedSinks>().publish("store", "null_sink", second.clone());
        theirs.get_or_default::<PublishedSinks>().publish("store", "null_sink", SinkMetrics::new());
        let sinks = published_sinks(&ours);
        assert_eq!(sinks.len(), 1);
        assert!(Arc::ptr_eq(&sinks[0].metrics, &second));
        assert!(published_sinks(&Resources::default()).is_empty());
    }
}
