//! The receiving side of a stage: its upstream subscriptions and their credits.

use std::sync::Arc;

use crate::demand::{DemandLedger, DemandMode};
use crate::dispatcher::SubscriberId;
use crate::link::{CancelMode, DemandHandle, EndReason, InboxReceiver, Link};
use crate::metrics::{self, StageMetrics};

pub(crate) struct Upstream {
    pub(crate) link: Arc<Link>,
    ledger: DemandLedger,
    mode: DemandMode,
    cancel: CancelMode,
    received: u64,
}

/// What the stage should do after an upstream ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AfterEnd {
    KeepRunning,
    Fail(String),
}

pub(crate) struct Inlet<T> {
    pub(crate) inbox: InboxReceiver<T>,
    upstreams: Vec<Upstream>,
    metrics: Arc<StageMetrics>,
    /// Set when a permanent upstream ended: the stage ends once none is left.
    pub(crate) permanent_ended: bool,
}

impl<T> Inlet<T> {
    pub(crate) fn new(inbox: InboxReceiver<T>, metrics: Arc<StageMetrics>) -> Self {
        Inlet { inbox, upstreams: Vec::new(), metrics, permanent_ended: false }
    }

    pub(crate) fn add(
        &mut self,
        link: Arc<Link>,
        ledger: DemandLedger,
        mode: DemandMode,
        cancel: CancelMode,
    ) {
        self.upstreams.push(Upstream { link, ledger, mode, cancel, received: 0 });
    }

    pub(crate) fn manual_handles(&self) -> Vec<DemandHandle> {
        self.upstreams
            .iter()
            .filter(|u| u.mode == DemandMode::Manual)
            .map(|u| DemandHandle { link: u.link.clone() })
            .collect()
    }

    /// Credits granted (automatic mode) for events not yet received.
    /// Events a stage joining several producers may hold in advance of
    /// downstream demand: the sum of its automatic subscriptions'
    /// `max_demand`, as GenStage gives every subscription its window. A join
    /// needs events from each producer to emit anything, and producers fed
    /// by one broadcast move only when every subscriber holds credits; held
    /// strictly to downstream demand, one producer could be left without
    /// credits and the whole graph would stall. A stage with one producer
    /// needs no such window: it asks only as its own consumers ask.
    pub(crate) fn window(&self) -> usize {
        let automatic = self.upstreams.iter().filter(|u| u.mode == DemandMode::Automatic);
        if automatic.clone().count() < 2 {
            return 0;
        }
        automatic.map(|u| u.ledger.bounds().max_demand()).sum()
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.upstreams.iter().map(|u| u.ledger.in_flight()).sum()
    }

    /// Largest number of events to hand a callback at once for this link.
    pub(crate) fn chunk(&self, link: SubscriberId) -> usize {
        match self.upstreams.iter().find(|u| u.link.id == link) {
            Some(u) if u.mode == DemandMode::Automatic => u.ledger.bounds().chunk(),
            _ => usize::MAX,
        }
    }

    /// Asks upstream for up to `budget` credits, per each link's bounds. The
    /// subscription holding the fewest credits asks first, so a stage that
    /// needs events from every upstream (a join) never starves one of them.
    pub(crate) fn top_up(&mut self, mut budget: usize) {
        if self.upstreams.len() > 1 {
            self.upstreams.sort_by_key(|u| u.ledger.outstanding());
        }
        for upstream in &mut self.upstreams {
            if budget == 0 {
                break;
            }
            if upstream.mode != DemandMode::Automatic {
                continue;
            }
            let ask = upstream.ledger.top_up(budget);
            budget -= ask;
            upstream.link.ask(ask);
        }
        let asked: usize = self.upstreams.iter().map(|u| u.ledger.in_flight()).sum();
        metrics::set(&self.metrics.demand_asked, asked);
    }

    /// Records a batch arriving and checks it against the credits granted.
    pub(crate) fn received(&mut self, link: SubscriberId, count: usize) {
        metrics::add(&self.metrics.events_in, count);
        let Some(upstream) = self.upstreams.iter_mut().find(|u| u.link.id == link) else {
            return;
        };
        upstream.received += count as u64;
        let within = match upstream.mode {
            DemandMode::Automatic => upstream.ledger.received(count),
            DemandMode::Manual => upstream.received <= upstream.link.granted(),
        };
        if !within {
            metrics::add(&self.metrics.credit_violations, count);
        }
    }

    pub(crate) fn processed(&mut self, link: SubscriberId, count: usize) {
        if let Some(upstream) = self.upstreams.iter_mut().find(|u| u.link.id == link) {
            upstream.ledger.processed(count);
        }
    }

    /// Forgets an upstream that ended and says whether the stage goes on.
    pub(crate) fn ended(&mut self, link: SubscriberId, reason: &EndReason) -> AfterEnd {
        let Some(index) = self.upstreams.iter().position(|u| u.link.id == link) else {
            return AfterEnd::KeepRunning;
        };
        let upstream = self.upstreams.swap_remove(index);
        match (upstream.cancel, reason) {
            (CancelMode::Permanent | CancelMode::Transient, EndReason::Failed(why)) => {
                AfterEnd::Fail(format!("producer '{}' failed: {why}", upstream.link.producer))
            }
            (CancelMode::Permanent, _) => {
                self.permanent_ended = true;
                AfterEnd::KeepRunning
            }
            _ => AfterEnd::KeepRunning,
        }
    }

    /// Whether shutdown can end this stage: only one with no upstream left or
    /// a non-permanent one does not end with its producers anyway.
    pub(crate) fn waits_for_shutdown(&self) -> bool {
        self.upstreams.is_empty() || self.upstreams.iter().any(|u| u.cancel != CancelMode::Permanent)
    }

    /// Whether the stage has nothing more to receive and should flush and end.
    pub(crate) fn finished(&self, shutting_down: bool) -> bool {
        self.upstreams.is_empty() && (self.permanent_ended || shutting_down)
    }
}
