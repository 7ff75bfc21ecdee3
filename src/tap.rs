//! Taps: a sample of the events a stage emits, rendered as text for whoever
//! watches a running pipeline (`/tap/<stage>`), without slowing the stage.
//!
//! A stage's outlet checks one atomic flag per emitted batch; only while a
//! tap is attached does it sample events, render the kept ones and offer
//! them to each tap's small bounded channel. A full channel drops the event
//! and counts it: the watcher falls behind, never the stage.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

/// Turns one event into the text a tap carries (e.g. JSON).
pub type Render<T> = Arc<dyn Fn(&T) -> String + Send + Sync>;

/// What a tap takes: how many events at most, what share of them, how much it may hold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TapOptions {
    /// Stop after this many events (`None`: until the watcher leaves or the stage ends).
    pub limit: Option<u64>,
    /// Share of the emitted events to keep, in (0, 1]: 0.1 keeps one in ten.
    pub sample: f64,
    /// Rendered events the tap holds for a slow watcher before it drops.
    pub capacity: usize,
}

impl Default for TapOptions {
    fn default() -> Self {
        TapOptions { limit: None, sample: 1.0, capacity: 64 }
    }
}

impl TapOptions {
    /// Why these options cannot be used, if they cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.sample > 0.0 && self.sample <= 1.0) {
            return Err(format!("sample must be in (0, 1], got {}", self.sample));
        }
        if self.capacity == 0 {
            return Err("capacity must be at least 1".into());
        }
        if self.limit == Some(0) {
            return Err("limit must be at least 1".into());
        }
        Ok(())
    }
}

/// Keeps a steady share of events, spread evenly (deterministic: no randomness to test around).
#[derive(Debug, Clone, PartialEq)]
pub struct Sampler {
    rate: f64,
    credit: f64,
}

impl Sampler {
    /// Keeps `rate` of the events (in (0, 1]), the first one included.
    pub fn new(rate: f64) -> Self {
        let rate = rate.clamp(f64::MIN_POSITIVE, 1.0);
        Sampler { rate, credit: 1.0 - rate }
    }

    /// Whether to keep the next event.
    pub fn keep(&mut self) -> bool {
        self.credit += self.rate;
        if self.credit >= 1.0 - 1e-9 {
            self.credit -= 1.0;
            true
        } else {
            false
        }
    }
}

struct TapSink<T> {
    render: Render<T>,
    sampler: Sampler,
    remaining: Option<u64>,
    sender: mpsc::Sender<String>,
    dropped: Arc<AtomicU64>,
}

impl<T> TapSink<T> {
    /// Offers a batch; false once this tap is done (limit reached or watcher gone).
    fn offer(&mut self, events: &[T]) -> bool {
        for event in events {
            if !self.sampler.keep() {
                continue;
            }
            match self.sender.try_reserve() {
                Ok(permit) => permit.send((self.render)(event)),
                Err(mpsc::error::TrySendError::Full(())) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err(mpsc::error::TrySendError::Closed(())) => return false,
            }
            if let Some(remaining) = &mut self.remaining {
                *remaining -= 1;
                if *remaining == 0 {
                    return false;
                }
            }
        }
        true
    }
}

struct Sinks<T> {
    ended: bool,
    taps: Vec<TapSink<T>>,
}

/// Where taps attach to one stage's outlet.
pub(crate) struct TapSlot<T> {
    attached: AtomicBool,
    sinks: Mutex<Sinks<T>>,
}

impl<T> Default for TapSlot<T> {
    fn default() -> Self {
        TapSlot {
            attached: AtomicBool::new(false),
            sinks: Mutex::new(Sinks { ended: false, taps: Vec::new() }),
        }
    }
}

impl<T> TapSlot<T> {
    fn sinks(&self) -> MutexGuard<'_, Sinks<T>> {
        self.sinks.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Called per emitted batch: one atomic load while nobody watches.
    #[inline]
    pub(crate) fn offer(&self, events: &[T]) {
        if self.attached.load(Ordering::Relaxed) {
            self.offer_attached(events);
        }
    }

    #[cold]
    fn offer_attached(&self, events: &[T]) {
        let mut sinks = self.sinks();
        sinks.taps.retain_mut(|tap| tap.offer(events));
        self.attached.store(!sinks.taps.is_empty(), Ordering::Relaxed);
    }

    /// Attaches a tap; fails once the stage has ended.
    pub(crate) fn attach(&self, render: Render<T>, options: TapOptions) -> Result<TapStream, String> {
        options.validate()?;
        let mut sinks = self.sinks();
        if sinks.ended {
            return Err("the stage has ended".into());
        }
        let (sender, receiver) = mpsc::channel(options.capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        sinks.taps.push(TapSink {
            render,
            sampler: Sampler::new(options.sample),
            remaining: options.limit,
            sender,
            dropped: dropped.clone(),
        });
        self.attached.store(true, Ordering::Relaxed);
        Ok(TapStream { receiver, dropped })
    }

    /// The stage emits no more: every tap's stream ends once read.
    pub(crate) fn end(&self) {
        let mut sinks = self.sinks();
        sinks.ended = true;
        sinks.taps.clear();
        self.attached.store(false, Ordering::Relaxed);
    }
}

/// The events a tap kept, rendered, as the watcher reads them.
#[derive(Debug)]
pub struct TapStream {
    receiver: mpsc::Receiver<String>,
    dropped: Arc<AtomicU64>,
}

impl TapStream {
    /// The next event; `None` when the limit was reached or the stage ended (and all was read).
    pub async fn next(&mut self) -> Option<String> {
        self.receiver.recv().await
    }

    /// Events kept by the sampler but dropped because this stream was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(rate: f64, events: usize) -> Vec<usize> {
        let mut sampler = Sampler::new(rate);
        (0..events).filter(|_| sampler.keep()).collect()
    }

    #[test]
    fn the_sampler_keeps_an_even_share_starting_with_the_first() {
        assert_eq!(kept(1.0, 5), vec![0, 1, 2, 3, 4]);
        assert_eq!(kept(0.25, 12), vec![0, 4, 8]);
        assert_eq!(kept(0.5, 6), vec![0, 2, 4]);
        let share = kept(0.1, 100_000).len();
        assert_eq!(share, 10_000);
    }

    #[test]
    fn options_out_of_range_are_refused_with_the_reason() {
        let bad = |options: TapOptions| options.validate().expect_err("refused");
        assert!(bad(TapOptions { sample: 0.0, ..Default::default() }).contains("sample"));
        assert!(bad(TapOptions { sample: 1.5, ..Default::default() }).contains("sample"));
        assert!(bad(TapOptions { sample: f64::NAN, ..Default::default() }).contains("sample"));
        assert!(bad(TapOptions { limit: Some(0), ..Default::default() }).contains("limit"));
        assert!(bad(TapOptions { capacity: 0, ..Default::default() }).contains("capacity"));
        assert!(TapOptions::default().validate().is_ok());
    }

    fn render() -> Render<u32> {
        Arc::new(|n: &u32| n.to_string())
    }

    #[tokio::test]
    async fn a_full_tap_drops_and_counts_and_a_limit_ends_the_stream() {
        let slot = TapSlot::<u32>::default();
        slot.offer(&[1, 2, 3]); // nobody attached: nothing happens
        let options = TapOptions { limit: Some(5), sample: 1.0, capacity: 2 };
        let mut stream = slot.attach(render(), options).expect("attached");
        slot.offer(&[10, 11, 12, 13]);
        assert_eq!(stream.dropped(), 2, "room for two, two dropped");
        assert_eq!(stream.next().await.as_deref(), Some("10"));
        assert_eq!(stream.next().await.as_deref(), Some("11"));
        slot.offer(&[20, 21, 22]);
        assert_eq!(stream.next().await.as_deref(), Some("20"));
        assert_eq!(stream.next().await.as_deref(), Some("21"));
        slot.offer(&[30, 31]);
        assert_eq!(stream.next().await.as_deref(), Some("30"), "the fifth event sent");
        assert_eq!(stream.next().await, None, "the limit ends the stream");
        assert!(!slot.attached.load(Ordering::Relaxed), "a finished tap detaches");
    }

    #[tokio::test]
    async fn a_gone_watcher_detaches_and_an_ended_stage_ends_every_stream() {
        let slot = TapSlot::<u32>::default();
        let gone = slot.attach(render(), TapOptions::default()).expect("attached");
        let mut stays = slot.attach(render(), TapOptions::default()).expect("attached");
        drop(gone);
        slot.offer(&[1]);
        assert_eq!(slot.sinks().taps.len(), 1, "the closed tap was removed");
        slot.end();
        assert_eq!(stays.next().await.as_deref(), Some("1"));
        assert_eq!(stays.next().await, None);
        assert!(slot.attach(render(), TapOptions::default()).expect_err("ended").contains("ended"));
    }
}
