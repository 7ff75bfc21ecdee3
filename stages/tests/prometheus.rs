//! A real Prometheus (Debian's `prometheus` package) scrapes `/metrics` of
//! a running `stageflow run pipelines/tweets.toml --http` every second, and
//! its HTTP API returns a non-zero rate for
//! `stageflow_events_out_total{stage="tweets"}`.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::broker_process::free_port;
use support::http_process::HttpProcess;
use support::tools::tool;

/// Generous bound for anything the test waits for.
const PATIENCE: Duration = Duration::from_secs(90);

/// A Prometheus server with its own config and storage, killed when dropped.
struct Prometheus {
    child: Child,
    _dir: tempfile::TempDir,
    url: String,
}

impl Prometheus {
    fn start(binary: &std::path::Path, target: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("a temp dir");
        let config = dir.path().join("prometheus.yml");
        // The same scrape config as the README's example, at a 1 s interval for the test.
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: stageflow\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("config written");
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts");
        Prometheus { child, _dir: dir, url: format!("http://127.0.0.1:{port}") }
    }

    /// The result of an instant query, or `None` while Prometheus is not answering yet.
    async fn query(&self, query: &str) -> Option<Value> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("a client");
        let response =
            client.get(format!("{}/api/v1/query", self.url)).query(&[("query", query)]).send().await.ok()?;
        let body: Value = serde_json::from_str(&response.text().await.ok()?).ok()?;
        assert_eq!(body["status"], "success", "{query}: {body}");
        Some(body["data"]["result"].clone())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_running_pipeline_and_sees_the_tweets_rate() {
    let Some(binary) = tool("prometheus", "STAGEFLOW_PROMETHEUS", "prometheus test") else { return };
    let run = HttpProcess::tweets(&[]);
    let target = run.url.trim_start_matches("http://").to_string();
    let prometheus = Prometheus::start(&binary, &target);

    let query = r#"rate(stageflow_events_out_total{stage="tweets"}[10s])"#;
    let deadline = Instant::now() + PATIENCE;
    let rate = loop {
        let rate = prometheus.query(query).await.and_then(|result| {
            let value = result.get(0)?["value"][1].as_str()?.parse::<f64>().ok()?;
            (value > 0.0).then_some(value)
        });
        if let Some(rate) = rate {
            break rate;
        }
        assert!(
            Instant::now() < deadline,
            "no non-zero rate from Prometheus; last: {:?}",
            prometheus.query(query).await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(rate > 0.0);
    let up = prometheus.query(r#"up{job="stageflow"}"#).await.expect("an answer");
    assert_eq!(up[0]["value"][1], "1", "the target is up: {up}");
    let labels = prometheus.query(r#"stageflow_events_out_total{stage="tweets"}"#).await.expect("an answer");
    assert_eq!(labels[0]["metric"]["pipeline"], "tweets", "{labels}");
    println!("Prometheus: rate(stageflow_events_out_total{{stage=\"tweets\"}}[10s]) = {rate:.0} events/s");
}
