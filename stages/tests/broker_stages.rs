//! The broker stage kinds against a real `stageflow broker` child process:
//! pipelines built from TOML publish through `broker_publish` and
//! `broker_tweets` and consume through `broker_subscribe`, while raw TCP
//! connections play the other side and read the broker's `stats`.
//!
//! Each test starts its own broker on 127.0.0.1 with a temporary data dir;
//! the handle kills it (SIGKILL) when the test ends. Waits poll with
//! deadlines; nothing sleeps and hopes.

mod support;
use support::broker_process::{BrokerProcess, free_port};

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use stageflow::config::{
    BuildContext, DispatcherChoices, Kind, Registry, Resources, StageDecl, configure, kind, parse_pipeline,
};
use stageflow::ops::FromIter;
use stageflow::{Consumer, Events, Nothing, Pipeline, PipelineHandle};
use stageflow_stages::scored::ScoredTweet;
use stageflow_stages::tweet::{Tweet, User};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Generous bound for anything that should take milliseconds.
const DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- the broker

/// A line client, as `nc` would be: replies in order; deliveries that arrive meanwhile are kept.
struct Raw {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    events: VecDeque<String>,
}

impl Raw {
    async fn open(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("connects to the broker");
        stream.set_nodelay(true).unwrap();
        let (reader, writer) = stream.into_split();
        Raw { reader: BufReader::new(reader), writer, events: VecDeque::new() }
    }

    async fn send(&mut self, line: &str) {
        self.writer.write_all(format!("{line}\n").as_bytes()).await.expect("sends");
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        let read = tokio::time::timeout(DEADLINE, self.reader.read_line(&mut line)).await;
        match read {
            Ok(Ok(n)) if n > 0 => line.trim_end_matches(['\r', '\n']).to_string(),
            Ok(_) => panic!("the broker closed the connection"),
            Err(_) => panic!("no line from the broker within {DEADLINE:?}"),
        }
    }

    /// The next reply (deliveries arriving meanwhile are kept).
    async fn reply(&mut self) -> String {
        loop {
            let line = self.line().await;
            if line.starts_with("event ") {
                self.events.push_back(line);
            } else {
                return line;
            }
        }
    }

    async fn ok(&mut self, line: &str) -> String {
        self.send(line).await;
        let reply = self.reply().await;
        assert!(reply == "ok" || reply.starts_with("ok "), "{line:?} got {reply:?}");
        reply
    }

    /// The next delivery as (topic, event).
    async fn next_event(&mut self) -> (String, Value) {
        let line = match self.events.pop_front() {
            Some(line) => line,
            None => {
                let line = self.line().await;
                assert!(line.starts_with("event "), "expected a delivery, got {line:?}");
                line
            }
        };
        let rest = line.strip_prefix("event ").expect("an event line");
        let (topic, json) = rest.split_once(' ').expect("event <topic> <json>");
        (topic.to_string(), serde_json::from_str(json).expect("the delivery is JSON"))
    }

    /// Takes `count` deliveries, acking each.
    async fn take_and_ack(&mut self, count: usize) -> Vec<(String, Value)> {
        let mut got = Vec::new();
        for _ in 0..count {
            let (topic, event) = self.next_event().await;
            let id = event["id"].as_str().expect("an id").to_string();
            self.ok(&format!("ack {topic} {id}")).await;
            got.push((topic, event));
        }
        got
    }

    async fn publish(&mut self, topic: &str, id: &str, msg: Value) {
        let event = json!({"id": id, "priority": 1, "msg": msg});
        self.ok(&format!("pub {topic} {event}")).await;
    }

    async fn stats(&mut self, topic: &str) -> Value {
        let reply = self.ok(&format!("stats {topic}")).await;
        let list: Value = serde_json::from_str(reply.trim_start_matches("ok ")).expect("stats is JSON");
        list[0].clone()
    }
}

/// Fails with `what` and the last state once the deadline passed.
struct Deadline {
    at: Instant,
    what: &'static str,
}

impl Deadline {
    fn new(what: &'static str) -> Self {
        Deadline { at: Instant::now() + DEADLINE, what }
    }

    async fn tick(&self, state: impl std::fmt::Display) {
        assert!(Instant::now() < self.at, "waited {DEADLINE:?} for {}; last: {state}", self.what);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------- test stage kinds

/// What the `gated` stages of one test share: the permits and what they recorded.
#[derive(Clone)]
struct Gate {
    permits: Arc<Semaphore>,
    seen: Arc<Mutex<Vec<String>>>,
}

/// records lines, one permit each (the [`Gate`] comes from the build context)
#[kind("gated", String -> Nothing)]
struct GatedKind {}

/// Takes one permit per line before recording it.
struct Gated(Gate);

impl Consumer for Gated {
    type In = String;

    async fn handle_events(&mut self, events: &mut Events<String>) {
        for line in events {
            self.0.permits.acquire().await.expect("the gate stays open").forget();
            self.0.seen.lock().unwrap().push(line);
        }
    }
}

impl Kind for GatedKind {
    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, context: &BuildContext) -> Result<(), String> {
        let gate = context.resources.get::<Gate>().ok_or("the test puts a Gate in the context")?;
        let config = pipeline.consumer(&stage.id, move || Gated((*gate).clone()));
        configure(stage, config, &DispatcherChoices::demand_only(), None)
    }
}

/// The scored tweets `test_tweets` emits.
struct FixedTweets(Vec<ScoredTweet>);

/// emits fixed scored tweets (the [`FixedTweets`] in the build context), then ends
#[kind("test_tweets", Nothing -> ScoredTweet)]
struct TestTweetsKind {}

impl Kind for TestTweetsKind {
    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, context: &BuildContext) -> Result<(), String> {
        let tweets =
            context.resources.get::<FixedTweets>().ok_or("the test puts FixedTweets in the context")?;
        let config = pipeline.producer(&stage.id, move || FromIter::new(tweets.0.clone().into_iter()));
        configure(stage, config, &DispatcherChoices::demand_only(), None)
    }
}

/// Every kind, with the test kinds `gated` and `test_tweets`.
fn registry() -> Registry {
    let mut registry = stageflow_stages::registry();
    registry.add::<GatedKind>().add::<TestTweetsKind>();
    registry
}

/// Builds and starts the pipeline in `text` with `registry`.
fn start(registry: &Registry, text: &str, data_dir: &Path) -> PipelineHandle {
    start_with(registry, text, data_dir, Resources::default())
}

/// Builds and starts the pipeline in `text` with `registry`, its stages sharing `resources`.
fn start_with(registry: &Registry, text: &str, data_dir: &Path, resources: Resources) -> PipelineHandle {
    let file = parse_pipeline(Path::new("test.toml"), text, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    let mut context = BuildContext::for_file(&file, data_dir.to_path_buf());
    context.resources = resources;
    let pipeline = registry.build(&file, &context).unwrap_or_else(|errors| panic!("{errors}"));
    pipeline.start().expect("a valid pipeline")
}

async fn run_to_end(mut running: PipelineHandle) {
    tokio::time::timeout(DEADLINE, running.wait())
        .await
        .unwrap_or_else(|_| panic!("the pipeline did not end within {DEADLINE:?}"))
        .expect("the pipeline ends cleanly");
}

// ---------------------------------------------------------------- broker_publish

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_publish_sends_every_line_and_ends_only_once_the_broker_accepted_them() {
    const N: usize = 500;
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), "127.0.0.1:0", &[]);
    let mut subscriber = Raw::open(broker.addr).await;
    for topic in ["numbers", "events"] {
        subscriber.publish(topic, "warm-up", json!("creates the topic")).await;
        subscriber.ok(&format!("sub {topic}")).await;
    }
    let pipeline = format!(
        r#"
        [pipeline]
        name = "publish-test"

        [[stage]]
        id = "numbers"
        kind = "numbers"
        start = 1
        count = {N}
        dispatcher = "broadcast"

        [[stage]]
        id = "text"
        kind = "format"
        template = "n = {{}}"
        subscribe_to = ["numbers"]

        [[stage]]
        id = "events"
        kind = "format"
        template = '{{"id":"e{{}}","priority":7,"msg":{{"n":{{}}}}}}'
        subscribe_to = ["numbers"]

        [[stage]]
        id = "publish_text"
        kind = "broker_publish"
        addr = "{addr}"
        topic = "numbers"
        priority = 2
        id_prefix = "t"
        max_outstanding = 16
        subscribe_to = ["text"]

        [[stage]]
        id = "publish_events"
        kind = "broker_publish"
        addr = "{addr}"
        topic = "events"
        subscribe_to = ["events"]
        "#,
        addr = broker.addr
    );
    run_to_end(start(&registry(), &pipeline, data.path())).await;

    // The sinks end only after every pub got its ok: the counts are final now.
    let mut control = Raw::open(broker.addr).await;
    for topic in ["numbers", "events"] {
        let stats = control.stats(topic).await;
        assert_eq!(stats["published"], json!(N + 1), "{topic}: {stats}");
    }

    let got = subscriber.take_and_ack(2 * N).await;
    let text: Vec<&Value> = got.iter().filter(|(topic, _)| topic == "numbers").map(|(_, e)| e).collect();
    let events: Vec<&Value> = got.iter().filter(|(topic, _)| topic == "events").map(|(_, e)| e).collect();
    assert_eq!((text.len(), events.len()), (N, N));
    for (i, event) in text.iter().enumerate() {
        // One connection, pubs in order, one priority: FIFO.
        assert_eq!(event["id"], json!(format!("t-{i}")), "wrapped lines are numbered after id_prefix");
        assert_eq!(event["priority"], json!(2));
        assert_eq!(event["msg"], json!(format!("n = {}", i + 1)), "a line that is not JSON is a string msg");
    }
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["id"], json!(format!("e{}", i + 1)), "an event line keeps its id");
        assert_eq!(event["priority"], json!(7));
        assert_eq!(event["msg"], json!({"n": i + 1}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_publish_holds_its_credit_while_the_broker_is_down_and_drops_nothing() {
    const N: usize = 200;
    let data = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let pipeline = format!(
        r#"
        [pipeline]
        name = "retry-test"

        [[stage]]
        id = "numbers"
        kind = "numbers"
        count = {N}

        [[stage]]
        id = "text"
        kind = "format"
        template = "{{}}"
        subscribe_to = [{{ id = "numbers", max_demand = 10, min_demand = 5 }}]

        [[stage]]
        id = "publish"
        kind = "broker_publish"
        addr = "{addr}"
        topic = "late"
        retry_initial_ms = 10
        retry_max_ms = 100
        subscribe_to = [{{ id = "text", max_demand = 10, min_demand = 5 }}]
        "#
    );
    let mut running = start(&registry(), &pipeline, data.path());
    let metrics = running.metrics_reader();
    let deadline = Deadline::new("the sink to take its first events");
    while metrics.stage("publish").map_or(0, |s| s.events_in) == 0 {
        deadline.tick("none yet").await;
    }
    // Nothing moves while the broker is away: the sink holds its credits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let source_out = metrics.stage("numbers").map_or(0, |s| s.events_out);
    let sink_in = metrics.stage("publish").map_or(0, |s| s.events_in);
    assert!(sink_in <= 10, "the sink took {sink_in} events, more than its max_demand");
    assert!(source_out <= 30, "the source emitted {source_out} events with nothing accepted");
    assert!(
        tokio::time::timeout(Duration::from_millis(1), running.wait()).await.is_err(),
        "the pipeline must not end while its events wait for the broker"
    );

    let broker = BrokerProcess::start(data.path(), &addr, &[]);
    run_to_end(running).await;
    let mut control = Raw::open(broker.addr).await;
    let stats = control.stats("late").await;
    assert_eq!(stats["published"], json!(N), "every event exactly once: {stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_fails_the_pipeline_with_a_clear_error_and_the_right_one_publishes() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), "127.0.0.1:0", &["--token", "s3cret"]);
    let pipeline = |token: &str| {
        format!(
            r#"
            [pipeline]
            name = "token-test"

            [[stage]]
            id = "numbers"
            kind = "numbers"
            count = 20

            [[stage]]
            id = "text"
            kind = "format"
            template = "{{}}"
            subscribe_to = ["numbers"]

            [[stage]]
            id = "publish"
            kind = "broker_publish"
            addr = "{addr}"
            token = "{token}"
            topic = "guarded"
            subscribe_to = ["text"]
            "#,
            addr = broker.addr
        )
    };
    let mut running = start(&registry(), &pipeline("wrong"), data.path());
    let outcome = tokio::time::timeout(DEADLINE, running.wait()).await.expect("fails within the deadline");
    let error = outcome.expect_err("a refused token fails the pipeline").to_string();
    assert!(error.contains(&format!("the broker at {} refused the token", broker.addr)), "{error}");
    let sink = running.metrics().into_iter().find(|s| s.stage == "publish").expect("the sink's metrics");
    assert!(sink.restarts >= 1, "{sink:?}");
    assert_eq!(sink.lost, 0, "the stage fails before taking events, so none is lost");

    run_to_end(start(&registry(), &pipeline("s3cret"), data.path())).await;
    let mut control = Raw::open(broker.addr).await;
    control.ok("auth s3cret").await;
    assert_eq!(control.stats("guarded").await["published"], json!(20));
}

// ---------------------------------------------------------------- broker_subscribe

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_subscribe_acks_as_a_slow_consumer_progresses_within_the_window() {
    const N: u64 = 40;
    const WINDOW: u64 = 3;
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), "127.0.0.1:0", &[]);
    let mut publisher = Raw::open(broker.addr).await;
    publisher.publish("jobs", "warm-up", json!(null)).await;

    let gate = Arc::new(Semaphore::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kinds = registry();
    let resources = Resources::default();
    resources.insert(Gate { permits: gate.clone(), seen: seen.clone() });
    let pipeline = format!(
        r#"
        [pipeline]
        name = "subscribe-test"

        [[stage]]
        id = "jobs"
        kind = "broker_subscribe"
        addr = "{addr}"
        topic = "jobs"
        name = "worker"
        window = {WINDOW}

        [[stage]]
        id = "work"
        kind = "gated"
        subscribe_to = [{{ id = "jobs", max_demand = 1, min_demand = 0 }}]
        "#,
        addr = broker.addr
    );
    let running = start_with(&kinds, &pipeline, data.path(), resources.clone());
    let deadline = Deadline::new("the source to subscribe");
    loop {
        let stats = publisher.stats("jobs").await;
        if stats["subscribers"] == json!(1) {
            break;
        }
        deadline.tick(stats).await;
    }
    for i in 0..N {
        publisher.publish("jobs", &format!("j{i}"), json!({"job": i})).await;
    }

    let processed = || seen.lock().unwrap().len() as u64;
    // Released permits so far; after each step, acks must catch up exactly with the consumer.
    let mut released = 0;
    for step in [0u64, 1, 4, 10, 25] {
        gate.add_permits(step as usize);
        released += step;
        let deadline = Deadline::new("acks to follow the consumer");
        loop {
            let stats = publisher.stats("jobs").await;
            let done = processed();
            let (acked, in_flight, pending) = (
                stats["acked"].as_u64().unwrap(),
                stats["in_flight"].as_u64().unwrap(),
                stats["pending"].as_u64().unwrap(),
            );
            assert!(in_flight <= WINDOW, "in flight beyond the window: {stats}");
            assert!(acked <= done, "acked {acked} events but the consumer finished {done}: {stats}");
            // The broker's counters are read one by one while events move
            // between them (published → pending → in flight → acked), so the
            // three add up to N only once the step has settled.
            let accounted = acked + in_flight + pending;
            if done == released
                && acked == released
                && in_flight == WINDOW.min(N - released)
                && accounted == N
            {
                break;
            }
            deadline.tick(format!("{stats}, processed {done}, released {released}")).await;
        }
    }
    assert_eq!(released, N);
    let expected: Vec<String> = (0..N).map(|i| json!({"job": i}).to_string()).collect();
    assert_eq!(*seen.lock().unwrap(), expected, "every event once, in order");
    running.stop().await.expect("stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_broker_subscribe_survives_a_broker_crash_without_losing_or_repeating_events() {
    const N: usize = 100;
    let data = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut broker = BrokerProcess::start(data.path(), &addr, &[]);
    let mut publisher = Raw::open(broker.addr).await;
    publisher.publish("jobs", "warm-up", json!(null)).await;

    // The consumer stops after 10 events, so the crash finds events taken
    // by the pipeline but not acked, delivered but not taken, and pending.
    let gate = Arc::new(Semaphore::new(10));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kinds = registry();
    let resources = Resources::default();
    resources.insert(Gate { permits: gate.clone(), seen: seen.clone() });
    let pipeline = format!(
        r#"
        [pipeline]
        name = "crash-test"

        [[stage]]
        id = "jobs"
        kind = "broker_subscribe"
        addr = "{addr}"
        topic = "jobs"
        name = "survivor"
        window = 5
        emit = "event"
        retry_initial_ms = 10
        retry_max_ms = 100

        [[stage]]
        id = "work"
        kind = "gated"
        subscribe_to = [{{ id = "jobs", max_demand = 2, min_demand = 1 }}]
        "#
    );
    let running = start_with(&kinds, &pipeline, data.path(), resources.clone());
    let deadline = Deadline::new("the source to subscribe");
    loop {
        let stats = publisher.stats("jobs").await;
        if stats["subscribers"] == json!(1) {
            break;
        }
        deadline.tick(stats).await;
    }
    for i in 0..N / 2 {
        publisher.publish("jobs", &format!("j{i}"), json!(i)).await;
    }
    let deadline = Deadline::new("the consumer to stall mid-stream with the window full");
    loop {
        let stats = publisher.stats("jobs").await;
        let done = seen.lock().unwrap().len();
        if done == 10 && stats["in_flight"] == json!(5) {
            break;
        }
        deadline.tick(format!("{stats}, processed {done}")).await;
    }
    broker.kill();
    let broker = BrokerProcess::start(data.path(), &addr, &[]);
    let mut publisher = Raw::open(broker.addr).await;
    for i in N / 2..N {
        publisher.publish("jobs", &format!("j{i}"), json!(i)).await;
    }
    gate.add_permits(Semaphore::MAX_PERMITS - 10);
    let deadline = Deadline::new("every event after the restart");
    loop {
        let stats = publisher.stats("jobs").await;
        let ids: BTreeSet<String> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|text| serde_json::from_str::<Value>(text).unwrap()["id"].as_str().unwrap().to_string())
            .collect();
        if ids.len() == N && stats["pending"] == json!(0) && stats["in_flight"] == json!(0) {
            break;
        }
        deadline.tick(format!("{} distinct ids; {stats}", ids.len())).await;
    }
    let seen = seen.lock().unwrap().clone();
    let ids: Vec<String> = seen
        .iter()
        .map(|text| serde_json::from_str::<Value>(text).unwrap()["id"].as_str().unwrap().to_string())
        .collect();
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), N, "every event arrived");
    assert_eq!(ids.len(), N, "and none twice: {ids:?}");
    running.stop().await.expect("stops cleanly");
}

// ---------------------------------------------------------------- broker_tweets

fn tweet(id: u64, user: u64) -> Tweet {
    Tweet {
        id_str: id.to_string(),
        text: format!("tweet {id} #broker"),
        created_at: "Fri Mar 01 00:00:00 +0000 2024".into(),
        favorite_count: id % 5,
        retweet_count: id % 3,
        lang: Some("en".into()),
        entities: Default::default(),
        user: User {
            id_str: format!("u{user}"),
            screen_name: format!("user{user}"),
            followers_count: user + 1,
            ..User::default()
        },
        retweeted_status: None,
    }
}

/// `count` tweets from 7 users; every 5th is a retweet of the one before,
/// whose original then comes again (extracted), as the analysis half emits them.
fn stream(count: u64) -> Vec<ScoredTweet> {
    let scored = |tweet: Tweet, extracted: bool| ScoredTweet {
        tweet,
        extracted,
        sentiment: 0.5,
        engagement: 0.25,
        receipt: Default::default(),
    };
    let mut out = Vec::new();
    for i in 0..count {
        let id = 1000 + i;
        let mut current = tweet(id, i % 7);
        if i % 5 == 4 {
            let original = tweet(id - 1, (i - 1) % 7);
            current.retweeted_status = Some(Box::new(original.clone()));
            out.push(scored(current, false));
            out.push(scored(original, true));
        } else {
            out.push(scored(current, false));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_tweets_publishes_tweet_and_user_documents_under_their_id_str() {
    let tweets = stream(60);
    let tweet_ids: BTreeSet<String> = tweets.iter().map(|s| s.tweet.id_str.clone()).collect();
    let user_ids: BTreeSet<String> = tweets.iter().map(|s| s.tweet.user.id_str.clone()).collect();
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), "127.0.0.1:0", &[]);
    let mut subscriber = Raw::open(broker.addr).await;
    for topic in ["tweets", "users"] {
        subscriber.publish(topic, "warm-up", json!(null)).await;
        subscriber.ok(&format!("sub {topic}")).await;
    }
    let kinds = registry();
    let resources = Resources::default();
    resources.insert(FixedTweets(tweets.clone()));
    let pipeline = format!(
        r#"
        [pipeline]
        name = "tweets-test"

        [[stage]]
        id = "source"
        kind = "test_tweets"

        [[stage]]
        id = "publish"
        kind = "broker_tweets"
        addr = "{addr}"
        priority = 4
        subscribe_to = ["source"]
        "#,
        addr = broker.addr
    );
    let mut control = Raw::open(broker.addr).await;
    let mut runs = Vec::new();
    // Twice: a replay publishes the same documents under the same ids.
    for _ in 0..2 {
        let before = (control.stats("tweets").await, control.stats("users").await);
        run_to_end(start_with(&kinds, &pipeline, data.path(), resources.clone())).await;
        let after = (control.stats("tweets").await, control.stats("users").await);
        let count = |before: &Value, after: &Value| {
            (after["published"].as_u64().unwrap() - before["published"].as_u64().unwrap()) as usize
        };
        let (new_tweets, new_users) = (count(&before.0, &after.0), count(&before.1, &after.1));
        assert!(
            (tweet_ids.len()..=tweets.len()).contains(&new_tweets),
            "each tweet at least once, each id at most once per batch: {new_tweets}"
        );
        assert!((user_ids.len()..=tweets.len()).contains(&new_users), "users: {new_users}");
        let got = subscriber.take_and_ack(new_tweets + new_users).await;
        let mut tweet_docs = std::collections::BTreeMap::new();
        let mut user_docs = std::collections::BTreeMap::new();
        for (topic, event) in got {
            let id = event["id"].as_str().unwrap().to_string();
            assert_eq!(event["priority"], json!(4));
            assert_eq!(event["msg"]["id_str"], json!(id), "{topic}: the id is the document's id_str");
            let docs = if topic == "tweets" { &mut tweet_docs } else { &mut user_docs };
            if let Some(previous) = docs.insert(id.clone(), event["msg"].clone()) {
                assert_eq!(previous, event["msg"], "{topic} {id}: the same id, the same document");
            }
        }
        assert_eq!(tweet_docs.keys().cloned().collect::<BTreeSet<_>>(), tweet_ids);
        assert_eq!(user_docs.keys().cloned().collect::<BTreeSet<_>>(), user_ids);
        let retweet = &tweet_docs["1004"];
        assert_eq!(retweet["user_id"], json!("u4"), "the user is split off: {retweet}");
        assert!(retweet.get("user").is_none() && retweet.get("retweeted_status").is_none(), "{retweet}");
        assert_eq!(retweet["retweeted_status_id"], json!("1003"));
        assert_eq!(tweet_docs["1003"]["sentiment"], json!(0.5));
        assert_eq!(user_docs["u3"]["screen_name"], json!("user3"));
        runs.push((tweet_docs, user_docs));
    }
    assert_eq!(runs[0], runs[1], "a replay publishes the same ids and documents");
}
