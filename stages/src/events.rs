//! Every type of event that flows between the domain's stage kinds, in one
//! place, each with the name `stageflow kinds` and type errors show.
//!
//! ```text
//! sse, csv_tweets ─SseEvent─▶ tweets ─TweetFlow─▶ sentiment, engagement ─TweetScore─▶ aggregator
//! aggregator ─ScoredTweet─▶ batcher ─Batch─▶ sinks        statistics ─StatsFrame─▶ broker_stats
//! ```
//!
//! Plain numbers (`u64`) and lines of text (`String`, "text") are named by the engine.

use serde_json::json;
use stageflow::config::Event;

use crate::analysis::flow::Score;
use crate::dead_letters::replay::tweet_json;
use crate::sse::TweetMessage;

pub use crate::analysis::flow::{TweetFlow, TweetScore};
pub use crate::analysis::statistics::StatsFrame;
pub use crate::scored::ScoredTweet;
pub use crate::sse::SseEvent;
pub use crate::storage::batcher::Batch;

// Dead letters hold events as JSON (`to_json`); `dead_letters::replay` reads them back.

impl Event for SseEvent {
    const NAME: &'static str = "SSE tweet";

    fn retained(&self) -> Option<Self> {
        Some(self.clone())
    }

    /// `{"id", "tweet"}`, or `{"id", "kill": true}`.
    fn to_json(&self) -> Option<String> {
        match &self.message {
            TweetMessage::Tweet(tweet) => tweet_json(tweet, json!({ "id": self.id })),
            TweetMessage::Kill => Some(json!({ "id": self.id, "kill": true }).to_string()),
        }
    }
}

impl Event for TweetFlow {
    const NAME: &'static str = "tweet flow";

    fn retained(&self) -> Option<Self> {
        Some(self.clone())
    }

    /// `{"tweet", "extracted"}`, or `{"kill": true}`.
    fn to_json(&self) -> Option<String> {
        match self {
            TweetFlow::Tweet(flow) => tweet_json(&flow.tweet, json!({ "extracted": flow.extracted })),
            TweetFlow::Kill => Some(json!({ "kill": true }).to_string()),
        }
    }
}

impl Event for TweetScore {
    const NAME: &'static str = "tweet score";

    fn retained(&self) -> Option<Self> {
        Some(self.clone())
    }

    /// `{"tweet", "extracted", "sentiment" | "engagement"}`.
    fn to_json(&self) -> Option<String> {
        let score = match self.score {
            Score::Sentiment(value) => json!({ "sentiment": value }),
            Score::Engagement(value) => json!({ "engagement": value }),
        };
        let mut extra = json!({ "extracted": self.tweet.extracted });
        if let (Some(extra), serde_json::Value::Object(score)) = (extra.as_object_mut(), score) {
            extra.extend(score);
        }
        tweet_json(&self.tweet.tweet, extra)
    }
}

impl Event for ScoredTweet {
    const NAME: &'static str = "scored tweet";

    fn retained(&self) -> Option<Self> {
        Some(self.clone())
    }

    /// `{"tweet", "extracted", "sentiment", "engagement"}`.
    fn to_json(&self) -> Option<String> {
        serde_json::to_string(self).ok()
    }
}

impl Event for StatsFrame {
    const NAME: &'static str = "stats frame";

    fn retained(&self) -> Option<Self> {
        Some(self.clone())
    }

    fn to_json(&self) -> Option<String> {
        serde_json::to_string(self).ok()
    }
}

impl Event for Batch {
    const NAME: &'static str = "batch of scored tweets";

    fn retained(&self) -> Option<Self> {
        Some(self.clone())
    }

    /// `{"tweets": [scored tweet, ...]}`.
    fn to_json(&self) -> Option<String> {
        serde_json::to_string(&json!({ "tweets": self.tweets() })).ok()
    }
}
