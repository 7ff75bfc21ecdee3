//! The MongoDB sink (mongodb crate 3.x): collections `tweets`, `users` and
//! `users_engagements` of the database named in the URI (or set apart).
//!
//! - Tweets and users: unordered `insert_many` keyed by `_id = id_str`; a
//!   duplicate key (11000) means "already stored" and is success.
//! - `users_engagements`: `{_id, user_id, tweet_count, engagement_sum,
//!   ratio, applied}`, one `update` command of upserts per flush that add
//!   the increments and recompute `ratio`. `applied` maps each writer (a sink
//!   stage instance) to the last flush number it applied to this user; the
//!   filter `applied.<writer> < seq` makes a repeated flush a duplicate-key
//!   no-op.
//! - Counted exactly once across crashes: a tweet is stored with
//!   `engagement_counted: {writer, seq}`, the flush that will count it, and
//!   that flush records `applied.<writer> = seq` in the same upsert as the
//!   increments. A tweet found already stored (a redelivery after its worker
//!   died) is counted again only if its user's `applied` shows its flush never
//!   landed ([`count_state`]); it is then re-marked with the flush that will.
//!   One stored by another writer gets [`LEASE`] for that writer's flush to
//!   land first (it may be alive, its partition just handed over).
//! - Writes ask for journaled acknowledgement (`j: true`) unless the URI
//!   sets a write concern's `journal`, so a stored batch survives the server
//!   being killed.
//! - Failures are sorted into transient (network, timeouts, server
//!   selection, server errors) and permanent (bad URI, authentication,
//!   rejected documents). A document the server refuses for good in an
//!   unordered insert (a validator's 121, a key too long, ...) is reported
//!   as rejected while the others are stored; a document over the server's
//!   `maxBsonObjectSize` is refused by the driver before anything is sent,
//!   which fails the whole batch permanently, and the stage then stores the
//!   documents one at a time (see [`super`]).

use std::collections::{HashMap, HashSet};

use futures::TryStreamExt;
use std::time::{Duration, Instant};

use mongodb::bson::{Bson, Document, doc};
use mongodb::error::{Error, ErrorKind, WriteFailure};
use mongodb::options::{Acknowledgment, ClientOptions, ConnectionString, WriteConcern};
use mongodb::{Client, Database};
use serde_json::Value;

use super::documents::{EngagementDelta, SplitBatch};
use super::{Collection, EngagementFlush, FlushId, Inserted, Rejected, Sink, SinkError};
use stageflow::config::{BuildContext, Kind, Signature, StageDecl, kind};
use stageflow::{Nothing, Pipeline};

use super::batcher::Batch;
use super::{CommonSinkSettings, SinkOptions, build_sink};
use crate::settings::duration_setting;

/// The database used when neither the URI nor the `database` setting names one.
pub const DEFAULT_DATABASE: &str = "stageflow";
/// The default server-selection timeout (how long one try waits for a reachable server).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The duplicate-key error code.
const DUPLICATE_KEY: i32 = 11000;
/// Engagement upserts per `update` command.
const UPSERTS_PER_COMMAND: usize = 1000;

/// Server error codes that retrying cannot fix; every other server error is retried.
const PERMANENT_CODES: &[i32] = &[
    2,     // BadValue
    9,     // FailedToParse
    13,    // Unauthorized
    14,    // TypeMismatch
    18,    // AuthenticationFailed
    40,    // ConflictingUpdateOperators
    52,    // DollarPrefixedFieldName
    59,    // CommandNotFound
    72,    // InvalidOptions
    73,    // InvalidNamespace
    121,   // DocumentValidationFailure
    10334, // BSONObjectTooLarge
    17280, // KeyTooLong
];

/// Where the Mongo sink writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MongoConfig {
    /// `mongodb://…` or `mongodb+srv://…`.
    pub uri: String,
    /// The database, overriding the one in the URI.
    pub database: Option<String>,
    /// Server-selection timeout unless the URI sets `serverSelectionTimeoutMS`.
    pub timeout: Duration,
}

impl MongoConfig {
    /// A config for `uri`, its database from the URI.
    pub fn new(uri: impl Into<String>) -> Self {
        MongoConfig { uri: uri.into(), database: None, timeout: DEFAULT_TIMEOUT }
    }

    /// Checks the URI without connecting and names the database: the setting,
    /// else the URI's, else `stageflow`. A malformed URI is a clear error.
    pub fn database_name(&self) -> Result<String, String> {
        let parsed = ConnectionString::parse(&self.uri)
            .map_err(|error| format!("invalid MongoDB URI \"{}\": {}", redact(&self.uri), brief(&error)))?;
        Ok(self.database.clone().or(parsed.default_database).unwrap_or_else(|| DEFAULT_DATABASE.to_string()))
    }
}

/// The URI with any password replaced by `***`, for messages.
pub fn redact(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else { return uri.to_string() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***{}", &rest[at..])
        }
        None => uri.to_string(),
    }
}

/// The error's own message, without the driver's labels and source chain.
fn brief(error: &Error) -> String {
    match error.kind.as_ref() {
        ErrorKind::InvalidArgument { message, .. } => message.clone(),
        _ => error.to_string(),
    }
}

/// A JSON value as BSON: integers as Int64 (larger ones as Double), objects as documents.
pub fn to_bson(value: &Value) -> Bson {
    match value {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Number(number) => match (number.as_i64(), number.as_f64()) {
            (Some(int), _) => Bson::Int64(int),
            (None, Some(float)) => Bson::Double(float),
            (None, None) => Bson::Null,
        },
        Value::String(text) => Bson::String(text.clone()),
        Value::Array(items) => Bson::Array(items.iter().map(to_bson).collect()),
        Value::Object(map) => Bson::Document(to_document(map)),
    }
}

fn to_document(map: &serde_json::Map<String, Value>) -> Document {
    map.iter().map(|(key, value)| (key.clone(), to_bson(value))).collect()
}

/// A stored document: the JSON with `_id` first (also what the storage bench's raw-driver baseline inserts).
pub fn keyed(id: &str, value: &Value) -> Document {
    let mut document = doc! { "_id": id };
    if let Value::Object(map) = value {
        document.extend(to_document(map));
    }
    document
}

/// Sorts a driver error into transient (retried) and permanent.
pub fn classify(error: &Error) -> SinkError {
    let server_code_transient = |code: i32| !PERMANENT_CODES.contains(&code);
    let transient = match error.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::InvalidResponse { .. }
        | ErrorKind::Internal { .. } => true,
        ErrorKind::Command(command) => server_code_transient(command.code),
        ErrorKind::InsertMany(failure) => {
            failure.write_concern_error.is_some()
                || failure.write_errors.iter().flatten().all(|error| server_code_transient(error.code))
        }
        ErrorKind::Write(WriteFailure::WriteConcernError(_)) => true,
        ErrorKind::Write(WriteFailure::WriteError(write)) => server_code_transient(write.code),
        _ => error.contains_label("RetryableWriteError") || error.contains_label("TransientTransactionError"),
    };
    let message = format!("mongodb: {error}");
    if transient { SinkError::transient(message) } else { SinkError::permanent(message) }
}

/// What an unordered `insert_many` reported per document.
#[derive(Debug, Default, PartialEq)]
struct WriteOutcome {
    /// Indices of documents already stored (duplicate key).
    duplicates: Vec<usize>,
    /// Indices of documents the server refused for good, with its error.
    rejected: Vec<(usize, String)>,
}

/// Duplicates and permanently rejected documents of an unordered
/// `insert_many` (the others were stored), or the error when anything else
/// failed: a transient per-document error retries the whole batch (its
/// stored documents then count as duplicates of this write).
fn write_outcome<T>(result: Result<T, Error>) -> Result<WriteOutcome, SinkError> {
    let error = match result {
        Ok(_) => return Ok(WriteOutcome::default()),
        Err(error) => error,
    };
    if let ErrorKind::InsertMany(failure) = error.kind.as_ref()
        && failure.write_concern_error.is_none()
    {
        let errors = failure.write_errors.as_deref().unwrap_or_default();
        let settled = |code: i32| code == DUPLICATE_KEY || PERMANENT_CODES.contains(&code);
        if errors.iter().all(|write| settled(write.code)) {
            let mut outcome = WriteOutcome::default();
            for write in errors {
                if write.code == DUPLICATE_KEY {
                    outcome.duplicates.push(write.index);
                } else {
                    outcome
                        .rejected
                        .push((write.index, format!("mongodb error {}: {}", write.code, write.message)));
                }
            }
            return Ok(outcome);
        }
    }
    Err(classify(&error))
}

/// Stores batches in MongoDB.
#[derive(Debug)]
pub struct MongoSink {
    config: MongoConfig,
    /// Connected on first use.
    database: Option<Database>,
    /// Writers whose marks stayed unapplied past [`LEASE`]: taken for dead.
    gone: HashSet<String>,
}

impl MongoSink {
    /// A sink for `config` (it connects on first write).
    pub fn new(config: MongoConfig) -> Self {
        MongoSink { config, database: None, gone: HashSet::new() }
    }

    /// The database, connecting the first time.
    async fn database(&mut self) -> Result<Database, SinkError> {
        if let Some(database) = &self.database {
            return Ok(database.clone());
        }
        let uri = redact(&self.config.uri);
        let mut options = ClientOptions::parse(&self.config.uri).await.map_err(|error| {
            let message = format!("invalid MongoDB URI \"{uri}\": {}", brief(&error));
            match error.kind.as_ref() {
                ErrorKind::InvalidArgument { .. } => SinkError::permanent(message),
                _ => SinkError::transient(message),
            }
        })?;
        options.server_selection_timeout.get_or_insert(self.config.timeout);
        options.connect_timeout.get_or_insert(self.config.timeout);
        options.app_name.get_or_insert_with(|| "stageflow".to_string());
        // A batch counts as stored (and leaves the pipeline) once acknowledged,
        // so the acknowledgement must mean "in the journal": without `j`, a
        // server killed after acknowledging may lose the write. A `journal`
        // (or `w=0`) in the URI wins.
        let concern = options.write_concern.get_or_insert_with(WriteConcern::default);
        if concern.w != Some(Acknowledgment::Nodes(0)) {
            concern.journal.get_or_insert(true);
        }
        let name = self
            .config
            .database
            .clone()
            .or_else(|| options.default_database.clone())
            .unwrap_or_else(|| DEFAULT_DATABASE.to_string());
        let client = Client::with_options(options)
            .map_err(|error| SinkError::permanent(format!("MongoDB URI \"{uri}\": {}", brief(&error))))?;
        let database = client.database(&name);
        self.database = Some(database.clone());
        Ok(database)
    }
}

impl Sink for MongoSink {
    async fn insert(&mut self, batch: &SplitBatch, next: &FlushId) -> Result<Inserted, SinkError> {
        let database = self.database().await?;
        let tweets = database.collection::<Document>("tweets");
        let documents: Vec<Document> = batch
            .tweets
            .iter()
            .map(|tweet| {
                let mut document = keyed(&tweet.id, &tweet.doc);
                document.insert(COUNTED, flush_mark(next));
                document
            })
            .collect();
        let started = Instant::now();
        let outcome = if documents.is_empty() {
            WriteOutcome::default()
        } else {
            write_outcome(tweets.insert_many(documents).ordered(false).await)?
        };
        let tweets_time = started.elapsed();
        let duplicate_tweets = outcome.duplicates;
        let rejected_tweets: HashSet<usize> = outcome.rejected.iter().map(|(index, _)| *index).collect();
        let mut rejected: Vec<Rejected> = outcome
            .rejected
            .into_iter()
            .map(|(index, error)| Rejected { collection: Collection::Tweets, index, error })
            .collect();
        let uncounted = uncounted(&database, batch, &duplicate_tweets, next, &mut self.gone).await?;
        let duplicate_set: HashSet<usize> = duplicate_tweets.into_iter().collect();
        let new_tweets = (0..batch.tweets.len())
            .filter(|index| !rejected_tweets.contains(index) && !duplicate_set.contains(index))
            .collect();

        let users = database.collection::<Document>("users");
        let documents: Vec<Document> = batch.users.iter().map(|user| keyed(&user.id, &user.doc)).collect();
        let count = documents.len();
        let started = Instant::now();
        let outcome = if documents.is_empty() {
            WriteOutcome::default()
        } else {
            write_outcome(users.insert_many(documents).ordered(false).await)?
        };
        let users_time = started.elapsed();
        let new_users = count - outcome.duplicates.len() - outcome.rejected.len();
        rejected.extend(outcome.rejected.into_iter().map(|(index, error)| Rejected {
            collection: Collection::Users,
            index,
            error,
        }));
        Ok(Inserted { new_tweets, uncounted, new_users, tweets_time, users_time, rejected })
    }

    async fn add_engagements(&mut self, flush: &EngagementFlush) -> Result<(), SinkError> {
        let database = self.database().await?;
        for chunk in flush.deltas.chunks(UPSERTS_PER_COMMAND) {
            let updates: Vec<Document> =
                chunk.iter().map(|delta| engagement_upsert(delta, &flush.id)).collect();
            let mut command = doc! { "update": "users_engagements", "updates": updates, "ordered": false };
            // `run_command` does not add the database's write concern by itself.
            if let Some(concern) = database.write_concern() {
                let concern = mongodb::bson::to_bson(concern)
                    .map_err(|error| SinkError::permanent(format!("mongodb: write concern: {error}")))?;
                command.insert("writeConcern", concern);
            }
            let reply = database.run_command(command).await.map_err(|error| classify(&error))?;
            check_update_reply(&reply)?;
        }
        Ok(())
    }
}

/// How long a tweet another writer stored may wait for that writer's flush
/// before this one counts it: a live writer flushes right after its batch
/// (when its input is acked, as on a cut) or within `user_flush_interval`,
/// so a writer whose flush does not land in this time is taken for dead.
pub const LEASE: Duration = Duration::from_secs(10);

/// Of the tweets a batch found already stored, those whose engagement never
/// reached the store, re-marked to be counted by flush `next`.
///
/// A tweet stored by another writer and not counted yet may be that
/// writer's work in progress (a rebalance handed its partition over while
/// it held the tweet): it is counted here only once the other writer's
/// flush has not landed within [`LEASE`], and that writer is then in `gone`.
async fn uncounted(
    database: &Database,
    batch: &SplitBatch,
    duplicates: &[usize],
    next: &FlushId,
    gone: &mut HashSet<String>,
) -> Result<Vec<usize>, SinkError> {
    let tweets = database.collection::<Document>("tweets");
    let by_id: HashMap<&str, usize> =
        duplicates.iter().filter_map(|&i| batch.tweets.get(i).map(|tweet| (tweet.id.as_str(), i))).collect();
    let mut waiting: Vec<&str> = by_id.keys().copied().collect();
    let mut uncounted = Vec::new();
    let started = tokio::time::Instant::now();
    while !waiting.is_empty() {
        let pending = uncounted_marks(database, &waiting).await?;
        let expired = started.elapsed() >= LEASE;
        waiting.clear();
        for (id, writer) in pending {
            if writer == next.writer || gone.contains(&writer) {
                uncounted.push(id);
            } else if expired {
                tracing::warn!(writer = %writer, "a writer's engagement flush did not land within {LEASE:?}: counting its tweets here");
                gone.insert(writer);
                uncounted.push(id);
            } else if let Some((&key, _)) = by_id.get_key_value(id.as_str()) {
                waiting.push(key);
            }
        }
        if !waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    if !uncounted.is_empty() {
        let filter = doc! { "_id": { "$in": &uncounted } };
        tweets
            .update_many(filter, doc! { "$set": { COUNTED: flush_mark(next) } })
            .await
            .map_err(|e| classify(&e))?;
    }
    let mut indices: Vec<usize> = uncounted.iter().filter_map(|id| by_id.get(id.as_str()).copied()).collect();
    indices.sort_unstable();
    Ok(indices)
}

/// Of the stored tweets `ids`, those not counted, each with the writer meant to count it.
async fn uncounted_marks(database: &Database, ids: &[&str]) -> Result<Vec<(String, String)>, SinkError> {
    let tweets = database.collection::<Document>("tweets");
    let filter = doc! { "_id": { "$in": ids }, COUNTED: { "$type": "object" } };
    let marks = find_all(&tweets, filter, doc! { COUNTED: 1, "user_id": 1 }).await?;
    if marks.is_empty() {
        return Ok(Vec::new());
    }
    let users: HashSet<&str> = marks.iter().filter_map(|mark| mark.get_str("user_id").ok()).collect();
    let users: Vec<&str> = users.into_iter().collect();
    let engagements = database.collection::<Document>("users_engagements");
    let applied: HashMap<String, Document> =
        find_all(&engagements, doc! { "_id": { "$in": users } }, doc! { "applied": 1 })
            .await?
            .into_iter()
            .filter_map(|user| {
                Some((user.get_str("_id").ok()?.to_string(), user.get_document("applied").ok()?.clone()))
            })
            .collect();
    let mut pending = Vec::new();
    for mark in &marks {
        let Ok(id) = mark.get_str("_id") else { continue };
        let applied = mark.get_str("user_id").ok().and_then(|user| applied.get(user));
        let counted = mark.get(COUNTED);
        if count_state(counted, applied) == CountState::Uncounted {
            let writer = claim(counted).map_or("", |(writer, _)| writer);
            pending.push((id.to_string(), writer.to_string()));
        }
    }
    Ok(pending)
}

/// Every document of `collection` matching `filter`, only the `projection` fields.
async fn find_all(
    collection: &mongodb::Collection<Document>,
    filter: Document,
    projection: Document,
) -> Result<Vec<Document>, SinkError> {
    let cursor = collection.find(filter).projection(projection).await.map_err(|error| classify(&error))?;
    cursor.try_collect().await.map_err(|error| classify(&error))
}

/// The field of a tweet document saying whether its engagement is counted.
const COUNTED: &str = "engagement_counted";
/// The mark of a tweet to be counted by flush `id`.
fn flush_mark(id: &FlushId) -> Document {
    doc! { "writer": id.writer.as_str(), "seq": seq_bson(id.seq) }
}

/// A flush number as BSON (Int64; flush numbers never reach 2^63).
fn seq_bson(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// Where a stored tweet's engagement count stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountState {
    /// In its user's totals (or stored before counting was tracked).
    Counted,
    /// Not in its user's totals: count it.
    Uncounted,
}

/// The writer and flush number of an `engagement_counted` mark, if it is a well-formed one.
fn claim(mark: Option<&Bson>) -> Option<(&str, i64)> {
    let Some(Bson::Document(mark)) = mark else { return None };
    Some((mark.get_str("writer").ok()?, mark.get_i64("seq").ok()?))
}

/// Reads a tweet's `engagement_counted` mark (the flush meant to count it)
/// against its user's `applied` map (the last flush of each writer applied).
pub fn count_state(mark: Option<&Bson>, applied: Option<&Document>) -> CountState {
    if !matches!(mark, Some(Bson::Document(_))) {
        return CountState::Counted;
    }
    let Some((writer, seq)) = claim(mark) else { return CountState::Uncounted };
    let landed = applied.and_then(|applied| applied.get_i64(writer).ok()).is_some_and(|done| done >= seq);
    if landed { CountState::Counted } else { CountState::Uncounted }
}

/// One upsert statement adding `delta` to a user's totals, skipped if `flush` was applied to them.
pub fn engagement_upsert(delta: &EngagementDelta, flush: &FlushId) -> Document {
    let tweets = i64::try_from(delta.tweets).unwrap_or(i64::MAX);
    let (writer, seq) = (flush.writer.as_str(), seq_bson(flush.seq));
    let done = format!("applied.{writer}");
    doc! {
        // `$not: {$gte}` also matches a user this writer never reached; an
        // `$or` would do the same but makes some servers scan the collection.
        "q": { "_id": delta.user_id.as_str(), &done: { "$not": { "$gte": seq } } },
        "u": [
            { "$set": {
                "user_id": delta.user_id.as_str(),
                "tweet_count": { "$add": [{ "$ifNull": ["$tweet_count", 0_i64] }, tweets] },
                "engagement_sum": { "$add": [{ "$ifNull": ["$engagement_sum", 0.0] }, delta.engagement_sum] },
                "applied": { "$mergeObjects": [{ "$ifNull": ["$applied", {}] }, { writer: seq }] },
            } },
            { "$set": { "ratio": { "$divide": ["$engagement_sum", "$tweet_count"] } } },
        ],
        "upsert": true,
    }
}

/// Checks an `update` reply: duplicate keys mean "this flush was applied already".
fn check_update_reply(reply: &Document) -> Result<(), SinkError> {
    if let Ok(concern) = reply.get_document("writeConcernError") {
        return Err(SinkError::transient(format!("mongodb: write concern error: {concern}")));
    }
    let Ok(errors) = reply.get_array("writeErrors") else { return Ok(()) };
    for error in errors {
        let Bson::Document(error) = error else { continue };
        let code = error.get_i32("code").or_else(|_| error.get_i64("code").map(|c| c as i32)).unwrap_or(0);
        if code == DUPLICATE_KEY {
            continue;
        }
        let message = format!("mongodb: engagement upsert failed: {error}");
        return Err(if PERMANENT_CODES.contains(&code) {
            SinkError::permanent(message)
        } else {
            SinkError::transient(message)
        });
    }
    Ok(())
}

/// stores batches of scored tweets in MongoDB collections tweets, users, users_engagements
#[kind("mongo_sink", Batch -> Nothing)]
pub struct MongoSinkKind {
    /// connection string, e.g. "${MONGODB_URI}" or "mongodb://127.0.0.1:27017/tweets"
    uri: String,
    /// database name (default: the URI's, else stageflow)
    database: Option<String>,
    /// how long one try waits for a server, e.g. "5s" (default 5s; failed tries are retried)
    timeout: Option<String>,
    #[serde(flatten)]
    common: CommonSinkSettings,
}

impl MongoSinkKind {
    fn resolve(&self) -> Result<(MongoConfig, SinkOptions), String> {
        let timeout = duration_setting(self.timeout.as_deref(), None, ("timeout", ""), DEFAULT_TIMEOUT)?;
        let config = MongoConfig { uri: self.uri.clone(), database: self.database.clone(), timeout };
        config.database_name()?;
        Ok((config, self.common.options()?))
    }
}

impl Kind for MongoSinkKind {
    fn check(&self, _: &StageDecl) -> Result<(), String> {
        self.resolve().map(|_| ())
    }

    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, context: &BuildContext) -> Result<(), String> {
        let (config, options) = self.resolve()?;
        build_sink(stage, pipeline, context, Self::NAME, options, move || MongoSink::new(config.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_database_comes_from_the_setting_then_the_uri_then_the_default() {
        let mut config = MongoConfig::new("mongodb://127.0.0.1:27017/tweets_db?directConnection=true");
        assert_eq!(config.database_name().unwrap(), "tweets_db");
        config.database = Some("other".into());
        assert_eq!(config.database_name().unwrap(), "other");
        assert_eq!(MongoConfig::new("mongodb://127.0.0.1").database_name().unwrap(), DEFAULT_DATABASE);
    }

    #[test]
    fn a_malformed_uri_is_a_clear_error_without_the_password() {
        for uri in [
            "",
            "localhost:27017",
            "http://127.0.0.1:27017",
            "mongodb://ana:secret@127.0.0.1:27017/db?bogus=(",
        ] {
            let error = MongoConfig::new(uri).database_name().expect_err(uri);
            assert!(error.starts_with("invalid MongoDB URI"), "{error}");
            assert!(!error.contains("secret"), "{error}");
        }
    }

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(redact("mongodb://ana:pw@h:1/db"), "mongodb://ana:***@h:1/db");
        assert_eq!(redact("mongodb://h:1/db?x=a@b"), "mongodb://h:1/db?x=a@b");
        assert_eq!(redact("not a uri"), "not a uri");
    }

    #[test]
    fn json_becomes_bson_with_big_integers_as_doubles() {
        let value = json!({ "a": 1, "b": u64::MAX, "c": 0.5, "d": [true, null], "e": { "f": "x" } });
        let document = keyed("9", &value);
        assert_eq!(document.keys().next().map(String::as_str), Some("_id"));
        assert_eq!(document.get_i64("a").unwrap(), 1);
        assert_eq!(document.get_f64("b").unwrap(), u64::MAX as f64);
        assert_eq!(document.get_f64("c").unwrap(), 0.5);
        assert_eq!(document.get_array("d").unwrap(), &vec![Bson::Boolean(true), Bson::Null]);
        assert_eq!(document.get_document("e").unwrap().get_str("f").unwrap(), "x");
    }

    #[test]
    fn a_stored_tweet_is_counted_again_only_if_its_flush_never_reached_its_user() {
        let mark = |seq: i64| Bson::Document(doc! { "writer": "w", "seq": seq });
        let applied = doc! { "w": 3_i64, "other": 9_i64 };
        assert_eq!(count_state(None, None), CountState::Counted, "stored before marks existed");
        assert_eq!(count_state(Some(&mark(3)), Some(&applied)), CountState::Counted);
        assert_eq!(count_state(Some(&mark(2)), Some(&applied)), CountState::Counted);
        assert_eq!(count_state(Some(&mark(4)), Some(&applied)), CountState::Uncounted);
        assert_eq!(count_state(Some(&mark(1)), None), CountState::Uncounted, "the user was never written");
        let garbled = Bson::Document(doc! { "writer": 1 });
        assert_eq!(count_state(Some(&garbled), Some(&applied)), CountState::Uncounted);
    }

    #[test]
    fn duplicate_keys_in_an_update_reply_are_success_other_errors_are_not() {
        let duplicate =
            doc! { "n": 0, "writeErrors": [{ "index": 0, "code": 11000, "errmsg": "dup" }], "ok": 1.0 };
        assert_eq!(check_update_reply(&duplicate), Ok(()));
        let invalid = doc! { "writeErrors": [{ "index": 0, "code": 2, "errmsg": "bad" }] };
        assert!(!check_update_reply(&invalid).unwrap_err().transient);
        let busy = doc! { "writeErrors": [{ "index": 0, "code": 91, "errmsg": "shutting down" }] };
        assert!(check_update_reply(&busy).unwrap_err().transient);
        let concern = doc! { "writeConcernError": { "code": 64, "errmsg": "timeout" } };
        assert!(check_update_reply(&concern).unwrap_err().transient);
    }
}
