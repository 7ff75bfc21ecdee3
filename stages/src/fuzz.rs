//! Property tests of every parser of outside input, over arbitrary bytes and
//! over mutations of valid inputs: SSE streams (events capped) and SSE data
//! → tweet, the broker's command
//! lines and event JSON, the broker's log records on recovery, telnet
//! commands, TOML pipeline files (with `${VAR}` expansion), CSV records
//! (capped) and rows, and dead-letter files.
//!
//! Each must never panic, never allocate by what the input claims (lengths
//! and counts are capped), and say what is wrong and where in one line.
//!
//! `scripts/fuzz [SECONDS]` runs these with many more cases
//! (`STAGEFLOW_FUZZ_CASES`, default 256 in the normal suite).

use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::Config;

use crate::broker::log::{SyncMode, TopicLog};
use crate::broker::protocol::{MAX_PRIORITY, check_id, parse_command, parse_event};
use crate::broker::record::{self, Decoded, Record, StoredEvent};
use crate::csv_source::{RawRecord, RecordSplitter, parse_record};
use crate::emulator::generator::{TweetGenerator, Vocabulary};
use crate::sse_parser::{SseItem, SseParser};
use crate::tweet::{ParsedData, parse_sse_data, tweet_sse_data};

/// Cases per property: `STAGEFLOW_FUZZ_CASES`, else 256.
fn cases() -> u32 {
    std::env::var("STAGEFLOW_FUZZ_CASES").ok().and_then(|text| text.parse().ok()).unwrap_or(256)
}

fn config() -> Config {
    // Failures are reported with their input; no regression files are written into the tree.
    Config { cases: cases(), failure_persistence: None, ..Config::default() }
}

/// One edit of a valid input.
#[derive(Debug, Clone)]
enum Edit {
    /// Replace the byte at (position mod length) with this one.
    Set(usize, u8),
    /// Insert this byte there.
    Insert(usize, u8),
    /// Delete the byte there.
    Delete(usize),
    /// Cut everything from there.
    Truncate(usize),
    /// Repeat the bytes from there, up to 64 of them, once more.
    Repeat(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Edit::Set(at, byte)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Edit::Insert(at, byte)),
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), 1usize..64).prop_map(|(at, len)| Edit::Repeat(at, len)),
    ]
}

/// `valid` with `edits` applied.
fn mutate(valid: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut bytes = valid.to_vec();
    for edit in edits {
        let at = |position: usize, len: usize| if len == 0 { 0 } else { position % len };
        match *edit {
            Edit::Set(position, byte) if !bytes.is_empty() => {
                let i = at(position, bytes.len());
                bytes[i] = byte;
            }
            Edit::Insert(position, byte) => {
                let i = at(position, bytes.len() + 1);
                bytes.insert(i, byte);
            }
            Edit::Delete(position) if !bytes.is_empty() => {
                let i = at(position, bytes.len());
                bytes.remove(i);
            }
            Edit::Truncate(position) => {
                let i = at(position, bytes.len() + 1);
                bytes.truncate(i);
            }
            Edit::Repeat(position, len) if !bytes.is_empty() => {
                let i = at(position, bytes.len());
                let end = (i + len).min(bytes.len());
                let copy = bytes[i..end].to_vec();
                bytes.splice(end..end, copy);
            }
            _ => {}
        }
    }
    bytes
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec(edit(), 1..8)
}

/// An error fit for a reply or a log line: one line, not empty, of bounded length.
fn one_line(error: &str, limit: usize) -> Result<(), TestCaseError> {
    prop_assert!(!error.is_empty(), "an empty error");
    prop_assert!(!error.contains('\n') && !error.contains('\r'), "a multi-line error: {error:?}");
    prop_assert!(error.len() <= limit, "an error of {} bytes (limit {limit}): {error:.200}", error.len());
    Ok(())
}

// ---------------------------------------------------------------- SSE data -> tweet

fn valid_sse_data() -> impl Strategy<Value = String> {
    (any::<u64>(), 1u32..=2, 1u64..1_000_000).prop_map(|(seed, stream, sequence)| {
        let generator = TweetGenerator::new(seed, 0.0, 0.0, Vocabulary::shipped());
        tweet_sse_data(&generator.tweet(stream, sequence))
    })
}

/// A malformed payload's reason names where the JSON went wrong (serde's "line L column C").
fn check_sse(data: &str) -> Result<(), TestCaseError> {
    if let ParsedData::Malformed(why) = parse_sse_data(data) {
        one_line(&why, 300 + data.len().min(200))?;
        prop_assert!(why.contains(" line ") && why.contains(" column "), "no position in {why:?}");
    }
    Ok(())
}

/// The cap the SSE stream properties parse with: one tweet fits, a repeated one may not.
const SSE_CAP: usize = 4096;

/// An SSE stream of three tweets as the emulator frames them (`id`, one `data` line, a blank line).
fn valid_sse_stream() -> impl Strategy<Value = Vec<u8>> {
    (any::<u64>(), 1u64..1_000_000).prop_map(|(seed, first)| {
        let generator = TweetGenerator::new(seed, 0.0, 0.0, Vocabulary::shipped());
        (first..first + 3)
            .map(|sequence| {
                format!("id: {sequence}\ndata: {}\n\n", tweet_sse_data(&generator.tweet(1, sequence)))
            })
            .collect::<String>()
            .into_bytes()
    })
}

/// Feeds `bytes` in pieces of `step`: the parser never holds more than the
/// cap, every event it yields is within it, and its data is a tweet, a kill or a reason.
fn check_sse_stream(bytes: &[u8], step: usize) -> Result<(), TestCaseError> {
    let mut parser = SseParser::new(SSE_CAP);
    let mut items = Vec::new();
    for piece in bytes.chunks(step.max(1)) {
        parser.feed(piece, &mut items);
    }
    for item in &items {
        match item {
            SseItem::Message(message) => {
                prop_assert!(message.data.len() <= SSE_CAP, "{} bytes of data", message.data.len());
                check_sse(&message.data)?;
            }
            SseItem::TooLong { bytes, .. } => prop_assert!(*bytes > 0),
            SseItem::Retry(_) => {}
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- broker lines and events

const BROKER_LINES: &[&str] = &[
    r#"pub tweets {"id":"a1","priority":3,"msg":{"text":"héllo ☀️","n":[1,2.5,null]}}"#,
    "sub tweets",
    "unsub tweets",
    "ack tweets a1",
    "window 100",
    "name worker-1",
    "auth s3cret",
    "stats",
    "topics",
];

const BROKER_EVENT: &str = r#"{"id":"e-17","priority":9,"msg":{"user":{"id_str":"7"},"tags":["a","b"]}}"#;

// ---------------------------------------------------------------- telnet

const TELNET_LINES: &[&str] = &["twitter", "STOP\r", "stats", "help", "quit", "?"];

// ---------------------------------------------------------------- pipeline files

/// Every pipeline file the project ships, as seeds (they use `${VAR}` references too).
fn shipped_pipelines() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("pipelines/")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .map(|path| (path.display().to_string(), std::fs::read_to_string(&path).expect("readable")))
        .collect();
    files.sort();
    files
}

/// `${EMULATOR_URL}` and `${A}` resolve; anything else is undefined.
fn lookup(name: &str) -> Option<String> {
    match name {
        "EMULATOR_URL" => Some("http://127.0.0.1:4000".into()),
        "A" => Some("x${A}y".into()),
        _ => None,
    }
}

/// Parses and checks `text`: never panics, and every error names the file, and a line and column.
fn check_pipeline(text: &str) -> Result<(), TestCaseError> {
    let path = Path::new("fuzz.toml");
    let registry = crate::registry();
    let errors = match stageflow::config::parse_pipeline(path, text, &lookup) {
        Ok(file) => match registry.check(&file) {
            Ok(()) => return Ok(()),
            Err(errors) => errors,
        },
        Err(errors) => errors,
    };
    prop_assert!(!errors.0.is_empty());
    for error in &errors.0 {
        prop_assert_eq!(&error.file, path);
        prop_assert!(error.location.is_some(), "no location: {}", error);
        prop_assert!(!error.message.is_empty(), "an empty message: {}", error);
    }
    Ok(())
}

// ---------------------------------------------------------------- CSV rows

const CSV: &str = "id_str,text,created_at,favorite_count,retweet_count,lang,user_id_str,screen_name,followers_count,hashtags\n\
1,hello ☀️ #a,Fri Mar 01 00:00:00 +0000 2024,3,4,en,7,ana,10,a b\n\
2,\"quoted, text\",Fri Mar 01 00:00:01 +0000 2024,0,0,,8,bo,0,\n";

/// The record cap the CSV properties read with: the sample's header fits, a mutated row may not.
const CSV_CAP: usize = 160;

fn check_csv(bytes: &[u8]) -> Result<(), TestCaseError> {
    let mut records = RecordSplitter::new(bytes, CSV_CAP);
    let mut record = Vec::new();
    let mut headers = None;
    while let Some(raw) = records.next_record(&mut record).map_err(|e| TestCaseError::fail(e.to_string()))? {
        let RawRecord::Record { .. } = raw else { continue };
        prop_assert!(record.len() <= CSV_CAP, "a record of {} bytes", record.len());
        let row = match parse_record(&record) {
            Ok(row) => row,
            Err(why) => {
                one_line(&why, 400)?;
                continue;
            }
        };
        match &headers {
            None => headers = Some(row),
            Some(headers) => {
                if let Err(why) = crate::csv_source::tweet_from_row(headers, &row) {
                    one_line(&why, 400)?;
                    prop_assert!(why.contains("column"), "no column named in {why:?}");
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- broker log records

fn sample_records() -> Vec<Record> {
    vec![
        Record::Publish(StoredEvent { seq: 7, priority: 9, id: "a1".into(), body: BROKER_EVENT.into() }),
        Record::Ack { subscriber: "worker".into(), seq: 7 },
        Record::Subscribe { subscriber: "worker".into(), start: 6 },
        Record::Unsubscribe { subscriber: "worker".into() },
    ]
}

/// Writes a topic log of a few publishes, a subscriber and acks into `dir`.
fn write_log(dir: &Path) {
    let (log, _) = TopicLog::open(dir, 1 << 20, SyncMode::Off).expect("a new log");
    let mut guard = log.lock();
    guard.append(&Record::Subscribe { subscriber: "w".into(), start: 0 }).unwrap();
    for n in 1..=4u64 {
        let body = format!("{{\"n\":{n}}}");
        guard
            .publish(|seq| StoredEvent { seq, priority: (n % 10) as u8, id: format!("e{seq}"), body })
            .unwrap();
    }
    guard.append(&Record::Ack { subscriber: "w".into(), seq: 2 }).unwrap();
}

// ---------------------------------------------------------------- dead letters

fn dead_letter_lines() -> String {
    let record = crate::dead_letters::Record {
        stage: "store".into(),
        error: "tweets rejected document \"1\": too large".into(),
        at: "2026-01-01T00:00:00.000Z".into(),
        attempts: 2,
        event: serde_json::json!({ "tweet": { "id_str": "1" }, "kill": false }),
    };
    format!("{}\n{}\n", record.to_line(), record.to_line())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn sse_data_of_any_text_is_a_tweet_a_kill_or_a_reason(data in any::<String>()) {
        check_sse(&data)?;
    }

    #[test]
    fn sse_data_mutated_from_real_tweets_is_a_tweet_a_kill_or_a_reason(valid in valid_sse_data(), edits in edits()) {
        let bytes = mutate(valid.as_bytes(), &edits);
        check_sse(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn broker_lines_mutated_from_valid_ones_parse_or_give_a_bounded_one_line_error(
        line in prop::sample::select(BROKER_LINES),
        edits in edits(),
    ) {
        let bytes = mutate(line.as_bytes(), &edits);
        if let Err(error) = parse_command(&bytes) {
            one_line(&error, 400)?;
        }
    }

    #[test]
    fn broker_events_mutated_from_a_valid_one_are_checked_whole(edits in edits()) {
        let bytes = mutate(BROKER_EVENT.as_bytes(), &edits);
        match parse_event(&String::from_utf8_lossy(&bytes)) {
            Ok(event) => {
                prop_assert!(check_id(&event.id).is_ok());
                prop_assert!(event.priority <= MAX_PRIORITY);
            }
            Err(error) => one_line(&error, 400)?,
        }
    }

    #[test]
    fn broker_log_frames_mutated_from_valid_ones_decode_or_say_why(
        index in 0usize..4,
        edits in edits(),
    ) {
        let mut valid = Vec::new();
        record::encode(&sample_records()[index], &mut valid);
        let bytes = mutate(&valid, &edits);
        match record::decode(&bytes) {
            Decoded::Record(_, used) => prop_assert!(used <= bytes.len()),
            Decoded::Incomplete => {}
            Decoded::Corrupt(why) => one_line(&why, 200)?,
        }
    }

    #[test]
    fn telnet_lines_of_any_bytes_or_mutated_parse_or_give_a_bounded_one_line_error(
        line in prop::sample::select(TELNET_LINES),
        edits in edits(),
        noise in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        for bytes in [mutate(line.as_bytes(), &edits), noise] {
            if let Err(error) = crate::serve::protocol::parse_command(&bytes) {
                one_line(&error, 200)?;
            }
        }
    }

    #[test]
    fn pipeline_files_of_any_text_are_refused_with_a_location(text in ".{0,400}") {
        check_pipeline(&text)?;
    }

    #[test]
    fn pipeline_files_mutated_from_the_shipped_ones_load_or_are_refused_with_a_location(
        index in any::<prop::sample::Index>(),
        edits in edits(),
    ) {
        let files = shipped_pipelines();
        let (_, text) = &files[index.index(files.len())];
        let bytes = mutate(text.as_bytes(), &edits);
        check_pipeline(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn sse_streams_of_any_bytes_stay_within_the_cap(
        bytes in prop::collection::vec(any::<u8>(), 0..9000),
        step in 1usize..5000,
    ) {
        check_sse_stream(&bytes, step)?;
    }

    #[test]
    fn sse_streams_mutated_from_valid_ones_yield_tweets_or_reasons_within_the_cap(
        valid in valid_sse_stream(),
        edits in edits(),
        step in 1usize..2000,
    ) {
        check_sse_stream(&mutate(&valid, &edits), step)?;
    }

    #[test]
    fn csv_rows_mutated_from_valid_ones_are_tweets_or_name_the_column(edits in edits()) {
        check_csv(&mutate(CSV.as_bytes(), &edits))?;
    }

    #[test]
    fn csv_records_of_any_bytes_stay_within_the_cap(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        check_csv(&bytes)?;
    }

    #[test]
    fn dead_letter_files_mutated_from_valid_ones_read_or_name_the_line(edits in edits()) {
        let bytes = mutate(dead_letter_lines().as_bytes(), &edits);
        if let Err(error) = crate::dead_letters::file::parse_records(bytes.as_slice(), "fuzz.jsonl") {
            prop_assert!(error.starts_with("fuzz.jsonl:"), "{error}");
            one_line(&error, 600)?;
        }
    }
}

proptest! {
    // Each case writes and recovers a log on disk: fewer of them.
    #![proptest_config(Config { cases: cases() / 8 + 1, ..config() })]

    #[test]
    fn broker_logs_damaged_on_disk_recover_what_is_intact_and_say_where(edits in edits()) {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path());
        let mut files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().filter_map(Result::ok).map(|e| e.path()).collect();
        files.sort();
        for path in &files {
            let bytes = std::fs::read(path).unwrap();
            std::fs::write(path, mutate(&bytes, &edits)).unwrap();
        }
        let (log, recovery) = TopicLog::open(dir.path(), 1 << 20, SyncMode::Off).expect("recovery never fails on damaged records");
        // Damaged records fail their checksum: only the intact ones, of the four publishes, come back.
        prop_assert!(recovery.last_seq <= 4, "{:?}", recovery.last_seq);
        drop(log);
        for warning in &recovery.warnings {
            one_line(warning, 600)?;
            prop_assert!(warning.contains(" at byte "), "no position in {warning:?}");
        }
    }
}
