//! The analysis stages through the engine: logger crashes and restarts, the
//! scoring flow and its join, evictions, the hashtags file, statistics
//! frames, the stage kinds in pipeline files, and an end-to-end run from the
//! emulator.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use stageflow::config::{BuildContext, DispatcherChoices, Kind, StageDecl, configure, kind, parse_pipeline};
use stageflow::ops::{ForEach, FromIter, FromStream};
use stageflow::window::top_n;
use stageflow::{
    BroadcastDispatcher, Emitter, Flow, Nothing, Pipeline, PoolConfig, Producer, SubscribeOptions,
};
use stageflow_stages::analysis::aggregator::JoinStats;
use stageflow_stages::analysis::engagement::engagement_of;
use stageflow_stages::analysis::hashtags::hashtags_of;
use stageflow_stages::analysis::logger::KILL_PANIC;
use stageflow_stages::analysis::statistics::StatsOutput;
use stageflow_stages::analysis::{
    Aggregator, Engagement, FlowTweet, HashtagWindow, Hashtags, Lexicon, Logger, LoggerConfig, OutputTarget,
    Score, Sentiment, Statistics, StatsFrame, StatsHub, TweetFlow, TweetScore, TweetsHub, WorkSleep,
    sentiment::SharedLexicon, sentiment_score, tweet_flow_selector, write_atomically,
};
use stageflow_stages::emulator::generator::{GeneratedEvent, TweetGenerator, Vocabulary};
use stageflow_stages::emulator::{EmulatorConfig, Rate, start_emulator};
use stageflow_stages::scored::ScoredTweet;
use stageflow_stages::sse::{SseEvent, TweetMessage};
use stageflow_stages::tweet::{Hashtag, Tweet, User};
use tokio::sync::mpsc;

/// Awaits `future`, failing the test instead of hanging if it takes over a
/// minute (of virtual time in paused tests, where it fails at once).
async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), future).await.expect("finished within 60 s")
}

/// Starts a pipeline and waits for it to end.
async fn finish(pipeline: Pipeline) -> Result<stageflow::PipelineSummary, stageflow::PipelineError> {
    within(pipeline.start().unwrap().wait()).await
}

fn tweet(id: &str, text: &str) -> Tweet {
    Tweet {
        id_str: id.into(),
        text: text.into(),
        created_at: String::new(),
        favorite_count: 0,
        retweet_count: 0,
        lang: None,
        entities: Default::default(),
        user: User { id_str: format!("user-{id}"), followers_count: 10, ..User::default() },
        retweeted_status: None,
    }
}

fn flow(text: &str) -> TweetFlow {
    TweetFlow::Tweet(FlowTweet::new(tweet(text, text), false))
}

fn quiet_logger(sender: mpsc::Sender<String>, ignore_kill_messages: bool) -> LoggerConfig {
    LoggerConfig {
        output: OutputTarget::Channel(sender),
        sleep: WorkSleep::none(),
        ignore_kill_messages,
        hub: None,
    }
}

fn drain(receiver: &mut mpsc::Receiver<String>) -> Vec<String> {
    let mut lines = Vec::new();
    while let Ok(line) = receiver.try_recv() {
        lines.push(line);
    }
    lines
}

/// Runs `events` through a logger (a pool of `workers` if given); returns its lines, restarts and losses.
async fn run_logger(events: Vec<TweetFlow>, ignore: bool, workers: Option<usize>) -> (Vec<String>, u64, u64) {
    let (sender, mut receiver) = mpsc::channel(64);
    let config = quiet_logger(sender, ignore);
    let mut pipeline = Pipeline::new();
    pipeline.producer("source", move || FromIter::new(events.clone().into_iter()));
    let logger = pipeline.consumer("logger", move || Logger::new(config.clone()));
    logger.subscribe_to("source", SubscribeOptions::default());
    if let Some(workers) = workers {
        logger.workers(PoolConfig::fixed(workers));
    }
    let summary = finish(pipeline).await.expect("one crash is within the restart limit");
    let stats = summary.stages.iter().find(|stage| stage.stage == "logger").unwrap();
    (drain(&mut receiver), stats.restarts, stats.lost)
}

#[tokio::test]
async fn a_logger_crashing_on_a_kill_message_is_restarted_and_logs_the_rest() {
    let events = vec![flow("one"), TweetFlow::Kill, flow("two"), flow("three")];
    let (lines, restarts, lost) = run_logger(events, false, None).await;
    assert_eq!(lines, ["one", "two", "three"]);
    assert_eq!((restarts, lost), (1, 1), "the kill message is the one event lost");
}

#[tokio::test]
async fn a_logger_pool_worker_crashing_is_restarted_and_the_pool_goes_on() {
    let mut events = vec![flow("a"), TweetFlow::Kill, flow("b"), flow("c"), TweetFlow::Kill, flow("d")];
    events.extend((0..20).map(|i| flow(&format!("n{i}"))));
    let (mut lines, restarts, lost) = run_logger(events, false, Some(3)).await;
    lines.sort();
    assert_eq!(lines.len(), 24, "{lines:?}");
    assert!(lines.contains(&"a".to_string()) && lines.contains(&"d".to_string()));
    assert_eq!((restarts, lost), (2, 2));
}

#[tokio::test]
async fn a_logger_told_to_ignore_kill_messages_never_crashes() {
    let events = vec![flow("one"), TweetFlow::Kill, flow("two")];
    let (lines, restarts, lost) = run_logger(events, true, None).await;
    assert_eq!(lines, ["one", "two"]);
    assert_eq!((restarts, lost), (0, 0));
}

#[tokio::test]
async fn kill_messages_past_the_restart_limit_fail_the_pipeline_naming_the_logger() {
    let (sender, _receiver) = mpsc::channel(64);
    let config = quiet_logger(sender, false);
    let mut pipeline = Pipeline::new();
    pipeline.producer("source", || FromIter::new(vec![TweetFlow::Kill; 5].into_iter()));
    pipeline
        .consumer("logger", move || Logger::new(config.clone()))
        .subscribe_to("source", SubscribeOptions::default())
        .restart(stageflow::RestartPolicy::intensity(2, Duration::from_secs(60)));
    let error = finish(pipeline).await.unwrap_err().to_string();
    assert!(error.contains("logger") && error.contains(KILL_PANIC), "{error}");
}

#[tokio::test(start_paused = true)]
async fn the_logger_sleeps_and_records_its_time_for_the_statistics() {
    let hub = StatsHub::new("logger-timing");
    let (sender, mut receiver) = mpsc::channel(64);
    let config = LoggerConfig {
        output: OutputTarget::Channel(sender),
        sleep: WorkSleep { mean_ms: 40.0, std_dev_ms: 0.0 },
        ignore_kill_messages: false,
        hub: Some(hub.clone()),
    };
    let mut pipeline = Pipeline::new();
    pipeline.producer("source", || FromIter::new(vec![flow("x"), flow("y"), flow("z")].into_iter()));
    pipeline
        .consumer("logger", move || Logger::new(config.clone()))
        .subscribe_to("source", SubscribeOptions::default());
    let started = tokio::time::Instant::now();
    finish(pipeline).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(120), "three sleeps of 40 ms, one worker");
    assert_eq!(drain(&mut receiver).len(), 3);
    let timings = hub.logger_timings().take();
    assert_eq!(timings.count, 3);
    assert!((timings.p95_ms - 40.0).abs() < 1.0, "{timings:?}");
}

/// The greatest lag of a paced source behind its schedule when the shipped
/// tweets pipeline's logger (its pool and its demand, as the file sets them,
/// with the default 50–500 ms of emulated work) is its only subscriber,
/// offered `per_second` tweets for `seconds` of virtual time: over the whole
/// run, and after a warm-up of `WARM_UP` in which the pool grows from one worker.
async fn lag_of_the_shipped_logger(per_second: u64, seconds: u64) -> (Duration, Duration) {
    let built_in = stageflow_stages::pipelines::built_in("tweets").expect("shipped");
    let file =
        parse_pipeline(Path::new("tweets.toml"), built_in.text, &|_| Some("http://127.0.0.1:1".into()))
            .expect("the shipped file parses");
    let mut logger = file.stages.iter().find(|stage| stage.kind == "logger").expect("a logger").clone();
    logger.set("output", toml::Value::String("none".into()));
    let producer = logger.subscribe_to[0].producer.clone();

    const TICK: Duration = Duration::from_millis(10);
    const WARM_UP: Duration = Duration::from_secs(1);
    let per_tick = per_second * TICK.as_millis() as u64 / 1000;
    let ticks = seconds * 1000 / TICK.as_millis() as u64;
    let lag = Arc::new(Mutex::new((Duration::ZERO, Duration::ZERO)));
    let worst = lag.clone();
    let start = tokio::time::Instant::now();
    let paced = move || {
        let lag = lag.clone();
        futures::stream::iter(0..ticks)
            .then(move |tick| {
                let lag = lag.clone();
                async move {
                    let due = start + TICK * tick as u32;
                    tokio::time::sleep_until(due).await;
                    let mut worst = lag.lock().unwrap();
                    worst.0 = worst.0.max(due.elapsed());
                    if due >= start + WARM_UP {
                        worst.1 = worst.1.max(due.elapsed());
                    }
                    futures::stream::iter((0..per_tick).map(move |n| flow(&format!("{tick}-{n}"))))
                }
            })
            .flatten()
    };
    let mut pipeline = Pipeline::new();
    pipeline.producer(&producer, move || FromStream::new(paced())).dispatcher(BroadcastDispatcher::new());
    let registry = stageflow_stages::registry();
    let data = tempfile::tempdir().unwrap();
    registry
        .kind("logger")
        .unwrap()
        .build(&logger, &mut pipeline, &BuildContext::for_file(&file, data.path()))
        .expect("the shipped logger builds");
    let summary = tokio::time::timeout(Duration::from_secs(seconds * 10), pipeline.start().unwrap().wait())
        .await
        .expect("ends")
        .unwrap();
    let logged = summary.stages.iter().find(|stage| stage.stage == logger.id).unwrap().events_in;
    assert_eq!(logged, per_second * seconds, "every tweet reached the logger");
    *worst.lock().unwrap()
}

/// A live stream is cut off by its server when it is not read in time, and
/// the logger's broadcast paces every other stage: the shipped logger must
/// keep up with `stageflow emulate --rate 1000` (two streams, 2 000 tweets/s)
/// and the 3 000/s stretch while it still sleeps 50–500 ms per tweet.
#[tokio::test(start_paused = true)]
async fn the_shipped_logger_keeps_up_with_six_thousand_tweets_a_second_of_emulated_work() {
    for per_second in [2_000, 6_000] {
        let (lag, after_warm_up) = lag_of_the_shipped_logger(per_second, 10).await;
        // The emulator lets a stream fall at most 1 s behind before it skips ahead.
        assert!(lag < Duration::from_millis(250), "{per_second} tweets/s: the source fell {lag:?} behind");
        assert!(
            after_warm_up < Duration::from_millis(100),
            "{per_second} tweets/s: the source fell {after_warm_up:?} behind once the pool had grown"
        );
    }
}

/// A consumer collecting whatever it gets.
fn collector<T: Send + 'static>(
    into: Arc<Mutex<Vec<T>>>,
) -> impl Fn() -> ForEach<Box<dyn FnMut(T) + Send>, T> {
    move || {
        let into = into.clone();
        ForEach::new(Box::new(move |event: T| into.lock().unwrap().push(event)) as Box<dyn FnMut(T) + Send>)
    }
}

#[tokio::test]
async fn the_flow_scores_every_tweet_and_extracted_original_once_and_skips_kills() {
    let mut original = tweet("1", "I love this, it is good");
    original.favorite_count = 6;
    original.retweet_count = 4;
    let mut retweet = tweet("2", "RT: I love this, it is good");
    retweet.user.followers_count = 0;
    retweet.retweet_count = 3;
    retweet.retweeted_status = Some(Box::new(original.clone()));
    let plain = tweet("3", "I hate Mondays 😡");
    let events = vec![
        SseEvent { id: "1".into(), message: TweetMessage::Tweet(Box::new(retweet.clone())) },
        SseEvent { id: "2".into(), message: TweetMessage::Kill },
        SseEvent { id: "3".into(), message: TweetMessage::Tweet(Box::new(plain.clone())) },
    ];
    let scored = Arc::new(Mutex::new(Vec::<ScoredTweet>::new()));
    let stats = Arc::new(JoinStats::default());
    let lexicon = SharedLexicon::ready(Lexicon::vader());
    let mut pipeline = Pipeline::new();
    pipeline.producer("source", move || FromIter::new(events.clone().into_iter()));
    pipeline
        .producer_consumer("tweets", || TweetsHub::new(true))
        .subscribe_to("source", SubscribeOptions::default())
        .dispatcher(BroadcastDispatcher::new());
    let mut only_tweets = SubscribeOptions::default();
    only_tweets.selector = Some(tweet_flow_selector("tweets").unwrap());
    pipeline
        .producer_consumer("sentiment", move || Sentiment::new(lexicon.clone()))
        .subscribe_to("tweets", only_tweets)
        .workers(PoolConfig::autoscaled(1, 3));
    pipeline
        .producer_consumer("engagement", || Engagement)
        .subscribe_to("tweets", SubscribeOptions::default());
    let join_stats = stats.clone();
    pipeline
        .producer_consumer("aggregator", move || {
            Aggregator::new(Duration::from_secs(30), 100, join_stats.clone())
        })
        .subscribe_to("sentiment", SubscribeOptions::default())
        .subscribe_to("engagement", SubscribeOptions::default());
    pipeline
        .consumer("store", collector(scored.clone()))
        .subscribe_to("aggregator", SubscribeOptions::default());
    let summary = finish(pipeline).await.unwrap();

    let mut scored = scored.lock().unwrap().clone();
    scored.sort_by(|a, b| a.tweet.id_str.cmp(&b.tweet.id_str));
    let ids: Vec<(&str, bool)> = scored.iter().map(|s| (s.tweet.id_str.as_str(), s.extracted)).collect();
    assert_eq!(ids, [("1", true), ("2", false), ("3", false)]);
    let vader = Lexicon::vader();
    for (scored, source) in scored.iter().zip([&original, &retweet, &plain]) {
        assert_eq!(&scored.tweet, source, "the tweet is passed on whole");
        assert_eq!(scored.sentiment, sentiment_score(&source.text, &vader));
        assert_eq!(scored.engagement, engagement_of(source));
    }
    assert_eq!(scored[0].engagement, 1.0, "(6 + 4) / 10");
    assert_eq!(scored[1].engagement, 3.0, "followers 0 count as 1");
    assert!(scored[0].sentiment > 0.0 && scored[2].sentiment < 0.0);
    assert_eq!((stats.joined(), stats.evicted()), (3, 0));
    let engagement = summary.stages.iter().find(|s| s.stage == "engagement").unwrap();
    assert_eq!(engagement.events_in, 4, "engagement took the kill message too, and skipped it");
    assert_eq!(engagement.events_out, 3);
}

/// Emits `first`, sleeps `pause`, emits `second`, then ends.
struct TwoBursts {
    first: Vec<TweetScore>,
    pause: Duration,
    second: Vec<TweetScore>,
    step: usize,
}

impl Producer for TwoBursts {
    type Out = TweetScore;

    async fn produce(&mut self, _demand: usize, out: &mut Emitter<TweetScore>) -> Flow {
        self.step += 1;
        match self.step {
            1 => {
                out.emit_batch(std::mem::take(&mut self.first));
                Flow::Continue
            }
            _ => {
                tokio::time::sleep(self.pause).await;
                out.emit_batch(std::mem::take(&mut self.second));
                Flow::Done
            }
        }
    }
}

fn halves(count: usize) -> (Vec<TweetScore>, Vec<TweetScore>) {
    let tweets: Vec<FlowTweet> =
        (0..count).map(|i| FlowTweet::new(tweet(&i.to_string(), ""), false)).collect();
    let sentiment =
        tweets.iter().map(|t| TweetScore { tweet: t.clone(), score: Score::Sentiment(0.5) }).collect();
    let engagement =
        tweets.iter().map(|t| TweetScore { tweet: t.clone(), score: Score::Engagement(1.0) }).collect();
    (sentiment, engagement)
}

async fn run_aggregator(
    first: Vec<TweetScore>,
    pause: Duration,
    second: Vec<TweetScore>,
    ttl: Duration,
    max_pending: usize,
) -> (usize, Arc<JoinStats>) {
    let stats = Arc::new(JoinStats::default());
    let scored = Arc::new(Mutex::new(Vec::<ScoredTweet>::new()));
    let mut pipeline = Pipeline::new();
    let bursts = Mutex::new(Some((first, second)));
    pipeline.producer("scores", move || {
        let (first, second) = bursts.lock().unwrap().take().unwrap_or_default();
        TwoBursts { first, pause, second, step: 0 }
    });
    let join_stats = stats.clone();
    pipeline
        .producer_consumer("aggregator", move || Aggregator::new(ttl, max_pending, join_stats.clone()))
        .subscribe_to("scores", SubscribeOptions::default());
    pipeline
        .consumer("store", collector(scored.clone()))
        .subscribe_to("aggregator", SubscribeOptions::default());
    finish(pipeline).await.unwrap();
    let joined = scored.lock().unwrap().len();
    (joined, stats)
}

#[tokio::test(start_paused = true)]
async fn halves_that_wait_past_the_ttl_are_evicted_by_the_timer_and_counted() {
    let (sentiment, engagement) = halves(5);
    let (joined, stats) =
        run_aggregator(sentiment, Duration::from_secs(10), engagement, Duration::from_secs(1), 100).await;
    assert_eq!(joined, 0, "the engagement halves came 10 s late");
    assert_eq!(stats.expired(), 5, "evicted by the TTL");
    assert_eq!(stats.abandoned(), 5, "the late halves were still waiting at the end");
    assert_eq!(stats.evicted(), 10);
}

#[tokio::test(start_paused = true)]
async fn halves_that_come_in_time_join() {
    let (sentiment, engagement) = halves(5);
    let (joined, stats) =
        run_aggregator(sentiment, Duration::from_millis(500), engagement, Duration::from_secs(1), 100).await;
    assert_eq!(joined, 5);
    assert_eq!(stats.evicted(), 0);
}

#[tokio::test]
async fn past_max_pending_the_oldest_halves_are_evicted_and_counted() {
    let (sentiment, mut engagement) = halves(10);
    engagement.reverse();
    let (joined, stats) =
        run_aggregator(sentiment, Duration::ZERO, engagement, Duration::from_secs(60), 4).await;
    // Sentiment 0..=9 leave 6..=9 waiting (6 evicted); engagement 9..=6 join them;
    // engagement 5..=0 wait in their turn, 2 of them evicted, 4 abandoned at the end.
    assert_eq!(joined, 4);
    assert_eq!((stats.overflowed(), stats.abandoned(), stats.expired()), (8, 4, 0));
    assert_eq!(2 * joined as u64 + stats.evicted(), 20, "every half is joined or evicted");
}

fn tagged(id: &str, tags: &[&str]) -> TweetFlow {
    let mut tweet = tweet(id, "");
    tweet.entities.hashtags = tags.iter().map(|text| Hashtag { text: text.to_string() }).collect();
    TweetFlow::Tweet(FlowTweet::new(tweet, false))
}

fn read_window(path: &Path) -> HashtagWindow {
    let text = std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}\n{text}", path.display()))
}

#[tokio::test]
async fn the_last_partial_window_is_written_when_the_producers_end() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("out/hashtags.json");
    let events = vec![
        tagged("1", &["Rust", "tokio"]),
        tagged("2", &["rust"]),
        TweetFlow::Kill,
        tagged("3", &["serde", "RUST", "tokio"]),
        TweetFlow::Tweet(FlowTweet::new(tweet("4", ""), true)),
    ];
    let file = path.clone();
    let mut pipeline = Pipeline::new();
    pipeline.producer("tweets", move || FromIter::new(events.clone().into_iter()));
    pipeline
        .consumer("hashtags", move || Hashtags::new("tags", file.clone(), Duration::from_secs(3600), 2, true))
        .subscribe_to("tweets", SubscribeOptions::default());
    finish(pipeline).await.unwrap();
    let window = read_window(&path);
    assert_eq!(window.pipeline, "tags");
    assert_eq!(window.tweets, 4);
    assert_eq!(window.window_ms, 3_600_000);
    let top: Vec<(&str, u64)> = window.top.iter().map(|t| (t.hashtag.as_str(), t.count)).collect();
    assert_eq!(top, [("rust", 3), ("tokio", 2)]);
}

/// Emits `events`, waits `pause`, reads `path` into `seen`, then ends.
struct EmitThenRead {
    events: Vec<TweetFlow>,
    pause: Duration,
    path: std::path::PathBuf,
    seen: mpsc::Sender<Option<String>>,
    step: usize,
}

impl Producer for EmitThenRead {
    type Out = TweetFlow;

    async fn produce(&mut self, _demand: usize, out: &mut Emitter<TweetFlow>) -> Flow {
        self.step += 1;
        if self.step == 1 {
            out.emit_batch(std::mem::take(&mut self.events));
            return Flow::Continue;
        }
        tokio::time::sleep(self.pause).await;
        let _ = self.seen.send(std::fs::read_to_string(&self.path).ok()).await;
        Flow::Done
    }
}

#[tokio::test(start_paused = true)]
async fn each_window_is_written_when_it_closes_and_empty_windows_too() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("hashtags.json");
    let (seen, mut read) = mpsc::channel(4);
    let source = Mutex::new(Some(EmitThenRead {
        events: vec![tagged("1", &["a", "b"]), tagged("2", &["a"])],
        pause: Duration::from_millis(1500),
        path: path.clone(),
        seen,
        step: 0,
    }));
    let file = path.clone();
    let mut pipeline = Pipeline::new();
    pipeline.producer("tweets", move || source.lock().unwrap().take().expect("no restart"));
    pipeline
        .consumer("hashtags", move || Hashtags::new("tags", file.clone(), Duration::from_secs(1), 10, true))
        .subscribe_to("tweets", SubscribeOptions::default());
    let mut running = pipeline.start().unwrap();
    let after_first_window = within(read.recv()).await.unwrap().expect("written at 1 s, read at 1.5 s");
    let window: HashtagWindow = serde_json::from_str(&after_first_window).unwrap();
    assert_eq!(window.tweets, 2);
    assert_eq!(
        window.top.iter().map(|t| (t.hashtag.as_str(), t.count)).collect::<Vec<_>>(),
        [("a", 2), ("b", 1)]
    );
    within(running.wait()).await.unwrap();
}

#[test]
fn the_hashtags_file_is_always_whole_json_while_being_rewritten() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("hashtags.json");
    let big = |round: usize| {
        let top: Vec<_> = (0..2000)
            .map(|i| serde_json::json!({"hashtag": format!("tag{round}-{i}"), "count": i}))
            .collect();
        serde_json::to_vec(&serde_json::json!({ "round": round, "top": top })).unwrap()
    };
    write_atomically(&path, &big(0)).unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (path, done) = (path.clone(), done.clone());
        std::thread::spawn(move || {
            let mut reads = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) || reads < 50 {
                let bytes = std::fs::read(&path).unwrap();
                let parsed: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                    panic!("read {} bytes that are not whole JSON: {error}", bytes.len())
                });
                assert_eq!(parsed["top"].as_array().unwrap().len(), 2000);
                reads += 1;
            }
            reads
        })
    };
    for round in 1..=200 {
        write_atomically(&path, &big(round)).unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().expect("every read saw whole JSON") >= 50);
}

#[tokio::test(start_paused = true)]
async fn statistics_frames_carry_per_frame_percentiles_totals_and_engine_crashes() {
    let hub = StatsHub::new("stats-frames");
    for ms in 1..=100 {
        hub.logger_timings().record(Duration::from_millis(ms));
    }
    let inserts = hub.insert_timings();
    inserts.record_tweets(Duration::from_millis(30), 200);
    inserts.record_users(Duration::from_millis(10), 150);
    let (sender, mut lines) = mpsc::channel(8);
    let logger = LoggerConfig { hub: Some(hub.clone()), ..quiet_logger(sender, false) };
    let (frames_out, mut frames) = mpsc::channel::<StatsFrame>(8);
    let sequence = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut pipeline = Pipeline::new();
    // The source stays open: statistics follow the data and would end with it.
    let events = Mutex::new(Some(vec![TweetFlow::Kill, flow("after the crash")]));
    pipeline
        .producer("source", move || StaysOpen { events: events.lock().unwrap().take().unwrap_or_default() });
    pipeline
        .consumer("logger", move || Logger::new(logger.clone()))
        .subscribe_to("source", SubscribeOptions::default());
    let stats_hub = hub.clone();
    pipeline.producer("statistics", move || {
        Statistics::new(
            stats_hub.clone(),
            "statistics",
            Duration::from_secs(5),
            StatsOutput::Quiet,
            sequence.clone(),
        )
    });
    pipeline
        .consumer("publish", move || {
            let frames_out = frames_out.clone();
            ForEach::new(move |frame: StatsFrame| {
                let _ = frames_out.try_send(frame);
            })
        })
        .subscribe_to("statistics", SubscribeOptions::default());
    let running = pipeline.start().unwrap();
    hub.attach_metrics(running.metrics_reader());
    assert_eq!(within(lines.recv()).await.unwrap(), "after the crash");
    let mut published = hub.subscribe();

    let started = tokio::time::Instant::now();
    let first = within(frames.recv()).await.unwrap();
    assert!(started.elapsed() <= Duration::from_secs(5));
    assert_eq!(first.sequence, 1);
    assert_eq!(first.pipeline, "stats-frames");
    assert_eq!(first.logger.count, 101, "100 recorded by hand, 1 by the logger");
    assert!((first.logger.p75_ms - 75.0).abs() < 1.0, "{:?}", first.logger);
    assert!((first.logger.p95_ms - 95.0).abs() < 1.5, "{:?}", first.logger);
    assert_eq!(first.tweets_insert.count, 1);
    assert!((first.tweets_insert.p85_ms - 30.0).abs() < 0.5);
    assert_eq!((first.tweets_ingested, first.users_ingested), (200, 150));
    assert_eq!((first.crashes, first.lost), (1, 1), "from the engine's metrics");
    within(published.changed()).await.unwrap();
    assert_eq!(published.borrow().as_ref(), Some(&first), "the hub publishes each frame");

    inserts.record_tweets(Duration::from_millis(80), 20);
    let second = within(frames.recv()).await.unwrap();
    assert_eq!(second.sequence, 2);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(10) && elapsed < Duration::from_millis(10_001), "{elapsed:?}");
    assert_eq!(second.logger.count, 0, "percentiles are per frame");
    assert_eq!(second.tweets_insert.count, 1);
    assert!((second.tweets_insert.p75_ms - 80.0).abs() < 1.0);
    assert_eq!(second.tweets_ingested, 220, "counts are totals");
    running.stop().await.unwrap();
}

/// Emits its events, then stays open with nothing more (a quiet producer).
struct StaysOpen {
    events: Vec<TweetFlow>,
}

impl Producer for StaysOpen {
    type Out = TweetFlow;

    async fn produce(&mut self, _demand: usize, out: &mut Emitter<TweetFlow>) -> Flow {
        out.emit_batch(std::mem::take(&mut self.events));
        Flow::Continue
    }
}

/// A sink stand-in: records one insert per tweet into the hub, `pause` each.
fn recording_sink(
    hub: &Arc<StatsHub>,
    pause: Duration,
) -> impl Fn() -> RecordingSink + Send + Sync + 'static {
    let inserts = hub.insert_timings();
    move || RecordingSink { inserts: inserts.clone(), pause }
}

struct RecordingSink {
    inserts: Arc<stageflow_stages::analysis::InsertTimings>,
    pause: Duration,
}

impl stageflow::Consumer for RecordingSink {
    type In = u64;

    async fn handle_events(&mut self, events: &mut stageflow::Events<u64>) {
        for _ in events {
            tokio::time::sleep(self.pause).await;
            self.inserts.record_tweets(self.pause, 1);
        }
    }
}

/// A statistics stage of `hub` writing nothing, one frame per second.
fn statistics(hub: &Arc<StatsHub>) -> impl Fn() -> Statistics + Send + Sync + 'static {
    let (hub, sequence) = (hub.clone(), Arc::new(std::sync::atomic::AtomicU64::new(0)));
    move || {
        Statistics::new(
            hub.clone(),
            "statistics",
            Duration::from_secs(1),
            StatsOutput::Quiet,
            sequence.clone(),
        )
    }
}

#[tokio::test(start_paused = true)]
async fn statistics_end_with_the_data_after_a_final_frame_covering_the_tail() {
    let hub = StatsHub::new("stats-final-frame");
    let (frames_out, mut frames) = mpsc::channel::<StatsFrame>(64);
    let mut pipeline = Pipeline::new();
    pipeline.producer("source", || FromIter::new(0..25u64));
    // 25 tweets at 100 ms each: 2.5 s, so two whole frames and a tail of half a second.
    pipeline
        .consumer("sink", recording_sink(&hub, Duration::from_millis(100)))
        .subscribe_to("source", SubscribeOptions::default());
    pipeline.producer("statistics", statistics(&hub));
    pipeline
        .consumer("publish", move || {
            let frames_out = frames_out.clone();
            ForEach::new(move |frame: StatsFrame| {
                let _ = frames_out.try_send(frame);
            })
        })
        .subscribe_to("statistics", SubscribeOptions::default());
    let summary = finish(pipeline).await.expect("ends by itself once the sink has ended");
    let mut received = Vec::new();
    while let Ok(frame) = frames.try_recv() {
        received.push(frame);
    }
    let sequences: Vec<u64> = received.iter().map(|frame| frame.sequence).collect();
    assert_eq!(sequences, vec![1, 2, 3], "two whole frames and the final one");
    let last = received.last().unwrap();
    assert_eq!(last.tweets_ingested, 25, "the final frame covers the tail");
    assert_eq!(last.frame_ms, 500, "the final frame is as long as the tail");
    let stats = summary.stages.iter().find(|stage| stage.stage == "statistics").unwrap();
    assert_eq!((stats.events_out, stats.dropped), (3, 0));
}

#[tokio::test(start_paused = true)]
async fn statistics_nobody_subscribes_to_write_their_frames_but_buffer_none() {
    let hub = StatsHub::new("stats-unsubscribed");
    let mut published = hub.subscribe();
    let mut pipeline = Pipeline::new();
    pipeline.producer("source", || FromIter::new(0..25u64));
    pipeline
        .consumer("sink", recording_sink(&hub, Duration::from_millis(100)))
        .subscribe_to("source", SubscribeOptions::default());
    pipeline.producer("statistics", statistics(&hub));
    let mut running = pipeline.start().unwrap();
    let reader = running.metrics_reader();
    let mut frames = 0;
    // Every frame is still written (here: published) while nobody subscribes.
    while frames < 2 {
        within(published.changed()).await.unwrap();
        frames += 1;
        let stats = reader.stage("statistics").unwrap();
        assert_eq!((stats.buffer_fill, stats.dropped), (0, 0), "frame {frames} went into no buffer");
    }
    let summary = within(running.wait()).await.expect("ends by itself");
    let last = published.borrow_and_update().clone().expect("a final frame");
    assert_eq!((last.sequence, last.tweets_ingested), (3, 25));
    let stats = summary.stages.iter().find(|stage| stage.stage == "statistics").unwrap();
    assert_eq!((stats.events_out, stats.buffer_fill, stats.dropped), (0, 0, 0));
}

/// Where the `collect` stage puts the scored tweets it takes.
#[derive(Default)]
struct Collected(Arc<Mutex<Vec<ScoredTweet>>>);

/// collects scored tweets (tests) into the [`Collected`] of the build context
#[kind("collect", ScoredTweet -> Nothing)]
struct CollectKind {}

impl Kind for CollectKind {
    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, context: &BuildContext) -> Result<(), String> {
        let collected = context.resources.get_or_default::<Collected>();
        let config = pipeline.consumer(&stage.id, collector(collected.0.clone()));
        configure(stage, config, &DispatcherChoices::demand_only(), None)
    }
}

const ANALYSIS_PIPELINE: &str = r#"
[pipeline]
name = "${NAME}"

[[stage]]
id = "source1"
kind = "sse"
url = "${EMULATOR}/tweets/1"

[[stage]]
id = "source2"
kind = "sse"
url = "${EMULATOR}/tweets/2"
initial_backoff_ms = 10

[[stage]]
id = "tweets"
kind = "tweets"
subscribe_to = ["source1", "source2"]
dispatcher = "broadcast"

[[stage]]
id = "logger"
kind = "logger"
output = "none"
sleep_mean_ms = 0
subscribe_to = [{ id = "tweets", selector = "received" }]
workers = { min = 1, max = 4, autoscale = true }

[[stage]]
id = "sentiment"
kind = "sentiment"
lexicon_url = "${EMULATOR}/emotion_values"
subscribe_to = [{ id = "tweets", selector = "tweets" }]

[[stage]]
id = "engagement"
kind = "engagement"
subscribe_to = ["tweets"]

[[stage]]
id = "hashtags"
kind = "hashtags"
path = "top/hashtags.json"
every_ms = 3_600_000
top = 5
subscribe_to = [{ id = "tweets", selector = "tweets" }]

[[stage]]
id = "aggregator"
kind = "aggregator"
subscribe_to = ["sentiment", "engagement"]

[[stage]]
id = "store"
kind = "collect"
subscribe_to = ["aggregator"]

[[stage]]
id = "statistics"
kind = "statistics"
output = "none"
"#;

fn analysis_file(text: &str, variables: &[(&str, &str)]) -> stageflow::config::PipelineFile {
    let variables: HashMap<String, String> =
        variables.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
    parse_pipeline(Path::new("analysis.toml"), text, &|name| variables.get(name).cloned()).expect("parses")
}

fn check(text: &str) -> Result<(), String> {
    let file = analysis_file(text, &[("NAME", "checked"), ("EMULATOR", "http://127.0.0.1:4000")]);
    let mut registry = stageflow_stages::registry();
    registry.add::<CollectKind>();
    registry.check(&file).map_err(|errors| errors.to_string())
}

#[test]
fn every_analysis_kind_is_registered() {
    let registry = stageflow_stages::registry();
    for kind in ["sse", "tweets", "logger", "sentiment", "engagement", "aggregator", "hashtags", "statistics"]
    {
        let found = registry.kind(kind).unwrap_or_else(|| panic!("kind {kind} is not registered"));
        assert!(!found.summary().is_empty());
    }
    let kinds = stageflow_stages::cmd::kinds::kinds_report(&registry);
    assert!(kinds.contains("ignore_kill_messages") && kinds.contains("ttl_ms") && kinds.contains("frame_ms"));
}

#[test]
fn the_analysis_pipeline_passes_check() {
    check(ANALYSIS_PIPELINE).unwrap();
}

#[test]
fn check_catches_type_mismatches_between_analysis_kinds() {
    let wrong = ANALYSIS_PIPELINE
        .replace(r#"subscribe_to = ["sentiment", "engagement"]"#, r#"subscribe_to = ["tweets"]"#);
    let error = check(&wrong).unwrap_err();
    assert!(
        error.contains("stage 'aggregator': takes tweet score events but 'tweets' (kind \"tweets\") emits tweet flow events"),
        "{error}"
    );
    let wrong = ANALYSIS_PIPELINE
        .replace(r#"subscribe_to = ["source1", "source2"]"#, r#"subscribe_to = ["aggregator"]"#);
    let error = check(&wrong).unwrap_err();
    assert!(
        error.contains(
            "takes SSE tweet events but 'aggregator' (kind \"aggregator\") emits scored tweet events"
        ),
        "{error}"
    );
}

#[test]
fn check_rejects_bad_analysis_settings_naming_them() {
    let cases = [
        ("sleep_mean_ms = 0", "sleep_mean_ms = -5", "`sleep_mean_ms` must be 0 or more, got -5"),
        (
            "output = \"none\"\nsleep",
            "output = \"telnet\"\nsleep",
            "`output` must be \"stdout\", \"stderr\" or \"none\"",
        ),
        ("kind = \"aggregator\"", "kind = \"aggregator\"\nttl_ms = 0", "`ttl_ms` must be at least 1"),
        (
            "kind = \"aggregator\"",
            "kind = \"aggregator\"\nmax_pending = -1",
            "invalid settings for kind \"aggregator\"",
        ),
        (
            "selector = \"received\"",
            "selector = \"recieved\"",
            "unknown selector \"recieved\" for tweet flow events (did you mean \"received\"?)",
        ),
        ("every_ms = 3_600_000", "every_ms = 0", "`every_ms` must be at least 1"),
        ("top = 5", "top = 0", "`top` must be at least 1"),
        (
            "every_ms = 3_600_000",
            "every_ms = 1_000_000_000_000",
            "`every_ms` must be at most 86400000 (one day)",
        ),
        ("kind = \"statistics\"", "kind = \"statistics\"\nframe_ms = 0", "`frame_ms` must be at least 1"),
        (
            "kind = \"statistics\"\noutput = \"none\"",
            "kind = \"statistics\"\noutput = \"loud\"",
            "`output` must be \"log\", \"stdout\" or \"none\", got \"loud\"",
        ),
        (
            "lexicon_url = \"${EMULATOR}/emotion_values\"",
            "lexicon_url = \"ftp://x/y\"",
            "the scheme must be http or https",
        ),
        (
            "lexicon_url = \"${EMULATOR}/emotion_values\"",
            "lexicon_url = \"http://x/y\"\nlexicon_file = \"l.txt\"",
            "set `lexicon_file` or `lexicon_url`, not both",
        ),
        (
            "lexicon_url = \"${EMULATOR}/emotion_values\"",
            "lexicon_file = \"/nonexistent/l.txt\"",
            "cannot read the lexicon file /nonexistent/l.txt",
        ),
        ("url = \"${EMULATOR}/tweets/1\"", "url = \"not a url\"", "invalid SSE source URL 'not a url'"),
        (
            "initial_backoff_ms = 10",
            "initial_backoff_ms = 10\nmax_backoff_ms = 5",
            "`max_backoff_ms` (5) must not be below",
        ),
        (
            "kind = \"tweets\"",
            "kind = \"tweets\"\nextract_retweets = \"yes\"",
            "invalid settings for kind \"tweets\"",
        ),
    ];
    for (from, to, expected) in cases {
        assert!(ANALYSIS_PIPELINE.contains(from), "fixture lacks {from:?}");
        let error =
            check(&ANALYSIS_PIPELINE.replacen(from, to, 1)).expect_err(&format!("{to:?} must be rejected"));
        assert!(error.contains(expected), "{to:?}: expected {expected:?} in\n{error}");
    }
}

/// What the emulator sends on streams 1 and 2, events 1..=limit.
fn expected_flow(generator: &TweetGenerator, limit: u64) -> (Vec<Tweet>, usize) {
    let mut tweets = Vec::new();
    let mut kills = 0;
    for stream in 1..=2 {
        for sequence in 1..=limit {
            match generator.event(stream, sequence) {
                GeneratedEvent::Tweet(tweet) => {
                    let mut next = tweet.retweeted_status.clone();
                    tweets.push(*tweet);
                    while let Some(original) = next {
                        next = original.retweeted_status.clone();
                        tweets.push(*original);
                    }
                }
                GeneratedEvent::Kill => kills += 1,
                GeneratedEvent::Malformed(_) => {}
            }
        }
    }
    (tweets, kills)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_the_emulator_every_tweet_and_original_is_scored_once_and_hashtags_add_up() {
    let limit = 150;
    let config = EmulatorConfig {
        rate: Rate::Max,
        seed: 11,
        limit: Some(limit),
        kill_ratio: 0.03,
        malformed_ratio: 0.02,
        close_after: Some(40),
    };
    let emulator = start_emulator("127.0.0.1:0", config).await.unwrap();
    let base = emulator.url("");
    let base = base.trim_end_matches('/');
    let data = tempfile::tempdir().unwrap();
    let name = "analysis-e2e";
    let text = ANALYSIS_PIPELINE
        .replace("[[stage]]\nid = \"statistics\"\nkind = \"statistics\"\noutput = \"none\"\n", "");
    let mut file = analysis_file(&text, &[("NAME", name), ("EMULATOR", base)]);
    // `${NAME}` is expanded in stage settings only.
    file.name = name.into();
    let scored = Arc::new(Mutex::new(Vec::new()));
    let mut registry = stageflow_stages::registry();
    registry.add::<CollectKind>();
    let context = BuildContext::for_file(&file, data.path().to_path_buf());
    context.resources.insert(Collected(scored.clone()));
    let pipeline = registry.build(&file, &context).map_err(|errors| errors.to_string()).unwrap();
    let running = pipeline.start().unwrap();
    let hub = context.resources.get::<StatsHub>().expect("the sse and logger stages made the hub");
    hub.attach_metrics(running.metrics_reader());
    let mut running = running;
    let summary = tokio::time::timeout(Duration::from_secs(60), running.wait()).await.expect("ends").unwrap();

    let generator = TweetGenerator::new(11, 0.03, 0.02, Vocabulary::shipped());
    let (sent, kills) = expected_flow(&generator, limit);
    assert!(
        kills > 0 && sent.iter().any(|t| t.retweeted_status.is_some()),
        "the seed exercises kills and retweets"
    );
    let scored = scored.lock().unwrap().clone();
    let key = |tweet: &Tweet| (tweet.id_str.clone(), tweet.text.clone());
    let mut got: Vec<_> = scored.iter().map(|s| key(&s.tweet)).collect();
    let mut want: Vec<_> = sent.iter().map(key).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "every tweet and extracted original, once each");
    let vader = Lexicon::vader();
    for scored in &scored {
        assert_eq!(scored.sentiment, sentiment_score(&scored.tweet.text, &vader), "{}", scored.tweet.id_str);
        assert_eq!(scored.engagement, engagement_of(&scored.tweet));
    }
    let originals = sent.iter().filter(|t| t.retweeted_status.is_some()).count();
    assert_eq!(scored.iter().filter(|s| s.extracted).count(), originals);

    let stage = |id: &str| summary.stages.iter().find(|s| s.stage == id).unwrap().clone();
    assert_eq!(stage("logger").restarts as usize, kills, "one crash per kill message");
    assert_eq!(stage("logger").events_in as usize, sent.len() - originals + kills, "selector \"received\"");

    let mut counts: HashMap<String, u64> = HashMap::new();
    for tweet in &sent {
        for tag in hashtags_of(tweet) {
            *counts.entry(tag).or_default() += 1;
        }
    }
    let window = read_window(&data.path().join("top/hashtags.json"));
    let expected: Vec<(String, u64)> = top_n(counts, 5);
    let written: Vec<(String, u64)> = window.top.iter().map(|t| (t.hashtag.clone(), t.count)).collect();
    assert_eq!(written, expected);
    assert_eq!(window.tweets as usize, sent.len());

    let frame = hub.frame(1, Duration::from_secs(5), "statistics");
    assert_eq!(frame.crashes as usize, kills);
    let malformed: u64 =
        frame.dropped_by.iter().filter(|(k, _)| k.ends_with(".malformed")).map(|(_, v)| *v).sum();
    let expected_malformed = (1..=2)
        .flat_map(|stream| (1..=limit).map(move |sequence| (stream, sequence)))
        .filter(|(stream, sequence)| {
            matches!(generator.event(*stream, *sequence), GeneratedEvent::Malformed(_))
        })
        .count();
    assert_eq!(malformed as usize, expected_malformed);
    assert!(!frame.dropped_by.contains_key("aggregator.evicted"), "{:?}", frame.dropped_by);
    emulator.stop().await;
}
