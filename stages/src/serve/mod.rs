//! `stageflow serve`: a TCP line server (for `telnet` and `nc`) where
//! `twitter` watches the live tweet pipeline, shared by every session.
//!
//! - The first `twitter` builds and starts the pipeline from a file
//!   (default: the built-in `tweets`, `${EMULATOR_URL}` resolved from
//!   `--sse-url`) with the logger's lines routed into a broadcast stage,
//!   [`LINES_STAGE`]; each watching session subscribes to it from outside
//!   the pipeline. Later sessions join the same run; when the last one stops
//!   watching or disconnects, the pipeline drains and stops.
//! - Each session's subscription is drained at once into its bounded
//!   [`outbox::Outbox`], which drops the oldest lines when the client reads
//!   slowly and then sends one `[skipped N tweets]` line; the writer task
//!   writes from the outbox. A slow terminal therefore never holds the
//!   broadcast's credits (which would pace every session and the logger) and
//!   never costs more than its outbox bounds.
//! - [`protocol`] parses commands; [`session`] serves one connection;
//!   [`hub`] owns the shared pipeline.

mod file;
pub mod hub;
mod lines;
pub mod outbox;
pub mod protocol;
pub mod session;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

pub use hub::STATS_LINES;
pub use lines::LINES_STAGE;

use crate::sync::lock;
use hub::Hub;
use session::SessionShared;

/// Settings of the telnet server (`stageflow serve`'s flags, see `cmd::serve`).
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where to listen (port 0 picks a free port).
    pub addr: SocketAddr,
    /// Base URL of the SSE streams, e.g. `http://127.0.0.1:4000/tweets`.
    pub sse_url: String,
    /// Number of streams, or `None` for the file's own `sse` stages.
    pub streams: Option<usize>,
    /// The pipeline file.
    pub pipeline_file: PathBuf,
    /// Directory for embedded stores and output files.
    pub data_dir: PathBuf,
    /// `stage.key=value` overrides.
    pub overrides: Vec<String>,
    /// A broker to publish scored tweets and stats frames to.
    pub broker: Option<String>,
    /// Longest accepted command line, bytes.
    pub max_line_bytes: usize,
    /// Most simultaneous connections.
    pub max_connections: usize,
    /// Tweet lines a session keeps for a slow reader.
    pub outbox_lines: usize,
    /// Bytes of tweet lines a session keeps for a slow reader.
    pub outbox_bytes: usize,
    /// How long the pipeline may take to drain.
    pub drain_timeout: Duration,
    /// Where to serve the HTTP endpoints, if anywhere.
    pub http: Option<SocketAddr>,
}

impl ServeConfig {
    /// The defaults of `stageflow serve` for `pipeline_file`, listening on `addr`.
    pub fn new(addr: SocketAddr, pipeline_file: impl Into<PathBuf>) -> Self {
        ServeConfig {
            addr,
            sse_url: "http://127.0.0.1:4000/tweets".into(),
            streams: None,
            pipeline_file: pipeline_file.into(),
            data_dir: PathBuf::from("stageflow-data"),
            overrides: Vec::new(),
            broker: None,
            max_line_bytes: 4096,
            max_connections: 256,
            outbox_lines: 1000,
            outbox_bytes: 256 * 1024,
            drain_timeout: Duration::from_secs(30),
            http: None,
        }
    }
}

/// The outbox of one connected session, as the status shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxStatus {
    /// Whether the session watches the pipeline.
    pub watching: bool,
    /// Tweet lines queued now.
    pub lines: usize,
    /// Bytes queued now.
    pub bytes: usize,
    /// Most lines ever queued at once.
    pub peak_lines: usize,
    /// Lines dropped for this session because it read too slowly.
    pub skipped: u64,
}

/// What the server is doing, for tests and operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeStatus {
    /// Connected sessions.
    pub sessions: usize,
    /// Sessions watching the pipeline (as the pipeline counts them).
    pub watching: usize,
    /// Stage tasks of pipelines that have not ended yet; 0 when idle.
    pub stages_running: usize,
    /// How many times the pipeline was started.
    pub pipelines_started: u64,
    /// Each connected session's outbox, by connection number.
    pub outboxes: BTreeMap<u64, OutboxStatus>,
}

/// State shared by the accept loop and every session.
pub(crate) struct Server {
    config: Arc<ServeConfig>,
    hub: Hub,
    sessions: Mutex<BTreeMap<u64, Arc<SessionShared>>>,
    next_session: AtomicU64,
    /// Lines dropped for sessions that have disconnected.
    skipped_closed: AtomicU64,
}

impl Server {
    fn sessions(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<SessionShared>>> {
        lock(&self.sessions)
    }

    /// Lines dropped for slow sessions since the server started.
    fn skipped_total(&self) -> u64 {
        let open: u64 = self.sessions().values().map(|session| session.outbox().skipped_total()).sum();
        open + self.skipped_closed.load(Ordering::Relaxed)
    }

    fn status(&self) -> ServeStatus {
        let outboxes: BTreeMap<u64, OutboxStatus> = self
            .sessions()
            .iter()
            .map(|(id, session)| {
                let outbox = session.outbox();
                let status = OutboxStatus {
                    watching: session.watching(),
                    lines: outbox.len(),
                    bytes: outbox.bytes(),
                    peak_lines: outbox.peak_lines(),
                    skipped: outbox.skipped_total(),
                };
                (*id, status)
            })
            .collect();
        ServeStatus {
            sessions: outboxes.len(),
            watching: self.hub.watchers(),
            stages_running: self.hub.stages_running(),
            pipelines_started: self.hub.pipelines_started(),
            outboxes,
        }
    }
}

/// Removes a session from the server's list however its task ends.
struct Registered {
    server: Arc<Server>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Some(session) = self.server.sessions().remove(&self.id) {
            let skipped = session.outbox().skipped_total();
            self.server.skipped_closed.fetch_add(skipped, Ordering::Relaxed);
        }
    }
}

/// A running telnet server. Dropping it stops accepting and closes every
/// session; `stop` also drains the pipeline.
pub struct ServeHandle {
    local_addr: SocketAddr,
    server: Arc<Server>,
    accept: JoinHandle<()>,
    http: Option<crate::http::HttpServer>,
}

impl ServeHandle {
    /// The address it listens on (with the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The base URL of its HTTP endpoints, when `http` was set.
    pub fn http_url(&self) -> Option<String> {
        self.http.as_ref().map(crate::http::HttpServer::url)
    }

    /// Sessions, watchers, running stages and outboxes now.
    pub fn status(&self) -> ServeStatus {
        self.server.status()
    }

    /// Stops accepting, closes every session, then drains and stops the pipeline.
    pub async fn stop(mut self) {
        self.accept.abort();
        let _ = (&mut self.accept).await;
        self.server.hub.shutdown().await;
    }
}

impl Drop for ServeHandle {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Checks the pipeline file, binds `config.addr` and serves until the handle is stopped.
pub async fn start_serve(config: ServeConfig) -> Result<ServeHandle, String> {
    // Fail before listening if the file cannot be served (a logger, ids, settings).
    file::prepare_file(&config, &crate::registry())?;
    let listener = TcpListener::bind(config.addr)
        .await
        .map_err(|error| format!("cannot listen on {}: {error}", config.addr))?;
    let local_addr = listener
        .local_addr()
        .map_err(|error| format!("cannot read the address of {}: {error}", config.addr))?;
    let observed = crate::http::Observed::new();
    let http = match config.http {
        Some(addr) => Some(crate::http::start_http(addr, observed.clone()).await?),
        None => None,
    };
    let config = Arc::new(config);
    let server = Arc::new(Server {
        hub: Hub::new(config.clone(), observed.clone()),
        config,
        sessions: Mutex::default(),
        next_session: AtomicU64::new(1),
        skipped_closed: AtomicU64::new(0),
    });
    let accept = tokio::spawn(accept_loop(listener, server.clone()));
    Ok(ServeHandle { local_addr, server, accept, http })
}

/// Accepts connections; each session lives in a `JoinSet`, so aborting this task closes them all.
async fn accept_loop(listener: TcpListener, server: Arc<Server>) {
    let permits = Arc::new(Semaphore::new(server.config.max_connections));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let mut stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "serve: accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let id = server.next_session.fetch_add(1, Ordering::Relaxed);
                        let shared = Arc::new(SessionShared::new(server.config.outbox_lines, server.config.outbox_bytes));
                        server.sessions().insert(id, shared.clone());
                        let registered = Registered { server: server.clone(), id };
                        let server = server.clone();
                        connections.spawn(async move {
                            session::handle_connection(server, stream, shared).await;
                            drop(registered);
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        let limit = server.config.max_connections;
                        connections.spawn(async move {
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
}
