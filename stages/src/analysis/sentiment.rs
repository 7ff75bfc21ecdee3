//! Sentiment: the mean lexicon score of a tweet's words, and the lexicon itself.
//!
//! Words: the text is case-folded, punctuation (Unicode `P*` and ASCII
//! punctuation such as `#`, `@`, `$`, `+`) is deleted, and what remains is
//! split into runs of letters and digits (with their combining marks).
//! Whitespace separates words, and so do other symbols — emoji, `©`, `€` —
//! which are not words. So `"Don't #LOVE it!!😀"` has the words `dont`,
//! `love`, `it`. The score is the mean over all words, unknown words counting
//! 0; a text without words scores 0.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use regex::Regex;
use stageflow::{Emitter, Events, ProducerConsumer};
use tokio::sync::OnceCell;

use super::flow::{Score, TweetFlow, TweetScore};
use stageflow::config::{BuildContext, DispatcherChoices, Kind, StageDecl, configure, kind};
use stageflow::{Pipeline, PoolConfig};

use super::flow::{check_selectors, tweet_flow_selector};

fn punctuation() -> &'static Regex {
    static PUNCTUATION: OnceLock<Regex> = OnceLock::new();
    PUNCTUATION.get_or_init(|| Regex::new(r"^[\p{P}[:punct:]]$").expect("a valid pattern"))
}

fn word_start() -> &'static Regex {
    static WORD_START: OnceLock<Regex> = OnceLock::new();
    WORD_START.get_or_init(|| Regex::new(r"^[\p{L}\p{N}]$").expect("a valid pattern"))
}

fn mark() -> &'static Regex {
    static MARK: OnceLock<Regex> = OnceLock::new();
    MARK.get_or_init(|| Regex::new(r"^\p{M}$").expect("a valid pattern"))
}

/// What a (case-folded) character is to the word splitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CharClass {
    /// Punctuation: deleted, so it joins what is on either side.
    Punctuation,
    /// A letter or digit: starts or continues a word.
    Word,
    /// A combining mark: continues a word, and is no word on its own.
    Mark,
    /// Anything else (whitespace, symbols, emoji): ends a word.
    Separator,
}

fn classify(c: char) -> CharClass {
    let mut buffer = [0u8; 4];
    let text = c.encode_utf8(&mut buffer);
    if punctuation().is_match(text) {
        CharClass::Punctuation
    } else if word_start().is_match(text) {
        CharClass::Word
    } else if mark().is_match(text) {
        CharClass::Mark
    } else {
        CharClass::Separator
    }
}

/// The class of an ASCII character, as [`classify`] says (tested): punctuation is
/// `[:punct:]`, words are letters and digits, and ASCII has no combining marks.
const fn ascii_class(byte: u8) -> CharClass {
    if byte.is_ascii_punctuation() {
        CharClass::Punctuation
    } else if byte.is_ascii_alphanumeric() {
        CharClass::Word
    } else {
        CharClass::Separator
    }
}

/// [`ascii_class`] of every ASCII character, made at compile time.
const ASCII_CLASSES: [CharClass; 128] = {
    let mut table = [CharClass::Separator; 128];
    let mut byte = 0;
    while byte < 128 {
        table[byte] = ascii_class(byte as u8);
        byte += 1;
    }
    table
};

/// The class of `c`: from a table for ASCII, else looked up once per thread and remembered.
fn class_of(c: char) -> CharClass {
    thread_local! {
        static SEEN: std::cell::RefCell<HashMap<char, CharClass, FastHash>> = std::cell::RefCell::new(HashMap::default());
    }
    if c.is_ascii() {
        return ASCII_CLASSES[c as usize];
    }
    SEEN.with(|seen| *seen.borrow_mut().entry(c).or_insert_with(|| classify(c)))
}

/// Calls `each` with every word of `text`, case-folded, punctuation stripped (see the module docs).
fn for_each_word(text: &str, mut each: impl FnMut(&str)) {
    let mut word = String::with_capacity(32);
    let mut take = |c: char| match class_of(c) {
        CharClass::Punctuation => {}
        CharClass::Word => word.push(c),
        CharClass::Mark if !word.is_empty() => word.push(c),
        CharClass::Mark | CharClass::Separator => {
            if !word.is_empty() {
                each(&word);
                word.clear();
            }
        }
    };
    // `str::to_lowercase` folds each character on its own except `Σ`, whose
    // lowercase depends on its neighbours: only a text with one is folded
    // whole (an allocation); any other is folded as it is read.
    if text.contains('Σ') {
        text.to_lowercase().chars().for_each(&mut take);
    } else {
        for c in text.chars() {
            if c.is_ascii() {
                take(c.to_ascii_lowercase());
            } else {
                c.to_lowercase().for_each(&mut take);
            }
        }
    }
    if !word.is_empty() {
        each(&word);
    }
}

/// The words of `text`, case-folded, punctuation stripped (see the module docs).
pub fn words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    for_each_word(text, |word| words.push(word.to_string()));
    words
}

/// The mean lexicon score of the words of `text`; 0 for a text without words.
pub fn sentiment_score(text: &str, lexicon: &Lexicon) -> f64 {
    let (mut total, mut count) = (0.0, 0usize);
    for_each_word(text, |word| {
        total += lexicon.score(word);
        count += 1;
    });
    if count == 0 { 0.0 } else { total / count as f64 }
}

/// Word scores, keyed by lowercase word.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lexicon {
    scores: HashMap<String, f64, FastHash>,
}

/// The hasher of the per-word lookups: words are not attacker-chosen keys
/// worth SipHash's cost on every word of every tweet.
type FastHash = foldhash::fast::FixedState;

impl Lexicon {
    /// VADER's lexicon (about 7,500 entries, −4 … +4), as the `vader_sentiment` crate ships it.
    pub fn vader() -> Arc<Lexicon> {
        static VADER: OnceLock<Arc<Lexicon>> = OnceLock::new();
        VADER
            .get_or_init(|| {
                let scores = vader_sentiment::LEXICON
                    .iter()
                    .map(|(word, score)| (word.to_lowercase(), *score))
                    .collect();
                Arc::new(Lexicon { scores })
            })
            .clone()
    }

    /// A lexicon from `(word, score)` pairs (words are case-folded).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, f64)>) -> Lexicon {
        Lexicon { scores: pairs.into_iter().map(|(word, score)| (word.to_lowercase(), score)).collect() }
    }

    /// Reads `word<TAB>score` lines (VADER's file and the emulator's
    /// `/emotion_values`; further tab-separated columns are ignored; a line
    /// without a tab splits at its last space). Blank lines and `#` comments
    /// are skipped. The error names the first bad line.
    pub fn parse(text: &str) -> Result<Lexicon, String> {
        let mut scores = HashMap::default();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let (word, score) = match line.split_once('\t') {
                Some((word, rest)) => (word, rest.split('\t').next().unwrap_or_default()),
                None => line.trim().rsplit_once(char::is_whitespace).unwrap_or((line, "")),
            };
            let word = word.trim();
            let score: f64 = score
                .trim()
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite())
                .ok_or_else(|| format!("line {}: expected `word<TAB>score`, got {line:?}", index + 1))?;
            if word.is_empty() {
                return Err(format!("line {}: the word is empty", index + 1));
            }
            scores.insert(word.to_lowercase(), score);
        }
        if scores.is_empty() {
            return Err("the lexicon has no entries".into());
        }
        Ok(Lexicon { scores })
    }

    /// Reads a lexicon file (see [`Lexicon::parse`]).
    pub fn from_file(path: &Path) -> Result<Lexicon, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read the lexicon file {}: {error}", path.display()))?;
        Lexicon::parse(&text).map_err(|why| format!("lexicon file {}: {why}", path.display()))
    }

    /// Fetches a lexicon over HTTP, e.g. the emulator's `/emotion_values`.
    pub async fn from_url(url: &str) -> Result<Lexicon, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .no_proxy()
            .build()
            .map_err(|error| format!("cannot build an HTTP client for {url}: {error}"))?;
        let response = client.get(url).send().await.map_err(|error| format!("lexicon URL {url}: {error}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("lexicon URL {url}: answered HTTP {status}"));
        }
        let text = response.text().await.map_err(|error| format!("lexicon URL {url}: {error}"))?;
        Lexicon::parse(&text).map_err(|why| format!("lexicon URL {url}: {why}"))
    }

    /// The score of a (case-folded) word; 0 if it is not in the lexicon.
    pub fn score(&self, word: &str) -> f64 {
        self.scores.get(word).copied().unwrap_or(0.0)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    /// Whether it has no entries.
    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }
}

/// Where the sentiment stage gets its lexicon.
#[derive(Debug, Clone, PartialEq)]
pub enum LexiconSource {
    /// VADER's, shipped with the `vader_sentiment` crate (the default).
    Vader,
    /// A `word<TAB>score` file, read when the stage is built.
    File(PathBuf),
    /// A `word<TAB>score` URL, fetched by the first event (retried with backoff until it answers).
    Url(String),
}

/// The lexicon of a sentiment stage, shared by its workers and their restarts.
#[derive(Debug, Clone)]
pub struct SharedLexicon {
    url: Option<Arc<str>>,
    cell: Arc<OnceCell<Arc<Lexicon>>>,
}

impl SharedLexicon {
    /// Loads a VADER or file lexicon now; a URL one on first use.
    pub fn load(source: &LexiconSource) -> Result<SharedLexicon, String> {
        let ready =
            |lexicon: Arc<Lexicon>| SharedLexicon { url: None, cell: Arc::new(OnceCell::from(lexicon)) };
        match source {
            LexiconSource::Vader => Ok(ready(Lexicon::vader())),
            LexiconSource::File(path) => Ok(ready(Arc::new(Lexicon::from_file(path)?))),
            LexiconSource::Url(url) => {
                Ok(SharedLexicon { url: Some(url.as_str().into()), cell: Arc::default() })
            }
        }
    }

    /// A lexicon that is already loaded.
    pub fn ready(lexicon: Arc<Lexicon>) -> SharedLexicon {
        SharedLexicon { url: None, cell: Arc::new(OnceCell::from(lexicon)) }
    }

    /// The lexicon, fetching it first if needed: failures are logged and
    /// retried (100 ms doubling to 5 s), holding the events back meanwhile.
    pub async fn get(&self) -> Arc<Lexicon> {
        self.cell
            .get_or_init(|| async {
                let url = self.url.as_deref().unwrap_or_default();
                let mut delay = Duration::from_millis(100);
                loop {
                    match Lexicon::from_url(url).await {
                        Ok(lexicon) => {
                            tracing::info!(%url, entries = lexicon.len(), "sentiment lexicon loaded");
                            return Arc::new(lexicon);
                        }
                        Err(why) => {
                            tracing::warn!("{why}; retrying in {} ms", delay.as_millis());
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(5));
                        }
                    }
                }
            })
            .await
            .clone()
    }
}

/// The sentiment stage: scores each tweet; kill messages are skipped.
#[derive(Debug, Clone)]
pub struct Sentiment {
    lexicon: SharedLexicon,
}

impl Sentiment {
    /// A stage scoring with `lexicon`.
    pub fn new(lexicon: SharedLexicon) -> Self {
        Sentiment { lexicon }
    }
}

impl ProducerConsumer for Sentiment {
    type In = TweetFlow;
    type Out = TweetScore;

    async fn handle_events(&mut self, events: &mut Events<TweetFlow>, out: &mut Emitter<TweetScore>) {
        let lexicon = self.lexicon.get().await;
        for event in events {
            if let TweetFlow::Tweet(tweet) = event {
                let score = Score::Sentiment(sentiment_score(&tweet.tweet.text, &lexicon));
                out.emit(TweetScore { tweet, score });
            }
        }
    }
}

/// The sentiment and engagement pools when the file sets no `workers`.
pub const DEFAULT_SCORING_WORKERS: (usize, usize) = (1, 4);

/// scores each tweet: mean lexicon score of its words (VADER's lexicon unless told otherwise); skips kill messages
#[kind("sentiment", TweetFlow -> TweetScore)]
pub struct SentimentKind {
    /// a `word<TAB>score` file to use instead of VADER's (default: VADER, from the vader_sentiment crate)
    lexicon_file: Option<PathBuf>,
    /// fetch the lexicon from here, e.g. "http://localhost:4000/emotion_values" (retried until it answers)
    lexicon_url: Option<String>,
}

impl SentimentKind {
    fn source(&self) -> Result<LexiconSource, String> {
        match (&self.lexicon_file, &self.lexicon_url) {
            (Some(_), Some(_)) => Err("set `lexicon_file` or `lexicon_url`, not both".into()),
            (Some(path), None) => Ok(LexiconSource::File(path.clone())),
            (None, Some(url)) => {
                let parsed = reqwest::Url::parse(url)
                    .map_err(|error| format!("invalid `lexicon_url` '{url}': {error}"))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(format!("invalid `lexicon_url` '{url}': the scheme must be http or https"));
                }
                Ok(LexiconSource::Url(url.clone()))
            }
            (None, None) => Ok(LexiconSource::Vader),
        }
    }
}

impl Kind for SentimentKind {
    fn check(&self, stage: &StageDecl) -> Result<(), String> {
        check_selectors(stage)?;
        match self.source()? {
            LexiconSource::File(path) => Lexicon::from_file(&path).map(|_| ()),
            _ => Ok(()),
        }
    }

    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let lexicon = SharedLexicon::load(&self.source()?)?;
        let config = pipeline.producer_consumer(&stage.id, move || Sentiment::new(lexicon.clone()));
        let (min, max) = DEFAULT_SCORING_WORKERS;
        config.workers(PoolConfig::autoscaled(min, max));
        configure(stage, config, &DispatcherChoices::cloneable(), Some(&tweet_flow_selector))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The definition the splitter implements, with regular expressions over the whole text.
    fn reference_words(text: &str) -> Vec<String> {
        static PATTERNS: OnceLock<(Regex, Regex)> = OnceLock::new();
        let (punctuation, word) = PATTERNS.get_or_init(|| {
            let punctuation = Regex::new(r"[\p{P}[:punct:]]+").expect("a valid pattern");
            (punctuation, Regex::new(r"[\p{L}\p{N}][\p{L}\p{N}\p{M}]*").expect("a valid pattern"))
        });
        let folded = text.to_lowercase();
        let stripped = punctuation.replace_all(&folded, "");
        word.find_iter(&stripped).map(|found| found.as_str().to_string()).collect()
    }

    /// Text mixing ASCII, letters of other scripts, combining marks, punctuation, symbols and emoji.
    fn mixed_text() -> impl Strategy<Value = String> {
        let pieces = prop::sample::select(vec![
            "a", "Z", "7", " ", "\t", "-", "'", "#", "@", "$", "+", "é", "e\u{301}", "\u{301}", "İ", "Σ",
            "ΑΣ", "東", "١", "¡", "«", "—", "…", "😀", "👍🏽", "❤️", "€", "©", "\u{200d}", "ß", "ǅ",
        ]);
        prop::collection::vec(pieces, 0..30).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #[test]
        fn the_splitter_agrees_with_the_regular_expressions(text in mixed_text()) {
            prop_assert_eq!(words(&text), reference_words(&text));
        }

        #[test]
        fn the_splitter_agrees_on_any_text(text in "\\PC{0,60}") {
            prop_assert_eq!(words(&text), reference_words(&text));
        }

        #[test]
        fn the_score_is_the_mean_over_the_words(text in mixed_text()) {
            let lexicon = Lexicon::from_pairs([("a", 1.0), ("z", -2.0), ("é", 0.5), ("e\u{301}", 3.0), ("ασ", 4.0), ("ας", -4.0)]);
            let words = reference_words(&text);
            let expected = if words.is_empty() {
                0.0
            } else {
                words.iter().map(|word| lexicon.score(word)).sum::<f64>() / words.len() as f64
            };
            prop_assert!((sentiment_score(&text, &lexicon) - expected).abs() < 1e-9);
        }
    }

    #[test]
    fn the_ascii_table_is_what_the_patterns_say() {
        for byte in 0..128u8 {
            assert_eq!(ASCII_CLASSES[byte as usize], classify(byte as char), "{:?}", byte as char);
        }
    }

    fn small() -> Lexicon {
        Lexicon::from_pairs([("love", 3.2), ("hate", -2.7), ("good", 1.9), ("café", 1.0), ("dont", -0.5)])
    }

    #[test]
    fn words_are_case_folded_and_stripped_of_punctuation() {
        assert_eq!(words("Hello, WORLD!"), ["hello", "world"]);
        assert_eq!(words("Don't #LOVE it!!"), ["dont", "love", "it"]);
        assert_eq!(words("well-known @ana e.g."), ["wellknown", "ana", "eg"]);
        assert_eq!(words("  \t\n "), Vec::<String>::new());
        assert_eq!(words("¡¿«quoted»?! — “smart” …"), ["quoted", "smart"]);
    }

    #[test]
    fn emoji_and_symbols_separate_words_and_are_not_words() {
        assert_eq!(words("love😀hate"), ["love", "hate"]);
        assert_eq!(words("☀️ sunny ❤️love 👍🏽"), ["sunny", "love"]);
        assert_eq!(words("👨‍👩‍👧 €5 ©2024"), ["5", "2024"]);
    }

    #[test]
    fn unicode_letters_digits_and_marks_stay_in_words() {
        assert_eq!(words("Café ÉTÉ naïve"), ["café", "été", "naïve"]);
        // A decomposed é (e + combining acute) keeps its mark.
        assert_eq!(words("cafe\u{301}!"), ["cafe\u{301}"]);
        assert_eq!(words("東京 Ελλάδα ١٢٣"), ["東京", "ελλάδα", "١٢٣"]);
        assert_eq!(words("İSTANBUL"), ["i\u{307}stanbul"]);
    }

    #[test]
    fn the_score_is_the_mean_over_all_words() {
        let lexicon = small();
        assert_eq!(sentiment_score("", &lexicon), 0.0);
        assert_eq!(sentiment_score("!!! 😀 ...", &lexicon), 0.0);
        assert!((sentiment_score("LOVE", &lexicon) - 3.2).abs() < 1e-12);
        assert!((sentiment_score("I love it", &lexicon) - 3.2 / 3.0).abs() < 1e-12);
        assert!((sentiment_score("love, hate!", &lexicon) - 0.25).abs() < 1e-12);
        assert!(
            (sentiment_score("Don't... #love 😀 café", &lexicon) - (-0.5 + 3.2 + 1.0) / 3.0).abs() < 1e-12
        );
        assert_eq!(sentiment_score("unknown words only", &lexicon), 0.0);
    }

    #[test]
    fn vader_is_the_published_lexicon() {
        let vader = Lexicon::vader();
        assert!(vader.len() > 7000, "{} entries", vader.len());
        assert!(vader.score("love") > 2.0);
        assert!(vader.score("hate") < -2.0);
        assert!((sentiment_score("LOVE love", &vader) - vader.score("love")).abs() < 1e-12);
    }

    #[test]
    fn parsing_takes_tab_separated_lines_and_names_bad_ones() {
        let lexicon = Lexicon::parse("# comment\nGood\t1.9\t0.9\t[1, 2]\n\nbad -2.5\r\n").unwrap();
        assert_eq!(lexicon.len(), 2);
        assert_eq!(lexicon.score("good"), 1.9);
        assert_eq!(lexicon.score("bad"), -2.5);
        let error = Lexicon::parse("good\t1\nnice\tvery\n").unwrap_err();
        assert!(error.contains("line 2") && error.contains("nice"), "{error}");
        assert!(Lexicon::parse("x\tNaN").unwrap_err().contains("line 1"));
        assert!(Lexicon::parse("").unwrap_err().contains("no entries"));
        assert!(Lexicon::parse("\t1.0").unwrap_err().contains("empty"));
    }

    #[test]
    fn the_emulator_format_round_trips_vader() {
        let served = crate::emulator::generator::lexicon_lines(crate::emulator::generator::lexicon());
        let parsed = Lexicon::parse(&served).unwrap();
        assert_eq!(&parsed, Lexicon::vader().as_ref());
    }

    #[test]
    fn a_missing_file_is_named() {
        let error = Lexicon::from_file(Path::new("/nonexistent/lexicon.txt")).unwrap_err();
        assert!(error.contains("/nonexistent/lexicon.txt"), "{error}");
    }
}
