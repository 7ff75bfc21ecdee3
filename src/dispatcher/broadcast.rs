//! The broadcast dispatcher: every subscriber sees every event, paced by the slowest.

use super::{Deliveries, DispatchOptions, Dispatcher, Selector, SubscriberId, take_front};

struct BroadcastSubscriber<T> {
    id: SubscriberId,
    credits: usize,
    selector: Option<Selector<T>>,
}

/// Sends each event to every subscriber (that its selector accepts).
///
/// It places an event only when every subscriber holds a credit for it, so
/// the slowest subscriber sets the pace: with subscribers holding 1000 and 10
/// credits, 10 events go out. A subscriber is charged only for the events its
/// selector lets through, so a filtered subscriber never waits on credits it
/// was charged for events it did not get.
pub struct BroadcastDispatcher<T> {
    subscribers: Vec<BroadcastSubscriber<T>>,
}

impl<T> Default for BroadcastDispatcher<T> {
    fn default() -> Self {
        BroadcastDispatcher { subscribers: Vec::new() }
    }
}

impl<T> BroadcastDispatcher<T> {
    /// A dispatcher with no subscribers.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<T: Clone + Send + 'static> Dispatcher<T> for BroadcastDispatcher<T> {
    fn subscribe(&mut self, subscriber: SubscriberId, options: &DispatchOptions<T>) -> Result<(), String> {
        self.subscribers.push(BroadcastSubscriber {
            id: subscriber,
            credits: 0,
            selector: options.selector.clone(),
        });
        Ok(())
    }

    fn cancel(&mut self, subscriber: SubscriberId) {
        self.subscribers.retain(|s| s.id != subscriber);
    }

    fn ask(&mut self, subscriber: SubscriberId, credits: usize) {
        if let Some(s) = self.subscribers.iter_mut().find(|s| s.id == subscriber) {
            s.credits += credits;
        }
    }

    fn allowance(&self) -> usize {
        self.subscribers.iter().map(|s| s.credits).min().unwrap_or(0)
    }

    fn credits(&self, subscriber: SubscriberId) -> usize {
        self.subscribers.iter().find(|s| s.id == subscriber).map_or(0, |s| s.credits)
    }

    fn subscriber_count(&self) -> usize {
        self.subscribers.len()
    }

    fn dispatch(&mut self, mut events: Vec<T>, deliveries: &mut Deliveries<T>) -> Vec<T> {
        let allowance = Dispatcher::<T>::allowance(self);
        let placed = take_front(&mut events, allowance);
        if placed.is_empty() {
            return events;
        }
        let last = self.subscribers.len() - 1;
        let mut placed = Some(placed);
        for (index, subscriber) in self.subscribers.iter_mut().enumerate() {
            let batch: Vec<T> = match (&subscriber.selector, index == last) {
                (None, true) => placed.take().unwrap_or_default(),
                (None, false) => placed.as_ref().map(|p| p.to_vec()).unwrap_or_default(),
                (Some(select), _) => placed
                    .as_ref()
                    .map(|p| p.iter().filter(|e| select(e)).cloned().collect())
                    .unwrap_or_default(),
            };
            subscriber.credits -= batch.len();
            if !batch.is_empty() {
                deliveries.push((subscriber.id, batch));
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn slowest_subscriber_sets_the_pace() {
        let mut dispatcher = BroadcastDispatcher::new();
        dispatcher.subscribe(1, &DispatchOptions::default()).unwrap();
        dispatcher.subscribe(2, &DispatchOptions::default()).unwrap();
        dispatcher.ask(1, 10);
        dispatcher.ask(2, 2);
        let mut deliveries = Vec::new();
        let leftover = dispatcher.dispatch(vec![1, 2, 3], &mut deliveries);
        assert_eq!(deliveries, vec![(1, vec![1, 2]), (2, vec![1, 2])]);
        assert_eq!(leftover, vec![3]);
        assert_eq!((dispatcher.credits(1), dispatcher.credits(2)), (8, 0));
    }

    #[test]
    fn selector_filters_and_charges_only_what_it_sends() {
        let mut dispatcher = BroadcastDispatcher::new();
        let evens: Selector<u32> = Arc::new(|e| e % 2 == 0);
        dispatcher.subscribe(1, &DispatchOptions { partition: None, selector: Some(evens) }).unwrap();
        dispatcher.subscribe(2, &DispatchOptions::default()).unwrap();
        dispatcher.ask(1, 4);
        dispatcher.ask(2, 4);
        let mut deliveries = Vec::new();
        assert!(dispatcher.dispatch(vec![1, 2, 3, 4], &mut deliveries).is_empty());
        assert_eq!(deliveries, vec![(1, vec![2, 4]), (2, vec![1, 2, 3, 4])]);
        assert_eq!((dispatcher.credits(1), dispatcher.credits(2)), (2, 0));
    }

    #[test]
    fn no_subscribers_means_no_allowance() {
        let mut dispatcher = BroadcastDispatcher::<u8>::new();
        let mut deliveries = Vec::new();
        assert_eq!(dispatcher.dispatch(vec![1], &mut deliveries), vec![1]);
        assert!(deliveries.is_empty());
    }
}
