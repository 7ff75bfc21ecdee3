//! A message broker: durable topics as broadcast stages, over a line protocol
//! that `nc` and `telnet` can speak (see `server`).
//!
//! Each topic is a stageflow pipeline whose one producer stage broadcasts
//! every published event to every subscription ([`stageflow::BroadcastDispatcher`]).
//! A subscription's delivery task takes everything the stage offers into
//! its own priority queue (higher priority first, FIFO within a priority),
//! bounded in memory; past the bound the events stay in the topic's log and
//! are read back as the queue drains. From the queue it delivers while fewer
//! than `window` deliveries await an ack: acks are the subscriber's demand
//! credits, so a silent subscriber only ever holds `window` events in flight
//! and never slows the others or the publishers.
//!
//! In-process use (what a future pipeline stage does):
//!
//! ```no_run
//! # async fn example() -> Result<(), stageflow_stages::broker::BrokerError> {
//! use stageflow_stages::broker::{Broker, BrokerConfig, EventInput};
//! let broker = Broker::open(BrokerConfig::new("broker-data")).await?;
//! let (deliveries, mut inbox) = tokio::sync::mpsc::channel(64);
//! let mut client = broker.connect(deliveries);
//! client.set_name("indexer")?;              // durable: survives restarts
//! client.subscribe("tweets").await.ok();    // the topic must exist
//! broker.publish("tweets", EventInput { id: "t1".into(), priority: 5, msg: serde_json::json!("hi") }).await?;
//! if let Some(delivery) = inbox.recv().await {
//!     client.ack(&delivery.topic, &delivery.event.id).await?;
//! }
//! # Ok(()) }
//! ```

mod delivery;
pub(crate) mod log;
pub mod protocol;
mod queue;
pub mod record;
mod server;
mod subscription;
mod topic;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use log::{CompactionReport, SYNC_INTERVAL, SyncMode};
pub use protocol::{Command, EventInput, parse_command};
pub use queue::{AckedSet, PendingQueue};
pub use record::StoredEvent;
pub use server::{BrokerServer, ServerConfig, serve};
pub use subscription::Delivery;

use crate::sync::lock;
use delivery::{DeliverySetup, run_delivery};
use subscription::SubscriptionCommand;
use topic::{SubscriptionState, Topic};

/// Default window: deliveries that may await an ack at once.
pub const DEFAULT_WINDOW: usize = 10;

/// An error from the broker, worded for the `error: ...` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerError(pub String);

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BrokerError {}

impl From<String> for BrokerError {
    fn from(message: String) -> Self {
        BrokerError(message)
    }
}

/// Settings of the broker core.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Where topic logs live (one directory per topic under `topics/`).
    pub data_dir: PathBuf,
    /// When the log is fsynced.
    pub sync: SyncMode,
    /// Most topics that may exist.
    pub max_topics: usize,
    /// Events a subscription holds in memory before the rest wait in the log.
    pub queue_events: usize,
    /// Bytes a subscription holds in memory before the rest wait in the log.
    pub queue_bytes: usize,
    /// Size at which a log segment is closed and a new one started.
    pub segment_bytes: u64,
    /// How often closed segments are compacted.
    pub compact_interval: Duration,
}

impl BrokerConfig {
    /// The defaults, storing in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        BrokerConfig {
            data_dir: data_dir.into(),
            sync: SyncMode::Batched,
            max_topics: 1000,
            queue_events: 1000,
            queue_bytes: 4 * 1024 * 1024,
            segment_bytes: 64 * 1024 * 1024,
            compact_interval: Duration::from_secs(10),
        }
    }
}

/// One subscription's figures, for the HTTP view's scrape.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SubscriberFigures {
    /// The topic.
    pub topic: String,
    /// The subscriber's name (durable) or connection key.
    pub subscriber: String,
    /// Events waiting for it (in memory and spilled to the log).
    pub pending: u64,
    /// Deliveries awaiting its ack: how much of its window it uses.
    pub in_flight: u64,
    /// Its window: most deliveries awaiting an ack at once (0 while no client is attached).
    pub window: u64,
}

/// Counters of one topic, as `stats` reports them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicStats {
    /// The topic.
    pub topic: String,
    /// Subscriptions, connected or durable and away.
    pub subscribers: usize,
    /// Events waiting for subscribers (in memory and in the log), not yet delivered.
    pub pending: u64,
    /// Deliveries awaiting an ack.
    pub in_flight: u64,
    /// Events published since the broker started.
    pub published: u64,
    /// Acks since the broker started.
    pub acked: u64,
    /// Bytes of the topic's log on disk.
    pub log_bytes: u64,
}

/// The broker: topics, their logs and subscriptions. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<BrokerInner>,
}

struct BrokerInner {
    config: BrokerConfig,
    topics: Mutex<BTreeMap<String, Arc<Topic>>>,
    /// Serialises topic creation (directory, pipeline start).
    creating: tokio::sync::Mutex<()>,
    /// Names held by connected clients.
    names: Mutex<HashSet<String>>,
    next_client: AtomicU64,
    background: Mutex<Vec<JoinHandle<()>>>,
}

impl Broker {
    /// Opens the data dir, recovers every topic and its durable subscriptions,
    /// and starts the background syncing and compaction. Needs a tokio runtime.
    pub async fn open(config: BrokerConfig) -> Result<Broker, BrokerError> {
        let topics_dir = config.data_dir.join("topics");
        std::fs::create_dir_all(&topics_dir)
            .map_err(|error| format!("cannot create {}: {error}", topics_dir.display()))?;
        let broker = Broker {
            inner: Arc::new(BrokerInner {
                config,
                topics: Mutex::new(BTreeMap::new()),
                creating: tokio::sync::Mutex::new(()),
                names: Mutex::new(HashSet::new()),
                next_client: AtomicU64::new(1),
                background: Mutex::new(Vec::new()),
            }),
        };
        let mut names: Vec<String> = std::fs::read_dir(&topics_dir)
            .map_err(|error| format!("cannot read {}: {error}", topics_dir.display()))?
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| protocol::check_name("topic", name).is_ok())
            .collect();
        names.sort();
        for name in names {
            broker.open_topic(&name).await?;
        }
        let compactor = broker.clone();
        let interval = broker.inner.config.compact_interval;
        lock(&broker.inner.background).push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                compactor.compact_all().await;
            }
        }));
        Ok(broker)
    }

    /// The settings it runs with.
    pub fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }

    async fn open_topic(&self, name: &str) -> Result<Arc<Topic>, BrokerError> {
        let config = &self.inner.config;
        let dir = config.data_dir.join("topics").join(name);
        let (topic, recovery) = Topic::open(name, &dir, config.segment_bytes, config.sync)?;
        for warning in &recovery.warnings {
            eprintln!("warning: {warning}");
        }
        for subscriber in recovery.subscribers {
            // Everything through its contiguous acks is done: the read-back
            // starts after them, not at its start (which would rescan the log).
            let read_from = subscriber.acked.contiguous_through(subscriber.start) + 1;
            let engine = topic.engine_subscription().await?;
            let (commands, receiver) = mpsc::channel(64);
            let state = topic.register_recovered(
                &subscriber.name,
                subscriber.start,
                subscriber.acked,
                subscriber.pending,
                commands,
            );
            tokio::spawn(run_delivery(DeliverySetup {
                topic: topic.clone(),
                state,
                engine,
                commands: receiver,
                queue: PendingQueue::new(config.queue_events, config.queue_bytes),
                registered_at: recovery.last_seq,
                read_from: Some(read_from),
            }));
        }
        let syncer = topic.clone();
        lock(&self.inner.background).push(tokio::spawn(async move { syncer.log.run_syncer().await }));
        lock(&self.inner.topics).insert(name.to_string(), topic.clone());
        Ok(topic)
    }

    fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        lock(&self.inner.topics).get(name).cloned()
    }

    async fn topic_or_create(&self, name: &str) -> Result<Arc<Topic>, BrokerError> {
        if let Some(topic) = self.topic(name) {
            return Ok(topic);
        }
        let _creating = self.inner.creating.lock().await;
        if let Some(topic) = self.topic(name) {
            return Ok(topic);
        }
        protocol::check_name("topic", name)?;
        let count = lock(&self.inner.topics).len();
        if count >= self.inner.config.max_topics {
            return Err(BrokerError(format!(
                "the topic limit ({}) is reached; cannot create topic '{name}'",
                self.inner.config.max_topics
            )));
        }
        self.open_topic(name).await
    }

    /// Publishes an event to a topic, creating the topic if needed; returns
    /// its sequence number once it is logged (and fsynced with `--sync always`).
    pub async fn publish(&self, topic: &str, event: EventInput) -> Result<u64, BrokerError> {
        protocol::check_id(&event.id)?;
        if event.priority > protocol::MAX_PRIORITY {
            return Err(BrokerError(format!("priority must be from 0 to {}", protocol::MAX_PRIORITY)));
        }
        let topic = self.topic_or_create(topic).await?;
        let ts = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        #[derive(Serialize)]
        struct Body<'a> {
            id: &'a str,
            priority: u8,
            msg: &'a serde_json::Value,
            ts: u64,
        }
        let body =
            serde_json::to_string(&Body { id: &event.id, priority: event.priority, msg: &event.msg, ts })
                .map_err(|error| format!("cannot encode the event: {error}"))?;
        Ok(topic.publish(event.id, event.priority, body).await?)
    }

    /// A new client delivering to `outlet`; anonymous until `set_name`.
    pub fn connect(&self, outlet: mpsc::Sender<Delivery>) -> Client {
        let number = self.inner.next_client.fetch_add(1, Ordering::Relaxed);
        Client {
            broker: self.clone(),
            name: None,
            key: format!("#{number}"),
            window: DEFAULT_WINDOW,
            outlet,
            subscriptions: HashMap::new(),
        }
    }

    /// The topic names, sorted.
    pub fn topics(&self) -> Vec<String> {
        lock(&self.inner.topics).keys().cloned().collect()
    }

    /// Counters of every topic (or one).
    pub fn stats(&self, only: Option<&str>) -> Result<Vec<TopicStats>, BrokerError> {
        let topics: Vec<Arc<Topic>> = match only {
            Some(name) => vec![self.topic(name).ok_or_else(|| no_topic(name))?],
            None => lock(&self.inner.topics).values().cloned().collect(),
        };
        Ok(topics
            .iter()
            .map(|topic| {
                let subscriptions = topic.subscriptions();
                TopicStats {
                    topic: topic.name.to_string(),
                    subscribers: subscriptions.len(),
                    pending: subscriptions
                        .iter()
                        .map(|s| s.queued.load(Ordering::Relaxed) as u64 + s.spilled.load(Ordering::Relaxed))
                        .sum(),
                    in_flight: subscriptions.iter().map(|s| s.in_flight.load(Ordering::Relaxed) as u64).sum(),
                    published: topic.published.load(Ordering::Relaxed),
                    acked: topic.acked.load(Ordering::Relaxed),
                    log_bytes: topic.log.disk_bytes(),
                }
            })
            .collect())
    }

    /// Every subscription of every topic, with its backlog and window use (for `/metrics`).
    pub fn subscriber_figures(&self) -> Vec<SubscriberFigures> {
        let topics: Vec<Arc<Topic>> = lock(&self.inner.topics).values().cloned().collect();
        let mut figures = Vec::new();
        for topic in topics {
            for s in topic.subscriptions() {
                figures.push(SubscriberFigures {
                    topic: topic.name.to_string(),
                    subscriber: s.key.clone(),
                    pending: s.queued.load(Ordering::Relaxed) as u64 + s.spilled.load(Ordering::Relaxed),
                    in_flight: s.in_flight.load(Ordering::Relaxed) as u64,
                    window: s.window.load(Ordering::Relaxed) as u64,
                });
            }
        }
        figures
    }

    /// Compacts every topic's closed log segments now.
    pub async fn compact_all(&self) -> CompactionReport {
        let topics: Vec<Arc<Topic>> = lock(&self.inner.topics).values().cloned().collect();
        let mut total = CompactionReport::default();
        for topic in topics {
            let name = topic.name.clone();
            match tokio::task::spawn_blocking(move || topic.compact()).await {
                Ok(Ok(report)) => {
                    total.deleted += report.deleted;
                    total.rewritten += report.rewritten;
                    total.bytes_freed += report.bytes_freed;
                }
                Ok(Err(error)) => eprintln!("warning: compaction of topic '{name}' failed: {error}"),
                Err(error) => eprintln!("warning: compaction of topic '{name}' failed: {error}"),
            }
        }
        total
    }

    /// Stops background work and every topic's stage, and fsyncs the logs.
    pub async fn shutdown(&self) {
        for task in lock(&self.inner.background).drain(..) {
            task.abort();
        }
        let topics: Vec<Arc<Topic>> = lock(&self.inner.topics).values().cloned().collect();
        for topic in topics {
            topic.shutdown().await;
        }
    }
}

fn no_topic(name: &str) -> BrokerError {
    BrokerError(format!("no topic '{name}' (a topic is created by its first pub)"))
}

/// One subscriber: a connection, or a pipeline stage in-process. Anonymous
/// until named; a named client's subscriptions and pending events outlive it
/// and come back to the next client taking the name. Dropping it releases the name.
pub struct Client {
    broker: Broker,
    name: Option<String>,
    key: String,
    window: usize,
    outlet: mpsc::Sender<Delivery>,
    subscriptions: HashMap<String, Arc<SubscriptionState>>,
}

impl Client {
    /// Its durable name, if it took one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Takes a durable identity (before any `subscribe`); resumes the
    /// subscriptions a previous client under this name left.
    pub fn set_name(&mut self, name: &str) -> Result<(), BrokerError> {
        protocol::check_name("subscriber name", name)?;
        if let Some(current) = &self.name {
            return Err(BrokerError(format!("this connection is already named '{current}'")));
        }
        if !self.subscriptions.is_empty() {
            return Err(BrokerError("name must come before the first sub".into()));
        }
        if !lock(&self.broker.inner.names).insert(name.to_string()) {
            return Err(BrokerError(format!("subscriber name '{name}' is in use by another connection")));
        }
        self.name = Some(name.to_string());
        self.key = name.to_string();
        let topics: Vec<Arc<Topic>> = lock(&self.broker.inner.topics).values().cloned().collect();
        for topic in topics {
            if let Some(state) = topic.subscription(name) {
                let attach = SubscriptionCommand::Attach { outlet: self.outlet.clone(), window: self.window };
                if state.commands.try_send(attach).is_ok() {
                    self.subscriptions.insert(topic.name.to_string(), state);
                }
            }
        }
        Ok(())
    }

    /// The topics it is subscribed to, sorted.
    pub fn subscribed(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.subscriptions.keys().cloned().collect();
        topics.sort();
        topics
    }

    /// Subscribes to an existing topic: events published from now on.
    pub async fn subscribe(&mut self, topic_name: &str) -> Result<(), BrokerError> {
        if self.subscriptions.contains_key(topic_name) {
            return Err(BrokerError(format!("already subscribed to '{topic_name}'")));
        }
        let topic = self.broker.topic(topic_name).ok_or_else(|| no_topic(topic_name))?;
        let engine = topic.engine_subscription().await?;
        let (commands, receiver) = mpsc::channel(64);
        let (state, ticket) = topic.register(&self.key, self.name.is_some(), commands)?;
        let config = &self.broker.inner.config;
        let attach = SubscriptionCommand::Attach { outlet: self.outlet.clone(), window: self.window };
        let _ = state.commands.try_send(attach);
        tokio::spawn(run_delivery(DeliverySetup {
            topic: topic.clone(),
            state: state.clone(),
            engine,
            commands: receiver,
            queue: PendingQueue::new(config.queue_events, config.queue_bytes),
            registered_at: state.start,
            read_from: None,
        }));
        self.subscriptions.insert(topic_name.to_string(), state);
        topic.log.wait_durable(ticket).await;
        Ok(())
    }

    /// Ends a subscription; a durable one's pending events are dropped.
    pub async fn unsubscribe(&mut self, topic_name: &str) -> Result<(), BrokerError> {
        let state = self
            .subscriptions
            .remove(topic_name)
            .ok_or_else(|| BrokerError(format!("not subscribed to '{topic_name}'")))?;
        let topic = self.broker.topic(topic_name).ok_or_else(|| no_topic(topic_name))?;
        let ticket = topic.unregister(&state.key)?;
        let _ = state.commands.send(SubscriptionCommand::Stop).await;
        topic.log.wait_durable(ticket).await;
        Ok(())
    }

    /// Acknowledges a delivered event: one more delivery may follow.
    pub async fn ack(&self, topic_name: &str, id: &str) -> Result<(), BrokerError> {
        let state = self
            .subscriptions
            .get(topic_name)
            .ok_or_else(|| BrokerError(format!("not subscribed to '{topic_name}'")))?;
        let (reply, answer) = oneshot::channel();
        let gone = || BrokerError(format!("the subscription to '{topic_name}' has ended"));
        state
            .commands
            .send(SubscriptionCommand::Ack { id: id.to_string(), reply })
            .await
            .map_err(|_| gone())?;
        let ticket = answer.await.map_err(|_| gone())??;
        if let Some(topic) = self.broker.topic(topic_name) {
            topic.log.wait_durable(ticket).await;
        }
        Ok(())
    }

    /// Sets how many deliveries may await an ack, on every subscription of this client.
    pub async fn set_window(&mut self, window: usize) -> Result<(), BrokerError> {
        if !(1..=protocol::MAX_WINDOW).contains(&window) {
            return Err(BrokerError(format!("window must be from 1 to {}", protocol::MAX_WINDOW)));
        }
        self.window = window;
        for state in self.subscriptions.values() {
            let _ = state.commands.send(SubscriptionCommand::Window(window)).await;
        }
        Ok(())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        match &self.name {
            Some(name) => {
                lock(&self.broker.inner.names).remove(name);
            }
            None => {
                for (topic_name, state) in self.subscriptions.drain() {
                    if let Some(topic) = self.broker.topic(&topic_name) {
                        let _ = topic.unregister(&state.key);
                    }
                    if state.commands.try_send(SubscriptionCommand::Stop).is_err()
                        && let Ok(runtime) = tokio::runtime::Handle::try_current()
                    {
                        let commands = state.commands.clone();
                        runtime.spawn(async move { commands.send(SubscriptionCommand::Stop).await });
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(id: String) -> EventInput {
        EventInput { id, priority: 0, msg: serde_json::Value::Null }
    }

    /// (events in memory, deliveries awaiting an ack, events waiting in the log) of a subscription.
    fn held(broker: &Broker, topic: &str, subscriber: &str) -> (u64, u64, u64) {
        let state = broker.topic(topic).and_then(|t| t.subscription(subscriber)).expect("the subscription");
        (
            state.queued.load(Ordering::Relaxed) as u64,
            state.in_flight.load(Ordering::Relaxed) as u64,
            state.spilled.load(Ordering::Relaxed),
        )
    }

    async fn eventually(what: &str, check: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backlog_nobody_acks_waits_in_the_log_and_memory_holds_only_the_queue_and_the_window() {
        const EVENTS: u64 = 3000;
        const QUEUE: usize = 100;
        let dir = tempfile::tempdir().unwrap();
        let mut config = BrokerConfig::new(dir.path());
        config.sync = SyncMode::Off;
        config.queue_events = QUEUE;
        config.segment_bytes = 32 * 1024;
        config.compact_interval = Duration::from_secs(3600);
        let broker = Broker::open(config.clone()).await.unwrap();
        broker.publish("t", input("setup".into())).await.unwrap();
        let (silent_outlet, _silent_inbox) = mpsc::channel(EVENTS as usize);
        let mut silent = broker.connect(silent_outlet);
        silent.set_name("silent").unwrap();
        silent.subscribe("t").await.unwrap();
        let (acker_outlet, mut acker_inbox) = mpsc::channel(EVENTS as usize);
        let mut acker = broker.connect(acker_outlet);
        acker.set_name("acker").unwrap();
        acker.subscribe("t").await.unwrap();
        let acking = tokio::spawn(async move {
            for _ in 0..EVENTS {
                let delivery = acker_inbox.recv().await.expect("a delivery");
                acker.ack(&delivery.topic, &delivery.event.id).await.unwrap();
            }
        });
        for n in 0..EVENTS {
            broker.publish("t", input(format!("e{n}"))).await.unwrap();
        }
        tokio::time::timeout(Duration::from_secs(60), acking)
            .await
            .expect("the acker got everything")
            .unwrap();

        // The silent subscriber holds its window in flight and at most its queue in memory; the rest is in the log.
        eventually("the silent subscriber's figures to settle", || {
            let (queued, in_flight, spilled) = held(&broker, "t", "silent");
            queued + in_flight + spilled == EVENTS
        })
        .await;
        let (queued, in_flight, _) = held(&broker, "t", "silent");
        assert!(queued <= QUEUE as u64, "{queued} events in memory, over the queue's {QUEUE}");
        assert_eq!(in_flight, DEFAULT_WINDOW as u64);
        drop(silent);
        broker.shutdown().await;

        // After a restart: the backlog is counted from the log, memory again holds at most the
        // queue, and the subscriber that acked everything reads nothing back (the log is not
        // rescanned per subscriber: that grows with the backlog).
        let broker = Broker::open(config).await.unwrap();
        let topic = broker.topic("t").unwrap();
        eventually("the silent subscriber's queue to refill", || held(&broker, "t", "silent").0 > 0).await;
        let (queued, in_flight, spilled) = held(&broker, "t", "silent");
        assert_eq!((queued + spilled, in_flight), (EVENTS, 0));
        assert!(queued <= QUEUE as u64, "{queued} events in memory after the restart");
        assert_eq!(held(&broker, "t", "acker"), (0, 0, 0));
        let read_back = topic.log.events_read_back();
        assert!(
            read_back <= 2 * QUEUE as u64,
            "{read_back} events read back from the log after the restart for {QUEUE} in memory"
        );
        broker.shutdown().await;
    }
}
