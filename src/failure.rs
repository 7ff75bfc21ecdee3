//! What a stage does with an event its callback panicked on: try it again
//! (`max_attempts`), then hand it to a dead-letter handler instead of only
//! counting it as lost.
//!
//! Without a policy a panic loses the event the callback held (counted in
//! `lost`) and the hot path pays nothing. With one, the stage keeps a copy
//! of the event being handled (the policy's `keep` function clones it), so
//! after a panic the restarted stage gets the same event again, up to
//! `max_attempts` tries in all; an event that panicked on every try goes to
//! the dead-letter handler with the last panic's message (counted in
//! `dead_lettered`), or, without a handler, is lost as before. Every panic
//! still counts as a restart, under the stage's restart policy.
//!
//! After a panic, each event being handled is tried again alone, so an
//! event is handled at most once per success: a callback that took a whole
//! batch with `take_batch` and panicked partway gets only the events it had
//! not said it [`handled`](crate::Events::handled), each in a call of its
//! own, and only the ones that panic on every try are dead-lettered (each
//! with its own last panic). A batch callback that does not call `handled`
//! has its whole batch tried again, one event at a time.

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;

/// An event a stage gave up on, with why.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter<T> {
    /// The stage that panicked on it.
    pub stage: String,
    /// The last panic's message.
    pub error: String,
    /// How many times it was tried.
    pub attempts: u32,
    /// The event.
    pub event: T,
}

/// Copies an event before a callback takes it; `None` when it cannot be copied.
pub type KeepFn<T> = Arc<dyn Fn(&T) -> Option<T> + Send + Sync>;

/// Takes a dead letter somewhere durable; the stage waits for it before going on.
pub type DeadLetterFn<T> = Arc<dyn Fn(DeadLetter<T>) -> BoxFuture<'static, ()> + Send + Sync>;

/// Retries and dead letters of one stage (see the [module docs](self)).
pub struct FailurePolicy<T> {
    pub(crate) max_attempts: u32,
    pub(crate) keep: KeepFn<T>,
    pub(crate) dead_letter: Option<DeadLetterFn<T>>,
}

impl<T> Clone for FailurePolicy<T> {
    fn clone(&self) -> Self {
        FailurePolicy {
            max_attempts: self.max_attempts,
            keep: self.keep.clone(),
            dead_letter: self.dead_letter.clone(),
        }
    }
}

impl<T> fmt::Debug for FailurePolicy<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailurePolicy")
            .field("max_attempts", &self.max_attempts)
            .field("dead_letter", &self.dead_letter.is_some())
            .finish()
    }
}

impl<T: Clone + Send + 'static> FailurePolicy<T> {
    /// Tries each event up to `max_attempts` times (at least 1), then counts it as lost.
    pub fn new(max_attempts: u32) -> Self {
        FailurePolicy::with_keep(max_attempts, Arc::new(|event: &T| Some(event.clone())))
    }
}

impl<T: Send + 'static> FailurePolicy<T> {
    /// Like [`FailurePolicy::new`], copying events with `keep` (for events that are not `Clone`).
    pub fn with_keep(max_attempts: u32, keep: KeepFn<T>) -> Self {
        FailurePolicy { max_attempts: max_attempts.max(1), keep, dead_letter: None }
    }

    /// Hands events that panicked on every try to `handler` instead of losing them.
    pub fn dead_letter(mut self, handler: DeadLetterFn<T>) -> Self {
        self.dead_letter = Some(handler);
        self
    }

    /// Tries per event, at least 1.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }
}
