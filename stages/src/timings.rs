//! Time measurements that stages of several areas record and the statistics
//! read: the bulk-insert times and counts the sinks record
//! ([`InsertTimings`], one per pipeline, a build resource) and the logger's
//! time per tweet, summed up per frame as percentiles ([`TimingSummary`]).
//!
//! A sink kind records into the pipeline's timings; the statistics hub
//! built for the same pipeline reads them:
//!
//! ```
//! # use std::time::Duration;
//! use stageflow::config::Resources;
//! use stageflow_stages::timings::InsertTimings;
//! // In the sink kind's `build`, from `context.resources`: one per pipeline.
//! let resources = Resources::default();
//! let timings = resources.get_or_default::<InsertTimings>();
//! // After each bulk insert: how long it took and how many documents were new.
//! timings.record_tweets(Duration::from_millis(12), 200);
//! timings.record_users(Duration::from_millis(4), 150);
//! assert_eq!(resources.get_or_default::<InsertTimings>().tweets_ingested(), 200);
//! ```

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::sync::lock;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Longest duration a recorder keeps apart (longer ones count as this): one hour.
const MAX_MICROS: u64 = 3_600_000_000;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 2).expect("valid histogram bounds")
}

/// Durations recorded by several tasks, taken (and reset) once per frame.
#[derive(Debug)]
pub struct LatencyRecorder {
    histogram: Mutex<Histogram<u64>>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        LatencyRecorder { histogram: Mutex::new(new_histogram()) }
    }
}

impl LatencyRecorder {
    /// Records one duration (microsecond resolution, 1 µs to 1 h; 1% precision).
    pub fn record(&self, elapsed: Duration) {
        let micros = (elapsed.as_micros().min(MAX_MICROS as u128) as u64).max(1);
        lock(&self.histogram).saturating_record(micros);
    }

    /// The summary of what was recorded since the last `take`, and starts afresh.
    pub fn take(&self) -> TimingSummary {
        let mut histogram = lock(&self.histogram);
        let summary = TimingSummary::of(&histogram);
        histogram.reset();
        summary
    }
}

/// Bulk-insert times and counts, recorded by the storage sinks.
#[derive(Debug, Default)]
pub struct InsertTimings {
    pub(crate) tweets: LatencyRecorder,
    pub(crate) users: LatencyRecorder,
    tweets_ingested: AtomicU64,
    users_ingested: AtomicU64,
}

impl InsertTimings {
    /// One bulk insert into `tweets`: how long it took and how many tweets were new.
    pub fn record_tweets(&self, elapsed: Duration, inserted: u64) {
        self.tweets.record(elapsed);
        self.tweets_ingested.fetch_add(inserted, Ordering::Relaxed);
    }

    /// One bulk insert into `users`: how long it took and how many users were new.
    pub fn record_users(&self, elapsed: Duration, inserted: u64) {
        self.users.record(elapsed);
        self.users_ingested.fetch_add(inserted, Ordering::Relaxed);
    }

    /// Tweets ingested since start.
    pub fn tweets_ingested(&self) -> u64 {
        self.tweets_ingested.load(Ordering::Relaxed)
    }

    /// Users ingested since start.
    pub fn users_ingested(&self) -> u64 {
        self.users_ingested.load(Ordering::Relaxed)
    }
}

/// Percentiles of one frame's durations, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TimingSummary {
    /// Durations recorded in the frame.
    pub count: u64,
    /// 75th percentile, ms.
    pub p75_ms: f64,
    /// 85th percentile, ms.
    pub p85_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
}

impl TimingSummary {
    /// The percentiles of a histogram of microseconds; all zero when it is empty.
    pub fn of(histogram: &Histogram<u64>) -> TimingSummary {
        if histogram.is_empty() {
            return TimingSummary::default();
        }
        let ms = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
        TimingSummary { count: histogram.len(), p75_ms: ms(0.75), p85_ms: ms(0.85), p95_ms: ms(0.95) }
    }
}

impl fmt::Display for TimingSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p75/p85/p95 {:.1}/{:.1}/{:.1} ms (n={})",
            self.p75_ms, self.p85_ms, self.p95_ms, self.count
        )
    }
}
