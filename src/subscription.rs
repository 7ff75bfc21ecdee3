//! Subscribing to a running producer from outside the pipeline.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures::Stream;

use crate::demand::{DemandBounds, DemandLedger};
use crate::link::{EndReason, Inbox, InboxReceiver, Link};

/// An external consumer of a running producer, with automatic demand.
///
/// Credits are granted as batches are taken: a subscriber that stops calling
/// `next_batch` stops granting, and the producer holds back (or, with a
/// broadcast dispatcher, paces every subscriber) — so a slow reader costs at
/// most `max_demand` events of memory.
pub struct Subscription<T> {
    inbox: InboxReceiver<T>,
    link: Arc<Link>,
    ledger: DemandLedger,
    taken: usize,
    ended: Option<EndReason>,
}

impl<T> Subscription<T> {
    /// Subscribes and grants the first `max_demand` credits at once, as a consumer stage does.
    pub(crate) fn new(inbox: InboxReceiver<T>, link: Arc<Link>, bounds: DemandBounds) -> Self {
        let mut ledger = DemandLedger::new(bounds);
        link.ask(ledger.top_up(usize::MAX));
        Subscription { inbox, link, ledger, taken: 0, ended: None }
    }

    /// The next batch, or `None` once the producer ended or the subscription was cancelled.
    pub async fn next_batch(&mut self) -> Option<Vec<T>> {
        std::future::poll_fn(|cx| self.poll_next_batch(cx)).await
    }

    /// Polls for the next batch, first granting credits for the batch taken before it.
    fn poll_next_batch(&mut self, cx: &mut Context<'_>) -> Poll<Option<Vec<T>>> {
        if self.ended.is_some() {
            return Poll::Ready(None);
        }
        self.ledger.processed(self.taken);
        self.taken = 0;
        self.link.ask(self.ledger.top_up(usize::MAX));
        match ready!(self.inbox.poll_recv(cx)) {
            Some(Inbox::Events { batch, .. }) => {
                self.ledger.received(batch.len());
                self.taken = batch.len();
                Poll::Ready(Some(batch))
            }
            Some(Inbox::Done { reason, .. }) => {
                self.ended = Some(reason);
                Poll::Ready(None)
            }
            None => {
                self.ended = Some(EndReason::Normal);
                Poll::Ready(None)
            }
        }
    }

    /// Counts one event of the batch in hand as handled, topping credits up
    /// once outstanding ones fall to `min_demand`.
    fn handled_one(&mut self) {
        self.ledger.processed(1);
        self.taken -= 1;
        self.link.ask(self.ledger.top_up(usize::MAX));
    }

    /// The producer's events one at a time as a [`Stream`], as GenStage's
    /// `GenStage.stream/2` does. Credits are granted as events are taken: the
    /// stream asks for more once outstanding credits fall to `min_demand`,
    /// so a stream nobody polls holds the producer back.
    ///
    /// ```
    /// use futures::StreamExt;
    /// use stageflow::{Pipeline, SubscribeOptions, ops::FromIter};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let mut pipeline = Pipeline::new();
    /// pipeline.producer("numbers", || FromIter::new(1..=10u64));
    /// let running = pipeline.start().expect("a valid graph");
    /// let numbers = running.subscribe::<u64>("numbers", SubscribeOptions::default()).await.unwrap();
    /// let evens: Vec<u64> = numbers.into_stream().filter(|n| std::future::ready(n % 2 == 0)).collect().await;
    /// assert_eq!(evens, [2, 4, 6, 8, 10]);
    /// # }
    /// ```
    pub fn into_stream(self) -> SubscriptionStream<T> {
        SubscriptionStream { subscription: self, batch: Vec::new().into_iter() }
    }

    /// Why the subscription ended, once it has.
    pub fn end_reason(&self) -> Option<&EndReason> {
        self.ended.as_ref()
    }

    /// Cancels the subscription; `next_batch` returns what is in flight, then `None`.
    pub fn cancel(&self) {
        self.link.cancel();
    }
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        self.link.cancel();
    }
}

/// A [`Subscription`] as a [`Stream`] of single events (from [`Subscription::into_stream`]).
/// It ends when the subscription ends; [`SubscriptionStream::end_reason`] then says why.
pub struct SubscriptionStream<T> {
    subscription: Subscription<T>,
    batch: std::vec::IntoIter<T>,
}

impl<T> SubscriptionStream<T> {
    /// Why the subscription ended, once the stream has.
    pub fn end_reason(&self) -> Option<&EndReason> {
        self.subscription.end_reason()
    }

    /// Cancels the subscription: the stream yields what is in flight, then ends.
    pub fn cancel(&self) {
        self.subscription.cancel();
    }
}

// Nothing in it is pinned structurally: events are moved out, never borrowed across polls.
impl<T> Unpin for SubscriptionStream<T> {}

impl<T> Stream for SubscriptionStream<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let this = self.get_mut();
        loop {
            if let Some(event) = this.batch.next() {
                this.subscription.handled_one();
                return Poll::Ready(Some(event));
            }
            match ready!(this.subscription.poll_next_batch(cx)) {
                Some(batch) => this.batch = batch.into_iter(),
                None => return Poll::Ready(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::demand::DemandBounds;
    use crate::link::Inbox;
    use crate::ops::FromIter;
    use crate::{Pipeline, SubscribeOptions};

    #[tokio::test(start_paused = true)]
    async fn an_inbox_nobody_reads_holds_at_most_max_demand_events() {
        let mut pipeline = Pipeline::new();
        pipeline.producer("numbers", || FromIter::new(0..1_000_000u64));
        let running = pipeline.start().expect("a valid graph");
        let bounds = DemandBounds::new(10, 5).expect("valid bounds");
        let mut subscription =
            running.subscribe::<u64>("numbers", SubscribeOptions::bounds(bounds)).await.expect("subscribed");
        // The inbox is an unbounded channel: only the credits granted bound it.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut waiting = 0;
        while let Ok(message) = subscription.inbox.try_recv() {
            if let Inbox::Events { batch, .. } = message {
                waiting += batch.len();
            }
        }
        assert_eq!(waiting, 10, "exactly the credits granted, however fast the producer");
        running.shutdown();
    }
}
