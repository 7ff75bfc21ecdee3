//! The one retry backoff of every part that reconnects or retries: the SSE
//! receiver, the sinks, the broker stages and the cut edges.

use std::time::Duration;

/// The wait before attempt `attempt` after as many failures (1, 2, …):
/// `initial`, doubling each time, at most `max`; no wait before the first (0).
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    if attempt == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32.checked_shl(attempt - 1).unwrap_or(u32::MAX);
    initial.saturating_mul(factor).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_initial_wait_up_to_the_maximum() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let waits: Vec<u128> = (0..10).map(|attempt| backoff(attempt, initial, max).as_millis()).collect();
        assert_eq!(waits, [0, 100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(backoff(33, initial, max), max, "past 2^31 the factor saturates");
        assert_eq!(backoff(u32::MAX, initial, max), max);
    }
}
