//! The live page in a real browser: Debian's headless Chromium loads the
//! page of a running `stageflow run pipelines/tweets.toml --http`, and the
//! test reads the DOM through the DevTools protocol: every stage of the file
//! is drawn, and the "out total" counter shown for `tweets` increases
//! between two reads. It saves a screenshot of the page (the README's) to
//! `$STAGEFLOW_SCREENSHOT`, or to the test's target temp directory. A
//! broker's page lists its topics with their subscribers.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::broker_process::LineClient;
use support::http_process::{HttpProcess, stage_ids_of_tweets_toml};
use support::tools::tool;
use tokio_tungstenite::tungstenite::Message;

/// Generous bound for anything the test waits for.
const PATIENCE: Duration = Duration::from_secs(60);

/// GETs `url` and reads its body as JSON.
async fn get_json<T: serde::de::DeserializeOwned>(url: &str) -> T {
    let body = reqwest::get(url).await.expect("an answer").text().await.expect("a body");
    serde_json::from_str(&body).unwrap_or_else(|error| panic!("{url}: not JSON ({error}): {body}"))
}

/// A headless Chromium with its own profile, killed when dropped.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    /// The DevTools HTTP endpoint, e.g. `http://127.0.0.1:41234`.
    devtools: String,
}

impl Browser {
    fn open(chromium: &PathBuf, url: &str) -> Browser {
        let profile = tempfile::tempdir().expect("a profile dir");
        let mut child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1440,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium starts");
        let (found, endpoint) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split_once("DevTools listening on ws://").map(|(_, rest)| rest) {
                    let host = rest.split('/').next().unwrap_or_default().to_string();
                    let _ = found.send(format!("http://{host}"));
                }
            }
        });
        let devtools = endpoint.recv_timeout(PATIENCE).expect("chromium says where DevTools listen");
        Browser { child, _profile: profile, devtools }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A DevTools protocol session on one page.
struct Page {
    socket: Socket,
    next_id: u64,
}

impl Page {
    /// Connects to the page showing `url`.
    async fn attach(browser: &Browser, url: &str) -> Page {
        let deadline = Instant::now() + PATIENCE;
        let socket_url = loop {
            let targets: Vec<Value> = get_json(&format!("{}/json/list", browser.devtools)).await;
            let page = targets
                .iter()
                .find(|t| t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(url)));
            if let Some(socket) = page.and_then(|p| p["webSocketDebuggerUrl"].as_str()) {
                break socket.to_string();
            }
            assert!(Instant::now() < deadline, "no page at {url} in {targets:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let (socket, _) =
            tokio_tungstenite::connect_async(socket_url).await.expect("the page's DevTools socket");
        Page { socket, next_id: 1 }
    }

    /// Calls a DevTools method and returns its result.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({ "id": id, "method": method, "params": params }).to_string();
        self.socket.send(Message::Text(request.into())).await.expect("sent");
        let answer = async {
            while let Some(message) = self.socket.next().await {
                if let Message::Text(text) = message.expect("a message") {
                    let value: Value = serde_json::from_str(&text).expect("JSON");
                    if value["id"] == id {
                        assert!(value["error"].is_null(), "{method} failed: {value}");
                        return value["result"].clone();
                    }
                }
            }
            panic!("the DevTools socket closed");
        };
        tokio::time::timeout(PATIENCE, answer).await.expect("DevTools answered in time")
    }

    /// Evaluates a JavaScript expression in the page and returns its JSON value.
    async fn evaluate(&mut self, expression: &str) -> Value {
        let result =
            self.call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true })).await;
        result["result"]["value"].clone()
    }
}

/// Each drawn stage box: its id and the "out total" counter as shown (None before the first snapshot).
const READ_BOXES: &str = r#"JSON.stringify([...document.querySelectorAll(".stage")].map(box => {
    const shown = box.querySelector('[data-field="events_out"]').textContent;
    return [box.dataset.stage, /^[0-9]+$/.test(shown) ? Number(shown) : null];
}))"#;

async fn boxes(page: &mut Page) -> Vec<(String, Option<u64>)> {
    let text = page.evaluate(READ_BOXES).await;
    serde_json::from_str(text.as_str().expect("a string")).expect("pairs")
}

/// Reads the boxes until `accept` returns a value, failing after [`PATIENCE`].
async fn read_until<T>(
    page: &mut Page,
    what: &str,
    accept: impl Fn(&[(String, Option<u64>)]) -> Option<T>,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let seen = boxes(page).await;
        if let Some(value) = accept(&seen) {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}; the page shows {seen:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_draws_every_stage_of_tweets_toml_and_its_counters_move() {
    let Some(chromium) = tool("chromium", "STAGEFLOW_CHROMIUM", "browser test") else { return };
    let run = HttpProcess::tweets(&[]);
    let url = format!("{}/", run.url);
    let browser = Browser::open(&chromium, &url);
    let mut page = Page::attach(&browser, &url).await;

    let expected = stage_ids_of_tweets_toml();
    let tweets_out =
        |seen: &[(String, Option<u64>)]| seen.iter().find(|(id, _)| id == "tweets").and_then(|(_, out)| *out);
    let first = read_until(&mut page, "every stage drawn with live numbers", |seen| {
        let drawn: Vec<&str> = seen.iter().map(|(id, _)| id.as_str()).collect();
        (drawn == expected).then(|| tweets_out(seen)).flatten()
    })
    .await;
    let second = read_until(&mut page, "the tweets counter to increase", |seen| {
        tweets_out(seen).filter(|out| *out > first)
    })
    .await;
    assert!(second > first);

    let edges = page.evaluate(r#"document.querySelectorAll("path.edge").length"#).await;
    let graph: Value = get_json(&format!("{}/api/graph", run.url)).await;
    assert_eq!(
        edges.as_u64(),
        Some(graph["edges"].as_array().expect("edges").len() as u64),
        "one line per subscription"
    );
    let status = page.evaluate(r#"document.getElementById("status").textContent"#).await;
    assert_eq!(status, "live");

    // Let a few snapshots pass so the picture shows rates, then keep it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let shot = page.call("Page.captureScreenshot", json!({ "format": "png" })).await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().expect("data"))
        .expect("base64");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = std::env::var_os("STAGEFLOW_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("live-page.png"));
    std::fs::write(&path, png).expect("the screenshot is written");
    println!("screenshot: {}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_page_lists_topics_with_their_subscribers() {
    let Some(chromium) = tool("chromium", "STAGEFLOW_CHROMIUM", "broker page test") else { return };
    let (broker, addr) = HttpProcess::broker();
    let mut client = LineClient::connect(addr);
    assert!(client.ask(r#"pub alerts {"id":"a","priority":1,"msg":"x"}"#).starts_with("ok"));
    assert!(client.ask("sub alerts").starts_with("ok"));
    let url = format!("{}/", broker.url);
    let browser = Browser::open(&chromium, &url);
    let mut page = Page::attach(&browser, &url).await;
    let read = r#"JSON.stringify([...document.querySelectorAll(".topic")].map(t =>
        [t.dataset.topic, t.querySelectorAll(".subscriber").length, t.querySelector('[data-field="published"]').textContent]))"#;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let shown: Vec<(String, usize, String)> =
            serde_json::from_str(page.evaluate(read).await.as_str().expect("a string")).expect("triples");
        if shown == [("alerts".to_string(), 1, "1".to_string())] {
            break;
        }
        assert!(Instant::now() < deadline, "the page shows {shown:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
