//! Worker pools: one stage, many workers, each with its own state, scaled to the input rate.

use std::time::Duration;

/// How a pool picks the worker for the next event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Routing {
    /// Each worker in turn.
    #[default]
    RoundRobin,
    /// The worker with the fewest hand-offs queued or in progress (single
    /// events for a slow stage, shares of the backlog for a fast one).
    LeastLoaded,
}

/// Autoscaler settings: every `frame`, size the pool to the input rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Autoscale {
    /// How often the size is recomputed (default 1 s).
    pub frame: Duration,
    /// Input events per second one worker is expected to handle (default 5,
    /// the reference system's `events_in_last_second / 5 + 1`).
    pub events_per_worker: f64,
}

impl Default for Autoscale {
    fn default() -> Self {
        Autoscale { frame: Duration::from_secs(1), events_per_worker: 5.0 }
    }
}

/// A stage's worker pool: between `min` and `max` workers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolConfig {
    /// Fewest workers (the starting size when autoscaled).
    pub min: usize,
    /// Most workers (the fixed size when not autoscaled).
    pub max: usize,
    /// How events are spread over workers.
    pub routing: Routing,
    /// `None` for a fixed pool of `max` workers.
    pub autoscale: Option<Autoscale>,
}

impl PoolConfig {
    /// A fixed pool of `workers` workers, round-robin.
    pub fn fixed(workers: usize) -> Self {
        PoolConfig { min: workers, max: workers, routing: Routing::RoundRobin, autoscale: None }
    }

    /// An autoscaled pool between `min` and `max` with the default autoscaler.
    pub fn autoscaled(min: usize, max: usize) -> Self {
        PoolConfig { min, max, routing: Routing::RoundRobin, autoscale: Some(Autoscale::default()) }
    }

    /// Sets the routing.
    pub fn with_routing(mut self, routing: Routing) -> Self {
        self.routing = routing;
        self
    }

    /// Checks `1 <= min <= max` and a positive autoscaler frame and rate.
    pub fn validate(&self) -> Result<(), String> {
        if self.min == 0 {
            return Err("workers.min must be at least 1".into());
        }
        if self.min > self.max {
            return Err(format!("workers.min ({}) must not exceed workers.max ({})", self.min, self.max));
        }
        if let Some(autoscale) = self.autoscale {
            if autoscale.frame.is_zero() {
                return Err("the autoscale frame must be longer than 0".into());
            }
            if autoscale.events_per_worker.is_nan() || autoscale.events_per_worker <= 0.0 {
                return Err("events_per_worker must be above 0".into());
            }
        }
        Ok(())
    }

    /// The number of workers the pool starts with.
    pub fn initial_size(&self) -> usize {
        if self.autoscale.is_some() { self.min } else { self.max }
    }
}

/// The pool size for `events` events received in one `frame` with `backlog`
/// events still queued or in progress at its end:
/// `(events + backlog) / frame / events_per_worker + 1`, kept within `min..=max`.
///
/// The first term is the reference system's `events_in_last_second / 5 + 1`.
/// The backlog term matters in a demand-driven pool: a pool too small for
/// its work takes in only what it finishes, so its input rate alone would
/// never ask for more workers; its queue says it needs them.
pub fn autoscale_target(
    events: u64,
    backlog: usize,
    frame: Duration,
    events_per_worker: f64,
    min: usize,
    max: usize,
) -> usize {
    let offered = events as f64 + backlog as f64;
    let rate = offered / frame.as_secs_f64().max(f64::MIN_POSITIVE);
    let wanted = (rate / events_per_worker).floor();
    let wanted = if wanted.is_finite() { wanted.min(usize::MAX as f64 / 2.0) as usize } else { max };
    wanted.saturating_add(1).clamp(min, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_formula_within_bounds() {
        let second = Duration::from_secs(1);
        assert_eq!(autoscale_target(0, 0, second, 5.0, 1, 20), 1);
        assert_eq!(autoscale_target(12, 0, second, 5.0, 1, 20), 3);
        assert_eq!(autoscale_target(1000, 0, second, 5.0, 1, 20), 20);
        assert_eq!(autoscale_target(0, 0, second, 5.0, 4, 20), 4);
        assert_eq!(autoscale_target(50, 0, Duration::from_millis(500), 5.0, 1, 100), 21);
    }

    #[test]
    fn a_backlog_asks_for_workers_even_when_little_arrives() {
        let second = Duration::from_secs(1);
        assert_eq!(autoscale_target(3, 0, second, 3.0, 1, 40), 2);
        assert_eq!(autoscale_target(3, 900, second, 3.0, 1, 40), 40);
        assert_eq!(autoscale_target(0, 30, second, 3.0, 1, 40), 11);
    }

    #[test]
    fn validation_names_the_problem() {
        assert!(PoolConfig::fixed(0).validate().unwrap_err().contains("min"));
        assert!(PoolConfig::autoscaled(3, 2).validate().unwrap_err().contains("must not exceed"));
        assert_eq!(PoolConfig::autoscaled(2, 8).initial_size(), 2);
        assert_eq!(PoolConfig::fixed(3).initial_size(), 3);
    }
}
