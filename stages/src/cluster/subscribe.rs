//! The consuming side of a cut edge: one durable pull consumer per partition,
//! pinned by the server to one live process of the part (JetStream priority
//! groups), fetched only as downstream demand allows and acked when the
//! event is finished with. A message held longer than a quarter of the ack
//! wait is told "in progress" (`+WPI`) every quarter, so the server
//! redelivers only what a dead process held, never what a live one is still
//! working on (which another process would then store and count as well).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, stream::Stream as JetStream};
use futures::StreamExt;
use stageflow::config::{BuildContext, DispatcherChoices, Kind, StageDecl, configure, kind};
use stageflow::{Emitter, Flow, Producer};
use stageflow::{Nothing, Pipeline};
use tokio::sync::{Mutex, Notify, OnceCell, mpsc};
use tokio::task::JoinHandle;

use super::CutStats;
use super::wire::Wire;
use crate::receipt::Receipt;
use crate::sync::lock;

/// The priority group every process of a part pulls in.
pub const GROUP: &str = "stageflow";
/// How long the server keeps a silent client pinned before another takes over.
pub const PIN_TIMEOUT: Duration = Duration::from_secs(5);
/// The expiry of each pull: well under [`PIN_TIMEOUT`], so a pulling client keeps its pin.
const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// How often messages still held are told "in progress", and how old they must be.
const PROGRESS_EVERY: Duration = Duration::from_secs(super::build::ACK_WAIT.as_secs() / 4);

/// A message fetched from a partition and not yet emitted, with its number
/// among those held: dropped unread (at shutdown) it is not acked, so the
/// server delivers it again.
struct Fetched {
    message: jetstream::Message,
    held: u64,
}

/// The messages this process holds and has not acked: their reply subjects
/// and when they were last acknowledged as received or in progress.
#[derive(Default)]
struct Held {
    next: AtomicU64,
    replies: std::sync::Mutex<HashMap<u64, (async_nats::Subject, Instant)>>,
}

impl Held {
    fn replies(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (async_nats::Subject, Instant)>> {
        lock(&self.replies)
    }

    /// Starts holding a message; its number.
    fn hold(&self, reply: Option<&async_nats::Subject>) -> u64 {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        if let Some(reply) = reply {
            self.replies().insert(number, (reply.clone(), Instant::now()));
        }
        number
    }

    fn release(&self, number: u64) {
        self.replies().remove(&number);
    }

    /// The replies of messages held `at_least` since they were last
    /// acknowledged, marked acknowledged now.
    fn due(&self, at_least: Duration) -> Vec<async_nats::Subject> {
        let now = Instant::now();
        let mut replies = self.replies();
        replies
            .values_mut()
            .filter(|(_, since)| now.duration_since(*since) >= at_least)
            .map(|(reply, since)| {
                *since = now;
                reply.clone()
            })
            .collect()
    }
}

/// Acks a JetStream message when dropped: when every copy of its event is finished with.
struct AckOnDrop {
    reply: Option<async_nats::Subject>,
    number: u64,
    held: Arc<Held>,
    acks: mpsc::Sender<async_nats::Subject>,
}

impl Drop for AckOnDrop {
    fn drop(&mut self) {
        self.held.release(self.number);
        let Some(reply) = self.reply.take() else { return };
        // The channel holds as many acks as messages may be unacked, so it has room.
        if let Err(mpsc::error::TrySendError::Full(reply)) = self.acks.try_send(reply) {
            let acks = self.acks.clone();
            tokio::spawn(async move {
                let _ = acks.send(reply).await;
            });
        }
    }
}

/// One partition's pull consumer and what the rebalancer knows of it.
pub(crate) struct Partition {
    pub(crate) consumer: PullConsumer,
    pub(crate) name: String,
    /// The pin id of the messages this process received last on it.
    pub(crate) pin: std::sync::Mutex<Option<String>>,
    /// Set by the rebalancer: stop pulling, unpin, and wait as standby.
    pub(crate) release: Notify,
    pub(crate) owned: AtomicBool,
}

/// The receiving end of one inbound cut edge in this process.
pub struct Inbound<T> {
    fetched: Mutex<mpsc::Receiver<Fetched>>,
    held: Arc<Held>,
    acks: mpsc::Sender<async_nats::Subject>,
    stats: Arc<CutStats>,
    tasks: Vec<JoinHandle<()>>,
    _events: PhantomData<fn() -> T>,
}

impl<T: Wire> Inbound<T> {
    /// Starts pulling every partition of the edge (pinned or on standby) and acking.
    pub(crate) fn start(
        client: async_nats::Client,
        stream: JetStream,
        partitions: Vec<Arc<Partition>>,
        max_demand: usize,
        stats: Arc<CutStats>,
    ) -> Self {
        let (sender, fetched) = mpsc::channel(max_demand.max(1));
        let (acks, mut ack_queue) =
            mpsc::channel::<async_nats::Subject>(max_demand.max(1) * partitions.len());
        let mut tasks = Vec::new();
        let ack_stats = stats.clone();
        let acker = client.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(reply) = ack_queue.recv().await {
                if acker.publish(reply, "+ACK".into()).await.is_ok() {
                    ack_stats.acked.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
        let held = Arc::new(Held::default());
        let progress = held.clone();
        tasks.push(tokio::spawn(async move {
            let mut every = tokio::time::interval(PROGRESS_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                for reply in progress.due(PROGRESS_EVERY) {
                    let _ = client.publish(reply, "+WPI".into()).await;
                }
            }
        }));
        for partition in partitions {
            let (sender, stats, stream, held) = (sender.clone(), stats.clone(), stream.clone(), held.clone());
            tasks.push(tokio::spawn(pull_partition(partition, stream, max_demand, sender, stats, held)));
        }
        Inbound { fetched: Mutex::new(fetched), held, acks, stats, tasks, _events: PhantomData }
    }

    /// The event a message carries, with its ack attached (or handed back if
    /// the event cannot carry it); `None` for a message that cannot be read,
    /// which is acked and dropped: it never will be readable.
    fn open(&self, fetched: Fetched) -> Option<(T, Option<Receipt>)> {
        let Fetched { message, held } = fetched;
        let receipt = Receipt::new(AckOnDrop {
            reply: message.reply.clone(),
            number: held,
            held: self.held.clone(),
            acks: self.acks.clone(),
        });
        match T::decode(&message.payload) {
            Ok(mut event) => {
                let receipt = event.attach(receipt);
                Some((event, receipt))
            }
            Err(error) => {
                self.stats.undecodable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(subject = %message.subject, "dropping an event that cannot be read: {error}");
                None
            }
        }
    }
}

impl<T> Drop for Inbound<T> {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Pulls one partition for as long as the process runs: while pinned it
/// receives, otherwise its pull waits on standby until the server pins it.
async fn pull_partition(
    partition: Arc<Partition>,
    stream: JetStream,
    max_demand: usize,
    sender: mpsc::Sender<Fetched>,
    stats: Arc<CutStats>,
    held: Arc<Held>,
) {
    loop {
        let messages = partition
            .consumer
            .stream()
            .group(GROUP)
            .max_messages_per_batch(max_demand.clamp(1, 256))
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_EXPIRES / 3)
            .messages()
            .await;
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(error) => {
                tracing::debug!(consumer = %partition.name, "pull failed, retrying: {error}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                _ = partition.release.notified() => {
                    drop(messages);
                    partition.owned.store(false, Ordering::Relaxed);
                    if let Err(error) = stream.unpin_consumer(&partition.name, GROUP).await {
                        tracing::debug!(consumer = %partition.name, "unpin failed: {error}");
                    }
                    // Stay on the side until a standby holds the pin (or 10 s passed).
                    let mine = lock(&partition.pin).clone();
                    for _ in 0..20 {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        let pinned = stream.consumer_info(&partition.name).await.ok().and_then(|info| {
                            info.priority_groups.first().and_then(|group| group.pinned_client_id.clone())
                        });
                        if pinned.is_some() && pinned != mine {
                            break;
                        }
                    }
                    break;
                }
                next = messages.next() => next,
            };
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(error)) => {
                    tracing::debug!(consumer = %partition.name, "pull: {error}");
                    continue;
                }
                None => break,
            };
            if let Some(pin) = message.headers.as_ref().and_then(|headers| headers.get("Nats-Pin-Id")) {
                *lock(&partition.pin) = Some(pin.to_string());
            }
            partition.owned.store(true, Ordering::Relaxed);
            stats.received.fetch_add(1, Ordering::Relaxed);
            if message.info().is_ok_and(|info| info.delivered > 1) {
                stats.redelivered.fetch_add(1, Ordering::Relaxed);
            }
            let held = held.hold(message.reply.as_ref());
            if sender.send(Fetched { message, held }).await.is_err() {
                return; // the stage is gone
            }
        }
    }
}

/// The producer stage of an inbound cut edge (the local replica of the
/// producer in the other part), or of a `nats_subscribe` stage.
pub struct NatsSubscribe<T> {
    inbound: Arc<OnceCell<Arc<Inbound<T>>>>,
    /// Where to connect on first use, for a `nats_subscribe` stage.
    setup: Option<Arc<SubscribeSetup>>,
    _events: PhantomData<fn() -> T>,
}

impl<T> NatsSubscribe<T> {
    /// The stage emitting what `inbound` fetches.
    pub fn new(inbound: Arc<Inbound<T>>) -> Self {
        NatsSubscribe {
            inbound: Arc::new(OnceCell::new_with(Some(inbound))),
            setup: None,
            _events: PhantomData,
        }
    }
}

/// Where a `nats_subscribe` stage reads: connected when the stage first runs.
#[derive(Debug)]
pub struct SubscribeSetup {
    nats: String,
    stream: String,
    subject: Option<String>,
    durable: String,
    max_ack_pending: usize,
}

impl SubscribeSetup {
    /// Connects, finds the stream (waiting, said once, until it exists) and its durable consumer, and starts pulling.
    async fn open<T: Wire>(&self) -> Arc<Inbound<T>> {
        let client = super::build::connect(&self.nats).await;
        let js = jetstream::new(client.clone());
        let mut said = false;
        let (stream, consumer) = loop {
            let opened = async {
                let stream = js.get_stream(&self.stream).await.map_err(|error| error.to_string())?;
                let config = pinned_consumer(
                    &self.durable,
                    self.subject.clone().unwrap_or_default(),
                    self.max_ack_pending,
                );
                let consumer: PullConsumer = stream
                    .get_or_create_consumer(&self.durable, config)
                    .await
                    .map_err(|error| error.to_string())?;
                Ok::<_, String>((stream, consumer))
            };
            match opened.await {
                Ok(opened) => break opened,
                Err(error) => {
                    if !said {
                        tracing::error!(stream = %self.stream, "cannot read the JetStream stream at {}: {error}; retrying every 2 s", self.nats);
                        said = true;
                    }
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        };
        let partition = Arc::new(Partition {
            consumer,
            name: self.durable.clone(),
            pin: std::sync::Mutex::new(None),
            release: Notify::new(),
            owned: AtomicBool::new(false),
        });
        Arc::new(Inbound::start(client, stream, vec![partition], self.max_ack_pending, Arc::default()))
    }
}

/// emits the messages of a NATS JetStream stream as text events, from a durable consumer (one reading process at a time; others wait on standby), acking each once emitted
#[kind("nats_subscribe", Nothing -> String)]
pub struct NatsSubscribeKind {
    /// the JetStream stream to read
    stream: String,
    /// only the messages of this subject (default: every subject of the stream)
    subject: Option<String>,
    /// the durable consumer's name: a later run resumes where it left (default: the stage id)
    durable: Option<String>,
    /// NATS server URL, or several of a cluster comma-separated (default "nats://127.0.0.1:4222")
    #[default(super::publish::DEFAULT_NATS.into())]
    nats: String,
    /// messages handed out and not yet acked at most (default 1000)
    #[default(1000)]
    max_ack_pending: usize,
}

impl Kind for NatsSubscribeKind {
    fn check(&self, stage: &StageDecl) -> Result<(), String> {
        let durable = self.durable.as_deref().unwrap_or(&stage.id);
        for (key, name) in [("stream", self.stream.as_str()), ("durable", durable)] {
            if !super::plan::subject_token(name) {
                return Err(format!("`{key}` must be a name of letters, digits, `_` or `-`, got \"{name}\""));
            }
        }
        if self.max_ack_pending == 0 {
            return Err("`max_ack_pending` must be at least 1".into());
        }
        Ok(())
    }

    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let setup = Arc::new(SubscribeSetup {
            durable: self.durable.unwrap_or_else(|| stage.id.clone()),
            nats: self.nats,
            stream: self.stream,
            subject: self.subject,
            max_ack_pending: self.max_ack_pending,
        });
        let inbound = Arc::new(OnceCell::new());
        let config = pipeline.producer(&stage.id, move || NatsSubscribe::<String> {
            inbound: inbound.clone(),
            setup: Some(setup.clone()),
            _events: PhantomData,
        });
        configure(stage, config, &DispatcherChoices::cloneable(), None)
    }
}

impl<T: Wire> Producer for NatsSubscribe<T> {
    type Out = T;

    async fn produce(&mut self, demand: usize, out: &mut Emitter<T>) -> Flow {
        let setup = self.setup.clone();
        let inbound = self
            .inbound
            .get_or_init(|| async move { setup.expect("an inbound edge or where to read").open::<T>().await })
            .await
            .clone();
        let mut fetched = inbound.fetched.lock().await;
        let mut receipts = Vec::new();
        // Waits for at least one event (a message that cannot be read is
        // skipped): a call that emits nothing would wait for new demand.
        while out.is_empty() {
            let Some(first) = fetched.recv().await else { return Flow::Done };
            let mut next = Some(first);
            while let Some(message) = next.take() {
                if let Some((event, receipt)) = inbound.open(message) {
                    out.emit(event);
                    receipts.extend(receipt);
                }
                if out.len() < demand {
                    next = fetched.try_recv().ok();
                }
            }
        }
        // Events that cannot carry a receipt are acked once emitted.
        drop(receipts);
        Flow::Continue
    }
}

/// Keeps this process's share of partitions fair: every few seconds it
/// counts the live processes of the part (a key each in a JetStream
/// key-value bucket whose entries expire) and, when it holds more than its
/// share, releases the surplus so the server pins a standby process. Which
/// process holds a partition is always the server's pin, never ours.
pub(crate) async fn rebalance(
    members: jetstream::kv::Store,
    part: String,
    member: String,
    edges: Vec<(Vec<Arc<Partition>>, JetStream, Arc<CutStats>)>,
) {
    let key = format!("{part}.{member}");
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        if let Err(error) = members.put(&key, "alive".into()).await {
            tracing::debug!("membership heartbeat failed: {error}");
            continue;
        }
        let live = match members.keys().await {
            Ok(keys) => {
                keys.filter_map(|key| async move { key.ok() })
                    .filter(|key| {
                        let mine = key.starts_with(&format!("{part}."));
                        async move { mine }
                    })
                    .count()
                    .await
            }
            Err(_) => continue,
        };
        for (partitions, stream, stats) in &edges {
            let mut owned = Vec::new();
            let mut pending = 0u64;
            for partition in partitions {
                let Ok(info) = stream.consumer_info(&partition.name).await else { continue };
                pending += info.num_pending + info.num_ack_pending as u64;
                let pinned = info.priority_groups.first().and_then(|group| group.pinned_client_id.clone());
                let mine = lock(&partition.pin).clone();
                let holds = pinned.is_some() && pinned == mine;
                partition.owned.store(holds, Ordering::Relaxed);
                if holds {
                    owned.push(partition.clone());
                }
            }
            stats.pending.store(pending, Ordering::Relaxed);
            stats.owned.store(owned.len() as u64, Ordering::Relaxed);
            let share = fair_share(partitions.len(), live);
            for surplus in owned.iter().skip(share) {
                tracing::info!(consumer = %surplus.name, live, share, "releasing a partition to another process of the part");
                surplus.release.notify_one();
            }
        }
    }
}

/// A durable pull consumer whose messages the server hands to one pinned
/// client of [`GROUP`] at a time, at most `max_ack_pending` unacked.
pub(crate) fn pinned_consumer(
    durable: &str,
    filter_subject: String,
    max_ack_pending: usize,
) -> jetstream::consumer::pull::Config {
    jetstream::consumer::pull::Config {
        durable_name: Some(durable.to_string()),
        filter_subject,
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: super::build::ACK_WAIT,
        max_ack_pending: max_ack_pending as i64,
        priority_policy: jetstream::consumer::PriorityPolicy::PinnedClient,
        priority_groups: vec![GROUP.to_string()],
        priority_timeout: PIN_TIMEOUT,
        ..Default::default()
    }
}

/// Partitions one of `live` processes may hold: the ceiling of an even split.
pub fn fair_share(partitions: usize, live: usize) -> usize {
    partitions.div_ceil(live.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_messages_are_due_for_progress_until_released_and_at_most_once_per_period() {
        let held = Held::default();
        let first = held.hold(Some(&"reply.1".into()));
        let second = held.hold(Some(&"reply.2".into()));
        held.hold(None);
        assert_ne!(first, second);
        let texts = |due: Vec<async_nats::Subject>| -> Vec<String> {
            let mut due: Vec<String> = due.iter().map(|reply| reply.to_string()).collect();
            due.sort();
            due
        };
        let due = texts(held.due(Duration::ZERO));
        assert_eq!(due, ["reply.1", "reply.2"], "a message without a reply has nothing to tell");
        assert!(held.due(Duration::from_secs(60)).is_empty(), "just told: not due again yet");
        held.release(first);
        assert_eq!(texts(held.due(Duration::ZERO)), ["reply.2"]);
    }

    #[test]
    fn shares_round_up_so_every_partition_has_room() {
        assert_eq!(fair_share(8, 1), 8);
        assert_eq!(fair_share(8, 2), 4);
        assert_eq!(fair_share(8, 3), 3);
        assert_eq!(fair_share(8, 0), 8, "before the first heartbeat counts itself");
        assert_eq!(fair_share(2, 5), 1);
    }
}
