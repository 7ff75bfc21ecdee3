//! `stageflow emulate`: the tweet source the pipeline reads, as an HTTP server.
//!
//! - `GET /tweets/1` … `/tweets/16`: `text/event-stream`, one event per
//!   tweet, `id: <sequence>` then `data: {"message":{"tweet":{...}}}`; now
//!   and then the kill message `data: {"message": panic}`. Each stream has
//!   its own sequence, from 1; a request with `Last-Event-ID: N` resumes at
//!   N + 1. With a `limit`, a stream ends after that many events, and a
//!   request past the end gets `204 No Content` (SSE's "do not reconnect").
//! - `GET /emotion_values`: the VADER sentiment lexicon that ships with the
//!   `vader_sentiment` crate, one `word<TAB>score` line per entry.
//! - `GET /stats`: per connection that asked for a stream, the events handed
//!   to HTTP and the bytes written to the socket, as JSON — a stalled reader
//!   shows as counts that stop growing.
//!
//! Every event is a pure function of (seed, stream, sequence), so runs are
//! reproducible; see [`generator`].

pub mod generator;
pub mod replay;
pub mod server;

use std::time::Duration;

pub use replay::{RenderedStream, start_replay};
pub use server::{ConnectionSnapshot, EmulatorHandle, EmulatorStats, start_emulator};

/// How fast each stream sends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// As fast as the client reads.
    Max,
    /// This many events per second.
    Fixed(f64),
    /// A rate drawn (log-uniformly, from the seed) between `low` and `high` events per second, anew every `period`.
    Varying {
        /// The lowest rate, events per second.
        low: f64,
        /// The highest rate, events per second.
        high: f64,
        /// How long each drawn rate lasts.
        period: Duration,
    },
}

/// What the emulator serves.
#[derive(Debug, Clone, PartialEq)]
pub struct EmulatorConfig {
    /// How fast each stream sends.
    pub rate: Rate,
    /// The seed every event derives from.
    pub seed: u64,
    /// Each stream ends after this many events (`None`: never).
    pub limit: Option<u64>,
    /// Share of events that are the kill message, 0 to 1.
    pub kill_ratio: f64,
    /// Share of events that are broken JSON, 0 to 1.
    pub malformed_ratio: f64,
    /// Each connection is closed after this many events, to exercise reconnects (`None`: never).
    pub close_after: Option<u64>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            rate: Rate::Varying { low: 100.0, high: 2000.0, period: Duration::from_secs(3) },
            seed: 0,
            limit: None,
            kill_ratio: DEFAULT_KILL_RATIO,
            malformed_ratio: 0.0,
            close_after: None,
        }
    }
}

/// One kill message in 500 events, by default.
pub const DEFAULT_KILL_RATIO: f64 = 0.002;

impl EmulatorConfig {
    /// Every problem with the settings, as one message naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        for (name, ratio) in [("kill ratio", self.kill_ratio), ("malformed ratio", self.malformed_ratio)] {
            if !(0.0..=1.0).contains(&ratio) {
                problems.push(format!("the {name} must be between 0 and 1, got {ratio}"));
            }
        }
        if self.kill_ratio + self.malformed_ratio > 1.0 {
            problems.push(format!(
                "the kill and malformed ratios add up to {}, more than 1",
                self.kill_ratio + self.malformed_ratio
            ));
        }
        match self.rate {
            Rate::Max => {}
            Rate::Fixed(rate) if rate.is_finite() && rate > 0.0 => {}
            Rate::Fixed(rate) => {
                problems.push(format!("the rate must be a positive number or 'max', got {rate}"))
            }
            Rate::Varying { low, high, period } => {
                if !(low.is_finite() && high.is_finite() && low > 0.0 && low <= high) {
                    problems.push(format!("the rate range must satisfy 0 < low <= high, got {low}..{high}"));
                }
                if period.is_zero() {
                    problems.push("the rate period must be longer than 0 s".to_string());
                }
            }
        }
        if self.close_after == Some(0) {
            problems.push("close-after must be at least 1 event".to_string());
        }
        if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
    }
}
