//! A CSV file source: tweets read row by row, only as fast as demand asks.
//!
//! Files are read in order; each row becomes a tweet through the pure
//! [`tweet_from_row`]. A bad row is counted and logged with its file and
//! line, and the import goes on. Rows are read on the blocking pool, at most
//! `demand` at a time, so an import never floods what is downstream.
//!
//! A record (one row, line breaks inside quotes included) may take at most
//! `max_record_bytes` (1 MiB by default): [`RecordSplitter`] cuts the file
//! into records by its quotes and line breaks before the CSV parser sees
//! them, so an unclosed quote or a huge field costs at most the cap, never
//! the rest of the file. A longer record is a bad row ("over the cap"),
//! skipped up to the next line break, where reading starts again.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use stageflow::ops::FromChunks;
use stageflow::{Pipeline, Producer};

use crate::broker::protocol::shorten;
use crate::sse::{SseEvent, TweetMessage};
use crate::tweet::{Entities, Hashtag, Tweet, User};
use stageflow::Nothing;
use stageflow::config::{BuildContext, DispatcherChoices, Kind, StageDecl, configure, kind};

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

/// The longest record a CSV source reads by default, bytes.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1 << 20;

/// One record cut from a CSV file by [`RecordSplitter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawRecord {
    /// A record starting at `line` is in the buffer (without its line break).
    Record {
        /// Its first line, counting from 1.
        line: u64,
    },
    /// The record starting at `line` was longer than the cap: its `bytes`
    /// were skipped up to the next line break, and the buffer is empty.
    TooLong {
        /// Its first line.
        line: u64,
        /// How many bytes were skipped.
        bytes: u64,
    },
}

/// Where a byte falls in CSV quoting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quoting {
    FieldStart,
    Unquoted,
    Quoted,
    /// A `"` inside a quoted field: the field's end, or the first of `""`.
    QuoteInQuoted,
}

impl Quoting {
    fn after(self, byte: u8) -> Quoting {
        match (self, byte) {
            (Quoting::FieldStart, b'"') | (Quoting::QuoteInQuoted, b'"') => Quoting::Quoted,
            (Quoting::Quoted, b'"') => Quoting::QuoteInQuoted,
            (Quoting::Quoted, _) => Quoting::Quoted,
            (_, b',') => Quoting::FieldStart,
            _ => Quoting::Unquoted,
        }
    }
}

/// Cuts a CSV byte stream into records, at line breaks outside quotes (as
/// the `csv` crate reads them), holding at most `max` bytes of one record;
/// blank lines are skipped. A record over `max` is reported and skipped up
/// to the next line break, quoted or not, so an unclosed quote cannot make
/// one record of the rest of the input.
pub struct RecordSplitter<R> {
    reader: R,
    max: usize,
    /// The line of the next byte.
    line: u64,
}

impl<R: BufRead> RecordSplitter<R> {
    /// Splits `reader`, at most `max` bytes a record.
    pub fn new(reader: R, max: usize) -> Self {
        RecordSplitter { reader, max, line: 1 }
    }

    /// Reads the next record into `record`; `None` at the end of the input.
    pub fn next_record(&mut self, record: &mut Vec<u8>) -> io::Result<Option<RawRecord>> {
        loop {
            record.clear();
            let start = self.line;
            let (mut quoting, mut skipped, mut over) = (Quoting::FieldStart, 0u64, false);
            let ended = loop {
                let available = self.reader.fill_buf()?;
                if available.is_empty() {
                    break false;
                }
                let mut used = 0;
                let mut ended = false;
                for &byte in available {
                    used += 1;
                    if byte == b'\n' {
                        self.line += 1;
                    }
                    if matches!(byte, b'\n' | b'\r') && (over || quoting != Quoting::Quoted) {
                        ended = true;
                        break;
                    }
                    quoting = quoting.after(byte);
                    if over {
                        skipped += 1;
                    } else if record.len() >= self.max {
                        over = true;
                        skipped = record.len() as u64 + 1;
                        record.clear();
                    } else {
                        record.push(byte);
                    }
                }
                self.reader.consume(used);
                if ended {
                    break true;
                }
            };
            if over {
                return Ok(Some(RawRecord::TooLong { line: start, bytes: skipped }));
            }
            if !record.is_empty() {
                return Ok(Some(RawRecord::Record { line: start }));
            }
            if !ended {
                return Ok(None);
            }
        }
    }
}

/// The fields of one record cut by [`RecordSplitter`].
pub fn parse_record(bytes: &[u8]) -> Result<csv::StringRecord, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .buffer_capacity(bytes.len().max(16))
        .from_reader(bytes);
    let mut record = csv::StringRecord::new();
    match reader.read_record(&mut record) {
        Ok(_) => Ok(record),
        Err(error) => match error.kind() {
            csv::ErrorKind::Utf8 { err, .. } => Err(format!("field {} is not valid UTF-8", err.field() + 1)),
            _ => Err(error.to_string()),
        },
    }
}

/// Rows read and rows rejected by one CSV source, across restarts.
#[derive(Debug, Default)]
pub struct CsvStats {
    /// Rows turned into tweets.
    pub rows: AtomicU64,
    /// Rows that could not be (logged with file and line).
    pub bad_rows: AtomicU64,
}

/// A CSV file being read: its records and its header.
struct OpenFile {
    path: PathBuf,
    records: RecordSplitter<BufReader<File>>,
    headers: csv::StringRecord,
}

/// Where a CSV source is: the file open now and the ones still to read.
struct Cursor {
    files: Vec<PathBuf>,
    next_file: usize,
    open: Option<OpenFile>,
    max_record_bytes: usize,
    stats: Arc<CsvStats>,
}

impl Cursor {
    /// Reads up to `demand` good rows (blocking); fewer only once every file is done.
    fn read(&mut self, demand: usize) -> Vec<SseEvent> {
        let (mut out, mut bytes) = (Vec::with_capacity(demand.min(4096)), Vec::new());
        while out.len() < demand {
            let Some(OpenFile { path, records, headers }) = &mut self.open else {
                if !self.open_next() {
                    break;
                }
                continue;
            };
            match records.next_record(&mut bytes) {
                Ok(None) => self.open = None,
                Ok(Some(RawRecord::TooLong { line, bytes })) => {
                    let why = format!(
                        "the record is over the {} byte cap (max_record_bytes; {bytes} bytes skipped up to the next line break)",
                        self.max_record_bytes
                    );
                    bad_row(&self.stats, path, line, &why);
                }
                Ok(Some(RawRecord::Record { line })) => {
                    let row = parse_record(&bytes).and_then(|record| {
                        if record.len() == headers.len() {
                            tweet_from_row(headers, &record)
                        } else {
                            Err(format!("{} fields, the header has {}", record.len(), headers.len()))
                        }
                    });
                    match row {
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
                    bad_row(&self.stats, path, records.line, &format!("reading stopped: {error}"));
                    self.open = None;
                }
            }
        }
        out
    }

    /// The header of a file just opened: its first record.
    fn header(records: &mut RecordSplitter<BufReader<File>>) -> Result<csv::StringRecord, String> {
        let mut bytes = Vec::new();
        match records.next_record(&mut bytes).map_err(|error| error.to_string())? {
            None => Err("the file is empty (a header row is needed)".into()),
            Some(RawRecord::TooLong { line, bytes }) => {
                Err(format!("{line}: the header is over the record cap ({bytes} bytes)"))
            }
            Some(RawRecord::Record { .. }) => parse_record(&bytes),
        }
    }

    fn open_next(&mut self) -> bool {
        while self.next_file < self.files.len() {
            let path = self.files[self.next_file].clone();
            self.next_file += 1;
            let opened = File::open(&path).map_err(|error| error.to_string()).and_then(|file| {
                let mut records = RecordSplitter::new(BufReader::new(file), self.max_record_bytes);
                let headers = Cursor::header(&mut records)?;
                Ok((records, headers))
            });
            match opened {
                Ok((records, headers)) => {
                    let missing: Vec<&str> = REQUIRED_COLUMNS
                        .iter()
                        .copied()
                        .filter(|column| !headers.iter().any(|h| h == *column))
                        .collect();
                    if missing.is_empty() {
                        self.open = Some(OpenFile { path, records, headers });
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

/// A producer of tweets read from CSV files in order, as SSE-shaped events
/// (id = `file:line`), counting into `stats`: each chunk of at most the
/// demand is read on the blocking pool, records of at most `max_record_bytes`.
pub fn csv_tweets(
    files: Vec<PathBuf>,
    stats: Arc<CsvStats>,
    max_record_bytes: usize,
) -> impl Producer<Out = SseEvent> {
    let max_record_bytes = max_record_bytes.max(1);
    let cursor = Cursor { files, next_file: 0, open: None, max_record_bytes, stats };
    FromChunks::new(cursor, |mut cursor: Cursor, demand| async move {
        match tokio::task::spawn_blocking(move || (cursor.read(demand), cursor)).await {
            Ok((rows, cursor)) => (!rows.is_empty()).then_some((cursor, rows)),
            Err(error) => {
                // Only a runtime shutting down (or a bug in the reader) gets here.
                tracing::error!("reading CSV rows stopped: {error}");
                None
            }
        }
    })
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
#[kind("csv_tweets", Nothing -> SseEvent)]
pub struct CsvTweetsKind {
    /// glob patterns of CSV files with a header row (id_str, text, user_id_str required; created_at, favorite_count, retweet_count, lang, hashtags, screen_name, user_name, followers_count, friends_count optional)
    files: Vec<String>,
    /// longest record (a row, quoted line breaks included), bytes; a longer one is a bad row skipped to the next line break (default 1048576)
    #[default(DEFAULT_MAX_RECORD_BYTES)]
    max_record_bytes: usize,
}

impl Kind for CsvTweetsKind {
    fn check(&self, _: &StageDecl) -> Result<(), String> {
        if self.max_record_bytes == 0 {
            return Err("`max_record_bytes` must be at least 1".into());
        }
        expand_files(&self.files).map(|_| ())
    }

    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, _: &BuildContext) -> Result<(), String> {
        let files = expand_files(&self.files)?;
        let stats = Arc::new(CsvStats::default());
        let max = self.max_record_bytes;
        let config = pipeline.producer(&stage.id, move || csv_tweets(files.clone(), stats.clone(), max));
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

    /// Every record of `input` split at most `max` bytes each, parsed; too long ones as `Err(line)`.
    fn split(input: &[u8], max: usize) -> Vec<(u64, Result<Vec<String>, u64>)> {
        let mut splitter = RecordSplitter::new(input, max);
        let mut bytes = Vec::new();
        let mut out = Vec::new();
        while let Some(raw) = splitter.next_record(&mut bytes).unwrap() {
            match raw {
                RawRecord::Record { line } => {
                    assert!(bytes.len() <= max, "a record of {} bytes over {max}", bytes.len());
                    let fields = parse_record(&bytes).map(|r| r.iter().map(str::to_string).collect());
                    out.push((line, Ok(fields.unwrap_or_else(|e| vec![format!("error: {e}")]))));
                }
                RawRecord::TooLong { line, bytes } => out.push((line, Err(bytes))),
            }
        }
        out
    }

    fn fields(list: &[&str]) -> Result<Vec<String>, u64> {
        Ok(list.iter().map(|f| f.to_string()).collect())
    }

    #[test]
    fn records_are_cut_at_line_breaks_outside_quotes_with_their_first_line() {
        let input = b"a,b\r\n\n\"x\ny\",\"say \"\"hi\"\"\"\r\nlast,row";
        assert_eq!(
            split(input, 100),
            vec![
                (1, fields(&["a", "b"])),
                (3, fields(&["x\ny", "say \"hi\""])),
                (5, fields(&["last", "row"]))
            ]
        );
    }

    #[test]
    fn a_record_over_the_cap_is_skipped_to_the_next_line_break_and_reading_goes_on() {
        let long = format!("1,{}\n2,ok\n", "x".repeat(50));
        assert_eq!(split(long.as_bytes(), 20), vec![(1, Err(52)), (2, fields(&["2", "ok"]))]);
        // An unclosed quote would make one field of the rest of the input: at the cap it stops at a line break.
        let unclosed = format!("1,\"open {}\n2,ok\n3,fine\n", "y".repeat(30));
        assert_eq!(
            split(unclosed.as_bytes(), 20),
            vec![(1, Err(38)), (2, fields(&["2", "ok"])), (3, fields(&["3", "fine"]))]
        );
        // A quoted line break within the cap is part of its record.
        assert_eq!(
            split(b"\"a\nb\",c\nd,e\n", 20),
            vec![(1, fields(&["a\nb", "c"])), (3, fields(&["d", "e"]))]
        );
    }

    #[test]
    fn a_file_with_a_record_over_the_cap_names_its_line_and_reads_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.csv");
        let huge = "z".repeat(5000);
        std::fs::write(&path, format!("id_str,text,user_id_str\n1,ok,u1\n2,\"{huge}\",u2\n3,fine,u3\n"))
            .unwrap();
        let stats = Arc::new(CsvStats::default());
        let mut cursor =
            Cursor { files: vec![path], next_file: 0, open: None, max_record_bytes: 1000, stats };
        let out = cursor.read(10);
        let ids: Vec<&str> = out.iter().map(|event| event.id.rsplit(':').next().unwrap()).collect();
        assert_eq!(ids, ["2", "4"], "rows 1 and 3 (lines 2 and 4); line 3 was over the cap");
        assert_eq!(cursor.stats.bad_rows.load(Ordering::Relaxed), 1);
        assert!(cursor.read(10).is_empty(), "every file is done");
    }

    proptest! {
        #[test]
        fn splitting_then_parsing_reads_what_the_csv_crate_reads(
            rows in prop::collection::vec(prop::collection::vec("[a-z\",\n\r ]{0,6}", 1..4), 0..6),
            crlf in any::<bool>(),
        ) {
            let mut writer = csv::WriterBuilder::new()
                .flexible(true)
                .terminator(if crlf { csv::Terminator::CRLF } else { csv::Terminator::Any(b'\n') })
                .from_writer(Vec::new());
            for row in &rows {
                writer.write_record(row).unwrap();
            }
            let bytes = writer.into_inner().unwrap();
            let expected: Vec<Vec<String>> = csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .from_reader(bytes.as_slice())
                .records()
                .map(|record| record.unwrap().iter().map(str::to_string).collect())
                .collect();
            let got: Vec<Vec<String>> = split(&bytes, 1 << 16).into_iter().map(|(_, r)| r.unwrap()).collect();
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn arbitrary_bytes_are_cut_into_records_within_the_cap(bytes in prop::collection::vec(any::<u8>(), 0..400), max in 1usize..64) {
            let records = split(&bytes, max);
            let lines = 1 + bytes.iter().filter(|&&b| b == b'\n').count() as u64;
            // Lines count `\n` only: records split by a lone `\r` share one.
            let mut previous = 1;
            for (line, _) in &records {
                prop_assert!(*line >= previous && *line <= lines, "line {line} after {previous} of {lines}");
                previous = *line;
            }
        }

        #[test]
        fn arbitrary_rows_never_panic(fields in prop::collection::vec(".*", 0..8)) {
            let headers = record(&["id_str", "text", "user_id_str", "favorite_count", "hashtags"]);
            let row = csv::StringRecord::from(fields);
            let _ = tweet_from_row(&headers, &row);
        }
    }
}
