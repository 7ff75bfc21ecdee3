//! The TCP front of the broker: one task per connection reading command
//! lines, one writing replies and deliveries.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpListener;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};

use super::protocol::{Command, HELP, parse_command};
use super::{Broker, BrokerError, Client, Delivery};
use crate::line_reader::{LineRead, read_line};

/// Replies a connection may have queued for writing.
const REPLY_QUEUE: usize = 64;
/// Deliveries a connection may have queued for writing (each subscription
/// also stops at its window).
const DELIVERY_QUEUE: usize = 256;

/// Settings of the TCP server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where to listen.
    pub addr: SocketAddr,
    /// If set, clients must `auth <token>` first.
    pub token: Option<String>,
    /// Longest accepted line, in bytes.
    pub max_line_bytes: usize,
    /// Most simultaneous connections.
    pub max_connections: usize,
}

/// A running server; dropping it stops accepting and closes its connections.
pub struct BrokerServer {
    local_addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl BrokerServer {
    /// The address it listens on (with the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and closes every connection.
    pub async fn shutdown(mut self) {
        self.accept.abort();
        let _ = (&mut self.accept).await;
    }
}

impl Drop for BrokerServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Starts serving `broker` on `config.addr`.
pub async fn serve(broker: Broker, config: ServerConfig) -> io::Result<BrokerServer> {
    let listener = TcpListener::bind(config.addr).await?;
    let local_addr = listener.local_addr()?;
    let config = Arc::new(config);
    let accept = tokio::spawn(async move {
        let permits = Arc::new(Semaphore::new(config.max_connections));
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    match permits.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let (broker, config) = (broker.clone(), config.clone());
                            connections.spawn(async move {
                                let (reader, writer) = stream.into_split();
                                handle_connection(broker, config, reader, writer).await;
                                drop(permit);
                            });
                        }
                        Err(_) => {
                            let limit = config.max_connections;
                            connections.spawn(async move {
                                let mut stream = stream;
                                let line = format!("error: too many connections (limit {limit}); try again later\n");
                                let _ = stream.write_all(line.as_bytes()).await;
                                let _ = stream.shutdown().await;
                            });
                        }
                    }
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    });
    Ok(BrokerServer { local_addr, accept })
}

async fn handle_connection(
    broker: Broker,
    config: Arc<ServerConfig>,
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
) {
    let (replies, reply_queue) = mpsc::channel::<String>(REPLY_QUEUE);
    let (deliveries, delivery_queue) = mpsc::channel::<Delivery>(DELIVERY_QUEUE);
    let writing = tokio::spawn(write_lines(writer, reply_queue, delivery_queue));
    let mut session = Session {
        client: broker.connect(deliveries),
        broker,
        authenticated: config.token.is_none(),
        token: config.token.clone(),
    };
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        let (reply, quit) = match read_line(&mut reader, &mut line, config.max_line_bytes).await {
            Ok(LineRead::Line) => session.execute(&line).await,
            Ok(LineRead::TooLong) => (
                format!("error: line longer than the {} byte limit; it was skipped", config.max_line_bytes),
                false,
            ),
            Ok(LineRead::End) | Err(_) => break,
        };
        if replies.send(reply).await.is_err() || quit {
            break;
        }
    }
    drop(session);
    drop(replies);
    let _ = writing.await;
}

/// Writes replies and deliveries as lines, flushing when nothing more is queued.
async fn write_lines(
    writer: OwnedWriteHalf,
    mut replies: mpsc::Receiver<String>,
    mut deliveries: mpsc::Receiver<Delivery>,
) {
    let mut writer = BufWriter::with_capacity(64 * 1024, writer);
    loop {
        let line = tokio::select! {
            biased;
            reply = replies.recv() => match reply {
                Some(reply) => reply,
                None => break,
            },
            Some(delivery) = deliveries.recv() => delivery.line(),
        };
        if writer.write_all(line.as_bytes()).await.is_err() || writer.write_all(b"\n").await.is_err() {
            return;
        }
        if replies.is_empty() && deliveries.is_empty() && writer.flush().await.is_err() {
            return;
        }
    }
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
}

/// One connection's state.
struct Session {
    broker: Broker,
    client: Client,
    authenticated: bool,
    token: Option<String>,
}

impl Session {
    /// Runs one command line; returns the reply line and whether to close.
    async fn execute(&mut self, line: &[u8]) -> (String, bool) {
        let command = match parse_command(line) {
            Ok(command) => command,
            Err(error) => return (format!("error: {error}"), false),
        };
        if !self.authenticated && !matches!(command, Command::Auth { .. } | Command::Help | Command::Quit) {
            return ("error: authenticate first with: auth <token>".into(), false);
        }
        let reply = match command {
            Command::Quit => return ("ok bye".into(), true),
            Command::Help => Ok(HELP.trim_start_matches("ok ").to_string()),
            Command::Auth { token } => match &self.token {
                None => Ok("no token is required".into()),
                Some(expected) if constant_time_eq(expected.as_bytes(), token.as_bytes()) => {
                    self.authenticated = true;
                    Ok(String::new())
                }
                Some(_) => Err(BrokerError("wrong token".into())),
            },
            Command::Publish { topic, event } => {
                self.broker.publish(&topic, event).await.map(|_| String::new())
            }
            Command::Subscribe { topic } => self.client.subscribe(&topic).await.map(|_| String::new()),
            Command::Unsubscribe { topic } => self.client.unsubscribe(&topic).await.map(|_| String::new()),
            Command::Ack { topic, id } => self.client.ack(&topic, &id).await.map(|_| String::new()),
            Command::Name { name } => {
                self.client.set_name(&name).map(|_| match self.client.subscribed().as_slice() {
                    [] => String::new(),
                    topics => format!("resumed {}", topics.join(" ")),
                })
            }
            Command::Window { size } => self.client.set_window(size).await.map(|_| String::new()),
            Command::Topics => Ok(self.broker.topics().join(" ")),
            Command::Stats { topic } => self.broker.stats(topic.as_deref()).map(|stats| {
                serde_json::to_string(&stats).unwrap_or_else(|error| format!("\"cannot encode: {error}\""))
            }),
        };
        match reply {
            Ok(details) if details.is_empty() => ("ok".into(), false),
            Ok(details) => (format!("ok {details}"), false),
            Err(error) => (format!("error: {error}"), false),
        }
    }
}

/// Compares secrets in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
