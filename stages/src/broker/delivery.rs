//! The delivery task of one subscription: takes every event the topic's
//! stage offers into a priority queue (bounded; beyond the bound the events
//! stay in the log and are read back as the queue drains) and delivers from
//! the queue while fewer than `window` deliveries await an ack.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use stageflow::Subscription;
use tokio::sync::mpsc;

use super::log::ReadCursor;
use super::queue::PendingQueue;
use super::record::{Record, StoredEvent};
use super::subscription::{Delivery, SubscriptionCommand};
use super::topic::{SubscriptionState, Topic};
use crate::sync::lock;

/// Settings of a delivery task.
pub(crate) struct DeliverySetup {
    pub topic: Arc<Topic>,
    pub state: Arc<SubscriptionState>,
    pub engine: Subscription<Arc<StoredEvent>>,
    pub commands: mpsc::Receiver<SubscriptionCommand>,
    pub queue: PendingQueue,
    /// The last sequence number the topic had when the subscription registered.
    pub registered_at: u64,
    /// For a recovered subscription: read its pending events from the log from here.
    pub read_from: Option<u64>,
}

struct DeliveryTask {
    topic: Arc<Topic>,
    state: Arc<SubscriptionState>,
    engine: Subscription<Arc<StoredEvent>>,
    commands: mpsc::Receiver<SubscriptionCommand>,
    queue: PendingQueue,
    in_flight: Vec<Arc<StoredEvent>>,
    outlet: Option<mpsc::Sender<Delivery>>,
    window: usize,
    /// Highest sequence number taken from the stage (or covered at registration).
    live_high: u64,
    /// Set while events past the queue's bound wait in the log.
    spill: Option<ReadCursor>,
}

enum Step {
    Command(Option<SubscriptionCommand>),
    Deliver(Option<mpsc::OwnedPermit<Delivery>>),
    OutletClosed,
    Batch(Option<Vec<Arc<StoredEvent>>>),
}

/// Runs a subscription until it is stopped, its anonymous client leaves, or the topic shuts down.
pub(crate) async fn run_delivery(setup: DeliverySetup) {
    let spill = setup.read_from.filter(|from| *from <= setup.registered_at).map(ReadCursor::new);
    let mut task = DeliveryTask {
        topic: setup.topic,
        state: setup.state,
        engine: setup.engine,
        commands: setup.commands,
        queue: setup.queue,
        in_flight: Vec::new(),
        outlet: None,
        window: 1,
        live_high: setup.registered_at,
        spill,
    };
    task.run().await;
}

impl DeliveryTask {
    async fn run(&mut self) {
        loop {
            self.refill();
            self.publish_counts();
            let can_send =
                self.outlet.is_some() && self.in_flight.len() < self.window && !self.queue.is_empty();
            let outlet = self.outlet.clone();
            let step = tokio::select! {
                biased;
                command = self.commands.recv() => Step::Command(command),
                permit = async { outlet.clone()?.reserve_owned().await.ok() }, if can_send => Step::Deliver(permit),
                _ = async { outlet.as_ref().expect("guarded").closed().await }, if outlet.is_some() && !can_send => {
                    Step::OutletClosed
                }
                batch = self.engine.next_batch() => Step::Batch(batch),
            };
            let keep_going = match step {
                Step::Command(None) | Step::Batch(None) => false,
                Step::Command(Some(command)) => self.handle(command),
                Step::Deliver(Some(permit)) => {
                    if let Some(event) = self.queue.pop() {
                        self.in_flight.push(event.clone());
                        permit.send(Delivery { topic: self.topic.name.clone(), event });
                    }
                    true
                }
                Step::Deliver(None) | Step::OutletClosed => self.detach(),
                Step::Batch(Some(batch)) => {
                    self.take(batch);
                    true
                }
            };
            if !keep_going {
                break;
            }
        }
        if !self.state.durable {
            let _ = self.topic.unregister(&self.state.key);
        }
        self.engine.cancel();
    }

    /// Takes events from the stage: into the queue, or left in the log past its bound.
    fn take(&mut self, batch: Vec<Arc<StoredEvent>>) {
        for event in batch {
            if event.seq <= self.live_high {
                continue; // published before this subscription registered
            }
            self.live_high = event.seq;
            if self.spill.is_some() {
                self.state.spilled.fetch_add(1, Ordering::Relaxed);
            } else if self.queue.is_full() {
                self.spill = Some(ReadCursor::new(event.seq));
                self.state.spilled.store(1, Ordering::Relaxed);
            } else {
                self.queue.push(event);
            }
        }
    }

    /// Reads spilled events back from the log once the queue has drained to half.
    fn refill(&mut self) {
        let Some(cursor) = self.spill.as_mut() else { return };
        if !self.queue.wants_refill() {
            return;
        }
        let acked = lock(&self.state.acked).clone();
        let room = self.queue.refill_room().max(1);
        match self.topic.log.read_events(cursor, self.live_high, room, |seq| acked.contains(seq)) {
            Ok(events) => {
                let loaded = events.len() as u64;
                for event in events {
                    self.queue.push(Arc::new(event));
                }
                let _ = self
                    .state
                    .spilled
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(loaded)));
            }
            Err(error) => {
                eprintln!("warning: topic '{}': cannot read spilled events back: {error}", self.topic.name);
                return;
            }
        }
        if cursor.next_seq > self.live_high {
            self.spill = None;
            self.state.spilled.store(0, Ordering::Relaxed);
        }
    }

    fn publish_counts(&self) {
        self.state.queued.store(self.queue.len(), Ordering::Relaxed);
        self.state.in_flight.store(self.in_flight.len(), Ordering::Relaxed);
    }

    /// Handles a command; false when the task should end.
    fn handle(&mut self, command: SubscriptionCommand) -> bool {
        match command {
            SubscriptionCommand::Attach { outlet, window } => {
                self.requeue_in_flight();
                self.outlet = Some(outlet);
                self.window = window;
                self.state.window.store(window, Ordering::Relaxed);
                true
            }
            SubscriptionCommand::Window(window) => {
                self.window = window;
                self.state.window.store(window, Ordering::Relaxed);
                true
            }
            SubscriptionCommand::Ack { id, reply } => {
                let _ = reply.send(self.ack(&id));
                true
            }
            SubscriptionCommand::Stop => false,
        }
    }

    fn ack(&mut self, id: &str) -> Result<u64, String> {
        let Some(index) = self.in_flight.iter().position(|event| event.id == id) else {
            return Err(format!(
                "no delivered event with id '{id}' awaits an ack on topic '{}' for this subscriber",
                self.topic.name
            ));
        };
        let seq = self.in_flight[index].seq;
        let mut ticket = 0;
        if self.state.durable {
            ticket = self
                .topic
                .append(&Record::Ack { subscriber: self.state.key.clone(), seq })
                .map_err(|error| format!("cannot log the ack: {error}"))?;
        }
        self.in_flight.remove(index);
        lock(&self.state.acked).insert(seq);
        self.topic.log.mark_changed(seq);
        self.topic.acked.fetch_add(1, Ordering::Relaxed);
        Ok(ticket)
    }

    /// The client went away: a durable subscription keeps its events for the
    /// next connection under its name; an anonymous one ends.
    fn detach(&mut self) -> bool {
        self.outlet = None;
        self.requeue_in_flight();
        self.state.durable
    }

    fn requeue_in_flight(&mut self) {
        for event in self.in_flight.drain(..) {
            self.queue.push(event);
        }
    }
}
