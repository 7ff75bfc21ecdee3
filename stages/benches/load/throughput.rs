//! Section 2: end-to-end throughput of the tweet pipeline: the emulator's
//! events replayed from memory (two streams) → `pipelines/tweets.toml` with
//! the logger at sleep 0 and output none → the null sink, the embedded
//! SQLite sink, and the same stages joined by hand-written bounded tokio
//! channels into the null sink (the baseline); and the SQLite sink's own
//! work alone (`e2e_sqlite_alone`): the sink stage's `write_batch` called in
//! a loop on the same tweets, pre-scored and batched by 200 (without the
//! retweet originals the pipeline also extracts), no pipeline beside it —
//! the most the embedded sink could store with the whole machine to itself.
//! `e2e_sqlite_sink` / `cpu_bound_ratio_vs_null_sink` puts the two together:
//! the SQLite variant needs at least the null variant's CPU per tweet (the
//! process's user and system time over the run) plus the sink alone's, so on
//! this machine's cores it can store at most `cores / (cpu_null + cpu_alone)`
//! tweets/s; that bound over the null sink's rate, per round.
//!
//! The events are rendered once before timing and served by the replay
//! server, so no run waits for the emulator's generator (whose own rate is
//! reported as `e2e_generator`). Each round runs the four variants in turn;
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
use stageflow_stages::storage::batcher::Batch;
use stageflow_stages::storage::null::NullSink;
use stageflow_stages::storage::sqlite::{DEFAULT_FILE, SqliteSink};
use stageflow_stages::storage::{SinkMetrics, SinkOptions, SinkStage};

use super::Settings;
use super::plot::{self, COLOURS};
use super::report::{Report, median};
use super::rss::cpu_seconds;
use super::scored::scored_batches;
use super::tweets::{SinkChoice, channel_baseline, emulator_config, tweet_pipeline};

/// Events per stream (two streams), before scaling.
const EVENTS_PER_STREAM: f64 = 100_000.0;
/// A run still going after this long is stopped and noted.
const RUN_CAP: Duration = Duration::from_secs(90);
/// Rounds of the variants.
const ROUNDS_VAR: &str = "STAGEFLOW_LOAD_ROUNDS";
/// Comma-separated variants to run (e.g. `e2e_null_sink` alone, to profile it); default all.
const VARIANTS_VAR: &str = "STAGEFLOW_LOAD_E2E_ONLY";
/// Rounds by default.
const DEFAULT_ROUNDS: usize = 5;
/// Events each baseline channel holds (batches of 200 for the sink's).
const BASELINE_CAPACITY: usize = 1000;
/// Tweets per batch, as tweets.toml's batcher.
const BATCH_SIZE: usize = 200;

/// What one run measured.
struct Measured {
    seconds: f64,
    /// Tweets the replay sent (and the pipeline took in).
    events: u64,
    /// Scored tweets the sink wrote, extracted retweet originals included.
    written: u64,
    /// CPU seconds the whole process used during the run, when `/proc` says.
    cpu_seconds: Option<f64>,
}

/// One variant of the section.
#[derive(Clone, Copy)]
enum Variant {
    /// tweets.toml into a sink.
    Stageflow(SinkChoice),
    /// The hand-written bounded channel pipeline into the null sink.
    Channels,
    /// The SQLite sink stage's work alone on pre-scored batches.
    SqliteAlone,
}

/// The variants, in the order each round runs them: (variant, bench name, plot label).
const VARIANTS: [(Variant, &str, &str); 4] = [
    (Variant::Stageflow(SinkChoice::Null), "e2e_null_sink", "stageflow, null sink"),
    (Variant::Stageflow(SinkChoice::Sqlite), "e2e_sqlite_sink", "stageflow, embedded SQLite sink"),
    (Variant::Channels, "e2e_channels_baseline", "bounded tokio channels, null sink"),
    (Variant::SqliteAlone, "e2e_sqlite_alone", "SQLite sink alone, no pipeline"),
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
    let selected = |bench: &str| only.as_ref().is_none_or(|only| only.iter().any(|name| name == bench));
    let alone =
        if selected("e2e_sqlite_alone") { scored_batches(&[1, 2], limit, BATCH_SIZE) } else { Vec::new() };
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
    let mut written: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
    let mut sqlite_ratios = Vec::new();
    let mut baseline_ratios = Vec::new();
    let mut alone_ratios = Vec::new();
    let mut bound_ratios = Vec::new();
    let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get()) as f64;
    for round in 1..=rounds {
        let mut this_round = Vec::new();
        let mut cpu_per_tweet = Vec::new();
        for (index, (variant, bench, _)) in VARIANTS.iter().enumerate() {
            if !selected(bench) {
                this_round.push(None);
                cpu_per_tweet.push(None);
                continue;
            }
            match runtime.block_on(measure(&replay, bench, *variant, &alone)) {
                Ok(measured) if measured.events == 2 * limit => {
                    let tweets_per_s = measured.events as f64 / measured.seconds;
                    let cpu = measured.cpu_seconds.map(|cpu| cpu / measured.events as f64);
                    let cpu_text =
                        cpu.map_or(String::new(), |cpu| format!(", {:.1} µs CPU per tweet", cpu * 1e6));
                    println!("round {round}: {bench} {tweets_per_s:.0} tweets/s{cpu_text}");
                    rates[index].push(tweets_per_s);
                    written[index].push(measured.written as f64 / measured.seconds);
                    this_round.push(Some(tweets_per_s));
                    cpu_per_tweet.push(cpu);
                }
                Ok(measured) => {
                    report.note(format!("{bench}: read {} of {} events", measured.events, 2 * limit));
                    this_round.push(None);
                    cpu_per_tweet.push(None);
                }
                Err(error) => {
                    report.note(format!("{bench}: {error}"));
                    this_round.push(None);
                    cpu_per_tweet.push(None);
                }
            }
        }
        if let [Some(null), sqlite, baseline, alone] = this_round[..] {
            sqlite_ratios.extend(sqlite.map(|sqlite| sqlite / null));
            baseline_ratios.extend(baseline.map(|baseline| null / baseline));
            alone_ratios.extend(alone.map(|alone| alone / null));
        }
        if let ([Some(null), ..], [Some(cpu_null), _, _, Some(cpu_alone)]) =
            (&this_round[..], &cpu_per_tweet[..])
        {
            let bound = cores / (cpu_null + cpu_alone);
            println!(
                "round {round}: CPU per tweet {:.1} µs (null sink) + {:.1} µs (SQLite alone): at most {bound:.0} tweets/s on {cores} cores",
                cpu_null * 1e6,
                cpu_alone * 1e6
            );
            bound_ratios.push(bound / null);
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
    report.spread("e2e_sqlite_alone", "ratio_vs_null_sink", &alone_ratios);
    report.spread("e2e_sqlite_sink", "cpu_bound_ratio_vs_null_sink", &bound_ratios);
    let path = settings.dir.join("throughput.svg");
    let title =
        format!("Tweet pipeline end to end: {} replayed tweets, median of {rounds} rounds", limit * 2);
    match plot::bars(&path, (900, 550), &title, "tweets/s (replay → sink, logger sleep 0)", &bars) {
        Ok(()) => report.plot_written(&path),
        Err(error) => report.note(format!("throughput.svg: {error}")),
    }
}

/// Runs `variant` once over every replayed event (`SqliteAlone`: over `alone`).
async fn measure(
    replay: &EmulatorHandle,
    bench: &str,
    variant: Variant,
    alone: &[Batch],
) -> Result<Measured, String> {
    let data = tempfile::tempdir().map_err(|error| error.to_string())?;
    let sent_before = events_sent(replay);
    let cpu_before = cpu_seconds("self", false);
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
        Variant::SqliteAlone => {
            let metrics = SinkMetrics::new();
            let sink = SqliteSink::new(data.path().join(DEFAULT_FILE));
            let mut stage = SinkStage::new(bench, sink, SinkOptions::default(), metrics.clone());
            let run = async {
                for batch in alone {
                    stage.write_batch(batch.tweets()).await;
                }
                stage.flush_engagements().await;
                Ok(())
            };
            (tokio::time::timeout(RUN_CAP, run).await, metrics)
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = cpu_before.zip(cpu_seconds("self", false)).map(|(before, after)| after - before);
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return Err(error),
        Err(_) => return Err(format!("did not finish within {RUN_CAP:?}")),
    }
    let counters = sink.counters();
    let events = match variant {
        Variant::SqliteAlone => alone.iter().map(|batch| batch.tweets().len() as u64).sum(),
        _ => events_sent(replay) - sent_before,
    };
    Ok(Measured {
        seconds,
        events,
        written: counters.tweets_inserted + counters.tweets_duplicate,
        cpu_seconds,
    })
}

/// Events the replay has sent on every connection so far.
fn events_sent(replay: &EmulatorHandle) -> u64 {
    replay.stats().connections.iter().map(|connection| connection.events_sent).sum()
}
