//! The partition dispatcher: each event goes to the one subscriber of its partition.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use crate::buffer::BufferKeep;

use super::{Deliveries, DispatchOptions, Dispatcher, SubscriberId};

/// Maps an event to a partition number; taken modulo the partition count.
pub type PartitionFn<T> = Arc<dyn Fn(&T) -> usize + Send + Sync>;

/// Routes each event to the subscriber of the partition its hash selects.
///
/// Each partition has at most one subscriber. An event whose partition has no
/// credits (or no subscriber yet) waits in that partition's queue, behind
/// the partition's earlier events, so per-partition order holds; it goes out
/// as soon as its partition asks, without being looked at again (its
/// partition is computed once). The queues count as the producer's buffer,
/// so memory stays bounded (gen_stage issue 282): the producer asks its
/// source for no more than the credits and the buffer's room allow (any
/// event made may have to wait), so a stalled partition stalls production
/// once the queues fill the buffer, and no event made on demand is dropped;
/// what a source emits beyond that is trimmed by the buffer's policy.
pub struct PartitionDispatcher<T> {
    partitions: Vec<Option<(SubscriberId, usize)>>,
    /// Per partition, the events waiting for its credits, each with its arrival number.
    waiting: Vec<VecDeque<(u64, T)>>,
    /// Events in `waiting`, all partitions together.
    held: usize,
    /// The arrival number of the next event queued, to drop the oldest first.
    arrivals: u64,
    partition_of: PartitionFn<T>,
}

impl<T> PartitionDispatcher<T> {
    /// `partitions` partitions chosen by `partition_of(event) % partitions`.
    pub fn new(partitions: usize, partition_of: PartitionFn<T>) -> Self {
        let count = partitions.max(1);
        PartitionDispatcher {
            partitions: vec![None; count],
            waiting: (0..count).map(|_| VecDeque::new()).collect(),
            held: 0,
            arrivals: 0,
            partition_of,
        }
    }

    /// `partitions` partitions chosen by the event's `Hash`.
    pub fn by_hash(partitions: usize) -> Self
    where
        T: Hash,
    {
        let state = std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
        Self::new(partitions, Arc::new(move |event: &T| state.hash_one(event) as usize))
    }

    /// The number of partitions.
    pub fn partition_count(&self) -> usize {
        self.partitions.len()
    }

    /// The partition an event belongs to.
    pub fn partition_of(&self, event: &T) -> usize {
        partition_index((self.partition_of)(event), self.partitions.len())
    }

    /// Queues `event` behind partition `partition`'s waiting events.
    fn queue(&mut self, partition: usize, event: T) {
        self.waiting[partition].push_back((self.arrivals, event));
        self.arrivals += 1;
        self.held += 1;
    }
}

/// `hash % partitions`, with a mask when the count is a power of two (the
/// same number, without a division per event).
fn partition_index(hash: usize, partitions: usize) -> usize {
    if partitions.is_power_of_two() { hash & (partitions - 1) } else { hash % partitions }
}

impl<T: Send + 'static> Dispatcher<T> for PartitionDispatcher<T> {
    fn subscribe(&mut self, subscriber: SubscriberId, options: &DispatchOptions<T>) -> Result<(), String> {
        let count = self.partitions.len();
        let Some(partition) = options.partition else {
            return Err(format!(
                "a subscriber of a partition dispatcher must name its partition (0..{count})"
            ));
        };
        match self.partitions.get_mut(partition) {
            None => Err(format!("partition {partition} does not exist: there are {count} (0..{count})")),
            Some(Some(_)) => Err(format!("partition {partition} already has a subscriber")),
            Some(slot) => {
                *slot = Some((subscriber, 0));
                Ok(())
            }
        }
    }

    fn cancel(&mut self, subscriber: SubscriberId) {
        for slot in &mut self.partitions {
            if matches!(slot, Some((id, _)) if *id == subscriber) {
                *slot = None;
            }
        }
    }

    fn ask(&mut self, subscriber: SubscriberId, credits: usize) {
        for (id, held) in self.partitions.iter_mut().flatten() {
            if *id == subscriber {
                *held += credits;
            }
        }
    }

    fn allowance(&self) -> usize {
        self.partitions.iter().flatten().map(|(_, credits)| credits).sum()
    }

    fn credits(&self, subscriber: SubscriberId) -> usize {
        self.partitions.iter().flatten().find(|(id, _)| *id == subscriber).map_or(0, |(_, c)| *c)
    }

    fn subscriber_count(&self) -> usize {
        self.partitions.iter().flatten().count()
    }

    fn dispatch(&mut self, events: Vec<T>, deliveries: &mut Deliveries<T>) -> Vec<T> {
        // Waiting events go first, so a partition's order holds.
        self.release(deliveries);
        let count = self.partitions.len();
        // Credits an event may take now: none for a partition without a
        // subscriber or with events already waiting (they go first). Once a
        // partition's run out, its later events wait too, so the loop needs
        // no other check.
        let mut open: Vec<usize> = self
            .partitions
            .iter()
            .zip(&self.waiting)
            .map(|(slot, queue)| if queue.is_empty() { slot.map_or(0, |(_, credits)| credits) } else { 0 })
            .collect();
        let mut batches: Vec<Vec<T>> =
            open.iter().map(|&credits| Vec::with_capacity(credits.min(events.len()))).collect();
        for event in events {
            let partition = partition_index((self.partition_of)(&event), count);
            if open[partition] > 0 {
                open[partition] -= 1;
                batches[partition].push(event);
            } else {
                self.queue(partition, event);
            }
        }
        for (slot, batch) in self.partitions.iter_mut().zip(batches) {
            if let Some((id, credits)) = slot
                && !batch.is_empty()
            {
                *credits -= batch.len();
                deliveries.push((*id, batch));
            }
        }
        Vec::new()
    }

    fn may_hold(&self) -> bool {
        true
    }

    fn held(&self) -> usize {
        self.held
    }

    fn release(&mut self, deliveries: &mut Deliveries<T>) {
        if self.held == 0 {
            return;
        }
        for (slot, queue) in self.partitions.iter_mut().zip(&mut self.waiting) {
            let Some((id, credits)) = slot else { continue };
            let take = (*credits).min(queue.len());
            if take == 0 {
                continue;
            }
            *credits -= take;
            self.held -= take;
            deliveries.push((*id, queue.drain(..take).map(|(_, event)| event).collect()));
        }
    }

    fn trim(&mut self, capacity: usize, keep: BufferKeep) -> usize {
        let excess = self.held.saturating_sub(capacity);
        for _ in 0..excess {
            // The newest or oldest event of all queues: the back or front arrival number.
            let ends = self.waiting.iter().enumerate().filter_map(|(partition, queue)| match keep {
                BufferKeep::First => queue.back().map(|(arrival, _)| (*arrival, partition)),
                BufferKeep::Last => queue.front().map(|(arrival, _)| (u64::MAX - *arrival, partition)),
            });
            let Some((_, partition)) = ends.max() else { break };
            match keep {
                BufferKeep::First => self.waiting[partition].pop_back(),
                BufferKeep::Last => self.waiting[partition].pop_front(),
            };
            self.held -= 1;
        }
        excess
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_parity() -> PartitionDispatcher<u32> {
        PartitionDispatcher::new(2, Arc::new(|e: &u32| *e as usize))
    }

    fn options(partition: usize) -> DispatchOptions<u32> {
        DispatchOptions { partition: Some(partition), selector: None }
    }

    #[test]
    fn events_go_to_their_partition_and_wait_without_credits() {
        let mut dispatcher = by_parity();
        dispatcher.subscribe(10, &options(0)).unwrap();
        dispatcher.subscribe(11, &options(1)).unwrap();
        dispatcher.ask(10, 5);
        dispatcher.ask(11, 1);
        let mut deliveries = Vec::new();
        let leftover = dispatcher.dispatch(vec![0, 1, 2, 3, 4, 5], &mut deliveries);
        assert_eq!(deliveries, vec![(10, vec![0, 2, 4]), (11, vec![1])]);
        assert!(leftover.is_empty(), "waiting events stay in their partition's queue");
        assert_eq!(dispatcher.held(), 2);
        deliveries.clear();
        dispatcher.ask(11, 1);
        dispatcher.dispatch(vec![6, 7], &mut deliveries);
        assert_eq!(deliveries, vec![(11, vec![3]), (10, vec![6])], "3 before 7 in partition 1");
        deliveries.clear();
        dispatcher.ask(11, 5);
        dispatcher.release(&mut deliveries);
        assert_eq!(deliveries, vec![(11, vec![5, 7])]);
        assert_eq!(dispatcher.held(), 0);
    }

    #[test]
    fn each_event_is_looked_at_once_however_long_it_waits() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let mut dispatcher = PartitionDispatcher::new(
            3,
            Arc::new(move |e: &u32| {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                *e as usize
            }),
        );
        for (id, partition) in [(10, 0), (11, 1), (12, 2)] {
            dispatcher.subscribe(id, &options(partition)).unwrap();
        }
        let mut deliveries = Vec::new();
        dispatcher.ask(10, 100);
        dispatcher.dispatch((0..30).collect(), &mut deliveries);
        for round in 0..10 {
            dispatcher.ask(11, 1);
            dispatcher.ask(12, 1);
            dispatcher.dispatch(vec![30 + round], &mut deliveries);
        }
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 40, "one partition_of per event");
        let to = |id| {
            deliveries.iter().filter(|(to, _)| *to == id).flat_map(|(_, b)| b.clone()).collect::<Vec<_>>()
        };
        assert_eq!(to(11), vec![1, 4, 7, 10, 13, 16, 19, 22, 25, 28]);
        assert_eq!(to(12), vec![2, 5, 8, 11, 14, 17, 20, 23, 26, 29]);
        assert_eq!(dispatcher.held(), 6, "31, 34, 37 and 32, 35, 38 wait behind their partitions' queues");
    }

    #[test]
    fn trimming_drops_the_newest_or_the_oldest_of_all_queues() {
        for (keep, kept) in [(BufferKeep::First, vec![1, 2, 3]), (BufferKeep::Last, vec![4, 5, 6])] {
            let mut dispatcher = by_parity();
            dispatcher.subscribe(10, &options(0)).unwrap();
            dispatcher.subscribe(11, &options(1)).unwrap();
            let mut deliveries = Vec::new();
            dispatcher.dispatch(vec![1, 2, 3, 4, 5, 6], &mut deliveries);
            assert_eq!(dispatcher.trim(3, keep), 3);
            assert_eq!(dispatcher.held(), 3);
            dispatcher.ask(10, 10);
            dispatcher.ask(11, 10);
            dispatcher.release(&mut deliveries);
            let mut left: Vec<u32> = deliveries.into_iter().flat_map(|(_, batch)| batch).collect();
            left.sort();
            assert_eq!(left, kept, "{keep:?}");
        }
    }

    #[test]
    fn a_power_of_two_mask_is_the_same_as_the_remainder() {
        for partitions in 1..=16 {
            for hash in [0, 1, 7, 8, 255, usize::MAX, usize::MAX - 3, 1 << 40] {
                assert_eq!(partition_index(hash, partitions), hash % partitions);
            }
        }
    }

    #[test]
    fn subscribing_needs_a_free_existing_partition() {
        let mut dispatcher = by_parity();
        assert!(dispatcher.subscribe(1, &DispatchOptions::default()).unwrap_err().contains("must name"));
        assert!(dispatcher.subscribe(1, &options(2)).unwrap_err().contains("does not exist"));
        dispatcher.subscribe(1, &options(0)).unwrap();
        assert!(dispatcher.subscribe(2, &options(0)).unwrap_err().contains("already"));
    }
}
