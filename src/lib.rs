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
//! A fast stage (callbacks under 20 µs) asks once its inbox is empty rather
//! than after each chunk: the credits freed by the batches already waiting
//! are asked for together, which halves the wake-ups of a busy chain without
//! changing the bound. Since it asks nothing between chunks, it also takes
//! each batch whole in one callback, so the batch's events move into the
//! callback without being copied into a chunk. A slow one works in chunks
//! and asks after each, as above.
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
//! ## Quiet producers
//!
//! A producer with nothing to give may also return [`Flow::Continue`]
//! having emitted nothing. It is then *quiet*: `produce` is not called again
//! until new credits arrive (as GenStage calls `handle_demand` only for new
//! demand) or the producer's [`Wakeup`] is woken, so a quiet producer costs
//! no CPU at all. A source fed from outside keeps the [`Wakeup`] it is handed
//! in [`Producer::handle_wakeup`] and calls [`Wakeup::wake`] when it has
//! events; the engine then calls `produce` with the credits it holds.
//! A source that always has events never needs either; the engine makes it
//! yield to the runtime now and then, so even on a current-thread runtime
//! timers and shutdown get their turn.
//!
//! ## Demand bounds
//!
//! [`DemandBounds`] are checked when made: `max_demand >= 1` and
//! `min_demand < max_demand`, else [`DemandBoundsError`]. Numbers given to
//! [`SubscribeOptions::with_demand`] are checked where the subscription is
//! made — by [`Pipeline::validate`] and `start` for a stage, by
//! [`PipelineHandle::subscribe`] from outside — in the same words as the TOML
//! check: `stage 'sum': subscription to 'numbers': min_demand (10) must be
//! below max_demand (10)`.
//!
//! ## Dispatchers
//!
//! A producer's [`Dispatcher`] places its events: [`DemandDispatcher`]
//! (each event to one subscriber, the one holding most credits),
//! [`BroadcastDispatcher`] (every subscriber gets every event, paced by the
//! slowest, with an optional per-subscriber selector) and
//! [`PartitionDispatcher`] (each event to the subscriber of its partition).
//!
//! ## Lifecycle
//!
//! A run ends when its data ends. Stages end from the sources downstream:
//!
//! 1. A producer ends when `produce` returns [`Flow::Done`] (a CSV file read
//!    to its end, a stream closed, `--limit` reached) or at shutdown.
//! 2. A consumer or producer-consumer ends once every producer it subscribes
//!    to has ended ([`CancelMode::Permanent`], the default): it takes what is
//!    in flight, `flush`es what it holds back (a window's last partial
//!    window, a batcher's last batch), delivers that, and ends.
//! 3. A producer that *follows the data* ([`Producer::FOLLOWS_SOURCES`]:
//!    statistics, periodic reports, anything timer-only with no upstream)
//!    would otherwise run forever. It ends once every stage that is neither
//!    a follower nor fed by one has ended — so after the sinks have stored
//!    the tail: its `produce` call in progress is cancelled, its
//!    [`Producer::flush`] emits a final frame covering that tail, the frame
//!    is delivered, and the stages it feeds end after it as in 2. A pipeline
//!    made of followers only has no data to follow: they run until shutdown.
//! 4. When every stage has ended, [`PipelineHandle::wait`] returns the
//!    summary. A process that runs part of a pipeline exits the same way
//!    when its part's sources end, so a batch job can be scripted.
//!
//! Shutdown ([`PipelineHandle::stop`]) ends every producer at once (a call in
//! progress is cancelled at its next `.await`; what it emitted is kept, and
//! `flush` runs), and the rest ends as in 2. However a producer ends, it
//! first drains: its buffered events go out as subscribers grant credits. While it drains it still answers subscribe
//! requests, so a late subscriber — say, of the partition the buffered events
//! belong to — is served what waits for it; a subscribe to a stage that has
//! finished is refused with an error saying it has ended. A subscriber that
//! stops asking keeps a drain from finishing: after a shutdown request
//! [`PipelineHandle::wait`] gives up at the drain timeout and names the
//! stages still running.
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
//! ## Streams in and out
//!
//! A stage system meets Rust's own stream type in both directions, as
//! GenStage meets Elixir's enumerables (`from_enumerable`, `stream`):
//!
//! - [`ops::FromStream`] is a producer pulling any `futures::Stream` only as
//!   far as demand goes, so a source can be written as an
//!   `async_stream::stream!` block or a `tokio_stream` wrapper (a channel, an
//!   interval) and still never read ahead of its consumers.
//! - [`ops::FromChunks`] is its sibling for sources that read in batches
//!   (rows of a file on the blocking pool): it asks for one chunk of at most
//!   the demand in hand at a time, as `from_enumerable` takes demand-sized chunks.
//! - [`Subscription::into_stream`] turns an outside subscription to a running
//!   producer into a [`SubscriptionStream`] of its events; credits are granted
//!   as items are taken, so a stream nobody polls holds the producer back.
//!
//! Each has an example on its page.
//!
//!
//! Implement one of the traits. Callbacks take events from an [`Events`]
//! cursor one at a time and put results into an [`Emitter`]; both belong to
//! the engine, which is how it knows which event a panic interrupted and
//! keeps what was emitted before it. Timers use `tick_interval` and
//! `handle_tick`; `flush` runs once at the end (see Lifecycle). Rules:
//! - take every event you are given (untaken ones are dropped and counted);
//! - a producer emits at most `demand` events unless it is a push source
//!   (`const PUSH: bool = true`), whose excess goes to the bounded buffer;
//! - a producer with nothing yet returns `Flow::Continue` empty (and keeps
//!   its [`Wakeup`] if events can come from outside) or awaits its input;
//! - never block the thread: await instead.
//!
//! ## Compared with GenStage
//!
//! GenStage's own test suite and dispatcher docs, replayed against this API,
//! agree except where stageflow differs on purpose:
//!
//! - **Strict demand in producer-consumers.** A GenStage producer-consumer
//!   asks its producers for `max_demand` up front, whatever its consumers
//!   want; here it asks only for what its own subscribers asked and is not
//!   covered yet (joins of several producers excepted, see above), so a
//!   stalled consumer stops the chain back to the source.
//! - **Bounded partition buffers.** Events for a partition without credits
//!   (or without a subscriber yet) wait in per-partition queues that count
//!   as the producer's one bounded buffer, instead of growing without bound
//!   (gen_stage issue 282); the producer asks its source for no more than
//!   the buffer has room for, so production stops once they fill it and
//!   the buffer's drop policy never takes an event made on demand.
//! - **A crash loses the event in hand.** A panicking callback loses only
//!   the event it was handling; GenStage's stage process dies with its
//!   mailbox and state.
//! - **`Permanent` ends after every producer.** A [`CancelMode::Permanent`]
//!   consumer ends when every producer it subscribes to has ended (and fails
//!   at once when one fails); GenStage's `:permanent` exits when the first
//!   one does.
//! - **Ties in the demand dispatcher.** With equal credits, the
//!   [`DemandDispatcher`] serves the earliest subscriber; GenStage's serves
//!   the subscriber whose demand was added earliest.
//!
//! Matching GenStage: `produce` is called only for new demand (quiet
//! producers above, `handle_demand`); invalid demand bounds are refused at
//! subscribe time (`bad_opts`); a producer that has ended still delivers
//! its buffered events to a subscriber that joins while it drains.

#![warn(missing_docs)]

mod buffer;
pub mod config;
mod demand;
pub mod dispatcher;
mod error;
pub mod failure;
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
mod tap;
pub mod window;

pub use buffer::BufferKeep;
pub use demand::{DemandBounds, DemandBoundsError, DemandMode};
pub use dispatcher::{BroadcastDispatcher, DemandDispatcher, Dispatcher, PartitionDispatcher};
pub use error::{PipelineError, StageError};
pub use link::{CancelMode, DemandHandle, EndReason, SubscribeOptions};
pub use metrics::{PROCESSING_BUCKETS_US, Percentiles, StageKind, StageMetrics, StageSnapshot};
pub use pipeline::{
    DEFAULT_BUFFER_SIZE, DEFAULT_DRAIN_TIMEOUT, MetricsReader, Pipeline, PipelineHandle, PipelineSummary,
    ShutdownTrigger, StageConfig, Taps,
};
pub use pool::{Autoscale, PoolConfig, Routing, autoscale_target};
pub use stage::{Consumer, Emitter, Events, Flow, Nothing, Producer, ProducerConsumer, Wakeup};
pub use subscription::{Subscription, SubscriptionStream};
pub use supervisor::{Escalation, RestartPolicy};
pub use tap::{TapOptions, TapStream};
