//! The producer's bounded buffer: events produced that nobody has asked for yet.

use std::collections::VecDeque;

/// Which events a full buffer keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BufferKeep {
    /// Keep the oldest events; newly arriving ones are dropped.
    First,
    /// Keep the newest events; the oldest are dropped to make room (GenStage's default).
    #[default]
    Last,
}

/// A FIFO of at most `capacity` events that drops by policy and counts what it drops.
#[derive(Debug)]
pub struct Buffer<T> {
    events: VecDeque<T>,
    capacity: usize,
    keep: BufferKeep,
    dropped: u64,
}

impl<T> Buffer<T> {
    /// An empty buffer holding at most `capacity` events.
    pub fn new(capacity: usize, keep: BufferKeep) -> Self {
        Buffer { events: VecDeque::new(), capacity, keep, dropped: 0 }
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// The most events it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Which events it keeps when full.
    pub fn keep(&self) -> BufferKeep {
        self.keep
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Events dropped since creation because the buffer was full.
    #[cfg(test)]
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Appends events at the back, dropping by policy past capacity.
    /// Returns how many events were dropped by this call.
    pub fn push_back(&mut self, events: impl IntoIterator<Item = T>) -> u64 {
        let before = self.dropped;
        let mut events = events.into_iter();
        let room = self.capacity - self.events.len().min(self.capacity);
        self.events.extend(events.by_ref().take(room));
        for event in events {
            if self.events.len() < self.capacity {
                self.events.push_back(event);
                continue;
            }
            self.dropped += 1;
            if self.keep == BufferKeep::Last && self.capacity > 0 {
                self.events.pop_front();
                self.events.push_back(event);
            }
        }
        self.dropped - before
    }

    /// Puts back events that could not be delivered, ahead of everything
    /// waiting, so per-subscriber order is kept. They were already accepted,
    /// so they may exceed capacity; the next `push_back` drops by policy.
    pub fn push_front(&mut self, mut events: Vec<T>) {
        if self.events.is_empty() {
            self.events = VecDeque::from(events);
            return;
        }
        events.extend(self.events.drain(..));
        self.events = VecDeque::from(events);
    }

    /// Takes every waiting event, in order.
    pub fn take_all(&mut self) -> Vec<T> {
        Vec::from(std::mem::take(&mut self.events))
    }

    /// Drops everything waiting, counting it, and returns how many went.
    pub fn discard(&mut self) -> u64 {
        let count = self.events.len() as u64;
        self.events.clear();
        self.dropped += count;
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_first_drops_newcomers() {
        let mut buffer = Buffer::new(3, BufferKeep::First);
        assert_eq!(buffer.push_back(1..=5), 2);
        assert_eq!(buffer.take_all(), vec![1, 2, 3]);
        assert_eq!(buffer.dropped(), 2);
    }

    #[test]
    fn keep_last_drops_oldest() {
        let mut buffer = Buffer::new(3, BufferKeep::Last);
        assert_eq!(buffer.push_back(1..=5), 2);
        assert_eq!(buffer.take_all(), vec![3, 4, 5]);
    }

    #[test]
    fn zero_capacity_drops_everything() {
        let mut buffer = Buffer::new(0, BufferKeep::Last);
        assert_eq!(buffer.push_back(1..=4), 4);
        assert!(buffer.is_empty());
    }

    #[test]
    fn push_front_keeps_order_ahead_of_waiting_events() {
        let mut buffer = Buffer::new(10, BufferKeep::Last);
        buffer.push_back([3, 4]);
        buffer.push_front(vec![1, 2]);
        assert_eq!(buffer.take_all(), vec![1, 2, 3, 4]);
    }
}
