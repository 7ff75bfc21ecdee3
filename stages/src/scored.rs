//! The events the analysis half of the tweet pipeline hands to storage.

use serde::{Deserialize, Serialize};

use crate::tweet::Tweet;

/// A tweet with both of its scores: what the aggregator emits, the batcher
/// groups and the sinks store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredTweet {
    /// The tweet; a retweet keeps its `retweeted_status` (the original is also
    /// a `ScoredTweet` of its own, with `extracted` set).
    pub tweet: Tweet,
    /// True when this tweet was extracted from another tweet's `retweeted_status`.
    pub extracted: bool,
    /// Mean lexicon score of its words.
    pub sentiment: f64,
    /// (favorites + retweets) / followers, followers 0 counted as 1.
    pub engagement: f64,
    /// Finished when the tweet is stored (see [`crate::receipt::Receipt`]).
    #[serde(skip)]
    pub receipt: crate::receipt::Receipt,
}
