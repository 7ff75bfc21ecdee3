//! Windowed reduce: fold events into an accumulator and emit one result per window.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use crate::stage::{Emitter, Events, ProducerConsumer};

/// When a window closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Every period of wall-clock time (a window is emitted even if it saw no events).
    Periodic(Duration),
    /// Every `n` events.
    Count(usize),
}

type Init<Acc> = Arc<dyn Fn() -> Acc + Send + Sync>;
type Fold<In, Acc> = Arc<dyn Fn(&mut Acc, In) + Send + Sync>;
type Finish<Acc, Out> = Arc<dyn Fn(Acc) -> Out + Send + Sync>;

/// A producer-consumer that reduces each window of events to one output event.
///
/// "Top 25 hashtags every 10 s" is a `Periodic(10 s)` window whose
/// accumulator is a count per hashtag and whose `finish` is
/// `|counts| top_n(counts, 25)`. When its producers end, the partial window
/// is emitted by `flush` if it saw any event.
pub struct WindowReduce<In, Acc, Out> {
    window: Window,
    init: Init<Acc>,
    fold: Fold<In, Acc>,
    finish: Finish<Acc, Out>,
    accumulator: Acc,
    seen: usize,
}

impl<In, Acc, Out> WindowReduce<In, Acc, Out> {
    /// A reducer: `init` starts each window, `fold` adds an event, `finish` turns a window into output.
    pub fn new(
        window: Window,
        init: impl Fn() -> Acc + Send + Sync + 'static,
        fold: impl Fn(&mut Acc, In) + Send + Sync + 'static,
        finish: impl Fn(Acc) -> Out + Send + Sync + 'static,
    ) -> Self {
        let init: Init<Acc> = Arc::new(init);
        WindowReduce {
            window,
            accumulator: init(),
            init,
            fold: Arc::new(fold),
            finish: Arc::new(finish),
            seen: 0,
        }
    }

    /// A copy with an empty window, for the stage factory.
    pub fn fresh(&self) -> Self {
        WindowReduce {
            window: self.window,
            accumulator: (self.init)(),
            init: self.init.clone(),
            fold: self.fold.clone(),
            finish: self.finish.clone(),
            seen: 0,
        }
    }

    /// Adds one event; returns the window's result if this event closed it.
    pub fn push(&mut self, event: In) -> Option<Out> {
        (self.fold)(&mut self.accumulator, event);
        self.seen += 1;
        match self.window {
            Window::Count(size) if self.seen >= size.max(1) => Some(self.close()),
            _ => None,
        }
    }

    /// Closes the current window and returns its result.
    pub fn close(&mut self) -> Out {
        self.seen = 0;
        let full = std::mem::replace(&mut self.accumulator, (self.init)());
        (self.finish)(full)
    }
}

impl<In, Acc, Out> ProducerConsumer for WindowReduce<In, Acc, Out>
where
    In: Send + 'static,
    Acc: Send + 'static,
    Out: Send + 'static,
{
    type In = In;
    type Out = Out;

    fn handle_events(
        &mut self,
        events: &mut Events<In>,
        out: &mut Emitter<Out>,
    ) -> impl Future<Output = ()> + Send {
        for event in events {
            if let Some(result) = self.push(event) {
                out.emit(result);
            }
        }
        async {}
    }

    fn tick_interval(&self) -> Option<Duration> {
        match self.window {
            Window::Periodic(period) => Some(period),
            Window::Count(_) => None,
        }
    }

    fn handle_tick(&mut self, out: &mut Emitter<Out>) -> impl Future<Output = ()> + Send {
        out.emit(self.close());
        async {}
    }

    fn flush(&mut self, out: &mut Emitter<Out>) -> impl Future<Output = ()> + Send {
        if self.seen > 0 {
            out.emit(self.close());
        }
        async {}
    }
}

/// The `n` keys with the highest counts, highest first, ties by key.
pub fn top_n<K: Ord + Hash + Eq>(counts: HashMap<K, u64>, n: usize) -> Vec<(K, u64)> {
    let mut ranked: Vec<(K, u64)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    ranked.truncate(n);
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counting(
        window: Window,
    ) -> WindowReduce<&'static str, HashMap<&'static str, u64>, Vec<(&'static str, u64)>> {
        WindowReduce::new(
            window,
            HashMap::new,
            |counts: &mut HashMap<&'static str, u64>, tag| *counts.entry(tag).or_default() += 1,
            |counts| top_n(counts, 2),
        )
    }

    #[test]
    fn count_window_emits_every_n_events() {
        let mut reducer = counting(Window::Count(3));
        assert_eq!(reducer.push("a"), None);
        assert_eq!(reducer.push("b"), None);
        assert_eq!(reducer.push("a"), Some(vec![("a", 2), ("b", 1)]));
        assert_eq!(reducer.push("c"), None);
        assert_eq!(reducer.close(), vec![("c", 1)]);
    }

    #[test]
    fn top_n_orders_by_count_then_key() {
        let counts = HashMap::from([("b", 2), ("a", 2), ("c", 5), ("d", 1)]);
        assert_eq!(top_n(counts, 3), vec![("c", 5), ("a", 2), ("b", 2)]);
    }
}
