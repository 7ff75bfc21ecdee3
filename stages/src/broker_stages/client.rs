//! A small async client of the broker's line protocol over TCP.
//!
//! [`Connection::open`] connects (with a timeout), presents the token with
//! `auth` when one is set, and checks the broker answers with one harmless
//! command (`window <n>`), so a refused token, a broker that wants a token,
//! or a broker at its connection limit is found at once, not at the first
//! `pub`. Commands are written with [`Connection::send`] and may be
//! pipelined: the broker answers every command with exactly one reply line,
//! in order. A reader task splits what the broker sends into replies and
//! deliveries ([`Incoming`]) on a bounded channel.

use std::fmt;
use std::time::Duration;

use stageflow::config::settings;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Longest line accepted from the broker (a delivery is as long as the event published).
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// How long connecting may take before it counts as a failure.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One line from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// `ok`, with what follows it on the line (empty for a bare `ok`).
    Ok(String),
    /// `error: <why>`, with the text after `error: `.
    Error(String),
    /// `event <topic> <json>`: a delivery.
    Event {
        /// The topic it was published to.
        topic: String,
        /// The event, `{"id", "priority", "msg", "ts"}`, as the broker sent it.
        json: String,
    },
}

/// Sorts one line (without its line ending) into a reply or a delivery; `None` for anything else.
pub fn parse_line(line: &str) -> Option<Incoming> {
    if line == "ok" {
        return Some(Incoming::Ok(String::new()));
    }
    if let Some(details) = line.strip_prefix("ok ") {
        return Some(Incoming::Ok(details.to_string()));
    }
    if let Some(why) = line.strip_prefix("error: ") {
        return Some(Incoming::Error(why.to_string()));
    }
    let (topic, json) = line.strip_prefix("event ")?.split_once(' ')?;
    Some(Incoming::Event { topic: topic.to_string(), json: json.to_string() })
}

/// Why talking to the broker failed, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    /// True for failures that may pass (refused, reset, closed, connection limit): retried.
    pub transient: bool,
    /// What went wrong, naming the broker's address.
    pub message: String,
}

impl ClientError {
    /// A failure worth retrying.
    pub fn transient(message: impl Into<String>) -> Self {
        ClientError { transient: true, message: message.into() }
    }

    /// A failure retrying cannot fix (a wrong or missing token).
    pub fn permanent(message: impl Into<String>) -> Self {
        ClientError { transient: false, message: message.into() }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ClientError {}

/// A connection to a running broker.
pub struct Connection {
    addr: String,
    writer: BufWriter<OwnedWriteHalf>,
    incoming: mpsc::Receiver<Result<Incoming, String>>,
    reader: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Connection {
    /// Connects to `addr`, authenticates with `token` if given and checks the
    /// broker answers by setting `window` (which only matters to subscribers).
    /// `queue` bounds the lines read ahead of the caller: make it at least the
    /// window plus the commands the caller pipelines, so reading never stalls.
    /// Deliveries that arrive during the handshake go to `early` (a named
    /// subscriber's resumed events may).
    pub async fn open(
        addr: &str,
        token: Option<&str>,
        window: usize,
        queue: usize,
        early: &mut impl FnMut(String, String),
    ) -> Result<Connection, ClientError> {
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                return Err(ClientError::transient(format!(
                    "cannot connect to the broker at {addr}: {error}"
                )));
            }
            Err(_) => {
                return Err(ClientError::transient(format!(
                    "cannot connect to the broker at {addr}: no answer within {CONNECT_TIMEOUT:?}"
                )));
            }
        };
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        let (lines, incoming) = mpsc::channel(queue.max(1));
        let reader = tokio::spawn(read_lines(reader, lines));
        let mut connection =
            Connection { addr: addr.to_string(), writer: BufWriter::new(writer), incoming, reader };
        if let Some(token) = token
            && let Err(why) = connection.request(&format!("auth {token}"), early).await?
        {
            return Err(connection.refused("auth", &why));
        }
        if let Err(why) = connection.request(&format!("window {window}"), early).await? {
            return Err(connection.refused("window", &why));
        }
        Ok(connection)
    }

    /// The address it is connected to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Turns an error reply to a handshake command into a client error.
    fn refused(&self, command: &str, why: &str) -> ClientError {
        let addr = &self.addr;
        if why.starts_with("too many connections") {
            ClientError::transient(format!("the broker at {addr} is full: {why}"))
        } else if why.starts_with("authenticate first") {
            ClientError::permanent(format!("the broker at {addr} requires a token: set `token` ({why})"))
        } else if command == "auth" {
            ClientError::permanent(format!("the broker at {addr} refused the token: {why}"))
        } else {
            ClientError::permanent(format!("the broker at {addr} refused `{command}`: {why}"))
        }
    }

    /// Queues one command line (no line ending); [`Connection::flush`] sends what is queued.
    pub async fn send(&mut self, line: &str) -> Result<(), ClientError> {
        if line.contains(['\n', '\r']) {
            return Err(ClientError::permanent("a command line must not contain line breaks"));
        }
        let written = match self.writer.write_all(line.as_bytes()).await {
            Ok(()) => self.writer.write_all(b"\n").await,
            Err(error) => Err(error),
        };
        written.map_err(|error| self.lost(&error.to_string()))
    }

    /// Sends every queued command.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        let flushed = self.writer.flush().await;
        flushed.map_err(|error| self.lost(&error.to_string()))
    }

    /// The next reply or delivery.
    pub async fn recv(&mut self) -> Result<Incoming, ClientError> {
        match self.incoming.recv().await {
            Some(Ok(incoming)) => Ok(incoming),
            Some(Err(why)) => Err(self.lost(&why)),
            None => Err(self.lost("the connection was closed")),
        }
    }

    /// Sends one command and waits for its reply (`Ok(Ok(details))` or
    /// `Ok(Err(why))`); deliveries arriving meanwhile go to `events`.
    pub async fn request(
        &mut self,
        line: &str,
        events: &mut impl FnMut(String, String),
    ) -> Result<Result<String, String>, ClientError> {
        self.send(line).await?;
        self.flush().await?;
        loop {
            match self.recv().await? {
                Incoming::Ok(details) => return Ok(Ok(details)),
                Incoming::Error(why) => return Ok(Err(why)),
                Incoming::Event { topic, json } => events(topic, json),
            }
        }
    }

    fn lost(&self, why: &str) -> ClientError {
        ClientError::transient(format!("lost the connection to the broker at {}: {why}", self.addr))
    }
}

/// Reads lines until the connection ends or a line is malformed, passing them on.
async fn read_lines(reader: OwnedReadHalf, lines: mpsc::Sender<Result<Incoming, String>>) {
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader).take(MAX_LINE_BYTES as u64 + 1).read_until(b'\n', &mut line).await;
        let outcome = match read {
            Ok(0) => return,
            Ok(_) if line.len() > MAX_LINE_BYTES => {
                Err(format!("the broker sent a line longer than {MAX_LINE_BYTES} bytes"))
            }
            Ok(_) => {
                let text = line.strip_suffix(b"\n").unwrap_or(&line);
                let text = text.strip_suffix(b"\r").unwrap_or(text);
                match std::str::from_utf8(text) {
                    Ok(text) => parse_line(text).ok_or_else(|| {
                        let shown: String = text.chars().take(80).collect();
                        format!("unexpected line from the broker: {shown:?}")
                    }),
                    Err(_) => Err("the broker sent a line that is not UTF-8".to_string()),
                }
            }
            Err(error) => Err(error.to_string()),
        };
        let failed = outcome.is_err();
        if lines.send(outcome).await.is_err() || failed {
            return;
        }
    }
}

/// Where a broker listens unless `addr` says otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8000";

/// The settings every broker kind has: where the broker is and how to reconnect.
#[settings]
pub struct ConnectSettings {
    /// the broker's HOST:PORT (default "127.0.0.1:8000")
    #[default(DEFAULT_ADDR.into())]
    pub addr: String,
    /// shared secret sent with `auth` (when the broker has --token)
    pub token: Option<String>,
    /// first wait before reconnecting, doubling each time (default 100)
    #[default(100)]
    retry_initial_ms: u64,
    /// longest wait between reconnects (default 5000)
    #[default(5000)]
    retry_max_ms: u64,
}

impl ConnectSettings {
    /// Checks the address, token and retry waits without connecting.
    pub fn check(&self) -> Result<(), String> {
        check_addr(&self.addr)?;
        if let Some(token) = &self.token
            && (token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err("`token` must be one word: no spaces or control characters".into());
        }
        if self.retry_initial_ms == 0 {
            return Err("`retry_initial_ms` must be at least 1".into());
        }
        if self.retry_max_ms < self.retry_initial_ms {
            return Err(format!(
                "`retry_max_ms` ({}) must be at least `retry_initial_ms` ({})",
                self.retry_max_ms, self.retry_initial_ms
            ));
        }
        Ok(())
    }

    /// The first and the longest wait before reconnecting.
    pub fn retry(&self) -> (Duration, Duration) {
        (Duration::from_millis(self.retry_initial_ms), Duration::from_millis(self.retry_max_ms))
    }
}

/// Checks `HOST:PORT` without resolving anything.
fn check_addr(addr: &str) -> Result<(), String> {
    let valid = addr.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains(char::is_whitespace) && port.parse::<u16>().is_ok()
    });
    if valid {
        Ok(())
    } else {
        Err(format!("`addr` must be HOST:PORT, e.g. \"{DEFAULT_ADDR}\"; got \"{addr}\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_host_and_port() {
        assert!(check_addr("127.0.0.1:8000").is_ok());
        assert!(check_addr("[::1]:8000").is_ok());
        assert!(check_addr("broker.local:9000").is_ok());
        for bad in ["127.0.0.1", ":8000", "host:port", "host:70000", "a b:1"] {
            assert!(check_addr(bad).unwrap_err().contains("HOST:PORT"), "{bad}");
        }
    }

    #[test]
    fn lines_are_sorted_into_replies_and_deliveries() {
        assert_eq!(parse_line("ok"), Some(Incoming::Ok(String::new())));
        assert_eq!(parse_line("ok resumed a b"), Some(Incoming::Ok("resumed a b".into())));
        assert_eq!(parse_line("error: no topic 'x'"), Some(Incoming::Error("no topic 'x'".into())));
        assert_eq!(
            parse_line(r#"event news {"id":"a b","msg":1}"#),
            Some(Incoming::Event { topic: "news".into(), json: r#"{"id":"a b","msg":1}"#.into() })
        );
        assert_eq!(parse_line("okay"), None);
        assert_eq!(parse_line("event news"), None);
        assert_eq!(parse_line(""), None);
    }
}
