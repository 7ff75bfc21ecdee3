//! The embedded sink: the three collections as tables of one SQLite file.
//!
//! ```sql
//! CREATE TABLE tweets            (id TEXT PRIMARY KEY, doc TEXT NOT NULL, -- id_str, tweet JSON
//!                                 engagement_counted INTEGER NOT NULL DEFAULT 1);
//! CREATE TABLE users             (id TEXT PRIMARY KEY, doc TEXT NOT NULL); -- id_str, user JSON
//!     -- both: CHECK (id <> ''), CHECK (length(doc) <= 16 MiB)
//! CREATE TABLE users_engagements (id TEXT PRIMARY KEY, -- user id_str
//!                                 tweet_count INTEGER NOT NULL, engagement_sum REAL NOT NULL,
//!                                 doc TEXT GENERATED ALWAYS AS (json_object(...)) VIRTUAL);
//!     -- doc: {"user_id", "tweet_count", "engagement_sum", "ratio"}
//! ```
//!
//! A batch is one transaction of `INSERT ... ON CONFLICT DO NOTHING`: a
//! replayed tweet or user changes nothing, and only rows actually inserted
//! count as new. The tables refuse an empty id and a document over 16 MiB
//! (MongoDB's limit, so both stores take the same documents); such a row
//! fails the transaction with a constraint error, which is permanent, and
//! the stage then stores the batch's documents one at a time so only the
//! refused ones are dead-lettered. A tweet is inserted with
//! `engagement_counted = 0`; an engagement flush is one transaction of
//! upserts that also sets it to 1 for the flush's tweets, so a replayed
//! tweet still at 0 is counted again and one at 1 never is. The totals are
//! plain columns an upsert adds to, and `doc` shows them as the same JSON
//! document the other tables and MongoDB's `users_engagements` hold:
//! rewriting a JSON text per upsert cost twice the rest of a flush. Work
//! runs on tokio's blocking pool, never on the runtime's threads.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::sync::Arc;

use rusqlite::{Connection, ErrorCode, TransactionBehavior, params};

use super::documents::{DocumentForm, SplitBatch};
use super::{EngagementFlush, FlushId, Inserted, Sink, SinkError};
use stageflow::config::{BuildContext, Kind, Signature, StageDecl, kind};
use stageflow::{Nothing, Pipeline};

use super::batcher::Batch;
use super::{CommonSinkSettings, build_sink};

/// The default file name, under the pipeline's data directory.
pub const DEFAULT_FILE: &str = "stageflow.db";

const SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    PRAGMA synchronous = NORMAL;
    CREATE TABLE IF NOT EXISTS tweets (id TEXT PRIMARY KEY CHECK (id <> ''),
        doc TEXT NOT NULL CHECK (length(CAST(doc AS BLOB)) <= 16777216),
        engagement_counted INTEGER NOT NULL DEFAULT 1);
    CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY CHECK (id <> ''),
        doc TEXT NOT NULL CHECK (length(CAST(doc AS BLOB)) <= 16777216));
";

/// The engagement totals' table; `doc` is computed when read.
const ENGAGEMENTS_TABLE: &str = "
    CREATE TABLE IF NOT EXISTS users_engagements (id TEXT PRIMARY KEY,
        tweet_count INTEGER NOT NULL, engagement_sum REAL NOT NULL,
        doc TEXT GENERATED ALWAYS AS (json_object('user_id', id, 'tweet_count', tweet_count,
            'engagement_sum', engagement_sum,
            'ratio', CASE WHEN tweet_count = 0 THEN 0.0 ELSE engagement_sum / tweet_count END)) VIRTUAL);
";

const UPSERT_ENGAGEMENT: &str = "
    INSERT INTO users_engagements (id, tweet_count, engagement_sum) VALUES (?1, ?2, ?3)
    ON CONFLICT (id) DO UPDATE SET tweet_count = tweet_count + excluded.tweet_count,
        engagement_sum = engagement_sum + excluded.engagement_sum
";

/// Opens (creating if needed) the database at `path` with its three tables.
pub fn open(path: &Path) -> Result<Connection, SinkError> {
    if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|error| {
            SinkError::permanent(format!("cannot create the directory {}: {error}", parent.display()))
        })?;
    }
    let mut connection = Connection::open(path).map_err(|error| classify(path, error))?;
    connection.busy_timeout(Duration::from_secs(5)).map_err(|error| classify(path, error))?;
    connection.execute_batch(SCHEMA).map_err(|error| classify(path, error))?;
    add_counted_column(&connection).map_err(|error| classify(path, error))?;
    engagements_as_columns(&mut connection).map_err(|error| {
        let error = classify(path, error);
        SinkError {
            message: format!("{} (setting up users_engagements; nothing was changed)", error.message),
            ..error
        }
    })?;
    Ok(connection)
}

/// Creates `users_engagements`, or moves the totals of an older version's
/// table (the document as its only column) into the columns.
fn engagements_as_columns(connection: &mut Connection) -> Result<(), rusqlite::Error> {
    if engagement_columns(connection)? == Some(true) {
        return Ok(());
    }
    // Checked again under the write lock: another process may have moved them meanwhile.
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    match engagement_columns(&transaction)? {
        None => transaction.execute_batch(ENGAGEMENTS_TABLE)?,
        Some(true) => {}
        Some(false) => transaction.execute_batch(&format!(
            "ALTER TABLE users_engagements RENAME TO users_engagements_documents;
             {ENGAGEMENTS_TABLE}
             INSERT INTO users_engagements (id, tweet_count, engagement_sum)
                 SELECT id, json_extract(doc, '$.tweet_count'), json_extract(doc, '$.engagement_sum')
                 FROM users_engagements_documents;
             DROP TABLE users_engagements_documents;"
        ))?,
    }
    transaction.commit()
}

/// Whether `users_engagements` has its totals as columns; `None` when there is no such table.
fn engagement_columns(connection: &Connection) -> Result<Option<bool>, rusqlite::Error> {
    let names = column_names(connection, "users_engagements")?;
    Ok((!names.is_empty()).then(|| names.iter().any(|name| name == "tweet_count")))
}

/// Gives a `tweets` table of an older version its `engagement_counted`
/// column; its rows were counted when they were stored.
fn add_counted_column(connection: &Connection) -> Result<(), rusqlite::Error> {
    if !column_names(connection, "tweets")?.iter().any(|name| name == "engagement_counted") {
        connection
            .execute_batch("ALTER TABLE tweets ADD COLUMN engagement_counted INTEGER NOT NULL DEFAULT 1")?;
    }
    Ok(())
}

/// The names of `table`'s columns, none when there is no such table.
fn column_names(connection: &Connection, table: &str) -> Result<Vec<String>, rusqlite::Error> {
    let mut columns = connection.prepare("SELECT name FROM pragma_table_info(?1)")?;
    columns.query_map([table], |row| row.get::<_, String>(0))?.collect()
}

/// Sorts a SQLite error: a busy or locked database, a full disk or an I/O error may pass.
fn classify(path: &Path, error: rusqlite::Error) -> SinkError {
    let transient = matches!(
        error.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
        )
    );
    let message = format!("sqlite {}: {error}", path.display());
    if transient { SinkError::transient(message) } else { SinkError::permanent(message) }
}

/// Stores batches in a SQLite file.
#[derive(Debug)]
pub struct SqliteSink {
    path: PathBuf,
    /// Opened on first use (and again after a failure lost it).
    connection: Option<Connection>,
}

impl SqliteSink {
    /// A sink writing to the database file at `path` (opened on first write).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteSink { path: path.into(), connection: None }
    }

    /// Runs `work` on the connection on the blocking pool.
    async fn run<R: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut Connection) -> Result<R, rusqlite::Error> + Send + 'static,
    ) -> Result<R, SinkError> {
        let path = self.path.clone();
        let connection = self.connection.take();
        let task = tokio::task::spawn_blocking(move || {
            let mut connection = match connection {
                Some(connection) => connection,
                None => match open(&path) {
                    Ok(connection) => connection,
                    Err(error) => return (None, Err(error)),
                },
            };
            let result = work(&mut connection).map_err(|error| classify(&path, error));
            (Some(connection), result)
        });
        match task.await {
            Ok((connection, result)) => {
                self.connection = connection;
                result
            }
            Err(error) => Err(SinkError::permanent(format!("sqlite {}: {error}", self.path.display()))),
        }
    }
}

impl Sink for SqliteSink {
    const DOCUMENTS: DocumentForm = DocumentForm::Json;

    async fn insert(&mut self, batch: &SplitBatch, _: &FlushId) -> Result<Inserted, SinkError> {
        // The stage splits with the documents as text for this sink (`DOCUMENTS`); a
        // batch split otherwise has its documents as values, written out here.
        let text = |json: &Option<Arc<str>>, doc: &serde_json::Value| {
            json.clone().unwrap_or_else(|| Arc::from(doc.to_string()))
        };
        let tweets: Vec<(String, Arc<str>)> =
            batch.tweets.iter().map(|tweet| (tweet.id.clone(), text(&tweet.json, &tweet.doc))).collect();
        let users: Vec<(String, Arc<str>)> =
            batch.users.iter().map(|user| (user.id.clone(), text(&user.json, &user.doc))).collect();
        self.run(move |connection| {
            let transaction = connection.transaction()?;
            let started = Instant::now();
            let (mut new_tweets, mut uncounted) = (Vec::new(), Vec::new());
            {
                // One row per statement: SQLite's per-row bind and step cost less
                // than multi-row statements with `RETURNING` (measured, 2026-11-30).
                let mut insert = transaction.prepare_cached(
                    "INSERT INTO tweets (id, doc, engagement_counted) VALUES (?1, ?2, 0) ON CONFLICT DO NOTHING",
                )?;
                let mut counted =
                    transaction.prepare_cached("SELECT engagement_counted FROM tweets WHERE id = ?1")?;
                for (index, (id, doc)) in tweets.iter().enumerate() {
                    if insert.execute(params![id, &**doc])? == 1 {
                        new_tweets.push(index);
                    } else if counted.query_row(params![id], |row| row.get::<_, i64>(0))? == 0 {
                        uncounted.push(index);
                    }
                }
            }
            let tweets_time = started.elapsed();
            let started = Instant::now();
            let mut new_users = 0;
            {
                let mut insert =
                    transaction.prepare_cached("INSERT INTO users (id, doc) VALUES (?1, ?2) ON CONFLICT DO NOTHING")?;
                for (id, doc) in &users {
                    new_users += insert.execute(params![id, &**doc])?;
                }
            }
            transaction.commit()?;
            Ok(Inserted {
                new_tweets,
                uncounted,
                new_users,
                tweets_time,
                users_time: started.elapsed(),
                rejected: Vec::new(),
            })
        })
        .await
    }

    async fn add_engagements(&mut self, flush: &EngagementFlush) -> Result<(), SinkError> {
        let (deltas, tweet_ids) = (flush.deltas.clone(), flush.tweet_ids.clone());
        self.run(move |connection| {
            let transaction = connection.transaction()?;
            {
                let mut upsert = transaction.prepare_cached(UPSERT_ENGAGEMENT)?;
                for delta in &deltas {
                    upsert.execute(params![delta.user_id, delta.tweets as i64, delta.engagement_sum])?;
                }
                let mut mark =
                    transaction.prepare_cached("UPDATE tweets SET engagement_counted = 1 WHERE id = ?1")?;
                for id in &tweet_ids {
                    mark.execute(params![id])?;
                }
            }
            transaction.commit()
        })
        .await
    }
}

/// stores batches of scored tweets in tables tweets, users, users_engagements of a SQLite file
#[kind("sqlite_sink", Batch -> Nothing)]
pub struct SqliteSinkKind {
    /// database file, relative to the data directory (default stageflow.db)
    file: Option<String>,
    #[serde(flatten)]
    common: CommonSinkSettings,
}

impl Kind for SqliteSinkKind {
    fn check(&self, _: &StageDecl) -> Result<(), String> {
        self.common.options().map(|_| ())
    }

    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, context: &BuildContext) -> Result<(), String> {
        let options = self.common.options()?;
        let path = context.data_dir.join(self.file.as_deref().unwrap_or(DEFAULT_FILE));
        // Fail before anything starts if the file cannot be created or opened.
        open(&path).map_err(|error| error.message)?;
        build_sink(stage, pipeline, context, Self::NAME, options, move || SqliteSink::new(path.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::storage::documents::{EngagementDelta, TweetDoc, UserDoc};

    fn batch(ids: &[&str]) -> SplitBatch {
        SplitBatch {
            tweets: ids
                .iter()
                .map(|id| TweetDoc {
                    id: id.to_string(),
                    user_id: "u".into(),
                    engagement: 1.0,
                    doc: serde_json::Value::Null,
                    json: Some(json!({ "id_str": id }).to_string().into()),
                })
                .collect(),
            users: vec![UserDoc {
                id: "u".into(),
                doc: serde_json::Value::Null,
                json: Some(json!({ "id_str": "u" }).to_string().into()),
            }],
        }
    }

    fn doc(connection: &Connection, table: &str, id: &str) -> serde_json::Value {
        let text: String = connection
            .query_row(&format!("SELECT doc FROM {table} WHERE id = ?1"), [id], |row| row.get(0))
            .expect("the row exists");
        serde_json::from_str(&text).expect("JSON")
    }

    #[tokio::test]
    async fn only_rows_actually_inserted_count_as_new() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let path = directory.path().join("nested/stageflow.db");
        let mut sink = SqliteSink::new(&path);
        let first = sink.insert(&batch(&["1", "2"]), &next()).await.expect("stored");
        assert_eq!((first.new_tweets, first.new_users), (vec![0, 1], 1));
        let again = sink.insert(&batch(&["2", "3"]), &next()).await.expect("stored");
        assert_eq!((again.new_tweets, again.new_users), (vec![1], 0));
        assert_eq!(again.uncounted, vec![0], "tweet 2 is stored but no flush counted it");
        let connection = open(&path).expect("opens");
        let count: i64 = connection.query_row("SELECT count(*) FROM tweets", [], |row| row.get(0)).unwrap();
        assert_eq!(count, 3);
        assert_eq!(doc(&connection, "tweets", "3")["id_str"], "3");
    }

    #[tokio::test]
    async fn a_batch_says_which_rows_were_new_and_which_uncounted() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let mut sink = SqliteSink::new(directory.path().join("stageflow.db"));
        let ids: Vec<String> = (0..250).map(|n| format!("t{n}")).collect();
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        // Stored before: every 7th (uncounted); of those, every 21st is counted by a flush.
        let before: Vec<&str> = id_refs.iter().copied().step_by(7).collect();
        sink.insert(&batch(&before), &next()).await.expect("stored");
        let counted: Vec<&str> = id_refs.iter().copied().step_by(21).collect();
        sink.add_engagements(&flush(0, 1, 1.0, &counted)).await.expect("stored");
        let inserted = sink.insert(&batch(&id_refs), &next()).await.expect("stored");
        let expected_new: Vec<usize> = (0..ids.len()).filter(|n| n % 7 != 0).collect();
        let expected_uncounted: Vec<usize> = (0..ids.len()).filter(|n| n % 7 == 0 && n % 21 != 0).collect();
        assert_eq!(inserted.new_tweets, expected_new);
        assert_eq!(inserted.uncounted, expected_uncounted);
        assert_eq!(inserted.new_users, 0, "user u was stored by the first batch");
        let connection = open(&directory.path().join("stageflow.db")).expect("opens");
        let count: i64 = connection.query_row("SELECT count(*) FROM tweets", [], |row| row.get(0)).unwrap();
        assert_eq!(count as usize, ids.len());
        assert_eq!(doc(&connection, "tweets", "t249")["id_str"], "t249");
    }

    #[tokio::test]
    async fn a_batch_with_documents_as_values_is_stored_as_their_text() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let path = directory.path().join("stageflow.db");
        let mut sink = SqliteSink::new(&path);
        let mut values = batch(&["1"]);
        values.tweets[0].json = None;
        values.tweets[0].doc = json!({ "id_str": "1", "text": "as a value" });
        values.users[0].json = None;
        values.users[0].doc = json!({ "id_str": "u", "name": "U" });
        sink.insert(&values, &next()).await.expect("stored");
        let connection = open(&path).expect("opens");
        assert_eq!(doc(&connection, "tweets", "1"), json!({ "id_str": "1", "text": "as a value" }));
        assert_eq!(doc(&connection, "users", "u"), json!({ "id_str": "u", "name": "U" }));
    }

    #[tokio::test]
    async fn a_refused_row_fails_the_whole_batch_as_permanent() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let path = directory.path().join("stageflow.db");
        let mut sink = SqliteSink::new(&path);
        let ids: Vec<String> =
            (0..150).map(|n| if n == 120 { String::new() } else { format!("t{n}") }).collect();
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let error = sink.insert(&batch(&id_refs), &next()).await.expect_err("an empty id is refused");
        assert!(!error.transient, "{}", error.message);
        let count: i64 =
            open(&path).unwrap().query_row("SELECT count(*) FROM tweets", [], |row| row.get(0)).unwrap();
        assert_eq!(count, 0, "nothing of the batch is committed");
    }

    fn next() -> FlushId {
        FlushId { writer: "w".into(), seq: 0 }
    }

    fn flush(seq: u64, tweets: u64, sum: f64, tweet_ids: &[&str]) -> EngagementFlush {
        EngagementFlush {
            id: FlushId { writer: "w".into(), seq },
            deltas: vec![EngagementDelta { user_id: "u".into(), tweets, engagement_sum: sum }],
            tweet_ids: tweet_ids.iter().map(|id| id.to_string()).collect(),
        }
    }

    #[tokio::test]
    async fn engagements_add_up_with_their_ratio() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let path = directory.path().join("stageflow.db");
        let mut sink = SqliteSink::new(&path);
        sink.add_engagements(&flush(0, 2, 1.0, &[])).await.expect("stored");
        sink.add_engagements(&flush(1, 2, 2.0, &[])).await.expect("stored");
        let row = doc(&open(&path).unwrap(), "users_engagements", "u");
        assert_eq!(row, json!({ "user_id": "u", "tweet_count": 4, "engagement_sum": 3.0, "ratio": 0.75 }));
    }

    #[tokio::test]
    async fn a_flush_marks_its_tweets_counted_so_a_replay_is_not_counted_again() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let mut sink = SqliteSink::new(directory.path().join("stageflow.db"));
        sink.insert(&batch(&["1", "2"]), &next()).await.expect("stored");
        sink.add_engagements(&flush(0, 1, 1.0, &["1"])).await.expect("stored");
        let replay = sink.insert(&batch(&["1", "2"]), &next()).await.expect("stored");
        assert!(replay.new_tweets.is_empty());
        assert_eq!(replay.uncounted, vec![1], "only tweet 2 still waits for its count");
    }

    #[tokio::test]
    async fn a_tweets_table_of_an_older_version_gets_the_column_with_its_rows_counted() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let path = directory.path().join("stageflow.db");
        let old = Connection::open(&path).unwrap();
        old.execute_batch("CREATE TABLE tweets (id TEXT PRIMARY KEY, doc TEXT NOT NULL);").unwrap();
        old.execute("INSERT INTO tweets VALUES ('1', '{}')", []).unwrap();
        drop(old);
        let mut sink = SqliteSink::new(&path);
        let replay = sink.insert(&batch(&["1"]), &next()).await.expect("stored");
        assert!(replay.new_tweets.is_empty() && replay.uncounted.is_empty(), "{replay:?}");
    }

    #[tokio::test]
    async fn an_older_versions_engagement_documents_become_columns_and_keep_adding_up() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let path = directory.path().join("stageflow.db");
        let old = Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE users_engagements (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
             INSERT INTO users_engagements VALUES
                 ('u', '{\"user_id\":\"u\",\"tweet_count\":2,\"engagement_sum\":1.0,\"ratio\":0.5}');",
        )
        .unwrap();
        drop(old);
        let mut sink = SqliteSink::new(&path);
        sink.add_engagements(&flush(0, 2, 2.0, &[])).await.expect("stored");
        let row = doc(&open(&path).unwrap(), "users_engagements", "u");
        assert_eq!(row, json!({ "user_id": "u", "tweet_count": 4, "engagement_sum": 3.0, "ratio": 0.75 }));
        let tables: i64 = open(&path)
            .unwrap()
            .query_row("SELECT count(*) FROM sqlite_master WHERE name LIKE 'users_engagements%'", [], |row| {
                row.get(0)
            })
            .unwrap();
        assert_eq!(tables, 1, "the old table is gone");
    }

    #[test]
    fn an_older_engagement_document_that_is_not_json_fails_the_open_and_keeps_the_old_table() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let path = directory.path().join("stageflow.db");
        let old = Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE users_engagements (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
             INSERT INTO users_engagements VALUES ('u', 'not json');",
        )
        .unwrap();
        drop(old);
        let error = open(&path).expect_err("the totals cannot be read");
        assert!(!error.transient, "{}", error.message);
        for part in ["stageflow.db", "JSON", "users_engagements"] {
            assert!(error.message.contains(part), "{part} not in: {}", error.message);
        }
        let kept: String = Connection::open(&path)
            .unwrap()
            .query_row("SELECT doc FROM users_engagements WHERE id = 'u'", [], |row| row.get(0))
            .expect("the old table and its row are still there");
        assert_eq!(kept, "not json");
    }

    #[test]
    fn an_unwritable_path_is_a_clear_permanent_error() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let file = directory.path().join("a-file");
        std::fs::write(&file, "not a directory").unwrap();
        let error = open(&file.join("stageflow.db")).expect_err("cannot create a directory inside a file");
        assert!(!error.transient);
        assert!(error.message.contains("a-file"), "{}", error.message);
    }
}
