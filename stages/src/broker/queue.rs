//! A subscriber's pending events in priority order, and the set of events it
//! acknowledged. Pure data structures, no I/O.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;

use super::record::StoredEvent;

/// Pending events, highest priority first and FIFO (by sequence number)
/// within a priority, bounded in count and bytes. It never refuses an event
/// (`push` always succeeds); the owner checks `is_full` first and spills
/// what does not fit to the log.
#[derive(Debug)]
pub struct PendingQueue {
    heap: BinaryHeap<ByPriority>,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
}

#[derive(Debug)]
struct ByPriority(Arc<StoredEvent>);

impl Ord for ByPriority {
    fn cmp(&self, other: &Self) -> Ordering {
        // Max-heap: higher priority first, then the lower (older) sequence number.
        self.0.priority.cmp(&other.0.priority).then_with(|| other.0.seq.cmp(&self.0.seq))
    }
}
impl PartialOrd for ByPriority {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for ByPriority {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for ByPriority {}

impl PendingQueue {
    /// An empty queue holding at most `max_events` events and `max_bytes` bytes before it is full.
    pub fn new(max_events: usize, max_bytes: usize) -> Self {
        PendingQueue { heap: BinaryHeap::new(), bytes: 0, max_events: max_events.max(1), max_bytes }
    }

    /// Adds an event (even past the bound: the caller decides when to spill).
    pub fn push(&mut self, event: Arc<StoredEvent>) {
        self.bytes += event.memory_size();
        self.heap.push(ByPriority(event));
    }

    /// Takes the highest-priority, oldest event.
    pub fn pop(&mut self) -> Option<Arc<StoredEvent>> {
        let ByPriority(event) = self.heap.pop()?;
        self.bytes -= event.memory_size();
        Some(event)
    }

    /// Events held.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether it holds no event.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Whether it reached its bound in count or bytes.
    pub fn is_full(&self) -> bool {
        self.heap.len() >= self.max_events || self.bytes >= self.max_bytes
    }

    /// How many more events to load from the log: up to the count bound, and none past half the bytes.
    pub fn refill_room(&self) -> usize {
        if self.bytes >= self.max_bytes / 2 { 0 } else { self.max_events.saturating_sub(self.heap.len()) }
    }

    /// Whether it has drained to half its bounds, when refilling from the log is worth it.
    pub fn wants_refill(&self) -> bool {
        self.heap.len() <= self.max_events / 2 && self.bytes <= self.max_bytes / 2
    }
}

/// Sequence numbers a subscriber acknowledged, kept as disjoint inclusive
/// ranges, so memory grows with the gaps (events still pending between acked
/// ones), not with the number of acks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckedSet {
    /// start → end, inclusive, disjoint and not adjacent.
    ranges: BTreeMap<u64, u64>,
}

impl AckedSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u64) -> bool {
        self.ranges.range(..=seq).next_back().is_some_and(|(_, &end)| end >= seq)
    }

    /// Adds `seq`.
    pub fn insert(&mut self, seq: u64) {
        self.insert_range(seq, seq);
    }

    /// Adds every number in `first ..= last` (nothing if `first > last`).
    pub fn insert_range(&mut self, first: u64, last: u64) {
        if first > last {
            return;
        }
        let (mut start, mut end) = (first, last);
        // Merge with a range that overlaps or touches on the left.
        if let Some((&left_start, &left_end)) = self.ranges.range(..=first).next_back()
            && left_end.saturating_add(1) >= first
        {
            start = left_start;
            end = end.max(left_end);
            self.ranges.remove(&left_start);
        }
        // Merge with every range starting inside or right after.
        while let Some((&next_start, &next_end)) = self.ranges.range(start..).next() {
            if next_start > end.saturating_add(1) {
                break;
            }
            end = end.max(next_end);
            self.ranges.remove(&next_start);
        }
        self.ranges.insert(start, end);
    }

    /// The largest `n >= after` such that every number in `after + 1 ..= n` is in the set.
    pub fn contiguous_through(&self, after: u64) -> u64 {
        match self.ranges.range(..=after.saturating_add(1)).next_back() {
            Some((_, &end)) if end > after => end,
            _ => after,
        }
    }

    /// Forgets every number up to `seq` (they no longer matter).
    pub fn forget_through(&mut self, seq: u64) {
        let keep = self.ranges.split_off(&seq.saturating_add(1));
        if let Some((_, &end)) = self.ranges.iter().next_back()
            && end > seq
        {
            self.ranges = keep;
            self.ranges.insert(seq + 1, end);
            return;
        }
        self.ranges = keep;
    }

    /// How many numbers in `after + 1 ..= through` are in the set.
    pub fn count_within(&self, after: u64, through: u64) -> u64 {
        if through <= after {
            return 0;
        }
        let low = after + 1;
        let first = self.ranges.range(..low).next_back().map(|(&start, &end)| (start, end));
        first
            .into_iter()
            .chain(self.ranges.range(low..=through).map(|(&start, &end)| (start, end)))
            .map(|(start, end)| {
                let (start, end) = (start.max(low), end.min(through));
                if end >= start { end - start + 1 } else { 0 }
            })
            .sum()
    }

    /// Number of disjoint ranges (a measure of its memory).
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn event(seq: u64, priority: u8) -> Arc<StoredEvent> {
        Arc::new(StoredEvent { seq, priority, id: format!("e{seq}"), body: "{}".into() })
    }

    #[test]
    fn higher_priority_first_then_fifo() {
        let mut queue = PendingQueue::new(100, 1 << 20);
        for (seq, priority) in [(1, 1), (2, 9), (3, 5), (4, 9), (5, 1)] {
            queue.push(event(seq, priority));
        }
        let order: Vec<u64> = std::iter::from_fn(|| queue.pop()).map(|e| e.seq).collect();
        assert_eq!(order, vec![2, 4, 3, 1, 5]);
        assert_eq!(queue.bytes, 0);
    }

    #[test]
    fn full_by_count_or_bytes() {
        let mut by_count = PendingQueue::new(2, 1 << 20);
        by_count.push(event(1, 0));
        assert!(!by_count.is_full());
        by_count.push(event(2, 0));
        assert!(by_count.is_full());
        let mut by_bytes = PendingQueue::new(100, 10);
        by_bytes.push(event(1, 0));
        assert!(by_bytes.is_full());
        assert_eq!(by_bytes.refill_room(), 0);
    }

    #[test]
    fn acked_ranges_merge() {
        let mut acked = AckedSet::new();
        for seq in [5, 3, 4, 10, 8, 9] {
            acked.insert(seq);
        }
        assert_eq!(acked.range_count(), 2);
        assert!(acked.contains(3) && acked.contains(5) && acked.contains(8) && acked.contains(10));
        assert!(!acked.contains(2) && !acked.contains(6) && !acked.contains(11));
        assert_eq!(acked.contiguous_through(2), 5);
        assert_eq!(acked.contiguous_through(5), 5);
        assert_eq!(acked.contiguous_through(7), 10);
        acked.insert_range(6, 7);
        assert_eq!(acked.range_count(), 1);
        acked.forget_through(4);
        assert!(!acked.contains(4) && acked.contains(5));
    }

    proptest! {
        #[test]
        fn acked_set_matches_a_plain_set(ops in proptest::collection::vec((0u64..60, 0u64..4), 0..80), cut in 0u64..60) {
            let mut acked = AckedSet::new();
            let mut model = BTreeSet::new();
            for (start, len) in ops {
                acked.insert_range(start, start + len);
                model.extend(start..=start + len);
            }
            for seq in 0..70 {
                prop_assert_eq!(acked.contains(seq), model.contains(&seq));
            }
            prop_assert_eq!(acked.count_within(cut, cut + 15), model.range(cut + 1..=cut + 15).count() as u64);
            prop_assert_eq!(acked.count_within(cut, cut), 0);
            let through = (cut..).take_while(|s| model.contains(&(s + 1))).last().map_or(cut, |s| s + 1);
            prop_assert_eq!(acked.contiguous_through(cut), through);
            acked.forget_through(cut);
            for seq in 0..70 {
                prop_assert_eq!(acked.contains(seq), seq > cut && model.contains(&seq));
            }
        }

        #[test]
        fn queue_pops_in_priority_then_seq_order(priorities in proptest::collection::vec(0u8..=9, 0..50)) {
            let mut queue = PendingQueue::new(100, 1 << 20);
            for (seq, &priority) in priorities.iter().enumerate() {
                queue.push(event(seq as u64, priority));
            }
            let popped: Vec<(u8, u64)> = std::iter::from_fn(|| queue.pop()).map(|e| (e.priority, e.seq)).collect();
            let mut expected: Vec<(u8, u64)> = priorities.iter().enumerate().map(|(s, &p)| (p, s as u64)).collect();
            expected.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            prop_assert_eq!(popped, expected);
        }
    }
}
