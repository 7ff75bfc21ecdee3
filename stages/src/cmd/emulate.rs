//! `stageflow emulate`: the tweet emulator as a process, from its flags.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::emulator::{DEFAULT_KILL_RATIO, EmulatorConfig, Rate, start_emulator};

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
