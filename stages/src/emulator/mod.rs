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
pub mod server;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

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
const DEFAULT_KILL_RATIO: f64 = 0.002;

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

/// Serves emulated tweet streams over HTTP (server-sent events).
///
/// Example: stageflow emulate --addr 127.0.0.1:4000 --rate max --seed 7 --limit 100000
#[derive(Args, Debug, Clone)]
pub struct EmulateArgs {
    /// Address to listen on, HOST:PORT (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:4000")]
    pub addr: String,
    /// Events per second per stream: a number, or `max` (as fast as the client reads).
    /// Unset: the rate varies between --rate-low and --rate-high.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<Rate>,
    /// Lowest rate, events per second, when the rate varies.
    #[arg(long, default_value_t = 100.0)]
    pub rate_low: f64,
    /// Highest rate, events per second, when the rate varies.
    #[arg(long, default_value_t = 2000.0)]
    pub rate_high: f64,
    /// Seconds each varying rate lasts before the next is drawn.
    #[arg(long, default_value_t = 3.0)]
    pub rate_period: f64,
    /// Seed of every generated event: the same seed serves the same tweets.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// End each stream after this many events (a reconnect past the end gets 204 No Content).
    #[arg(long)]
    pub limit: Option<u64>,
    /// Share of events that are the kill message `{"message": panic}`, 0 to 1.
    #[arg(long, default_value_t = DEFAULT_KILL_RATIO)]
    pub kill_ratio: f64,
    /// Share of events that are broken JSON, 0 to 1 (to test receivers).
    #[arg(long, default_value_t = 0.0)]
    pub malformed_ratio: f64,
    /// Close each connection after this many events, to exercise client reconnects.
    #[arg(long)]
    pub close_after: Option<u64>,
}

/// Reads `--rate`: a positive number of events per second, or `max`.
fn parse_rate(text: &str) -> Result<Rate, String> {
    if text.eq_ignore_ascii_case("max") {
        return Ok(Rate::Max);
    }
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(Rate::Fixed(rate)),
        _ => Err(format!("expected a positive number of events per second or 'max', got '{text}'")),
    }
}

impl EmulateArgs {
    /// The emulator settings these flags describe, checked.
    pub fn config(&self) -> Result<EmulatorConfig, String> {
        let period = Duration::try_from_secs_f64(self.rate_period).map_err(|_| {
            format!("--rate-period must be a positive number of seconds, got {}", self.rate_period)
        })?;
        let config = EmulatorConfig {
            rate: self.rate.unwrap_or(Rate::Varying { low: self.rate_low, high: self.rate_high, period }),
            seed: self.seed,
            limit: self.limit,
            kill_ratio: self.kill_ratio,
            malformed_ratio: self.malformed_ratio,
            close_after: self.close_after,
        };
        config.validate()?;
        Ok(config)
    }
}

/// Runs `stageflow emulate` until Ctrl-C.
pub async fn run_emulate(args: EmulateArgs) -> Result<(), String> {
    let config = args.config()?;
    let description = describe(&config);
    let handle = start_emulator(&args.addr, config).await?;
    let addr: SocketAddr = handle.addr();
    println!("stageflow emulate: serving {description}");
    println!("  tweets:   http://{addr}/tweets/1  http://{addr}/tweets/2");
    println!("  lexicon:  http://{addr}/emotion_values");
    println!("  stats:    http://{addr}/stats");
    println!("Ctrl-C stops it.");
    tokio::signal::ctrl_c().await.map_err(|error| format!("cannot wait for Ctrl-C: {error}"))?;
    handle.stop().await;
    Ok(())
}

/// One line saying what the emulator serves.
fn describe(config: &EmulatorConfig) -> String {
    let rate = match config.rate {
        Rate::Max => "as fast as clients read".to_string(),
        Rate::Fixed(rate) => format!("{rate} events/s per stream"),
        Rate::Varying { low, high, period } => {
            format!("{low}–{high} events/s per stream, changing every {:.1}s", period.as_secs_f64())
        }
    };
    let limit = config.limit.map(|limit| format!(", {limit} events per stream")).unwrap_or_default();
    format!("{rate}, seed {}{limit}, kill ratio {}", config.seed, config.kill_ratio)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: EmulateArgs,
    }

    fn parse(flags: &[&str]) -> Result<EmulatorConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("emulate").chain(flags.iter().copied()))
            .map_err(|error| error.to_string())?;
        cli.args.config()
    }

    #[test]
    fn the_defaults_vary_the_rate_between_100_and_2000() {
        let config = parse(&[]).unwrap();
        assert_eq!(config, EmulatorConfig::default());
        assert_eq!(config.rate, Rate::Varying { low: 100.0, high: 2000.0, period: Duration::from_secs(3) });
    }

    #[test]
    fn rate_takes_a_number_or_max() {
        assert_eq!(parse(&["--rate", "max"]).unwrap().rate, Rate::Max);
        assert_eq!(parse(&["--rate", "250"]).unwrap().rate, Rate::Fixed(250.0));
        let error = parse(&["--rate", "fast"]).unwrap_err();
        assert!(error.contains("'fast'"), "{error}");
        assert!(parse(&["--rate", "0"]).is_err());
    }

    #[test]
    fn bad_settings_are_named() {
        let error = parse(&["--kill-ratio", "1.5"]).unwrap_err();
        assert!(error.contains("kill ratio must be between 0 and 1, got 1.5"), "{error}");
        let error = parse(&["--rate-low", "500", "--rate-high", "100"]).unwrap_err();
        assert!(error.contains("0 < low <= high, got 500..100"), "{error}");
        let error = parse(&["--rate-period=-1"]).unwrap_err();
        assert!(error.contains("--rate-period"), "{error}");
        let error = parse(&["--kill-ratio", "0.6", "--malformed-ratio", "0.6"]).unwrap_err();
        assert!(error.contains("add up to"), "{error}");
        assert!(parse(&["--close-after", "0"]).unwrap_err().contains("close-after"));
    }
}
