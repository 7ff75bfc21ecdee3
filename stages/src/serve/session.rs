//! One client connection: a reader running commands, a writer sending
//! replies (never dropped) and tweet lines (from the bounded outbox), and
//! while the session watches, a forwarder draining its subscription into the
//! outbox at once, so the broadcast never waits for this client's terminal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use stageflow::{EndReason, Subscription};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use super::Server;
use super::outbox::{Outbox, Outgoing};
use super::protocol::{Command, GREETING, HELP, parse_command};
use crate::line_reader::{LineRead, read_line};
use crate::sync::lock;

/// Replies a session may have queued for writing; past it, its commands wait.
const REPLY_QUEUE: usize = 16;
/// Lines the writer takes from the outbox at once.
const WRITE_BATCH: usize = 256;
/// How long `quit` waits for the last replies to reach a client.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The part of a session the server's status reads.
pub(crate) struct SessionShared {
    outbox: Mutex<Outbox>,
    wake: Notify,
    watching: AtomicBool,
}

impl SessionShared {
    pub(crate) fn new(max_lines: usize, max_bytes: usize) -> Self {
        SessionShared {
            outbox: Mutex::new(Outbox::new(max_lines, max_bytes)),
            wake: Notify::new(),
            watching: AtomicBool::new(false),
        }
    }

    pub(crate) fn outbox(&self) -> MutexGuard<'_, Outbox> {
        lock(&self.outbox)
    }

    pub(crate) fn watching(&self) -> bool {
        self.watching.load(Ordering::Relaxed)
    }
}

/// A task aborted when its handle is dropped (a session that vanishes takes its tasks along).
struct Owned(JoinHandle<()>);

impl Drop for Owned {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A session's watch of the pipeline: its forwarder and which run it watches.
struct Watching {
    generation: u64,
    forwarder: Owned,
}

/// Serves one connection until `quit`, a disconnect or the server stopping.
pub(crate) async fn handle_connection(server: Arc<Server>, stream: TcpStream, shared: Arc<SessionShared>) {
    let (reader, writer) = stream.into_split();
    let (replies, reply_queue) = mpsc::channel::<String>(REPLY_QUEUE);
    let mut writing = Owned(tokio::spawn(write_lines(writer, reply_queue, shared.clone())));
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    let mut watching: Option<Watching> = None;
    let limit = server.config.max_line_bytes;
    let mut open = replies.send(GREETING.to_string()).await.is_ok();
    while open {
        let (reply, quit) = match read_line(&mut reader, &mut line, limit).await {
            Ok(LineRead::Line) => match parse_command(&line) {
                Ok(command) => execute(&server, &shared, &replies, &mut watching, command).await,
                Err(error) => (format!("error: {error}"), false),
            },
            Ok(LineRead::TooLong) => {
                (format!("error: line longer than the {limit} byte limit; it was skipped"), false)
            }
            Ok(LineRead::End) | Err(_) => break,
        };
        // An empty reply was sent already.
        open = (reply.is_empty() || replies.send(reply).await.is_ok()) && !quit;
    }
    stop_watching(&server, &shared, &mut watching).await;
    drop(replies);
    // Let the writer deliver what is queued (`ok bye`), but never wait on a client that stopped reading.
    let _ = tokio::time::timeout(CLOSE_GRACE, &mut writing.0).await;
}

/// Runs one command; returns the reply (one or more lines; empty if it was
/// sent already) and whether to close.
async fn execute(
    server: &Arc<Server>,
    shared: &Arc<SessionShared>,
    replies: &mpsc::Sender<String>,
    watching: &mut Option<Watching>,
    command: Command,
) -> (String, bool) {
    // A watch whose pipeline ended on its own is over: forget it first.
    if watching.as_ref().is_some_and(|watch| watch.forwarder.0.is_finished()) {
        stop_watching(server, shared, watching).await;
    }
    let reply = match command {
        Command::Help => HELP.to_string(),
        Command::Quit => return ("ok bye".into(), true),
        Command::Twitter if watching.is_some() => {
            "ok already watching; stop stops, stats shows the pipeline's numbers".into()
        }
        Command::Twitter => match server.hub.watch().await {
            Ok(watch) => {
                let how = if watch.started { "started" } else { "joined" };
                let reply = format!(
                    "ok {how} pipeline '{}'; {} session{} watching; one line per tweet follows (stop stops)",
                    watch.name,
                    watch.watchers,
                    if watch.watchers == 1 { "" } else { "s" }
                );
                shared.watching.store(true, Ordering::Relaxed);
                // The reply goes first, so no tweet line comes before it.
                let sent = replies.send(reply).await.is_ok();
                let forwarder = tokio::spawn(forward(watch.subscription, shared.clone(), replies.clone()));
                *watching = Some(Watching { generation: watch.generation, forwarder: Owned(forwarder) });
                return (String::new(), !sent);
            }
            Err(error) => format!("error: {error}"),
        },
        Command::Stop if watching.is_none() => "ok not watching; twitter starts".into(),
        Command::Stop => {
            stop_watching(server, shared, watching).await;
            "ok stopped watching".into()
        }
        Command::Stats => server.hub.stats(server.skipped_total()).await,
    };
    (reply, false)
}

/// Ends the session's watch, if any: no more lines arrive after this returns.
async fn stop_watching(server: &Server, shared: &SessionShared, watching: &mut Option<Watching>) {
    let Some(watch) = watching.take() else { return };
    watch.forwarder.0.abort();
    let mut forwarder = watch.forwarder;
    let _ = (&mut forwarder.0).await;
    shared.watching.store(false, Ordering::Relaxed);
    shared.outbox().clear();
    server.hub.unwatch(watch.generation).await;
}

/// Drains the session's subscription into its outbox as fast as lines come,
/// so the session always grants credits; says so when the pipeline ends.
async fn forward(
    mut subscription: Subscription<String>,
    shared: Arc<SessionShared>,
    replies: mpsc::Sender<String>,
) {
    while let Some(batch) = subscription.next_batch().await {
        {
            let mut outbox = shared.outbox();
            for line in batch {
                outbox.push(line);
            }
        }
        shared.wake.notify_one();
    }
    let why = match subscription.end_reason() {
        Some(EndReason::Failed(why)) => format!("it failed: {why}"),
        _ => "it was shut down or its sources ended".into(),
    };
    shared.watching.store(false, Ordering::Relaxed);
    let _ = replies.send(format!("ok the pipeline stopped ({why}); twitter starts it again")).await;
}

/// Writes replies first, then tweet lines from the outbox; flushes when nothing more waits.
async fn write_lines(
    writer: OwnedWriteHalf,
    mut replies: mpsc::Receiver<String>,
    shared: Arc<SessionShared>,
) {
    let mut writer = BufWriter::with_capacity(16 * 1024, writer);
    loop {
        let lines: Vec<String> = tokio::select! {
            biased;
            reply = replies.recv() => match reply {
                Some(reply) => vec![reply],
                None => break,
            },
            _ = shared.wake.notified() => {
                let mut outbox = shared.outbox();
                let taken: Vec<String> = outbox.take(WRITE_BATCH).into_iter().map(Outgoing::into_text).collect();
                if !outbox.is_empty() {
                    shared.wake.notify_one();
                }
                taken
            }
        };
        for line in lines {
            if writer.write_all(line.as_bytes()).await.is_err() || writer.write_all(b"\n").await.is_err() {
                return;
            }
        }
        if replies.is_empty() && shared.outbox().is_empty() && writer.flush().await.is_err() {
            return;
        }
    }
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
}
