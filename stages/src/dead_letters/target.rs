//! The targets a `dead_letter = "..."` may name, and writing to each.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::sync::lock;

use stageflow::config::BuildContext;
use tokio::sync::Mutex as AsyncMutex;

use super::{DIRECTORY, Record};
use crate::broker_stages::client::Connection;

/// What a `dead_letter` value names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `"file"`: `dead-letters/<stage>.jsonl` in the data directory.
    DefaultFile,
    /// `"file:<path>"`: a file, relative to the data directory unless absolute.
    File(PathBuf),
    /// `"broker://HOST:PORT/TOPIC"`.
    Broker {
        /// `HOST:PORT`.
        addr: String,
        /// The topic.
        topic: String,
    },
    /// `"nats://HOST:PORT/SUBJECT"`.
    Nats {
        /// `nats://HOST:PORT`.
        url: String,
        /// The JetStream subject.
        subject: String,
    },
}

const EXPECTED: &str =
    "expected \"file\", \"file:<path>\", \"broker://HOST:PORT/TOPIC\" or \"nats://HOST:PORT/SUBJECT\"";

impl Target {
    /// Reads a `dead_letter` value; the error says what was expected.
    pub fn parse(text: &str) -> Result<Target, String> {
        let shown: String = text.chars().take(120).collect();
        if text == "file" {
            return Ok(Target::DefaultFile);
        }
        if let Some(path) = text.strip_prefix("file:") {
            if path.is_empty() || path.contains('\0') {
                return Err(format!("\"{shown}\" names no file; {EXPECTED}"));
            }
            return Ok(Target::File(PathBuf::from(path)));
        }
        let endpoint = |rest: &str, what: &str| -> Result<(String, String), String> {
            let (addr, name) = rest.split_once('/').unwrap_or((rest, ""));
            let port = addr.rsplit_once(':').map(|(_, port)| port);
            if addr.is_empty() || port.is_none_or(|port| port.parse::<u16>().is_err()) {
                return Err(format!("\"{shown}\" needs HOST:PORT; {EXPECTED}"));
            }
            if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!(
                    "\"{shown}\" needs a {what} without spaces after the address; {EXPECTED}"
                ));
            }
            Ok((addr.to_string(), name.to_string()))
        };
        if let Some(rest) = text.strip_prefix("broker://") {
            let (addr, topic) = endpoint(rest, "topic")?;
            return Ok(Target::Broker { addr, topic });
        }
        if let Some(rest) = text.strip_prefix("nats://") {
            let (addr, subject) = endpoint(rest, "subject")?;
            crate::cluster::check_subject(&subject).map_err(|why| format!("\"{shown}\": {why}"))?;
            return Ok(Target::Nats { url: format!("nats://{addr}"), subject });
        }
        Err(format!("unknown dead-letter target \"{shown}\"; {EXPECTED}"))
    }
}

/// Serialises writes to one file across the stages of a pipeline.
#[derive(Default)]
struct FileLocks(Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>);

impl FileLocks {
    fn of(&self, path: &Path) -> Arc<Mutex<()>> {
        lock(&self.0).entry(path.to_path_buf()).or_default().clone()
    }
}

/// A target ready to write to (connections are made on first use).
pub(super) enum Open {
    File { path: PathBuf, lock: Arc<Mutex<()>> },
    Broker { addr: String, topic: String, connection: AsyncMutex<Option<Connection>> },
    Nats { url: String, subject: String, client: AsyncMutex<Option<async_nats::jetstream::Context>> },
}

/// The records as JSON lines, each ending in a line break.
fn lines(records: &[Record]) -> String {
    let mut text = String::new();
    for record in records {
        text.push_str(&record.to_line());
        text.push('\n');
    }
    text
}

/// Appends `text` to the file at `path` (creating it and its folder) and fsyncs it.
pub fn append_synced(path: &Path, text: &str) -> Result<(), String> {
    if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|error| format!("cannot create {}: {error}", parent.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|error| format!("cannot open {}: {error}", path.display()))?;
    file.write_all(text.as_bytes())
        .map_err(|error| format!("cannot append to {}: {error}", path.display()))?;
    file.sync_data().map_err(|error| format!("cannot fsync {}: {error}", path.display()))
}

impl Open {
    pub(super) fn new(target: Target, stage: &str, context: &BuildContext) -> Open {
        let file = |path: PathBuf| {
            let lock = context.resources.get_or_default::<FileLocks>().of(&path);
            Open::File { path, lock }
        };
        match target {
            Target::DefaultFile => file(context.data_dir.join(DIRECTORY).join(format!("{stage}.jsonl"))),
            Target::File(path) => file(context.data_dir.join(path)),
            Target::Broker { addr, topic } => Open::Broker { addr, topic, connection: AsyncMutex::new(None) },
            Target::Nats { url, subject } => Open::Nats { url, subject, client: AsyncMutex::new(None) },
        }
    }

    pub(super) fn describe(&self) -> String {
        match self {
            Open::File { path, .. } => path.display().to_string(),
            Open::Broker { addr, topic, .. } => format!("broker {addr} topic {topic}"),
            Open::Nats { url, subject, .. } => format!("NATS {url} subject {subject}"),
        }
    }

    pub(super) async fn write(&self, records: &[Record]) -> Result<(), String> {
        match self {
            Open::File { path, lock } => {
                let (path, file_lock, text) = (path.clone(), lock.clone(), lines(records));
                tokio::task::spawn_blocking(move || {
                    let _held = crate::sync::lock(&file_lock);
                    append_synced(&path, &text)
                })
                .await
                .map_err(|error| format!("the write task failed: {error}"))?
            }
            Open::Broker { addr, topic, connection } => {
                let mut connection = connection.lock().await;
                let result = publish_to_broker(&mut connection, addr, topic, records).await;
                if result.is_err() {
                    *connection = None;
                }
                result
            }
            Open::Nats { url, subject, client } => {
                let mut client = client.lock().await;
                let result = publish_to_nats(&mut client, url, subject, records).await;
                if result.is_err() {
                    *client = None;
                }
                result
            }
        }
    }
}

/// Publishes each record as a broker event (`msg` = the record) and waits for every `ok`.
async fn publish_to_broker(
    connection: &mut Option<Connection>,
    addr: &str,
    topic: &str,
    records: &[Record],
) -> Result<(), String> {
    if connection.is_none() {
        let opened =
            Connection::open(addr, None, 1, 64, &mut |_, _| {}).await.map_err(|error| error.to_string())?;
        *connection = Some(opened);
    }
    let connection = connection.as_mut().expect("opened above");
    for record in records {
        let event = serde_json::json!({ "id": crate::storage::unique_token(), "priority": 0, "msg": record });
        match connection.request(&format!("pub {topic} {event}"), &mut |_, _| {}).await {
            Ok(Ok(_)) => {}
            Ok(Err(why)) => return Err(format!("the broker at {addr} refused the dead letter: {why}")),
            Err(error) => return Err(error.to_string()),
        }
    }
    Ok(())
}

/// Publishes each record to the JetStream subject and waits for every ack.
async fn publish_to_nats(
    client: &mut Option<async_nats::jetstream::Context>,
    url: &str,
    subject: &str,
    records: &[Record],
) -> Result<(), String> {
    if client.is_none() {
        let options = async_nats::ConnectOptions::new()
            .name("stageflow dead letters")
            .connection_timeout(std::time::Duration::from_secs(2));
        let connected =
            options.connect(url).await.map_err(|error| format!("cannot reach NATS at {url}: {error}"))?;
        let js = async_nats::jetstream::new(connected);
        let stream = async_nats::jetstream::stream::Config {
            name: stream_name(subject),
            subjects: vec![subject.to_string()],
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        };
        // A stream that already captures the subject (under another name) is fine too.
        if let Err(error) = js.get_or_create_stream(stream).await {
            tracing::debug!("dead letters: creating a stream for {subject}: {error}");
        }
        *client = Some(js);
    }
    let js = client.as_ref().expect("connected above");
    for record in records {
        let acked = js
            .publish(subject.to_string(), record.to_line().into())
            .await
            .map_err(|error| format!("NATS {url}: cannot publish to {subject}: {error}"))?;
        acked.await.map_err(|error| format!("NATS {url}: {subject} did not ack: {error}"))?;
    }
    Ok(())
}

/// The name of the stream created for a dead-letter subject: its tokens joined by `_`.
fn stream_name(subject: &str) -> String {
    let name: String =
        subject.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    format!("DEAD_LETTERS_{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_bad_ones_say_what_was_expected() {
        assert_eq!(Target::parse("file"), Ok(Target::DefaultFile));
        assert_eq!(Target::parse("file:rejects/a.jsonl"), Ok(Target::File("rejects/a.jsonl".into())));
        assert_eq!(
            Target::parse("broker://127.0.0.1:8000/dead"),
            Ok(Target::Broker { addr: "127.0.0.1:8000".into(), topic: "dead".into() })
        );
        assert_eq!(
            Target::parse("nats://127.0.0.1:4222/dead.tweets"),
            Ok(Target::Nats { url: "nats://127.0.0.1:4222".into(), subject: "dead.tweets".into() })
        );
        for bad in
            ["files", "file:", "broker://127.0.0.1/dead", "broker://h:1/", "nats://h:99999/x", "s3://b/k"]
        {
            let error = Target::parse(bad).expect_err(bad);
            assert!(error.contains(bad) && error.contains("expected \"file\""), "{bad}: {error}");
        }
    }

    #[test]
    fn stream_names_keep_only_safe_characters() {
        assert_eq!(stream_name("dead.tweets"), "DEAD_LETTERS_dead_tweets");
    }
}
