//! Section 5: worker-pool autoscaling. A source emits on a schedule of
//! 100 → 2000 → 100 events/s into an autoscaled pool whose workers each
//! spend 20 ms per event (50 events/s per worker); the worker count and the
//! p95 latency from each event's scheduled time to the end of its handling
//! are sampled every 500 ms.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use plotters::prelude::SeriesLabelPosition;
use stageflow::{
    Autoscale, Consumer, Emitter, Events, Flow, Pipeline, PoolConfig, Producer, Routing, SubscribeOptions,
};
use tokio::time::Instant;

use super::Settings;
use super::plot::{self, COLOURS, Line, Panel, Stroke};
use super::report::{Report, Series};

/// Input rates of the phases, events per second.
const RATES: [f64; 3] = [100.0, 2000.0, 100.0];
/// How long each phase lasts, before scaling (at least 4 s).
const PHASE_SECONDS: f64 = 10.0;
/// Work per event in a worker.
const WORK: Duration = Duration::from_millis(20);
/// Events per second one worker is expected to handle (1 s / 20 ms).
const EVENTS_PER_WORKER: f64 = 50.0;
/// Most workers the pool may run.
const MAX_WORKERS: usize = 64;
/// How often the worker count and latency are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// The input schedule: [`RATES`], `phase_seconds` each.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    phase_seconds: f64,
}

impl Schedule {
    /// Events due in the first `seconds` (fractional).
    fn events_due_by(&self, seconds: f64) -> f64 {
        RATES
            .iter()
            .enumerate()
            .map(|(index, rate)| {
                let start = index as f64 * self.phase_seconds;
                rate * (seconds - start).clamp(0.0, self.phase_seconds)
            })
            .sum()
    }

    /// Seconds from the start at which event `index` is due.
    fn due(&self, index: u64) -> f64 {
        let mut first = 0.0;
        let mut offset = 0.0;
        for rate in RATES {
            let count = rate * self.phase_seconds;
            if (index as f64) < first + count {
                return offset + (index as f64 - first) / rate;
            }
            first += count;
            offset += self.phase_seconds;
        }
        offset
    }
}

/// Emits events stamped with their scheduled time, following the schedule.
struct SteppedSource {
    start: Option<Instant>,
    next: u64,
    total: u64,
    schedule: Schedule,
    emitted: Arc<AtomicU64>,
}

impl Producer for SteppedSource {
    type Out = Instant;

    async fn produce(&mut self, demand: usize, out: &mut Emitter<Instant>) -> Flow {
        let start = *self.start.get_or_insert_with(Instant::now);
        if self.next >= self.total {
            return Flow::Done;
        }
        tokio::time::sleep_until(start + Duration::from_secs_f64(self.schedule.due(self.next))).await;
        let now = start.elapsed().as_secs_f64();
        while self.next < self.total && out.len() < demand && self.schedule.due(self.next) <= now {
            out.emit(start + Duration::from_secs_f64(self.schedule.due(self.next)));
            self.next += 1;
        }
        self.emitted.store(self.next, Ordering::Relaxed);
        if self.next >= self.total { Flow::Done } else { Flow::Continue }
    }
}

/// Spends [`WORK`] on each event, then records its latency from its scheduled time.
struct Work {
    latency_us: Arc<Mutex<Histogram<u64>>>,
}

impl Consumer for Work {
    type In = Instant;

    async fn handle_events(&mut self, events: &mut Events<Instant>) {
        for scheduled in events {
            tokio::time::sleep(WORK).await;
            let micros = scheduled.elapsed().as_micros() as u64;
            self.latency_us.lock().expect("the histogram lock").saturating_record(micros.max(1));
        }
    }
}

/// One sample: seconds since the start, workers, p95 latency in ms, events/s offered and taken.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: f64,
    workers: f64,
    p95_ms: f64,
    offered_per_s: f64,
    taken_per_s: f64,
}

/// Runs the schedule, records per-phase figures and draws `autoscale.svg`.
pub fn run(runtime: &tokio::runtime::Runtime, settings: &Settings, report: &mut Report) {
    let phase_seconds = (PHASE_SECONDS * settings.scale).max(4.0);
    println!(
        "== 5. worker-pool autoscaling: {RATES:?} events/s, {phase_seconds} s each, {} ms of work per event",
        WORK.as_millis()
    );
    let (samples, phase_p95) = match runtime.block_on(measure(phase_seconds)) {
        Ok(measured) => measured,
        Err(error) => {
            report.note(format!("autoscale: {error}"));
            return;
        }
    };
    for (index, rate) in RATES.iter().enumerate() {
        let bench = format!("autoscale_phase{}_{}_per_s", index + 1, *rate as u64);
        let from = index as f64 * phase_seconds;
        let settled: Vec<f64> = samples
            .iter()
            .filter(|s| s.at >= from + phase_seconds / 2.0 && s.at < from + phase_seconds)
            .map(|s| s.workers)
            .collect();
        let peak = samples
            .iter()
            .filter(|s| s.at >= from && s.at < from + phase_seconds)
            .map(|s| s.workers)
            .fold(0.0, f64::max);
        report.figure(
            &bench,
            "settled_workers_mean",
            settled.iter().sum::<f64>() / settled.len().max(1) as f64,
        );
        report.figure(&bench, "peak_workers", peak);
        report.figure(&bench, "latency_p95_ms", phase_p95[index]);
    }
    let high_peak = samples.iter().map(|s| s.workers).fold(0.0, f64::max);
    let first_at = |from: f64, reached: &dyn Fn(f64) -> bool| {
        samples.iter().find(|s| s.at >= from && reached(s.workers)).map(|s| s.at - from)
    };
    if let Some(seconds) = first_at(phase_seconds, &|workers| workers >= 0.9 * high_peak) {
        report.figure("autoscale", "scale_up_to_90pct_of_peak_s", seconds);
    }
    if let Some(seconds) = first_at(2.0 * phase_seconds, &|workers| workers <= 0.2 * high_peak) {
        report.figure("autoscale", "scale_down_to_20pct_of_peak_s", seconds);
    }
    let series = |name: &str, value: fn(&Sample) -> f64| {
        Series::new(name, samples.iter().map(|s| (s.at, value(s))).collect())
    };
    let offered = series("offered (the schedule)", |s| s.offered_per_s);
    let taken = series("taken in by the pool", |s| s.taken_per_s);
    let workers = series("workers", |s| s.workers);
    let mut p95 = series("p95 latency", |s| s.p95_ms);
    p95.points.retain(|&(_, ms)| ms > 0.0);
    report.series("autoscale", &[offered.clone(), taken.clone(), workers.clone(), p95.clone()]);
    let solid = |series, colour| Line { series, colour, stroke: Stroke::Solid, markers: false };
    let panel = |title: &str, y_label: &str, lines| Panel {
        title: title.to_string(),
        x_label: "time since start (s)".into(),
        y_label: y_label.to_string(),
        log_x: false,
        log_y: false,
        lines,
        legend: SeriesLabelPosition::UpperRight,
    };
    let input_lines = vec![
        Line { series: &offered, colour: COLOURS[7], stroke: Stroke::Dashed, markers: false },
        solid(&taken, COLOURS[0]),
    ];
    let panels = [
        panel("input: 100 → 2000 → 100 events/s", "events/s", input_lines),
        panel("worker count (autoscaled every 1 s)", "workers (count)", vec![solid(&workers, COLOURS[2])]),
        panel(
            "p95 latency, scheduled → handled, per 500 ms",
            "latency p95 (ms)",
            vec![solid(&p95, COLOURS[1])],
        ),
    ];
    let path = settings.dir.join("autoscale.svg");
    let title = format!(
        "Worker-pool autoscaling: {} ms of work per event, 1 to {MAX_WORKERS} workers",
        WORK.as_millis()
    );
    match plot::panels(&path, (1100, 1000), &title, (3, 1), &panels) {
        Ok(()) => report.plot_written(&path),
        Err(error) => report.note(format!("autoscale.svg: {error}")),
    }
}

/// Runs the stepped source into the pool, sampling until it ends; returns the samples and each phase's p95 in ms.
async fn measure(phase_seconds: f64) -> Result<(Vec<Sample>, Vec<f64>), String> {
    let total = RATES.iter().map(|rate| (rate * phase_seconds) as u64).sum();
    let emitted = Arc::new(AtomicU64::new(0));
    let latency_us =
        Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("a histogram")));
    let schedule = Schedule { phase_seconds };
    let mut pipeline = Pipeline::new();
    let counter = emitted.clone();
    pipeline.producer("source", move || SteppedSource {
        start: None,
        next: 0,
        total,
        schedule,
        emitted: counter.clone(),
    });
    let shared = latency_us.clone();
    pipeline
        .consumer("work", move || Work { latency_us: shared.clone() })
        .subscribe_to("source", SubscribeOptions::default())
        .workers(PoolConfig {
            min: 1,
            max: MAX_WORKERS,
            routing: Routing::RoundRobin,
            autoscale: Some(Autoscale {
                frame: Duration::from_secs(1),
                events_per_worker: EVENTS_PER_WORKER,
            }),
        });
    let mut running = pipeline.start().map_err(|error| error.to_string())?;
    let reader = running.metrics_reader();
    let started = Instant::now();
    let cap = Duration::from_secs_f64(phase_seconds * RATES.len() as f64 + 30.0);
    let mut phases: Vec<Histogram<u64>> =
        RATES.iter().map(|_| latency_us.lock().expect("lock").clone()).collect();
    let mut samples = Vec::new();
    let mut ticker = tokio::time::interval(SAMPLE_EVERY);
    ticker.tick().await;
    let mut last_emitted = 0;
    let wait = running.wait();
    tokio::pin!(wait);
    loop {
        tokio::select! {
            outcome = &mut wait => {
                outcome.map_err(|error| error.to_string())?;
                break;
            }
            _ = ticker.tick() => {
                let at = started.elapsed().as_secs_f64();
                if at > cap.as_secs_f64() {
                    return Err(format!("did not finish within {cap:?}"));
                }
                let window = {
                    let mut histogram = latency_us.lock().expect("the histogram lock");
                    let window = histogram.clone();
                    histogram.reset();
                    window
                };
                let phase = ((at - SAMPLE_EVERY.as_secs_f64() / 2.0) / phase_seconds).floor().clamp(0.0, 2.0) as usize;
                phases[phase].add(&window).map_err(|error| error.to_string())?;
                let now_emitted = emitted.load(Ordering::Relaxed);
                let scheduled = |seconds: f64| schedule.events_due_by(seconds);
                let offered = scheduled(at) - scheduled(at - SAMPLE_EVERY.as_secs_f64());
                let workers = reader.stage("work").map_or(0, |stage| stage.workers);
                samples.push(Sample {
                    at,
                    workers: workers as f64,
                    p95_ms: window.value_at_quantile(0.95) as f64 / 1000.0,
                    offered_per_s: offered / SAMPLE_EVERY.as_secs_f64(),
                    taken_per_s: (now_emitted - last_emitted) as f64 / SAMPLE_EVERY.as_secs_f64(),
                });
                last_emitted = now_emitted;
            }
        }
    }
    let phase_p95 = phases.iter().map(|h| h.value_at_quantile(0.95) as f64 / 1000.0).collect();
    Ok((samples, phase_p95))
}
