//! Restart policy and intensity: how many crashes a stage may have in a window
//! before its failure escalates to the pipeline.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What a supervisor does when a stage or worker panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Restart after a panic (`true`), or fail at the first panic (`false`).
    pub restart: bool,
    /// Most restarts allowed within `within`; one more escalates.
    pub max_restarts: usize,
    /// The sliding window restarts are counted in.
    pub within: Duration,
}

impl Default for RestartPolicy {
    /// OTP's default intensity: 3 restarts in 5 seconds.
    fn default() -> Self {
        RestartPolicy { restart: true, max_restarts: 3, within: Duration::from_secs(5) }
    }
}

impl RestartPolicy {
    /// Never restart: the first panic fails the stage.
    pub fn never() -> Self {
        RestartPolicy { restart: false, max_restarts: 0, within: Duration::ZERO }
    }

    /// Restart up to `max_restarts` times within `within`.
    pub fn intensity(max_restarts: usize, within: Duration) -> Self {
        RestartPolicy { restart: true, max_restarts, within }
    }
}

/// Counts restarts in the policy's sliding window.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    policy: RestartPolicy,
    recent: VecDeque<Instant>,
}

/// The restart limit was exceeded: the failure escalates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Escalation {
    /// Restarts seen in the window, including the one refused.
    pub restarts: usize,
    /// The policy that refused it.
    pub policy: RestartPolicy,
}

impl std::fmt::Display for Escalation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.policy.restart {
            return write!(f, "restart policy is never restart");
        }
        write!(
            f,
            "{} crashes within {:?} exceed the limit of {} restarts",
            self.restarts, self.policy.within, self.policy.max_restarts
        )
    }
}

impl RestartTracker {
    /// A tracker with no restarts yet.
    pub fn new(policy: RestartPolicy) -> Self {
        RestartTracker { policy, recent: VecDeque::new() }
    }

    /// Records a crash at `now`: Ok if a restart is allowed, Err to escalate.
    pub fn record(&mut self, now: Instant) -> Result<(), Escalation> {
        if !self.policy.restart {
            return Err(Escalation { restarts: 1, policy: self.policy });
        }
        while let Some(&oldest) = self.recent.front() {
            if now.duration_since(oldest) > self.policy.within {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        self.recent.push_back(now);
        if self.recent.len() > self.policy.max_restarts {
            return Err(Escalation { restarts: self.recent.len(), policy: self.policy });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_max_restarts_then_escalates() {
        let start = Instant::now();
        let mut tracker = RestartTracker::new(RestartPolicy::intensity(2, Duration::from_secs(5)));
        assert!(tracker.record(start).is_ok());
        assert!(tracker.record(start + Duration::from_secs(1)).is_ok());
        let escalation = tracker.record(start + Duration::from_secs(2)).unwrap_err();
        assert_eq!(escalation.restarts, 3);
    }

    #[test]
    fn old_restarts_leave_the_window() {
        let start = Instant::now();
        let mut tracker = RestartTracker::new(RestartPolicy::intensity(1, Duration::from_secs(5)));
        assert!(tracker.record(start).is_ok());
        assert!(tracker.record(start + Duration::from_secs(6)).is_ok());
        assert!(tracker.record(start + Duration::from_secs(7)).is_err());
    }

    #[test]
    fn never_escalates_at_once() {
        let mut tracker = RestartTracker::new(RestartPolicy::never());
        assert!(tracker.record(Instant::now()).is_err());
    }
}
