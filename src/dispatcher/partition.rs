//! The partition dispatcher: each event goes to the one subscriber of its partition.

use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use super::{Deliveries, DispatchOptions, Dispatcher, SubscriberId};

/// Maps an event to a partition number; taken modulo the partition count.
pub type PartitionFn<T> = Arc<dyn Fn(&T) -> usize + Send + Sync>;

/// Routes each event to the subscriber of the partition its hash selects.
///
/// Each partition has at most one subscriber. An event whose partition has no
/// credits (or no subscriber yet) is returned as a leftover and waits in the
/// producer's bounded buffer, ahead of later events, so per-partition order
/// holds. The producer asks its source only for `allowance - buffered`
/// events, so a stalled partition stalls production once the buffer holds
/// the other partitions' credits' worth: memory stays bounded instead of a
/// per-partition queue growing (gen_stage issue 282).
pub struct PartitionDispatcher<T> {
    partitions: Vec<Option<(SubscriberId, usize)>>,
    partition_of: PartitionFn<T>,
}

impl<T> PartitionDispatcher<T> {
    /// `partitions` partitions chosen by `partition_of(event) % partitions`.
    pub fn new(partitions: usize, partition_of: PartitionFn<T>) -> Self {
        PartitionDispatcher { partitions: vec![None; partitions.max(1)], partition_of }
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
        (self.partition_of)(event) % self.partitions.len()
    }
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
        let mut batches: Vec<Vec<T>> = self
            .partitions
            .iter()
            .map(|slot| Vec::with_capacity(slot.map_or(0, |(_, credits)| credits.min(events.len()))))
            .collect();
        let mut leftover = Vec::new();
        for event in events {
            let partition = self.partition_of(&event);
            match &mut self.partitions[partition] {
                Some((_, credits)) if *credits > 0 => {
                    *credits -= 1;
                    batches[partition].push(event);
                }
                _ => leftover.push(event),
            }
        }
        for (slot, batch) in self.partitions.iter().zip(batches) {
            if let (Some((id, _)), false) = (slot, batch.is_empty()) {
                deliveries.push((*id, batch));
            }
        }
        leftover
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
        assert_eq!(leftover, vec![3, 5]);
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
