//! A receipt travelling with an event: whatever it holds is dropped when the
//! last copy of the event is, which is how a stage far upstream learns that
//! everything downstream has finished with the event (stored, logged, counted).
//!
//! The cut between parts of a scaled-out pipeline puts a JetStream ack in it:
//! a message is acked only when the tweet it carried is stored, so a crash
//! redelivers exactly what was not.

use std::fmt;
use std::sync::Arc;

/// Runs its holder's `Drop` once every copy of the event carrying it is gone.
#[derive(Clone, Default)]
pub struct Receipt(Option<Arc<dyn Send + Sync>>);

impl Receipt {
    /// A receipt holding `on_done`, dropped when the last copy of the receipt is.
    pub fn new(on_done: impl Send + Sync + 'static) -> Self {
        Receipt(Some(Arc::new(on_done)))
    }

    /// Whether anything waits for this event to finish.
    pub fn is_some(&self) -> bool {
        self.0.is_some()
    }
}

/// Receipts never make two events differ: equality is about the event's content.
impl PartialEq for Receipt {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl fmt::Debug for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_some() { "Receipt(pending)" } else { "Receipt(none)" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Count(Arc<AtomicUsize>);
    impl Drop for Count {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_holder_is_dropped_once_with_the_last_copy() {
        let done = Arc::new(AtomicUsize::new(0));
        let receipt = Receipt::new(Count(done.clone()));
        let copy = receipt.clone();
        drop(receipt);
        assert_eq!(done.load(Ordering::SeqCst), 0, "a copy is still in flight");
        drop(copy);
        assert_eq!(done.load(Ordering::SeqCst), 1);
        assert_eq!(Receipt::default(), Receipt::new(()), "receipts do not affect equality");
    }
}
