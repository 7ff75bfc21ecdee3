//! Failure policies: an event a callback panicked on is tried again on the
//! restarted stage (`max_attempts`), then dead-lettered, or lost without a
//! handler; and the pipeline-file keys `max_attempts` and `dead_letter`.
//!
//! Runs on a paused current-thread runtime: nothing here waits on a clock.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stageflow::config::{
    BuildContext, DeadLetterRecord, DeadLetterTargets, DeadLetterWriter, DispatcherChoices, Kind, Registry,
    StageDecl, configure, kind, parse_pipeline,
};
use stageflow::failure::{DeadLetter, FailurePolicy};
use stageflow::ops::FromIter;
use stageflow::{
    Consumer, Events, Nothing, Pipeline, PoolConfig, RestartPolicy, StageSnapshot, SubscribeOptions,
};

fn run<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(future)
}

/// Waits for a pipeline that ends by itself; it must succeed.
async fn ends(mut running: stageflow::PipelineHandle) -> stageflow::PipelineSummary {
    running.wait().await.expect("the pipeline succeeds")
}

fn stage<'a>(stages: &'a [StageSnapshot], id: &str) -> &'a StageSnapshot {
    stages.iter().find(|s| s.stage == id).unwrap_or_else(|| panic!("no stage {id}"))
}

type Received = Arc<Mutex<Vec<u64>>>;
/// How many times each event was handed to a callback, over every incarnation.
type Seen = Arc<Mutex<HashMap<u64, u32>>>;

/// Panics on an event while it has been seen fewer than `fail_times` times (`u32::MAX`: always).
struct Flaky {
    poison: u64,
    fail_times: u32,
    seen: Seen,
    received: Received,
}

impl Consumer for Flaky {
    type In = u64;

    async fn handle_events(&mut self, events: &mut Events<u64>) {
        for event in events {
            let times = {
                let mut seen = self.seen.lock().unwrap();
                let times = seen.entry(event).or_default();
                *times += 1;
                *times
            };
            if event % self.poison == 0 && times <= self.fail_times {
                panic!("poison event {event} (try {times})");
            }
            self.received.lock().unwrap().push(event);
        }
    }
}

fn flaky(
    poison: u64,
    fail_times: u32,
    seen: &Seen,
    received: &Received,
) -> impl Fn() -> Flaky + Send + Sync + 'static {
    let (seen, received) = (seen.clone(), received.clone());
    move || Flaky { poison, fail_times, seen: seen.clone(), received: received.clone() }
}

fn collector(letters: &Arc<Mutex<Vec<DeadLetter<u64>>>>) -> stageflow::failure::DeadLetterFn<u64> {
    let letters = letters.clone();
    Arc::new(move |letter| {
        letters.lock().unwrap().push(letter);
        Box::pin(async {})
    })
}

/// Like [`Flaky`], taking its whole share at once with `take_batch`; says
/// which events it handled (`Events::handled`) as it goes when `reports`.
struct BatchFlaky {
    flaky: Flaky,
    reports: bool,
}

impl Consumer for BatchFlaky {
    type In = u64;

    async fn handle_events(&mut self, events: &mut Events<u64>) {
        let batch = events.take_batch();
        for (done, event) in batch.into_iter().enumerate() {
            let times = {
                let mut seen = self.flaky.seen.lock().unwrap();
                let times = seen.entry(event).or_default();
                *times += 1;
                *times
            };
            if event % self.flaky.poison == 0 && times <= self.flaky.fail_times {
                panic!("poison event {event} (try {times})");
            }
            self.flaky.received.lock().unwrap().push(event);
            if self.reports {
                events.handled(done + 1);
            }
        }
    }
}

fn batch_flaky(
    poison: u64,
    fail_times: u32,
    reports: bool,
    seen: &Seen,
    received: &Received,
) -> impl Fn() -> BatchFlaky + Send + Sync + 'static {
    let flaky = flaky(poison, fail_times, seen, received);
    move || BatchFlaky { flaky: flaky(), reports }
}

/// Runs 1..=100 into `consumer` configured by `configure`; returns the stage's snapshot.
fn run_numbers<C: Consumer<In = u64>>(
    consumer: impl Fn() -> C + Send + Sync + 'static,
    pool: Option<PoolConfig>,
    policy: Option<FailurePolicy<u64>>,
) -> StageSnapshot {
    let summary = run(async {
        let mut pipeline = Pipeline::new();
        pipeline.producer("numbers", || FromIter::new(1..=100u64));
        let config = pipeline.consumer("fragile", consumer);
        config
            .restart(RestartPolicy::intensity(1_000, Duration::from_secs(5)))
            .subscribe_to("numbers", SubscribeOptions::default());
        if let Some(pool) = pool {
            config.workers(pool);
        }
        if let Some(policy) = policy {
            config.on_failure(policy);
        }
        ends(pipeline.start().unwrap()).await
    });
    stage(&summary.stages, "fragile").clone()
}

fn sorted(received: &Received) -> Vec<u64> {
    let mut got = received.lock().unwrap().clone();
    got.sort_unstable();
    got
}

#[test]
fn without_a_policy_the_panicking_event_is_lost_and_never_tried_again() {
    let (seen, received) = (Seen::default(), Received::default());
    let fragile = run_numbers(flaky(10, 1, &seen, &received), None, None);
    assert_eq!((fragile.restarts, fragile.lost, fragile.dead_lettered), (10, 10, 0));
    assert_eq!(sorted(&received), (1..=100).filter(|x| x % 10 != 0).collect::<Vec<_>>());
    assert_eq!(seen.lock().unwrap()[&10], 1);
}

#[test]
fn an_event_that_fails_once_succeeds_on_its_second_attempt() {
    for pool in [None, Some(PoolConfig::fixed(3))] {
        let (seen, received) = (Seen::default(), Received::default());
        let fragile = run_numbers(flaky(10, 1, &seen, &received), pool, Some(FailurePolicy::new(2)));
        assert_eq!((fragile.restarts, fragile.lost, fragile.dead_lettered), (10, 0, 0), "pool {pool:?}");
        assert_eq!(sorted(&received), (1..=100).collect::<Vec<_>>(), "pool {pool:?}");
        assert_eq!(seen.lock().unwrap()[&10], 2, "pool {pool:?}");
        assert_eq!(seen.lock().unwrap()[&11], 1, "events after it are handled once: pool {pool:?}");
    }
}

#[test]
fn an_event_that_always_fails_is_dead_lettered_after_max_attempts_with_the_last_panic() {
    for pool in [None, Some(PoolConfig::fixed(3))] {
        let (seen, received) = (Seen::default(), Received::default());
        let letters = Arc::new(Mutex::new(Vec::new()));
        let policy = FailurePolicy::new(3).dead_letter(collector(&letters));
        let fragile = run_numbers(flaky(25, u32::MAX, &seen, &received), pool, Some(policy));
        assert_eq!((fragile.restarts, fragile.lost, fragile.dead_lettered), (12, 0, 4), "pool {pool:?}");
        assert_eq!(sorted(&received), (1..=100).filter(|x| x % 25 != 0).collect::<Vec<_>>());
        let mut letters = letters.lock().unwrap().clone();
        letters.sort_by_key(|letter| letter.event);
        let events: Vec<u64> = letters.iter().map(|letter| letter.event).collect();
        assert_eq!(events, [25, 50, 75, 100], "pool {pool:?}");
        for letter in &letters {
            assert_eq!((letter.stage.as_str(), letter.attempts), ("fragile", 3));
            assert_eq!(letter.error, format!("poison event {} (try 3)", letter.event));
            assert_eq!(seen.lock().unwrap()[&letter.event], 3);
        }
    }
}

#[test]
fn max_attempts_without_a_handler_counts_the_event_lost_after_the_last_try() {
    let (seen, received) = (Seen::default(), Received::default());
    let fragile = run_numbers(flaky(50, u32::MAX, &seen, &received), None, Some(FailurePolicy::new(2)));
    assert_eq!((fragile.restarts, fragile.lost, fragile.dead_lettered), (4, 2, 0));
    assert_eq!(seen.lock().unwrap()[&50], 2);
    assert_eq!(sorted(&received).len(), 98);
}

/// How many times each of 1..=100 was handled successfully, in order.
fn successes(received: &Received) -> Vec<usize> {
    let received = received.lock().unwrap();
    (1..=100).map(|n| received.iter().filter(|&&x| x == n).count()).collect()
}

#[test]
fn a_batch_callback_that_says_what_it_handled_gets_only_the_rest_again_each_event_once() {
    for pool in [None, Some(PoolConfig::fixed(3))] {
        let (seen, received) = (Seen::default(), Received::default());
        let policy = FailurePolicy::new(3);
        let fragile = run_numbers(batch_flaky(10, 1, true, &seen, &received), pool, Some(policy));
        assert_eq!(successes(&received), vec![1; 100], "each event handled once: pool {pool:?}");
        assert_eq!((fragile.restarts, fragile.lost, fragile.dead_lettered), (10, 0, 0), "pool {pool:?}");
        assert_eq!(seen.lock().unwrap()[&10], 2, "the poison is tried again: pool {pool:?}");
    }
}

#[test]
fn a_batch_that_always_panics_on_one_event_dead_letters_that_event_alone() {
    for reports in [true, false] {
        let (seen, received) = (Seen::default(), Received::default());
        let letters = Arc::new(Mutex::new(Vec::new()));
        let policy = FailurePolicy::new(2).dead_letter(collector(&letters));
        let fragile = run_numbers(batch_flaky(25, u32::MAX, reports, &seen, &received), None, Some(policy));
        let events: Vec<u64> = letters.lock().unwrap().iter().map(|letter| letter.event).collect();
        assert_eq!(events, [25, 50, 75, 100], "only the poison is dead-lettered (reports {reports})");
        assert_eq!((fragile.lost, fragile.dead_lettered), (0, 4), "reports {reports}");
        let got = successes(&received);
        assert!(
            (1..=100).all(|n| got[n - 1] == usize::from(n % 25 != 0) || (!reports && got[n - 1] == 2)),
            "every good event is handled, once when the callback reports (reports {reports}): {got:?}"
        );
        if reports {
            assert_eq!(seen.lock().unwrap()[&24], 1, "handled before the panic, never again");
        }
    }
}

// ---- pipeline files ---------------------------------------------------------

/// consumes numbers and panics on multiples of `poison`
#[kind("flaky", u64 -> Nothing)]
struct FlakyKind {
    /// multiples of this panic
    poison: u64,
}

/// Seen by every `flaky` stage a test builds.
#[derive(Default)]
struct Shared {
    seen: Seen,
    received: Received,
}

impl Kind for FlakyKind {
    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, context: &BuildContext) -> Result<(), String> {
        let shared = context.resources.get_or_default::<Shared>();
        let config =
            pipeline.consumer(&stage.id, flaky(self.poison, u32::MAX, &shared.seen, &shared.received));
        config.restart(RestartPolicy::intensity(1_000, Duration::from_secs(5)));
        configure(stage, config, &DispatcherChoices::demand_only(), None)
    }
}

/// emits 1..=count
#[kind("count", Nothing -> u64)]
struct CountKind {
    /// how many
    count: u64,
}

impl Kind for CountKind {
    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let count = self.count;
        let config = pipeline.producer(&stage.id, move || FromIter::new(1..=count));
        configure(stage, config, &DispatcherChoices::cloneable(), None)
    }
}

/// A target "memory" that keeps records in a list, and refuses any other name.
#[derive(Clone, Default)]
struct Memory(Arc<Mutex<Vec<DeadLetterRecord>>>);

impl DeadLetterTargets for Memory {
    fn check(&self, target: &str) -> Result<(), String> {
        if target == "memory" {
            Ok(())
        } else {
            Err(format!("unknown target \"{target}\"; expected \"memory\""))
        }
    }

    fn open(&self, _: &str, target: &str, _: &BuildContext) -> Result<DeadLetterWriter, String> {
        self.check(target)?;
        let records = self.0.clone();
        Ok(Arc::new(move |record| {
            records.lock().unwrap().push(record);
            Box::pin(async {})
        }))
    }
}

fn registry(targets: Option<Memory>) -> Registry {
    let mut registry = Registry::new();
    registry.add::<FlakyKind>().add::<CountKind>();
    if let Some(targets) = targets {
        registry.dead_letters(targets);
    }
    registry
}

fn file(stages: &str) -> stageflow::config::PipelineFile {
    let text = format!("[pipeline]\nname = \"t\"\n\n{stages}");
    parse_pipeline(Path::new("t.toml"), &text, &|_| None).unwrap_or_else(|errors| panic!("{errors}"))
}

const GOOD: &str = r#"
[[stage]]
id = "numbers"
kind = "count"
count = 40

[[stage]]
id = "fragile"
kind = "flaky"
poison = 20
max_attempts = 2
dead_letter = "memory"
subscribe_to = ["numbers"]
"#;

#[test]
fn a_pipeline_file_dead_letters_to_its_target_with_the_event_as_json() {
    let memory = Memory::default();
    let registry = registry(Some(memory.clone()));
    let file = file(GOOD);
    let context = BuildContext::for_file(&file, "unused-data-dir");
    let summary = run(async {
        let pipeline = registry.build(&file, &context).unwrap_or_else(|errors| panic!("{errors}"));
        ends(pipeline.start().unwrap()).await
    });
    let fragile = stage(&summary.stages, "fragile");
    assert_eq!((fragile.restarts, fragile.lost, fragile.dead_lettered), (4, 0, 2));
    let records = memory.0.lock().unwrap().clone();
    let events: Vec<Option<&str>> = records.iter().map(|record| record.event.as_deref()).collect();
    assert_eq!(events, [Some("20"), Some("40")]);
    assert!(records.iter().all(|record| record.stage == "fragile" && record.attempts == 2));
    assert_eq!(records[0].error, "poison event 20 (try 2)");
}

#[test]
fn bad_max_attempts_and_dead_letter_values_are_errors_naming_the_line() {
    for (line, expected) in [
        ("max_attempts = 0", "`max_attempts` must be a whole number from 1 to 1000, got 0"),
        ("max_attempts = \"3\"", "`max_attempts` must be a whole number from 1 to 1000"),
        ("dead_letter = 7", "`dead_letter` must name a target"),
        ("dead_letter = \"\"", "`dead_letter` must name a target"),
    ] {
        let text = format!("[pipeline]\nname = \"t\"\n\n[[stage]]\nid = \"a\"\nkind = \"flaky\"\n{line}\n");
        let errors = parse_pipeline(Path::new("t.toml"), &text, &|_| None).expect_err(line).to_string();
        assert!(errors.contains("t.toml:7:1: stage 'a':") && errors.contains(expected), "{line}: {errors}");
    }
}

#[test]
fn check_refuses_unknown_targets_producers_and_programs_without_targets() {
    let unknown = GOOD.replace("dead_letter = \"memory\"", "dead_letter = \"tape\"");
    let errors = registry(Some(Memory::default())).check(&file(&unknown)).unwrap_err().to_string();
    assert!(
        errors.contains("t.toml:15:1: stage 'fragile': `dead_letter`: unknown target \"tape\""),
        "{errors}"
    );

    let errors = registry(None).check(&file(GOOD)).unwrap_err().to_string();
    assert!(
        errors.contains("stage 'fragile': `dead_letter`: this program offers no dead-letter targets"),
        "{errors}"
    );

    let on_producer = GOOD.replace("count = 40", "count = 40\nmax_attempts = 3");
    let errors = registry(Some(Memory::default())).check(&file(&on_producer)).unwrap_err().to_string();
    assert!(errors.contains("t.toml:9:1: stage 'numbers': kind \"count\" is a producer"), "{errors}");
}
