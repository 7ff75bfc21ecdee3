//! Engagement: (favorites + retweets) / followers, followers 0 counted as 1.

use stageflow::{Emitter, Events, ProducerConsumer};

use super::flow::{Score, TweetFlow, TweetScore};
use crate::tweet::Tweet;
use stageflow::config::{BuildContext, DispatcherChoices, Kind, StageDecl, configure, kind};
use stageflow::{Pipeline, PoolConfig};

use super::flow::{check_selectors, tweet_flow_selector};
use super::sentiment::DEFAULT_SCORING_WORKERS;

/// `(favorites + retweets) / followers`, with 0 followers counted as 1.
pub fn engagement_score(favorites: u64, retweets: u64, followers: u64) -> f64 {
    (favorites as f64 + retweets as f64) / followers.max(1) as f64
}

/// The engagement of a tweet, from its counts and its author's followers.
pub fn engagement_of(tweet: &Tweet) -> f64 {
    engagement_score(tweet.favorite_count, tweet.retweet_count, tweet.user.followers_count)
}

/// The engagement stage: scores each tweet; kill messages are skipped.
#[derive(Debug, Clone, Copy, Default)]
pub struct Engagement;

impl ProducerConsumer for Engagement {
    type In = TweetFlow;
    type Out = TweetScore;

    async fn handle_events(&mut self, events: &mut Events<TweetFlow>, out: &mut Emitter<TweetScore>) {
        for event in events {
            if let TweetFlow::Tweet(tweet) = event {
                let score = Score::Engagement(engagement_of(&tweet.tweet));
                out.emit(TweetScore { tweet, score });
            }
        }
    }
}

/// scores each tweet: (favorites + retweets) / followers, 0 followers counted as 1; skips kill messages
#[kind("engagement", TweetFlow -> TweetScore)]
pub struct EngagementKind {}

impl Kind for EngagementKind {
    fn check(&self, stage: &StageDecl) -> Result<(), String> {
        check_selectors(stage)
    }

    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let config = pipeline.producer_consumer(&stage.id, || Engagement);
        let (min, max) = DEFAULT_SCORING_WORKERS;
        config.workers(PoolConfig::autoscaled(min, max));
        configure(stage, config, &DispatcherChoices::cloneable(), Some(&tweet_flow_selector))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn favorites_and_retweets_over_followers() {
        assert_eq!(engagement_score(3, 1, 8), 0.5);
        assert_eq!(engagement_score(0, 0, 100), 0.0);
        assert_eq!(engagement_score(10, 0, 4), 2.5);
    }

    #[test]
    fn zero_followers_count_as_one() {
        assert_eq!(engagement_score(3, 2, 0), 5.0);
        assert_eq!(engagement_score(0, 0, 0), 0.0);
        assert_eq!(engagement_score(1, 0, 1), engagement_score(1, 0, 0));
    }

    #[test]
    fn huge_counts_neither_overflow_nor_panic() {
        let score = engagement_score(u64::MAX, u64::MAX, 1);
        assert!(score.is_finite() && score > 3.0e19);
        assert!(engagement_score(u64::MAX, 0, u64::MAX) - 1.0 < 1e-9);
    }

    #[test]
    fn a_tweets_engagement_uses_its_authors_followers() {
        let mut tweet = super::super::flow::tests::tweet("1", "x");
        tweet.favorite_count = 4;
        tweet.retweet_count = 2;
        tweet.user.followers_count = 3;
        assert_eq!(engagement_of(&tweet), 2.0);
        tweet.user.followers_count = 0;
        assert_eq!(engagement_of(&tweet), 6.0);
    }
}
