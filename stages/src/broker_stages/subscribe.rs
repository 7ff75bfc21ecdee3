//! The subscribing source: a producer emitting a topic's events against
//! demand and acking them as the pipeline asks for more.
//!
//! Acks follow demand: the events one `produce` call emitted are acked at
//! the start of the next call, which the engine makes only once the stages
//! downstream asked for more. The broker delivers at most `window` events
//! awaiting an ack, so a stalled pipeline stops acking and the broker keeps
//! the rest of the topic's events for this subscriber (in memory up to its
//! queue bound, then in its log). The events the pipeline holds unprocessed
//! are bounded by its demand: with `max_demand = 1` on the consumer, an
//! event is acked once the consumer has handled it and asked for the next.
//!
//! Delivery is at least once. After a lost connection the stage reconnects
//! with backoff; a named (durable) subscriber then acks again what the
//! pipeline had taken but the broker had not confirmed, and drops the
//! redelivered copies of those events, so in the usual case nothing is
//! emitted twice. An anonymous subscriber gets only what is published while
//! it is connected.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use stageflow::{Emitter, Flow, Producer};

use super::client::{ClientError, Connection, Incoming};
use crate::backoff::backoff;
use stageflow::config::{BuildContext, DispatcherChoices, Kind, StageDecl, configure, kind};
use stageflow::{Nothing, Pipeline};

use super::client::ConnectSettings;
use crate::broker::DEFAULT_WINDOW;
use crate::broker::protocol::{MAX_WINDOW, check_name};

/// What `broker_subscribe` emits for each event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emit {
    /// The event's `msg`: a JSON string as its text, anything else as JSON text.
    Msg,
    /// The whole event as JSON text: `{"id", "priority", "msg", "ts"}`.
    Event,
}

impl Emit {
    /// The mode named `name` (`msg`, `event`).
    pub fn named(name: &str) -> Result<Emit, String> {
        match name {
            "msg" => Ok(Emit::Msg),
            "event" => Ok(Emit::Event),
            other => Err(format!("`emit` must be \"msg\" or \"event\", got \"{other}\"")),
        }
    }
}

/// Where and how the source subscribes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// `HOST:PORT` of the broker.
    pub addr: String,
    /// The shared secret, if the broker wants one.
    pub token: Option<String>,
    /// The topic.
    pub topic: String,
    /// A durable subscriber name: the subscription and its pending events outlive the connection.
    pub name: Option<String>,
    /// Deliveries awaiting an ack, at most.
    pub window: usize,
    /// What is emitted for each event.
    pub emit: Emit,
    /// First wait before reconnecting; doubles each time.
    pub retry_initial: Duration,
    /// Longest wait between reconnects.
    pub retry_max: Duration,
}

/// What a subscribing stage did, shared across its restarts.
#[derive(Debug, Default)]
pub struct SubscribeStats {
    /// Events emitted into the pipeline.
    pub emitted: AtomicU64,
    /// Acks the broker confirmed.
    pub acked: AtomicU64,
    /// Acks the broker refused.
    pub ack_errors: AtomicU64,
    /// Connections made (the first one included).
    pub connections: AtomicU64,
    /// Redelivered events dropped because the pipeline had taken them already.
    pub duplicates_dropped: AtomicU64,
}

impl SubscribeStats {
    /// Events emitted so far.
    pub fn emitted(&self) -> u64 {
        self.emitted.load(Ordering::Relaxed)
    }

    /// Acks confirmed so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Connections made so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

/// An event received and not yet emitted.
struct Received {
    /// The connection it came on.
    generation: u64,
    id: String,
    text: String,
}

/// A producer emitting the events of one topic, acking them as demand returns.
pub struct SubscribeStage {
    stage: String,
    options: SubscribeOptions,
    connection: Option<Connection>,
    /// Counts connections, so events and acks know which one they belong to.
    generation: u64,
    /// Received on the current connection (or, anonymous, an earlier one), not yet emitted.
    queue: VecDeque<Received>,
    /// Emitted by the last `produce` call: acked at the start of the next.
    emitted: Vec<(u64, String)>,
    /// Due to be acked, not sent yet.
    to_ack: Vec<(u64, String)>,
    /// Acks sent, in order, awaiting their replies: (connection, event id).
    pending: VecDeque<(u64, String)>,
    /// Events the pipeline took before a reconnect: their redeliveries are dropped.
    taken: HashSet<String>,
    /// Reconnect attempts since the last good connection.
    attempt: u32,
    stats: Arc<SubscribeStats>,
}

impl SubscribeStage {
    /// A stage `stage` subscribing as `options` say.
    pub fn new(stage: &str, options: SubscribeOptions, stats: Arc<SubscribeStats>) -> Self {
        SubscribeStage {
            stage: stage.to_string(),
            options,
            connection: None,
            generation: 0,
            queue: VecDeque::new(),
            emitted: Vec::new(),
            to_ack: Vec::new(),
            pending: VecDeque::new(),
            taken: HashSet::new(),
            attempt: 0,
            stats,
        }
    }

    /// What the stage did so far.
    pub fn stats(&self) -> Arc<SubscribeStats> {
        self.stats.clone()
    }

    /// Connects, takes the name, sets the window and subscribes (unless the name resumed it).
    async fn connect(&mut self) -> Result<(), ClientError> {
        let options = self.options.clone();
        let generation = self.generation + 1;
        let mut early = Vec::new();
        let mut keep = |topic: String, json: String| early.push((topic, json));
        // Replies and deliveries read ahead: the window, the acks of one
        // call (at most a window of them) and a few more commands.
        let queue = 2 * options.window + 16;
        let mut connection =
            Connection::open(&options.addr, options.token.as_deref(), 1, queue, &mut keep).await?;
        let addr = connection.addr().to_string();
        let mut resumed = false;
        if let Some(name) = &options.name {
            match connection.request(&format!("name {name}"), &mut keep).await? {
                Ok(details) => {
                    resumed = details
                        .strip_prefix("resumed ")
                        .is_some_and(|topics| topics.split_whitespace().any(|topic| topic == options.topic));
                }
                Err(why) if why.contains("in use") => {
                    // The broker may not have noticed our previous connection closed yet.
                    return Err(ClientError::transient(format!("the broker at {addr}: {why}")));
                }
                Err(why) => {
                    return Err(ClientError::permanent(format!(
                        "the broker at {addr} refused `name`: {why}"
                    )));
                }
            }
        }
        match connection.request(&format!("window {}", options.window), &mut keep).await? {
            Ok(_) => {}
            Err(why) => {
                return Err(ClientError::permanent(format!("the broker at {addr} refused `window`: {why}")));
            }
        }
        if !resumed {
            match connection.request(&format!("sub {}", options.topic), &mut keep).await? {
                Ok(_) => {}
                Err(why) if why.starts_with("already subscribed") => {}
                Err(why) if why.starts_with("no topic") => {
                    return Err(ClientError::transient(format!(
                        "the broker at {addr} has no topic '{}' yet (it is created by its first pub)",
                        options.topic
                    )));
                }
                Err(why) => {
                    return Err(ClientError::permanent(format!("the broker at {addr} refused `sub`: {why}")));
                }
            }
        }
        self.generation = generation;
        self.connection = Some(connection);
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        for (topic, json) in early {
            self.received(topic, json);
        }
        Ok(())
    }

    /// A delivery: queued unless it is another topic's or a copy of one the pipeline took.
    fn received(&mut self, topic: String, json: String) {
        if topic != self.options.topic {
            tracing::debug!(stage = %self.stage, %topic, "ignored a delivery of another topic");
            return;
        }
        let event: Value = match serde_json::from_str(&json) {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(stage = %self.stage, "ignored a delivery that is not JSON: {error}");
                return;
            }
        };
        let Some(id) = event.get("id").and_then(Value::as_str).map(str::to_string) else {
            tracing::warn!(stage = %self.stage, "ignored a delivery without an id");
            return;
        };
        if self.taken.remove(&id) {
            self.stats.duplicates_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let text = match self.options.emit {
            Emit::Event => json,
            Emit::Msg => match event.get("msg") {
                Some(Value::String(text)) => text.clone(),
                Some(other) => other.to_string(),
                None => "null".to_string(),
            },
        };
        self.queue.push_back(Received { generation: self.generation, id, text });
    }

    /// A reply, matched to the oldest ack awaiting one.
    fn replied(&mut self, reply: Result<String, String>) {
        match (self.pending.pop_front(), reply) {
            (Some(_), Ok(_)) => {
                self.stats.acked.fetch_add(1, Ordering::Relaxed);
            }
            (Some((generation, id)), Err(why)) => {
                // An ack repeated after a reconnect is refused if the first
                // one had landed; then no copy of the event is coming either.
                let repeated = generation < self.generation && self.taken.remove(&id);
                if !repeated {
                    self.stats.ack_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(stage = %self.stage, %id, "the broker refused an ack: {why}");
                }
            }
            (None, Err(why)) => tracing::warn!(stage = %self.stage, "the broker: {why}"),
            (None, Ok(_)) => {}
        }
    }

    /// The connection is gone: decide what to ack again and what comes back.
    fn lost(&mut self, error: &ClientError) {
        self.connection = None;
        let unanswered = std::mem::take(&mut self.pending);
        if self.options.name.is_some() {
            // The durable subscription delivers again what was not acked:
            // ack again what the pipeline took, and drop those copies.
            self.to_ack.extend(unanswered);
            self.queue.clear();
            self.taken = self.to_ack.iter().map(|(_, id)| id.clone()).collect();
        } else {
            self.to_ack.clear();
        }
        tracing::warn!(stage = %self.stage, "{error}; reconnecting");
    }

    /// Sends the acks that are due, without waiting for their replies.
    async fn send_acks(&mut self) -> Result<(), ClientError> {
        let Some(connection) = self.connection.as_mut() else { return Ok(()) };
        let anonymous = self.options.name.is_none();
        let mut acks = std::mem::take(&mut self.to_ack).into_iter();
        while let Some((generation, id)) = acks.next() {
            if anonymous && generation != self.generation {
                // Its subscription ended with its connection: nothing to ack.
                continue;
            }
            if let Err(error) = connection.send(&format!("ack {} {id}", self.options.topic)).await {
                self.to_ack.push((generation, id));
                self.to_ack.extend(acks);
                return Err(error);
            }
            self.pending.push_back((generation, id));
        }
        connection.flush().await
    }
}

impl Producer for SubscribeStage {
    type Out = String;

    async fn produce(&mut self, demand: usize, out: &mut Emitter<String>) -> Flow {
        // The pipeline asks for more: what the last call emitted is processed as far as acks go.
        self.to_ack.append(&mut self.emitted);
        loop {
            if self.connection.is_none() {
                match self.connect().await {
                    Ok(()) => {}
                    Err(error) if error.transient => {
                        self.attempt += 1;
                        let wait = backoff(self.attempt, self.options.retry_initial, self.options.retry_max);
                        tracing::warn!(stage = %self.stage, attempt = self.attempt, wait = ?wait, "{error}; retrying");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    // A wrong token or name: the engine restarts the stage and,
                    // past its restart limit, fails the pipeline with this message.
                    Err(error) => panic!("stage '{}': {error}", self.stage),
                }
            }
            if !self.to_ack.is_empty()
                && let Err(error) = self.send_acks().await
            {
                self.lost(&error);
                continue;
            }
            if !self.queue.is_empty() {
                let count = demand.min(self.queue.len());
                for received in self.queue.drain(..count) {
                    self.emitted.push((received.generation, received.id));
                    out.emit(received.text);
                }
                self.stats.emitted.fetch_add(count as u64, Ordering::Relaxed);
                return Flow::Continue;
            }
            let connection = self.connection.as_mut().expect("connected above");
            let incoming = connection.recv().await;
            if incoming.is_ok() {
                // The connection works: the next failure starts the backoff afresh.
                self.attempt = 0;
            }
            match incoming {
                Ok(Incoming::Event { topic, json }) => self.received(topic, json),
                Ok(Incoming::Ok(details)) => self.replied(Ok(details)),
                Ok(Incoming::Error(why)) => self.replied(Err(why)),
                Err(error) => self.lost(&error),
            }
        }
    }
}

/// emits a broker topic's events as text against demand; acks them when the pipeline asks for more
#[kind("broker_subscribe", Nothing -> String)]
pub struct BrokerSubscribeKind {
    #[serde(flatten)]
    connect: ConnectSettings,
    /// the topic to subscribe to (waits until it exists)
    topic: String,
    /// durable subscriber name: unacked events wait at the broker across reconnects and restarts (default: anonymous)
    name: Option<String>,
    /// deliveries awaiting an ack at once, 1-10000 (default 10)
    #[default(DEFAULT_WINDOW)]
    window: usize,
    /// "msg" (default): the event's msg (a string as is, other JSON as text); "event": the whole event as JSON
    #[default("msg")]
    emit: String,
}

impl BrokerSubscribeKind {
    fn options(&self) -> Result<SubscribeOptions, String> {
        self.connect.check()?;
        check_name("topic", &self.topic).map_err(|why| format!("`topic`: {why}"))?;
        if let Some(name) = &self.name {
            check_name("subscriber name", name).map_err(|why| format!("`name`: {why}"))?;
        }
        if !(1..=MAX_WINDOW).contains(&self.window) {
            return Err(format!("`window` must be from 1 to {MAX_WINDOW}, got {}", self.window));
        }
        let (retry_initial, retry_max) = self.connect.retry();
        Ok(SubscribeOptions {
            addr: self.connect.addr.clone(),
            token: self.connect.token.clone(),
            topic: self.topic.clone(),
            name: self.name.clone(),
            window: self.window,
            emit: Emit::named(&self.emit)?,
            retry_initial,
            retry_max,
        })
    }
}

impl Kind for BrokerSubscribeKind {
    fn check(&self, _: &StageDecl) -> Result<(), String> {
        self.options().map(|_| ())
    }

    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let options = self.options()?;
        let id = stage.id.clone();
        let stats = Arc::new(SubscribeStats::default());
        let config =
            pipeline.producer(&stage.id, move || SubscribeStage::new(&id, options.clone(), stats.clone()));
        configure(stage, config, &DispatcherChoices::cloneable(), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(emit: Emit, name: Option<&str>) -> SubscribeStage {
        let options = SubscribeOptions {
            addr: "127.0.0.1:1".into(),
            token: None,
            topic: "news".into(),
            name: name.map(str::to_string),
            window: 10,
            emit,
            retry_initial: Duration::from_millis(1),
            retry_max: Duration::from_millis(1),
        };
        SubscribeStage::new("s", options, Arc::default())
    }

    #[test]
    fn msg_mode_emits_strings_as_text_and_other_values_as_json() {
        let mut source = stage(Emit::Msg, None);
        source.received("news".into(), r#"{"id":"a","priority":1,"msg":"hello","ts":1}"#.into());
        source.received("news".into(), r#"{"id":"b","priority":1,"msg":{"n":2},"ts":1}"#.into());
        source.received("other".into(), r#"{"id":"c","priority":1,"msg":3,"ts":1}"#.into());
        source.received("news".into(), r#"{"priority":1,"msg":3,"ts":1}"#.into());
        source.received("news".into(), "not json".into());
        let texts: Vec<&str> = source.queue.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(texts, ["hello", r#"{"n":2}"#]);
    }

    #[test]
    fn event_mode_emits_the_whole_event() {
        let mut source = stage(Emit::Event, None);
        let json = r#"{"id":"a","priority":1,"msg":"hello","ts":1}"#;
        source.received("news".into(), json.into());
        assert_eq!(source.queue[0].text, json);
        assert_eq!(source.queue[0].id, "a");
    }

    #[test]
    fn a_named_subscriber_acks_again_after_a_reconnect_and_drops_the_copies() {
        let mut source = stage(Emit::Msg, Some("reader"));
        source.generation = 1;
        source.pending.push_back((1, "a".into()));
        source.to_ack.push((1, "b".into()));
        source.received("news".into(), r#"{"id":"c","priority":1,"msg":1,"ts":1}"#.into());
        source.lost(&ClientError::transient("gone"));
        assert!(source.queue.is_empty(), "unemitted events come again");
        let ids: Vec<&str> = source.to_ack.iter().map(|(_, id)| id.as_str()).collect();
        assert_eq!(ids, ["b", "a"]);
        source.generation = 2;
        for id in ["a", "b", "c"] {
            source.received("news".into(), format!(r#"{{"id":"{id}","priority":1,"msg":1,"ts":1}}"#));
        }
        let queued: Vec<&str> = source.queue.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(queued, ["c"], "copies of what the pipeline took are dropped");
        assert_eq!(source.stats.duplicates_dropped.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn an_anonymous_subscriber_forgets_the_acks_of_a_lost_subscription() {
        let mut source = stage(Emit::Msg, None);
        source.generation = 1;
        source.pending.push_back((1, "a".into()));
        source.to_ack.push((1, "b".into()));
        source.received("news".into(), r#"{"id":"c","priority":1,"msg":1,"ts":1}"#.into());
        source.lost(&ClientError::transient("gone"));
        assert!(source.to_ack.is_empty());
        assert_eq!(source.queue.len(), 1, "what was received is still emitted");
    }

    #[test]
    fn emit_modes_are_named() {
        assert_eq!(Emit::named("event"), Ok(Emit::Event));
        assert!(Emit::named("all").unwrap_err().contains("\"msg\" or \"event\""));
    }
}
