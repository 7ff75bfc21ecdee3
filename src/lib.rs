//! # stageflow — demand-driven stages, in the style of Elixir's GenStage
//!
//! A pipeline is a graph of **stages**. A [`Producer`] creates events, a
//! [`ProducerConsumer`] takes events and emits others, a [`Consumer`] takes
//! events at the end. Each stage runs as one tokio task that owns its state.
//!
//! ## Demand
//!
//! No event moves without a credit. A consumer subscribing to a producer
//! grants it `max_demand` credits ("I can take 1000 more"); the producer
//! never sends more events than the credits it holds. The consumer handles
//! events in chunks of `max_demand - min_demand` and, each time its
//! outstanding credits fall to `min_demand`, tops them back up. With the
//! defaults (1000 / 500):
//!
//! 1. the consumer asks for 1000;
//! 2. the producer emits up to 1000 events, in batches bounded by the credits;
//! 3. after handling 500 of them the consumer has 500 outstanding, which is
//!    `min_demand`, so it asks for 500 more, and the producer fills them
//!    while the consumer works on the rest.
//!
//! A producer-consumer asks upstream only as much as its own subscribers
//! asked it for and is not already covered, so a stalled consumer at the
//! end stops the whole chain back to the source, and memory stays bounded
//! by configuration, not input volume. [`DemandMode::Manual`] leaves
//! asking to the stage itself ([`DemandHandle::ask`]), e.g. to rate-limit.
//!
//! ## Buffering
//!
//! Events a producer emits beyond the credits it holds wait in its buffer
//! (`buffer_size`, default 10 000), which drops the oldest or the newest
//! when full ([`BufferKeep`]) and counts every drop. Demand that arrives
//! while a producer has nothing is kept: its `produce` call may simply wait
//! for input, and whatever it emits later is delivered against that demand.
//!
//! ## Dispatchers
//!
//! A producer's [`Dispatcher`] places its events: [`DemandDispatcher`]
//! (each event to one subscriber, the one holding most credits),
//! [`BroadcastDispatcher`] (every subscriber gets every event, paced by the
//! slowest, with an optional per-subscriber selector) and
//! [`PartitionDispatcher`] (each event to the subscriber of its partition).
//!
//! ## Failure
//!
//! A callback that panics loses only the event it was handling (counted in
//! the stage's `lost` metric); the stage is rebuilt from its factory and
//! goes on with the next event. Past [`RestartPolicy`]'s limit (default 3
//! restarts in 5 s) the failure escalates: the stage fails, its permanent
//! consumers fail with it, and [`PipelineHandle::wait`] returns the error.
//!
//! ## An example
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use stageflow::{Pipeline, SubscribeOptions, ops::{ForEach, FromIter, Map}};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let total = Arc::new(AtomicU64::new(0));
//! let sum = total.clone();
//! let mut pipeline = Pipeline::new();
//! pipeline.producer("numbers", || FromIter::new(1..=100u64));
//! pipeline
//!     .producer_consumer("double", || Map::new(|x: u64| x * 2))
//!     .subscribe_to("numbers", SubscribeOptions::default());
//! pipeline
//!     .consumer("sum", move || {
//!         let sum = sum.clone();
//!         ForEach::new(move |x: u64| {
//!             sum.fetch_add(x, Ordering::Relaxed);
//!         })
//!     })
//!     .subscribe_to("double", SubscribeOptions::default());
//! let mut running = pipeline.start().expect("a valid graph");
//! running.wait().await.expect("ends when the numbers run out");
//! assert_eq!(total.load(Ordering::Relaxed), 2 * 5050);
//! # }
//! ```
//!
//! ## Writing a stage
//!
//! Implement one of the traits. Callbacks take events from an [`Events`]
//! cursor one at a time and put results into an [`Emitter`]; both belong to
//! the engine, which is how it knows which event a panic interrupted and
//! keeps what was emitted before it. Timers use `tick_interval` and
//! `handle_tick`; `flush` runs once when every producer has ended. Rules:
//! - take every event you are given (untaken ones are dropped and counted);
//! - a producer emits at most `demand` events unless it is a push source
//!   (`const PUSH: bool = true`), whose excess goes to the bounded buffer;
//! - never block the thread: await instead.

mod buffer;
pub mod config;
mod demand;
pub mod dispatcher;
mod error;
mod graph;
mod link;
mod metrics;
pub mod ops;
mod pipeline;
mod pool;
mod run;
mod stage;
mod subscription;
mod supervisor;
pub mod window;

pub use buffer::{Buffer, BufferKeep};
pub use demand::{DemandBounds, DemandBoundsError, DemandLedger, DemandMode};
pub use dispatcher::{BroadcastDispatcher, DemandDispatcher, Dispatcher, PartitionDispatcher};
pub use error::{PipelineError, StageError};
pub use graph::closest;
pub use link::{CancelMode, DemandHandle, EndReason, SubscribeOptions};
pub use metrics::{Percentiles, StageKind, StageMetrics, StageSnapshot};
pub use pipeline::{
    DEFAULT_BUFFER_SIZE, DEFAULT_DRAIN_TIMEOUT, MetricsReader, Pipeline, PipelineHandle, PipelineSummary,
    ShutdownTrigger, StageConfig,
};
pub use pool::{Autoscale, PoolConfig, Routing, autoscale_target};
pub use stage::{Consumer, Emitter, Events, Flow, Nothing, Producer, ProducerConsumer};
pub use subscription::Subscription;
pub use supervisor::{Escalation, RestartPolicy, RestartTracker};
