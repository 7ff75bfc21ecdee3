//! Reading dead-letter files back: every record of a file, and the
//! `stageflow dead-letters DIR` listing by stage and error.
//!
//! A line longer than [`MAX_RECORD_BYTES`] or that is not a record is an
//! error naming the file and line; reading never holds more than one line
//! beyond the records it returns.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use comfy_table::Table;

use super::{DIRECTORY, Record};

/// The longest record line read back (a rejected document may be large: 16 MB plus room).
pub const MAX_RECORD_BYTES: usize = 32 << 20;

/// Every record of the JSONL file at `path`, in order; errors name the file and line.
pub fn read_records(path: &Path) -> Result<Vec<Record>, String> {
    let file =
        std::fs::File::open(path).map_err(|error| format!("cannot open {}: {error}", path.display()))?;
    parse_records(BufReader::new(file), &path.display().to_string())
}

/// The records of JSONL text read from `reader`; `name` is used in errors (`name:line: ...`).
pub fn parse_records(reader: impl BufRead, name: &str) -> Result<Vec<Record>, String> {
    let mut records = Vec::new();
    let mut reader = reader;
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        let read = (&mut reader)
            .take(MAX_RECORD_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|error| format!("{name}:{number}: cannot read: {error}"))?;
        if read == 0 {
            break;
        }
        if line.len() > MAX_RECORD_BYTES {
            return Err(format!(
                "{name}:{number}: a line longer than {MAX_RECORD_BYTES} bytes is not a dead letter"
            ));
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let record: Record = serde_json::from_slice(text).map_err(|error| {
            format!(
                "{name}:{number}: not a dead letter ({{\"stage\", \"error\", \"at\", \"attempts\", \"event\"}}): {error}"
            )
        })?;
        records.push(record);
    }
    Ok(records)
}

/// One line of the listing: how many letters a stage has with one error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryRow {
    /// The stage.
    pub stage: String,
    /// The error (at most 160 characters of it).
    pub error: String,
    /// How many letters.
    pub count: u64,
    /// The first and last `at`.
    pub first: String,
    /// The last `at`.
    pub last: String,
    /// The file they are in.
    pub file: PathBuf,
}

/// What a data directory's dead-letter files hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// By stage, then error.
    pub rows: Vec<SummaryRow>,
    /// Letters in all.
    pub total: u64,
}

impl Summary {
    /// The listing as a table.
    pub fn table(&self) -> Table {
        let mut table = Table::new();
        table.set_header(vec!["stage", "error", "letters", "first", "last", "file"]);
        for row in &self.rows {
            table.add_row(vec![
                row.stage.clone(),
                row.error.clone(),
                row.count.to_string(),
                row.first.clone(),
                row.last.clone(),
                row.file.display().to_string(),
            ]);
        }
        table
    }
}

/// The error as listed: its first line, at most 160 characters.
fn shown_error(error: &str) -> String {
    let first = error.lines().next().unwrap_or_default();
    let mut shown: String = first.chars().take(160).collect();
    if first.chars().count() > 160 {
        shown.push('…');
    }
    shown
}

/// Lists the dead letters of data directory `dir` (its `dead-letters/*.jsonl`,
/// or `dir` itself when it holds the files) by stage and error.
pub fn summarize(dir: &Path) -> Result<Summary, String> {
    let folder = if dir.join(DIRECTORY).is_dir() { dir.join(DIRECTORY) } else { dir.to_path_buf() };
    let entries = std::fs::read_dir(&folder)
        .map_err(|error| format!("cannot read the directory {}: {error}", folder.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "jsonl"))
        .collect();
    files.sort();
    let mut groups: BTreeMap<(String, String, PathBuf), SummaryRow> = BTreeMap::new();
    let mut total = 0;
    for file in files {
        for record in read_records(&file)? {
            total += 1;
            let error = shown_error(&record.error);
            let row =
                groups.entry((record.stage.clone(), error.clone(), file.clone())).or_insert_with(|| {
                    SummaryRow {
                        stage: record.stage.clone(),
                        error,
                        count: 0,
                        first: record.at.clone(),
                        last: record.at.clone(),
                        file: file.clone(),
                    }
                });
            row.count += 1;
            if record.at < row.first {
                row.first.clone_from(&record.at);
            }
            if record.at > row.last {
                row.last.clone_from(&record.at);
            }
        }
    }
    Ok(Summary { rows: groups.into_values().collect(), total })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(stage: &str, error: &str, at: &str) -> Record {
        Record {
            stage: stage.into(),
            error: error.into(),
            at: at.into(),
            attempts: 1,
            event: json!({"n": 1}),
        }
    }

    #[test]
    fn the_listing_groups_by_stage_and_error_with_first_and_last_times() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join(DIRECTORY);
        std::fs::create_dir_all(&folder).unwrap();
        let lines = [
            record("store", "too large", "2026-01-01T00:00:02Z"),
            record("store", "too large", "2026-01-01T00:00:01Z"),
            record("store", "validation", "2026-01-01T00:00:03Z"),
        ]
        .map(|r| r.to_line())
        .join("\n");
        std::fs::write(folder.join("store.jsonl"), lines + "\n").unwrap();
        std::fs::write(folder.join("logger.jsonl"), record("logger", "kill\nmore", "t").to_line()).unwrap();
        let summary = summarize(dir.path()).unwrap();
        assert_eq!(summary.total, 4);
        let rows: Vec<(&str, &str, u64, &str, &str)> = summary
            .rows
            .iter()
            .map(|r| (r.stage.as_str(), r.error.as_str(), r.count, r.first.as_str(), r.last.as_str()))
            .collect();
        assert_eq!(
            rows,
            [
                ("logger", "kill", 1, "t", "t"),
                ("store", "too large", 2, "2026-01-01T00:00:01Z", "2026-01-01T00:00:02Z"),
                ("store", "validation", 1, "2026-01-01T00:00:03Z", "2026-01-01T00:00:03Z"),
            ]
        );
    }

    #[test]
    fn a_bad_line_is_an_error_naming_the_file_and_line() {
        let text = format!("{}\n\n{{\"stage\": 1}}\n", record("a", "e", "t").to_line());
        let error = parse_records(text.as_bytes(), "x.jsonl").unwrap_err();
        assert!(error.starts_with("x.jsonl:3: not a dead letter"), "{error}");
        let error = summarize(Path::new("/nonexistent/dir")).unwrap_err();
        assert!(error.contains("/nonexistent/dir"), "{error}");
    }
}
