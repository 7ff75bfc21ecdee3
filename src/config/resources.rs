//! Resources: what the stages of one pipeline share, kept by type in its build context.
//!
//! A kind that needs something beyond its settings — the pipeline's
//! statistics hub, the registry of its sinks' metrics, a channel to write
//! into — asks the [`BuildContext`](super::BuildContext) for it by type
//! instead of reaching for a process-global map, so two pipelines in one
//! process (the telnet server, tests) never share by accident, and whoever
//! builds the pipeline can hand in or read back the same value:
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use stageflow::config::Resources;
//!
//! #[derive(Default)]
//! struct Counter(AtomicU64);
//!
//! let resources = Resources::default();
//! resources.get_or_default::<Counter>().0.fetch_add(1, Ordering::Relaxed);
//! resources.get_or_default::<Counter>().0.fetch_add(1, Ordering::Relaxed);
//! assert_eq!(resources.get::<Counter>().unwrap().0.load(Ordering::Relaxed), 2);
//! assert_eq!(Resources::default().get::<Counter>().map(|c| c.0.load(Ordering::Relaxed)), None);
//! ```

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

type Entry = Arc<dyn Any + Send + Sync>;

/// A map from a type to the one shared value of it; clones share the map.
#[derive(Clone, Default)]
pub struct Resources {
    map: Arc<Mutex<HashMap<TypeId, Entry>>>,
}

impl Resources {
    /// Puts `value` in, replacing an earlier value of its type.
    pub fn insert<T: Any + Send + Sync>(&self, value: T) -> Arc<T> {
        let value = Arc::new(value);
        self.entries().insert(TypeId::of::<T>(), value.clone());
        value
    }

    /// The value of type `T`, if one was put in.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let entry = self.entries().get(&TypeId::of::<T>()).cloned()?;
        Some(entry.downcast::<T>().expect("stored under its own type id"))
    }

    /// The value of type `T`, made with `make` by the first to ask.
    pub fn get_or_insert_with<T: Any + Send + Sync>(&self, make: impl FnOnce() -> T) -> Arc<T> {
        let entry = self.entries().entry(TypeId::of::<T>()).or_insert_with(|| Arc::new(make())).clone();
        entry.downcast::<T>().expect("stored under its own type id")
    }

    /// The value of type `T`, its default made by the first to ask.
    pub fn get_or_default<T: Any + Send + Sync + Default>(&self) -> Arc<T> {
        self.get_or_insert_with(T::default)
    }

    /// Takes the value of type `T` out, so that only other holders of it keep it alive.
    pub fn remove<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let entry = self.entries().remove(&TypeId::of::<T>())?;
        Some(entry.downcast::<T>().expect("stored under its own type id"))
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<TypeId, Entry>> {
        // A panic elsewhere while holding the lock leaves the map itself consistent.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Resources({} entries)", self.entries().len())
    }
}
