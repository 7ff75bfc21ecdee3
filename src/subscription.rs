//! Subscribing to a running producer from outside the pipeline.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::demand::{DemandBounds, DemandLedger};
use crate::link::{EndReason, Inbox, Link};

/// An external consumer of a running producer, with automatic demand.
///
/// Credits are granted as batches are taken: a subscriber that stops calling
/// `next_batch` stops granting, and the producer holds back (or, with a
/// broadcast dispatcher, paces every subscriber) — so a slow reader costs at
/// most `max_demand` events of memory.
pub struct Subscription<T> {
    inbox: mpsc::Receiver<Inbox<T>>,
    link: Arc<Link>,
    ledger: DemandLedger,
    taken: usize,
    ended: Option<EndReason>,
}

impl<T> Subscription<T> {
    /// Subscribes and grants the first `max_demand` credits at once, as a consumer stage does.
    pub(crate) fn new(inbox: mpsc::Receiver<Inbox<T>>, link: Arc<Link>, bounds: DemandBounds) -> Self {
        let mut ledger = DemandLedger::new(bounds);
        link.ask(ledger.top_up(usize::MAX));
        Subscription { inbox, link, ledger, taken: 0, ended: None }
    }

    /// The next batch, or `None` once the producer ended or the subscription was cancelled.
    pub async fn next_batch(&mut self) -> Option<Vec<T>> {
        if self.ended.is_some() {
            return None;
        }
        self.ledger.processed(self.taken);
        self.taken = 0;
        self.link.ask(self.ledger.top_up(usize::MAX));
        match self.inbox.recv().await {
            Some(Inbox::Events { batch, .. }) => {
                self.ledger.received(batch.len());
                self.taken = batch.len();
                Some(batch)
            }
            Some(Inbox::Done { reason, .. }) => {
                self.ended = Some(reason);
                None
            }
            None => {
                self.ended = Some(EndReason::Normal);
                None
            }
        }
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
