//! Engine behaviour, end to end: demand, dispatchers, buffers, lifecycle,
//! supervision, pools, shutdown and windows.
//!
//! Timing-dependent tests run on tokio's paused clock: the runtime only
//! advances time when every task is idle, so "after 1 s" means "once
//! everything that could happen has happened".

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use stageflow::ops::{ForEach, FromIter, FromStream, Map};
use stageflow::window::{Window, WindowReduce, top_n};
use stageflow::{
    BroadcastDispatcher, BufferKeep, CancelMode, Consumer, DemandBounds, DemandHandle, Emitter, Events, Flow,
    PartitionDispatcher, Pipeline, PipelineError, PoolConfig, Producer, RestartPolicy, Routing,
    StageSnapshot, SubscribeOptions,
};

// ---- helper stages -------------------------------------------------------

/// Shared list of what a consumer received, in order.
type Received = Arc<Mutex<Vec<u64>>>;

/// A consumer that records every event (automatic demand).
fn recorder(
    received: &Received,
) -> impl Fn() -> ForEach<Box<dyn FnMut(u64) + Send>, u64> + Send + Sync + 'static {
    let received = received.clone();
    move || {
        let received = received.clone();
        ForEach::new(Box::new(move |x: u64| received.lock().unwrap().push(x)) as Box<dyn FnMut(u64) + Send>)
    }
}

/// A manual-demand consumer that asks `chunk` credits at a time and checks
/// it never receives more than it asked for.
struct ManualRecorder {
    chunk: usize,
    asked: usize,
    received_count: usize,
    received: Received,
    over_credit: Arc<AtomicUsize>,
    upstream: Option<DemandHandle>,
    /// Stop asking after this many credits in all (`usize::MAX`: never stop).
    ask_limit: usize,
}

impl ManualRecorder {
    fn new(chunk: usize, ask_limit: usize, received: &Received, over_credit: &Arc<AtomicUsize>) -> Self {
        ManualRecorder {
            chunk,
            asked: 0,
            received_count: 0,
            received: received.clone(),
            over_credit: over_credit.clone(),
            upstream: None,
            ask_limit,
        }
    }

    fn ask(&mut self) {
        let credits = self.chunk.min(self.ask_limit - self.asked);
        if let (Some(upstream), true) = (&self.upstream, credits > 0) {
            upstream.ask(credits);
            self.asked += credits;
        }
    }
}

impl Consumer for ManualRecorder {
    type In = u64;

    fn handle_events(&mut self, events: &mut Events<u64>) -> impl Future<Output = ()> + Send {
        for event in events {
            self.received_count += 1;
            if self.received_count > self.asked {
                self.over_credit.fetch_add(1, Ordering::Relaxed);
            }
            self.received.lock().unwrap().push(event);
        }
        if self.received_count == self.asked {
            self.ask();
        }
        async {}
    }

    fn handle_subscribe(&mut self, upstream: DemandHandle) {
        self.upstream = Some(upstream);
        self.ask();
    }
}

/// A push source: emits `count` numbers as soon as it is called, demand or not.
struct Burst {
    count: u64,
    sent: bool,
}

impl Producer for Burst {
    type Out = u64;
    const PUSH: bool = true;

    async fn produce(&mut self, _demand: usize, out: &mut Emitter<u64>) -> Flow {
        if self.sent {
            std::future::pending::<()>().await;
        }
        self.sent = true;
        out.extend(0..self.count);
        Flow::Continue
    }
}

/// An endless counter that remembers how many it emitted.
struct Counter {
    next: u64,
    emitted: Arc<AtomicU64>,
}

impl Producer for Counter {
    type Out = u64;

    async fn produce(&mut self, demand: usize, out: &mut Emitter<u64>) -> Flow {
        let end = self.next + demand as u64;
        out.extend(self.next..end);
        self.emitted.fetch_add(demand as u64, Ordering::Relaxed);
        self.next = end;
        // Yield so a test's shutdown can interleave with production.
        tokio::task::yield_now().await;
        Flow::Continue
    }
}

fn stage<'a>(stages: &'a [StageSnapshot], id: &str) -> &'a StageSnapshot {
    stages.iter().find(|s| s.stage == id).unwrap_or_else(|| panic!("no stage {id}"))
}

fn taken(received: &Received) -> Vec<u64> {
    received.lock().unwrap().clone()
}

fn run<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(future)
}

// ---- properties over random topologies -----------------------------------

#[derive(Debug, Clone)]
enum Fanout {
    Demand,
    Broadcast,
    Partition,
}

#[derive(Debug, Clone)]
struct ConsumerPlan {
    max_demand: usize,
    min_fraction: f64,
    manual_chunk: Option<usize>,
}

use proptest::prelude::*;

fn consumer_plan() -> impl Strategy<Value = ConsumerPlan> {
    (1usize..300, 0.0f64..1.0, prop::option::of(1usize..200)).prop_map(
        |(max_demand, min_fraction, manual_chunk)| ConsumerPlan { max_demand, min_fraction, manual_chunk },
    )
}

fn bounds_of(plan: &ConsumerPlan) -> DemandBounds {
    let min = ((plan.max_demand as f64) * plan.min_fraction) as usize;
    DemandBounds::new(plan.max_demand, min.min(plan.max_demand - 1)).unwrap()
}

/// source → `forwarders` identity stages → consumers through `fanout`.
fn run_topology(
    threads: usize,
    events: u64,
    forwarders: usize,
    fanout: Fanout,
    plans: &[ConsumerPlan],
    hop_max: usize,
) {
    let received: Vec<Received> = plans.iter().map(|_| Received::default()).collect();
    let over_credit = Arc::new(AtomicUsize::new(0));
    let runtime = match threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build(),
        _ => tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build(),
    };
    let summary = runtime.unwrap().block_on(async {
        let mut pipeline = Pipeline::new();
        let partitions = plans.len();
        let fan_id =
            if forwarders == 0 { "source".to_string() } else { format!("forward{}", forwarders - 1) };
        {
            let source = pipeline.producer("source", move || FromIter::new(0..events));
            if forwarders == 0 {
                configure_fanout(source, &fanout, partitions);
            }
        }
        for index in 0..forwarders {
            let upstream = if index == 0 { "source".to_string() } else { format!("forward{}", index - 1) };
            let hop = SubscribeOptions::bounds(DemandBounds::with_max(hop_max).unwrap());
            let forward = pipeline
                .producer_consumer(&format!("forward{index}"), || Map::new(|x: u64| x))
                .subscribe_to(&upstream, hop);
            if index == forwarders - 1 {
                configure_fanout(forward, &fanout, partitions);
            }
        }
        for (index, plan) in plans.iter().enumerate() {
            let mut options = SubscribeOptions::bounds(bounds_of(plan));
            if matches!(fanout, Fanout::Partition) {
                options = options.with_partition(index);
            }
            let id = format!("consumer{index}");
            match plan.manual_chunk {
                None => {
                    pipeline.consumer(&id, recorder(&received[index])).subscribe_to(&fan_id, options);
                }
                Some(chunk) => {
                    let (received, over_credit) = (received[index].clone(), over_credit.clone());
                    pipeline
                        .consumer(&id, move || {
                            ManualRecorder::new(chunk, usize::MAX, &received, &over_credit)
                        })
                        .subscribe_to(&fan_id, options.manual());
                }
            }
        }
        let mut running = pipeline.start().expect("valid topology");
        tokio::time::timeout(Duration::from_secs(600), running.wait()).await.expect("ends").expect("succeeds")
    });
    assert_eq!(over_credit.load(Ordering::Relaxed), 0, "a manual consumer got more than it asked for");
    for snapshot in &summary.stages {
        assert_eq!(snapshot.credit_violations, 0, "{} received beyond its credits", snapshot.stage);
        assert_eq!(snapshot.dropped, 0, "{} dropped events", snapshot.stage);
    }
    let all: Vec<u64> = (0..events).collect();
    match fanout {
        Fanout::Demand => {
            let mut union: Vec<u64> = received.iter().flat_map(taken).collect();
            for consumer in &received {
                let got = taken(consumer);
                assert!(got.windows(2).all(|w| w[0] < w[1]), "order per link");
            }
            union.sort_unstable();
            assert_eq!(union, all, "every event exactly once overall");
        }
        Fanout::Broadcast => {
            for consumer in &received {
                assert_eq!(taken(consumer), all, "every subscriber sees every event in order");
            }
        }
        Fanout::Partition => {
            let partitions = received.len() as u64;
            for (index, consumer) in received.iter().enumerate() {
                let expected: Vec<u64> =
                    all.iter().copied().filter(|x| x % partitions == index as u64).collect();
                assert_eq!(taken(consumer), expected, "partition {index} gets exactly its events, in order");
            }
        }
    }
}

fn configure_fanout<In>(config: &mut stageflow::StageConfig<In, u64>, fanout: &Fanout, partitions: usize) {
    match fanout {
        Fanout::Demand => {}
        Fanout::Broadcast => {
            config.dispatcher(BroadcastDispatcher::new());
        }
        Fanout::Partition => {
            config.dispatcher(PartitionDispatcher::new(partitions, Arc::new(|x: &u64| *x as usize)));
        }
    }
}

fn fanout() -> impl Strategy<Value = Fanout> {
    prop_oneof![Just(Fanout::Demand), Just(Fanout::Broadcast), Just(Fanout::Partition)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn credits_bound_deliveries_and_dispatchers_route_exactly(
        events in 0u64..3000,
        forwarders in 0usize..3,
        fanout in fanout(),
        plans in prop::collection::vec(consumer_plan(), 1..5),
        hop_max in 1usize..400,
    ) {
        run_topology(1, events, forwarders, fanout, &plans, hop_max);
    }

    #[test]
    fn the_same_holds_with_stages_running_in_parallel(
        events in 0u64..20_000,
        forwarders in 0usize..3,
        fanout in fanout(),
        plans in prop::collection::vec(consumer_plan(), 1..5),
        hop_max in 1usize..400,
    ) {
        run_topology(2, events, forwarders, fanout, &plans, hop_max);
    }
}

// ---- demand ---------------------------------------------------------------

#[test]
fn producer_consumer_asks_upstream_only_as_its_consumer_asks() {
    let emitted = Arc::new(AtomicU64::new(0));
    let received = Received::default();
    let over_credit = Arc::new(AtomicUsize::new(0));
    run(async {
        let mut pipeline = Pipeline::new();
        let counted = emitted.clone();
        pipeline.producer("counter", move || Counter { next: 0, emitted: counted.clone() });
        pipeline
            .producer_consumer("double", || Map::new(|x: u64| x * 2))
            .subscribe_to("counter", SubscribeOptions::default());
        let (got, over) = (received.clone(), over_credit.clone());
        pipeline
            .consumer("manual", move || ManualRecorder::new(7, 70, &got, &over))
            .subscribe_to("double", SubscribeOptions::default().manual());
        let running = pipeline.start().unwrap();
        // The manual consumer asks 7 at a time, 70 in all, then stops.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(emitted.load(Ordering::Relaxed), 70, "the counter made exactly what was asked downstream");
        assert_eq!(taken(&received), (0..70).map(|x| x * 2).collect::<Vec<_>>());
        running.shutdown();
    });
    assert_eq!(over_credit.load(Ordering::Relaxed), 0);
}

#[test]
fn a_join_of_two_branches_of_one_broadcast_keeps_both_supplied() {
    // source -broadcast-> left, right -> join (subscribed to both) -> sink
    // asking one event at a time: the join must keep credits with both.
    let received = Received::default();
    run(async {
        let mut pipeline = Pipeline::new();
        pipeline.producer("source", || FromIter::new(0..2000u64)).dispatcher(BroadcastDispatcher::new());
        pipeline
            .producer_consumer("left", || Map::new(|x: u64| x))
            .subscribe_to("source", SubscribeOptions::default());
        pipeline
            .producer_consumer("right", || Map::new(|x: u64| x))
            .subscribe_to("source", SubscribeOptions::default());
        pipeline
            .producer_consumer("join", || Map::new(|x: u64| x))
            .subscribe_to("left", SubscribeOptions::default())
            .subscribe_to("right", SubscribeOptions::default());
        pipeline
            .consumer("sink", recorder(&received))
            .subscribe_to("join", SubscribeOptions::bounds(DemandBounds::new(1, 0).unwrap()));
        let mut running = pipeline.start().unwrap();
        tokio::time::timeout(Duration::from_secs(60), running.wait()).await.expect("no stall").unwrap();
    });
    assert_eq!(taken(&received).len(), 4000, "both branches' 2000 events went through the join");
}

#[test]
fn a_consumer_that_stops_asking_stops_the_source() {
    let emitted = Arc::new(AtomicU64::new(0));
    let received = Received::default();
    run(async {
        let mut pipeline = Pipeline::new();
        let counted = emitted.clone();
        pipeline.producer("counter", move || Counter { next: 0, emitted: counted.clone() });
        pipeline
            .producer_consumer("double", || Map::new(|x: u64| x * 2))
            .subscribe_to("counter", SubscribeOptions::bounds(DemandBounds::new(50, 25).unwrap()));
        let got = received.clone();
        pipeline
            .consumer("stalls", move || StallAfter { limit: 100, taken: 0, received: got.clone() })
            .subscribe_to("double", SubscribeOptions::bounds(DemandBounds::new(10, 5).unwrap()));
        let running = pipeline.start().unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let produced = emitted.load(Ordering::Relaxed);
        // 100 taken + at most 10 credits of the stalled consumer held in
        // 'double', whose own asks are bounded by those credits.
        assert!(produced <= 100 + 10, "the source kept producing: {produced}");
        assert_eq!(taken(&received).len(), 100);
        running.shutdown();
    });
}

/// Takes `limit` events, then never returns from handle_events (stops granting).
struct StallAfter {
    limit: usize,
    taken: usize,
    received: Received,
}

impl Consumer for StallAfter {
    type In = u64;

    async fn handle_events(&mut self, events: &mut Events<u64>) {
        for event in events {
            if self.taken == self.limit {
                std::future::pending::<()>().await;
            }
            self.taken += 1;
            self.received.lock().unwrap().push(event);
        }
    }
}

// ---- buffers --------------------------------------------------------------

fn buffered_burst(keep: BufferKeep) -> (Vec<u64>, StageSnapshot) {
    let received = Received::default();
    run(async {
        let mut pipeline = Pipeline::new();
        pipeline.producer("burst", || Burst { count: 1000, sent: false }).buffer(100, keep);
        let got = received.clone();
        pipeline
            .consumer("late", move || LateAsker { received: got.clone() })
            .subscribe_to("burst", SubscribeOptions::default().manual());
        let running = pipeline.start().unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let burst = running.metrics_reader().stage("burst").unwrap();
        running.stop().await.unwrap();
        (taken(&received), burst)
    })
}

/// Asks for everything only after a second, once the burst has hit the buffer.
struct LateAsker {
    received: Received,
}

impl Consumer for LateAsker {
    type In = u64;

    async fn handle_events(&mut self, events: &mut Events<u64>) {
        self.received.lock().unwrap().extend(events);
    }

    fn handle_subscribe(&mut self, upstream: DemandHandle) {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            upstream.ask(10_000);
        });
    }
}

#[test]
fn full_buffer_keeping_first_drops_the_newest_and_counts_them() {
    let (received, burst) = buffered_burst(BufferKeep::First);
    assert_eq!(received, (0..100).collect::<Vec<_>>());
    assert_eq!(burst.dropped, 900);
}

#[test]
fn full_buffer_keeping_last_drops_the_oldest_and_counts_them() {
    let (received, burst) = buffered_burst(BufferKeep::Last);
    assert_eq!(received, (900..1000).collect::<Vec<_>>());
    assert_eq!(burst.dropped, 900);
}

#[test]
fn demand_that_arrives_before_events_is_served_when_they_come() {
    let received = Received::default();
    run(async {
        let (feed, source) = tokio::sync::mpsc::channel::<u64>(4);
        let source = Arc::new(tokio::sync::Mutex::new(source));
        let mut pipeline = Pipeline::new();
        pipeline.producer("channel", move || channel_source(&source));
        pipeline.consumer("record", recorder(&received)).subscribe_to("channel", SubscribeOptions::default());
        let running = pipeline.start().unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(taken(&received).is_empty());
        let held = running.metrics_reader().stage("channel").unwrap().demand_held;
        assert_eq!(held, 1000, "the consumer's demand is kept while nothing comes");
        for x in 0..3 {
            feed.send(x).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(taken(&received), vec![0, 1, 2]);
        running.stop().await.unwrap();
    });
}

/// Produces whatever arrives on a channel, as demand allows; the channel
/// outlives restarts, so a rebuilt source reads on where the last one stopped.
fn channel_source(
    source: &Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<u64>>>,
) -> FromStream<impl futures::Stream<Item = u64> + Send + use<>> {
    let source = source.clone();
    FromStream::new(async_stream::stream! {
        while let Some(event) = source.lock().await.recv().await {
            yield event;
        }
    })
}

// ---- lifecycle ----------------------------------------------------------

#[test]
fn cancelling_a_subscription_ends_a_permanent_consumer_and_stops_delivery() {
    let emitted = Arc::new(AtomicU64::new(0));
    let received = Received::default();
    run(async {
        let mut pipeline = Pipeline::new();
        let counted = emitted.clone();
        pipeline.producer("counter", move || Counter { next: 0, emitted: counted.clone() });
        let got = received.clone();
        pipeline
            .consumer("slow", move || Worker { received: got.clone() })
            .subscribe_to("counter", SubscribeOptions::bounds(DemandBounds::new(10, 5).unwrap()));
        let mut running = pipeline.start().unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(running.cancel("counter", "slow"));
        assert!(!running.cancel("counter", "nobody"));
        // The permanent consumer ends with its only subscription; the
        // producer keeps running until shutdown.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after_cancel = taken(&received).len();
        assert!(after_cancel >= 5, "it was consuming before the cancel");
        assert_eq!(running.metrics_reader().stage("counter").unwrap().demand_held, 0);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(taken(&received).len(), after_cancel, "nothing delivered after the cancel");
        running.shutdown();
        running.wait().await.unwrap();
    });
}

/// A producer that fails on its first call.
struct Failing;

impl Producer for Failing {
    type Out = u64;

    async fn produce(&mut self, _: usize, _: &mut Emitter<u64>) -> Flow {
        panic!("source broke");
    }
}

#[test]
fn a_failed_producer_fails_permanent_consumers_but_not_temporary_ones() {
    let (result, failures) = run(async {
        let mut pipeline = Pipeline::new();
        pipeline.producer("failing", || Failing).restart(RestartPolicy::never());
        pipeline
            .consumer("temporary", recorder(&Received::default()))
            .subscribe_to("failing", SubscribeOptions::default().with_cancel(CancelMode::Temporary));
        pipeline
            .consumer("permanent", recorder(&Received::default()))
            .subscribe_to("failing", SubscribeOptions::default().with_cancel(CancelMode::Permanent));
        let mut running = pipeline.start().unwrap();
        let result = running.wait().await;
        (result, running.failures().to_vec())
    });
    let error = result.unwrap_err().to_string();
    assert!(error.contains("stage 'failing' failed"), "the root cause is reported: {error}");
    assert!(error.contains("source broke"), "{error}");
    let failed: Vec<&str> = failures.iter().map(|f| f.stage.as_str()).collect();
    assert!(failed.contains(&"permanent"), "{failures:?}");
    assert!(!failed.contains(&"temporary"), "{failures:?}");
    let permanent = failures.iter().find(|f| f.stage == "permanent").unwrap();
    assert!(permanent.message.contains("producer 'failing' failed"), "{permanent:?}");
}

#[test]
fn a_transient_consumer_outlives_a_producer_that_ends_normally() {
    run(async {
        let mut pipeline = Pipeline::new();
        pipeline.producer("short", || FromIter::new(0..5u64));
        let received = Received::default();
        pipeline
            .consumer("transient", recorder(&received))
            .subscribe_to("short", SubscribeOptions::default().with_cancel(CancelMode::Transient));
        let mut running = pipeline.start().unwrap();
        let waited = tokio::time::timeout(Duration::from_secs(5), running.wait()).await;
        assert!(waited.is_err(), "a transient consumer keeps running after a normal end");
        assert_eq!(taken(&received), vec![0, 1, 2, 3, 4]);
        running.stop().await.unwrap();
    });
}

// ---- supervision ----------------------------------------------------------

/// Panics on multiples of `every`; counts its restarts through its factory.
struct PanicsOn {
    every: u64,
    received: Received,
}

impl Consumer for PanicsOn {
    type In = u64;

    async fn handle_events(&mut self, events: &mut Events<u64>) {
        for event in events {
            if event % self.every == 0 {
                panic!("poison event {event}");
            }
            self.received.lock().unwrap().push(event);
        }
    }
}

#[test]
fn a_panic_loses_only_the_event_being_handled() {
    let received = Received::default();
    let summary = run(async {
        let mut pipeline = Pipeline::new();
        pipeline.producer("numbers", || FromIter::new(1..=1000u64));
        let got = received.clone();
        pipeline
            .consumer("fragile", move || PanicsOn { every: 100, received: got.clone() })
            .restart(RestartPolicy::intensity(100, Duration::from_secs(5)))
            .subscribe_to("numbers", SubscribeOptions::default());
        pipeline.start().unwrap().stop_after_end().await
    });
    let expected: Vec<u64> = (1..=1000).filter(|x| x % 100 != 0).collect();
    assert_eq!(taken(&received), expected);
    let fragile = stage(&summary.stages, "fragile");
    assert_eq!((fragile.restarts, fragile.lost), (10, 10));
}

#[test]
fn a_panicking_pool_worker_is_restarted_and_the_other_events_arrive() {
    let received = Received::default();
    let summary = run(async {
        let mut pipeline = Pipeline::new();
        pipeline.producer("numbers", || FromIter::new(1..=500u64));
        let got = received.clone();
        pipeline
            .consumer("pool", move || PanicsOn { every: 50, received: got.clone() })
            .workers(PoolConfig::fixed(4).with_routing(Routing::LeastLoaded))
            .restart(RestartPolicy::intensity(100, Duration::from_secs(5)))
            .subscribe_to("numbers", SubscribeOptions::default());
        pipeline.start().unwrap().stop_after_end().await
    });
    let mut got = taken(&received);
    got.sort_unstable();
    assert_eq!(got, (1..=500).filter(|x| x % 50 != 0).collect::<Vec<_>>());
    let pool = stage(&summary.stages, "pool");
    assert_eq!((pool.restarts, pool.lost), (10, 10));
}

#[test]
fn too_many_crashes_escalate_with_a_clear_error() {
    let error = run(async {
        let mut pipeline = Pipeline::new();
        pipeline.producer("numbers", || FromIter::new(1..=1000u64));
        pipeline
            .consumer("doomed", || PanicsOn { every: 1, received: Received::default() })
            .restart(RestartPolicy::intensity(3, Duration::from_secs(5)))
            .subscribe_to("numbers", SubscribeOptions::default());
        pipeline.start().unwrap().wait_owned().await.unwrap_err()
    });
    let text = error.to_string();
    assert!(text.contains("stage 'doomed' failed"), "{text}");
    assert!(text.contains("exceed the limit of 3 restarts"), "{text}");
    assert!(text.contains("poison event"), "{text}");
}

// ---- pools ----------------------------------------------------------------

/// Emits events at a rate that steps through `phases` of (events/s, seconds).
struct Stepped {
    phases: Vec<(u64, u64)>,
    next: u64,
}

impl Producer for Stepped {
    type Out = u64;

    async fn produce(&mut self, demand: usize, out: &mut Emitter<u64>) -> Flow {
        let mut start = 0;
        for &(rate, seconds) in &self.phases {
            let end = start + rate * seconds;
            if self.next < end {
                tokio::time::sleep(Duration::from_secs_f64(1.0 / rate as f64)).await;
                let _ = demand;
                out.emit(self.next);
                self.next += 1;
                return Flow::Continue;
            }
            start = end;
        }
        Flow::Done
    }
}

/// Takes 10 ms per event.
struct Worker {
    received: Received,
}

impl Consumer for Worker {
    type In = u64;

    async fn handle_events(&mut self, events: &mut Events<u64>) {
        for event in events {
            tokio::time::sleep(Duration::from_millis(10)).await;
            self.received.lock().unwrap().push(event);
        }
    }
}

#[test]
fn autoscaling_follows_the_input_rate_up_and_down_and_loses_nothing() {
    let received = Received::default();
    let phases = vec![(50, 3), (1000, 3), (50, 4)];
    let total: u64 = phases.iter().map(|(rate, seconds)| rate * seconds).sum();
    let (sizes, summary) = run(async {
        let mut pipeline = Pipeline::new();
        let plan = phases.clone();
        pipeline.producer("stepped", move || Stepped { phases: plan.clone(), next: 0 });
        let got = received.clone();
        let mut pool = PoolConfig::autoscaled(1, 40);
        pool.autoscale =
            Some(stageflow::Autoscale { frame: Duration::from_secs(1), events_per_worker: 50.0 });
        pipeline
            .consumer("workers", move || Worker { received: got.clone() })
            .workers(pool)
            .subscribe_to("stepped", SubscribeOptions::default());
        let mut running = pipeline.start().unwrap();
        let reader = running.metrics_reader();
        let sampler = tokio::spawn(async move {
            let mut sizes = Vec::new();
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                sizes.push(reader.stage("workers").unwrap().workers);
            }
            sizes
        });
        let summary = running.wait().await.unwrap();
        (sampler.await.unwrap(), summary)
    });
    let mut got = taken(&received);
    got.sort_unstable();
    assert_eq!(got, (0..total).collect::<Vec<_>>(), "scaling lost or duplicated events");
    let low_before = sizes[..25].iter().copied().max().unwrap();
    let high = sizes[30..60].iter().copied().max().unwrap();
    let low_after = sizes[75..].iter().copied().filter(|&s| s > 0).min().unwrap();
    assert!(low_before <= 2, "started small: {sizes:?}");
    assert!(high >= 15, "scaled up at 1000 events/s: {sizes:?}");
    assert!(low_after <= 3, "scaled back down: {sizes:?}");
    assert_eq!(stage(&summary.stages, "workers").dropped, 0);
}

// ---- shutdown -------------------------------------------------------------

#[test]
fn shutdown_drains_everything_accepted() {
    let emitted = Arc::new(AtomicU64::new(0));
    let received = Received::default();
    let summary = run(async {
        let mut pipeline = Pipeline::new();
        let counted = emitted.clone();
        pipeline.producer("counter", move || Counter { next: 0, emitted: counted.clone() });
        pipeline
            .producer_consumer("double", || Map::new(|x: u64| x * 2))
            .subscribe_to("counter", SubscribeOptions::default());
        let got = received.clone();
        pipeline
            .consumer("slow", move || Worker { received: got.clone() })
            .subscribe_to("double", SubscribeOptions::bounds(DemandBounds::new(20, 10).unwrap()));
        let running = pipeline.start().unwrap();
        tokio::time::sleep(Duration::from_millis(555)).await;
        running.stop().await.unwrap()
    });
    let produced = emitted.load(Ordering::Relaxed);
    assert!(produced > 0);
    assert_eq!(taken(&received), (0..produced).map(|x| x * 2).collect::<Vec<_>>());
    for snapshot in &summary.stages {
        assert_eq!(snapshot.dropped, 0, "{}", snapshot.stage);
    }
}

#[test]
fn shutdown_flushes_windows_and_reports_a_drain_timeout_for_stuck_stages() {
    run(async {
        let mut pipeline = Pipeline::new();
        pipeline.drain_timeout(Duration::from_secs(3));
        let emitted = Arc::new(AtomicU64::new(0));
        pipeline.producer("counter", move || Counter { next: 0, emitted: emitted.clone() });
        pipeline
            .consumer("stuck", || StallAfter { limit: 5, taken: 0, received: Received::default() })
            .subscribe_to("counter", SubscribeOptions::default());
        let running = pipeline.start().unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        match running.stop().await {
            Err(PipelineError::DrainTimeout(stages)) => {
                assert!(stages.contains(&"stuck".to_string()), "{stages:?}")
            }
            other => panic!("expected a drain timeout, got {other:?}"),
        }
    });
}

// ---- windows --------------------------------------------------------------

/// One window's result: hashtags with their counts, most frequent first.
type TopTags = Vec<(String, u64)>;

#[test]
fn periodic_windows_emit_top_hashtags_per_window() {
    let windows: Arc<Mutex<Vec<TopTags>>> = Arc::default();
    run(async {
        let (feed, source) = tokio::sync::mpsc::channel::<u64>(64);
        let source = Arc::new(tokio::sync::Mutex::new(source));
        let mut pipeline = Pipeline::new();
        pipeline.producer("tags", move || channel_source(&source));
        let reducer = WindowReduce::new(
            Window::Periodic(Duration::from_secs(10)),
            HashMap::<String, u64>::new,
            |counts: &mut HashMap<String, u64>, tag: u64| {
                *counts.entry(format!("#tag{tag}")).or_default() += 1
            },
            |counts| top_n(counts, 2),
        );
        pipeline
            .producer_consumer("top", move || reducer.fresh())
            .subscribe_to("tags", SubscribeOptions::default());
        let sink = windows.clone();
        pipeline
            .consumer("sink", move || {
                let sink = sink.clone();
                ForEach::new(move |window: TopTags| sink.lock().unwrap().push(window))
            })
            .subscribe_to("top", SubscribeOptions::default());
        let running = pipeline.start().unwrap();
        for tag in [1, 1, 2, 3, 3, 3] {
            feed.send(tag).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(11)).await;
        for tag in [2, 2] {
            feed.send(tag).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        feed.send(4).await.unwrap();
        drop(feed);
        running.stop().await.unwrap();
    });
    let windows = windows.lock().unwrap().clone();
    assert_eq!(
        windows,
        vec![
            vec![("#tag3".to_string(), 3), ("#tag1".to_string(), 2)],
            vec![("#tag2".to_string(), 2)],
            vec![("#tag4".to_string(), 1)],
        ]
    );
}

// ---- validation and outside subscribers -----------------------------------

#[test]
fn invalid_graphs_are_rejected_with_every_problem_named() {
    let mut pipeline = Pipeline::new();
    pipeline.producer("numbers", || FromIter::new(0..10u64));
    pipeline.producer("numbers", || FromIter::new(0..10u64));
    pipeline
        .consumer("words", || ForEach::new(|_: String| {}))
        .subscribe_to("numbers", SubscribeOptions::default());
    pipeline
        .consumer("ghost", || ForEach::new(|_: u64| {}))
        .subscribe_to("nowhere", SubscribeOptions::default());
    pipeline.producer_consumer("a", || Map::new(|x: u64| x)).subscribe_to("b", SubscribeOptions::default());
    pipeline.producer_consumer("b", || Map::new(|x: u64| x)).subscribe_to("a", SubscribeOptions::default());
    pipeline
        .consumer("pooled", || ForEach::new(|_: u64| {}))
        .workers(PoolConfig::autoscaled(5, 2))
        .subscribe_to("a", SubscribeOptions::default());
    let problems = pipeline.validate();
    let text = problems.join("\n");
    assert!(text.contains("stage id 'numbers' is used more than once"), "{text}");
    assert!(text.contains("stage 'words' takes alloc::string::String but 'numbers' emits u64"), "{text}");
    assert!(text.contains("stage 'ghost' subscribes to 'nowhere', which does not exist"), "{text}");
    assert!(
        text.contains("the stages form a cycle: a -> b -> a") || text.contains("cycle: b -> a -> b"),
        "{text}"
    );
    assert!(text.contains("workers.min (5) must not exceed workers.max (2)"), "{text}");
    assert!(matches!(pipeline.start(), Err(PipelineError::Invalid(p)) if p.len() == problems.len()));
}

#[test]
fn partition_subscribers_must_name_a_free_partition() {
    run(async {
        let mut pipeline = Pipeline::new();
        pipeline
            .producer("numbers", || FromIter::new(0..10u64))
            .dispatcher(PartitionDispatcher::new(2, Arc::new(|x: &u64| *x as usize)));
        pipeline
            .consumer("unnamed", || ForEach::new(|_: u64| {}))
            .subscribe_to("numbers", SubscribeOptions::default());
        let error = pipeline.start().err().expect("rejected").to_string();
        assert!(error.contains("stage 'unnamed' cannot subscribe to 'numbers'"), "{error}");
        assert!(error.contains("must name its partition"), "{error}");
    });
}

#[test]
fn outside_subscribers_join_a_running_broadcast() {
    run(async {
        let (feed, source) = tokio::sync::mpsc::channel::<u64>(64);
        let source = Arc::new(tokio::sync::Mutex::new(source));
        let mut pipeline = Pipeline::new();
        pipeline.producer("live", move || channel_source(&source)).dispatcher(BroadcastDispatcher::new());
        let running = pipeline.start().unwrap();
        let first = running.subscribe::<u64>("live", SubscribeOptions::default()).await.unwrap();
        let evens = running
            .subscribe::<u64>("live", SubscribeOptions::default().with_selector(|x| x % 2 == 0))
            .await
            .unwrap();
        let wrong_type = running.subscribe::<String>("live", SubscribeOptions::default()).await;
        assert!(wrong_type.err().unwrap().to_string().contains("does not emit events of type"));
        let read = |subscription: stageflow::Subscription<u64>, count: usize| {
            tokio::spawn(subscription.into_stream().take(count).collect::<Vec<u64>>())
        };
        let (all, even) = (read(first, 6), read(evens, 3));
        for x in 0..6 {
            feed.send(x).await.unwrap();
        }
        let (all, even) = (all.await.unwrap(), even.await.unwrap());
        assert_eq!(all, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(even, vec![0, 2, 4]);
        running.stop().await.unwrap();
    });
}

/// Convenience for tests: wait on a pipeline that ends by itself.
trait EndsByItself {
    fn stop_after_end(self) -> impl Future<Output = stageflow::PipelineSummary>;
    fn wait_owned(self) -> impl Future<Output = Result<stageflow::PipelineSummary, PipelineError>>;
}

impl EndsByItself for stageflow::PipelineHandle {
    async fn stop_after_end(mut self) -> stageflow::PipelineSummary {
        self.wait().await.expect("pipeline succeeds")
    }

    async fn wait_owned(mut self) -> Result<stageflow::PipelineSummary, PipelineError> {
        self.wait().await
    }
}

#[test]
fn an_autoscaled_pool_drains_its_backlog_on_shutdown() {
    let received = Received::default();
    let emitted = Arc::new(AtomicU64::new(0));
    let summary = run(async {
        let mut pipeline = Pipeline::new();
        let counted = emitted.clone();
        pipeline.producer("counter", move || Counter { next: 0, emitted: counted.clone() });
        let got = received.clone();
        let mut pool = PoolConfig::autoscaled(1, 100);
        pool.autoscale = Some(stageflow::Autoscale { frame: Duration::from_secs(1), events_per_worker: 3.0 });
        pipeline
            .consumer("slow", move || SlowWorker { received: got.clone() })
            .workers(pool)
            .subscribe_to("counter", SubscribeOptions::bounds(DemandBounds::new(400, 200).unwrap()));
        pipeline.drain_timeout(Duration::from_secs(120));
        let running = pipeline.start().unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        running.stop().await.expect("drains within the timeout")
    });
    let produced = emitted.load(Ordering::Relaxed);
    let mut got = taken(&received);
    got.sort_unstable();
    assert_eq!(got, (0..produced).collect::<Vec<_>>(), "every event accepted was handled");
    assert_eq!(stage(&summary.stages, "slow").dropped, 0);
}

/// Takes 275 ms per event.
struct SlowWorker {
    received: Received,
}

impl Consumer for SlowWorker {
    type In = u64;

    async fn handle_events(&mut self, events: &mut Events<u64>) {
        for event in events {
            tokio::time::sleep(Duration::from_millis(275)).await;
            self.received.lock().unwrap().push(event);
        }
    }
}

// ---- on both runtimes: quiet producers, demand bounds, late subscribers ---

/// How long one of the tests below may take on one runtime.
const LIMIT: Duration = Duration::from_secs(20);

/// Runs `test` on a current-thread and on a multi-thread runtime, each within
/// `LIMIT` (`tokio::time::timeout`). Each runtime runs on a thread of its own,
/// watched from here: a stage that never yields holds a current-thread
/// runtime and its timers, the timeout's included, so the watch turns such a
/// hang into a failure.
fn on_both_runtimes<F, Fut>(test: F)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()>,
{
    for multi_thread in [false, true] {
        let flavor = if multi_thread { "multi-thread" } else { "current-thread" };
        let test = test.clone();
        let (done, finished) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut builder = if multi_thread {
                let mut builder = tokio::runtime::Builder::new_multi_thread();
                builder.worker_threads(2);
                builder
            } else {
                tokio::runtime::Builder::new_current_thread()
            };
            let runtime = builder.enable_all().build().expect("a runtime");
            runtime.block_on(async {
                tokio::time::timeout(LIMIT, test())
                    .await
                    .unwrap_or_else(|_| panic!("not finished within {LIMIT:?} on the {flavor} runtime"))
            });
            let _ = done.send(());
        });
        match finished.recv_timeout(LIMIT + Duration::from_secs(10)) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("the {flavor} runtime hung: not even its timers ran")
            }
            _ => {
                if let Err(panic) = thread.join() {
                    std::panic::resume_unwind(panic);
                }
            }
        }
    }
}

/// Waits (polling, bounded by the caller's timeout) until `condition` holds.
async fn until(mut condition: impl FnMut() -> bool) {
    while !condition() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Has nothing to give: every call returns `Continue` having emitted nothing
/// (GenStage's `NothingProducer`). `PUSHES` makes it a push source.
struct Silent<const PUSHES: bool> {
    calls: Arc<AtomicUsize>,
}

impl<const PUSHES: bool> Producer for Silent<PUSHES> {
    type Out = u64;
    const PUSH: bool = PUSHES;

    async fn produce(&mut self, _demand: usize, _out: &mut Emitter<u64>) -> Flow {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Flow::Continue
    }
}

async fn a_silent_producer_is_called_once_per_new_demand<const PUSHES: bool>() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let mut pipeline = Pipeline::new();
    pipeline.drain_timeout(Duration::from_secs(5));
    pipeline.producer("silent", move || Silent::<PUSHES> { calls: counted.clone() });
    pipeline
        .consumer("record", recorder(&Received::default()))
        .subscribe_to("silent", SubscribeOptions::bounds(DemandBounds::new(10, 5).unwrap()));
    let running = pipeline.start().unwrap();
    until(|| calls.load(Ordering::Relaxed) >= 1).await;
    // Timers still fire (on a current-thread runtime too), and in this time
    // a spinning producer is called ~100 000 times.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // One call for the consumer's demand; a push source may also have been
    // called at start, before that demand came in.
    let settled = calls.load(Ordering::Relaxed);
    assert!(settled <= 2, "a quiet producer is not called again without new demand: {settled} calls");
    let outside = running.subscribe::<u64>("silent", SubscribeOptions::default()).await.unwrap();
    until(|| calls.load(Ordering::Relaxed) > settled).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(calls.load(Ordering::Relaxed), settled + 1, "new demand: exactly one more call");
    drop(outside);
    running.stop().await.expect("a quiet producer stops at once, no drain timeout");
}

#[test]
fn a_producer_that_emits_nothing_waits_for_new_demand_instead_of_spinning() {
    on_both_runtimes(a_silent_producer_is_called_once_per_new_demand::<false>);
}

#[test]
fn a_push_producer_that_emits_nothing_waits_too() {
    on_both_runtimes(a_silent_producer_is_called_once_per_new_demand::<true>);
}

/// A source fed from outside: emits what is queued, and is woken by whoever queues.
struct Fed {
    queue: Arc<Mutex<Vec<u64>>>,
    wakeup: Arc<Mutex<Option<stageflow::Wakeup>>>,
    calls: Arc<AtomicUsize>,
}

impl Producer for Fed {
    type Out = u64;

    async fn produce(&mut self, demand: usize, out: &mut Emitter<u64>) -> Flow {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut queue = self.queue.lock().unwrap();
        let take = demand.min(queue.len());
        out.extend(queue.drain(..take));
        Flow::Continue
    }

    fn handle_wakeup(&mut self, wakeup: stageflow::Wakeup) {
        *self.wakeup.lock().unwrap() = Some(wakeup);
    }
}

#[test]
fn a_quiet_source_fed_from_outside_is_woken_by_its_wakeup() {
    on_both_runtimes(|| async {
        let queue = Arc::new(Mutex::new(Vec::new()));
        let wakeup = Arc::new(Mutex::new(None::<stageflow::Wakeup>));
        let calls = Arc::new(AtomicUsize::new(0));
        let received = Received::default();
        let mut pipeline = Pipeline::new();
        let (fed, slot, counted) = (queue.clone(), wakeup.clone(), calls.clone());
        pipeline.producer("fed", move || Fed {
            queue: fed.clone(),
            wakeup: slot.clone(),
            calls: counted.clone(),
        });
        pipeline.consumer("record", recorder(&received)).subscribe_to("fed", SubscribeOptions::default());
        let running = pipeline.start().unwrap();
        until(|| calls.load(Ordering::Relaxed) == 1).await;
        let wake = || wakeup.lock().unwrap().clone().expect("handed over before the first call").wake();
        for round in 0..3u64 {
            queue.lock().unwrap().extend([round * 2, round * 2 + 1]);
            wake();
            until(|| taken(&received).len() == 2 * (round as usize + 1)).await;
        }
        assert_eq!(taken(&received), vec![0, 1, 2, 3, 4, 5]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        // One call at the first demand, then per wake-up one that emits and one that finds nothing.
        assert!(calls.load(Ordering::Relaxed) <= 7, "{} calls", calls.load(Ordering::Relaxed));
        running.stop().await.unwrap();
    });
}

/// Always has events at hand and never awaits.
struct Busy;

impl Producer for Busy {
    type Out = u64;

    async fn produce(&mut self, demand: usize, out: &mut Emitter<u64>) -> Flow {
        out.extend((0..demand as u64).map(|_| 1));
        Flow::Continue
    }
}

#[test]
fn a_source_that_never_awaits_leaves_room_for_timers_and_shutdown() {
    on_both_runtimes(|| async {
        let count = Arc::new(AtomicU64::new(0));
        let counted = count.clone();
        let mut pipeline = Pipeline::new();
        pipeline.drain_timeout(Duration::from_secs(5));
        pipeline.producer("busy", || Busy);
        pipeline
            .consumer("count", move || {
                let counted = counted.clone();
                ForEach::new(move |x: u64| {
                    counted.fetch_add(x, Ordering::Relaxed);
                })
            })
            .subscribe_to("busy", SubscribeOptions::default());
        let running = pipeline.start().unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        until(|| count.load(Ordering::Relaxed) > 0).await;
        running.stop().await.expect("stops within the drain timeout");
    });
}

#[test]
fn invalid_demand_bounds_are_refused_by_the_builder_and_the_outside_subscribe_in_the_same_words() {
    on_both_runtimes(|| async {
        for (max, min) in [(0, 0), (10, 10), (10, 20)] {
            let why = DemandBounds::new(max, min).expect_err("invalid bounds").to_string();
            let mut pipeline = Pipeline::new();
            pipeline.producer("numbers", || FromIter::new(0..10u64));
            pipeline
                .consumer("sum", || ForEach::new(|_: u64| {}))
                .subscribe_to("numbers", SubscribeOptions::default().with_demand(max, min));
            let expected = format!("stage 'sum': subscription to 'numbers': {why}");
            assert_eq!(pipeline.validate(), vec![expected.clone()]);
            match pipeline.start() {
                Err(PipelineError::Invalid(problems)) => assert_eq!(problems, vec![expected]),
                other => panic!("{max}/{min} must be refused, got {:?}", other.map(|_| "a running pipeline")),
            }

            let mut pipeline = Pipeline::new();
            let (feed, source) = tokio::sync::mpsc::channel::<u64>(1);
            let source = Arc::new(tokio::sync::Mutex::new(source));
            pipeline.producer("numbers", move || channel_source(&source));
            let running = pipeline.start().unwrap();
            let refused =
                running.subscribe::<u64>("numbers", SubscribeOptions::default().with_demand(max, min));
            match refused.await {
                Err(PipelineError::Request(text)) => {
                    assert_eq!(text, format!("subscription to 'numbers': {why}"))
                }
                other => panic!("{max}/{min} must be refused, got {:?}", other.map(|_| "a subscription")),
            }
            drop(feed);
            running.stop().await.unwrap();
        }
    });
}

#[test]
fn the_smallest_valid_bounds_deliver_everything_one_event_at_a_time() {
    on_both_runtimes(|| async {
        let received = Received::default();
        let mut pipeline = Pipeline::new();
        pipeline.producer("numbers", || FromIter::new(0..100u64));
        pipeline
            .consumer("record", recorder(&received))
            .subscribe_to("numbers", SubscribeOptions::default().with_demand(1, 0));
        pipeline.start().unwrap().wait_owned().await.expect("ends when the numbers do");
        assert_eq!(taken(&received), (0..100).collect::<Vec<_>>());
    });
}

/// A push source that emits everything at its first call and ends: what
/// nobody has credits for waits in its buffer while it drains.
struct AllAtOnce {
    count: u64,
}

impl Producer for AllAtOnce {
    type Out = u64;
    const PUSH: bool = true;

    async fn produce(&mut self, _demand: usize, out: &mut Emitter<u64>) -> Flow {
        out.extend(0..self.count);
        Flow::Done
    }
}

/// Reads an outside subscription until its producer ends it.
async fn read_to_end(subscription: stageflow::Subscription<u64>) -> Vec<u64> {
    let mut events = subscription.into_stream();
    let got = events.by_ref().collect().await;
    assert_eq!(events.end_reason(), Some(&stageflow::EndReason::Normal));
    got
}

#[test]
fn a_partition_producer_makes_only_what_its_buffer_can_hold_for_partitions_without_credits() {
    // The odd partition's consumer takes 10 ms per event, so the even one's
    // asks keep the producer making events, half of them odd, which wait for
    // their partition's credits. With 1000 credits per partition and a
    // buffer of 100, making all the even partition asked for would overfill
    // the buffer, and its policy would drop events nobody lost on purpose.
    let (evens, odds) = (Received::default(), Received::default());
    let summary = run(async {
        let mut pipeline = Pipeline::new();
        pipeline
            .producer("numbers", || FromIter::new(0..4000u64))
            .dispatcher(PartitionDispatcher::new(2, Arc::new(|x: &u64| *x as usize)))
            .buffer(100, BufferKeep::First);
        pipeline
            .consumer("evens", recorder(&evens))
            .subscribe_to("numbers", SubscribeOptions::default().with_partition(0));
        let received = odds.clone();
        pipeline
            .consumer("odds", move || Worker { received: received.clone() })
            .subscribe_to("numbers", SubscribeOptions::default().with_partition(1));
        pipeline.start().unwrap().stop_after_end().await
    });
    assert_eq!(stage(&summary.stages, "numbers").dropped, 0);
    assert_eq!(taken(&evens), (0..2000).map(|x| 2 * x).collect::<Vec<_>>());
    assert_eq!(taken(&odds), (0..2000).map(|x| 2 * x + 1).collect::<Vec<_>>());
}

#[test]
fn a_late_subscriber_of_a_draining_partition_producer_gets_its_partition() {
    on_both_runtimes(|| async {
        let evens = Received::default();
        let mut pipeline = Pipeline::new();
        pipeline
            .producer("numbers", || AllAtOnce { count: 20 })
            .dispatcher(PartitionDispatcher::new(2, Arc::new(|x: &u64| *x as usize)));
        pipeline
            .consumer("evens", recorder(&evens))
            .subscribe_to("numbers", SubscribeOptions::default().with_partition(0));
        let mut running = pipeline.start().unwrap();
        // The source has ended: the producer drains, holding the odd numbers.
        until(|| taken(&evens).len() == 10).await;
        let odds = running
            .subscribe::<u64>("numbers", SubscribeOptions::default().with_partition(1))
            .await
            .expect("a subscribe during the drain is answered");
        assert_eq!(read_to_end(odds).await, (0..10).map(|x| 2 * x + 1).collect::<Vec<_>>());
        running.wait().await.expect("the drain ends once the late subscriber took its events");
        assert_eq!(taken(&evens), (0..10).map(|x| 2 * x).collect::<Vec<_>>());
    });
}

#[test]
fn a_late_subscriber_of_a_draining_demand_producer_takes_what_a_stalled_one_cannot() {
    on_both_runtimes(|| async {
        let stalled = Received::default();
        let mut pipeline = Pipeline::new();
        pipeline.drain_timeout(Duration::from_secs(1));
        pipeline.producer("numbers", || AllAtOnce { count: 20 });
        let got = stalled.clone();
        pipeline
            .consumer("stalled", move || StallAfter { limit: 5, taken: 0, received: got.clone() })
            .subscribe_to("numbers", SubscribeOptions::default().with_demand(5, 2));
        let running = pipeline.start().unwrap();
        until(|| taken(&stalled).len() == 5).await;
        let late = running
            .subscribe::<u64>("numbers", SubscribeOptions::default())
            .await
            .expect("a subscribe during the drain is answered");
        // The stalled consumer took 0..5 and holds at most its max_demand (5)
        // of credits asked for since; the late subscriber gets the rest.
        let late = read_to_end(late).await;
        assert!(late.len() >= 10, "{late:?}");
        assert_eq!(late, (20 - late.len() as u64..20).collect::<Vec<_>>());
        assert_eq!(taken(&stalled), vec![0, 1, 2, 3, 4]);
        match running.stop().await {
            Err(PipelineError::DrainTimeout(stages)) => assert_eq!(stages, vec!["stalled".to_string()]),
            other => panic!("expected a drain timeout naming 'stalled', got {other:?}"),
        }
    });
}

#[test]
fn a_late_subscriber_of_a_draining_broadcast_is_answered_and_a_stalled_one_is_named() {
    on_both_runtimes(|| async {
        let stalled = Received::default();
        let mut pipeline = Pipeline::new();
        pipeline.drain_timeout(Duration::from_secs(1));
        pipeline.producer("numbers", || AllAtOnce { count: 20 }).dispatcher(BroadcastDispatcher::new());
        let got = stalled.clone();
        pipeline
            .consumer("stalled", move || StallAfter { limit: 5, taken: 0, received: got.clone() })
            .subscribe_to("numbers", SubscribeOptions::default().with_demand(5, 2));
        let running = pipeline.start().unwrap();
        until(|| taken(&stalled).len() == 5).await;
        let late = running.subscribe::<u64>("numbers", SubscribeOptions::default()).await;
        assert!(late.is_ok(), "a subscribe during the drain is answered");
        match running.stop().await {
            // The broadcast is paced by the stalled subscriber: the producer
            // still holds events for both when the drain times out.
            Err(PipelineError::DrainTimeout(mut stages)) => {
                stages.sort();
                assert_eq!(stages, vec!["numbers".to_string(), "stalled".to_string()]);
            }
            other => panic!("expected a drain timeout naming 'stalled', got {other:?}"),
        }
    });
}

// ---- followers: producers that end with the pipeline's data --------------

/// Every `period`, emits the running total a data consumer keeps; ends with
/// the data, emitting the total once more from `flush`.
struct Pulse {
    period: Duration,
    total: Arc<AtomicU64>,
    flushes: Arc<AtomicUsize>,
}

impl Producer for Pulse {
    type Out = u64;
    const FOLLOWS_SOURCES: bool = true;

    async fn produce(&mut self, _demand: usize, out: &mut Emitter<u64>) -> Flow {
        tokio::time::sleep(self.period).await;
        out.emit(self.total.load(Ordering::Relaxed));
        Flow::Continue
    }

    async fn flush(&mut self, _demand: usize, out: &mut Emitter<u64>) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        out.emit(self.total.load(Ordering::Relaxed));
    }
}

/// Adds what it takes to `total`, a millisecond per event.
fn slow_sum(total: &Arc<AtomicU64>) -> impl Fn() -> SlowSum + Send + Sync + 'static {
    let total = total.clone();
    move || SlowSum { total: total.clone() }
}

struct SlowSum {
    total: Arc<AtomicU64>,
}

impl Consumer for SlowSum {
    type In = u64;

    async fn handle_events(&mut self, events: &mut Events<u64>) {
        for event in events {
            tokio::time::sleep(Duration::from_millis(1)).await;
            self.total.fetch_add(event, Ordering::Relaxed);
        }
    }
}

#[test]
fn a_follower_ends_after_the_data_with_a_final_flush_covering_the_tail() {
    on_both_runtimes(|| async {
        let (total, flushes, pulses) =
            (Arc::new(AtomicU64::new(0)), Arc::new(AtomicUsize::new(0)), Received::default());
        let mut pipeline = Pipeline::new();
        pipeline.producer("numbers", || FromIter::new(0..100u64));
        pipeline.consumer("sum", slow_sum(&total)).subscribe_to("numbers", SubscribeOptions::default());
        let (summed, flushed) = (total.clone(), flushes.clone());
        pipeline.producer("pulse", move || Pulse {
            period: Duration::from_millis(20),
            total: summed.clone(),
            flushes: flushed.clone(),
        });
        // What a follower feeds ends after it, as usual.
        pipeline
            .producer_consumer("relay", || Map::new(|x: u64| x))
            .subscribe_to("pulse", SubscribeOptions::default());
        pipeline.consumer("pulses", recorder(&pulses)).subscribe_to("relay", SubscribeOptions::default());
        pipeline.start().unwrap().wait_owned().await.expect("ends by itself once the data has");
        assert_eq!(flushes.load(Ordering::Relaxed), 1);
        let pulses = taken(&pulses);
        assert_eq!(
            pulses.last(),
            Some(&4950),
            "the last pulse, from flush, covers everything summed: {pulses:?}"
        );
        assert!(pulses.windows(2).all(|pair| pair[0] <= pair[1]), "{pulses:?}");
    });
}

#[test]
fn followers_without_data_to_follow_run_until_shutdown_and_flush_then() {
    on_both_runtimes(|| async {
        let (total, flushes, pulses) =
            (Arc::new(AtomicU64::new(7)), Arc::new(AtomicUsize::new(0)), Received::default());
        let mut pipeline = Pipeline::new();
        let flushed = flushes.clone();
        pipeline.producer("pulse", move || Pulse {
            period: Duration::from_millis(10),
            total: total.clone(),
            flushes: flushed.clone(),
        });
        pipeline.consumer("pulses", recorder(&pulses)).subscribe_to("pulse", SubscribeOptions::default());
        let running = pipeline.start().unwrap();
        until(|| taken(&pulses).len() >= 3).await;
        assert_eq!(flushes.load(Ordering::Relaxed), 0, "still running: nothing to follow");
        running.stop().await.unwrap();
        assert_eq!(flushes.load(Ordering::Relaxed), 1, "flushed once at shutdown");
        assert!(taken(&pulses).iter().all(|pulse| *pulse == 7));
    });
}

/// Records how many events each callback took, blocking `work` in each.
struct CallbackSizes {
    sizes: Arc<Mutex<Vec<usize>>>,
    work: Duration,
}

impl Consumer for CallbackSizes {
    type In = u64;

    async fn handle_events(&mut self, events: &mut Events<u64>) {
        std::thread::sleep(self.work);
        let taken = events.take_batch().len();
        self.sizes.lock().unwrap().push(taken);
    }
}

/// The sizes of the callbacks of a consumer of 10 000 events at the default
/// bounds (1000 / 500), alone or as a pool of `workers`.
fn callback_sizes(work: Duration, workers: Option<usize>) -> Vec<usize> {
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let recorded = sizes.clone();
    run(async move {
        let mut pipeline = Pipeline::new();
        pipeline.producer("numbers", || FromIter::new(0..10_000u64));
        let consumer = pipeline.consumer("sizes", move || CallbackSizes { sizes: recorded.clone(), work });
        if let Some(workers) = workers {
            consumer.workers(PoolConfig::fixed(workers));
        }
        consumer.subscribe_to("numbers", SubscribeOptions::default());
        pipeline.start().unwrap().wait_owned().await.expect("ends with its data");
    });
    let sizes = sizes.lock().unwrap().clone();
    assert_eq!(sizes.iter().sum::<usize>(), 10_000, "{sizes:?}");
    sizes
}

#[test]
fn a_fast_consumer_takes_a_batch_whole_and_a_slow_one_in_chunks_of_max_minus_min_demand() {
    let fast = callback_sizes(Duration::ZERO, None);
    assert!(fast.iter().any(|&size| size > 500), "a whole batch of up to 1000 in one callback: {fast:?}");
    assert!(fast.iter().all(|&size| size <= 1000), "never more than max_demand: {fast:?}");
    // The first callback finds the stage slow; every one after it takes a chunk.
    let slow = callback_sizes(Duration::from_micros(200), None);
    assert!(slow[1..].iter().all(|&size| size <= 500), "chunks of 1000 - 500: {slow:?}");
}

#[test]
fn a_fast_pool_hands_its_workers_chunks_and_a_slow_one_single_events() {
    let fast = callback_sizes(Duration::ZERO, Some(2));
    assert!(
        fast.iter().any(|&size| size > 100),
        "shares of the backlog, not one event per wake-up: {fast:?}"
    );
    assert!(fast.iter().all(|&size| size <= 1000), "never more than the pool holds: {fast:?}");
    // Slow from the start, so no sleeping worker holds what a free one could take.
    let slow = callback_sizes(Duration::from_micros(50), Some(2));
    assert!(
        slow.iter().all(|&size| size == 1),
        "{:?}",
        slow.iter().filter(|&&size| size > 1).collect::<Vec<_>>()
    );
}
