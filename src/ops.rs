//! Small ready-made stages built from closures and iterators.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;

use futures::{FutureExt, Stream, StreamExt};

use crate::stage::{Consumer, Emitter, Events, Flow, Producer, ProducerConsumer};

/// A producer that emits the items of an iterator, then ends.
pub struct FromIter<I> {
    items: I,
}

impl<I> FromIter<I> {
    /// Emits `items` in order, as demand allows.
    pub fn new(items: I) -> Self {
        FromIter { items }
    }
}

impl<I> Producer for FromIter<I>
where
    I: Iterator + Send + 'static,
    I::Item: Send + 'static,
{
    type Out = I::Item;

    fn produce(&mut self, demand: usize, out: &mut Emitter<I::Item>) -> impl Future<Output = Flow> + Send {
        out.extend(self.items.by_ref().take(demand));
        let flow = if out.len() < demand { Flow::Done } else { Flow::Continue };
        async move { flow }
    }
}

/// A producer that pulls the items of any [`Stream`] only as demand allows,
/// then ends with the stream (GenStage's `GenStage.from_enumerable/2`).
///
/// Each `produce` call awaits one item, then takes what the stream has
/// ready at once, up to the demand: the stream is never polled for more
/// than subscribers asked for, so a source written as a stream (an
/// `async_stream::stream!` block, a `tokio_stream` wrapper around a
/// channel or an interval) gets backpressure for free. The factory makes a
/// new stream after a restart, as for every stage.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use stageflow::{Pipeline, SubscribeOptions, ops::{ForEach, FromStream}};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let total = Arc::new(AtomicU64::new(0));
/// let sum = total.clone();
/// let mut pipeline = Pipeline::new();
/// pipeline.producer("squares", || {
///     FromStream::new(async_stream::stream! {
///         for n in 1..=10u64 {
///             tokio::task::yield_now().await; // any async work: a read, a timer
///             yield n * n;
///         }
///     })
/// });
/// pipeline
///     .consumer("sum", move || {
///         let sum = sum.clone();
///         ForEach::new(move |x: u64| {
///             sum.fetch_add(x, Ordering::Relaxed);
///         })
///     })
///     .subscribe_to("squares", SubscribeOptions::default());
/// pipeline.start().expect("a valid graph").wait().await.expect("ends with the stream");
/// assert_eq!(total.load(Ordering::Relaxed), 385);
/// # }
/// ```
pub struct FromStream<S> {
    stream: Pin<Box<S>>,
}

impl<S: Stream> FromStream<S> {
    /// Emits the items of `stream` in order, as demand allows.
    pub fn new(stream: S) -> Self {
        FromStream { stream: Box::pin(stream) }
    }
}

impl<S> Producer for FromStream<S>
where
    S: Stream + Send + 'static,
    S::Item: Send + 'static,
{
    type Out = S::Item;

    async fn produce(&mut self, demand: usize, out: &mut Emitter<S::Item>) -> Flow {
        let Some(first) = self.stream.next().await else { return Flow::Done };
        out.emit(first);
        while out.len() < demand {
            // `next` is cancel-safe: a stream with nothing ready loses nothing when asked again later.
            match self.stream.next().now_or_never() {
                Some(Some(item)) => out.emit(item),
                Some(None) => return Flow::Done,
                None => break,
            }
        }
        Flow::Continue
    }
}

/// A producer that asks for its events a chunk at a time, each of at most
/// the demand in hand, then ends when `next` yields `None` (GenStage's
/// `from_enumerable` takes demand-sized chunks of its enumerable the same way).
///
/// [`FromStream`] pulls a stream one item at a time; `FromChunks` is for a
/// source that reads in batches and must still never read ahead of its
/// consumers, such as rows read from a file on the blocking pool: `next`
/// gets the state and the demand, and returns the chunk with the state to
/// go on from. The state moves into the future, so it can move on into
/// `spawn_blocking` and back.
///
/// ```
/// use stageflow::{Pipeline, SubscribeOptions, ops::FromChunks};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut pipeline = Pipeline::new();
/// pipeline.producer("lines", || {
///     FromChunks::new(0u64, |read, demand| async move {
///         let chunk = tokio::task::spawn_blocking(move || {
///             (read..100).take(demand).map(|n| format!("line {n}")).collect::<Vec<_>>()
///         });
///         let chunk = chunk.await.ok().filter(|lines| !lines.is_empty())?;
///         Some((read + chunk.len() as u64, chunk))
///     })
/// });
/// let running = pipeline.start().expect("a valid graph");
/// let mut lines = running.subscribe::<String>("lines", SubscribeOptions::default()).await.unwrap();
/// let mut count = 0;
/// while let Some(batch) = lines.next_batch().await {
///     count += batch.len();
/// }
/// assert_eq!(count, 100);
/// # }
/// ```
pub struct FromChunks<S, F> {
    state: Option<S>,
    next: F,
}

impl<S, F> FromChunks<S, F> {
    /// Starts from `state`; `next(state, demand)` yields the state after a chunk of at most `demand` events and the chunk, or `None` at the end.
    pub fn new(state: S, next: F) -> Self {
        FromChunks { state: Some(state), next }
    }
}

impl<S, F, Fut, T> Producer for FromChunks<S, F>
where
    S: Send + 'static,
    F: FnMut(S, usize) -> Fut + Send + 'static,
    Fut: Future<Output = Option<(S, Vec<T>)>> + Send,
    T: Send + 'static,
{
    type Out = T;

    async fn produce(&mut self, demand: usize, out: &mut Emitter<T>) -> Flow {
        let Some(state) = self.state.take() else { return Flow::Done };
        let Some((state, chunk)) = (self.next)(state, demand).await else { return Flow::Done };
        out.emit_batch(chunk);
        self.state = Some(state);
        Flow::Continue
    }
}

/// A producer-consumer that applies a function to each event.
pub struct Map<F, In, Out> {
    function: F,
    types: PhantomData<fn(In) -> Out>,
}

impl<F, In, Out> Map<F, In, Out>
where
    F: FnMut(In) -> Out,
{
    /// Maps every event through `function`.
    pub fn new(function: F) -> Self {
        Map { function, types: PhantomData }
    }
}

impl<F, In, Out> ProducerConsumer for Map<F, In, Out>
where
    F: FnMut(In) -> Out + Send + 'static,
    In: Send + 'static,
    Out: Send + 'static,
{
    type In = In;
    type Out = Out;

    fn handle_events(
        &mut self,
        events: &mut Events<In>,
        out: &mut Emitter<Out>,
    ) -> impl Future<Output = ()> + Send {
        out.extend(events.map(&mut self.function));
        async {}
    }
}

/// A consumer that calls a function on each event.
pub struct ForEach<F, In> {
    function: F,
    types: PhantomData<fn(In)>,
}

impl<F, In> ForEach<F, In>
where
    F: FnMut(In),
{
    /// Calls `function` on every event.
    pub fn new(function: F) -> Self {
        ForEach { function, types: PhantomData }
    }
}

impl<F, In> Consumer for ForEach<F, In>
where
    F: FnMut(In) + Send + 'static,
    In: Send + 'static,
{
    type In = In;

    fn handle_events(&mut self, events: &mut Events<In>) -> impl Future<Output = ()> + Send {
        events.for_each(&mut self.function);
        async {}
    }
}
