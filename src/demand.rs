//! Consumer-side credit accounting for one subscription, as a pure state machine.
//!
//! A consumer grants `max_demand` credits when it subscribes. Each processed
//! event spends one. When the credits still outstanding fall to `min_demand`,
//! the consumer tops them back up to `max_demand`. With the GenStage defaults
//! (1000 / 500) a consumer asks for 1000, then for 500 each time it has worked
//! through 500 events, so the producer can fill the next 500 while the consumer
//! works on the previous ones.

/// How a subscription's credits are granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DemandMode {
    /// The engine asks for more whenever outstanding credits fall to `min_demand`.
    #[default]
    Automatic,
    /// The stage asks itself through its [`crate::DemandHandle`] (e.g. for rate limiting).
    Manual,
}

/// Credit bounds of a subscription: `max_demand >= 1` and `min_demand < max_demand`.
///
/// The fields are private and [`DemandBounds::new`] checks them, so bounds
/// that would stall a consumer (nothing ever asked for with `max_demand = 0`,
/// chunks of 0 with `min_demand = max_demand`) cannot reach a running
/// pipeline. GenStage rejects the same values at subscribe time (`bad_opts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemandBounds {
    max_demand: usize,
    min_demand: usize,
}

impl Default for DemandBounds {
    fn default() -> Self {
        DemandBounds { max_demand: 1000, min_demand: 500 }
    }
}

/// Why a pair of demand bounds is rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DemandBoundsError {
    /// `max_demand` was 0: the consumer could never receive anything.
    ZeroMax,
    /// `min_demand` was not below `max_demand`.
    MinNotBelowMax {
        /// The `min_demand` given.
        min_demand: usize,
        /// The `max_demand` given.
        max_demand: usize,
    },
}

impl std::fmt::Display for DemandBoundsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DemandBoundsError::ZeroMax => write!(f, "max_demand must be at least 1, got 0"),
            DemandBoundsError::MinNotBelowMax { min_demand, max_demand } => {
                write!(f, "min_demand ({min_demand}) must be below max_demand ({max_demand})")
            }
        }
    }
}

impl std::error::Error for DemandBoundsError {}

/// The one wording of a subscription's invalid bounds, shared by the TOML
/// check, [`crate::Pipeline::validate`] and the outside subscribe.
pub(crate) fn bounds_problem(producer: &str, error: &DemandBoundsError) -> String {
    format!("subscription to '{producer}': {error}")
}

impl DemandBounds {
    /// Bounds with `min_demand = max_demand / 2`, as GenStage defaults it.
    pub fn with_max(max_demand: usize) -> Result<Self, DemandBoundsError> {
        Self::new(max_demand, max_demand / 2)
    }

    /// Checked constructor: `max_demand >= 1` and `min_demand < max_demand`.
    pub fn new(max_demand: usize, min_demand: usize) -> Result<Self, DemandBoundsError> {
        if max_demand == 0 {
            return Err(DemandBoundsError::ZeroMax);
        }
        if min_demand >= max_demand {
            return Err(DemandBoundsError::MinNotBelowMax { min_demand, max_demand });
        }
        Ok(DemandBounds { max_demand, min_demand })
    }

    /// Credits granted at subscription and the ceiling they are topped back up to.
    pub fn max_demand(&self) -> usize {
        self.max_demand
    }

    /// Outstanding credits at or below which the consumer asks for more.
    pub fn min_demand(&self) -> usize {
        self.min_demand
    }

    /// Largest number of events processed between two asks (at least 1).
    pub fn chunk(&self) -> usize {
        self.max_demand - self.min_demand
    }
}

/// Outstanding credits of one subscription from the consumer's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemandLedger {
    bounds: DemandBounds,
    /// Credits granted and not yet spent by a processed event.
    outstanding: usize,
    /// Events received and not yet processed.
    unprocessed: usize,
}

impl DemandLedger {
    /// A ledger for a new subscription; nothing granted yet.
    pub fn new(bounds: DemandBounds) -> Self {
        DemandLedger { bounds, outstanding: 0, unprocessed: 0 }
    }

    /// The bounds this ledger works with.
    pub fn bounds(&self) -> DemandBounds {
        self.bounds
    }

    /// Credits granted and not yet spent.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Credits granted for events that have not arrived yet.
    pub fn in_flight(&self) -> usize {
        self.outstanding - self.unprocessed
    }

    /// Records `count` events arriving. Returns false when the producer sent
    /// more than it had credits for (a protocol violation the caller reports).
    pub fn received(&mut self, count: usize) -> bool {
        self.unprocessed += count;
        self.unprocessed <= self.outstanding
    }

    /// Records `count` events processed; they no longer hold credits.
    pub fn processed(&mut self, count: usize) {
        let count = count.min(self.unprocessed);
        self.unprocessed -= count;
        self.outstanding -= count;
    }

    /// Credits to ask for now (at most `budget`), recording them as granted.
    /// Asks only once outstanding credits have fallen to `min_demand`.
    pub fn top_up(&mut self, budget: usize) -> usize {
        if self.outstanding > self.bounds.min_demand {
            return 0;
        }
        let ask = (self.bounds.max_demand - self.outstanding).min(budget);
        self.outstanding += ask;
        ask
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_genstage_defaults() {
        let bounds = DemandBounds::default();
        assert_eq!((bounds.max_demand(), bounds.min_demand()), (1000, 500));
        assert_eq!(DemandBounds::with_max(80).unwrap().min_demand(), 40);
    }

    #[test]
    fn rejects_zero_max_and_min_not_below_max() {
        assert_eq!(DemandBounds::new(0, 0), Err(DemandBoundsError::ZeroMax));
        assert!(matches!(DemandBounds::new(10, 10), Err(DemandBoundsError::MinNotBelowMax { .. })));
        let above = DemandBounds::new(10, 20).unwrap_err();
        assert_eq!(above.to_string(), "min_demand (20) must be below max_demand (10)");
        assert_eq!(
            DemandBounds::with_max(0).unwrap_err().to_string(),
            "max_demand must be at least 1, got 0"
        );
        assert_eq!(DemandBounds::new(1, 0).map(|b| b.chunk()), Ok(1));
    }

    #[test]
    fn asks_max_first_then_tops_up_after_each_chunk() {
        let mut ledger = DemandLedger::new(DemandBounds::default());
        assert_eq!(ledger.top_up(usize::MAX), 1000);
        assert_eq!(ledger.top_up(usize::MAX), 0, "no second ask while above min");
        assert!(ledger.received(1000));
        ledger.processed(499);
        assert_eq!(ledger.top_up(usize::MAX), 0, "501 outstanding is above min 500");
        ledger.processed(1);
        assert_eq!(ledger.top_up(usize::MAX), 500);
        assert_eq!(ledger.outstanding(), 1000);
        assert_eq!(ledger.in_flight(), 500);
    }

    #[test]
    fn budget_caps_the_ask() {
        let mut ledger = DemandLedger::new(DemandBounds::default());
        assert_eq!(ledger.top_up(300), 300);
        assert_eq!(ledger.top_up(300), 300);
        assert_eq!(ledger.outstanding(), 600);
        assert_eq!(ledger.top_up(300), 0);
    }

    #[test]
    fn receiving_more_than_granted_is_flagged() {
        let mut ledger = DemandLedger::new(DemandBounds::new(10, 5).unwrap());
        ledger.top_up(usize::MAX);
        assert!(ledger.received(10));
        assert!(!ledger.received(1));
    }
}
