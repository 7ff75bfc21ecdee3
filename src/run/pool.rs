//! The task of a pooled stage: routes events to workers and gathers their output.

use std::collections::{HashMap, VecDeque};

use tokio::sync::mpsc;

use super::inlet::{AfterEnd, Inlet};
use super::outlet::Outlet;
use super::processor::{Supervised, emit, subscribe, upstream_budget};
use super::{Control, Factory, TaskContext, shutdown_requested};
use crate::StageError;
use crate::dispatcher::SubscriberId;
use crate::failure::FailurePolicy;
use crate::link::{EndReason, Inbox};
use crate::metrics;
use crate::pool::{PoolConfig, Routing, autoscale_target};
use crate::stage::ProducerConsumer;

enum Report<O> {
    /// A chunk of `events` events of `link` was handled; `slow` is the worker's
    /// latest callback timing, which sizes the next chunks.
    Processed {
        worker: usize,
        link: SubscriberId,
        events: usize,
        out: Vec<O>,
        error: Option<StageError>,
        slow: bool,
    },
    Exited {
        out: Vec<O>,
        error: Option<StageError>,
    },
}

struct Worker<I> {
    id: usize,
    queue: mpsc::Sender<(SubscriberId, Vec<I>)>,
    /// Chunks sent and not yet reported back.
    load: usize,
}

async fn run_worker<P: ProducerConsumer>(
    factory: Factory<P>,
    failure: Option<FailurePolicy<P::In>>,
    worker: usize,
    mut queue: mpsc::Receiver<(SubscriberId, Vec<P::In>)>,
    reports: mpsc::Sender<Report<P::Out>>,
    context: TaskContext,
) {
    let mut supervised = Supervised::new(factory, context, Vec::new(), failure);
    while let Some((link, chunk)) = queue.recv().await {
        let count = chunk.len();
        let mut events = supervised.events(chunk);
        let (mut out, mut error) = (Vec::new(), None);
        // A panic leaves the events after the one that panicked in the
        // chunk, for the restarted stage.
        while events.remaining_in_batch() > 0 {
            let remaining = events.remaining_in_batch();
            match supervised.handle_chunk(&mut events, remaining).await {
                Ok((_, emitted)) if out.is_empty() => out = emitted,
                Ok((_, emitted)) => out.extend(emitted),
                Err(failed) => {
                    error = Some(failed);
                    break;
                }
            }
        }
        let failed = error.is_some();
        let slow = supervised.is_slow();
        let report = Report::Processed { worker, link, events: count, out, error, slow };
        if reports.send(report).await.is_err() || failed {
            return;
        }
    }
    // Queue closed: scaled down or draining. Everything queued was handled.
    let report = match supervised.flush().await {
        Ok(out) => Report::Exited { out, error: None },
        Err(error) => Report::Exited { out: Vec::new(), error: Some(error) },
    };
    let _ = reports.send(report).await;
}

struct Pool<P: ProducerConsumer> {
    factory: Factory<P>,
    failure: Option<FailurePolicy<P::In>>,
    config: PoolConfig,
    context: TaskContext,
    workers: Vec<Worker<P::In>>,
    /// Where each worker id is in `workers`, so a report finds its worker
    /// without a scan (a pool may have thousands, e.g. sleeping loggers).
    positions: HashMap<usize, usize>,
    running: usize,
    next_id: usize,
    next_turn: usize,
    /// Whether the workers' callbacks are slow (as last reported): a slow
    /// stage's events go out one by one, so each waits for the first free
    /// worker; a fast stage's in chunks, so a worker wakes once per chunk.
    slow: bool,
    /// Events received and not yet handed to a worker, in arrival order;
    /// bounded by the upstream credits, like everything the pool holds.
    backlog: VecDeque<(SubscriberId, P::In)>,
    reports: mpsc::Sender<Report<P::Out>>,
}

/// Chunks a worker holds at most (one in progress, one waiting), so the
/// backlog stays with the pool and a worker added by scaling up gets work
/// at once.
const WORKER_QUEUE: usize = 2;

/// How many backlog events the next chunk for a worker takes: one for a slow
/// stage; for a fast one, an even share of the backlog over the workers, so
/// every worker gets some and none is woken per event.
fn chunk_len(slow: bool, backlog: usize, workers: usize) -> usize {
    if slow { 1 } else { backlog.div_ceil(workers.max(1)).max(1) }
}

impl<P: ProducerConsumer> Pool<P> {
    fn spawn_worker(&mut self) {
        let (queue, receiver) = mpsc::channel(WORKER_QUEUE);
        let id = self.next_id;
        self.next_id += 1;
        tokio::spawn(run_worker(
            self.factory.clone(),
            self.failure.clone(),
            id,
            receiver,
            self.reports.clone(),
            self.context.clone(),
        ));
        self.positions.insert(id, self.workers.len());
        self.workers.push(Worker { id, queue, load: 0 });
        self.running += 1;
        metrics::set(&self.context.metrics.workers, self.workers.len());
    }

    /// Grows or shrinks to `target`. A removed worker keeps its queue and
    /// finishes it before it exits; it only stops getting new events.
    fn resize(&mut self, target: usize) {
        while self.workers.len() < target {
            self.spawn_worker();
        }
        if self.workers.len() > target {
            // The idlest go: busiest first, then cut the tail.
            self.workers.sort_by_key(|worker| std::cmp::Reverse(worker.load));
            self.workers.truncate(target);
            self.positions =
                self.workers.iter().enumerate().map(|(index, worker)| (worker.id, index)).collect();
            self.next_turn = 0;
        }
        metrics::set(&self.context.metrics.workers, self.workers.len());
    }

    /// The worker for the next event among those with room, if any.
    fn choose(&mut self) -> Option<usize> {
        let count = self.workers.len();
        let has_room = |worker: &Worker<P::In>| worker.load < WORKER_QUEUE;
        match self.config.routing {
            Routing::RoundRobin => {
                let index = (1..=count)
                    .map(|step| (self.next_turn + step) % count)
                    .find(|&index| has_room(&self.workers[index]))?;
                self.next_turn = index;
                Some(index)
            }
            Routing::LeastLoaded => (0..count)
                .filter(|&index| has_room(&self.workers[index]))
                .min_by_key(|&index| self.workers[index].load),
        }
    }

    /// Hands backlog events to workers with room, in order, in chunks of one subscription's events.
    async fn dispatch(&mut self) {
        while let Some(&(link, _)) = self.backlog.front() {
            let Some(index) = self.choose() else { return };
            let wanted = chunk_len(self.slow, self.backlog.len(), self.workers.len());
            let mut chunk = Vec::with_capacity(wanted);
            while chunk.len() < wanted
                && let Some((_, event)) = self.backlog.pop_front_if(|(from, _)| *from == link)
            {
                chunk.push(event);
            }
            let worker = &mut self.workers[index];
            worker.load += 1;
            // Never waits: a worker's queue has room for WORKER_QUEUE chunks and `load` counts them.
            let _ = worker.queue.send((link, chunk)).await;
        }
    }

    fn finished_one(&mut self, worker: usize) {
        if let Some(slot) = self.positions.get(&worker).map(|&index| &mut self.workers[index]) {
            slot.load = slot.load.saturating_sub(1);
        }
    }
}

/// Runs a pooled stage: its workers are made by the factory and share the failure policy.
pub(crate) async fn run_pool<P: ProducerConsumer>(
    (factory, failure): (Factory<P>, Option<FailurePolicy<P::In>>),
    config: PoolConfig,
    queue_capacity: usize,
    mut inlet: Inlet<P::In>,
    mut outlet: Option<Outlet<P::Out>>,
    mut control: mpsc::Receiver<Control<P::Out>>,
    context: TaskContext,
) -> Result<(), StageError> {
    let stage_id = context.stage.clone();
    let mut shutdown = context.shutdown.clone();
    let (reports, mut report_rx) = mpsc::channel(queue_capacity + config.max);
    let mut pool = Pool {
        factory,
        failure,
        config,
        context: context.clone(),
        workers: Vec::new(),
        positions: HashMap::new(),
        running: 0,
        next_id: 0,
        next_turn: 0,
        // Until a worker reports its timing: a slow stage handed a chunk
        // would keep it from the workers autoscaling adds.
        slow: true,
        backlog: VecDeque::new(),
        reports,
    };
    pool.resize(config.initial_size());
    let mut frame = config.autoscale.map(|autoscale| {
        tokio::time::interval_at(tokio::time::Instant::now() + autoscale.frame, autoscale.frame)
    });
    let mut frame_events: u64 = 0;
    let mut in_pool: usize = 0;
    let wake = outlet.as_ref().map(|o| o.wake.clone());
    let mut shutting_down = false;
    let mut inbox_open = true;
    let failure = loop {
        if let Some(outlet) = &mut outlet {
            outlet.collect_asks();
            outlet.pump();
        }
        inlet.top_up(upstream_budget(outlet.as_ref(), &inlet, in_pool));
        if in_pool == 0 && inlet.finished(shutting_down) {
            break None;
        }
        tokio::select! {
            biased;
            Some(report) = report_rx.recv() => match report {
                Report::Processed { worker, link, events, out, error, slow } => {
                    in_pool -= events;
                    pool.slow = slow;
                    pool.finished_one(worker);
                    pool.dispatch().await;
                    inlet.processed(link, events);
                    emit(&mut outlet, out);
                    if let Some(error) = error {
                        break Some(error);
                    }
                }
                Report::Exited { out, error } => {
                    pool.running -= 1;
                    emit(&mut outlet, out);
                    if let Some(error) = error {
                        break Some(error);
                    }
                }
            },
            message = inlet.inbox.recv(), if inbox_open => match message {
                Some(Inbox::Events { link, batch }) => {
                    inlet.received(link, batch.len());
                    frame_events += batch.len() as u64;
                    in_pool += batch.len();
                    pool.backlog.extend(batch.into_iter().map(|event| (link, event)));
                    pool.dispatch().await;
                }
                Some(Inbox::Done { link, reason }) => {
                    if let AfterEnd::Fail(why) = inlet.ended(link, &reason) {
                        break Some(StageError::new(&stage_id, why));
                    }
                }
                // Every producer is gone; a transient or temporary stage
                // still waits for shutdown.
                None => inbox_open = false,
            },
            _ = async { wake.as_ref().expect("guarded").notified().await }, if wake.is_some() => {}
            Some(Control::Subscribe(subscriber, reply)) = control.recv() => {
                let _ = reply.send(subscribe(&mut outlet, subscriber, &stage_id));
            }
            _ = async { frame.as_mut().expect("guarded").tick().await }, if frame.is_some() => {
                let autoscale = config.autoscale.expect("frame implies autoscale");
                let target = autoscale_target(
                    frame_events,
                    in_pool,
                    autoscale.frame,
                    autoscale.events_per_worker,
                    config.min,
                    config.max,
                );
                frame_events = 0;
                pool.resize(target);
                pool.dispatch().await;
            }
            _ = shutdown_requested(&mut shutdown), if !shutting_down && inlet.waits_for_shutdown() => shutting_down = true,
        }
    };
    pool.workers.clear();
    pool.positions.clear();
    if let Some(error) = failure {
        if let Some(outlet) = &mut outlet {
            outlet.finish(EndReason::Failed(error.message.clone()));
        }
        return Err(error);
    }
    while pool.running > 0 {
        let report = tokio::select! {
            report = report_rx.recv() => report,
            Some(Control::Subscribe(subscriber, reply)) = control.recv() => {
                let _ = reply.send(subscribe(&mut outlet, subscriber, &stage_id));
                continue;
            }
        };
        match report {
            Some(Report::Exited { out, error }) => {
                pool.running -= 1;
                emit(&mut outlet, out);
                if let Some(error) = error {
                    return Err(error);
                }
            }
            Some(Report::Processed { out, .. }) => emit(&mut outlet, out),
            None => break,
        }
    }
    metrics::set(&context.metrics.workers, 0);
    if let Some(outlet) = &mut outlet {
        outlet.drain(&mut control).await;
        outlet.finish(EndReason::Normal);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::chunk_len;

    #[test]
    fn a_slow_stage_gets_events_one_by_one_and_a_fast_one_an_even_share() {
        assert_eq!(chunk_len(true, 3000, 1), 1, "one sleeping worker must not hold the backlog");
        assert_eq!(chunk_len(false, 1000, 4), 250);
        assert_eq!(chunk_len(false, 1001, 4), 251, "the last share is the smaller");
        assert_eq!(chunk_len(false, 3, 4), 1, "never an empty chunk");
        assert_eq!(chunk_len(false, 500, 1), 500);
    }
}
