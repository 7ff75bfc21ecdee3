//! Section 2: end-to-end throughput of the tweet pipeline: the emulator's
//! events replayed from memory (two streams) → `pipelines/tweets.toml` with
//! the logger at sleep 0 and output none → the null sink, the embedded
//! SQLite sink, and the same stages joined by hand-written bounded tokio
//! channels into the null sink (the baseline).
//!
//! The events are rendered once before timing and served by the replay
//! server, so no run waits for the emulator's generator (whose own rate is
//! reported as `e2e_generator`). Each round runs the three variants in turn;
//! `STAGEFLOW_LOAD_ROUNDS` rounds (default 5), and every figure is the median
//! over them with `_min` and `_max`. Ratios are taken within a round.
//! `STAGEFLOW_LOAD_E2E_ONLY=e2e_null_sink` runs only the named variants (to profile one).
//!
//! `tweets_per_s` counts the events the replay served (every one a tweet:
//! no kill messages) over the time until the pipeline had written the last
//! of them and ended; the sink also writes the originals extracted from
//! retweets (`scored_tweets_written`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use stageflow_stages::emulator::generator::{TweetGenerator, Vocabulary};
use stageflow_stages::emulator::{EmulatorHandle, RenderedStream, start_replay};
use stageflow_stages::storage::SinkMetrics;
use stageflow_stages::storage::null::NullSink;

use super::Settings;
use super::plot::{self, COLOURS};
use super::report::{Report, median};
use super::tweets::{SinkChoice, channel_baseline, emulator_config, tweet_pipeline};

/// Events per stream (two streams), before scaling.
const EVENTS_PER_STREAM: f64 = 100_000.0;
/// A run still going after this long is stopped and noted.
const RUN_CAP: Duration = Duration::from_secs(90);
/// Rounds of the three variants.
const ROUNDS_VAR: &str = "STAGEFLOW_LOAD_ROUNDS";
/// Comma-separated variants to run (e.g. `e2e_null_sink` alone, to profile it); default all.
const VARIANTS_VAR: &str = "STAGEFLOW_LOAD_E2E_ONLY";
/// Rounds by default.
const DEFAULT_ROUNDS: usize = 5;
/// Events each baseline channel holds (batches of 200 for the sink's).
const BASELINE_CAPACITY: usize = 1000;

/// What one run measured.
struct Measured {
    seconds: f64,
    /// Tweets the replay sent (and the pipeline took in).
    events: u64,
    /// Scored tweets the sink wrote, extracted retweet originals included.
    written: u64,
}

/// One variant of the section.
#[derive(Clone, Copy)]
enum Variant {
    /// tweets.toml into a sink.
    Stageflow(SinkChoice),
    /// The hand-written bounded channel pipeline into the null sink.
    Channels,
}

/// The variants, in the order each round runs them: (variant, bench name, plot label).
const VARIANTS: [(Variant, &str, &str); 3] = [
    (Variant::Stageflow(SinkChoice::Null), "e2e_null_sink", "stageflow, null sink"),
    (Variant::Stageflow(SinkChoice::Sqlite), "e2e_sqlite_sink", "stageflow, embedded SQLite sink"),
    (Variant::Channels, "e2e_channels_baseline", "bounded tokio channels, null sink"),
];

/// Runs every variant each round, records tweets/s and draws `throughput.svg`.
pub fn run(runtime: &tokio::runtime::Runtime, settings: &Settings, report: &mut Report) {
    let limit = settings.scaled(EVENTS_PER_STREAM);
    let rounds = std::env::var(ROUNDS_VAR)
        .ok()
        .map(|text| {
            text.trim().parse::<usize>().unwrap_or_else(|_| panic!("{ROUNDS_VAR}: not a count: {text}"))
        })
        .unwrap_or(DEFAULT_ROUNDS)
        .max(1);
    println!(
        "== 2. end-to-end throughput: {limit} replayed events per stream (2 streams), logger sleep 0, {rounds} rounds"
    );
    let only: Option<Vec<String>> = std::env::var(VARIANTS_VAR)
        .ok()
        .map(|list| list.split(',').map(|name| name.trim().to_string()).collect());
    let config = emulator_config(limit);
    let generator =
        TweetGenerator::new(config.seed, config.kill_ratio, config.malformed_ratio, Vocabulary::shipped());
    let rendering = Instant::now();
    let streams: Vec<RenderedStream> =
        (1..=2).map(|stream| RenderedStream::render(&generator, stream, limit)).collect();
    report.figure("e2e_generator", "events_per_s", (2 * limit) as f64 / rendering.elapsed().as_secs_f64());
    let replay = match runtime.block_on(start_replay("127.0.0.1:0", streams)) {
        Ok(replay) => Arc::new(replay),
        Err(error) => return report.note(format!("throughput: the replay did not start: {error}")),
    };
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
    let mut written: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
    let mut sqlite_ratios = Vec::new();
    let mut baseline_ratios = Vec::new();
    for round in 1..=rounds {
        let mut this_round = Vec::new();
        for (index, (variant, bench, _)) in VARIANTS.iter().enumerate() {
            if only.as_ref().is_some_and(|only| !only.iter().any(|name| name == bench)) {
                this_round.push(None);
                continue;
            }
            match runtime.block_on(measure(&replay, bench, *variant)) {
                Ok(measured) if measured.events == 2 * limit => {
                    let tweets_per_s = measured.events as f64 / measured.seconds;
                    println!("round {round}: {bench} {tweets_per_s:.0} tweets/s");
                    rates[index].push(tweets_per_s);
                    written[index].push(measured.written as f64 / measured.seconds);
                    this_round.push(Some(tweets_per_s));
                }
                Ok(measured) => {
                    report.note(format!("{bench}: read {} of {} events", measured.events, 2 * limit));
                    this_round.push(None);
                }
                Err(error) => {
                    report.note(format!("{bench}: {error}"));
                    this_round.push(None);
                }
            }
        }
        if let [Some(null), sqlite, baseline] = this_round[..] {
            sqlite_ratios.extend(sqlite.map(|sqlite| sqlite / null));
            baseline_ratios.extend(baseline.map(|baseline| null / baseline));
        }
    }
    let mut bars = Vec::new();
    for (index, (_, bench, label)) in VARIANTS.iter().enumerate() {
        report.spread(bench, "tweets_per_s", &rates[index]);
        report.spread(bench, "scored_tweets_written_per_s", &written[index]);
        if let Some(median) = median(&rates[index]) {
            bars.push((label.to_string(), median, COLOURS[index]));
        }
    }
    report.figure("e2e", "tweets_received_per_run", (2 * limit) as f64);
    report.spread("e2e_sqlite_sink", "ratio_vs_null_sink", &sqlite_ratios);
    report.spread("e2e_null_sink", "ratio_vs_channels_baseline", &baseline_ratios);
    let path = settings.dir.join("throughput.svg");
    let title =
        format!("Tweet pipeline end to end: {} replayed tweets, median of {rounds} rounds", limit * 2);
    match plot::bars(&path, (900, 550), &title, "tweets/s (replay → sink, logger sleep 0)", &bars) {
        Ok(()) => report.plot_written(&path),
        Err(error) => report.note(format!("throughput.svg: {error}")),
    }
}

/// Runs `variant` once over every replayed event.
async fn measure(replay: &EmulatorHandle, bench: &str, variant: Variant) -> Result<Measured, String> {
    let data = tempfile::tempdir().map_err(|error| error.to_string())?;
    let sent_before = events_sent(replay);
    let started = Instant::now();
    let (outcome, sink) = match variant {
        Variant::Stageflow(sink) => {
            let built = tweet_pipeline(&format!("load-{bench}"), &replay.url(""), data.path(), sink)?;
            let mut running = built.pipeline.start().map_err(|error| error.to_string())?;
            let outcome = tokio::time::timeout(RUN_CAP, running.wait()).await;
            if outcome.is_err() {
                running.shutdown();
            }
            (outcome.map(|ended| ended.map(|_| ()).map_err(|error| error.to_string())), built.sink)
        }
        Variant::Channels => {
            let metrics = SinkMetrics::new();
            let url = replay.url("");
            let run = channel_baseline(&url, data.path(), BASELINE_CAPACITY, NullSink, metrics.clone());
            (tokio::time::timeout(RUN_CAP, run).await, metrics)
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return Err(error),
        Err(_) => return Err(format!("did not finish within {RUN_CAP:?}")),
    }
    let counters = sink.counters();
    Ok(Measured {
        seconds,
        events: events_sent(replay) - sent_before,
        written: counters.tweets_inserted + counters.tweets_duplicate,
    })
}

/// Events the replay has sent on every connection so far.
fn events_sent(replay: &EmulatorHandle) -> u64 {
    replay.stats().connections.iter().map(|connection| connection.events_sent).sum()
}
