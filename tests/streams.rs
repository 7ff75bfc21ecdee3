//! Streams in and out of a pipeline, as GenStage's `from_enumerable` and
//! `stream`: `ops::FromStream` pulls a stream only as far as demand goes,
//! and `Subscription::into_stream` grants credits as its items are taken.
//!
//! The tests run on paused time: `settle` lets every task run until the
//! runtime is idle, so "it pulled no more" is checked once nothing can move.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use stageflow::ops::{FromChunks, FromStream};
use stageflow::{EndReason, Pipeline, SubscribeOptions};

/// Lets every task run until none can (time is paused, so the sleep only ends when all are idle).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Fails instead of hanging when `step` never finishes (paused time jumps to the deadline once all is idle).
async fn within<T>(what: &str, step: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), step)
        .await
        .unwrap_or_else(|_| panic!("{what} never finished"))
}

/// An endless stream of 0, 1, 2, ... that counts how many items were pulled from it.
fn counted(pulled: &Arc<AtomicU64>) -> impl futures::Stream<Item = u64> + Send + use<> {
    let pulled = pulled.clone();
    futures::stream::iter(0u64..).inspect(move |_| {
        pulled.fetch_add(1, Ordering::SeqCst);
    })
}

#[tokio::test(start_paused = true)]
async fn a_stream_is_pulled_only_as_far_as_demand_and_taking_items_grants_more() {
    let pulled = Arc::new(AtomicU64::new(0));
    let source = pulled.clone();
    let mut pipeline = Pipeline::new();
    pipeline.producer("numbers", move || FromStream::new(counted(&source)));
    let running = pipeline.start().unwrap();
    let subscription =
        running.subscribe::<u64>("numbers", SubscribeOptions::default().with_demand(10, 5)).await.unwrap();
    settle().await;
    assert_eq!(pulled.load(Ordering::SeqCst), 10, "the first grant is max_demand");
    let mut numbers = subscription.into_stream();
    let first: Vec<u64> = within("the first 4", numbers.by_ref().take(4).collect()).await;
    assert_eq!(first, [0, 1, 2, 3]);
    settle().await;
    assert_eq!(pulled.load(Ordering::SeqCst), 10, "6 outstanding is above min_demand 5: no new credits");
    assert_eq!(within("the 5th", numbers.next()).await, Some(4));
    settle().await;
    assert_eq!(pulled.load(Ordering::SeqCst), 15, "at 5 outstanding it tops up to 10");
    let rest: Vec<u64> = within("10 more", numbers.by_ref().take(10).collect()).await;
    assert_eq!(rest, (5..15).collect::<Vec<u64>>());
    within("the stop", running.stop()).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_finite_stream_ends_its_producer_and_the_subscribers_stream() {
    let mut pipeline = Pipeline::new();
    pipeline.producer("letters", || {
        FromStream::new(async_stream::stream! {
            for letter in ["a", "b", "c"] {
                tokio::time::sleep(Duration::from_millis(10)).await;
                yield letter.to_string();
            }
        })
    });
    let mut running = pipeline.start().unwrap();
    let mut letters =
        running.subscribe::<String>("letters", SubscribeOptions::default()).await.unwrap().into_stream();
    let got: Vec<String> = within("the letters", letters.by_ref().collect()).await;
    assert_eq!(got, ["a", "b", "c"]);
    assert_eq!(letters.end_reason(), Some(&EndReason::Normal));
    within("the end", running.wait()).await.expect("the pipeline ends with its stream");
}

#[tokio::test(start_paused = true)]
async fn a_channel_wrapped_by_tokio_stream_is_a_source_and_cancel_ends_the_reader() {
    let (feed, receiver) = tokio::sync::mpsc::channel::<u64>(4);
    // The factory runs again after a restart; the one receiver goes to the first call.
    let slot = Arc::new(Mutex::new(Some(receiver)));
    let mut pipeline = Pipeline::new();
    pipeline.producer("fed", move || {
        let receiver = slot.lock().unwrap().take().expect("built once");
        FromStream::new(tokio_stream::wrappers::ReceiverStream::new(receiver))
    });
    let running = pipeline.start().unwrap();
    let mut fed = running.subscribe::<u64>("fed", SubscribeOptions::default()).await.unwrap().into_stream();
    for n in [7, 8, 9] {
        feed.send(n).await.unwrap();
    }
    assert_eq!(within("3 events", fed.by_ref().take(3).collect::<Vec<u64>>()).await, [7, 8, 9]);
    fed.cancel();
    assert_eq!(within("the end", fed.next()).await, None, "a cancelled subscription's stream ends");
    assert_eq!(fed.end_reason(), Some(&EndReason::Cancelled));
    drop(feed);
    within("the stop", running.stop()).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_chunked_source_is_asked_for_chunks_of_at_most_the_demand_in_hand() {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let record = asked.clone();
    let mut pipeline = Pipeline::new();
    pipeline.producer("numbers", move || {
        let record = record.clone();
        FromChunks::new(0u64, move |from: u64, demand| {
            record.lock().unwrap().push(demand);
            let to = (from + demand as u64).min(25);
            async move { (from < to).then(|| (to, (from..to).collect::<Vec<u64>>())) }
        })
    });
    let mut running = pipeline.start().unwrap();
    let subscription =
        running.subscribe::<u64>("numbers", SubscribeOptions::default().with_demand(10, 5)).await.unwrap();
    settle().await;
    assert_eq!(*asked.lock().unwrap(), [10], "one chunk of the first grant, nothing read ahead");
    let mut numbers = subscription.into_stream();
    let first: Vec<u64> = within("the first 5", numbers.by_ref().take(5).collect()).await;
    assert_eq!(first, [0, 1, 2, 3, 4]);
    settle().await;
    assert_eq!(*asked.lock().unwrap(), [10, 5], "at 5 outstanding the top-up of 5 is one chunk of 5");
    let rest: Vec<u64> = within("the rest", numbers.by_ref().collect()).await;
    assert_eq!(rest, (5..25).collect::<Vec<u64>>());
    assert!(asked.lock().unwrap().iter().all(|demand| *demand <= 10), "{:?}", asked.lock().unwrap());
    assert_eq!(numbers.end_reason(), Some(&EndReason::Normal));
    within("the end", running.wait()).await.expect("the pipeline ends with its chunks");
}
