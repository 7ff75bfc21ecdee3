//! The end of a pipeline's data, for producers that follow it
//! ([`crate::Producer::FOLLOWS_SOURCES`]): statistics, timers, anything that
//! has nothing to say once the data has gone through.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::watch;

/// Which stages the followers wait for: every stage that is neither a
/// follower nor fed, directly or through other stages, by one (those end
/// after the followers, as their producers end). `upstreams(i)` lists the
/// stages stage `i` subscribes to; the graph is acyclic.
pub(crate) fn waited_for(followers: &[bool], upstreams: &dyn Fn(usize) -> Vec<usize>) -> Vec<bool> {
    let mut after_follower = followers.to_vec();
    // Each pass marks at least one more stage or ends: at most one pass per stage.
    loop {
        let mut changed = false;
        for stage in 0..after_follower.len() {
            if !after_follower[stage] && upstreams(stage).iter().any(|&upstream| after_follower[upstream]) {
                after_follower[stage] = true;
                changed = true;
            }
        }
        if !changed {
            return after_follower.iter().map(|after| !after).collect();
        }
    }
}

/// Counts down the stages the followers wait for and tells the followers
/// when the last one has ended.
#[derive(Clone)]
pub(crate) struct DataEnd {
    running: Arc<AtomicUsize>,
    ended: Arc<watch::Sender<bool>>,
}

impl DataEnd {
    /// A countdown over `count` stages.
    pub(crate) fn new(count: usize) -> Self {
        DataEnd { running: Arc::new(AtomicUsize::new(count)), ended: Arc::new(watch::channel(count == 0).0) }
    }

    /// What a follower watches.
    pub(crate) fn watch(&self) -> watch::Receiver<bool> {
        self.ended.subscribe()
    }

    /// One waited-for stage has ended (normally or not).
    pub(crate) fn stage_ended(&self) {
        if self.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.ended.send_replace(true);
        }
    }
}

/// Waits until the data has ended; forever for a producer that does not
/// follow it (`None`).
pub(crate) async fn data_ended(watch: &mut Option<watch::Receiver<bool>>) {
    match watch {
        // A closed channel means the pipeline is being torn down: stop too.
        Some(watch) => {
            let _ = watch.wait_for(|ended| *ended).await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followers_wait_for_everything_not_downstream_of_a_follower() {
        // 0 source -> 1 sink; 2 follower -> 3 its consumer; 4 joins 1's source and the follower.
        let followers = [false, false, true, false, false];
        let upstreams = |stage: usize| match stage {
            1 => vec![0],
            3 => vec![2],
            4 => vec![0, 2],
            _ => vec![],
        };
        assert_eq!(waited_for(&followers, &upstreams), vec![true, true, false, false, false]);
        assert_eq!(
            waited_for(&[false, false], &|stage| if stage == 1 { vec![0] } else { vec![] }),
            vec![true, true]
        );
    }

    #[test]
    fn the_countdown_fires_once_the_last_stage_ends() {
        let end = DataEnd::new(2);
        let watch = end.watch();
        end.stage_ended();
        assert!(!*watch.borrow());
        end.clone().stage_ended();
        assert!(*watch.borrow());
    }
}
