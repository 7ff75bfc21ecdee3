//! The events of the analysis half, retweet extraction and the `tweets` hub stage.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use stageflow::dispatcher::Selector;
use stageflow::{Emitter, Events, ProducerConsumer};

use crate::receipt::Receipt;
use crate::sse::{SseEvent, TweetMessage};
use crate::tweet::Tweet;
use crate::tweet::partition_of_id;
use stageflow::Pipeline;
use stageflow::config::{BuildContext, DispatcherChoices, Kind, StageDecl, configure, kind};

/// Numbers every tweet entering the flow, process-wide, so equal tweet ids
/// travelling at once (an original retweeted twice) never join each other.
static NEXT_SEQUENCE: AtomicU64 = AtomicU64::new(1);

/// One tweet in the flow: shared, flagged when it was extracted from a retweet.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowTweet {
    /// Unique in this process: the aggregator's join key (with the tweet id).
    pub seq: u64,
    /// The tweet; a retweet keeps its `retweeted_status`.
    pub tweet: Arc<Tweet>,
    /// True when this tweet is another tweet's `retweeted_status`.
    pub extracted: bool,
    /// Finished when every copy of this tweet is done with (see [`Receipt`]).
    pub receipt: Receipt,
}

impl FlowTweet {
    /// A flow tweet with the next sequence number.
    pub fn new(tweet: impl Into<Arc<Tweet>>, extracted: bool) -> Self {
        FlowTweet {
            seq: NEXT_SEQUENCE.fetch_add(1, Ordering::Relaxed),
            tweet: tweet.into(),
            extracted,
            receipt: Receipt::default(),
        }
    }
}

/// What the `tweets` hub emits: a tweet (received or extracted) or a kill message.
#[derive(Debug, Clone, PartialEq)]
pub enum TweetFlow {
    /// A tweet to log, score and count.
    Tweet(FlowTweet),
    /// The source's kill message: the logger crashes on it.
    Kill,
}

impl TweetFlow {
    /// The tweet, unless this is a kill message.
    pub fn tweet(&self) -> Option<&FlowTweet> {
        match self {
            TweetFlow::Tweet(tweet) => Some(tweet),
            TweetFlow::Kill => None,
        }
    }
}

/// One of a tweet's two scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Score {
    /// Mean lexicon score of its words.
    Sentiment(f64),
    /// (favorites + retweets) / followers.
    Engagement(f64),
}

/// What the sentiment and engagement stages emit: a tweet with one of its scores.
#[derive(Debug, Clone, PartialEq)]
pub struct TweetScore {
    /// The tweet scored.
    pub tweet: FlowTweet,
    /// The score.
    pub score: Score,
}

/// A tweet as received, then each tweet nested in `retweeted_status`, flagged as extracted.
///
/// The received tweet keeps its `retweeted_status`; each extracted one keeps
/// whatever it nests in turn. Iterative, so any nesting depth the parser
/// accepted is fine.
pub fn extract_retweets(tweet: Tweet) -> Vec<(Tweet, bool)> {
    let mut next = tweet.retweeted_status.as_deref().cloned();
    let mut tweets = vec![(tweet, false)];
    while let Some(original) = next {
        next = original.retweeted_status.as_deref().cloned();
        tweets.push((original, true));
    }
    tweets
}

/// The selectors a subscription to the hub may name: `selector = "tweets"`.
pub const SELECTORS: &[(&str, &str)] = &[
    ("all", "every event (the default without a selector)"),
    ("tweets", "tweets, received and extracted; no kill messages"),
    ("received", "what the source sent: received tweets and kill messages, no extracted originals"),
    ("extracted", "only originals extracted from retweets"),
    ("kills", "only kill messages"),
];

/// Parses a subscription's `selector` for [`TweetFlow`] events (see [`SELECTORS`]).
pub fn tweet_flow_selector(name: &str) -> Result<Selector<TweetFlow>, String> {
    let selector: Selector<TweetFlow> = match name {
        "all" => Arc::new(|_: &TweetFlow| true),
        "tweets" => Arc::new(|event: &TweetFlow| matches!(event, TweetFlow::Tweet(_))),
        "received" => Arc::new(|event: &TweetFlow| !matches!(event, TweetFlow::Tweet(t) if t.extracted)),
        "extracted" => Arc::new(|event: &TweetFlow| matches!(event, TweetFlow::Tweet(t) if t.extracted)),
        "kills" => Arc::new(|event: &TweetFlow| matches!(event, TweetFlow::Kill)),
        other => {
            let known: Vec<&str> = SELECTORS.iter().map(|(name, _)| *name).collect();
            let hint = stageflow::config::closest(other, known.iter().copied())
                .map(|near| format!(" (did you mean \"{near}\"?)"))
                .unwrap_or_default();
            return Err(format!(
                "unknown selector \"{other}\" for tweet flow events{hint}; selectors: {}",
                known.join(", ")
            ));
        }
    };
    Ok(selector)
}

/// The `tweets` hub: turns SSE events into [`TweetFlow`], extracting retweets.
#[derive(Debug, Clone)]
pub struct TweetsHub {
    extract: bool,
}

impl TweetsHub {
    /// A hub; `extract_retweets` false passes retweets on without their originals.
    pub fn new(extract_retweets: bool) -> Self {
        TweetsHub { extract: extract_retweets }
    }

    /// The flow events of one SSE event.
    pub fn flow_of(&self, event: SseEvent, out: &mut Emitter<TweetFlow>) {
        match event.message {
            TweetMessage::Kill => out.emit(TweetFlow::Kill),
            TweetMessage::Tweet(tweet) if self.extract => {
                for (tweet, extracted) in extract_retweets(*tweet) {
                    out.emit(TweetFlow::Tweet(FlowTweet::new(tweet, extracted)));
                }
            }
            TweetMessage::Tweet(tweet) => out.emit(TweetFlow::Tweet(FlowTweet::new(*tweet, false))),
        }
    }
}

impl ProducerConsumer for TweetsHub {
    type In = SseEvent;
    type Out = TweetFlow;

    async fn handle_events(&mut self, events: &mut Events<SseEvent>, out: &mut Emitter<TweetFlow>) {
        for event in events {
            self.flow_of(event, out);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tweet::User;

    pub(crate) fn tweet(id: &str, text: &str) -> Tweet {
        Tweet {
            id_str: id.into(),
            text: text.into(),
            created_at: String::new(),
            favorite_count: 0,
            retweet_count: 0,
            lang: None,
            entities: Default::default(),
            user: User { id_str: format!("u{id}"), ..User::default() },
            retweeted_status: None,
        }
    }

    #[test]
    fn a_plain_tweet_is_itself_only() {
        let plain = tweet("1", "hello");
        assert_eq!(extract_retweets(plain.clone()), vec![(plain, false)]);
    }

    #[test]
    fn a_retweet_yields_itself_then_its_original_flagged() {
        let original = tweet("1", "original");
        let mut retweet = tweet("2", "RT original");
        retweet.retweeted_status = Some(Box::new(original.clone()));
        let extracted = extract_retweets(retweet.clone());
        assert_eq!(extracted, vec![(retweet, false), (original, true)]);
        assert!(extracted[0].0.retweeted_status.is_some(), "the retweet keeps its original");
    }

    #[test]
    fn nested_retweets_are_each_extracted_in_order() {
        let mut chain = tweet("0", "root");
        for id in 1..=200 {
            let mut outer = tweet(&id.to_string(), "rt");
            outer.retweeted_status = Some(Box::new(chain));
            chain = outer;
        }
        let extracted = extract_retweets(chain);
        assert_eq!(extracted.len(), 201);
        assert_eq!(extracted[0].0.id_str, "200");
        assert!(!extracted[0].1);
        assert_eq!(extracted[200].0.id_str, "0");
        assert!(extracted[1..].iter().all(|(_, flagged)| *flagged));
    }

    #[test]
    fn the_hub_emits_kills_and_extracts_unless_told_not_to() {
        let mut retweet = tweet("2", "RT");
        retweet.retweeted_status = Some(Box::new(tweet("1", "orig")));
        let events = || {
            vec![
                SseEvent { id: "1".into(), message: TweetMessage::Tweet(Box::new(retweet.clone())) },
                SseEvent { id: "2".into(), message: TweetMessage::Kill },
            ]
        };
        let mut out = Emitter::default();
        for event in events() {
            TweetsHub::new(true).flow_of(event, &mut out);
        }
        let flow = out.take();
        assert_eq!(flow.len(), 3);
        let ids: Vec<(String, bool)> =
            flow.iter().filter_map(|e| e.tweet()).map(|t| (t.tweet.id_str.clone(), t.extracted)).collect();
        assert_eq!(ids, vec![("2".into(), false), ("1".into(), true)]);
        assert_eq!(flow[2], TweetFlow::Kill);
        let seqs: Vec<u64> = flow.iter().filter_map(|e| e.tweet()).map(|t| t.seq).collect();
        assert_ne!(seqs[0], seqs[1], "every flow tweet has its own sequence");

        for event in events() {
            TweetsHub::new(false).flow_of(event, &mut out);
        }
        assert_eq!(out.take().len(), 2);
    }

    #[test]
    fn selectors_filter_and_unknown_names_are_explained() {
        let received = TweetFlow::Tweet(FlowTweet::new(tweet("1", "a"), false));
        let extracted = TweetFlow::Tweet(FlowTweet::new(tweet("2", "b"), true));
        let kill = TweetFlow::Kill;
        let accepts = |name: &str| {
            let select = tweet_flow_selector(name).unwrap();
            [&received, &extracted, &kill].map(|event| select(event))
        };
        assert_eq!(accepts("all"), [true, true, true]);
        assert_eq!(accepts("tweets"), [true, true, false]);
        assert_eq!(accepts("received"), [true, false, true]);
        assert_eq!(accepts("extracted"), [false, true, false]);
        assert_eq!(accepts("kills"), [false, false, true]);
        let error = tweet_flow_selector("tweet").err().unwrap();
        assert!(error.contains("did you mean \"tweets\"") && error.contains("received"), "{error}");
    }
}

/// Checks every `selector` of a stage taking tweet flow events.
pub fn check_selectors(stage: &StageDecl) -> Result<(), String> {
    for subscription in &stage.subscribe_to {
        if let Some(name) = &subscription.selector {
            tweet_flow_selector(name)
                .map_err(|why| format!("subscription to '{}': {why}", subscription.producer))?;
        }
    }
    Ok(())
}

/// the tweet hub: SSE events in; tweets, originals extracted from retweets (flagged) and kill messages out; subscribers may use selector = "tweets" | "received" | "extracted" | "kills" | "all" with dispatcher = "broadcast"
#[kind("tweets", SseEvent -> TweetFlow)]
pub struct TweetsKind {
    /// emit each retweet's retweeted_status as a tweet of its own, flagged extracted (default true)
    #[default(true)]
    extract_retweets: bool,
}

impl Kind for TweetsKind {
    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let extract = self.extract_retweets;
        let config = pipeline.producer_consumer(&stage.id, move || TweetsHub::new(extract));
        let choices = DispatcherChoices::cloneable().with_partition(|event: &TweetFlow| match event {
            TweetFlow::Tweet(tweet) => partition_of_id(&tweet.tweet.id_str),
            TweetFlow::Kill => 0,
        });
        configure(stage, config, &choices, None)
    }
}
