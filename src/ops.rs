//! Small ready-made stages built from closures and iterators.

use std::future::Future;
use std::marker::PhantomData;

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
