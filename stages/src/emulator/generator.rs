//! Deterministic tweet generation: every event is a pure function of the
//! seed, the stream number and the sequence number, so a run is reproducible
//! and a stream resumed from `Last-Event-ID` continues exactly where it left.

use std::sync::OnceLock;

use serde::Serialize;

use crate::tweet::{Entities, Hashtag, KILL_MESSAGE, Tweet, UrlEntity, User, UserMention, envelope_json};

/// The highest stream number served (`/tweets/1` to `/tweets/16`).
pub const MAX_STREAM: u32 = 16;

/// The longest tweet text, in characters.
pub const MAX_TEXT_CHARS: usize = 280;

/// Distinct authors per seed; the same index is always the same user.
const USER_POOL: u64 = 10_000;
/// Distinct original tweets that retweets point to, per seed.
const ORIGINAL_POOL: u64 = 1_000;
/// Share of tweets that are retweets.
const RETWEET_SHARE: f64 = 0.25;
/// Ids of generated tweets start here (sequence × MAX_STREAM + stream − 1 is added).
const TWEET_ID_BASE: u64 = 1_500_000_000_000_000_000;
/// Ids of original (retweeted) tweets start here.
const ORIGINAL_ID_BASE: u64 = 1_400_000_000_000_000_000;
/// Ids of users start here.
const USER_ID_BASE: u64 = 100_000_000;
/// `created_at` of sequence 0: 2024-03-01T00:00:00Z.
const START_EPOCH_SECONDS: i64 = 1_709_251_200;
/// Salts that keep the random draws of users, originals and events apart.
const USER_SALT: u64 = 0x5553_4552;
const ORIGINAL_SALT: u64 = 0x4f52_4947;
const RATE_SALT: u64 = 0x5241_5445;

/// A small, fast, portable pseudo-random generator (SplitMix64): the same
/// seed gives the same numbers on every machine and every version.
#[derive(Debug, Clone)]
pub struct SeededRng {
    state: u64,
}

impl SeededRng {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        SeededRng { state: seed }
    }

    /// A generator whose seed mixes every part (e.g. seed, stream, sequence).
    pub fn for_parts(parts: &[u64]) -> Self {
        let mut rng = SeededRng::new(0x9e37_79b9_7f4a_7c15);
        for &part in parts {
            rng.state ^= part;
            rng.state = rng.next_u64();
        }
        rng
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (0 when `bound` is 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        ((self.next_u64() as u128 * bound as u128) >> 64) as u64
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high.saturating_sub(low).saturating_add(1))
    }

    /// A number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A number spread evenly on a log scale over `low..=high`, so small values are common.
    pub fn log_uniform(&mut self, low: f64, high: f64) -> f64 {
        let (low, high) = (low.max(1e-9), high.max(low.max(1e-9)));
        (low.ln() + self.unit() * (high.ln() - low.ln())).exp()
    }

    /// One item of a non-empty slice (`None` for an empty one).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len() as u64) as usize)
    }
}

/// Common words that carry no sentiment.
const FILLER_WORDS: &[&str] = &[
    "the", "a", "to", "and", "of", "in", "is", "it", "you", "that", "this", "for", "on", "with", "my", "at",
    "so", "just", "be", "we", "all", "about", "today", "tonight", "now", "new", "time", "people", "day",
    "week", "game", "music", "phone", "coffee", "city", "team", "work", "home", "movie", "train", "weather",
    "morning", "news", "friends", "really", "still", "never", "again", "here", "there", "what", "why", "how",
    "when", "who", "got", "going", "see", "know", "think", "watch", "read", "going", "back", "after",
    "before", "first", "last", "next", "every", "some", "more", "much", "very", "too", "can't", "don't",
    "i'm", "it's", "they're", "gonna", "lol", "omg", "tbh", "idk",
];

/// Emoji, some of several code points (skin tones, joiners, variation selectors).
const EMOJI: &[&str] = &[
    "😀",
    "😂",
    "🤣",
    "😍",
    "😭",
    "😡",
    "😱",
    "🙏",
    "👍",
    "👍🏽",
    "👎",
    "🔥",
    "✨",
    "🎉",
    "💔",
    "❤️",
    "💯",
    "🙄",
    "😴",
    "🤔",
    "🚀",
    "🌧️",
    "☀️",
    "⚽",
    "🍕",
    "☕",
    "👨‍👩‍👧",
    "🏳️‍🌈",
    "🤦‍♀️",
    "🐶",
];

/// Words outside ASCII, in several scripts.
const UNICODE_WORDS: &[&str] = &[
    "café",
    "naïve",
    "über",
    "façade",
    "jalapeño",
    "résumé",
    "straße",
    "smörgåsbord",
    "crème",
    "brûlée",
    "東京",
    "ありがとう",
    "こんにちは",
    "Привет",
    "спасибо",
    "مرحبا",
    "שלום",
    "¡Olé!",
    "¿qué?",
    "Ελλάδα",
    "안녕하세요",
    "नमस्ते",
    "Zürich",
    "São",
    "Paulo",
    "İstanbul",
];

/// Hashtags, without their `#`.
const HASHTAGS: &[&str] = &[
    "MondayMotivation",
    "ThrowbackThursday",
    "FridayFeeling",
    "WorldCup",
    "rustlang",
    "AI",
    "climate",
    "music",
    "NowPlaying",
    "travel",
    "foodie",
    "news",
    "tech",
    "elections",
    "sports",
    "NBA",
    "fútbol",
    "東京",
    "photography",
    "art",
    "fitness",
    "gaming",
    "movies",
    "books",
    "love",
    "fail",
    "win",
    "coffee",
    "weekend",
    "breaking",
    "science",
    "space",
    "startup",
    "javascript",
    "python",
    "elixir",
    "health",
    "weather",
    "traffic",
    "fashion",
];

/// First names for display names, some outside ASCII.
const FIRST_NAMES: &[&str] = &[
    "Ana",
    "Bob",
    "Chloé",
    "Dmitri",
    "Emma",
    "Farah",
    "Giorgos",
    "Hana",
    "Ivan",
    "José",
    "Kenji",
    "Łukasz",
    "Maya",
    "Nia",
    "Oğuz",
    "Priya",
    "Quinn",
    "Renée",
    "Sven",
    "Tariq",
    "Uma",
    "Victor",
    "Wen",
    "Ximena",
    "Yusuf",
    "Zoë",
    "민준",
    "さくら",
];

/// Last names for display names.
const LAST_NAMES: &[&str] = &[
    "Silva",
    "Smith",
    "Müller",
    "Kowalski",
    "Nguyen",
    "García",
    "Rossi",
    "Tanaka",
    "Okafor",
    "Dubois",
    "Ivanova",
    "Haddad",
    "Johansson",
    "Papadopoulos",
    "Kim",
    "Patel",
    "O'Brien",
    "Yılmaz",
    "Costa",
    "Lee",
];

/// Syllables that make up generated screen names.
const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ra", "ten", "zu", "bo", "chi", "dan", "el", "fin", "go", "har", "is", "jo", "kel",
    "max", "no", "pix", "qu", "ro", "sam", "tor", "vy", "wex", "yo",
];

/// Where users say they are.
const LOCATIONS: &[&str] = &[
    "Lisbon",
    "New York, NY",
    "London",
    "Berlin",
    "São Paulo",
    "東京",
    "Lagos",
    "Mumbai",
    "Paris",
    "Seoul",
    "Chişinău",
    "Toronto",
    "Sydney",
    "somewhere",
    "🌍",
];

/// Languages a tweet may be tagged with, most of them English.
const LANGUAGES: &[&str] = &["en", "en", "en", "en", "en", "en", "es", "fr", "pt", "ja", "de", "und"];

/// Where a tweet was posted from (an extra field the model ignores).
const SOURCES: &[&str] = &[
    "<a href=\"https://mobile.twitter.com\" rel=\"nofollow\">Twitter Web App</a>",
    "<a href=\"http://twitter.com/download/iphone\" rel=\"nofollow\">Twitter for iPhone</a>",
    "<a href=\"http://twitter.com/download/android\" rel=\"nofollow\">Twitter for Android</a>",
];

/// Fallback sentiment words, used only if the lexicon yields too few.
const FALLBACK_POSITIVE: &[&str] = &["good", "great", "love", "happy", "excellent", "awesome", "wonderful"];
const FALLBACK_NEGATIVE: &[&str] = &["bad", "hate", "sad", "awful", "terrible", "angry", "horrible"];

/// The sentiment lexicon shipped with the `vader_sentiment` crate (VADER's
/// `vader_lexicon.txt`, about 7 500 entries, scores −4 … +4), sorted by word.
pub fn lexicon() -> &'static [(&'static str, f64)] {
    static SORTED: OnceLock<Vec<(&'static str, f64)>> = OnceLock::new();
    SORTED.get_or_init(|| {
        let mut entries: Vec<(&'static str, f64)> =
            vader_sentiment::LEXICON.iter().map(|(word, score)| (**word, *score)).collect();
        entries.sort_by(|a, b| a.0.cmp(b.0));
        entries
    })
}

/// The lexicon as served at `/emotion_values`: one `word<TAB>score` line per entry.
pub fn lexicon_lines(entries: &[(&str, f64)]) -> String {
    let mut text = String::with_capacity(entries.len() * 12);
    for (word, score) in entries {
        text.push_str(word);
        text.push('\t');
        text.push_str(&score.to_string());
        text.push('\n');
    }
    text
}

/// Words the generator draws sentiment from.
#[derive(Debug, Clone)]
pub struct Vocabulary {
    /// Clearly positive words (lexicon score ≥ 1.5).
    pub positive: Vec<&'static str>,
    /// Clearly negative words (lexicon score ≤ −1.5).
    pub negative: Vec<&'static str>,
}

impl Vocabulary {
    /// The lowercase alphabetic lexicon words with a clear sentiment, in lexicon order.
    pub fn from_lexicon(entries: &[(&'static str, f64)]) -> Self {
        let plain = |word: &str| word.len() >= 3 && word.bytes().all(|b| b.is_ascii_lowercase());
        let select = |keep: &dyn Fn(f64) -> bool, fallback: &[&'static str]| {
            let words: Vec<&'static str> =
                entries.iter().filter(|(word, score)| plain(word) && keep(*score)).map(|e| e.0).collect();
            if words.len() < fallback.len() { fallback.to_vec() } else { words }
        };
        Vocabulary {
            positive: select(&|score| score >= 1.5, FALLBACK_POSITIVE),
            negative: select(&|score| score <= -1.5, FALLBACK_NEGATIVE),
        }
    }

    /// The vocabulary of the shipped lexicon, built once.
    pub fn shipped() -> &'static Vocabulary {
        static SHIPPED: OnceLock<Vocabulary> = OnceLock::new();
        SHIPPED.get_or_init(|| Vocabulary::from_lexicon(lexicon()))
    }
}

/// Formats seconds since 1970 the way Twitter does: `Fri Mar 01 00:00:00 +0000 2024`.
pub fn format_created_at(epoch_seconds: i64) -> String {
    const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let days = epoch_seconds.div_euclid(86_400);
    let seconds = epoch_seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let weekday = WEEKDAYS[(days + 4).rem_euclid(7) as usize];
    format!(
        "{weekday} {} {day:02} {:02}:{:02}:{:02} +0000 {year}",
        MONTHS[(month - 1) as usize],
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// The (year, month 1–12, day 1–31) of a day count since 1970-01-01 (Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 } as u32;
    (year_of_era + era * 400 + i64::from(month <= 2), month, day)
}

/// One event of a stream, as the emulator decided it.
#[derive(Debug, Clone, PartialEq)]
pub enum GeneratedEvent {
    /// A tweet.
    Tweet(Box<Tweet>),
    /// The kill message.
    Kill,
    /// A deliberately broken payload (a tweet's JSON cut in half).
    Malformed(String),
}

/// A tweet as it goes on the wire: the model's fields plus a few that real
/// tweets carry and the model ignores.
#[derive(Serialize)]
struct WireTweet<'a> {
    #[serde(flatten)]
    tweet: &'a Tweet,
    source: &'static str,
    truncated: bool,
    is_quote_status: bool,
    timestamp_ms: String,
    filter_level: &'static str,
}

impl GeneratedEvent {
    /// The SSE `data:` payload of this event.
    pub fn sse_data(&self) -> String {
        match self {
            GeneratedEvent::Tweet(tweet) => wire_json(tweet),
            GeneratedEvent::Kill => KILL_MESSAGE.to_string(),
            GeneratedEvent::Malformed(data) => data.clone(),
        }
    }
}

/// The tweet's envelope JSON with the extra wire fields.
fn wire_json(tweet: &Tweet) -> String {
    let mut rng = SeededRng::for_parts(&[tweet.id_str.len() as u64, tweet.user.followers_count]);
    let wire = WireTweet {
        tweet,
        source: rng.pick(SOURCES).copied().unwrap_or_default(),
        truncated: false,
        is_quote_status: false,
        timestamp_ms: (rng.between(1_709_251_200_000, 1_709_337_600_000)).to_string(),
        filter_level: "low",
    };
    // Plain structs of strings and numbers always serialise.
    envelope_json(&wire).unwrap_or_default()
}

/// Generates the events of every stream from one seed.
#[derive(Debug, Clone)]
pub struct TweetGenerator {
    seed: u64,
    kill_ratio: f64,
    malformed_ratio: f64,
    vocabulary: &'static Vocabulary,
}

impl TweetGenerator {
    /// A generator; `kill_ratio` and `malformed_ratio` are the shares of kill messages and broken payloads.
    pub fn new(seed: u64, kill_ratio: f64, malformed_ratio: f64, vocabulary: &'static Vocabulary) -> Self {
        TweetGenerator { seed, kill_ratio, malformed_ratio, vocabulary }
    }

    /// Event `sequence` (from 1) of stream `stream`: the same every time it is asked for.
    pub fn event(&self, stream: u32, sequence: u64) -> GeneratedEvent {
        let mut rng = SeededRng::for_parts(&[self.seed, u64::from(stream), sequence]);
        let draw = rng.unit();
        if draw < self.kill_ratio {
            return GeneratedEvent::Kill;
        }
        let tweet = self.tweet(stream, sequence);
        if draw < self.kill_ratio + self.malformed_ratio {
            let json = wire_json(&tweet);
            let mut cut = json.len() / 2;
            while !json.is_char_boundary(cut) {
                cut -= 1;
            }
            return GeneratedEvent::Malformed(json[..cut].to_string());
        }
        GeneratedEvent::Tweet(Box::new(tweet))
    }

    /// The tweet of event `sequence` of stream `stream` (whatever the kill and malformed draws).
    pub fn tweet(&self, stream: u32, sequence: u64) -> Tweet {
        let mut rng = SeededRng::for_parts(&[self.seed, u64::from(stream), sequence, 1]);
        let id = TWEET_ID_BASE
            .wrapping_add(sequence.wrapping_mul(u64::from(MAX_STREAM)))
            .wrapping_add(u64::from(stream.saturating_sub(1) % MAX_STREAM));
        let created = START_EPOCH_SECONDS + (sequence / 10) as i64;
        if rng.chance(RETWEET_SHARE) {
            let original = self.original(rng.below(ORIGINAL_POOL));
            let user = self.user(rng.below(USER_POOL));
            let mut text = format!("RT @{}: {}", original.user.screen_name, original.text);
            truncate_chars(&mut text, MAX_TEXT_CHARS);
            let mut entities = original.entities.clone();
            entities.user_mentions.insert(0, mention_of(&original.user));
            return Tweet {
                id_str: id.to_string(),
                text,
                created_at: format_created_at(created),
                favorite_count: 0,
                retweet_count: original.retweet_count,
                lang: original.lang.clone(),
                entities,
                user,
                retweeted_status: Some(Box::new(original)),
            };
        }
        self.fresh_tweet(&mut rng, id, created)
    }

    /// Original tweet `index` of the pool retweets draw from.
    pub fn original(&self, index: u64) -> Tweet {
        let mut rng = SeededRng::for_parts(&[self.seed, ORIGINAL_SALT, index]);
        let created = START_EPOCH_SECONDS - 86_400 - rng.below(30 * 86_400) as i64;
        let mut tweet = self.fresh_tweet(&mut rng, ORIGINAL_ID_BASE + index, created);
        tweet.favorite_count = rng.log_uniform(1.0, 200_000.0) as u64;
        tweet.retweet_count = rng.log_uniform(1.0, 50_000.0) as u64;
        tweet
    }

    /// User `index` of the pool: the same index is always the same user.
    pub fn user(&self, index: u64) -> User {
        let mut rng = SeededRng::for_parts(&[self.seed, USER_SALT, index]);
        let mut screen_name = String::new();
        for _ in 0..rng.between(2, 4) {
            screen_name.push_str(rng.pick(SYLLABLES).copied().unwrap_or("x"));
        }
        if rng.chance(0.5) {
            screen_name.push_str(&rng.below(1000).to_string());
        }
        screen_name.truncate(15);
        let followers_count = if rng.chance(0.05) { 0 } else { rng.log_uniform(1.0, 2_000_000.0) as u64 };
        User {
            id_str: (USER_ID_BASE + index).to_string(),
            screen_name,
            name: format!(
                "{} {}",
                rng.pick(FIRST_NAMES).copied().unwrap_or_default(),
                rng.pick(LAST_NAMES).copied().unwrap_or_default()
            ),
            followers_count,
            friends_count: rng.log_uniform(1.0, 5_000.0) as u64,
            statuses_count: rng.log_uniform(1.0, 100_000.0) as u64,
            verified: rng.chance(0.02),
            location: if rng.chance(0.6) { rng.pick(LOCATIONS).map(|l| l.to_string()) } else { None },
            created_at: format_created_at(1_200_000_000 + rng.below(500_000_000) as i64),
        }
    }

    /// A tweet that is not a retweet, with its text and entities.
    fn fresh_tweet(&self, rng: &mut SeededRng, id: u64, created: i64) -> Tweet {
        let user = self.user(rng.below(USER_POOL));
        let text = self.text(rng);
        Tweet {
            id_str: id.to_string(),
            text: text.text,
            created_at: format_created_at(created),
            favorite_count: (rng.log_uniform(1.0, 500.0) as u64).saturating_sub(1),
            retweet_count: (rng.log_uniform(1.0, 100.0) as u64).saturating_sub(1),
            lang: rng.pick(LANGUAGES).map(|lang| lang.to_string()),
            entities: text.entities,
            user,
            retweeted_status: None,
        }
    }

    /// Realistic tweet text: filler and sentiment words, emoji, other
    /// scripts, hashtags, mentions and at most one link, up to 280 characters.
    pub fn text(&self, rng: &mut SeededRng) -> GeneratedText {
        let target = match rng.below(10) {
            0..=3 => rng.between(20, 80),
            4..=7 => rng.between(80, 160),
            _ => rng.between(160, MAX_TEXT_CHARS as u64),
        } as usize;
        let mut text = String::new();
        let mut chars = 0;
        let mut entities = Entities::default();
        loop {
            let (token, entity) = self.token(rng, entities.urls.is_empty());
            let token_chars = token.chars().count();
            let needed = token_chars + usize::from(chars > 0);
            if chars + needed > target {
                if chars == 0 {
                    text = token.chars().take(target).collect();
                }
                break;
            }
            if chars > 0 {
                text.push(' ');
            }
            text.push_str(&token);
            chars += needed;
            match entity {
                TokenEntity::None => {}
                TokenEntity::Hashtag(tag) => entities.hashtags.push(Hashtag { text: tag }),
                TokenEntity::Mention(mention) => entities.user_mentions.push(mention),
                TokenEntity::Url(url) => entities.urls.push(url),
            }
        }
        if !text.starts_with("https://") {
            capitalize_first(&mut text);
        }
        GeneratedText { text, entities }
    }

    /// One token of text and the entity it makes, if any.
    fn token(&self, rng: &mut SeededRng, url_allowed: bool) -> (String, TokenEntity) {
        let punctuate = |rng: &mut SeededRng, word: &str| match rng.below(20) {
            0 => format!("{word}!"),
            1 => format!("{word}."),
            2 => format!("{word}?"),
            3 => format!("{word},"),
            _ => word.to_string(),
        };
        let word = |rng: &mut SeededRng, words: &[&str]| rng.pick(words).copied().unwrap_or("ok").to_string();
        match rng.below(100) {
            0..=45 => {
                let filler = word(rng, FILLER_WORDS);
                (punctuate(rng, &filler), TokenEntity::None)
            }
            46..=57 => {
                let positive = word(rng, &self.vocabulary.positive);
                (punctuate(rng, &positive), TokenEntity::None)
            }
            58..=67 => {
                let negative = word(rng, &self.vocabulary.negative);
                (punctuate(rng, &negative), TokenEntity::None)
            }
            68..=75 => (word(rng, EMOJI), TokenEntity::None),
            76..=80 => (word(rng, UNICODE_WORDS), TokenEntity::None),
            81..=87 => {
                let tag =
                    if rng.chance(0.2) { word(rng, &self.vocabulary.positive) } else { word(rng, HASHTAGS) };
                (format!("#{tag}"), TokenEntity::Hashtag(tag))
            }
            88..=94 => self.mention(rng),
            95..=99 if url_allowed => {
                const CODE_CHARS: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
                let code: String = (0..10)
                    .map(|_| char::from(CODE_CHARS[rng.below(CODE_CHARS.len() as u64) as usize]))
                    .collect();
                let url = format!("https://t.co/{code}");
                let display_url = format!("example.com/{}", rng.below(1_000_000));
                let expanded_url = format!("https://{display_url}");
                (url.clone(), TokenEntity::Url(UrlEntity { url, expanded_url, display_url }))
            }
            _ => self.mention(rng),
        }
    }

    /// An `@mention` of a random user of the pool.
    fn mention(&self, rng: &mut SeededRng) -> (String, TokenEntity) {
        let user = self.user(rng.below(USER_POOL));
        (format!("@{}", user.screen_name), TokenEntity::Mention(mention_of(&user)))
    }

    /// The rate, in events per second, of period `period` of a stream whose rate varies in `low..=high`.
    pub fn varying_rate(&self, stream: u32, period: u64, low: f64, high: f64) -> f64 {
        SeededRng::for_parts(&[self.seed, RATE_SALT, u64::from(stream), period]).log_uniform(low, high)
    }
}

/// Generated text and the entities found in it.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedText {
    /// The text, at most 280 characters.
    pub text: String,
    /// Its hashtags, mentions and links.
    pub entities: Entities,
}

/// The entity a token of text stands for.
enum TokenEntity {
    None,
    Hashtag(String),
    Mention(UserMention),
    Url(UrlEntity),
}

/// The mention entity of a user.
fn mention_of(user: &User) -> UserMention {
    UserMention {
        screen_name: user.screen_name.clone(),
        name: user.name.clone(),
        id_str: user.id_str.clone(),
    }
}

/// Cuts `text` to at most `max` characters.
fn truncate_chars(text: &mut String, max: usize) {
    if let Some((byte, _)) = text.char_indices().nth(max) {
        text.truncate(byte);
    }
}

/// Upper-cases the first character of `text`, if it is an ASCII letter.
fn capitalize_first(text: &mut str) {
    if let Some(first) = text.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tweet::{ParsedData, parse_sse_data};
    use proptest::prelude::*;

    fn generator(kill_ratio: f64, malformed_ratio: f64) -> TweetGenerator {
        TweetGenerator::new(7, kill_ratio, malformed_ratio, Vocabulary::shipped())
    }

    #[test]
    fn created_at_is_formatted_like_twitter() {
        assert_eq!(format_created_at(1_709_251_200), "Fri Mar 01 00:00:00 +0000 2024");
        assert_eq!(format_created_at(0), "Thu Jan 01 00:00:00 +0000 1970");
        assert_eq!(format_created_at(951_782_400 + 3_661), "Tue Feb 29 01:01:01 +0000 2000");
        assert_eq!(format_created_at(-1), "Wed Dec 31 23:59:59 +0000 1969");
    }

    #[test]
    fn the_lexicon_comes_from_vader_and_is_sorted() {
        let entries = lexicon();
        assert!(entries.len() > 7000, "only {} lexicon entries", entries.len());
        assert!(entries.windows(2).all(|pair| pair[0].0 <= pair[1].0));
        let score = |word: &str| entries.iter().find(|e| e.0 == word).map(|e| e.1);
        assert_eq!(score("good"), Some(1.9));
        assert_eq!(score("hate"), Some(-2.7));
        let lines = lexicon_lines(&entries[..2]);
        assert_eq!(lines.lines().count(), 2);
        assert!(lines.lines().all(|line| line.split('\t').count() == 2));
    }

    #[test]
    fn the_vocabulary_has_clear_positive_and_negative_words() {
        let vocabulary = Vocabulary::shipped();
        assert!(vocabulary.positive.len() > 1000 && vocabulary.negative.len() > 1000);
        assert!(vocabulary.positive.contains(&"love") && vocabulary.negative.contains(&"hate"));
        let tiny = Vocabulary::from_lexicon(&[("nice", 1.8)]);
        assert_eq!(tiny.positive, FALLBACK_POSITIVE);
    }

    #[test]
    fn the_same_seed_stream_and_sequence_give_the_same_event() {
        let generator = generator(0.1, 0.1);
        for sequence in 1..200 {
            assert_eq!(generator.event(1, sequence), generator.event(1, sequence));
        }
        assert_ne!(generator.event(1, 1), generator.event(2, 1));
        assert_ne!(
            generator.tweet(1, 5),
            TweetGenerator::new(8, 0.0, 0.0, Vocabulary::shipped()).tweet(1, 5)
        );
    }

    #[test]
    fn ratios_of_kill_and_malformed_events_hold_roughly() {
        let generator = generator(0.1, 0.2);
        let events: Vec<GeneratedEvent> = (1..=5000).map(|sequence| generator.event(1, sequence)).collect();
        let kills = events.iter().filter(|e| matches!(e, GeneratedEvent::Kill)).count();
        let malformed = events.iter().filter(|e| matches!(e, GeneratedEvent::Malformed(_))).count();
        assert!((350..650).contains(&kills), "{kills} kill messages in 5000");
        assert!((800..1200).contains(&malformed), "{malformed} malformed events in 5000");
        for event in &events {
            let parsed = parse_sse_data(&event.sse_data());
            match event {
                GeneratedEvent::Kill => assert_eq!(parsed, ParsedData::Kill),
                GeneratedEvent::Malformed(_) => assert!(matches!(parsed, ParsedData::Malformed(_))),
                GeneratedEvent::Tweet(_) => assert!(matches!(parsed, ParsedData::Tweet(_))),
            }
        }
    }

    #[test]
    fn texts_are_varied_and_realistic() {
        let generator = generator(0.0, 0.0);
        let tweets: Vec<Tweet> = (1..=2000).map(|sequence| generator.tweet(2, sequence)).collect();
        let texts = tweets.iter().map(|t| t.text.as_str());
        assert!(texts.clone().all(|text| !text.is_empty() && text.chars().count() <= MAX_TEXT_CHARS));
        assert!(texts.clone().any(|text| text.chars().count() > 200));
        assert!(texts.clone().any(|text| !text.is_ascii()));
        assert!(texts.clone().any(|text| text.contains("https://t.co/")));
        assert!(texts.clone().all(|text| !text.contains("Https://")), "links are not capitalised");
        let vocabulary = Vocabulary::shipped();
        let has_word = |words: &[&str]| {
            texts.clone().any(|text| {
                text.split_whitespace()
                    .any(|w| words.contains(&w.to_lowercase().trim_end_matches(['!', '.', '?', ','])))
            })
        };
        assert!(has_word(&vocabulary.positive) && has_word(&vocabulary.negative));
        let retweets = tweets.iter().filter(|t| t.retweeted_status.is_some()).count();
        assert!((300..700).contains(&retweets), "{retweets} retweets in 2000");
        for tweet in &tweets {
            for tag in &tweet.entities.hashtags {
                assert!(tweet.text.contains(&format!("#{}", tag.text)) || tweet.retweeted_status.is_some());
            }
            if let Some(original) = &tweet.retweeted_status {
                assert!(tweet.text.starts_with(&format!("RT @{}:", original.user.screen_name)));
                assert_ne!(original.id_str, tweet.id_str);
            }
        }
        let zero_followers = tweets.iter().filter(|t| t.user.followers_count == 0).count();
        assert!(zero_followers > 0, "some users have no followers");
    }

    #[test]
    fn tweet_ids_are_unique_across_streams_and_sequences() {
        let generator = generator(0.0, 0.0);
        let mut ids = std::collections::HashSet::new();
        for stream in 1..=MAX_STREAM {
            for sequence in 1..=50 {
                assert!(ids.insert(generator.tweet(stream, sequence).id_str));
            }
        }
    }

    #[test]
    fn the_varying_rate_stays_within_its_bounds() {
        let generator = generator(0.0, 0.0);
        let rates: Vec<f64> =
            (0..100).map(|period| generator.varying_rate(1, period, 100.0, 2000.0)).collect();
        assert!(rates.iter().all(|rate| (100.0..=2000.0).contains(rate)));
        assert!(rates.iter().any(|&rate| rate < 300.0) && rates.iter().any(|&rate| rate > 1000.0));
    }

    proptest! {
        #[test]
        fn generated_tweets_round_trip_through_the_parser(seed in any::<u64>(), stream in 1..=MAX_STREAM, sequence in 1..u64::MAX / 32) {
            let generator = TweetGenerator::new(seed, 0.0, 0.0, Vocabulary::shipped());
            let GeneratedEvent::Tweet(tweet) = generator.event(stream, sequence) else {
                return Err(TestCaseError::fail("expected a tweet with no kill or malformed share"));
            };
            prop_assert!(tweet.text.chars().count() <= MAX_TEXT_CHARS);
            prop_assert_eq!(parse_sse_data(&GeneratedEvent::Tweet(tweet.clone()).sse_data()), ParsedData::Tweet(tweet));
        }
    }
}
