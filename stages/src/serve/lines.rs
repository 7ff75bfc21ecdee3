//! `log_lines`: the push source that takes the logger's lines from their
//! bounded channel and broadcasts them to every watching session.

use stageflow::{Emitter, Flow, Producer};
use tokio::sync::mpsc;

use super::protocol::TWEET_PREFIX;

/// The id of the broadcast stage of logger lines that sessions subscribe to.
pub const LINES_STAGE: &str = "log_lines";

/// Logger lines waiting for the `log_lines` stage to take them.
pub(crate) const LOGGER_CHANNEL: usize = 1024;
/// Lines `log_lines` keeps when no session has credits (the newest win; drops are counted).
pub(crate) const LINES_BUFFER: usize = 1000;
/// Most lines one `produce` call of `log_lines` takes from the channel.
const LINES_BATCH: usize = 256;

/// Takes the logger's lines as they come and emits them as `tweet: <text>`.
/// Dropping it drops the channel's receiver, so a logger still draining after
/// shutdown discards its lines instead of waiting for room.
pub(crate) struct LineSource {
    pub(crate) lines: Option<mpsc::Receiver<String>>,
}

impl Producer for LineSource {
    type Out = String;
    const PUSH: bool = true;

    async fn produce(&mut self, _demand: usize, out: &mut Emitter<String>) -> Flow {
        // A restarted source finds the receiver gone: it ends, and so do the sessions' subscriptions.
        let Some(lines) = self.lines.as_mut() else { return Flow::Done };
        let Some(line) = lines.recv().await else { return Flow::Done };
        out.emit(format!("{TWEET_PREFIX}{line}"));
        while out.len() < LINES_BATCH {
            match lines.try_recv() {
                Ok(line) => out.emit(format!("{TWEET_PREFIX}{line}")),
                Err(_) => break,
            }
        }
        Flow::Continue
    }
}
