//! The CSV source: rows only against demand, bad rows counted and skipped, many files.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use stageflow::{Consumer, DemandHandle, Events, Pipeline, SubscribeOptions};
use stageflow_stages::csv_source::{CsvStats, DEFAULT_MAX_RECORD_BYTES, csv_tweets, expand_files};
use stageflow_stages::sse::{SseEvent, TweetMessage};

/// Asks for `chunk` rows, then more only when told to.
struct Collector {
    ids: Arc<std::sync::Mutex<Vec<String>>>,
    handle: Arc<std::sync::Mutex<Option<DemandHandle>>>,
    chunk: usize,
}

impl Consumer for Collector {
    type In = SseEvent;

    async fn handle_events(&mut self, events: &mut Events<SseEvent>) {
        for event in events {
            if let TweetMessage::Tweet(tweet) = event.message {
                self.ids.lock().unwrap().push(tweet.id_str);
            }
        }
    }

    fn handle_subscribe(&mut self, upstream: DemandHandle) {
        upstream.ask(self.chunk);
        *self.handle.lock().unwrap() = Some(upstream);
    }
}

fn write(dir: &std::path::Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn rows_are_read_only_against_demand_and_bad_rows_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let header = "id_str,text,user_id_str,favorite_count\n";
    let first: String = (0..10).map(|i| format!("{i},tweet {i},u{i},{i}\n")).collect();
    write(dir.path(), "a.csv", &format!("{header}{first}"));
    write(
        dir.path(),
        "b.csv",
        &format!("{header}10,ok,u10,1\n11,bad count,u11,many\n12,,u12,1\n13,fine,u13,2\n"),
    );
    let files = expand_files(&[format!("{}/*.csv", dir.path().display())]).unwrap();
    assert_eq!(files.len(), 2);

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let stats = Arc::new(CsvStats::default());
        let ids = Arc::new(std::sync::Mutex::new(Vec::new()));
        let handle = Arc::new(std::sync::Mutex::new(None));
        let mut pipeline = Pipeline::new();
        let source_stats = stats.clone();
        pipeline.producer("csv", move || {
            csv_tweets(files.clone(), source_stats.clone(), DEFAULT_MAX_RECORD_BYTES)
        });
        let (collected, demand) = (ids.clone(), handle.clone());
        pipeline
            .consumer("collect", move || Collector {
                ids: collected.clone(),
                handle: demand.clone(),
                chunk: 4,
            })
            .subscribe_to("csv", SubscribeOptions::default().manual());
        let mut running = pipeline.start().unwrap();
        let wait_for = |count: usize| {
            let ids = ids.clone();
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                while ids.lock().unwrap().len() < count {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "only {} rows arrived",
                        ids.lock().unwrap().len()
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        wait_for(4).await;
        // Four asked, four read: the source does not read ahead of demand.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(stats.rows.load(Ordering::Relaxed), 4);
        assert_eq!(ids.lock().unwrap().len(), 4);
        handle.lock().unwrap().as_ref().unwrap().ask(100);
        running.wait().await.expect("the import ends by itself");
        let ids = ids.lock().unwrap().clone();
        let expected: Vec<String> =
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13].iter().map(|i| i.to_string()).collect();
        assert_eq!(ids, expected, "every good row, in file order; the two bad rows skipped");
        assert_eq!(stats.bad_rows.load(Ordering::Relaxed), 2);
    });
}

#[test]
fn patterns_that_match_nothing_are_named() {
    let error = expand_files(&["/nonexistent/*.csv".to_string()]).unwrap_err();
    assert!(error.contains("\"/nonexistent/*.csv\" matches no file"), "{error}");
}
