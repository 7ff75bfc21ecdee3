//! What a subscription's delivery task is told (by its client and its
//! topic) and what it hands out. Its own file so that the topic and the
//! delivery task both use it without importing each other.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::record::StoredEvent;

/// An event delivered to a subscriber.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The topic it was published to.
    pub topic: Arc<str>,
    /// The event.
    pub event: Arc<StoredEvent>,
}

impl Delivery {
    /// The protocol line for it: `event <topic> <json>`.
    pub fn line(&self) -> String {
        format!("event {} {}", self.topic, self.event.body)
    }
}

/// What a client asks of a subscription's delivery task.
pub(crate) enum SubscriptionCommand {
    /// Deliver to this outlet from now on (deliveries awaiting ack elsewhere are redelivered).
    Attach { outlet: mpsc::Sender<Delivery>, window: usize },
    /// Change the window.
    Window(usize),
    /// Acknowledge the delivered event with this id; the reply carries the log ticket.
    Ack { id: String, reply: oneshot::Sender<Result<u64, String>> },
    /// End the subscription (already unregistered).
    Stop,
}
