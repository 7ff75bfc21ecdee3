//! Hashtags: the top hashtags of each window (the engine's [`WindowReduce`]
//! and [`top_n`]), written atomically to a JSON file after every window.
//!
//! The file is replaced whole — written to a temporary file beside it, synced,
//! then renamed over it — so a reader sees the previous window or the new
//! one, never a partial file:
//!
//! ```json
//! {"pipeline":"tweets","window_end":"2024-03-01T00:00:03.000Z","window_ms":3000,
//!  "tweets":812,"top":[{"hashtag":"rust","count":41},{"hashtag":"sunny","count":17}]}
//! ```
//!
//! Hashtags come from the tweets' `entities.hashtags`, case-folded (`#Rust`
//! and `#rust` are one hashtag); ties rank alphabetically.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use stageflow::window::{Window, WindowReduce, top_n};
use stageflow::{Consumer, Events};

use super::flow::TweetFlow;
use crate::tweet::Tweet;
use stageflow::config::{BuildContext, DispatcherChoices, Kind, StageDecl, configure, kind};
use stageflow::{Nothing, Pipeline};

use super::flow::{check_selectors, tweet_flow_selector};
use crate::settings::{a_period, at_least_one};

/// One hashtag and how often it occurred in the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashtagCount {
    /// The hashtag, case-folded, without `#`.
    pub hashtag: String,
    /// Occurrences in the window.
    pub count: u64,
}

/// The content of the hashtags file: one window's top hashtags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashtagWindow {
    /// The pipeline's name.
    pub pipeline: String,
    /// When the window closed (RFC 3339, UTC).
    pub window_end: String,
    /// The window length, ms.
    pub window_ms: u64,
    /// Tweets counted in the window.
    pub tweets: u64,
    /// The top hashtags, most frequent first.
    pub top: Vec<HashtagCount>,
}

/// What a window accumulates.
#[derive(Debug, Default)]
pub struct HashtagCounts {
    counts: HashMap<String, u64>,
    tweets: u64,
}

/// The case-folded, non-empty hashtags of a tweet (a tag used twice counts twice).
pub fn hashtags_of(tweet: &Tweet) -> impl Iterator<Item = String> + '_ {
    tweet
        .entities
        .hashtags
        .iter()
        .map(|tag| tag.text.trim_start_matches('#').to_lowercase())
        .filter(|tag| !tag.is_empty())
}

/// Adds a tweet's hashtags to a window.
pub fn count_hashtags(counts: &mut HashtagCounts, tweet: &Tweet) {
    counts.tweets += 1;
    for tag in &tweet.entities.hashtags {
        let tag = tag.text.trim_start_matches('#');
        // A tag already in lowercase ASCII (most are) is looked up as it is:
        // no copy unless it is new. Any other is folded as `hashtags_of` does.
        if !tag.is_empty() && tag.bytes().all(|byte| byte.is_ascii() && !byte.is_ascii_uppercase()) {
            match counts.counts.get_mut(tag) {
                Some(count) => *count += 1,
                None => {
                    counts.counts.insert(tag.to_string(), 1);
                }
            }
            continue;
        }
        let tag = tag.to_lowercase();
        if !tag.is_empty() {
            *counts.counts.entry(tag).or_default() += 1;
        }
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same
/// directory, synced, renamed over `path`. Creates the directory if needed.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let directory = path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(directory)?;
    let name = path.file_name().map(|name| name.to_string_lossy()).unwrap_or_default();
    let temporary = directory.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

type Reducer = WindowReduce<Arc<Tweet>, HashtagCounts, (u64, Vec<(String, u64)>)>;

/// The hashtags stage: counts per window, writes the top `n` when the window closes.
pub struct Hashtags {
    reducer: Reducer,
    window: Duration,
    path: PathBuf,
    pipeline: String,
    include_extracted: bool,
    seen: u64,
}

impl Hashtags {
    /// A stage writing the top `top` hashtags of every `window` (1 ms to 1 day) to `path`.
    pub fn new(pipeline: &str, path: PathBuf, window: Duration, top: usize, include_extracted: bool) -> Self {
        let window = window.clamp(Duration::from_millis(1), Duration::from_secs(86_400));
        let reducer = WindowReduce::new(
            Window::Periodic(window),
            HashtagCounts::default,
            |counts: &mut HashtagCounts, tweet: Arc<Tweet>| count_hashtags(counts, &tweet),
            move |counts: HashtagCounts| (counts.tweets, top_n(counts.counts, top)),
        );
        Hashtags { reducer, window, path, pipeline: pipeline.to_string(), include_extracted, seen: 0 }
    }

    /// Closes the window and writes it; failures are logged, never fatal.
    async fn write_window(&mut self) {
        self.seen = 0;
        let (tweets, top) = self.reducer.close();
        let window = HashtagWindow {
            pipeline: self.pipeline.clone(),
            window_end: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            window_ms: self.window.as_millis() as u64,
            tweets,
            top: top.into_iter().map(|(hashtag, count)| HashtagCount { hashtag, count }).collect(),
        };
        let bytes = match serde_json::to_vec_pretty(&window) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!("hashtags: cannot serialise the window: {error}");
                return;
            }
        };
        let path = self.path.clone();
        let written = tokio::task::spawn_blocking(move || write_atomically(&path, &bytes)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!("hashtags: cannot write {}: {error}", self.path.display()),
            Err(error) => tracing::warn!("hashtags: the write of {} failed: {error}", self.path.display()),
        }
    }
}

impl Consumer for Hashtags {
    type In = TweetFlow;

    async fn handle_events(&mut self, events: &mut Events<TweetFlow>) {
        for event in events {
            if let TweetFlow::Tweet(tweet) = event
                && (self.include_extracted || !tweet.extracted)
            {
                self.seen += 1;
                // A periodic window closes on the timer only.
                let _ = self.reducer.push(tweet.tweet);
            }
        }
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(self.window)
    }

    async fn handle_tick(&mut self) {
        self.write_window().await;
    }

    async fn flush(&mut self) {
        if self.seen > 0 {
            self.write_window().await;
        }
    }
}

/// counts hashtags per window and writes the top ones atomically to a JSON file after each window
#[kind("hashtags", TweetFlow -> Nothing)]
pub struct HashtagsKind {
    /// the JSON file, relative to the data directory (default "hashtags.json")
    #[default("hashtags.json")]
    path: PathBuf,
    /// the window, and how often the file is written (default 3000)
    #[default(3000)]
    every_ms: u64,
    /// how many hashtags the file lists (default 25)
    #[default(25)]
    top: u64,
    /// count originals extracted from retweets too (default true)
    #[default(true)]
    include_extracted: bool,
}

impl Kind for HashtagsKind {
    fn check(&self, stage: &StageDecl) -> Result<(), String> {
        a_period("every_ms", self.every_ms)?;
        at_least_one("top", self.top)?;
        if self.path.as_os_str().is_empty() || self.path.file_name().is_none() {
            return Err(format!("`path` must name a file, got \"{}\"", self.path.display()));
        }
        check_selectors(stage)
    }

    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, context: &BuildContext) -> Result<(), String> {
        let path = context.data_dir.join(&self.path);
        let window = Duration::from_millis(self.every_ms);
        let top = usize::try_from(self.top).unwrap_or(usize::MAX);
        let name = context.pipeline.clone();
        let include = self.include_extracted;
        let config =
            pipeline.consumer(&stage.id, move || Hashtags::new(&name, path.clone(), window, top, include));
        configure(stage, config, &DispatcherChoices::demand_only(), Some(&tweet_flow_selector))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tweet::Hashtag;

    fn tagged(tags: &[&str]) -> Tweet {
        let mut tweet = super::super::flow::tests::tweet("1", "");
        tweet.entities.hashtags = tags.iter().map(|text| Hashtag { text: text.to_string() }).collect();
        tweet
    }

    #[test]
    fn hashtags_are_case_folded_and_empty_ones_skipped() {
        let tags: Vec<String> = hashtags_of(&tagged(&["Rust", "#rust", "", "ÉTÉ", "#"])).collect();
        assert_eq!(tags, ["rust", "rust", "été"]);
    }

    proptest::proptest! {
        /// The counting shortcut for lowercase ASCII tags counts what `hashtags_of` yields.
        #[test]
        fn counting_agrees_with_the_folded_hashtags(
            tweets in proptest::collection::vec(
                proptest::collection::vec("#?([a-zA-Z0-9_]|É|é|ß|İ|Σ|ǅ|😀){0,6}", 0..5),
                0..8,
            ),
        ) {
            let mut counts = HashtagCounts::default();
            let mut expected: HashMap<String, u64> = HashMap::new();
            for tags in &tweets {
                let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
                let tweet = tagged(&tags);
                count_hashtags(&mut counts, &tweet);
                for tag in hashtags_of(&tweet) {
                    *expected.entry(tag).or_default() += 1;
                }
            }
            proptest::prop_assert_eq!(counts.tweets, tweets.len() as u64);
            proptest::prop_assert_eq!(counts.counts, expected);
        }
    }

    #[test]
    fn a_window_counts_tweets_and_ranks_hashtags() {
        let mut counts = HashtagCounts::default();
        count_hashtags(&mut counts, &tagged(&["b", "a"]));
        count_hashtags(&mut counts, &tagged(&["B"]));
        count_hashtags(&mut counts, &tagged(&[]));
        count_hashtags(&mut counts, &tagged(&["c", "a"]));
        assert_eq!(counts.tweets, 4);
        assert_eq!(top_n(counts.counts, 2), vec![("a".to_string(), 2), ("b".to_string(), 2)]);
    }

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_no_temporary() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("nested/hashtags.json");
        write_atomically(&path, b"{\"first\":1}").unwrap();
        write_atomically(&path, b"{\"second\":2}").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"second\":2}");
        let names: Vec<_> =
            std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["hashtags.json"]);
    }

    #[test]
    fn an_unwritable_path_is_an_error_not_a_panic() {
        let directory = tempfile::tempdir().unwrap();
        let blocker = directory.path().join("file");
        std::fs::write(&blocker, "x").unwrap();
        assert!(write_atomically(&blocker.join("hashtags.json"), b"{}").is_err());
    }
}
