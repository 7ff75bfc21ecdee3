//! The sending side of a stage: its subscribers, dispatcher and buffer.

use std::sync::Arc;

use tokio::sync::{Notify, mpsc};

use super::Control;
use crate::buffer::{Buffer, BufferKeep};
use crate::dispatcher::{Deliveries, Dispatcher};
use crate::link::{EndReason, Inbox, Subscriber};
use crate::metrics::{self, StageMetrics};
use crate::tap::TapSlot;

pub(crate) struct Outlet<T> {
    dispatcher: Box<dyn Dispatcher<T>>,
    subscribers: Vec<Subscriber<T>>,
    buffer: Buffer<T>,
    pub(crate) wake: Arc<Notify>,
    metrics: Arc<StageMetrics>,
    deliveries: Deliveries<T>,
    tap: Arc<TapSlot<T>>,
}

impl<T> Drop for Outlet<T> {
    fn drop(&mut self) {
        self.tap.end();
    }
}

impl<T: Send + 'static> Outlet<T> {
    pub(crate) fn new(
        dispatcher: Box<dyn Dispatcher<T>>,
        buffer: Buffer<T>,
        wake: Arc<Notify>,
        metrics: Arc<StageMetrics>,
    ) -> Self {
        Outlet {
            dispatcher,
            subscribers: Vec::new(),
            buffer,
            wake,
            metrics,
            deliveries: Vec::new(),
            tap: Arc::default(),
        }
    }

    /// Where taps attach to this stage's events.
    pub(crate) fn tap_slot(&self) -> Arc<TapSlot<T>> {
        self.tap.clone()
    }

    pub(crate) fn subscribe(&mut self, subscriber: Subscriber<T>) -> Result<(), String> {
        self.dispatcher.subscribe(subscriber.link.id, &subscriber.options)?;
        self.subscribers.push(subscriber);
        Ok(())
    }

    /// Events waiting for credits: in the buffer, and held by the dispatcher.
    pub(crate) fn buffered(&self) -> usize {
        self.buffer.len() + self.dispatcher.held()
    }

    pub(crate) fn allowance(&self) -> usize {
        self.dispatcher.allowance()
    }

    /// Events the source should make now: credits not already covered by the
    /// buffer, and, when the dispatcher may hold events for subscribers
    /// without credits (a partition's), no more than the buffer has room
    /// for, so its policy never drops an event made on demand. A buffer of
    /// size 0 keeps nothing by choice: there the credits alone count.
    pub(crate) fn production_demand(&self) -> usize {
        let wanted = self.allowance().saturating_sub(self.buffered());
        let capacity = self.buffer.capacity();
        if self.dispatcher.may_hold() && capacity > 0 {
            wanted.min(capacity.saturating_sub(self.buffered()))
        } else {
            wanted
        }
    }

    /// Takes the credits subscribers granted since the last call, and ends
    /// the subscriptions that were cancelled or whose consumer is gone.
    /// Returns how many credits came in.
    pub(crate) fn collect_asks(&mut self) -> usize {
        let mut collected = 0;
        let mut index = 0;
        while index < self.subscribers.len() {
            let subscriber = &self.subscribers[index];
            if subscriber.link.is_cancelled() || subscriber.inbox.is_closed() {
                let subscriber = self.subscribers.swap_remove(index);
                self.dispatcher.cancel(subscriber.link.id);
                // A closed inbox means the consumer is gone already.
                let _ = subscriber
                    .inbox
                    .send(Inbox::Done { link: subscriber.link.id, reason: EndReason::Cancelled });
                continue;
            }
            let credits = subscriber.link.collect();
            if credits > 0 {
                self.dispatcher.ask(subscriber.link.id, credits);
                collected += credits;
            }
            index += 1;
        }
        metrics::set(&self.metrics.demand_held, self.dispatcher.allowance());
        collected
    }

    /// Delivers `events` within credits; the rest waits in the buffer.
    pub(crate) fn emit(&mut self, events: Vec<T>) {
        if events.is_empty() {
            return;
        }
        self.tap.offer(&events);
        if self.buffer.is_empty() {
            let leftover = self.dispatcher.dispatch(events, &mut self.deliveries);
            self.send_deliveries();
            let dropped = self.buffer.push_back(leftover) as usize + self.trim_held();
            metrics::add(&self.metrics.dropped, dropped);
        } else {
            let dropped = self.buffer.push_back(events);
            metrics::add(&self.metrics.dropped, dropped as usize);
            self.pump();
        }
        self.update_gauges();
    }

    /// Delivers buffered events as far as credits allow.
    pub(crate) fn pump(&mut self) {
        if self.buffered() == 0 || self.dispatcher.allowance() == 0 {
            return;
        }
        self.dispatcher.release(&mut self.deliveries);
        if !self.buffer.is_empty() {
            let waiting = self.buffer.take_all();
            let leftover = self.dispatcher.dispatch(waiting, &mut self.deliveries);
            self.buffer.push_front(leftover);
        }
        self.send_deliveries();
        self.update_gauges();
    }

    /// Drops what the dispatcher holds past the buffer's room, by the buffer's policy.
    fn trim_held(&mut self) -> usize {
        if self.dispatcher.held() == 0 {
            return 0;
        }
        let room = self.buffer.capacity().saturating_sub(self.buffer.len());
        self.dispatcher.trim(room, self.buffer.keep())
    }

    fn update_gauges(&self) {
        metrics::set(&self.metrics.buffer_fill, self.buffered());
        metrics::set(&self.metrics.demand_held, self.dispatcher.allowance());
    }

    fn send_deliveries(&mut self) {
        for (id, batch) in std::mem::take(&mut self.deliveries) {
            let count = batch.len();
            let Some(index) = self.subscribers.iter().position(|s| s.link.id == id) else {
                metrics::add(&self.metrics.dropped, count);
                continue;
            };
            let delivered = self.subscribers[index].inbox.send(Inbox::Events { link: id, batch });
            if delivered.is_ok() {
                metrics::add(&self.metrics.events_out, count);
            } else {
                // The consumer ended between our credit check and the send.
                metrics::add(&self.metrics.dropped, count);
                let subscriber = self.subscribers.swap_remove(index);
                self.dispatcher.cancel(subscriber.link.id);
            }
        }
    }

    /// Drops whatever is still buffered, counting it (shutdown with nobody to take it).
    pub(crate) fn discard_buffer(&mut self) {
        let dropped = self.buffer.discard() as usize + self.dispatcher.trim(0, BufferKeep::First);
        metrics::add(&self.metrics.dropped, dropped);
        self.update_gauges();
    }

    /// Tells every subscriber that this producer has ended.
    pub(crate) fn finish(&mut self, reason: EndReason) {
        for subscriber in self.subscribers.drain(..) {
            let done = Inbox::Done { link: subscriber.link.id, reason: reason.clone() };
            let _ = subscriber.inbox.send(done);
        }
    }

    /// Delivers the buffer until it is empty or no subscriber is left to
    /// take it. Subscribe requests are answered meanwhile, so a late
    /// subscriber (say, of the partition the buffered events belong to) is
    /// served what waits for it, as GenStage queues its stop behind them.
    pub(crate) async fn drain(&mut self, control: &mut mpsc::Receiver<Control<T>>) {
        loop {
            self.collect_asks();
            self.pump();
            if self.buffered() == 0 {
                return;
            }
            if self.subscribers.is_empty() {
                self.discard_buffer();
                return;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                Some(Control::Subscribe(subscriber, reply)) = control.recv() => {
                    let _ = reply.send(self.subscribe(subscriber));
                }
            }
        }
    }
}
