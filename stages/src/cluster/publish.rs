//! The producing side of a cut edge: publishes each event to its partition's
//! subject, holding at most `max_in_flight` unacknowledged publishes as its
//! credits, so a slow or unreachable server holds the pipeline back.

use std::collections::VecDeque;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishError, publish::PublishAck};

use bytes::Bytes;
use futures::FutureExt;
use stageflow::config::{BuildContext, DispatcherChoices, Kind, StageDecl, configure, kind};
use stageflow::{Consumer, Events, Nothing, Pipeline};
use tokio::sync::OnceCell;

use super::CutStats;
use super::build::{StreamSpec, connect, ensure_stream_named};
use super::wire::{Wire, partition_of};
use crate::backoff::backoff;

type AckFuture = Pin<Box<dyn Future<Output = Result<PublishAck, PublishError>> + Send>>;

/// Where one producer's events go: the subjects of one cut edge, or the one
/// subject of a `nats_publish` stage.
pub struct Outbound {
    /// Connected before the run for a cut edge; on first use for a `nats_publish` stage.
    pub(crate) jetstream: OnceCell<jetstream::Context>,
    /// Where to connect on first use (the URL and a stream to create), when not connected yet.
    pub(crate) connect: Option<(String, Option<StreamSpec>)>,
    /// `<stream>.<producer>.<part>` (the partition's `.p<k>` is appended), or the exact subject.
    pub(crate) subject_prefix: String,
    /// Partitions of a cut edge; 0 publishes to `subject_prefix` itself.
    pub(crate) partitions: usize,
    pub(crate) partition_by: Option<String>,
    pub(crate) max_in_flight: usize,
    /// Makes message ids unique to this run, so the server's deduplication
    /// drops only our own retried copies.
    pub(crate) run_id: String,
    pub(crate) stats: Arc<CutStats>,
}

impl Outbound {
    /// The JetStream context, connecting (and creating the stream) on first use.
    async fn context(&self) -> &jetstream::Context {
        self.jetstream
            .get_or_init(|| async {
                let (url, stream) = self.connect.clone().expect("a context or where to connect");
                let js = jetstream::new(connect(&url).await);
                if let Some(stream) = stream {
                    ensure_stream_named(&js, &stream, &url).await;
                }
                js
            })
            .await
    }
}

struct InFlight {
    subject: String,
    payload: Bytes,
    msg_id: String,
    ack: Ack,
}

/// Where one publish stands.
enum Ack {
    /// Not handed to the server yet.
    Unsent,
    /// Sent; its ack is awaited.
    Waiting(AckFuture),
    /// The ack failed: publish again.
    Failed(String),
}

/// The consumer stage publishing one cut edge.
pub struct NatsPublish<T> {
    outbound: Arc<Outbound>,
    in_flight: VecDeque<InFlight>,
    _events: PhantomData<fn(T)>,
}

impl<T> NatsPublish<T> {
    /// A publisher for `outbound`'s subjects.
    pub fn new(outbound: Arc<Outbound>) -> Self {
        NatsPublish { outbound, in_flight: VecDeque::new(), _events: PhantomData }
    }

    /// Publishes `entry` until the server has taken the request (not yet its ack).
    async fn send(outbound: &Outbound, entry: &mut InFlight) {
        let mut attempt = 0;
        loop {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", entry.msg_id.as_str());
            let sent = outbound
                .context()
                .await
                .publish_with_headers(entry.subject.clone(), headers, entry.payload.clone())
                .await;
            match sent {
                Ok(ack) => {
                    entry.ack = Ack::Waiting(ack.into_future());
                    return;
                }
                Err(error) => {
                    attempt += 1;
                    retrying(outbound, attempt, &error.to_string());
                    tokio::time::sleep(backoff(attempt, Duration::from_millis(100), Duration::from_secs(2)))
                        .await;
                }
            }
        }
    }

    /// Waits for the oldest publish's ack. On failure (timeout, server gone)
    /// publishes it and everything after it again, in order, until it is
    /// acked: the server drops the copies it already has by their message id,
    /// and a partition's events stay in order.
    async fn settle_oldest(&mut self) {
        let mut attempt = 0;
        loop {
            let Some(oldest) = self.in_flight.front_mut() else { return };
            let outcome = match &mut oldest.ack {
                Ack::Waiting(ack) => ack.await.map(|_| ()).map_err(|error| error.to_string()),
                Ack::Failed(error) => Err(error.clone()),
                Ack::Unsent => Err("not sent".into()),
            };
            match outcome {
                Ok(()) => {
                    self.in_flight.pop_front();
                    self.outbound.stats.acked.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(error) => {
                    attempt += 1;
                    let outbound = self.outbound.clone();
                    retrying(&outbound, attempt, &error);
                    tokio::time::sleep(backoff(attempt, Duration::from_millis(100), Duration::from_secs(2)))
                        .await;
                    for entry in self.in_flight.iter_mut() {
                        Self::send(&outbound, entry).await;
                    }
                }
            }
        }
    }

    /// Settles the acks that have already arrived, without waiting.
    fn settle_ready(&mut self) {
        while let Some(oldest) = self.in_flight.front_mut() {
            let Ack::Waiting(ack) = &mut oldest.ack else { return };
            match ack.now_or_never() {
                Some(Ok(_)) => {
                    self.in_flight.pop_front();
                    self.outbound.stats.acked.fetch_add(1, Ordering::Relaxed);
                }
                Some(Err(error)) => {
                    oldest.ack = Ack::Failed(error.to_string());
                    return;
                }
                None => return,
            }
        }
    }
}

/// Counts a retry; the first of a run of failures is logged.
fn retrying(outbound: &Outbound, attempt: u32, error: &str) {
    if attempt == 1 {
        tracing::warn!(subject = %outbound.subject_prefix, "publish failed, retrying (holding the stream): {error}");
    }
    outbound.stats.retries.fetch_add(1, Ordering::Relaxed);
}

impl<T: Wire> Consumer for NatsPublish<T> {
    type In = T;

    async fn handle_events(&mut self, events: &mut Events<T>) {
        for event in events.take_batch() {
            let payload = event.encode();
            let key =
                self.outbound.partition_by.as_deref().map(|by| event.partition_key(by)).unwrap_or_default();
            let number = self.outbound.stats.published.fetch_add(1, Ordering::Relaxed);
            let subject = match self.outbound.partitions {
                0 => self.outbound.subject_prefix.clone(),
                partitions => {
                    format!("{}.p{}", self.outbound.subject_prefix, partition_of(&key, &payload, partitions))
                }
            };
            let mut entry = InFlight {
                subject,
                payload: Bytes::from(payload),
                msg_id: format!("{}-{number}", self.outbound.run_id),
                ack: Ack::Unsent,
            };
            Self::send(&self.outbound, &mut entry).await;
            self.in_flight.push_back(entry);
            while self.in_flight.len() >= self.outbound.max_in_flight {
                self.settle_oldest().await;
            }
        }
        self.settle_ready();
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(250))
    }

    async fn handle_tick(&mut self) {
        self.settle_ready();
    }

    async fn flush(&mut self) {
        while !self.in_flight.is_empty() {
            self.settle_oldest().await;
        }
    }
}

/// publishes each text event to a NATS JetStream subject, holding at most `max_in_flight` unacknowledged publishes (a slow or unreachable server holds the pipeline back); read it with `nats_subscribe` or any NATS client
#[kind("nats_publish", String -> Nothing)]
pub struct NatsPublishKind {
    /// the subject every event is published to, e.g. "orders.new"
    subject: String,
    /// NATS server URL, or several of a cluster comma-separated (default "nats://127.0.0.1:4222")
    #[default(DEFAULT_NATS.into())]
    nats: String,
    /// a JetStream stream to create for the subject if none captures it yet (default: an existing stream must)
    stream: Option<String>,
    /// unacknowledged publishes held at most (default 1000)
    #[default(1000)]
    max_in_flight: usize,
}

/// Where NATS listens unless a stage says otherwise.
pub const DEFAULT_NATS: &str = "nats://127.0.0.1:4222";

impl Kind for NatsPublishKind {
    fn check(&self, _: &StageDecl) -> Result<(), String> {
        check_subject(&self.subject)?;
        if self.max_in_flight == 0 {
            return Err("`max_in_flight` must be at least 1".into());
        }
        match &self.stream {
            Some(stream) if !super::plan::subject_token(stream) => {
                Err(format!("`stream` must be a name of letters, digits, `_` or `-`, got \"{stream}\""))
            }
            _ => Ok(()),
        }
    }

    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let stream =
            self.stream.map(|name| StreamSpec { name, subjects: vec![self.subject.clone()], replicas: 1 });
        let outbound = Arc::new(Outbound {
            jetstream: OnceCell::new(),
            connect: Some((self.nats, stream)),
            subject_prefix: self.subject,
            partitions: 0,
            partition_by: None,
            max_in_flight: self.max_in_flight,
            run_id: format!("{:016x}", rand::random::<u64>()),
            stats: Arc::default(),
        });
        let config = pipeline.consumer(&stage.id, move || NatsPublish::<String>::new(outbound.clone()));
        configure(stage, config, &DispatcherChoices::demand_only(), None)
    }
}

/// A subject to publish to: dot-separated tokens, no wildcards or spaces.
pub fn check_subject(subject: &str) -> Result<(), String> {
    let valid = !subject.is_empty()
        && subject.split('.').all(|token| {
            !token.is_empty() && token != "*" && token != ">" && !token.chars().any(|c| c.is_whitespace())
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`subject` must be tokens separated by dots, without wildcards or spaces, got \"{subject}\""
        ))
    }
}
