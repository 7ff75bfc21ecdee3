//! `stageflow run --http` as an operator uses it: a real process serving
//! /metrics, /healthz, /readyz, /api/graph, /api/metrics/stream and
//! /tap/<stage> while tweets.toml runs; `stageflow tap`; wrong requests;
//! a pipeline whose sources cannot connect is not ready; JSON logs.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use support::broker_process::LineClient;
use support::http_process::{HttpProcess, repository, stage_ids_of_tweets_toml};

/// Generous bound for anything a test waits for.
const PATIENCE: Duration = Duration::from_secs(60);

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("a client")
}

async fn get(url: &str) -> (u16, String) {
    let response = client().get(url).send().await.expect("answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("a body"))
}

/// The value of the sample line `series` (exact name and labels) in a Prometheus text page.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `check` every 200 ms until it returns `Some`, failing after [`PATIENCE`].
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `data:` payloads (and `event:` names) of the first `count` SSE events at `url`.
async fn sse_events(url: &str, count: usize) -> Vec<(String, String)> {
    let response = client().get(url).timeout(PATIENCE).send().await.expect("answers");
    assert_eq!(response.status().as_u16(), 200, "{url}");
    let content_type = response.headers()["content-type"].to_str().expect("text").to_string();
    assert!(content_type.starts_with("text/event-stream"), "{content_type}");
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let mut events = Vec::new();
    let read = async {
        while events.len() < count {
            let Some(chunk) = body.next().await else { break };
            text.push_str(&String::from_utf8_lossy(&chunk.expect("a chunk")));
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                let mut name = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event: ") {
                        name = value.to_string();
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        data.push_str(value);
                    }
                }
                if !data.is_empty() {
                    events.push((name, data));
                }
            }
        }
    };
    tokio::time::timeout(PATIENCE, read).await.expect("the events came in time");
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_pipeline_serves_metrics_health_graph_stream_and_taps() {
    // Slow logger work (about 1 s a tweet) makes the drain after Ctrl-C last long enough to be seen.
    let mut run = HttpProcess::tweets(&["--set", "logger.sleep_mean_ms=1000"]);
    let url = run.url.clone();

    let (status, body) = get(&format!("{url}/healthz")).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    eventually("/readyz to say ready", || async {
        (get(&format!("{url}/readyz")).await.0 == 200).then_some(())
    })
    .await;

    // /metrics: Prometheus text, the tweets hub's output counted and growing.
    let response = client().get(format!("{url}/metrics")).send().await.expect("answers");
    assert!(
        response.headers()["content-type"].to_str().expect("text").starts_with("text/plain; version=0.0.4")
    );
    let series = r#"stageflow_events_out_total{pipeline="tweets",stage="tweets"}"#;
    let first = eventually("tweets to flow", || async {
        sample(&get(&format!("{url}/metrics")).await.1, series).filter(|out| *out > 0.0)
    })
    .await;
    let text = eventually("more tweets and a store", || async {
        let text = get(&format!("{url}/metrics")).await.1;
        let stored = sample(&text, r#"stageflow_sink_tweets_stored_total{pipeline="tweets",stage="store"}"#);
        (sample(&text, series) > Some(first) && stored > Some(0.0)).then_some(text)
    })
    .await;
    for stage in stage_ids_of_tweets_toml() {
        let workers = format!(r#"stageflow_workers{{pipeline="tweets",stage="{stage}"}}"#);
        assert!(sample(&text, &workers).is_some_and(|n| n >= 1.0), "{workers} in\n{text}");
    }
    assert!(text.contains("# TYPE stageflow_processing_seconds histogram"));
    assert!(text.contains(
        r#"stageflow_sink_insert_seconds_count{pipeline="tweets",stage="store",collection="tweets"}"#
    ));

    // /api/graph: every stage of the file, its edges.
    let graph: serde_json::Value =
        serde_json::from_str(&get(&format!("{url}/api/graph")).await.1).expect("JSON");
    let ids: Vec<&str> =
        graph["stages"].as_array().expect("stages").iter().map(|s| s["id"].as_str().expect("id")).collect();
    assert_eq!(ids, stage_ids_of_tweets_toml());
    assert!(
        graph["edges"]
            .as_array()
            .expect("edges")
            .iter()
            .any(|e| e["from"] == "batcher" && e["to"] == "store")
    );

    // /api/metrics/stream: one snapshot per second, rates from the second on.
    let frames = sse_events(&format!("{url}/api/metrics/stream"), 3).await;
    let last: serde_json::Value = serde_json::from_str(&frames[2].1).expect("JSON");
    let interval = last["interval_s"].as_f64().expect("interval");
    assert!((0.5..5.0).contains(&interval), "about one second between snapshots: {interval}");
    assert_eq!(last["stages"].as_array().expect("stages").len(), ids.len());

    // /tap/<stage>: a limited sample, as JSON, then the end.
    let events = sse_events(&format!("{url}/tap/aggregator?limit=3&sample=0.5"), 4).await;
    assert_eq!(events.len(), 4, "{events:?}");
    for (name, data) in &events[..3] {
        assert_eq!(name, "", "plain data events first");
        let scored: serde_json::Value = serde_json::from_str(data).expect("JSON");
        assert!(scored["tweet"]["id_str"].is_string() && scored["sentiment"].is_number(), "{scored}");
    }
    assert_eq!(events[3].0, "end");

    // `stageflow tap` prints JSON lines; a wrong stage is an error naming it.
    let tap = Command::new(env!("CARGO_BIN_EXE_stageflow"))
        .args(["tap", &url, "tweets", "--limit", "2"])
        .output()
        .expect("stageflow tap runs");
    assert!(tap.status.success(), "{}", String::from_utf8_lossy(&tap.stderr));
    let lines: Vec<String> = String::from_utf8_lossy(&tap.stdout).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in &lines {
        serde_json::from_str::<serde_json::Value>(line).expect("each line is JSON");
    }
    let tap =
        Command::new(env!("CARGO_BIN_EXE_stageflow")).args(["tap", &url, "tweetz"]).output().expect("runs");
    assert!(!tap.status.success());
    assert!(String::from_utf8_lossy(&tap.stderr).contains("no stage 'tweetz'"));

    // Wrong requests get a status and a reason.
    let (status, body) = get(&format!("{url}/tap/nope")).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = get(&format!("{url}/tap/store")).await;
    assert_eq!(status, 400);
    assert!(body.contains("consumer"), "{body}");
    let (status, body) = get(&format!("{url}/tap/tweets?sample=lots")).await;
    assert_eq!(status, 400);
    assert!(body.contains("sample must be"), "{body}");
    let (status, body) = get(&format!("{url}/tap/tweets?every=2")).await;
    assert_eq!(status, 400);
    assert!(body.contains("unknown parameter"), "{body}");
    assert_eq!(get(&format!("{url}/no/such/page")).await.0, 404);

    // The page is served.
    let (status, page) = get(&format!("{url}/")).await;
    assert_eq!(status, 200);
    assert!(page.contains("api/metrics/stream"));

    // Ctrl-C: while the pipeline drains, it is alive but not ready.
    run.interrupt();
    let (status, body) = eventually("/readyz to see the drain", || async {
        let (status, body) = get(&format!("{url}/readyz")).await;
        (status != 200).then_some((status, body))
    })
    .await;
    assert_eq!((status, body.as_str()), (503, "not ready: pipeline 'tweets' is draining\n"));
    assert_eq!(get(&format!("{url}/healthz")).await.0, 200);
    assert!(run.wait(PATIENCE), "a drained interrupt exits 0: {}", run.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_whose_sources_cannot_connect_is_not_ready_and_says_why() {
    // Nothing listens on port 1: both SSE sources keep failing to connect.
    let _run = HttpProcess::tweets(&[
        "--set",
        "stream1.url=http://127.0.0.1:1/tweets/1",
        "--set",
        "stream2.url=http://127.0.0.1:1/tweets/2",
    ]);
    let url = _run.url.clone();
    let body = eventually("a failed connection to be reported", || async {
        let (status, body) = get(&format!("{url}/readyz")).await;
        assert_eq!(status, 503, "{body}");
        body.contains("is not connected").then_some(body)
    })
    .await;
    assert!(body.contains("source 'stream1'") && body.contains("source 'stream2'"), "{body}");
    assert!(body.contains("127.0.0.1:1"), "the reason names the address: {body}");
    assert_eq!(get(&format!("{url}/healthz")).await.0, 200, "alive all the same");
}

#[test]
fn a_bad_http_address_is_refused_before_anything_runs() {
    let output = Command::new(env!("CARGO_BIN_EXE_stageflow"))
        .current_dir(repository())
        .args(["run", "pipelines/demo.toml", "--http", "localhost"])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--http") && stderr.contains("expected HOST:PORT"), "{stderr}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let data = tempfile::tempdir().expect("a temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_stageflow"))
        .current_dir(repository())
        .args(["--log-format", "json", "run", "pipelines/tweets.toml", "--for", "2s", "--data-dir"])
        .arg(data.path())
        .env_remove("EMULATOR_URL")
        .env("RUST_LOG", "info")
        .output()
        .expect("runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.len() >= 2, "some log lines: {stderr}");
    for line in lines {
        let record: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}"));
        assert!(record["level"].is_string() && record["fields"]["message"].is_string(), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_serves_its_topics_and_subscribers_over_http() {
    let (broker, addr) = HttpProcess::broker();
    let url = broker.url.clone();
    let mut publisher = LineClient::connect(addr);
    for id in ["a", "b"] {
        let reply = publisher.ask(&format!(r#"pub news {{"id":"{id}","priority":1,"msg":"x"}}"#));
        assert!(reply.starts_with("ok"), "{reply}");
    }
    let mut subscriber = LineClient::connect(addr);
    assert!(subscriber.ask("sub news").starts_with("ok"));

    let text = eventually("the topic's figures", || async {
        let text = get(&format!("{url}/metrics")).await.1;
        (sample(&text, r#"stageflow_broker_subscribers{topic="news"}"#) == Some(1.0)).then_some(text)
    })
    .await;
    assert_eq!(sample(&text, r#"stageflow_broker_published_total{topic="news"}"#), Some(2.0), "{text}");
    assert!(text.contains(r#"stageflow_broker_subscriber_in_flight{topic="news",subscriber=""#), "{text}");
    let window =
        text.lines().find(|line| line.starts_with("stageflow_broker_subscriber_window{topic=\"news\""));
    assert!(window.is_some_and(|line| !line.ends_with(" 0")), "an attached subscriber has a window: {text}");
    assert!(!text.contains("stageflow_events_in_total"), "no pipeline in a broker process");

    let graph: serde_json::Value =
        serde_json::from_str(&get(&format!("{url}/api/graph")).await.1).expect("JSON");
    assert_eq!((&graph["broker"], &graph["pipeline"]), (&serde_json::json!(true), &serde_json::Value::Null));
    let frames = sse_events(&format!("{url}/api/metrics/stream"), 1).await;
    let frame: serde_json::Value = serde_json::from_str(&frames[0].1).expect("JSON");
    assert_eq!(frame["topics"][0]["topic"], "news", "{frame}");
    assert_eq!(get(&format!("{url}/readyz")).await.0, 200);
    assert_eq!(get(&format!("{url}/tap/news")).await.0, 404, "no pipeline to tap");
}
