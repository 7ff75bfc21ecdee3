//! A CSV file source: tweets read row by row, only as fast as demand asks.
//!
//! Files are read in order; each row becomes a tweet through the pure
//! [`tweet_from_row`]. A bad row is counted and logged with its file and
//! line, and the import goes on. Rows are read on the blocking pool, at most
//! `demand` at a time, so an import never floods what is downstream.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use stageflow::{Emitter, Flow, Pipeline, Producer};

use crate::broker::protocol::shorten;
use crate::sse::{SseEvent, TweetMessage};
use crate::tweet::{Entities, Hashtag, Tweet, User};
use stageflow::Nothing;
use stageflow::config::{BuildContext, DispatcherChoices, Kind, StageDecl, configure, settings};

/// Columns a tweet CSV file must have.
pub const REQUIRED_COLUMNS: [&str; 3] = ["id_str", "text", "user_id_str"];

/// Turns one CSV row into a tweet. `headers` names the columns; `id_str`,
/// `text` and `user_id_str` are required, counts must be whole numbers, and
/// `hashtags` is a space-separated list (with or without `#`).
pub fn tweet_from_row(headers: &csv::StringRecord, row: &csv::StringRecord) -> Result<Tweet, String> {
    let field = |name: &str| -> Option<&str> {
        headers.iter().position(|header| header == name).and_then(|index| row.get(index)).map(str::trim)
    };
    let required = |name: &str| -> Result<String, String> {
        match field(name) {
            Some(value) if !value.is_empty() => Ok(value.to_string()),
            _ => Err(format!("column `{name}` is missing or empty")),
        }
    };
    let count = |name: &str| -> Result<u64, String> {
        match field(name) {
            None | Some("") => Ok(0),
            Some(value) => {
                // A quoted field may hold line breaks and any length: quote it shortened, on one line.
                value.parse().map_err(|_| {
                    format!("column `{name}` must be a whole number, got \"{}\"", shorten(value))
                })
            }
        }
    };
    let text = |name: &str| field(name).unwrap_or_default().to_string();
    let hashtags = text("hashtags")
        .split_whitespace()
        .map(|tag| Hashtag { text: tag.trim_start_matches('#').to_string() })
        .filter(|tag| !tag.text.is_empty())
        .collect();
    let user = User {
        id_str: required("user_id_str")?,
        screen_name: text("screen_name"),
        name: text("user_name"),
        followers_count: count("followers_count")?,
        friends_count: count("friends_count")?,
        ..User::default()
    };
    Ok(Tweet {
        id_str: required("id_str")?,
        text: required("text")?,
        created_at: text("created_at"),
        favorite_count: count("favorite_count")?,
        retweet_count: count("retweet_count")?,
        lang: field("lang").filter(|lang| !lang.is_empty()).map(str::to_string),
        entities: Entities { hashtags, ..Entities::default() },
        user,
        retweeted_status: None,
    })
}

/// Rows read and rows rejected by one CSV source, across restarts.
#[derive(Debug, Default)]
pub struct CsvStats {
    /// Rows turned into tweets.
    pub rows: AtomicU64,
    /// Rows that could not be (logged with file and line).
    pub bad_rows: AtomicU64,
}

/// Where a CSV source is: the file open now and the ones still to read.
struct Cursor {
    files: Vec<PathBuf>,
    next_file: usize,
    open: Option<(PathBuf, csv::Reader<File>, csv::StringRecord)>,
    stats: Arc<CsvStats>,
}

impl Cursor {
    /// Reads up to `demand` good rows (blocking); `true` once every file is done.
    fn read(&mut self, demand: usize, out: &mut Vec<SseEvent>) -> bool {
        let mut record = csv::StringRecord::new();
        while out.len() < demand {
            let Some((path, reader, headers)) = &mut self.open else {
                if !self.open_next() {
                    return true;
                }
                continue;
            };
            match reader.read_record(&mut record) {
                Ok(false) => self.open = None,
                Ok(true) => {
                    let line = record.position().map_or(0, |position| position.line());
                    match tweet_from_row(headers, &record) {
                        Ok(tweet) => {
                            self.stats.rows.fetch_add(1, Ordering::Relaxed);
                            out.push(SseEvent {
                                id: format!("{}:{line}", path.display()),
                                message: TweetMessage::Tweet(Box::new(tweet)),
                            });
                        }
                        Err(why) => bad_row(&self.stats, path, line, &why),
                    }
                }
                Err(error) => {
                    let line = error.position().map_or(0, |position| position.line());
                    bad_row(&self.stats, path, line, &error.to_string());
                    if !matches!(
                        error.kind(),
                        csv::ErrorKind::UnequalLengths { .. } | csv::ErrorKind::Utf8 { .. }
                    ) {
                        self.open = None;
                    }
                }
            }
        }
        false
    }

    fn open_next(&mut self) -> bool {
        while self.next_file < self.files.len() {
            let path = self.files[self.next_file].clone();
            self.next_file += 1;
            let opened = csv::ReaderBuilder::new().flexible(false).from_path(&path).and_then(|mut reader| {
                let headers = reader.headers()?.clone();
                Ok((reader, headers))
            });
            match opened {
                Ok((reader, headers)) => {
                    let missing: Vec<&str> = REQUIRED_COLUMNS
                        .iter()
                        .copied()
                        .filter(|column| !headers.iter().any(|h| h == *column))
                        .collect();
                    if missing.is_empty() {
                        self.open = Some((path, reader, headers));
                        return true;
                    }
                    tracing::error!(
                        "{}:1: skipped: the header lacks column(s) {}",
                        path.display(),
                        missing.join(", ")
                    );
                }
                Err(error) => tracing::error!("{}: skipped: {error}", path.display()),
            }
        }
        false
    }
}

/// Counts a bad row and logs it with its file and line.
fn bad_row(stats: &CsvStats, path: &Path, line: u64, why: &str) {
    stats.bad_rows.fetch_add(1, Ordering::Relaxed);
    tracing::warn!("{}:{line}: bad row skipped: {why}", path.display());
}

/// A producer of tweets read from CSV files, as SSE-shaped events (id = `file:line`).
pub struct CsvTweets {
    cursor: Option<Cursor>,
}

impl CsvTweets {
    /// Reads `files` in order, counting into `stats`.
    pub fn new(files: Vec<PathBuf>, stats: Arc<CsvStats>) -> Self {
        CsvTweets { cursor: Some(Cursor { files, next_file: 0, open: None, stats }) }
    }
}

impl Producer for CsvTweets {
    type Out = SseEvent;

    async fn produce(&mut self, demand: usize, out: &mut Emitter<SseEvent>) -> Flow {
        let Some(mut cursor) = self.cursor.take() else { return Flow::Done };
        let read = tokio::task::spawn_blocking(move || {
            let mut rows = Vec::with_capacity(demand.min(4096));
            let finished = cursor.read(demand, &mut rows);
            (cursor, rows, finished)
        })
        .await;
        match read {
            Ok((cursor, rows, finished)) => {
                out.emit_batch(rows);
                self.cursor = Some(cursor);
                if finished { Flow::Done } else { Flow::Continue }
            }
            Err(error) => {
                // Only a runtime shutting down (or a bug in the reader) gets here.
                tracing::error!("reading CSV rows stopped: {error}");
                Flow::Done
            }
        }
    }
}

/// Expands glob patterns into the files they match, sorted, each pattern at least one file.
pub fn expand_files(patterns: &[String]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for pattern in patterns {
        let matched: Vec<PathBuf> = glob::glob(pattern)
            .map_err(|error| format!("`files`: bad pattern \"{pattern}\": {error}"))?
            .filter_map(Result::ok)
            .collect();
        if matched.is_empty() {
            return Err(format!(
                "`files`: \"{pattern}\" matches no file (paths are relative to where stageflow runs)"
            ));
        }
        files.extend(matched);
    }
    Ok(files)
}

/// reads tweets from CSV files as demand allows; bad rows are counted and logged with file and line
#[settings]
pub struct CsvTweetsKind {
    /// glob patterns of CSV files with a header row (id_str, text, user_id_str required; created_at, favorite_count, retweet_count, lang, hashtags, screen_name, user_name, followers_count, friends_count optional)
    files: Vec<String>,
}

impl Kind for CsvTweetsKind {
    const NAME: &'static str = "csv_tweets";
    type In = Nothing;
    type Out = SseEvent;

    fn check(&self, _: &StageDecl) -> Result<(), String> {
        expand_files(&self.files).map(|_| ())
    }

    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let files = expand_files(&self.files)?;
        let stats = Arc::new(CsvStats::default());
        let config = pipeline.producer(&stage.id, move || CsvTweets::new(files.clone(), stats.clone()));
        configure(stage, config, &DispatcherChoices::cloneable(), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(fields: &[&str]) -> csv::StringRecord {
        csv::StringRecord::from(fields.to_vec())
    }

    #[test]
    fn a_full_row_becomes_a_tweet() {
        let headers = record(&["id_str", "text", "user_id_str", "followers_count", "hashtags", "lang"]);
        let tweet =
            tweet_from_row(&headers, &record(&["7", "hello #rust", "42", "10", "#rust fast", "en"])).unwrap();
        assert_eq!(
            (tweet.id_str.as_str(), tweet.user.id_str.as_str(), tweet.user.followers_count),
            ("7", "42", 10)
        );
        let tags: Vec<&str> = tweet.entities.hashtags.iter().map(|h| h.text.as_str()).collect();
        assert_eq!(tags, vec!["rust", "fast"]);
        assert_eq!(tweet.lang.as_deref(), Some("en"));
    }

    #[test]
    fn bad_rows_say_which_column_and_why() {
        let headers = record(&["id_str", "text", "user_id_str", "favorite_count"]);
        let missing = tweet_from_row(&headers, &record(&["7", "", "42", "1"])).unwrap_err();
        assert_eq!(missing, "column `text` is missing or empty");
        let not_a_number = tweet_from_row(&headers, &record(&["7", "hi", "42", "many"])).unwrap_err();
        assert_eq!(not_a_number, "column `favorite_count` must be a whole number, got \"many\"");
        // Found by scripts/fuzz: a quoted field's line breaks and length reached the log line.
        let long = format!("1\n2,{}", "9".repeat(500));
        let error = tweet_from_row(&headers, &record(&["7", "hi", "42", &long])).unwrap_err();
        assert!(!error.contains('\n') && error.len() < 120, "{error}");
    }

    proptest! {
        #[test]
        fn arbitrary_rows_never_panic(fields in prop::collection::vec(".*", 0..8)) {
            let headers = record(&["id_str", "text", "user_id_str", "favorite_count", "hashtags"]);
            let row = csv::StringRecord::from(fields);
            let _ = tweet_from_row(&headers, &row);
        }
    }
}
