//! The analysis half of the tweet pipeline: from SSE events to scored tweets.
//!
//! ```text
//! sse ──▶ tweets (hub, broadcast) ──┬──▶ logger            (everything, or selector "received")
//!                                   ├──▶ sentiment ──┐
//!                                   ├──▶ engagement ─┴──▶ aggregator ──▶ ScoredTweet (storage half)
//!                                   └──▶ hashtags ──▶ JSON file every 3 s
//! statistics ──▶ StatsFrame every 5 s (logger and insert-time percentiles, crashes, ingested, dropped)
//! ```
//!
//! Each concern is a set of pure functions with unit tests (tokenising and
//! scoring, engagement, retweet extraction, the aggregator's join as a state
//! machine with an explicit clock, percentiles) and a thin stage that wraps
//! them in the engine's traits; each stage's file also holds its kind, the
//! settings struct pipeline files name it by.

pub mod aggregator;
pub mod engagement;
pub mod flow;
pub mod hashtags;
pub mod logger;
pub mod sentiment;
pub mod statistics;

pub use crate::timings::{InsertTimings, LatencyRecorder, TimingSummary};
pub use aggregator::{Aggregator, JoinState, JoinStats};
pub use engagement::{Engagement, engagement_score};
pub use flow::{FlowTweet, Score, TweetFlow, TweetScore, TweetsHub, extract_retweets, tweet_flow_selector};
pub use hashtags::{HashtagCount, HashtagWindow, Hashtags, write_atomically};
pub use logger::{Logger, LoggerConfig, OutputTarget, WorkSleep};
pub use sentiment::{Lexicon, LexiconSource, Sentiment, sentiment_score, words};
pub use statistics::{Statistics, StatsFrame, StatsHub};
