//! Section 2: end-to-end throughput of the tweet pipeline, emulator at max,
//! logger sleep 0, into the null sink and into the embedded SQLite store.
//!
//! `tweets_per_s` counts the tweets the emulator sent over the time until
//! the pipeline had written the last of them and ended; the sink also
//! writes the originals extracted from retweets (`scored_tweets_written`).

use std::time::{Duration, Instant};

use stageflow_stages::emulator::start_emulator;

use super::Settings;
use super::plot::{self, COLOURS};
use super::report::Report;
use super::tweets::{SinkChoice, emulator_config, tweet_pipeline};

/// Events per stream (two streams), before scaling.
const EVENTS_PER_STREAM: f64 = 100_000.0;
/// A run still going after this long is stopped and noted.
const RUN_CAP: Duration = Duration::from_secs(90);

/// What one run measured.
struct Measured {
    seconds: f64,
    /// Tweets the emulator sent (and the pipeline took in).
    events: u64,
    /// Scored tweets the sink wrote, extracted retweet originals included.
    written: u64,
}

/// Runs the pipeline into each sink, records tweets/s and draws `throughput.svg`.
pub fn run(runtime: &tokio::runtime::Runtime, settings: &Settings, report: &mut Report) {
    let limit = settings.scaled(EVENTS_PER_STREAM);
    println!(
        "== 2. end-to-end throughput: emulator at max, {limit} events per stream (2 streams), logger sleep 0"
    );
    let mut bars = Vec::new();
    for (index, (sink, bench, label)) in [
        (SinkChoice::Null, "e2e_null_sink", "null sink"),
        (SinkChoice::Sqlite, "e2e_sqlite_sink", "embedded SQLite sink"),
    ]
    .into_iter()
    .enumerate()
    {
        println!("{bench} …");
        match runtime.block_on(measure(bench, sink, limit)) {
            Ok(measured) => {
                let tweets_per_s = measured.events as f64 / measured.seconds;
                report.figure(bench, "tweets_per_s", tweets_per_s);
                report.figure(
                    bench,
                    "scored_tweets_written_per_s",
                    measured.written as f64 / measured.seconds,
                );
                report.figure(bench, "tweets_received", measured.events as f64);
                report.figure(bench, "scored_tweets_written", measured.written as f64);
                report.figure(bench, "seconds", measured.seconds);
                bars.push((label.to_string(), tweets_per_s, COLOURS[index]));
            }
            Err(error) => report.note(format!("{bench}: {error}")),
        }
    }
    if let [null, sqlite] = bars.as_slice() {
        report.figure("e2e_sqlite_sink", "ratio_vs_null_sink", sqlite.1 / null.1);
    }
    let path = settings.dir.join("throughput.svg");
    let title = format!("Tweet pipeline end to end: {} tweets from the emulator at max", limit * 2);
    match plot::bars(&path, (900, 550), &title, "tweets/s (emulator → sink, logger sleep 0)", &bars) {
        Ok(()) => report.plot_written(&path),
        Err(error) => report.note(format!("throughput.svg: {error}")),
    }
}

/// Runs the pipeline once into `sink` with `limit` events per stream.
async fn measure(bench: &str, sink: SinkChoice, limit: u64) -> Result<Measured, String> {
    let emulator = start_emulator("127.0.0.1:0", emulator_config(limit)).await?;
    let data = tempfile::tempdir().map_err(|error| error.to_string())?;
    let name = format!("load-{bench}");
    let built = tweet_pipeline(&name, &emulator.url(""), data.path(), sink)?;
    let started = Instant::now();
    let mut running = built.pipeline.start().map_err(|error| error.to_string())?;
    let outcome = tokio::time::timeout(RUN_CAP, running.wait()).await;
    let seconds = started.elapsed().as_secs_f64();
    let stats = emulator.stats();
    let events = stats.connections.iter().map(|connection| connection.events_sent).sum();
    emulator.stop().await;
    match outcome {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => return Err(error.to_string()),
        Err(_) => {
            running.shutdown();
            return Err(format!("did not finish within {RUN_CAP:?}"));
        }
    }
    let counters = built.sink.counters();
    Ok(Measured { seconds, events, written: counters.tweets_inserted + counters.tweets_duplicate })
}
