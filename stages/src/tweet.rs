//! The tweet model and the pure parser of SSE `data:` payloads.
//!
//! The tweet source sends each event as `data: {"message":{"tweet":{...}}}`,
//! the tweet in Twitter's v1.1 shape, and now and then the literal
//! `data: {"message": panic}` — not JSON — as a kill message.
//! [`parse_sse_data`] sorts any payload into [`ParsedData::Tweet`],
//! [`ParsedData::Kill`] or [`ParsedData::Malformed`]; it never panics.
//!
//! The structs hold the fields the pipeline uses. Unknown fields are ignored;
//! every field but the tweet's and the user's `id_str` may be missing or
//! `null` and then takes its default (empty text, zero counts, no entities).

use serde::{Deserialize, Deserializer, Serialize};

/// A tweet in the shape of Twitter's v1.1 API, reduced to what the pipeline uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tweet {
    /// The tweet id, as a decimal string (the join and dedup key).
    pub id_str: String,
    /// The tweet text, up to 280 characters.
    #[serde(default, deserialize_with = "null_as_default")]
    pub text: String,
    /// When it was posted, e.g. `Fri Mar 01 00:00:00 +0000 2024`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub created_at: String,
    /// How many times it was liked.
    #[serde(default, deserialize_with = "null_as_default")]
    pub favorite_count: u64,
    /// How many times it was retweeted.
    #[serde(default, deserialize_with = "null_as_default")]
    pub retweet_count: u64,
    /// Its language code (`en`, `es`, `und`, ...), when known.
    #[serde(default)]
    pub lang: Option<String>,
    /// Hashtags, mentions and links found in the text.
    #[serde(default, deserialize_with = "null_as_default")]
    pub entities: Entities,
    /// Who posted it.
    pub user: User,
    /// The original tweet, when this one is a retweet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retweeted_status: Option<Box<Tweet>>,
}

/// The entities Twitter extracts from a tweet's text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Entities {
    /// `#hashtags`, without the `#`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub hashtags: Vec<Hashtag>,
    /// `@mentions` of other users.
    #[serde(default, deserialize_with = "null_as_default")]
    pub user_mentions: Vec<UserMention>,
    /// Links, shortened and expanded.
    #[serde(default, deserialize_with = "null_as_default")]
    pub urls: Vec<UrlEntity>,
}

/// One hashtag of a tweet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Hashtag {
    /// The tag without its `#`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub text: String,
}

/// One user mentioned in a tweet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserMention {
    /// The mentioned user's handle, without the `@`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub screen_name: String,
    /// The mentioned user's display name.
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    /// The mentioned user's id.
    #[serde(default, deserialize_with = "null_as_default")]
    pub id_str: String,
}

/// One link in a tweet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UrlEntity {
    /// The shortened link as it appears in the text.
    #[serde(default, deserialize_with = "null_as_default")]
    pub url: String,
    /// The full link.
    #[serde(default, deserialize_with = "null_as_default")]
    pub expanded_url: String,
    /// The link as displayed.
    #[serde(default, deserialize_with = "null_as_default")]
    pub display_url: String,
}

/// The author of a tweet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// The user id, as a decimal string (the key of the users collection).
    pub id_str: String,
    /// The handle, without the `@`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub screen_name: String,
    /// The display name.
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    /// Followers (0 is possible; the engagement score treats it as 1).
    #[serde(default, deserialize_with = "null_as_default")]
    pub followers_count: u64,
    /// Accounts this user follows.
    #[serde(default, deserialize_with = "null_as_default")]
    pub friends_count: u64,
    /// Tweets this user has posted.
    #[serde(default, deserialize_with = "null_as_default")]
    pub statuses_count: u64,
    /// Whether the account is verified.
    #[serde(default, deserialize_with = "null_as_default")]
    pub verified: bool,
    /// Where the user says they are.
    #[serde(default)]
    pub location: Option<String>,
    /// When the account was created, in the same format as a tweet's `created_at`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub created_at: String,
}

/// Reads `null` as the type's default, as Twitter sends `null` for some absent values.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// The JSON envelope around a tweet: `{"message":{"tweet":{...}}}`.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope<T> {
    message: Message<T>,
}

/// The `message` object of the envelope.
#[derive(Debug, Serialize, Deserialize)]
struct Message<T> {
    tweet: T,
}

/// What one SSE `data:` payload of the tweet stream turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum ParsedData {
    /// A well-formed tweet.
    Tweet(Box<Tweet>),
    /// The kill message `{"message": panic}`: workers that see it crash on purpose.
    Kill,
    /// Anything else; the text says what was wrong.
    Malformed(String),
}

/// The kill message with every ASCII whitespace removed.
const KILL_MESSAGE_COMPACT: &str = r#"{"message":panic}"#;

/// The kill message exactly as the tweet source sends it.
pub const KILL_MESSAGE: &str = r#"{"message": panic}"#;

/// Sorts one SSE `data:` payload into a tweet, a kill message or a malformed event.
///
/// Whitespace inside the kill message is not significant. Never panics,
/// whatever the input (serde_json bounds nesting depth).
pub fn parse_sse_data(data: &str) -> ParsedData {
    match serde_json::from_str::<Envelope<Tweet>>(data) {
        Ok(envelope) => ParsedData::Tweet(Box::new(envelope.message.tweet)),
        Err(_) if is_kill_message(data) => ParsedData::Kill,
        Err(error) => ParsedData::Malformed(format!("not a tweet message: {error}")),
    }
}

/// Whether `data` is the kill message, ignoring ASCII whitespace.
pub fn is_kill_message(data: &str) -> bool {
    let mut compact = data.bytes().filter(|byte| !byte.is_ascii_whitespace());
    let mut expected = KILL_MESSAGE_COMPACT.bytes();
    loop {
        match (compact.next(), expected.next()) {
            (None, None) => return true,
            (Some(got), Some(want)) if got == want => {}
            _ => return false,
        }
    }
}

/// The SSE `data:` payload of a tweet: `{"message":{"tweet":...}}` as compact JSON.
pub fn tweet_sse_data(tweet: &Tweet) -> String {
    // Serialising plain structs of strings, numbers and vectors cannot fail.
    serde_json::to_string(&Envelope { message: Message { tweet } }).unwrap_or_default()
}

/// Serialises any tweet-shaped value inside the `{"message":{"tweet":...}}` envelope.
pub fn envelope_json<T: Serialize>(tweet: &T) -> Result<String, serde_json::Error> {
    serde_json::to_string(&Envelope { message: Message { tweet } })
}

/// A stable partition of a tweet id.
pub fn partition_of_id(id: &str) -> usize {
    crc32fast::hash(id.as_bytes()) as usize
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_tweet() -> Tweet {
        Tweet {
            id_str: "1500000000000000017".into(),
            text: "Love this ☀️ #sunny @ana".into(),
            created_at: "Fri Mar 01 00:00:00 +0000 2024".into(),
            favorite_count: 3,
            retweet_count: 1,
            lang: Some("en".into()),
            entities: Entities {
                hashtags: vec![Hashtag { text: "sunny".into() }],
                user_mentions: vec![UserMention {
                    screen_name: "ana".into(),
                    name: "Ana".into(),
                    id_str: "42".into(),
                }],
                urls: vec![],
            },
            user: User {
                id_str: "7".into(),
                screen_name: "bob".into(),
                name: "Bob".into(),
                followers_count: 10,
                ..User::default()
            },
            retweeted_status: None,
        }
    }

    #[test]
    fn a_tweet_message_parses_into_its_fields() {
        let data = r#"{"message":{"tweet":{"id_str":"9","text":"hi #x","favorite_count":2,
            "retweet_count":5,"lang":"en","created_at":"Fri Mar 01 00:00:00 +0000 2024",
            "entities":{"hashtags":[{"text":"x","indices":[3,5]}],"user_mentions":[],"urls":[]},
            "user":{"id_str":"1","screen_name":"a","name":"A","followers_count":0,
                    "friends_count":1,"statuses_count":2,"profile_image_url":"u"},
            "source":"web","truncated":false}}}"#;
        let ParsedData::Tweet(tweet) = parse_sse_data(data) else { panic!("expected a tweet") };
        assert_eq!(tweet.id_str, "9");
        assert_eq!(tweet.text, "hi #x");
        assert_eq!(tweet.favorite_count + tweet.retweet_count, 7);
        assert_eq!(tweet.entities.hashtags, vec![Hashtag { text: "x".into() }]);
        assert_eq!(tweet.user.followers_count, 0);
        assert_eq!(tweet.user.statuses_count, 2);
        assert!(tweet.retweeted_status.is_none());
    }

    #[test]
    fn missing_and_null_optional_fields_take_defaults() {
        let data = r#"{"message":{"tweet":{"id_str":"9","text":null,"favorite_count":null,
            "entities":null,"lang":null,"user":{"id_str":"1","followers_count":null}}}}"#;
        let ParsedData::Tweet(tweet) = parse_sse_data(data) else { panic!("expected a tweet") };
        assert_eq!(tweet.text, "");
        assert_eq!(tweet.favorite_count, 0);
        assert_eq!(tweet.retweet_count, 0);
        assert_eq!(tweet.lang, None);
        assert_eq!(tweet.entities, Entities::default());
        assert_eq!(tweet.user.followers_count, 0);
    }

    #[test]
    fn a_retweet_carries_the_whole_original() {
        let mut retweet = sample_tweet();
        retweet.id_str = "2".into();
        retweet.retweeted_status = Some(Box::new(sample_tweet()));
        let parsed = parse_sse_data(&tweet_sse_data(&retweet));
        assert_eq!(parsed, ParsedData::Tweet(Box::new(retweet)));
    }

    #[test]
    fn the_kill_message_is_recognised_with_any_spacing() {
        assert_eq!(parse_sse_data(KILL_MESSAGE), ParsedData::Kill);
        assert_eq!(parse_sse_data(r#"{"message":panic}"#), ParsedData::Kill);
        assert_eq!(parse_sse_data(" {\n\"message\" :\tpanic } "), ParsedData::Kill);
        assert!(matches!(parse_sse_data(r#"{"message": panic!}"#), ParsedData::Malformed(_)));
        assert!(matches!(parse_sse_data(r#"{"message": "panic"}"#), ParsedData::Malformed(_)));
    }

    #[test]
    fn malformed_payloads_say_what_was_wrong() {
        let cases = [
            ("", "EOF"),
            ("{", "EOF"),
            (r#"{"message":{"tweet":{"text":"no id","user":{"id_str":"1"}}}}"#, "id_str"),
            (r#"{"message":{"tweet":{"id_str":"1"}}}"#, "user"),
            (r#"{"message":{}}"#, "tweet"),
            (r#"{"message":{"tweet":{"id_str":"1","user":{"id_str":"1"},"favorite_count":-1}}}"#, "-1"),
            ("[1,2,3]", "invalid type"),
        ];
        for (data, mentioned) in cases {
            match parse_sse_data(data) {
                ParsedData::Malformed(why) => {
                    assert!(why.contains(mentioned), "{data:?}: {why:?} does not mention {mentioned:?}")
                }
                other => panic!("{data:?} parsed as {other:?}"),
            }
        }
    }

    #[test]
    fn nesting_beyond_the_json_depth_limit_is_malformed_not_a_crash() {
        let mut data = String::from(r#"{"id_str":"0","user":{"id_str":"0"}}"#);
        for _ in 0..200 {
            data = format!(r#"{{"id_str":"1","user":{{"id_str":"1"}},"retweeted_status":{data}}}"#);
        }
        let data = format!(r#"{{"message":{{"tweet":{data}}}}}"#);
        assert!(matches!(parse_sse_data(&data), ParsedData::Malformed(_)));
    }

    fn text_strategy() -> impl Strategy<Value = String> {
        prop_oneof![any::<String>(), "\\PC{0,280}"]
    }

    fn user_strategy() -> impl Strategy<Value = User> {
        (text_strategy(), text_strategy(), any::<u64>(), any::<u64>(), any::<bool>(), any::<Option<String>>())
            .prop_map(|(id_str, name, followers_count, statuses_count, verified, location)| User {
                id_str,
                screen_name: name.chars().take(15).collect(),
                name,
                followers_count,
                friends_count: followers_count / 3,
                statuses_count,
                verified,
                location,
                created_at: String::new(),
            })
    }

    fn leaf_tweet_strategy() -> impl Strategy<Value = Tweet> {
        (
            text_strategy(),
            text_strategy(),
            any::<u64>(),
            any::<u64>(),
            any::<Option<String>>(),
            prop::collection::vec(text_strategy(), 0..4),
            user_strategy(),
        )
            .prop_map(|(id_str, text, favorite_count, retweet_count, lang, tags, user)| Tweet {
                id_str,
                text,
                created_at: "Fri Mar 01 00:00:00 +0000 2024".into(),
                favorite_count,
                retweet_count,
                lang,
                entities: Entities {
                    hashtags: tags.into_iter().map(|text| Hashtag { text }).collect(),
                    ..Entities::default()
                },
                user,
                retweeted_status: None,
            })
    }

    /// Any tweet, a retweet or not (for other modules' property tests too).
    pub(crate) fn tweet_strategy() -> impl Strategy<Value = Tweet> {
        (leaf_tweet_strategy(), prop::option::of(leaf_tweet_strategy())).prop_map(|(mut tweet, original)| {
            tweet.retweeted_status = original.map(Box::new);
            tweet
        })
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_text_never_panics(data in any::<String>()) {
            let _ = parse_sse_data(&data);
        }

        #[test]
        fn parsing_json_like_text_never_panics(data in r#"[{}\[\]":,a-z0-9 .\-]{0,200}"#) {
            let _ = parse_sse_data(&data);
        }

        #[test]
        fn any_tweet_round_trips_through_its_sse_data(tweet in tweet_strategy()) {
            let parsed = parse_sse_data(&tweet_sse_data(&tweet));
            prop_assert_eq!(parsed, ParsedData::Tweet(Box::new(tweet)));
        }

        #[test]
        fn a_truncated_tweet_is_malformed_never_a_tweet(tweet in tweet_strategy(), cut in 0.0..1.0f64) {
            let data = tweet_sse_data(&tweet);
            let mut end = (data.len() as f64 * cut) as usize;
            while !data.is_char_boundary(end) {
                end -= 1;
            }
            prop_assert!(matches!(parse_sse_data(&data[..end]), ParsedData::Malformed(_)));
        }
    }
}
