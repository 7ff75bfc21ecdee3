//! The `stageflow` command: runs pipelines described in TOML files.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use stageflow::ops::{ForEach, FromIter, Map};
use stageflow::{Pipeline, StageSnapshot, SubscribeOptions};
use stageflow_stages::demo::parse_demo;

/// stageflow: demand-driven dataflow pipelines.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a pipeline file until its source ends or Ctrl-C, then prints a summary.
    ///
    /// Example: stageflow run pipelines/demo.toml
    Run {
        /// The pipeline file (TOML).
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run { file } => runtime.block_on(run(file)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(file: PathBuf) -> Result<(), String> {
    let text =
        std::fs::read_to_string(&file).map_err(|error| format!("cannot read {}: {error}", file.display()))?;
    let (config, bounds) = parse_demo(&text, &file)?;
    let count = config.source.count;
    let total = Arc::new(AtomicU64::new(0));
    let sum = total.clone();
    let mut pipeline = Pipeline::new();
    pipeline.producer("numbers", move || FromIter::new(1..=count));
    pipeline
        .producer_consumer("double", || Map::new(|x: u64| x.wrapping_mul(2)))
        .subscribe_to("numbers", SubscribeOptions::bounds(bounds));
    pipeline
        .consumer("sum", move || {
            let sum = sum.clone();
            ForEach::new(move |x: u64| {
                sum.fetch_add(x, Ordering::Relaxed);
            })
        })
        .subscribe_to("double", SubscribeOptions::bounds(bounds));
    let mut running = pipeline.start().map_err(|error| format!("{}: {error}", file.display()))?;
    let trigger = running.shutdown_trigger();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("Ctrl-C: draining");
            trigger.shutdown();
        }
    });
    let reader = running.metrics_reader();
    let started = Instant::now();
    let progress = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.tick().await;
        loop {
            ticker.tick().await;
            if let Some(sum) = reader.stage("sum") {
                println!(
                    "[{:>5.1}s] sum stage has taken {} events",
                    started.elapsed().as_secs_f64(),
                    sum.events_in
                );
            }
        }
    });
    let outcome = running.wait().await;
    progress.abort();
    let summary = outcome.map_err(|error| error.to_string())?;
    let elapsed = started.elapsed().as_secs_f64();
    println!("pipeline '{}' finished in {elapsed:.2}s", config.pipeline.name);
    print_summary(&summary.stages, elapsed);
    println!("sum of doubled numbers: {}", total.load(Ordering::Relaxed));
    Ok(())
}

fn print_summary(stages: &[StageSnapshot], elapsed: f64) {
    println!(
        "{:<10} {:>12} {:>12} {:>12} {:>8} {:>9} {:>12}",
        "stage", "in", "out", "events/s", "dropped", "restarts", "p95 µs/event"
    );
    for stage in stages {
        let moved = stage.events_in.max(stage.events_out) as f64;
        println!(
            "{:<10} {:>12} {:>12} {:>12.0} {:>8} {:>9} {:>12.3}",
            stage.stage,
            stage.events_in,
            stage.events_out,
            moved / elapsed.max(1e-9),
            stage.dropped,
            stage.restarts,
            stage.processing.p95_us
        );
    }
}
