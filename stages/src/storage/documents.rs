//! Pure logic of storage: a batch of scored tweets split into tweet and user
//! documents, and per-user engagement increments gathered for batched upserts.
//!
//! A tweet document is the tweet's JSON with its scores, where the `user`
//! object is replaced by `user_id` and a retweet's `retweeted_status` by
//! `retweeted_status_id` (the original is a [`ScoredTweet`] of its own and is
//! stored as such). A user document is the user's JSON. Both keep `id_str`,
//! which is also their key.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::scored::ScoredTweet;
use crate::tweet::{Entities, Tweet, User};

/// One tweet ready to store: its key, its author's key, its engagement score and its document.
#[derive(Debug, Clone, PartialEq)]
pub struct TweetDoc {
    /// The tweet's `id_str` (the key).
    pub id: String,
    /// The author's `id_str`.
    pub user_id: String,
    /// The engagement score, added to the author's totals when the insert is new.
    pub engagement: f64,
    /// The document (a JSON object); `null` when the sink takes [`TweetDoc::json`] instead.
    pub doc: Value,
    /// The document as JSON text, for sinks that store text ([`DocumentForm::Json`]); shared, as
    /// such a sink hands it to a blocking thread; `None` in the other forms.
    pub json: Option<Arc<str>>,
}

/// One user ready to store: its key and its document.
#[derive(Debug, Clone, PartialEq)]
pub struct UserDoc {
    /// The user's `id_str` (the key).
    pub id: String,
    /// The document (a JSON object); `null` when the sink takes [`UserDoc::json`] instead.
    pub doc: Value,
    /// The document as JSON text, for sinks that store text ([`DocumentForm::Json`]); shared, as
    /// such a sink hands it to a blocking thread; `None` in the other forms.
    pub json: Option<Arc<str>>,
}

/// A batch split into the documents of the `tweets` and `users` collections.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SplitBatch {
    /// Tweets, each id once (the first occurrence in the batch wins).
    pub tweets: Vec<TweetDoc>,
    /// Users, each id once (the first occurrence in the batch wins).
    pub users: Vec<UserDoc>,
}

/// The document of a tweet: its JSON with scores, `user_id` instead of `user`,
/// `retweeted_status_id` instead of `retweeted_status`.
pub fn tweet_document(scored: &ScoredTweet) -> Value {
    let tweet: &Tweet = &scored.tweet;
    let mut doc = match serde_json::to_value(tweet) {
        Ok(Value::Object(map)) => map,
        // A struct of strings, numbers and vectors always serialises to an object.
        _ => Map::new(),
    };
    doc.remove("user");
    doc.remove("retweeted_status");
    doc.insert("id_str".into(), Value::String(tweet.id_str.clone()));
    doc.insert("user_id".into(), Value::String(tweet.user.id_str.clone()));
    if let Some(original) = &tweet.retweeted_status {
        doc.insert("retweeted_status_id".into(), Value::String(original.id_str.clone()));
    }
    doc.insert("extracted".into(), Value::Bool(scored.extracted));
    doc.insert("sentiment".into(), finite_number(scored.sentiment));
    doc.insert("engagement".into(), finite_number(scored.engagement));
    Value::Object(doc)
}

/// The document of a user: the user's JSON.
pub fn user_document(user: &User) -> Value {
    serde_json::to_value(user).unwrap_or_else(|_| Value::Object(Map::new()))
}

/// [`tweet_document`] as JSON text, the same text, written straight from
/// the tweet (no [`Value`] built and dropped on the way).
pub fn tweet_document_json(scored: &ScoredTweet) -> String {
    let tweet: &Tweet = &scored.tweet;
    // The fields in the order `tweet_document` leaves them: the tweet's own
    // (less `user` and `retweeted_status`), then the ones it adds.
    #[derive(Serialize)]
    struct TweetText<'a> {
        id_str: &'a str,
        text: &'a str,
        created_at: &'a str,
        favorite_count: u64,
        retweet_count: u64,
        lang: &'a Option<String>,
        entities: &'a Entities,
        user_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        retweeted_status_id: Option<&'a str>,
        extracted: bool,
        // serde_json writes a non-finite number as `null`, as `finite_number` does.
        sentiment: f64,
        engagement: f64,
    }
    let text = TweetText {
        id_str: &tweet.id_str,
        text: &tweet.text,
        created_at: &tweet.created_at,
        favorite_count: tweet.favorite_count,
        retweet_count: tweet.retweet_count,
        lang: &tweet.lang,
        entities: &tweet.entities,
        user_id: &tweet.user.id_str,
        retweeted_status_id: tweet.retweeted_status.as_ref().map(|original| original.id_str.as_str()),
        extracted: scored.extracted,
        sentiment: scored.sentiment,
        engagement: scored.engagement,
    };
    // Plain strings, numbers and vectors always serialise.
    serde_json::to_string(&text).unwrap_or_default()
}

/// [`user_document`] as JSON text.
pub fn user_document_json(user: &User) -> String {
    serde_json::to_string(user).unwrap_or_else(|_| "{}".to_string())
}

/// A JSON number for `x`, or `null` when it is not finite (JSON has no NaN).
fn finite_number(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// Which form of the documents a split builds, as a sink takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentForm {
    /// Keys and scores only (`doc` is `null`, `json` is `None`): for sinks that only count.
    Keys,
    /// `doc` values.
    Values,
    /// `json` text (`doc` is `null`): for sinks storing text.
    Json,
}

/// Splits a batch into tweet and user documents, each id once.
pub fn split_batch(batch: &[ScoredTweet]) -> SplitBatch {
    split(batch, DocumentForm::Values)
}

/// Splits a batch into tweet and user keys, each id once, with the documents in `form`.
pub fn split(batch: &[ScoredTweet], form: DocumentForm) -> SplitBatch {
    let mut split = SplitBatch::default();
    // Ids of one batch, hashed twice per tweet: foldhash rather than SipHash.
    let mut tweet_ids = HashSet::with_hasher(foldhash::fast::FixedState::default());
    let mut user_ids = HashSet::with_hasher(foldhash::fast::FixedState::default());
    for scored in batch {
        let tweet = &scored.tweet;
        if tweet_ids.insert(tweet.id_str.as_str()) {
            split.tweets.push(TweetDoc {
                id: tweet.id_str.clone(),
                user_id: tweet.user.id_str.clone(),
                engagement: if scored.engagement.is_finite() { scored.engagement } else { 0.0 },
                doc: if form == DocumentForm::Values { tweet_document(scored) } else { Value::Null },
                json: (form == DocumentForm::Json).then(|| tweet_document_json(scored).into()),
            });
        }
        if user_ids.insert(tweet.user.id_str.as_str()) {
            split.users.push(UserDoc {
                id: tweet.user.id_str.clone(),
                doc: if form == DocumentForm::Values { user_document(&tweet.user) } else { Value::Null },
                json: (form == DocumentForm::Json).then(|| user_document_json(&tweet.user).into()),
            });
        }
    }
    split
}

/// What one user's engagement totals grow by.
#[derive(Debug, Clone, PartialEq)]
pub struct EngagementDelta {
    /// The user's `id_str`.
    pub user_id: String,
    /// New tweets counted.
    pub tweets: u64,
    /// Sum of their engagement scores.
    pub engagement_sum: f64,
}

/// The ratio stored beside the totals: sum / count, 0 for no tweets.
pub fn engagement_ratio(engagement_sum: f64, tweet_count: u64) -> f64 {
    if tweet_count == 0 { 0.0 } else { engagement_sum / tweet_count as f64 }
}

/// Per-user engagement increments waiting to be upserted, written out at
/// `max_users` distinct users or when the oldest is `max_age` old.
#[derive(Debug, Clone)]
pub struct EngagementBatch {
    max_users: usize,
    max_age: Duration,
    pending: HashMap<String, EngagementDelta>,
    /// Order of first arrival, so a flush writes users in a stable order.
    order: Vec<String>,
    /// The tweets counted, so a sink can mark them counted with the flush
    /// and a repeat of one of them before the flush is not counted twice.
    tweet_ids: HashSet<String>,
    /// How long the oldest pending increment has waited, as of the last `add` or `age`.
    oldest: Option<tokio::time::Instant>,
}

impl EngagementBatch {
    /// An empty batch flushed at `max_users` users (at least 1) or `max_age`.
    pub fn new(max_users: usize, max_age: Duration) -> Self {
        EngagementBatch {
            max_users: max_users.max(1),
            max_age,
            pending: HashMap::new(),
            order: Vec::new(),
            tweet_ids: HashSet::new(),
            oldest: None,
        }
    }

    /// Counts tweet `tweet_id` of `user_id` with this engagement score, unless it is counted already.
    pub fn add(&mut self, tweet_id: &str, user_id: &str, engagement: f64) {
        if !self.tweet_ids.insert(tweet_id.to_string()) {
            return;
        }
        self.oldest.get_or_insert_with(tokio::time::Instant::now);
        match self.pending.entry(user_id.to_string()) {
            Entry::Occupied(mut entry) => {
                let delta = entry.get_mut();
                delta.tweets += 1;
                delta.engagement_sum += engagement;
            }
            Entry::Vacant(entry) => {
                self.order.push(user_id.to_string());
                entry.insert(EngagementDelta {
                    user_id: user_id.to_string(),
                    tweets: 1,
                    engagement_sum: engagement,
                });
            }
        }
    }

    /// Whether tweet `tweet_id` is counted in this batch.
    pub fn holds(&self, tweet_id: &str) -> bool {
        self.tweet_ids.contains(tweet_id)
    }

    /// The tweets counted in this batch, in no particular order.
    pub fn tweet_ids(&self) -> Vec<String> {
        self.tweet_ids.iter().cloned().collect()
    }

    /// Distinct users waiting.
    pub fn users(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether the batch is due: full, or its oldest increment is `max_age` old at `now`.
    pub fn is_due(&self, now: tokio::time::Instant) -> bool {
        flush_due(
            self.pending.len(),
            self.max_users,
            self.oldest.map(|t| now.saturating_duration_since(t)),
            self.max_age,
        )
    }

    /// The increments waiting, in first-arrival order; the batch is left as it was.
    pub fn deltas(&self) -> Vec<EngagementDelta> {
        self.order.iter().filter_map(|id| self.pending.get(id).cloned()).collect()
    }

    /// Forgets everything waiting (after it was written).
    pub fn clear(&mut self) {
        self.pending.clear();
        self.order.clear();
        self.tweet_ids.clear();
        self.oldest = None;
    }
}

/// The batching rule shared by the batcher and the engagement batch: flush
/// when `held` reached `limit`, or when something is held and the oldest has
/// waited `max_age`.
pub fn flush_due(held: usize, limit: usize, oldest_age: Option<Duration>, max_age: Duration) -> bool {
    if held == 0 {
        return false;
    }
    held >= limit || oldest_age.is_some_and(|age| age >= max_age)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tweet::Entities;

    fn user(id: &str) -> User {
        User { id_str: id.into(), screen_name: format!("u{id}"), followers_count: 10, ..User::default() }
    }

    fn tweet(id: &str, user_id: &str) -> Tweet {
        Tweet {
            id_str: id.into(),
            text: format!("tweet {id} ☀️"),
            created_at: "Fri Mar 01 00:00:00 +0000 2024".into(),
            favorite_count: 2,
            retweet_count: 1,
            lang: Some("en".into()),
            entities: Entities::default(),
            user: user(user_id),
            retweeted_status: None,
        }
    }

    fn scored(tweet: Tweet, engagement: f64) -> ScoredTweet {
        ScoredTweet { tweet, extracted: false, sentiment: 0.5, engagement, receipt: Default::default() }
    }

    #[test]
    fn a_tweet_document_keeps_the_user_id_not_the_user() {
        let doc = tweet_document(&scored(tweet("9", "7"), 0.3));
        assert_eq!(doc["id_str"], "9");
        assert_eq!(doc["user_id"], "7");
        assert!(doc.get("user").is_none());
        assert_eq!(doc["text"], "tweet 9 ☀️");
        assert_eq!(doc["favorite_count"], 2);
        assert_eq!(doc["sentiment"], 0.5);
        assert_eq!(doc["engagement"], 0.3);
        assert_eq!(doc["extracted"], false);
        assert!(doc.get("retweeted_status_id").is_none());
    }

    #[test]
    fn a_retweet_document_points_at_its_original() {
        let mut retweet = tweet("2", "7");
        retweet.retweeted_status = Some(Box::new(tweet("1", "8")));
        let doc = tweet_document(&scored(retweet, 0.0));
        assert_eq!(doc["retweeted_status_id"], "1");
        assert!(doc.get("retweeted_status").is_none());
    }

    proptest::proptest! {
        /// The text written straight from the tweet is the text of its document value.
        #[test]
        fn json_documents_are_the_documents_as_text(
            tweet in crate::tweet::tests::tweet_strategy(),
            extracted in proptest::bool::ANY,
            sentiment in proptest::prop_oneof![proptest::num::f64::ANY, proptest::strategy::Just(f64::NAN)],
            engagement in proptest::num::f64::ANY,
        ) {
            let scored = ScoredTweet { tweet, extracted, sentiment, engagement, receipt: Default::default() };
            proptest::prop_assert_eq!(tweet_document_json(&scored), tweet_document(&scored).to_string());
            proptest::prop_assert_eq!(user_document_json(&scored.tweet.user), user_document(&scored.tweet.user).to_string());
            let split = split(std::slice::from_ref(&scored), DocumentForm::Json);
            let (tweet_text, user_text) = (tweet_document(&scored).to_string(), user_document(&scored.tweet.user).to_string());
            proptest::prop_assert_eq!(split.tweets[0].json.as_deref(), Some(tweet_text.as_str()));
            proptest::prop_assert_eq!(split.users[0].json.as_deref(), Some(user_text.as_str()));
        }
    }

    #[test]
    fn a_user_document_is_the_users_json() {
        let doc = user_document(&user("7"));
        assert_eq!(doc["id_str"], "7");
        assert_eq!(doc["screen_name"], "u7");
        assert_eq!(doc["followers_count"], 10);
    }

    #[test]
    fn split_keeps_each_tweet_and_user_once_first_wins() {
        let batch = vec![
            scored(tweet("1", "a"), 1.0),
            scored(tweet("2", "a"), 2.0),
            scored(tweet("1", "a"), 9.0),
            scored(tweet("3", "b"), 3.0),
        ];
        let split = split_batch(&batch);
        let ids: Vec<_> = split.tweets.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["1", "2", "3"]);
        assert_eq!(split.tweets[0].engagement, 1.0);
        assert_eq!(split.tweets[2].user_id, "b");
        let users: Vec<_> = split.users.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(users, ["a", "b"]);
    }

    #[test]
    fn non_finite_scores_are_stored_as_null_and_counted_as_zero() {
        let split = split_batch(&[scored(tweet("1", "a"), f64::NAN)]);
        assert_eq!(split.tweets[0].engagement, 0.0);
        assert_eq!(split.tweets[0].doc["engagement"], Value::Null);
    }

    #[test]
    fn engagement_batch_sums_per_user_in_arrival_order() {
        let mut batch = EngagementBatch::new(100, Duration::from_secs(3));
        batch.add("t1", "b", 0.5);
        batch.add("t2", "a", 1.0);
        batch.add("t3", "b", 1.5);
        batch.add("t3", "b", 1.5);
        assert_eq!(batch.users(), 2);
        assert!(batch.holds("t3") && !batch.holds("t4"));
        let mut ids = batch.tweet_ids();
        ids.sort();
        assert_eq!(ids, ["t1", "t2", "t3"], "a tweet repeated before the flush is counted once");
        let deltas = batch.deltas();
        assert_eq!(deltas[0], EngagementDelta { user_id: "b".into(), tweets: 2, engagement_sum: 2.0 });
        assert_eq!(deltas[1], EngagementDelta { user_id: "a".into(), tweets: 1, engagement_sum: 1.0 });
        batch.clear();
        assert!(batch.is_empty() && !batch.holds("t1"));
        assert!(!batch.is_due(tokio::time::Instant::now() + Duration::from_secs(10)));
    }

    #[tokio::test(start_paused = true)]
    async fn engagement_batch_is_due_at_max_users_or_max_age() {
        let mut batch = EngagementBatch::new(2, Duration::from_secs(3));
        let start = tokio::time::Instant::now();
        batch.add("t1", "a", 1.0);
        batch.add("t2", "a", 1.0);
        assert!(!batch.is_due(start), "one user, just now");
        assert!(batch.is_due(start + Duration::from_secs(3)), "the oldest is 3 s old");
        batch.add("t3", "b", 1.0);
        assert!(batch.is_due(start), "two users");
    }

    #[test]
    fn ratio_is_sum_over_count_and_zero_without_tweets() {
        assert_eq!(engagement_ratio(3.0, 4), 0.75);
        assert_eq!(engagement_ratio(1.0, 0), 0.0);
    }

    #[test]
    fn flush_is_due_at_the_limit_or_the_age_never_when_empty() {
        let max_age = Duration::from_secs(3);
        assert!(!flush_due(0, 200, Some(Duration::from_secs(60)), max_age));
        assert!(!flush_due(199, 200, Some(Duration::from_millis(2999)), max_age));
        assert!(flush_due(200, 200, None, max_age));
        assert!(flush_due(1, 200, Some(max_age), max_age));
    }
}
