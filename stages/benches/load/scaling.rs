//! Section 3: engine scaling. Events per second of the linear topology as
//! its length grows (2, 4, 8 stages) and of the broadcast and partition
//! topologies as their consumers grow (1, 2, 4, 8), each beside the same
//! topology written by hand with bounded tokio channels carrying batches.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use plotters::prelude::SeriesLabelPosition;
use stageflow::{
    BroadcastDispatcher, Consumer, Emitter, Events, Flow, PartitionDispatcher, Pipeline, Producer,
    ProducerConsumer, SubscribeOptions,
};
use tokio::sync::mpsc;

use super::Settings;
use super::plot::{self, COLOURS, Line, Panel, Stroke};
use super::report::{Report, Series};

/// Events per run, before scaling.
const EVENTS: f64 = 50_000_000.0;
/// Events per batch in the channel baseline.
const BASELINE_BATCH: usize = 1000;
/// Capacity, in batches, of each bounded channel of the baseline.
const BASELINE_CHANNEL_BATCHES: usize = 16;
/// Chain lengths of the linear topology (producer and consumer included).
const STAGES: [usize; 3] = [2, 4, 8];
/// Consumer counts of the broadcast and partition topologies.
const CONSUMERS: [usize; 4] = [1, 2, 4, 8];

/// Emits `0, 1, 2, …` up to `count` (excluded), as many as demand allows.
struct Counter {
    next: u64,
    count: u64,
}

impl Producer for Counter {
    type Out = u64;

    fn produce(&mut self, demand: usize, out: &mut Emitter<u64>) -> impl Future<Output = Flow> + Send {
        let end = self.count.min(self.next.saturating_add(demand as u64));
        out.extend(self.next..end);
        self.next = end;
        let flow = if end == self.count { Flow::Done } else { Flow::Continue };
        async move { flow }
    }
}

/// Adds one to every event.
struct Increment;

impl ProducerConsumer for Increment {
    type In = u64;
    type Out = u64;

    fn handle_events(
        &mut self,
        events: &mut Events<u64>,
        out: &mut Emitter<u64>,
    ) -> impl Future<Output = ()> + Send {
        out.emit_batch(events.take_batch().into_iter().map(|x| x + 1).collect());
        async {}
    }
}

/// Counts the events it takes into a shared counter.
struct Count(Arc<AtomicU64>);

impl Consumer for Count {
    type In = u64;

    fn handle_events(&mut self, events: &mut Events<u64>) -> impl Future<Output = ()> + Send {
        self.0.fetch_add(events.take_batch().len() as u64, Ordering::Relaxed);
        async {}
    }
}

/// The three topologies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topology {
    Linear,
    Broadcast,
    Partition,
}

impl Topology {
    /// Its name in figures.
    fn name(self) -> &'static str {
        match self {
            Topology::Linear => "linear",
            Topology::Broadcast => "broadcast",
            Topology::Partition => "partition",
        }
    }

    /// Events every consumer together must have counted.
    fn expected(self, events: u64, width: usize) -> u64 {
        match self {
            Topology::Broadcast => events * width as u64,
            Topology::Linear | Topology::Partition => events,
        }
    }
}

/// Runs `topology` through the engine: `width` is the chain length (linear) or the consumer count.
async fn engine(topology: Topology, width: usize, events: u64) -> Duration {
    let counted = Arc::new(AtomicU64::new(0));
    let mut pipeline = Pipeline::new();
    let source = pipeline.producer("source", move || Counter { next: 0, count: events });
    match topology {
        Topology::Linear => {
            let mut upstream = "source".to_string();
            for index in 0..width.saturating_sub(2) {
                let id = format!("step{index}");
                pipeline
                    .producer_consumer(&id, || Increment)
                    .subscribe_to(&upstream, SubscribeOptions::default());
                upstream = id;
            }
            let shared = counted.clone();
            pipeline
                .consumer("sink", move || Count(shared.clone()))
                .subscribe_to(&upstream, SubscribeOptions::default());
        }
        Topology::Broadcast | Topology::Partition => {
            if topology == Topology::Broadcast {
                source.dispatcher(BroadcastDispatcher::new());
            } else {
                source.dispatcher(PartitionDispatcher::new(width, Arc::new(|x: &u64| *x as usize)));
            }
            for index in 0..width {
                let shared = counted.clone();
                let options = if topology == Topology::Partition {
                    SubscribeOptions::default().with_partition(index)
                } else {
                    SubscribeOptions::default()
                };
                pipeline
                    .consumer(&format!("sink{index}"), move || Count(shared.clone()))
                    .subscribe_to("source", options);
            }
        }
    }
    let started = Instant::now();
    let mut running = pipeline.start().expect("a valid pipeline");
    running.wait().await.expect("the pipeline ends cleanly");
    let elapsed = started.elapsed();
    assert_eq!(
        counted.load(Ordering::Relaxed),
        topology.expected(events, width),
        "{topology:?} {width}: events lost"
    );
    elapsed
}

/// Runs `topology` by hand: one task per stage, bounded channels of `Vec<u64>` batches.
async fn baseline(topology: Topology, width: usize, events: u64) -> Duration {
    let started = Instant::now();
    let counted = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let consumers = if topology == Topology::Linear { 1 } else { width };
    let mut senders = Vec::new();
    for _ in 0..consumers {
        let (sender, mut receiver) = mpsc::channel::<Arc<Vec<u64>>>(BASELINE_CHANNEL_BATCHES);
        senders.push(sender);
        let counted = counted.clone();
        tasks.spawn(async move {
            while let Some(batch) = receiver.recv().await {
                counted.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
        });
    }
    if topology == Topology::Linear {
        // Producer-consumers between the source and the counting consumer.
        for _ in 0..width.saturating_sub(2) {
            let downstream = senders.pop().expect("a downstream channel");
            let (sender, mut receiver) = mpsc::channel::<Arc<Vec<u64>>>(BASELINE_CHANNEL_BATCHES);
            senders.push(sender);
            tasks.spawn(async move {
                while let Some(batch) = receiver.recv().await {
                    let next: Vec<u64> = batch.iter().map(|x| x + 1).collect();
                    if downstream.send(Arc::new(next)).await.is_err() {
                        break;
                    }
                }
            });
        }
    }
    let mut next = 0;
    while next < events {
        let end = events.min(next + BASELINE_BATCH as u64);
        let batch: Vec<u64> = (next..end).collect();
        next = end;
        match topology {
            Topology::Linear | Topology::Broadcast => {
                let batch = Arc::new(batch);
                for sender in &senders {
                    sender.send(batch.clone()).await.expect("the consumer runs");
                }
            }
            Topology::Partition => {
                let mut parts = vec![Vec::with_capacity(BASELINE_BATCH / width + 1); width];
                for x in batch {
                    parts[x as usize % width].push(x);
                }
                for (sender, part) in senders.iter().zip(parts) {
                    sender.send(Arc::new(part)).await.expect("the consumer runs");
                }
            }
        }
    }
    drop(senders);
    while let Some(done) = tasks.join_next().await {
        done.expect("a baseline task ends");
    }
    let elapsed = started.elapsed();
    assert_eq!(
        counted.load(Ordering::Relaxed),
        topology.expected(events, width),
        "baseline {topology:?} {width}: events lost"
    );
    elapsed
}

/// Runs every topology and width through both, records events/s and draws `scaling.svg`.
pub fn run(runtime: &tokio::runtime::Runtime, settings: &Settings, report: &mut Report) {
    let events = settings.scaled(EVENTS);
    println!("== 3. engine scaling: {events} events per run");
    let mut panels_data = Vec::new();
    for topology in [Topology::Linear, Topology::Broadcast, Topology::Partition] {
        let widths: &[usize] = if topology == Topology::Linear { &STAGES } else { &CONSUMERS };
        let (unit, what) = if topology == Topology::Linear {
            ("stages", "stages in the chain")
        } else {
            ("consumers", "consumers")
        };
        let mut engine_points = Vec::new();
        let mut baseline_points = Vec::new();
        for &width in widths {
            let bench = format!("scaling_{}_{width}_{unit}", topology.name());
            let baseline_rate =
                events as f64 / runtime.block_on(baseline(topology, width, events)).as_secs_f64();
            let engine_rate = events as f64 / runtime.block_on(engine(topology, width, events)).as_secs_f64();
            report.figure(&bench, "events_per_s", engine_rate);
            report.figure(&bench, "baseline_events_per_s", baseline_rate);
            report.figure(&bench, "ratio_vs_baseline", engine_rate / baseline_rate);
            engine_points.push((width as f64, engine_rate / 1e6));
            baseline_points.push((width as f64, baseline_rate / 1e6));
        }
        panels_data.push((
            topology,
            what,
            Series::new("stageflow", engine_points),
            Series::new("tokio channels, batches of 1000", baseline_points),
        ));
    }
    for (topology, _, engine, baseline) in &panels_data {
        report.series(&format!("scaling_{}", topology.name()), &[engine.clone(), baseline.clone()]);
    }
    let panels: Vec<Panel<'_>> = panels_data
        .iter()
        .map(|(topology, what, engine, baseline)| Panel {
            title: match topology {
                Topology::Linear => "linear: source → … → sink".to_string(),
                Topology::Broadcast => "broadcast: every consumer sees every event".to_string(),
                Topology::Partition => "partition: each event to one consumer".to_string(),
            },
            x_label: format!("{what} (count)"),
            y_label: "million events/s (produced)".into(),
            log_x: false,
            log_y: false,
            lines: vec![
                Line { series: engine, colour: COLOURS[0], stroke: Stroke::Solid, markers: true },
                Line { series: baseline, colour: COLOURS[1], stroke: Stroke::Dashed, markers: true },
            ],
            legend: SeriesLabelPosition::UpperRight,
        })
        .collect();
    let path = settings.dir.join("scaling.svg");
    let title = format!("Engine scaling: events/s, {events} u64 events per run, same process, one run each");
    match plot::panels(&path, (1500, 560), &title, (1, 3), &panels) {
        Ok(()) => report.plot_written(&path),
        Err(error) => report.note(format!("scaling.svg: {error}")),
    }
}
