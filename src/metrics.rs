//! Per-stage counters and processing-time percentiles, read as snapshots.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;

/// What a stage is, as shown in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageKind {
    /// Creates events.
    Producer,
    /// Takes events and emits others.
    ProducerConsumer,
    /// Takes events at the end of a pipeline.
    Consumer,
}

/// Live counters of one stage, shared between its task and the pipeline handle.
#[derive(Debug)]
pub struct StageMetrics {
    pub(crate) events_in: AtomicU64,
    pub(crate) events_out: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) restarts: AtomicU64,
    pub(crate) lost: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) credit_violations: AtomicU64,
    pub(crate) demand_held: AtomicU64,
    pub(crate) demand_asked: AtomicU64,
    pub(crate) buffer_fill: AtomicU64,
    pub(crate) workers: AtomicU64,
    processing_ns: Mutex<Histogram<u64>>,
}

impl Default for StageMetrics {
    fn default() -> Self {
        StageMetrics {
            events_in: AtomicU64::new(0),
            events_out: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            credit_violations: AtomicU64::new(0),
            demand_held: AtomicU64::new(0),
            demand_asked: AtomicU64::new(0),
            buffer_fill: AtomicU64::new(0),
            workers: AtomicU64::new(1),
            processing_ns: Mutex::new(new_histogram()),
        }
    }
}

pub(crate) fn add(counter: &AtomicU64, amount: usize) {
    counter.fetch_add(amount as u64, Ordering::Relaxed);
}

pub(crate) fn set(gauge: &AtomicU64, value: usize) {
    gauge.store(value as u64, Ordering::Relaxed);
}

/// A fast stage's callbacks are timed one in this many.
const FAST_TIMED_EVERY: u32 = 16;
/// A timed callback at least this long makes the next callback timed too.
const SLOW_CALLBACK: Duration = Duration::from_micros(20);

/// Picks which callbacks of a stage have their duration measured.
///
/// Reading the clock twice costs about as much as a fast stage's whole
/// callback on a few hundred events, so a stage whose last timed callback
/// was short is timed one call in `FAST_TIMED_EVERY`; one whose last timed
/// callback was slow is timed on every call, where the clock costs nothing
/// next to the work. A timed callback's time per event stands for the
/// events of the untimed calls before it too, so the histogram still counts
/// (nearly) every event.
#[derive(Debug, Default)]
pub(crate) struct TimingSampler {
    skip: u32,
    slow: bool,
    untimed_events: u64,
}

impl TimingSampler {
    /// Whether to time the next callback.
    pub(crate) fn should_time(&mut self) -> bool {
        if self.slow || self.skip == 0 {
            self.skip = FAST_TIMED_EVERY - 1;
            true
        } else {
            self.skip -= 1;
            false
        }
    }

    /// Whether the last timed callback was slow.
    pub(crate) fn is_slow(&self) -> bool {
        self.slow
    }

    /// Notes the events of a callback that was not timed.
    pub(crate) fn untimed(&mut self, events: usize) {
        self.untimed_events += events as u64;
    }

    /// Takes a timed callback's duration; returns how many events its time
    /// per event stands for (its own and the untimed ones before it).
    pub(crate) fn timed(&mut self, elapsed: Duration, events: usize) -> u64 {
        self.slow = elapsed >= SLOW_CALLBACK;
        events as u64 + std::mem::take(&mut self.untimed_events)
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 2).expect("valid histogram bounds")
}

impl StageMetrics {
    /// Records that `events` events took `elapsed` in a callback, and that
    /// `weight` events (at least those) took as long each.
    pub(crate) fn record_processing(&self, elapsed: Duration, events: usize, weight: u64) {
        if events == 0 || weight == 0 {
            return;
        }
        let per_event = (elapsed.as_nanos() / events as u128).clamp(1, 3_600_000_000_000) as u64;
        if let Ok(mut histogram) = self.processing_ns.lock() {
            histogram.saturating_record_n(per_event, weight);
        }
    }

    /// A consistent-enough copy of the counters (each is read atomically).
    pub fn snapshot(&self, stage: &str, kind: StageKind) -> StageSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let processing = match self.processing_ns.lock() {
            Ok(histogram) => Percentiles::of(&histogram),
            Err(_) => Percentiles::default(),
        };
        StageSnapshot {
            stage: stage.to_string(),
            kind,
            events_in: load(&self.events_in),
            events_out: load(&self.events_out),
            dropped: load(&self.dropped),
            restarts: load(&self.restarts),
            lost: load(&self.lost),
            dead_lettered: load(&self.dead_lettered),
            credit_violations: load(&self.credit_violations),
            demand_held: load(&self.demand_held),
            demand_asked: load(&self.demand_asked),
            buffer_fill: load(&self.buffer_fill),
            workers: load(&self.workers),
            processing,
        }
    }
}

/// Upper bounds, in microseconds, of the processing-time buckets a snapshot
/// counts (for Prometheus histograms); the last bucket is everything.
pub const PROCESSING_BUCKETS_US: [f64; 12] = [
    1.0,
    5.0,
    25.0,
    100.0,
    250.0,
    1_000.0,
    5_000.0,
    25_000.0,
    100_000.0,
    500_000.0,
    2_500_000.0,
    10_000_000.0,
];

/// Processing time per event, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    /// Events recorded (those of untimed fast callbacks through the timed one after them).
    pub count: u64,
    /// Sum of every recorded time (from the histogram's mean, so within its 1% precision).
    pub sum_us: f64,
    /// Events that took at most each bound of [`PROCESSING_BUCKETS_US`] (cumulative).
    pub buckets: [u64; PROCESSING_BUCKETS_US.len()],
    /// Median.
    pub p50_us: f64,
    /// 75th percentile.
    pub p75_us: f64,
    /// 85th percentile.
    pub p85_us: f64,
    /// 95th percentile.
    pub p95_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Slowest.
    pub max_us: f64,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        let mut buckets = [0; PROCESSING_BUCKETS_US.len()];
        for (bucket, bound_us) in buckets.iter_mut().zip(PROCESSING_BUCKETS_US) {
            *bucket = histogram.count_between(0, (bound_us * 1000.0) as u64);
        }
        Percentiles {
            count: histogram.len(),
            sum_us: histogram.mean() * histogram.len() as f64 / 1000.0,
            buckets,
            p50_us: us(histogram.value_at_quantile(0.50)),
            p75_us: us(histogram.value_at_quantile(0.75)),
            p85_us: us(histogram.value_at_quantile(0.85)),
            p95_us: us(histogram.value_at_quantile(0.95)),
            p99_us: us(histogram.value_at_quantile(0.99)),
            max_us: us(histogram.max()),
        }
    }
}

/// One stage's numbers at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct StageSnapshot {
    /// Stage id.
    pub stage: String,
    /// Producer, producer-consumer or consumer.
    pub kind: StageKind,
    /// Events received from upstream.
    pub events_in: u64,
    /// Events delivered downstream.
    pub events_out: u64,
    /// Events dropped by a full buffer, a vanished subscriber, or left untaken by a callback.
    pub dropped: u64,
    /// Times the stage or one of its workers was restarted after a panic.
    pub restarts: u64,
    /// Events lost to panics (the one each panicking callback held).
    pub lost: u64,
    /// Events handed to the stage's dead-letter handler after panicking on every try.
    pub dead_lettered: u64,
    /// Events received beyond the credits granted (always 0 unless the protocol is broken).
    pub credit_violations: u64,
    /// Credits held from downstream subscribers, not yet used.
    pub demand_held: u64,
    /// Credits granted to upstream producers, not yet filled.
    pub demand_asked: u64,
    /// Events waiting in the producer buffer.
    pub buffer_fill: u64,
    /// Workers running (1 unless the stage runs a pool).
    pub workers: u64,
    /// Processing time per event.
    pub processing: Percentiles,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_recorded_times() {
        let metrics = StageMetrics::default();
        metrics.record_processing(Duration::from_micros(100), 1, 1);
        metrics.record_processing(Duration::from_micros(1000), 10, 10);
        let snapshot = metrics.snapshot("s", StageKind::Consumer);
        assert_eq!(snapshot.processing.count, 11);
        assert!((snapshot.processing.p50_us - 100.0).abs() < 2.0);
        assert!((snapshot.processing.max_us - 100.0).abs() < 2.0);
        metrics.record_processing(Duration::from_millis(5), 1, 1);
        let snapshot = metrics.snapshot("s", StageKind::Consumer);
        assert!((snapshot.processing.max_us - 5000.0).abs() < 50.0);
    }

    #[test]
    fn buckets_count_events_at_or_under_each_bound_cumulatively() {
        let metrics = StageMetrics::default();
        metrics.record_processing(Duration::from_micros(3), 2, 2);
        metrics.record_processing(Duration::from_micros(200), 1, 1);
        metrics.record_processing(Duration::from_secs(20), 1, 1);
        let processing = metrics.snapshot("s", StageKind::Consumer).processing;
        let at = |bound: f64| {
            let index = PROCESSING_BUCKETS_US.iter().position(|b| *b == bound).expect("a bound");
            processing.buckets[index]
        };
        assert_eq!((at(1.0), at(5.0), at(100.0), at(250.0), at(10_000_000.0)), (0, 2, 2, 3, 3));
        assert_eq!(processing.count, 4, "the 20 s event is counted, in no bucket but +Inf");
        let expected_us = 2.0 * 3.0 + 200.0 + 20_000_000.0;
        assert!((processing.sum_us - expected_us).abs() / expected_us < 0.01, "sum {}", processing.sum_us);
    }

    #[test]
    fn fast_callbacks_are_timed_one_in_sixteen_and_slow_ones_every_time() {
        let mut sampler = TimingSampler::default();
        let mut timed = Vec::new();
        for call in 0..32 {
            if sampler.should_time() {
                timed.push((call, sampler.timed(Duration::from_micros(1), 10)));
            } else {
                sampler.untimed(10);
            }
        }
        assert_eq!(timed, vec![(0, 10), (16, 160)], "one call in 16, standing for the 15 before it too");
        assert!(sampler.should_time());
        assert_eq!(sampler.timed(Duration::from_millis(1), 1), 151, "calls 17 to 31 were not timed");
        assert!((0..5).all(|_| sampler.should_time()), "a slow stage is timed on every call");
        sampler.timed(Duration::from_micros(1), 1);
        assert!(!sampler.should_time(), "back to sampling once a timed call is fast");
    }
}
