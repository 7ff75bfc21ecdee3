//! The demand dispatcher: each batch goes to the subscriber holding the most credits.

use super::{Deliveries, DispatchOptions, Dispatcher, SubscriberId, take_front};

/// Sends every event to exactly one subscriber, preferring the one with most outstanding credits.
///
/// With subscribers holding 300 and 200 credits, a batch of 400 events goes
/// out as 300 to the first and 100 to the second; the leftover second
/// subscriber credits (100) are kept for the next events. On equal credits
/// the earliest subscriber is served first (GenStage: the subscriber whose
/// demand was added earliest).
#[derive(Debug, Default)]
pub struct DemandDispatcher {
    subscribers: Vec<(SubscriberId, usize)>,
}

impl DemandDispatcher {
    /// A dispatcher with no subscribers.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<T: Send + 'static> Dispatcher<T> for DemandDispatcher {
    fn subscribe(&mut self, subscriber: SubscriberId, _: &DispatchOptions<T>) -> Result<(), String> {
        self.subscribers.push((subscriber, 0));
        Ok(())
    }

    fn cancel(&mut self, subscriber: SubscriberId) {
        self.subscribers.retain(|(id, _)| *id != subscriber);
    }

    fn ask(&mut self, subscriber: SubscriberId, credits: usize) {
        if let Some((_, held)) = self.subscribers.iter_mut().find(|(id, _)| *id == subscriber) {
            *held += credits;
        }
    }

    fn allowance(&self) -> usize {
        self.subscribers.iter().map(|(_, credits)| credits).sum()
    }

    fn credits(&self, subscriber: SubscriberId) -> usize {
        self.subscribers.iter().find(|(id, _)| *id == subscriber).map_or(0, |(_, c)| *c)
    }

    fn subscriber_count(&self) -> usize {
        self.subscribers.len()
    }

    fn dispatch(&mut self, mut events: Vec<T>, deliveries: &mut Deliveries<T>) -> Vec<T> {
        while !events.is_empty() {
            let Some((id, credits)) = self
                .subscribers
                .iter_mut()
                .rev()
                .max_by_key(|(_, credits)| *credits)
                .filter(|(_, credits)| *credits > 0)
            else {
                break;
            };
            let batch = take_front(&mut events, *credits);
            *credits -= batch.len();
            deliveries.push((*id, batch));
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscribed(ids: &[SubscriberId]) -> DemandDispatcher {
        let mut dispatcher = DemandDispatcher::new();
        for id in ids {
            Dispatcher::<u32>::subscribe(&mut dispatcher, *id, &DispatchOptions::default()).unwrap();
        }
        dispatcher
    }

    #[test]
    fn most_credits_first_and_leftover_returned() {
        let mut dispatcher = subscribed(&[1, 2]);
        Dispatcher::<u32>::ask(&mut dispatcher, 1, 3);
        Dispatcher::<u32>::ask(&mut dispatcher, 2, 2);
        let mut deliveries = Vec::new();
        let leftover = dispatcher.dispatch((0..7).collect(), &mut deliveries);
        assert_eq!(deliveries, vec![(1, vec![0, 1, 2]), (2, vec![3, 4])]);
        assert_eq!(leftover, vec![5, 6]);
        assert_eq!(Dispatcher::<u32>::allowance(&dispatcher), 0);
    }

    #[test]
    fn equal_credits_go_to_the_earliest_subscriber() {
        let mut dispatcher = subscribed(&[1, 2, 3]);
        for id in [3, 2, 1] {
            Dispatcher::<u32>::ask(&mut dispatcher, id, 2);
        }
        let mut deliveries = Vec::new();
        assert!(dispatcher.dispatch(vec![10, 11, 12], &mut deliveries).is_empty());
        assert_eq!(deliveries, vec![(1, vec![10, 11]), (2, vec![12])]);
    }

    #[test]
    fn cancelled_subscriber_gets_nothing() {
        let mut dispatcher = subscribed(&[1, 2]);
        Dispatcher::<u32>::ask(&mut dispatcher, 1, 5);
        Dispatcher::<u32>::ask(&mut dispatcher, 2, 5);
        Dispatcher::<u32>::cancel(&mut dispatcher, 1);
        let mut deliveries = Vec::new();
        let leftover = dispatcher.dispatch(vec![1, 2, 3, 4, 5, 6], &mut deliveries);
        assert_eq!(deliveries, vec![(2, vec![1, 2, 3, 4, 5])]);
        assert_eq!(leftover, vec![6]);
    }
}
