//! Taps on a running pipeline: a sample of a stage's events reaches the
//! watcher, a watcher that does not read costs the pipeline nothing but
//! counted drops, and wrong requests are refused with the reason.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use stageflow::ops::{ForEach, FromIter, Map};
use stageflow::{Pipeline, PipelineHandle, SubscribeOptions, TapOptions};

/// numbers 1..=count -> double -> sum; returns the handle and the sum.
fn doubled(count: u64) -> (PipelineHandle, Arc<AtomicU64>) {
    let total = Arc::new(AtomicU64::new(0));
    let sum = total.clone();
    let mut pipeline = Pipeline::new();
    pipeline.producer("numbers", move || FromIter::new(1..=count));
    pipeline
        .producer_consumer("double", || Map::new(|x: u64| x * 2))
        .subscribe_to("numbers", SubscribeOptions::default());
    pipeline
        .consumer("sum", move || {
            let sum = sum.clone();
            ForEach::new(move |x: u64| {
                sum.fetch_add(x, Ordering::Relaxed);
            })
        })
        .subscribe_to("double", SubscribeOptions::default());
    (pipeline.start().expect("a valid graph"), total)
}

#[tokio::test(flavor = "current_thread")]
async fn a_tap_gets_an_even_sample_of_a_stages_events_up_to_its_limit() {
    let (mut running, total) = doubled(10_000);
    // Attached before the stages first run (current-thread runtime, no await yet).
    let options = TapOptions { limit: Some(20), sample: 0.1, capacity: 100 };
    let mut stream = running.taps().attach("double", |x: &u64| x.to_string(), options).expect("attached");
    tokio::time::timeout(Duration::from_secs(30), running.wait()).await.expect("ends").expect("ok");
    let mut seen = Vec::new();
    while let Some(event) = stream.next().await {
        seen.push(event);
    }
    let expected: Vec<String> = (0..20).map(|i| ((1 + 10 * i) * 2).to_string()).collect();
    assert_eq!(seen, expected);
    assert_eq!(stream.dropped(), 0);
    assert_eq!(total.load(Ordering::Relaxed), 10_000 * 10_001);
}

#[tokio::test(flavor = "current_thread")]
async fn a_watcher_that_never_reads_only_drops_tap_events_and_the_pipeline_finishes() {
    let (mut running, total) = doubled(50_000);
    let options = TapOptions { limit: None, sample: 1.0, capacity: 4 };
    let stream = running.taps().attach("double", |x: &u64| x.to_string(), options).expect("attached");
    let summary =
        tokio::time::timeout(Duration::from_secs(30), running.wait()).await.expect("ends").expect("ok");
    assert_eq!(total.load(Ordering::Relaxed), 50_000 * 50_001, "every event reached the sum");
    assert_eq!(stream.dropped(), 50_000 - 4, "all but the four the tap holds were dropped");
    let double = summary.stages.iter().find(|s| s.stage == "double").expect("stage");
    assert_eq!(double.dropped, 0, "the stage itself dropped nothing");
}

#[tokio::test(flavor = "current_thread")]
async fn tapping_a_consumer_an_unknown_stage_or_the_wrong_type_is_refused() {
    let (running, _) = doubled(10);
    let taps = running.taps();
    let render = |x: &u64| x.to_string();
    let error = taps.attach("sum", render, TapOptions::default()).expect_err("consumer");
    assert!(error.contains("consumer"), "{error}");
    let error = taps.attach("nope", render, TapOptions::default()).expect_err("unknown");
    assert!(error.contains("no stage 'nope'"), "{error}");
    let error = taps.attach("double", |s: &String| s.clone(), TapOptions::default()).expect_err("type");
    assert!(error.contains("u64"), "{error}");
    assert_eq!(taps.output_type("double"), Some(std::any::TypeId::of::<u64>()));
    assert_eq!(taps.output_type("sum"), None);
    running.stop().await.expect("stops");
}
