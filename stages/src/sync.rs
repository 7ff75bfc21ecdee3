//! The one poison-tolerant lock of the domain crate.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks a mutex that holds plain data, whether or not a holder panicked:
/// a stage that panics is restarted, and what it left behind stays readable
/// (counters, queues), so a poisoned lock is no reason to fail a second time.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_mutex_still_gives_its_data() {
        let mutex = Mutex::new(5);
        let _ = std::panic::catch_unwind(|| {
            let _guard = mutex.lock().unwrap();
            panic!("poison it");
        });
        assert!(mutex.is_poisoned());
        assert_eq!(*lock(&mutex), 5);
    }
}
