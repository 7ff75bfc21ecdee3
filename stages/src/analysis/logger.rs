//! The logger: prints each tweet's text, emulates work with a normally
//! distributed sleep, and crashes on a kill message so its supervisor
//! restarts it (unless told to ignore kill messages).

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use stageflow::{Consumer, Events};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::flow::TweetFlow;
use super::statistics::StatsHub;
use stageflow::config::{BuildContext, DispatcherChoices, Kind, StageDecl, configure, kind};
use stageflow::{Nothing, Pipeline, PoolConfig, RestartPolicy};

use super::flow::{check_selectors, tweet_flow_selector};
use crate::settings::a_period;

/// The panic message of a logger that took a kill message.
pub const KILL_PANIC: &str = "logger: kill message received";

/// Where the logger writes its lines.
#[derive(Debug, Clone)]
pub enum OutputTarget {
    /// Standard output (the default).
    Stdout,
    /// Standard error.
    Stderr,
    /// Nowhere (benchmarks).
    Discard,
    /// A bounded channel, e.g. a telnet session's writer: the logger waits
    /// for room, so a slow reader slows the logger down; lines for a closed
    /// channel are discarded.
    Channel(mpsc::Sender<String>),
}

impl OutputTarget {
    /// The target a pipeline file names: `stdout`, `stderr` or `none`.
    pub fn named(name: &str) -> Result<OutputTarget, String> {
        match name {
            "stdout" => Ok(OutputTarget::Stdout),
            "stderr" => Ok(OutputTarget::Stderr),
            "none" => Ok(OutputTarget::Discard),
            other => Err(format!("`output` must be \"stdout\", \"stderr\" or \"none\", got \"{other}\"")),
        }
    }

    async fn write(&self, line: String) {
        match self {
            // A closed stdout (`| head`) must not crash the logger: write errors are ignored.
            OutputTarget::Stdout => {
                let _ = writeln!(std::io::stdout().lock(), "{line}");
            }
            OutputTarget::Stderr => {
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
            OutputTarget::Discard => {}
            OutputTarget::Channel(sender) => {
                let _ = sender.send(line).await;
            }
        }
    }
}

/// The longest emulated work a logger accepts, ms (one hour).
pub const MAX_SLEEP_MS: f64 = 3_600_000.0;

/// The emulated work: a normally distributed sleep, kept within mean ± 3σ and above 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkSleep {
    /// Mean, ms; 0 disables the sleep.
    pub mean_ms: f64,
    /// Standard deviation, ms; 0 sleeps exactly the mean.
    pub std_dev_ms: f64,
}

impl Default for WorkSleep {
    /// 275 ± 75 ms: 50–500 ms within three standard deviations.
    fn default() -> Self {
        WorkSleep { mean_ms: 275.0, std_dev_ms: 75.0 }
    }
}

impl WorkSleep {
    /// No sleep at all.
    pub fn none() -> Self {
        WorkSleep { mean_ms: 0.0, std_dev_ms: 0.0 }
    }

    /// Checks that both numbers are finite and not negative.
    pub fn validate(&self) -> Result<(), String> {
        if !self.mean_ms.is_finite() || self.mean_ms < 0.0 {
            return Err(format!("`sleep_mean_ms` must be 0 or more, got {}", self.mean_ms));
        }
        if !self.std_dev_ms.is_finite() || self.std_dev_ms < 0.0 {
            return Err(format!("`sleep_std_dev_ms` must be 0 or more, got {}", self.std_dev_ms));
        }
        if self.bounds_ms().1 > MAX_SLEEP_MS {
            return Err(format!(
                "the sleep may reach `sleep_mean_ms` + 3 × `sleep_std_dev_ms` = {} ms; at most {MAX_SLEEP_MS} ms (1 h)",
                self.bounds_ms().1
            ));
        }
        Ok(())
    }

    /// The shortest and longest sleep it draws, ms.
    pub fn bounds_ms(&self) -> (f64, f64) {
        if self.mean_ms <= 0.0 {
            return (0.0, 0.0);
        }
        ((self.mean_ms - 3.0 * self.std_dev_ms).max(0.0), self.mean_ms + 3.0 * self.std_dev_ms)
    }

    /// Draws one sleep.
    pub fn sample(&self, rng: &mut impl Rng) -> Duration {
        let (low, high) = self.bounds_ms();
        if high <= 0.0 {
            return Duration::ZERO;
        }
        let drawn = match Normal::new(self.mean_ms, self.std_dev_ms) {
            Ok(normal) if self.std_dev_ms > 0.0 => normal.sample(rng),
            _ => self.mean_ms,
        };
        // max/min skip NaN; the cap keeps a sleep that `validate` would refuse from overflowing.
        let ms = drawn.max(low).min(high).min(MAX_SLEEP_MS);
        if ms.is_nan() || ms <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(ms / 1000.0)
    }
}

/// What a logger does, shared by its workers and their restarts.
#[derive(Debug, Clone)]
pub struct LoggerConfig {
    /// Where lines go.
    pub output: OutputTarget,
    /// The emulated work per tweet.
    pub sleep: WorkSleep,
    /// Skip kill messages instead of crashing on them.
    pub ignore_kill_messages: bool,
    /// Where the time per tweet is recorded, for the statistics.
    pub hub: Option<Arc<StatsHub>>,
}

impl Default for LoggerConfig {
    fn default() -> Self {
        LoggerConfig {
            output: OutputTarget::Stdout,
            sleep: WorkSleep::default(),
            ignore_kill_messages: false,
            hub: None,
        }
    }
}

/// The line printed for a tweet: its text on one line.
pub fn log_line(text: &str) -> String {
    text.split(['\r', '\n']).filter(|part| !part.is_empty()).collect::<Vec<_>>().join(" ")
}

/// The logger stage: one per worker of its pool.
#[derive(Debug)]
pub struct Logger {
    config: LoggerConfig,
    rng: SmallRng,
}

impl Logger {
    /// A logger with its own random sleeps.
    pub fn new(config: LoggerConfig) -> Self {
        Logger { config, rng: SmallRng::from_rng(&mut rand::rng()) }
    }
}

impl Consumer for Logger {
    type In = TweetFlow;

    async fn handle_events(&mut self, events: &mut Events<TweetFlow>) {
        for event in events {
            let tweet = match event {
                TweetFlow::Tweet(tweet) => tweet,
                TweetFlow::Kill if self.config.ignore_kill_messages => continue,
                TweetFlow::Kill => {
                    if let Some(hub) = &self.config.hub {
                        hub.record_logger_crash();
                    }
                    // On purpose: the supervisor restarts this worker and counts it.
                    panic!("{KILL_PANIC}");
                }
            };
            let started = Instant::now();
            if !matches!(self.config.output, OutputTarget::Discard) {
                self.config.output.write(log_line(&tweet.tweet.text)).await;
            }
            let sleep = self.config.sleep.sample(&mut self.rng);
            if !sleep.is_zero() {
                tokio::time::sleep(sleep).await;
            }
            if let Some(hub) = &self.config.hub {
                hub.logger_timings().record(started.elapsed());
            }
        }
    }
}

/// A build resource: when present, every logger of the pipeline writes here,
/// whatever its `output` setting says (`stageflow serve` routes the lines to
/// its sessions this way).
#[derive(Debug, Clone)]
pub struct LoggerOutput(pub OutputTarget);

/// The logger's pool when the file sets no `workers`.
pub const DEFAULT_LOGGER_WORKERS: (usize, usize) = (1, 5000);

/// prints each tweet's text, sleeps to emulate work, crashes on a kill message (restarted by its supervisor); an autoscaled pool by default
#[kind("logger", TweetFlow -> Nothing)]
pub struct LoggerKind {
    /// "stdout" (default), "stderr" or "none"
    #[default("stdout")]
    output: String,
    /// mean emulated work per tweet, normally distributed within ±3σ (default 275; 0 disables)
    #[default(WorkSleep::default().mean_ms)]
    sleep_mean_ms: f64,
    /// its standard deviation (default 75: 50–500 ms)
    #[default(WorkSleep::default().std_dev_ms)]
    sleep_std_dev_ms: f64,
    /// skip kill messages instead of crashing on them (default false)
    #[serde(default)]
    ignore_kill_messages: bool,
    /// crashes a worker may have within restart_window_ms before the pipeline fails (default 100)
    #[default(100)]
    max_restarts: usize,
    /// the window of max_restarts (default 5000)
    #[default(5000)]
    restart_window_ms: u64,
}

impl LoggerKind {
    fn sleep(&self) -> WorkSleep {
        WorkSleep { mean_ms: self.sleep_mean_ms, std_dev_ms: self.sleep_std_dev_ms }
    }
}

impl Kind for LoggerKind {
    fn check(&self, stage: &StageDecl) -> Result<(), String> {
        OutputTarget::named(&self.output)?;
        self.sleep().validate()?;
        a_period("restart_window_ms", self.restart_window_ms)?;
        check_selectors(stage)
    }

    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, context: &BuildContext) -> Result<(), String> {
        let output = match context.resources.get::<LoggerOutput>() {
            Some(routed) => routed.0.clone(),
            None => OutputTarget::named(&self.output)?,
        };
        let logger = LoggerConfig {
            output,
            sleep: self.sleep(),
            ignore_kill_messages: self.ignore_kill_messages,
            hub: Some(StatsHub::of(context)),
        };
        let config = pipeline.consumer(&stage.id, move || Logger::new(logger.clone()));
        let (min, max) = DEFAULT_LOGGER_WORKERS;
        config.workers(PoolConfig::autoscaled(min, max)).restart(RestartPolicy::intensity(
            self.max_restarts,
            Duration::from_millis(self.restart_window_ms),
        ));
        configure(stage, config, &DispatcherChoices::demand_only(), Some(&tweet_flow_selector))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng() -> SmallRng {
        SmallRng::seed_from_u64(42)
    }

    #[test]
    fn the_default_sleep_stays_within_fifty_to_five_hundred_ms_around_its_mean() {
        let sleep = WorkSleep::default();
        let mut rng = rng();
        let samples: Vec<f64> = (0..20_000).map(|_| sleep.sample(&mut rng).as_secs_f64() * 1000.0).collect();
        assert!(samples.iter().all(|ms| (50.0..=500.0).contains(ms)));
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        assert!((mean - 275.0).abs() < 3.0, "mean {mean}");
        let variance = samples.iter().map(|ms| (ms - mean).powi(2)).sum::<f64>() / samples.len() as f64;
        assert!((variance.sqrt() - 75.0).abs() < 3.0, "σ {}", variance.sqrt());
        assert!(samples.iter().any(|ms| *ms < 100.0) && samples.iter().any(|ms| *ms > 450.0));
    }

    #[test]
    fn a_zero_mean_disables_the_sleep_and_a_zero_deviation_is_exact() {
        let mut rng = rng();
        assert_eq!(WorkSleep::none().sample(&mut rng), Duration::ZERO);
        assert_eq!(WorkSleep { mean_ms: 0.0, std_dev_ms: 50.0 }.sample(&mut rng), Duration::ZERO);
        let exact = WorkSleep { mean_ms: 20.0, std_dev_ms: 0.0 };
        assert_eq!(exact.sample(&mut rng), Duration::from_millis(20));
        let wide = WorkSleep { mean_ms: 10.0, std_dev_ms: 100.0 };
        assert!((0..1000).all(|_| wide.sample(&mut rng) <= Duration::from_millis(310)));
    }

    #[test]
    fn negative_or_non_finite_sleeps_are_rejected() {
        assert!(
            WorkSleep { mean_ms: -1.0, std_dev_ms: 0.0 }.validate().unwrap_err().contains("sleep_mean_ms")
        );
        assert!(WorkSleep { mean_ms: 1.0, std_dev_ms: f64::NAN }.validate().unwrap_err().contains("std_dev"));
        assert!(WorkSleep::default().validate().is_ok());
        let huge = WorkSleep { mean_ms: 1e300, std_dev_ms: 0.0 };
        assert!(huge.validate().unwrap_err().contains("at most"));
        assert_eq!(huge.sample(&mut rng()), Duration::from_secs(3600), "capped, never a panic");
        assert_eq!(WorkSleep { mean_ms: f64::NAN, std_dev_ms: f64::NAN }.sample(&mut rng()), Duration::ZERO);
        assert!(
            WorkSleep { mean_ms: 5.0, std_dev_ms: f64::INFINITY }.sample(&mut rng())
                <= Duration::from_secs(3600)
        );
    }

    #[test]
    fn a_tweet_is_logged_on_one_line() {
        assert_eq!(log_line("hello"), "hello");
        assert_eq!(log_line("two\nlines\r\nhere"), "two lines here");
        assert_eq!(log_line("😀 émoji"), "😀 émoji");
        assert_eq!(log_line(""), "");
    }

    #[test]
    fn output_targets_are_named() {
        assert!(matches!(OutputTarget::named("stdout"), Ok(OutputTarget::Stdout)));
        assert!(matches!(OutputTarget::named("none"), Ok(OutputTarget::Discard)));
        assert!(OutputTarget::named("telnet").unwrap_err().contains("\"stdout\", \"stderr\" or \"none\""));
    }
}
