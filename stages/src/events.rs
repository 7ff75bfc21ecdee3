//! Every type of event that flows between the domain's stage kinds, in one
//! place, each with the name `stageflow kinds` and type errors show.
//!
//! ```text
//! sse, csv_tweets ─SseEvent─▶ tweets ─TweetFlow─▶ sentiment, engagement ─TweetScore─▶ aggregator
//! aggregator ─ScoredTweet─▶ batcher ─Batch─▶ sinks        statistics ─StatsFrame─▶ broker_stats
//! ```
//!
//! Plain numbers (`u64`) and lines of text (`String`, "text") are named by the engine.

use stageflow::config::Event;

pub use crate::analysis::flow::{TweetFlow, TweetScore};
pub use crate::analysis::statistics::StatsFrame;
pub use crate::scored::ScoredTweet;
pub use crate::sse::SseEvent;
pub use crate::storage::batcher::Batch;

impl Event for SseEvent {
    const NAME: &'static str = "SSE tweet";
}

impl Event for TweetFlow {
    const NAME: &'static str = "tweet flow";
}

impl Event for TweetScore {
    const NAME: &'static str = "tweet score";
}

impl Event for ScoredTweet {
    const NAME: &'static str = "scored tweet";
}

impl Event for StatsFrame {
    const NAME: &'static str = "stats frame";
}

impl Event for Batch {
    const NAME: &'static str = "batch of scored tweets";
}
