//! A topic's append-only log: segment files of checksummed records, group
//! fsync, reading events back for spilled queues, recovery and compaction.
//!
//! Files: `<topic dir>/<number:010>-<first seq:020>.log`. Every segment starts
//! with a checkpoint (durable subscribers, last sequence number), so the
//! metadata of older segments is superseded by the newest one. Only the last
//! segment (the active one) is appended to; compaction rewrites or deletes
//! closed segments in place (write a temporary file, fsync, rename).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::queue::AckedSet;
use super::record::{self, CheckpointEntry, Decoded, FRAME_HEADER, MAX_PAYLOAD, Record, StoredEvent};

/// When the log is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Before `ok` is sent for every `pub`, `sub`, `unsub` and `ack` (grouped across clients).
    Always,
    /// In groups, at least every 100 ms.
    Batched,
    /// Never explicitly: the operating system writes when it likes.
    Off,
}

impl std::str::FromStr for SyncMode {
    type Err = String;

    /// Reads `always`, `batched` or `off` (the `--sync` flag).
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "always" => Ok(SyncMode::Always),
            "batched" => Ok(SyncMode::Batched),
            "off" => Ok(SyncMode::Off),
            other => Err(format!("expected always, batched or off, got '{other}'")),
        }
    }
}

/// How often batched mode fsyncs, at the latest.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
struct Segment {
    number: u64,
    first_seq: u64,
    path: PathBuf,
    /// Bumped each time compaction rewrites the file (read cursors then rescan).
    generation: u64,
    /// Compaction's last look kept all of it that it kept: it needs no new
    /// look until an ack or an unsubscribe reaches its events or the checkpoint moves.
    settled: bool,
}

struct LogState {
    segments: Vec<Segment>,
    active: Arc<File>,
    active_len: u64,
    last_seq: u64,
    /// Appends so far: the "ticket" a writer waits on for fsync.
    appended: u64,
    scratch: Vec<u8>,
    /// The checkpoint at the head of the active segment: subscriber → (start, acked through).
    active_checkpoint: HashMap<String, (u64, u64)>,
    /// The lowest sequence number whose event may have stopped being needed
    /// since compaction last looked (0: anything), `u64::MAX` when nothing changed.
    changed_from: u64,
}

/// One topic's log.
pub struct TopicLog {
    dir: PathBuf,
    segment_bytes: u64,
    sync: SyncMode,
    state: Mutex<LogState>,
    synced: watch::Sender<u64>,
    sync_wanted: Notify,
    /// Events read back from the log for spilled queues: what restarts and slow subscribers cost in reading.
    read_back: AtomicU64,
}

/// A durable subscriber found by recovery.
#[derive(Debug, Clone)]
pub struct RecoveredSubscriber {
    /// Its name.
    pub name: String,
    /// It gets events after this sequence number.
    pub start: u64,
    /// What it acknowledged.
    pub acked: AckedSet,
    /// Events in the log it has not acknowledged.
    pub pending: u64,
}

/// What recovery found in a topic's log.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// Highest sequence number ever assigned.
    pub last_seq: u64,
    /// Durable subscribers and their state.
    pub subscribers: Vec<RecoveredSubscriber>,
    /// Torn or corrupt records dropped, one line each.
    pub warnings: Vec<String>,
}

/// Where a reader is in the log, so successive reads continue where they stopped.
#[derive(Debug, Clone)]
pub struct ReadCursor {
    /// The next sequence number wanted.
    pub next_seq: u64,
    /// (segment number, generation, byte offset) of the next record to read.
    position: Option<(u64, u64, u64)>,
}

impl ReadCursor {
    /// A cursor wanting events from `next_seq` on.
    pub fn new(next_seq: u64) -> Self {
        ReadCursor { next_seq, position: None }
    }
}

/// What compaction did in one pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Segments deleted because nothing in them was needed any more.
    pub deleted: usize,
    /// Segments rewritten with only what is still needed.
    pub rewritten: usize,
    /// Bytes freed.
    pub bytes_freed: u64,
}

/// The log locked for appending: sequence numbers and records in one order.
pub struct LogGuard<'a> {
    log: &'a TopicLog,
    state: MutexGuard<'a, LogState>,
}

impl LogGuard<'_> {
    /// The highest sequence number assigned so far.
    pub fn last_seq(&self) -> u64 {
        self.state.last_seq
    }

    /// Whether the active segment is past its size and should roll before the next append.
    pub fn needs_roll(&self) -> bool {
        self.state.active_len >= self.log.segment_bytes
    }

    /// Closes the active segment and starts a new one headed by this checkpoint.
    pub fn roll(&mut self, subscribers: Vec<CheckpointEntry>) -> io::Result<()> {
        self.state.active.sync_data()?;
        let number = self.state.segments.last().map_or(1, |s| s.number + 1);
        let first_seq = self.state.last_seq + 1;
        let (segment, file, len) =
            create_segment(&self.log.dir, number, first_seq, self.state.last_seq, &subscribers)?;
        self.state.segments.push(segment);
        self.state.active = Arc::new(file);
        self.state.active_len = len;
        self.state.active_checkpoint =
            subscribers.into_iter().map(|e| (e.subscriber, (e.start, e.acked_through))).collect();
        // A new checkpoint decides anew which acks in closed segments are still needed.
        self.state.changed_from = 0;
        Ok(())
    }

    /// Appends a record; returns its ticket for `wait_durable`.
    pub fn append(&mut self, record: &Record) -> io::Result<u64> {
        let state = &mut *self.state;
        state.scratch.clear();
        record::encode(record, &mut state.scratch);
        (&*state.active).write_all(&state.scratch)?;
        state.active_len += state.scratch.len() as u64;
        state.appended += 1;

        Ok(state.appended)
    }

    /// Assigns the next sequence number to the event `make` builds and appends it.
    pub fn publish(&mut self, make: impl FnOnce(u64) -> StoredEvent) -> io::Result<(Arc<StoredEvent>, u64)> {
        let event = make(self.state.last_seq + 1);
        let ticket = self.append(&Record::Publish(event.clone()))?;
        self.state.last_seq = event.seq;
        Ok((Arc::new(event), ticket))
    }
}

impl TopicLog {
    /// Opens the log in `dir`, creating it or recovering what is there, and
    /// starts a fresh active segment.
    pub fn open(dir: &Path, segment_bytes: u64, sync: SyncMode) -> io::Result<(TopicLog, Recovery)> {
        fs::create_dir_all(dir)?;
        let mut segments = list_segments(dir)?;
        let recovery = recover(&segments)?;
        let number = segments.last().map_or(1, |s| s.number + 1);
        let entries: Vec<CheckpointEntry> = recovery
            .subscribers
            .iter()
            .map(|s| CheckpointEntry {
                subscriber: s.name.clone(),
                start: s.start,
                acked_through: s.acked.contiguous_through(s.start),
            })
            .collect();
        let (segment, file, len) =
            create_segment(dir, number, recovery.last_seq + 1, recovery.last_seq, &entries)?;
        segments.push(segment);
        let state = LogState {
            segments,
            active: Arc::new(file),
            active_len: len,
            last_seq: recovery.last_seq,
            appended: 0,
            scratch: Vec::new(),
            active_checkpoint: entries
                .into_iter()
                .map(|e| (e.subscriber, (e.start, e.acked_through)))
                .collect(),
            changed_from: 0,
        };
        let log = TopicLog {
            dir: dir.to_path_buf(),
            segment_bytes: segment_bytes.max(1024),
            sync,
            state: Mutex::new(state),
            synced: watch::Sender::new(0),
            sync_wanted: Notify::new(),
            read_back: AtomicU64::new(0),
        };
        Ok((log, recovery))
    }

    /// Locks the log for appending (a short, synchronous critical section: never hold it across an await).
    pub fn lock(&self) -> LogGuard<'_> {
        LogGuard { log: self, state: crate::sync::lock(&self.state) }
    }

    /// The highest sequence number assigned so far.
    #[cfg(test)]
    fn last_seq(&self) -> u64 {
        self.lock().last_seq()
    }

    /// Returns once the append with this ticket is on disk, if the sync mode is `always`.
    pub async fn wait_durable(&self, ticket: u64) {
        if self.sync != SyncMode::Always {
            return;
        }
        let mut synced = self.synced.subscribe();
        if *synced.borrow() >= ticket {
            return;
        }
        self.sync_wanted.notify_one();
        let _ = synced.wait_for(|done| *done >= ticket).await;
    }

    /// Fsyncs in groups: whenever a writer waits (`always`) and at least every
    /// 100 ms while there are unsynced appends. Returns at once for `off`.
    pub async fn run_syncer(&self) {
        if self.sync == SyncMode::Off {
            return;
        }
        loop {
            tokio::select! {
                _ = self.sync_wanted.notified() => {}
                _ = tokio::time::sleep(SYNC_INTERVAL) => {}
            }
            if let Err(error) = self.sync_now().await {
                eprintln!("warning: fsync of {} failed: {error}", self.dir.display());
            }
        }
    }

    /// Fsyncs everything appended so far.
    pub async fn sync_now(&self) -> io::Result<()> {
        let (file, ticket) = {
            let state = self.lock();
            if state.state.appended == *self.synced.borrow() {
                return Ok(());
            }
            (state.state.active.clone(), state.state.appended)
        };
        tokio::task::spawn_blocking(move || file.sync_data()).await.map_err(io::Error::other)??;
        self.synced.send_if_modified(|done| {
            let newer = ticket > *done;
            *done = (*done).max(ticket);
            newer
        });
        Ok(())
    }

    /// Reads up to `limit` events with sequence numbers from `cursor.next_seq`
    /// through `through`, leaving out those `skip` rejects; advances the cursor.
    /// Every event up to `through` must already be appended.
    pub fn read_events(
        &self,
        cursor: &mut ReadCursor,
        through: u64,
        limit: usize,
        skip: impl Fn(u64) -> bool,
    ) -> io::Result<Vec<StoredEvent>> {
        let mut events = Vec::new();
        while events.len() < limit && cursor.next_seq <= through {
            let (segment, offset, next_segment) = {
                let state = self.lock();
                let segments = &state.state.segments;
                let cached = cursor.position.and_then(|(number, generation, offset)| {
                    segments
                        .iter()
                        .position(|s| s.number == number && s.generation == generation)
                        .map(|index| (index, offset))
                });
                let (index, offset) = cached.unwrap_or_else(|| {
                    (segments.iter().rposition(|s| s.first_seq <= cursor.next_seq).unwrap_or(0), 0)
                });
                (segments[index].clone(), offset, segments.get(index + 1).cloned())
            };
            let file = match File::open(&segment.path) {
                Ok(file) => file,
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    // Deleted by compaction between the lookup and the open: look again.
                    cursor.position = None;
                    continue;
                }
                Err(error) => return Err(error),
            };
            let mut frames = FrameReader::new(file, offset)?;
            loop {
                let before = frames.offset;
                match frames.next_frame()? {
                    Frame::Record(Record::Publish(event)) => {
                        self.read_back.fetch_add(1, Ordering::Relaxed);
                        if event.seq > through {
                            cursor.position = Some((segment.number, segment.generation, before));
                            cursor.next_seq = through + 1;
                            return Ok(events);
                        }
                        if event.seq >= cursor.next_seq {
                            cursor.next_seq = event.seq + 1;
                            if !skip(event.seq) {
                                events.push(event);
                            }
                        }
                    }
                    Frame::Record(_) => {}
                    Frame::End | Frame::Torn(_) | Frame::Corrupt(_) => {
                        match &next_segment {
                            Some(next) => cursor.position = Some((next.number, next.generation, 0)),
                            None => {
                                // The end of the active segment: nothing more up to `through`.
                                cursor.position = Some((segment.number, segment.generation, before));
                                cursor.next_seq = through + 1;
                            }
                        }
                        break;
                    }
                }
                cursor.position = Some((segment.number, segment.generation, frames.offset));
                if events.len() >= limit {
                    return Ok(events);
                }
            }
        }
        Ok(events)
    }

    /// Says the event `seq` (and any after it; 0: every event) may no longer
    /// be needed: an ack or a subscription's end, once the subscription's
    /// state shows it.
    pub fn mark_changed(&self, seq: u64) {
        let mut state = self.lock();
        state.state.changed_from = state.state.changed_from.min(seq);
    }

    /// Takes the lowest sequence number whose event may have stopped being
    /// needed since the last call (0: anything; `u64::MAX`: nothing). Take it
    /// before the snapshot of what subscribers acked that compaction works from.
    pub fn take_changes(&self) -> u64 {
        std::mem::replace(&mut self.lock().state.changed_from, u64::MAX)
    }

    /// Deletes closed segments holding nothing still needed and rewrites those
    /// at least half dead. Needed: events `publish_needed` says a subscriber
    /// still waits for, and acks not yet covered by the active checkpoint.
    /// A segment compaction already looked at is read again only if
    /// `changed_from` (from [`TopicLog::take_changes`]) reaches its events: a
    /// backlog nobody acks is not reread every pass. Nothing of a segment is
    /// held in memory beyond one record: live bytes are counted first and a
    /// rewrite streams them to the new file.
    pub fn compact(
        &self,
        changed_from: u64,
        publish_needed: impl Fn(u64) -> bool,
    ) -> io::Result<CompactionReport> {
        let result = self.compact_segments(changed_from, publish_needed);
        if result.is_err() {
            // Look again next time at whatever this pass did not finish.
            self.mark_changed(changed_from);
        }
        result
    }

    fn compact_segments(
        &self,
        changed_from: u64,
        publish_needed: impl Fn(u64) -> bool,
    ) -> io::Result<CompactionReport> {
        let (closed, checkpoint) = {
            let state = self.lock();
            let segments = &state.state.segments;
            let closed: Vec<(Segment, u64)> =
                segments.windows(2).map(|pair| (pair[0].clone(), pair[1].first_seq)).collect();
            (closed, state.state.active_checkpoint.clone())
        };
        let ack_needed = |subscriber: &str, seq: u64| {
            checkpoint
                .get(subscriber)
                .is_some_and(|&(start, acked_through)| seq > start && seq > acked_through)
        };
        let keep = |record: &Record| match record {
            Record::Publish(event) => publish_needed(event.seq),
            Record::Ack { subscriber, seq } => ack_needed(subscriber, *seq),
            Record::Subscribe { .. } | Record::Unsubscribe { .. } | Record::Checkpoint { .. } => false,
        };
        let mut report = CompactionReport::default();
        for (segment, next_first_seq) in closed {
            if segment.settled && next_first_seq <= changed_from {
                continue;
            }
            let file = File::open(&segment.path)?;
            let total = file.metadata()?.len();
            let mut frames = FrameReader::new(file, 0)?;
            let mut live = 0u64;
            loop {
                let before = frames.offset;
                let Frame::Record(record) = frames.next_frame()? else { break };
                if keep(&record) {
                    live += frames.offset - before;
                }
            }
            if live == 0 {
                self.lock().state.segments.retain(|s| s.number != segment.number);
                fs::remove_file(&segment.path)?;
                report.deleted += 1;
                report.bytes_freed += total;
                continue;
            }
            let rewritten = live * 2 <= total;
            if rewritten {
                let temporary = segment.path.with_extension("tmp");
                let mut out = io::BufWriter::with_capacity(64 * 1024, File::create(&temporary)?);
                let mut frames = FrameReader::new(File::open(&segment.path)?, 0)?;
                let mut scratch = Vec::new();
                while let Frame::Record(record) = frames.next_frame()? {
                    if keep(&record) {
                        scratch.clear();
                        record::encode(&record, &mut scratch);
                        out.write_all(&scratch)?;
                    }
                }
                let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
                file.sync_all()?;
                fs::rename(&temporary, &segment.path)?;
                sync_dir(&self.dir)?;
                report.rewritten += 1;
                report.bytes_freed += total.saturating_sub(file.metadata()?.len());
            }
            if let Some(s) = self.lock().state.segments.iter_mut().find(|s| s.number == segment.number) {
                s.generation += u64::from(rewritten);
                s.settled = true;
            }
        }
        if report.deleted > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(report)
    }

    /// Events read back from the log for spilled queues since it was opened.
    #[cfg(test)]
    pub fn events_read_back(&self) -> u64 {
        self.read_back.load(Ordering::Relaxed)
    }

    /// Bytes of all segment files.
    pub fn disk_bytes(&self) -> u64 {
        let segments = self.lock().state.segments.clone();
        segments.iter().filter_map(|s| fs::metadata(&s.path).ok()).map(|m| m.len()).sum()
    }
}

fn segment_path(dir: &Path, number: u64, first_seq: u64) -> PathBuf {
    dir.join(format!("{number:010}-{first_seq:020}.log"))
}

fn create_segment(
    dir: &Path,
    number: u64,
    first_seq: u64,
    last_seq: u64,
    subscribers: &[CheckpointEntry],
) -> io::Result<(Segment, File, u64)> {
    let path = segment_path(dir, number, first_seq);
    let mut file = OpenOptions::new().create_new(true).append(true).open(&path)?;
    let mut bytes = Vec::new();
    record::encode(&Record::Checkpoint { last_seq, subscribers: subscribers.to_vec() }, &mut bytes);
    file.write_all(&bytes)?;
    file.sync_data()?;
    sync_dir(dir)?;
    Ok((Segment { number, first_seq, path, generation: 0, settled: false }, file, bytes.len() as u64))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The segments in `dir`, oldest first; leftover temporary files are removed.
fn list_segments(dir: &Path) -> io::Result<Vec<Segment>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if name.ends_with(".tmp") {
            fs::remove_file(&path)?;
            continue;
        }
        let Some(stem) = name.strip_suffix(".log") else { continue };
        let Some((number, first_seq)) = stem.split_once('-') else { continue };
        if let (Ok(number), Ok(first_seq)) = (number.parse(), first_seq.parse()) {
            segments.push(Segment { number, first_seq, path, generation: 0, settled: false });
        }
    }
    segments.sort_by_key(|s| s.number);
    Ok(segments)
}

/// Replays the segments: durable subscribers, their acks, the last sequence
/// number. A damaged record ends its segment: the file is truncated there
/// and a warning is returned.
fn recover(segments: &[Segment]) -> io::Result<Recovery> {
    let mut recovery = Recovery::default();
    let mut subscribers: HashMap<String, (u64, u64)> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut acks: HashMap<String, AckedSet> = HashMap::new();
    for segment in segments {
        let file = OpenOptions::new().read(true).write(true).open(&segment.path)?;
        let mut frames = FrameReader::new(file.try_clone()?, 0)?;
        loop {
            let before = frames.offset;
            let problem = match frames.next_frame()? {
                Frame::Record(record) => {
                    match record {
                        Record::Publish(event) => recovery.last_seq = recovery.last_seq.max(event.seq),
                        Record::Ack { subscriber, seq } => acks.entry(subscriber).or_default().insert(seq),
                        Record::Subscribe { subscriber, start } => {
                            order.retain(|name| *name != subscriber);
                            order.push(subscriber.clone());
                            subscribers.insert(subscriber, (start, start));
                        }
                        Record::Unsubscribe { subscriber } => {
                            subscribers.remove(&subscriber);
                        }
                        Record::Checkpoint { last_seq, subscribers: entries } => {
                            recovery.last_seq = recovery.last_seq.max(last_seq);
                            order = entries.iter().map(|e| e.subscriber.clone()).collect();
                            subscribers = entries
                                .into_iter()
                                .map(|e| (e.subscriber, (e.start, e.acked_through)))
                                .collect();
                        }
                    }
                    continue;
                }
                Frame::End => break,
                Frame::Torn(why) => format!("torn record at the tail ({why})"),
                Frame::Corrupt(why) => format!("corrupt record ({why})"),
            };
            let length = file.metadata()?.len();
            recovery.warnings.push(format!(
                "{}: {problem} at byte {before}; dropping the last {} bytes",
                segment.path.display(),
                length - before
            ));
            file.set_len(before)?;
            file.sync_all()?;
            break;
        }
    }
    // Sequence numbers go to publishes only, one after another, and compaction
    // drops an event only once every subscriber that gets it has acked it: so
    // a subscriber's pending events are those after its start, less its acks
    // (no second pass over the whole log, which grows with the backlog).
    let last_seq = recovery.last_seq;
    let found: Vec<RecoveredSubscriber> = order
        .into_iter()
        .filter_map(|name| {
            let &(start, acked_through) = subscribers.get(&name)?;
            let mut acked = acks.remove(&name).unwrap_or_default();
            acked.forget_through(start);
            acked.insert_range(start + 1, acked_through);
            let pending = last_seq.saturating_sub(start) - acked.count_within(start, last_seq);
            Some(RecoveredSubscriber { name, start, acked, pending })
        })
        .collect();
    recovery.subscribers = found;
    Ok(recovery)
}

/// One step of reading frames from a file.
enum Frame {
    Record(Record),
    /// A clean end of the data.
    End,
    /// The data ends inside a frame.
    Torn(String),
    /// A damaged frame.
    Corrupt(String),
}

/// Reads frames one at a time from a file, from a byte offset.
struct FrameReader {
    reader: BufReader<File>,
    offset: u64,
    buffer: Vec<u8>,
}

impl FrameReader {
    fn new(mut file: File, offset: u64) -> io::Result<Self> {
        file.seek(SeekFrom::Start(offset))?;
        Ok(FrameReader { reader: BufReader::with_capacity(64 * 1024, file), offset, buffer: Vec::new() })
    }

    fn next_frame(&mut self) -> io::Result<Frame> {
        let mut header = [0u8; FRAME_HEADER];
        let got = read_full(&mut self.reader, &mut header)?;
        if got == 0 {
            return Ok(Frame::End);
        }
        if got < FRAME_HEADER {
            return Ok(Frame::Torn(format!("{got} of {FRAME_HEADER} header bytes")));
        }
        let payload_len = record::declared_payload_len(&header);
        if payload_len > MAX_PAYLOAD {
            return Ok(Frame::Corrupt(format!("frame declares {payload_len} bytes")));
        }
        self.buffer.clear();
        self.buffer.extend_from_slice(&header);
        self.buffer.resize(FRAME_HEADER + payload_len, 0);
        let got = read_full(&mut self.reader, &mut self.buffer[FRAME_HEADER..])?;
        if got < payload_len {
            return Ok(Frame::Torn(format!("{got} of {payload_len} payload bytes")));
        }
        match record::decode(&self.buffer) {
            Decoded::Record(record, used) => {
                self.offset += used as u64;
                Ok(Frame::Record(record))
            }
            Decoded::Incomplete => Ok(Frame::Torn("incomplete frame".into())),
            Decoded::Corrupt(why) => Ok(Frame::Corrupt(why)),
        }
    }
}

/// Reads until `buffer` is full or the data ends; returns the bytes read.
fn read_full(reader: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(count) => filled += count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_modes_read_from_their_flag_words() {
        assert_eq!("always".parse(), Ok(SyncMode::Always));
        assert_eq!("batched".parse(), Ok(SyncMode::Batched));
        assert_eq!("off".parse(), Ok(SyncMode::Off));
        assert_eq!(
            "Always".parse::<SyncMode>(),
            Err("expected always, batched or off, got 'Always'".to_string())
        );
    }

    fn event(seq: u64) -> StoredEvent {
        StoredEvent { seq, priority: 0, id: format!("e{seq}"), body: format!("{{\"n\":{seq}}}") }
    }

    fn publish_many(log: &TopicLog, count: u64) {
        for _ in 0..count {
            let mut guard = log.lock();
            if guard.needs_roll() {
                guard.roll(Vec::new()).unwrap();
            }
            guard.publish(event).unwrap();
        }
    }

    #[test]
    fn events_read_back_across_segments_with_a_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let (log, recovery) = TopicLog::open(dir.path(), 1024, SyncMode::Off).unwrap();
        assert_eq!(recovery.last_seq, 0);
        publish_many(&log, 200);
        assert!(list_segments(dir.path()).unwrap().len() > 3);
        let mut cursor = ReadCursor::new(5);
        let first = log.read_events(&mut cursor, 150, 50, |seq| seq % 2 == 0).unwrap();
        assert_eq!(first.iter().map(|e| e.seq).collect::<Vec<_>>(), (5..=103).step_by(2).collect::<Vec<_>>());
        let rest = log.read_events(&mut cursor, 150, 1000, |_| false).unwrap();
        assert_eq!(rest.first().map(|e| e.seq), Some(104));
        assert_eq!(rest.last().map(|e| e.seq), Some(150));
        assert_eq!(cursor.next_seq, 151);
    }

    #[test]
    fn recovery_finds_subscribers_acks_and_pending() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, _) = TopicLog::open(dir.path(), 1 << 20, SyncMode::Off).unwrap();
            let mut guard = log.lock();
            guard.publish(event).unwrap();
            guard.append(&Record::Subscribe { subscriber: "w".into(), start: 1 }).unwrap();
            for _ in 0..5 {
                guard.publish(event).unwrap();
            }
            guard.append(&Record::Ack { subscriber: "w".into(), seq: 3 }).unwrap();
            guard.append(&Record::Ack { subscriber: "w".into(), seq: 2 }).unwrap();
        }
        let (log, recovery) = TopicLog::open(dir.path(), 1 << 20, SyncMode::Off).unwrap();
        assert_eq!(recovery.last_seq, 6);
        assert_eq!(recovery.subscribers.len(), 1);
        let subscriber = &recovery.subscribers[0];
        assert_eq!((subscriber.name.as_str(), subscriber.start, subscriber.pending), ("w", 1, 3));
        assert!(
            subscriber.acked.contains(2) && subscriber.acked.contains(3) && !subscriber.acked.contains(4)
        );
        assert_eq!(log.last_seq(), 6);
    }

    #[test]
    fn a_torn_tail_is_dropped_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, _) = TopicLog::open(dir.path(), 1 << 20, SyncMode::Off).unwrap();
            publish_many(&log, 10);
        }
        let path = list_segments(dir.path()).unwrap().last().unwrap().path.clone();
        let length = fs::metadata(&path).unwrap().len();
        OpenOptions::new().write(true).open(&path).unwrap().set_len(length - 5).unwrap();
        let (log, recovery) = TopicLog::open(dir.path(), 1 << 20, SyncMode::Off).unwrap();
        assert_eq!(recovery.last_seq, 9);
        assert_eq!(recovery.warnings.len(), 1, "{:?}", recovery.warnings);
        assert!(recovery.warnings[0].contains("torn record"), "{:?}", recovery.warnings);
        let mut cursor = ReadCursor::new(1);
        assert_eq!(log.read_events(&mut cursor, 9, 100, |_| false).unwrap().len(), 9);
    }

    #[test]
    fn compaction_rereads_a_kept_segment_only_once_something_reaches_its_events() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = TopicLog::open(dir.path(), 2048, SyncMode::Off).unwrap();
        publish_many(&log, 300);
        log.lock().roll(Vec::new()).unwrap();
        let segments = list_segments(dir.path()).unwrap().len();
        // Every event needed: nothing goes, and each closed segment is now settled.
        let report = log.compact(log.take_changes(), |_| true).unwrap();
        assert_eq!(report, CompactionReport::default());
        assert_eq!(log.take_changes(), u64::MAX, "a pass with no acks leaves nothing to look at");
        // Nothing changed, so a pass does not read them again, even if asked with a rule that would drop all.
        assert_eq!(log.compact(u64::MAX, |_| false).unwrap(), CompactionReport::default());
        assert_eq!(list_segments(dir.path()).unwrap().len(), segments);
        // An ack of event 150 reaches the segment holding it and every later one, not the earlier ones.
        log.mark_changed(150);
        let report = log.compact(log.take_changes(), |_| false).unwrap();
        assert!(report.deleted > 0, "{report:?}");
        let mut cursor = ReadCursor::new(1);
        let left = log.read_events(&mut cursor, 300, 1000, |_| false).unwrap();
        assert!(left.first().is_some_and(|e| e.seq == 1), "the segments before 150 were not reread");
        assert!(
            left.iter().all(|e| e.seq < 150),
            "every segment from 150's on was dropped: {:?}",
            left.last()
        );
    }

    #[test]
    fn compaction_deletes_dead_segments_and_keeps_needed_events() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = TopicLog::open(dir.path(), 2048, SyncMode::Off).unwrap();
        publish_many(&log, 300);
        log.lock().roll(Vec::new()).unwrap();
        let before = log.disk_bytes();
        let report = log.compact(log.take_changes(), |seq| seq == 150).unwrap();
        assert!(report.deleted > 3, "{report:?}");
        assert!(log.disk_bytes() < before / 4, "{} of {before}", log.disk_bytes());
        let mut cursor = ReadCursor::new(1);
        let left = log.read_events(&mut cursor, 300, 1000, |_| false).unwrap();
        assert_eq!(left.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![150]);
    }
}
