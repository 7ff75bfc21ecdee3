//! The message broker over real TCP: every command and error, priorities and
//! windows, a silent subscriber beside a fast one, SIGKILL and restart, a
//! torn log tail and background compaction.
//!
//! Each test starts `stageflow broker` as a child process on 127.0.0.1 port 0
//! with its own temporary data dir; the `BrokerProcess` handle kills it when
//! the test ends. Waits poll with deadlines; nothing sleeps and hopes.

mod support;
use support::broker_process::BrokerProcess;

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Generous bound for anything that should take milliseconds.
const DEADLINE: Duration = Duration::from_secs(60);

// ---- helpers ---------------------------------------------------------------

/// A line client, as `nc` would be: replies are read in order; `event` lines
/// that arrive meanwhile are kept for `next_event`.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    events: VecDeque<String>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).expect("connects");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.set_nodelay(true).unwrap();
        Conn { reader: BufReader::new(stream.try_clone().unwrap()), writer: stream, events: VecDeque::new() }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("sends");
        self.writer.flush().unwrap();
    }

    fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\n").as_bytes());
    }

    /// Sends a line; false if the broker is gone.
    fn try_send(&mut self, line: &str) -> bool {
        self.writer.write_all(format!("{line}\n").as_bytes()).is_ok()
    }

    /// The next line, without its line ending; `None` at end of stream.
    fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(line.trim_end_matches(['\r', '\n']).to_string()),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => None,
            Err(error) => panic!("no line within {DEADLINE:?}: {error}"),
        }
    }

    /// The next reply (deliveries arriving meanwhile are kept).
    fn reply(&mut self) -> String {
        loop {
            let line = self.line().expect("a reply before the connection closes");
            if line.starts_with("event ") {
                self.events.push_back(line);
            } else {
                return line;
            }
        }
    }

    fn cmd(&mut self, line: &str) -> String {
        self.send(line);
        self.reply()
    }

    fn ok(&mut self, line: &str) -> String {
        let reply = self.cmd(line);
        assert!(reply == "ok" || reply.starts_with("ok "), "{line:?} got {reply:?}");
        reply
    }

    fn error(&mut self, line: &str, expected: &str) {
        let reply = self.cmd(line);
        assert!(
            reply.starts_with("error: ") && reply.contains(expected),
            "{line:?} got {reply:?}, expected an error mentioning {expected:?}"
        );
    }

    /// The next delivery as (topic, event JSON).
    fn next_event(&mut self) -> (String, Value) {
        let line = match self.events.pop_front() {
            Some(line) => line,
            None => {
                let line = self.line().expect("a delivery before the connection closes");
                assert!(line.starts_with("event "), "expected a delivery, got {line:?}");
                line
            }
        };
        parse_delivery(&line)
    }

    fn stats(&mut self, topic: &str) -> Value {
        let reply = self.ok(&format!("stats {topic}"));
        let list: Value = serde_json::from_str(reply.trim_start_matches("ok ")).expect("stats is JSON");
        list[0].clone()
    }

    /// Polls `stats` until `done` holds, or fails after the deadline.
    fn wait_stats(&mut self, topic: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let stats = self.stats(topic);
            if done(&stats) {
                return stats;
            }
            assert!(Instant::now() < deadline, "waited {DEADLINE:?} for {what}; stats: {stats}");
            thread::sleep(Duration::from_millis(5));
        }
    }
}

fn parse_delivery(line: &str) -> (String, Value) {
    let rest = line.strip_prefix("event ").expect("an event line");
    let (topic, json) = rest.split_once(' ').expect("event <topic> <json>");
    (topic.to_string(), serde_json::from_str(json).expect("the delivery is JSON"))
}

fn event(id: &str, priority: u8, msg: Value) -> String {
    serde_json::json!({"id": id, "priority": priority, "msg": msg}).to_string()
}

fn topic_dir(data: &Path, topic: &str) -> PathBuf {
    data.join("topics").join(topic)
}

// ---- the protocol -------------------------------------------------------------

#[test]
fn every_command_and_every_error_over_tcp() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), "127.0.0.1:0", &["--max-line-bytes", "4096"]);
    let mut publisher = Conn::open(broker.addr);
    let mut subscriber = Conn::open(broker.addr);

    assert!(publisher.ok("help").contains("pub <topic> <json>"));
    assert_eq!(publisher.ok("topics"), "ok");
    subscriber.error("sub news", "no topic 'news'");
    publisher.error("frobnicate", "unknown command 'frobnicate'");
    publisher.error("", "empty line");
    publisher.error("pub news", "usage: pub <topic> <json>");
    publisher.error("pub news {not json", "not valid JSON");
    publisher.error(r#"pub news {"priority":1,"msg":"x"}"#, "field 'id' is missing");
    publisher.error(r#"pub news {"id":"a","msg":"x"}"#, "field 'priority' is missing");
    publisher.error(r#"pub news {"id":"a","priority":1}"#, "field 'msg' is missing");
    publisher.error(r#"pub news {"id":"a","priority":12,"msg":"x"}"#, "field 'priority'");
    publisher.error(r#"pub news {"id":7,"priority":1,"msg":"x"}"#, "field 'id' must be a string");
    publisher.error(r#"pub news {"id":"a","priority":1,"msg":"x","extra":1}"#, "unknown field 'extra'");
    publisher.error(r#"pub ../etc {"id":"a","priority":1,"msg":"x"}"#, "bad topic");
    publisher.send_raw(b"pub news \xff\xfe\n");
    assert!(publisher.reply().contains("not valid UTF-8"));
    publisher.send(&format!("pub news {}", event("big", 1, Value::String("x".repeat(5000)))));
    assert!(publisher.reply().contains("longer than the 4096 byte limit"));
    assert_eq!(publisher.ok("topics"), "ok", "no bad input created a topic");

    // A topic comes into being with its first event; nobody was subscribed to get it.
    publisher.ok(&format!("pub news {}", event("first", 1, "before".into())));
    assert_eq!(publisher.ok("topics"), "ok news");
    subscriber.ok("sub news");
    subscriber.error("sub news", "already subscribed");
    subscriber.error("window 0", "window must be");
    subscriber.error("window many", "window must be");
    subscriber.ok("window 5");
    publisher.ok(&format!("pub news {}", event("n1", 3, serde_json::json!({"text": "hello"}))));
    let (topic, delivered) = subscriber.next_event();
    assert_eq!(topic, "news");
    assert_eq!(delivered["id"], "n1");
    assert_eq!(delivered["priority"], 3);
    assert_eq!(delivered["msg"]["text"], "hello");
    assert!(delivered["ts"].as_u64().unwrap() > 1_600_000_000_000, "a millisecond timestamp: {delivered}");

    let stats = subscriber.stats("news");
    assert_eq!(
        (&stats["subscribers"], &stats["in_flight"], &stats["published"], &stats["acked"]),
        (&Value::from(1), &Value::from(1), &Value::from(2), &Value::from(0)),
        "{stats}"
    );
    subscriber.error("ack news nope", "no delivered event with id 'nope'");
    subscriber.error("ack other n1", "not subscribed to 'other'");
    subscriber.error("ack news", "usage: ack <topic> <id>");
    subscriber.ok("ack news n1");
    subscriber.error("ack news n1", "no delivered event with id 'n1'");
    let stats = subscriber.wait_stats("news", "the ack to count", |s| s["acked"] == 1);
    assert_eq!(stats["in_flight"], 0);
    let all: Value = serde_json::from_str(subscriber.ok("stats").trim_start_matches("ok ")).unwrap();
    assert_eq!(all[0]["topic"], "news");
    subscriber.error("stats nothing", "no topic 'nothing'");

    subscriber.error("name late", "name must come before the first sub");
    subscriber.ok("unsub news");
    subscriber.error("unsub news", "not subscribed to 'news'");
    publisher.ok(&format!("pub news {}", event("n2", 1, "after unsub".into())));
    subscriber.wait_stats("news", "the unsubscription", |s| s["subscribers"] == 0);

    let mut named = Conn::open(broker.addr);
    named.ok("name reader");
    named.error("name other", "already named 'reader'");
    let mut clash = Conn::open(broker.addr);
    clash.error("name reader", "in use by another connection");
    clash.error("name bad/name", "bad subscriber name");
    clash.ok("auth anything");

    assert_eq!(subscriber.cmd("quit"), "ok bye");
    assert_eq!(subscriber.line(), None, "the connection closes after quit");
    // The broker and the other connections carry on.
    assert_eq!(publisher.ok("topics"), "ok news");
}

#[test]
fn telnet_line_endings_and_lines_split_across_packets() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), "127.0.0.1:0", &[]);
    let mut telnet = Conn::open(broker.addr);
    telnet.send_raw(b"help\r\n");
    assert!(telnet.reply().starts_with("ok commands:"));
    telnet.send_raw(format!("pub t {}\r\n", event("crlf", 0, "x".into())).as_bytes());
    assert_eq!(telnet.reply(), "ok");

    let mut slow_typist = Conn::open(broker.addr);
    for piece in [&b"to"[..], b"pi", b"cs\r", b"\n"] {
        slow_typist.send_raw(piece);
        thread::sleep(Duration::from_millis(20)); // let each piece travel on its own
    }
    assert_eq!(slow_typist.reply(), "ok t");
    // Two commands in one packet get two replies.
    slow_typist.send_raw(b"topics\nhelp\n");
    assert_eq!(slow_typist.reply(), "ok t");
    assert!(slow_typist.reply().starts_with("ok commands:"));
    // A last line without a newline is still answered before the close.
    slow_typist.send_raw(b"topics");
    slow_typist.writer.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(slow_typist.reply(), "ok t");
}

#[test]
fn auth_token_is_required_when_set() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), "127.0.0.1:0", &["--token", "s3cret"]);
    let mut conn = Conn::open(broker.addr);
    conn.error("topics", "authenticate first");
    conn.error(&format!("pub t {}", event("a", 0, Value::Null)), "authenticate first");
    assert!(conn.ok("help").contains("auth <token>"));
    conn.error("auth guess", "wrong token");
    conn.ok("auth s3cret");
    assert_eq!(conn.ok("topics"), "ok");
}

#[test]
fn connection_and_topic_caps_give_clear_errors() {
    let data = tempfile::tempdir().unwrap();
    let broker =
        BrokerProcess::start(data.path(), "127.0.0.1:0", &["--max-connections", "2", "--max-topics", "2"]);
    let mut first = Conn::open(broker.addr);
    let mut second = Conn::open(broker.addr);
    first.ok("topics");
    second.ok("topics");
    let mut third = Conn::open(broker.addr);
    let refusal = third.line().expect("a refusal line");
    assert!(refusal.starts_with("error: too many connections (limit 2)"), "{refusal}");
    assert_eq!(third.line(), None);

    first.ok(&format!("pub a {}", event("1", 0, Value::Null)));
    first.ok(&format!("pub b {}", event("1", 0, Value::Null)));
    first.error(&format!("pub c {}", event("1", 0, Value::Null)), "topic limit (2) is reached");
    first.ok(&format!("pub a {}", event("2", 0, Value::Null)));
    drop(second);
    // The freed slot is usable again (the broker notices the close first).
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut again = Conn::open(broker.addr);
        let reply = again.cmd("topics");
        if reply == "ok a b" {
            break;
        }
        assert!(reply.starts_with("error: too many connections"), "{reply}");
        assert!(Instant::now() < deadline, "the slot was never freed");
        thread::sleep(Duration::from_millis(10));
    }
}

// ---- semantics -------------------------------------------------------------

#[test]
fn window_one_delivers_pending_events_highest_priority_first_as_acks_arrive() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), "127.0.0.1:0", &[]);
    let mut publisher = Conn::open(broker.addr);
    let mut subscriber = Conn::open(broker.addr);
    publisher.ok(&format!("pub jobs {}", event("setup", 0, Value::Null)));
    subscriber.ok("window 1");
    subscriber.ok("sub jobs");
    publisher.ok(&format!("pub jobs {}", event("blocker", 0, Value::Null)));
    assert_eq!(subscriber.next_event().1["id"], "blocker");
    for (id, priority) in [("low", 1), ("high", 9), ("mid", 5)] {
        publisher.ok(&format!("pub jobs {}", event(id, priority, Value::Null)));
    }
    let stats = subscriber.wait_stats("jobs", "three pending events", |s| s["pending"] == 3);
    assert_eq!(stats["in_flight"], 1, "window 1: nothing more is delivered before an ack");
    assert!(subscriber.events.is_empty(), "no delivery beyond the window: {:?}", subscriber.events);

    let mut order = Vec::new();
    let mut last = "blocker".to_string();
    for _ in 0..3 {
        subscriber.ok(&format!("ack jobs {last}"));
        last = subscriber.next_event().1["id"].as_str().unwrap().to_string();
        order.push(last.clone());
    }
    assert_eq!(order, ["high", "mid", "low"]);
}

#[test]
fn a_named_subscriber_gets_its_subscriptions_and_pending_events_back_on_reconnect() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), "127.0.0.1:0", &[]);
    let mut publisher = Conn::open(broker.addr);
    publisher.ok(&format!("pub mail {}", event("0", 0, Value::Null)));
    let mut durable = Conn::open(broker.addr);
    durable.ok("name alice");
    durable.ok("sub mail");
    let mut anonymous = Conn::open(broker.addr);
    anonymous.ok("sub mail");
    publisher.ok(&format!("pub mail {}", event("1", 2, Value::Null)));
    assert_eq!(durable.next_event().1["id"], "1"); // delivered, never acked
    drop(durable);
    drop(anonymous);
    publisher.wait_stats("mail", "the anonymous subscription to end", |s| s["subscribers"] == 1);
    publisher.ok(&format!("pub mail {}", event("2", 7, Value::Null)));

    let mut back = Conn::open(broker.addr);
    assert_eq!(back.ok("name alice"), "ok resumed mail");
    let mut ids: Vec<String> =
        (0..2).map(|_| back.next_event().1["id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    assert_eq!(ids, ["1", "2"], "the unacked delivery and the event published while away");
    back.ok("ack mail 1");
    back.ok("ack mail 2");
    back.wait_stats("mail", "nothing pending", |s| s["pending"] == 0 && s["in_flight"] == 0);
}

#[test]
fn a_silent_subscriber_never_slows_a_fast_one_and_memory_stays_bounded() {
    const EVENTS: usize = 100_000;
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), "127.0.0.1:0", &["--sync", "batched"]);
    let mut setup = Conn::open(broker.addr);
    setup.ok(&format!("pub firehose {}", event("setup", 0, Value::Null)));
    let mut silent = Conn::open(broker.addr);
    silent.ok("sub firehose");
    let mut fast = Conn::open(broker.addr);
    fast.ok("window 100");
    fast.ok("sub firehose");
    let baseline_kib = broker.peak_rss_kib();

    // The fast subscriber acks everything as it comes, on its own thread.
    let fast_thread = thread::spawn(move || {
        let mut seen = HashSet::new();
        let mut outstanding_acks = 0usize;
        while seen.len() < EVENTS {
            let line = fast.line().expect("the broker stays up");
            if line.starts_with("event ") {
                let (_, json) = parse_delivery(&line);
                let id = json["id"].as_str().unwrap().to_string();
                fast.send(&format!("ack firehose {id}"));
                outstanding_acks += 1;
                assert!(seen.insert(id), "a duplicate delivery");
            } else {
                assert_eq!(line, "ok", "an ack failed");
                outstanding_acks -= 1;
            }
        }
        for _ in 0..outstanding_acks {
            assert_eq!(fast.reply(), "ok");
        }
        seen.len()
    });

    // One publisher, pipelined: a writer thread sends, this thread counts the oks.
    let started = Instant::now();
    let mut publisher = Conn::open(broker.addr);
    let mut writer = publisher.writer.try_clone().unwrap();
    let sender = thread::spawn(move || {
        let mut batch = String::new();
        for n in 0..EVENTS {
            batch.push_str(&format!("pub firehose {}\n", event(&format!("e{n}"), (n % 10) as u8, n.into())));
            if batch.len() > 32 * 1024 {
                writer.write_all(batch.as_bytes()).unwrap();
                batch.clear();
            }
        }
        writer.write_all(batch.as_bytes()).unwrap();
    });
    for _ in 0..EVENTS {
        assert_eq!(publisher.reply(), "ok");
    }
    sender.join().unwrap();
    let published_in = started.elapsed();
    let fast_got = fast_thread.join().unwrap();
    let delivered_in = started.elapsed();
    assert_eq!(fast_got, EVENTS);
    assert!(delivered_in < Duration::from_secs(120), "the fast subscriber took {delivered_in:?}");

    // The silent subscriber holds exactly its window in flight; the rest waits for it.
    let stats = setup.wait_stats("firehose", "every ack counted", |s| s["acked"] == EVENTS);
    assert_eq!(stats["in_flight"], 10, "{stats}");
    assert_eq!(stats["pending"], EVENTS - 10, "{stats}");
    for _ in 0..10 {
        assert!(silent.next_event().1["id"].is_string());
    }
    assert!(silent.events.is_empty());

    let peak_kib = broker.peak_rss_kib();
    eprintln!(
        "slow-subscriber test: published {EVENTS} in {published_in:?}, fast subscriber done in \
         {delivered_in:?}; broker peak RSS {peak_kib:?} KiB (at start {baseline_kib:?} KiB)"
    );
    // Holding the silent subscriber's 100 000 events in memory would take over
    // 17 MiB (about 180 bytes each); its queue is bounded at 1000 events instead.
    if let (Some(peak_kib), Some(baseline_kib)) = (peak_kib, baseline_kib) {
        assert!(peak_kib < 64 * 1024, "broker peak RSS {peak_kib} KiB is over the 64 MiB bound");
        let growth = peak_kib.saturating_sub(baseline_kib);
        assert!(growth < 12 * 1024, "broker RSS grew by {growth} KiB while the subscriber was silent");
    }
}

// ---- durability ----------------------------------------------------------------

#[test]
fn after_sigkill_a_durable_subscriber_gets_exactly_the_confirmed_unacked_events() {
    let data = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(data.path(), "127.0.0.1:0", &["--sync", "batched"]);
    let mut setup = Conn::open(broker.addr);
    setup.ok(&format!("pub orders {}", event("setup", 0, Value::Null)));
    let mut subscriber = Conn::open(broker.addr);
    subscriber.ok("name billing");
    subscriber.ok("window 1000");
    subscriber.ok("sub orders");

    // Publisher: one event at a time; remembers what got `ok` and the one in limbo.
    let stop = Arc::new(AtomicBool::new(false));
    let confirmed = Arc::new(Mutex::new(Vec::<String>::new()));
    let in_limbo = Arc::new(Mutex::new(None::<String>));
    let publisher = {
        let (stop, confirmed, in_limbo) = (stop.clone(), confirmed.clone(), in_limbo.clone());
        let mut conn = Conn::open(broker.addr);
        thread::spawn(move || {
            for n in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let id = format!("o{n}");
                *in_limbo.lock().unwrap() = Some(id.clone());
                if !conn.try_send(&format!("pub orders {}", event(&id, (n % 10) as u8, n.into()))) {
                    break;
                }
                match conn.line() {
                    Some(reply) if reply == "ok" => confirmed.lock().unwrap().push(id),
                    _ => break, // the broker died
                }
                *in_limbo.lock().unwrap() = None;
            }
        })
    };
    // Subscriber: acks its first 1000 deliveries (pipelined), then falls silent so
    // events pile up (past its 1000-event memory bound, into the log); an ack
    // counts once its `ok` is back.
    let acked = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let unconfirmed_acks = Arc::new(Mutex::new(VecDeque::<String>::new()));
    let acker = {
        let (acked, unconfirmed) = (acked.clone(), unconfirmed_acks.clone());
        thread::spawn(move || {
            while let Some(line) = subscriber.line() {
                if line.starts_with("event ") {
                    let id = parse_delivery(&line).1["id"].as_str().unwrap().to_string();
                    if acked.lock().unwrap().len() + unconfirmed.lock().unwrap().len() >= 1000 {
                        continue;
                    }
                    unconfirmed.lock().unwrap().push_back(id.clone());
                    if !subscriber.try_send(&format!("ack orders {id}")) {
                        break;
                    }
                } else if line == "ok" {
                    let id = unconfirmed.lock().unwrap().pop_front().expect("an ack was pending");
                    acked.lock().unwrap().insert(id);
                } else {
                    panic!("unexpected line {line:?}");
                }
            }
        })
    };
    let deadline = Instant::now() + DEADLINE;
    while confirmed.lock().unwrap().len() < 5000 || acked.lock().unwrap().len() < 1000 {
        assert!(Instant::now() < deadline, "the stream never got going");
        thread::sleep(Duration::from_millis(5));
    }
    broker.kill();
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    acker.join().unwrap();
    let confirmed: Vec<String> = confirmed.lock().unwrap().clone();
    let acked = acked.lock().unwrap().clone();
    let maybe_acked: BTreeSet<String> = unconfirmed_acks.lock().unwrap().iter().cloned().collect();
    let maybe_published = in_limbo.lock().unwrap().clone();
    let expected: BTreeSet<String> =
        confirmed.iter().filter(|id| !acked.contains(*id) && !maybe_acked.contains(*id)).cloned().collect();

    let broker = BrokerProcess::start(data.path(), "127.0.0.1:0", &["--sync", "batched"]);
    let mut back = Conn::open(broker.addr);
    assert_eq!(back.ok("name billing"), "ok resumed orders");
    let mut redelivered = Vec::new();
    loop {
        while let Some(line) = back.events.pop_front() {
            let id = parse_delivery(&line).1["id"].as_str().unwrap().to_string();
            back.ok(&format!("ack orders {id}"));
            redelivered.push(id);
        }
        let stats = back.stats("orders");
        if stats["pending"] == 0 && stats["in_flight"] == 0 && back.events.is_empty() {
            break;
        }
        if back.events.is_empty() {
            // Something is pending or in flight, so a delivery is on its way.
            let id = back.next_event().1["id"].as_str().unwrap().to_string();
            back.ok(&format!("ack orders {id}"));
            redelivered.push(id);
        }
    }
    let unique: BTreeSet<String> = redelivered.iter().cloned().collect();
    assert_eq!(unique.len(), redelivered.len(), "an event was redelivered twice");
    let twice: Vec<&String> = unique.intersection(&acked).collect();
    assert!(twice.is_empty(), "events acked before the crash came again: {twice:?}");
    let missing: Vec<&String> = expected.difference(&unique).collect();
    assert!(missing.is_empty(), "confirmed, unacked events lost: {missing:?}");
    let extra: Vec<&String> = unique
        .difference(&expected)
        .filter(|id| !maybe_acked.contains(*id) && maybe_published.as_ref() != Some(*id))
        .collect();
    assert!(extra.is_empty(), "events that should not be there: {extra:?}");
    eprintln!(
        "crash test: {} confirmed, {} acked before SIGKILL, {} redelivered after restart ({} in limbo)",
        confirmed.len(),
        acked.len(),
        unique.len(),
        maybe_acked.len() + usize::from(maybe_published.is_some())
    );
    assert!(expected.len() >= 3000, "the kill came mid-stream, with events still unacked");
}

#[test]
fn a_log_cut_mid_record_is_dropped_with_a_warning_and_the_rest_recovers() {
    let data = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(data.path(), "127.0.0.1:0", &[]);
    let mut conn = Conn::open(broker.addr);
    conn.ok(&format!("pub logs {}", event("setup", 0, Value::Null)));
    conn.ok("name keeper");
    conn.ok("sub logs");
    let mut publisher = Conn::open(broker.addr);
    for n in 1..=10 {
        publisher.ok(&format!("pub logs {}", event(&format!("l{n}"), 0, n.into())));
    }
    broker.kill();
    let dir = topic_dir(data.path(), "logs");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    segments.sort();
    let newest = segments.last().unwrap();
    let length = std::fs::metadata(newest).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(newest).unwrap().set_len(length - 7).unwrap();

    let broker = BrokerProcess::start(data.path(), "127.0.0.1:0", &[]);
    let mut back = Conn::open(broker.addr);
    assert_eq!(back.ok("name keeper"), "ok resumed logs");
    back.ok("window 100");
    let stats = back.wait_stats("logs", "nine redeliveries", |s| s["in_flight"] == 9);
    assert_eq!(stats["pending"], 0);
    let mut ids: Vec<String> =
        (0..9).map(|_| back.next_event().1["id"].as_str().unwrap().to_string()).collect();
    ids.sort_by_key(|id| id[1..].parse::<u32>().unwrap());
    assert_eq!(ids, (1..=9).map(|n| format!("l{n}")).collect::<Vec<_>>());
    let stderr = broker.stderr();
    assert!(stderr.contains("warning:") && stderr.contains("torn record"), "stderr: {stderr}");
    // The log goes on from there.
    back.ok(&format!("pub logs {}", event("after", 0, Value::Null)));
    assert_eq!(back.next_event().1["id"], "after");
}

#[test]
fn the_log_is_compacted_in_the_background_once_events_are_acked() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(
        data.path(),
        "127.0.0.1:0",
        &["--segment-bytes", "8192", "--compact-secs", "1", "--sync", "off"],
    );
    let mut conn = Conn::open(broker.addr);
    conn.ok(&format!("pub audit {}", event("setup", 0, Value::Null)));
    conn.ok("name auditor");
    conn.ok("window 1000");
    conn.ok("sub audit");
    let mut publisher = Conn::open(broker.addr);
    for n in 0..2000 {
        publisher
            .ok(&format!("pub audit {}", event(&format!("a{n}"), 0, "some payload to fill segments".into())));
    }
    let grown = conn.stats("audit")["log_bytes"].as_u64().unwrap();
    assert!(grown > 100_000, "{grown} bytes");
    for _ in 0..2000 {
        let id = conn.next_event().1["id"].as_str().unwrap().to_string();
        conn.ok(&format!("ack audit {id}"));
    }
    // What is left: the active segment (about 8 KiB) and nothing else.
    let stats = conn.wait_stats("audit", "compaction", |s| s["log_bytes"].as_u64().unwrap() < 16 * 1024);
    eprintln!("compaction: log went from {grown} bytes to {} once everything was acked", stats["log_bytes"]);
}
