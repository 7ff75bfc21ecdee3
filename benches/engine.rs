//! Throughput and memory benchmarks of the stageflow engine.
//!
//! Run with `cargo bench --bench engine` (release mode). Every figure is
//! printed on its own line as a JSON object `{"bench": B, "metric": M, "value": V}`:
//!
//! - `linear` / `events_per_s`: producer → producer-consumer (`x * 2`) →
//!   consumer summing, built with the engine's `Pipeline` and default demand
//!   (1000 / 500); the sum is checked, so no event may be lost.
//! - `linear_baseline` / `events_per_s`: the same chain written by hand with
//!   bounded tokio mpsc channels carrying `Vec<u64>` batches of 1000, in the
//!   same process; `linear` / `ratio_vs_baseline` is the engine's share of it.
//!   Both run `STAGEFLOW_BENCH_ROUNDS` (5) times, interleaved; the figures
//!   are medians, with the lowest and highest round's ratio beside.
//! - `cpu_ns_per_event` beside each rate: CPU time of the whole process
//!   (all threads, user + system) per event, which other load on a shared
//!   machine moves far less than wall time; `linear` / `cpu_ratio_vs_baseline`
//!   is the baseline's CPU per event over the engine's.
//! - `linear_same_bound` / `events_per_s` and `ratio_vs_baseline`: the
//!   engine's chain again, in the same interleaved rounds, with
//!   `max_demand` 16 000 / `min_demand` 8 000: the events each of the
//!   baseline's channels holds (16 batches of 1000), so both sides may have
//!   as much in flight per link. It shows how much of the gap at GenStage's
//!   default of 1000 is the bound (a hand-off between the stages' tasks per
//!   1000 events at most) and how much the engine.
//! - `broadcast` / `events_per_s`: one producer → two consumers through a
//!   `BroadcastDispatcher` (both see every event).
//! - `partition` / `events_per_s`: one producer → two consumers through a
//!   `PartitionDispatcher` on `x % 2`.
//!
//! Throughput figures count events produced per second of wall time, from
//! `start` to the end of `wait`. They use 100 000 000 events; set
//! `STAGEFLOW_BENCH_EVENTS` to another count for a quick run.
//!
//! - `memory_1m`, `memory_10m` / `peak_rss_kb`: a fast producer feeding a
//!   consumer that sleeps 1 ms every 1000 events, 1 000 000 and 10 000 000
//!   events; demand keeps memory bounded, so `memory_10m` / `ratio_vs_1m`
//!   should stay near 1.
//! - `memory_unbounded_10m` / `peak_rss_kb`: the same with a tokio unbounded
//!   channel instead of the engine, whose queue grows with the input.
//!
//! `STAGEFLOW_BENCH_THREADS` picks the runtime (unset: tokio's default
//! multi-thread runtime, one worker per core; `0`: current-thread; `N`: N
//! workers) and `STAGEFLOW_BENCH_SKIP_MEMORY` skips the memory scenarios.
//! `STAGEFLOW_BENCH_ONLY=linear,partition` runs only the throughput
//! benchmarks named (`linear`, `broadcast`, `partition`), e.g. under `perf`.
//!
//! Each memory scenario runs in a child process (this binary re-executed with
//! `STAGEFLOW_BENCH_CHILD=<scenario>`) that prints its peak resident set size,
//! `VmHWM` from `/proc/self/status`, so the scenarios do not share a peak.

use std::future::Future;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use stageflow::{
    BroadcastDispatcher, Consumer, Emitter, Events, Flow, PartitionDispatcher, Pipeline, Producer,
    ProducerConsumer, SubscribeOptions,
};
use tokio::sync::mpsc;

/// Environment variable overriding the event count of the throughput benchmarks.
const EVENTS_VAR: &str = "STAGEFLOW_BENCH_EVENTS";
/// Environment variable naming the throughput benchmarks to run (comma-separated; unset: all, and the memory scenarios).
const ONLY_VAR: &str = "STAGEFLOW_BENCH_ONLY";
/// Environment variable naming the memory scenario a child process runs.
const CHILD_VAR: &str = "STAGEFLOW_BENCH_CHILD";
/// Default event count of the throughput benchmarks.
const DEFAULT_EVENTS: u64 = 100_000_000;
/// GenStage's default `max_demand`, which the engine benchmarks keep.
const DEFAULT_MAX_DEMAND: usize = 1000;
/// Events per batch in the hand-written channel baseline.
const BASELINE_BATCH: usize = 1000;
/// Capacity, in batches, of each bounded channel of the baseline.
const BASELINE_CHANNEL_BATCHES: usize = 16;
/// The slow consumer of the memory scenarios sleeps once per this many events.
const EVENTS_PER_SLEEP: u64 = 1000;
/// How long the slow consumer sleeps each time.
const SLEEP: Duration = Duration::from_millis(1);
/// Prefix of the line a child process prints its peak RSS on.
const PEAK_RSS_PREFIX: &str = "peak_rss_kb ";

/// A memory scenario: its name, its event count, and whether it uses the engine.
struct MemoryScenario {
    name: &'static str,
    events: u64,
    engine: bool,
}

/// The memory scenarios, each run in its own process.
const MEMORY_SCENARIOS: [MemoryScenario; 3] = [
    MemoryScenario { name: "memory_1m", events: 1_000_000, engine: true },
    MemoryScenario { name: "memory_10m", events: 10_000_000, engine: true },
    MemoryScenario { name: "memory_unbounded_10m", events: 10_000_000, engine: false },
];

/// Emits `0, 1, 2, …` up to `count` (excluded), as many as demand allows.
struct CountingProducer {
    next: u64,
    count: u64,
}

impl CountingProducer {
    fn new(count: u64) -> Self {
        CountingProducer { next: 0, count }
    }
}

impl Producer for CountingProducer {
    type Out = u64;

    fn produce(&mut self, demand: usize, out: &mut Emitter<u64>) -> impl Future<Output = Flow> + Send {
        let end = self.count.min(self.next.saturating_add(demand as u64));
        out.extend(self.next..end);
        self.next = end;
        let flow = if end == self.count { Flow::Done } else { Flow::Continue };
        async move { flow }
    }
}

/// Doubles every event.
struct Doubler;

impl ProducerConsumer for Doubler {
    type In = u64;
    type Out = u64;

    fn handle_events(
        &mut self,
        events: &mut Events<u64>,
        out: &mut Emitter<u64>,
    ) -> impl Future<Output = ()> + Send {
        out.emit_batch(events.take_batch().into_iter().map(|x| x * 2).collect());
        async {}
    }
}

/// Totals shared between a consumer and the benchmark that checks them.
#[derive(Default)]
struct Totals {
    count: AtomicU64,
    sum: AtomicU64,
}

impl Totals {
    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn sum(&self) -> u64 {
        self.sum.load(Ordering::Relaxed)
    }
}

/// Adds up the events it takes, batch by batch, into shared totals.
struct SummingConsumer {
    totals: Arc<Totals>,
}

impl Consumer for SummingConsumer {
    type In = u64;

    fn handle_events(&mut self, events: &mut Events<u64>) -> impl Future<Output = ()> + Send {
        let batch = events.take_batch();
        let count = batch.len() as u64;
        let sum: u64 = batch.iter().sum();
        self.totals.count.fetch_add(count, Ordering::Relaxed);
        self.totals.sum.fetch_add(sum, Ordering::Relaxed);
        async {}
    }
}

/// Adds up the events it takes and sleeps `SLEEP` every `EVENTS_PER_SLEEP` events.
struct SleepyConsumer {
    totals: Arc<Totals>,
    seen: u64,
}

impl Consumer for SleepyConsumer {
    type In = u64;

    fn handle_events(&mut self, events: &mut Events<u64>) -> impl Future<Output = ()> + Send {
        let batch = events.take_batch();
        let count = batch.len() as u64;
        let sum: u64 = batch.iter().sum();
        self.totals.count.fetch_add(count, Ordering::Relaxed);
        self.totals.sum.fetch_add(sum, Ordering::Relaxed);
        let sleeps = (self.seen + count) / EVENTS_PER_SLEEP - self.seen / EVENTS_PER_SLEEP;
        self.seen += count;
        async move {
            for _ in 0..sleeps {
                tokio::time::sleep(SLEEP).await;
            }
        }
    }
}

/// Sum of `0..count`.
fn sum_below(count: u64) -> u64 {
    if count == 0 { 0 } else { count * (count - 1) / 2 }
}

/// A multi-thread tokio runtime with every driver enabled.
fn runtime() -> tokio::runtime::Runtime {
    match std::env::var("STAGEFLOW_BENCH_THREADS").ok().and_then(|t| t.parse::<usize>().ok()) {
        Some(0) => {
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime")
        }
        Some(threads) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .expect("a tokio runtime"),
        None => tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime"),
    }
}

/// Events per second for `events` events handled in `elapsed`.
fn rate(events: u64, elapsed: Duration) -> f64 {
    events as f64 / elapsed.as_secs_f64()
}

/// Prints one figure as a JSON line.
fn report(bench: &str, metric: &str, value: f64) {
    println!("{{\"bench\": \"{bench}\", \"metric\": \"{metric}\", \"value\": {value}}}");
}

/// Starts `pipeline`, waits for it to end and returns how long it ran.
async fn run_pipeline(pipeline: Pipeline) -> Duration {
    let started = Instant::now();
    let mut running = pipeline.start().expect("a valid pipeline");
    running.wait().await.expect("the pipeline ends cleanly");
    started.elapsed()
}

/// Producer → doubler → summing consumer, through the engine, each link
/// with `max_demand` (and half of it as `min_demand`).
async fn linear(events: u64, max_demand: usize) -> Duration {
    let demand = SubscribeOptions::default().with_demand(max_demand, max_demand / 2);
    let totals = Arc::new(Totals::default());
    let mut pipeline = Pipeline::new();
    pipeline.producer("numbers", move || CountingProducer::new(events));
    pipeline.producer_consumer("double", || Doubler).subscribe_to("numbers", demand.clone());
    let shared = totals.clone();
    pipeline
        .consumer("sum", move || SummingConsumer { totals: shared.clone() })
        .subscribe_to("double", demand);
    let elapsed = run_pipeline(pipeline).await;
    assert_eq!(totals.count(), events, "linear: events lost or duplicated");
    assert_eq!(totals.sum(), 2 * sum_below(events), "linear: wrong sum");
    elapsed
}

/// Producer → doubler → summer, by hand, over bounded channels of batches.
async fn linear_baseline(events: u64) -> Duration {
    let started = Instant::now();
    let (numbers_tx, mut numbers_rx) = mpsc::channel::<Vec<u64>>(BASELINE_CHANNEL_BATCHES);
    let (doubled_tx, mut doubled_rx) = mpsc::channel::<Vec<u64>>(BASELINE_CHANNEL_BATCHES);
    let producer = tokio::spawn(async move {
        let mut next = 0;
        while next < events {
            let end = events.min(next + BASELINE_BATCH as u64);
            let mut batch = Vec::with_capacity(BASELINE_BATCH);
            batch.extend(next..end);
            next = end;
            numbers_tx.send(batch).await.expect("the doubler runs");
        }
    });
    let doubler = tokio::spawn(async move {
        while let Some(mut batch) = numbers_rx.recv().await {
            for x in batch.iter_mut() {
                *x *= 2;
            }
            doubled_tx.send(batch).await.expect("the summer runs");
        }
    });
    let summer = tokio::spawn(async move {
        let (mut count, mut sum) = (0u64, 0u64);
        while let Some(batch) = doubled_rx.recv().await {
            count += batch.len() as u64;
            sum += batch.iter().sum::<u64>();
        }
        (count, sum)
    });
    producer.await.expect("the producer ends");
    doubler.await.expect("the doubler ends");
    let (count, sum) = summer.await.expect("the summer ends");
    let elapsed = started.elapsed();
    assert_eq!(count, events, "linear_baseline: events lost or duplicated");
    assert_eq!(sum, 2 * sum_below(events), "linear_baseline: wrong sum");
    elapsed
}

/// One producer → two consumers that each see every event.
async fn broadcast(events: u64) -> Duration {
    let totals = [Arc::new(Totals::default()), Arc::new(Totals::default())];
    let mut pipeline = Pipeline::new();
    pipeline
        .producer("numbers", move || CountingProducer::new(events))
        .dispatcher(BroadcastDispatcher::new());
    for (index, consumer_totals) in totals.iter().enumerate() {
        let shared = consumer_totals.clone();
        pipeline
            .consumer(&format!("sum{index}"), move || SummingConsumer { totals: shared.clone() })
            .subscribe_to("numbers", SubscribeOptions::default());
    }
    let elapsed = run_pipeline(pipeline).await;
    for (index, consumer_totals) in totals.iter().enumerate() {
        assert_eq!(consumer_totals.count(), events, "broadcast: consumer {index} lost events");
        assert_eq!(consumer_totals.sum(), sum_below(events), "broadcast: consumer {index} has a wrong sum");
    }
    elapsed
}

/// One producer → two consumers, even events to one and odd events to the other.
async fn partition(events: u64) -> Duration {
    let totals = [Arc::new(Totals::default()), Arc::new(Totals::default())];
    let mut pipeline = Pipeline::new();
    pipeline
        .producer("numbers", move || CountingProducer::new(events))
        .dispatcher(PartitionDispatcher::new(2, Arc::new(|x: &u64| *x as usize)));
    for (index, consumer_totals) in totals.iter().enumerate() {
        let shared = consumer_totals.clone();
        pipeline
            .consumer(&format!("sum{index}"), move || SummingConsumer { totals: shared.clone() })
            .subscribe_to("numbers", SubscribeOptions::default().with_partition(index));
    }
    let elapsed = run_pipeline(pipeline).await;
    // Evens 0, 2, … are `evens` terms summing to evens * (evens - 1);
    // odds 1, 3, … are `odds` terms summing to odds².
    let (evens, odds) = (events.div_ceil(2), events / 2);
    let expected = [(evens, evens * evens.saturating_sub(1)), (odds, odds * odds)];
    for (index, (consumer_totals, (count, sum))) in totals.iter().zip(expected).enumerate() {
        assert_eq!(consumer_totals.count(), count, "partition: consumer {index} has a wrong count");
        assert_eq!(consumer_totals.sum(), sum, "partition: consumer {index} has a wrong sum");
    }
    elapsed
}

/// Fast producer → sleepy consumer, through the engine with default demand.
async fn memory_engine(events: u64) {
    let totals = Arc::new(Totals::default());
    let mut pipeline = Pipeline::new();
    pipeline.producer("numbers", move || CountingProducer::new(events));
    let shared = totals.clone();
    pipeline
        .consumer("sleepy", move || SleepyConsumer { totals: shared.clone(), seen: 0 })
        .subscribe_to("numbers", SubscribeOptions::default());
    run_pipeline(pipeline).await;
    assert_eq!(totals.count(), events, "memory: events lost or duplicated");
    assert_eq!(totals.sum(), sum_below(events), "memory: wrong sum");
}

/// Fast producer → sleepy consumer, through an unbounded channel, one event at a time.
async fn memory_unbounded(events: u64) {
    let (sender, mut receiver) = mpsc::unbounded_channel::<u64>();
    let producer = tokio::spawn(async move {
        for event in 0..events {
            sender.send(event).expect("the consumer runs");
        }
    });
    let consumer = tokio::spawn(async move {
        let (mut count, mut sum) = (0u64, 0u64);
        while let Some(event) = receiver.recv().await {
            count += 1;
            sum += event;
            if count % EVENTS_PER_SLEEP == 0 {
                tokio::time::sleep(SLEEP).await;
            }
        }
        (count, sum)
    });
    producer.await.expect("the producer ends");
    let (count, sum) = consumer.await.expect("the consumer ends");
    assert_eq!(count, events, "memory_unbounded: events lost or duplicated");
    assert_eq!(sum, sum_below(events), "memory_unbounded: wrong sum");
}

/// CPU time (user + system, all threads) this process has used so far, in
/// seconds, from `/proc/self/stat` (clock ticks of 10 ms).
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat is readable");
    // Fields after the command name (which may hold spaces) start at field 3, `state`.
    let after_name = &stat[stat.rfind(')').expect("a command name in parentheses") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| fields[index].parse::<f64>().expect("a tick count");
    // utime and stime are fields 14 and 15 of the whole line, 11 and 12 after the name.
    (ticks(11) + ticks(12)) / CLOCK_TICKS_PER_SECOND
}

/// `sysconf(_SC_CLK_TCK)` on Linux.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// This process's peak resident set size in kB (`VmHWM`).
fn peak_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status is readable");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("/proc/self/status has a VmHWM line")
}

/// Runs one memory scenario in this (child) process and prints its peak RSS.
fn run_child(name: &str) {
    let scenario = MEMORY_SCENARIOS
        .iter()
        .find(|scenario| scenario.name == name)
        .unwrap_or_else(|| panic!("unknown memory scenario '{name}'"));
    let started = Instant::now();
    let runtime = runtime();
    if scenario.engine {
        runtime.block_on(memory_engine(scenario.events));
    } else {
        runtime.block_on(memory_unbounded(scenario.events));
    }
    drop(runtime);
    eprintln!("{name}: {} events in {:.2?}", scenario.events, started.elapsed());
    println!("{PEAK_RSS_PREFIX}{}", peak_rss_kb());
}

/// Runs a memory scenario in a child process and returns its peak RSS in kB.
fn measure_in_child(name: &str) -> u64 {
    let executable = std::env::current_exe().expect("the path of this benchmark");
    let output = Command::new(executable)
        .env(CHILD_VAR, name)
        .output()
        .unwrap_or_else(|error| panic!("{name}: cannot start the child process: {error}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprint!("{stderr}");
    assert!(output.status.success(), "{name}: child process failed ({})\n{stdout}", output.status);
    stdout
        .lines()
        .find_map(|line| line.strip_prefix(PEAK_RSS_PREFIX))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name}: no peak RSS in the child's output:\n{stdout}"))
}

/// Rounds of the linear benchmark and its baseline, interleaved (`STAGEFLOW_BENCH_ROUNDS`, default 5).
fn rounds() -> usize {
    match std::env::var("STAGEFLOW_BENCH_ROUNDS") {
        Ok(value) => value.trim().parse().ok().filter(|rounds| *rounds > 0).unwrap_or_else(|| {
            panic!("STAGEFLOW_BENCH_ROUNDS must be a whole number above 0, got '{value}'");
        }),
        Err(_) => 5,
    }
}

/// The median of `values` (sorted in place); the upper one of an even count.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The event count of the throughput benchmarks.
fn throughput_events() -> u64 {
    match std::env::var(EVENTS_VAR) {
        Ok(value) => value.trim().replace('_', "").parse().unwrap_or_else(|_| {
            panic!("{EVENTS_VAR} must be a whole number of events, got '{value}'");
        }),
        Err(_) => DEFAULT_EVENTS,
    }
}

/// Runs the throughput benchmarks here and each memory scenario in a child process.
fn main() {
    if let Ok(name) = std::env::var(CHILD_VAR) {
        run_child(&name);
        return;
    }
    let events = throughput_events();
    let runtime = runtime();

    let only = std::env::var(ONLY_VAR).ok();
    let wanted = |bench: &str| only.as_deref().is_none_or(|only| only.split(',').any(|name| name == bench));
    // CPU time per event is reported beside every rate: on a shared machine
    // it moves far less with other load than wall time does.
    let cpu_ns = |run: &mut dyn FnMut() -> Duration| {
        let before = process_cpu_seconds();
        let elapsed = run();
        (elapsed, (process_cpu_seconds() - before) * 1e9 / events as f64)
    };
    if wanted("linear") {
        // Interleaved rounds, so a burst of load from elsewhere on a shared
        // machine hits both sides instead of one.
        let (mut engine, mut baseline, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let (mut engine_cpu, mut baseline_cpu, mut cpu_ratios) = (Vec::new(), Vec::new(), Vec::new());
        let (mut same_bound_rates, mut same_bound_ratios) = (Vec::new(), Vec::new());
        for _ in 0..rounds() {
            let (elapsed, cpu) = cpu_ns(&mut || runtime.block_on(linear_baseline(events)));
            baseline.push(rate(events, elapsed));
            baseline_cpu.push(cpu);
            let (elapsed, cpu) = cpu_ns(&mut || runtime.block_on(linear(events, DEFAULT_MAX_DEMAND)));
            engine.push(rate(events, elapsed));
            engine_cpu.push(cpu);
            ratios.push(engine[engine.len() - 1] / baseline[baseline.len() - 1]);
            let same_bound = BASELINE_BATCH * BASELINE_CHANNEL_BATCHES;
            let same_bound_rate = rate(events, runtime.block_on(linear(events, same_bound)));
            same_bound_rates.push(same_bound_rate);
            same_bound_ratios.push(same_bound_rate / baseline[baseline.len() - 1]);
            cpu_ratios.push(baseline_cpu[baseline_cpu.len() - 1] / cpu);
        }
        report("linear", "events_per_s", median(&mut engine));
        report("linear_baseline", "events_per_s", median(&mut baseline));
        report("linear", "ratio_vs_baseline", median(&mut ratios));
        report("linear", "ratio_lowest_round", ratios[0]);
        report("linear", "ratio_highest_round", ratios[ratios.len() - 1]);
        report("linear", "cpu_ns_per_event", median(&mut engine_cpu));
        report("linear_baseline", "cpu_ns_per_event", median(&mut baseline_cpu));
        report("linear", "cpu_ratio_vs_baseline", median(&mut cpu_ratios));
        report("linear_same_bound", "events_per_s", median(&mut same_bound_rates));
        report("linear_same_bound", "ratio_vs_baseline", median(&mut same_bound_ratios));
        report("linear_same_bound", "ratio_lowest_round", same_bound_ratios[0]);
        report("linear_same_bound", "ratio_highest_round", same_bound_ratios[same_bound_ratios.len() - 1]);
    }
    if wanted("broadcast") {
        let (elapsed, cpu) = cpu_ns(&mut || runtime.block_on(broadcast(events)));
        report("broadcast", "events_per_s", rate(events, elapsed));
        report("broadcast", "cpu_ns_per_event", cpu);
    }
    if wanted("partition") {
        let (elapsed, cpu) = cpu_ns(&mut || runtime.block_on(partition(events)));
        report("partition", "events_per_s", rate(events, elapsed));
        report("partition", "cpu_ns_per_event", cpu);
    }
    drop(runtime);
    if only.is_some() {
        return;
    }
    if std::env::var_os("STAGEFLOW_BENCH_SKIP_MEMORY").is_some() {
        return;
    }

    let mut peaks = Vec::new();
    for scenario in &MEMORY_SCENARIOS {
        let peak = measure_in_child(scenario.name);
        report(scenario.name, "peak_rss_kb", peak as f64);
        peaks.push(peak);
    }
    report("memory_10m", "ratio_vs_1m", peaks[1] as f64 / peaks[0] as f64);
}
