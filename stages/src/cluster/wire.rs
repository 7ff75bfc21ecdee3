//! How events travel between parts: JSON on the wire, a partition key, and a
//! receipt that acks the JetStream message once the event is finished with.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use stageflow::config::{DispatcherChoices, EventType};

use crate::analysis::{FlowTweet, TweetFlow};
use crate::receipt::Receipt;
use crate::tweet::Tweet;

/// An event type that can cross between parts.
pub trait Wire: stageflow::config::Event + Sized + Sync {
    /// The keys `partition_by` may name for this type, each with what it means.
    const PARTITION_KEYS: &'static [(&'static str, &'static str)] = &[];

    /// The event as JSON.
    fn encode(&self) -> Vec<u8>;

    /// The event from JSON; the error says what was wrong.
    fn decode(bytes: &[u8]) -> Result<Self, String>;

    /// The bytes that decide the partition under `partition_by = by` (one of `PARTITION_KEYS`).
    fn partition_key(&self, by: &str) -> Vec<u8> {
        let _ = by;
        Vec::new()
    }

    /// Puts the receipt in the event, to be dropped when the event is finished
    /// with; gives it back if this type cannot carry one (the inbound stage
    /// then acks on emitting the event).
    fn attach(&mut self, receipt: Receipt) -> Option<Receipt> {
        Some(receipt)
    }

    /// The dispatchers a local replica of a producer of this type may use.
    fn dispatchers() -> DispatcherChoices<Self>;
}

/// The partition of an event: a stable hash (CRC-32, the same on every machine)
/// of its key, or of its whole encoding when no `partition_by` is given.
pub fn partition_of(key: &[u8], payload: &[u8], partitions: usize) -> usize {
    let hashed = if key.is_empty() { payload } else { key };
    crc32fast::hash(hashed) as usize % partitions.max(1)
}

impl Wire for u64 {
    fn encode(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
    fn decode(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|error| format!("not a u64 event: {error}"))
    }
    fn dispatchers() -> DispatcherChoices<Self> {
        DispatcherChoices::cloneable()
    }
}

impl Wire for String {
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a string encodes")
    }
    fn decode(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|error| format!("not a text event (a JSON string): {error}"))
    }
    fn dispatchers() -> DispatcherChoices<Self> {
        DispatcherChoices::cloneable()
    }
}

/// A [`TweetFlow`] on the wire; the sequence number is the receiving process's own.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum WireFlow {
    Tweet { tweet: Box<Tweet>, extracted: bool },
    Kill,
}

/// [`WireFlow`] borrowing the tweet it encodes (the same JSON).
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum WireFlowRef<'a> {
    Tweet { tweet: &'a Tweet, extracted: bool },
    Kill,
}

impl Wire for TweetFlow {
    const PARTITION_KEYS: &'static [(&'static str, &'static str)] = &[
        ("user_id", "the author's `user.id_str`: one user's tweets stay in one partition, in order"),
        ("tweet_id", "the tweet's `id_str`"),
    ];

    fn encode(&self) -> Vec<u8> {
        let wire = match self {
            TweetFlow::Tweet(flow) => WireFlowRef::Tweet { tweet: &flow.tweet, extracted: flow.extracted },
            TweetFlow::Kill => WireFlowRef::Kill,
        };
        serde_json::to_vec(&wire).expect("a tweet encodes")
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        match serde_json::from_slice(bytes) {
            Ok(WireFlow::Tweet { tweet, extracted }) => {
                Ok(TweetFlow::Tweet(FlowTweet::new(*tweet, extracted)))
            }
            Ok(WireFlow::Kill) => Ok(TweetFlow::Kill),
            Err(error) => Err(format!("not a tweet flow event: {error}")),
        }
    }

    fn partition_key(&self, by: &str) -> Vec<u8> {
        match (self, by) {
            (TweetFlow::Tweet(flow), "user_id") => flow.tweet.user.id_str.as_bytes().to_vec(),
            (TweetFlow::Tweet(flow), _) => flow.tweet.id_str.as_bytes().to_vec(),
            (TweetFlow::Kill, _) => b"kill".to_vec(),
        }
    }

    fn attach(&mut self, receipt: Receipt) -> Option<Receipt> {
        match self {
            TweetFlow::Tweet(flow) => {
                flow.receipt = receipt;
                None
            }
            TweetFlow::Kill => Some(receipt),
        }
    }

    fn dispatchers() -> DispatcherChoices<Self> {
        DispatcherChoices::cloneable()
    }
}

/// A wire type with its Rust type erased, found by the producer kind's output type.
#[derive(Clone)]
pub struct WireType {
    /// The event type, as kinds name it.
    pub events: EventType,
    /// `partition_by` keys.
    pub partition_keys: &'static [(&'static str, &'static str)],
    pub(crate) build: Arc<dyn super::build::BuildCut>,
}

/// The event types that can cross between parts.
pub fn wire_types() -> HashMap<TypeId, WireType> {
    let mut types = HashMap::new();
    let mut add = |wire: WireType| {
        types.insert(wire.events.id, wire);
    };
    add(super::build::wire_type::<u64>());
    add(super::build::wire_type::<String>());
    add(super::build::wire_type::<TweetFlow>());
    types
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tweet::User;

    fn tweet(id: &str, user: &str) -> Tweet {
        Tweet {
            id_str: id.into(),
            text: "#rust is fun".into(),
            created_at: String::new(),
            favorite_count: 3,
            retweet_count: 1,
            lang: Some("en".into()),
            entities: Default::default(),
            user: User { id_str: user.into(), ..User::default() },
            retweeted_status: None,
        }
    }

    #[test]
    fn tweet_flow_round_trips_with_a_fresh_sequence() {
        let sent = TweetFlow::Tweet(FlowTweet::new(tweet("7", "u1"), true));
        let received = TweetFlow::decode(&sent.encode()).unwrap();
        let (TweetFlow::Tweet(a), TweetFlow::Tweet(b)) = (&sent, &received) else { panic!("{received:?}") };
        assert_eq!((&a.tweet, a.extracted), (&b.tweet, b.extracted));
        assert_ne!(a.seq, b.seq, "sequence numbers are per process");
        assert_eq!(TweetFlow::decode(&TweetFlow::Kill.encode()).unwrap(), TweetFlow::Kill);
        let error = TweetFlow::decode(b"{\"tweet\":1}").unwrap_err();
        assert!(error.starts_with("not a tweet flow event"), "{error}");
    }

    #[test]
    fn one_users_tweets_share_a_partition_and_users_spread() {
        let of = |id: &str, user: &str| {
            let event = TweetFlow::Tweet(FlowTweet::new(tweet(id, user), false));
            partition_of(&event.partition_key("user_id"), &event.encode(), 8)
        };
        assert_eq!(of("1", "alice"), of("2", "alice"));
        let used: std::collections::HashSet<usize> = (0..200).map(|u| of("1", &format!("user{u}"))).collect();
        assert_eq!(used.len(), 8, "200 users reach every one of 8 partitions");
        assert!(used.iter().all(|&k| k < 8));
    }

    #[test]
    fn without_a_key_the_whole_event_decides() {
        assert_eq!(partition_of(b"", b"42", 8), partition_of(b"", b"42", 8));
        assert_eq!(partition_of(b"", b"anything", 1), 0);
        assert_eq!(u64::decode(&42u64.encode()).unwrap(), 42);
        assert_eq!(String::decode(&"a\"b".to_string().encode()).unwrap(), "a\"b");
        assert!(u64::decode(b"x").unwrap_err().contains("not a u64"));
    }

    #[test]
    fn only_tweets_carry_receipts() {
        let mut kill = TweetFlow::Kill;
        assert!(kill.attach(Receipt::new(())).is_some());
        let mut flow = TweetFlow::Tweet(FlowTweet::new(tweet("1", "u"), false));
        assert!(flow.attach(Receipt::new(())).is_none());
        assert!(flow.tweet().unwrap().receipt.is_some());
        assert!(5u64.clone().attach(Receipt::new(())).is_some());
    }
}
