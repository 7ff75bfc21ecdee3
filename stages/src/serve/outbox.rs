//! A session's bounded outbox of tweet lines: when full it drops the oldest
//! and counts them, so a slow terminal costs at most its bounds in memory and
//! never slows the pipeline; the writer then gets one `[skipped N tweets]`
//! line where the gap is. Pure data structure, no I/O.

use std::collections::VecDeque;

use super::protocol::skipped_line;

/// What the writer takes from an outbox, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// `count` lines were dropped here.
    Skipped(u64),
    /// A line to write.
    Line(String),
}

impl Outgoing {
    /// The text to write (without the newline).
    pub fn into_text(self) -> String {
        match self {
            Outgoing::Skipped(count) => skipped_line(count),
            Outgoing::Line(line) => line,
        }
    }
}

/// Lines waiting for a slow writer, bounded in count and bytes.
#[derive(Debug)]
pub struct Outbox {
    lines: VecDeque<String>,
    bytes: usize,
    max_lines: usize,
    max_bytes: usize,
    /// Dropped since the writer last took lines: they were all older than what is queued.
    skipped: u64,
    /// Dropped since the outbox was made.
    skipped_total: u64,
    /// Most lines ever queued at once.
    peak_lines: usize,
}

impl Outbox {
    /// An outbox of at most `max_lines` lines and `max_bytes` bytes (each at least 1).
    pub fn new(max_lines: usize, max_bytes: usize) -> Self {
        Outbox {
            lines: VecDeque::new(),
            bytes: 0,
            max_lines: max_lines.max(1),
            max_bytes: max_bytes.max(1),
            skipped: 0,
            skipped_total: 0,
            peak_lines: 0,
        }
    }

    /// Queues a line, dropping the oldest while over a bound; a line larger
    /// than `max_bytes` on its own is dropped (and counted).
    pub fn push(&mut self, line: String) {
        if line.len() > self.max_bytes {
            self.count_skipped(1);
            return;
        }
        while !self.lines.is_empty()
            && (self.lines.len() >= self.max_lines || self.bytes + line.len() > self.max_bytes)
        {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.len();
                self.count_skipped(1);
            }
        }
        self.bytes += line.len();
        self.lines.push_back(line);
        self.peak_lines = self.peak_lines.max(self.lines.len());
    }

    fn count_skipped(&mut self, count: u64) {
        self.skipped += count;
        self.skipped_total += count;
    }

    /// Takes up to `max` queued lines for the writer, preceded by the skip
    /// notice if lines were dropped before them.
    pub fn take(&mut self, max: usize) -> Vec<Outgoing> {
        let mut out = Vec::with_capacity(max.min(self.lines.len()) + 1);
        if self.skipped > 0 {
            out.push(Outgoing::Skipped(std::mem::take(&mut self.skipped)));
        }
        while out.len() < max {
            let Some(line) = self.lines.pop_front() else { break };
            self.bytes -= line.len();
            out.push(Outgoing::Line(line));
        }
        out
    }

    /// Forgets every queued line (stop watching), without counting them as skipped.
    pub fn clear(&mut self) {
        self.lines.clear();
        self.bytes = 0;
        self.skipped = 0;
    }

    /// Lines queued now.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Whether nothing waits (not even a skip notice).
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.skipped == 0
    }

    /// Bytes of the queued lines now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Most lines ever queued at once.
    pub fn peak_lines(&self) -> usize {
        self.peak_lines
    }

    /// Lines dropped since the outbox was made.
    pub fn skipped_total(&self) -> u64 {
        self.skipped_total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(outbox: &mut Outbox) -> Vec<String> {
        outbox.take(usize::MAX).into_iter().map(Outgoing::into_text).collect()
    }

    #[test]
    fn lines_come_out_in_order_when_nothing_was_dropped() {
        let mut outbox = Outbox::new(3, 1000);
        outbox.push("a".into());
        outbox.push("b".into());
        assert_eq!(lines(&mut outbox), ["a", "b"]);
        assert!(outbox.is_empty());
        assert_eq!(outbox.take(10), []);
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_then_says_how_many_once() {
        let mut outbox = Outbox::new(3, 1000);
        for line in ["1", "2", "3", "4", "5"] {
            outbox.push(line.into());
        }
        assert_eq!(outbox.len(), 3);
        assert_eq!(lines(&mut outbox), ["[skipped 2 tweets]", "3", "4", "5"]);
        outbox.push("6".into());
        assert_eq!(lines(&mut outbox), ["6"], "the notice comes once per gap");
        assert_eq!(outbox.skipped_total(), 2);
        assert_eq!(outbox.peak_lines(), 3);
    }

    #[test]
    fn the_notice_stays_where_the_gap_is_across_partial_takes() {
        let mut outbox = Outbox::new(2, 1000);
        outbox.push("1".into());
        outbox.push("2".into());
        assert_eq!(outbox.take(1), [Outgoing::Line("1".into())]);
        outbox.push("3".into());
        outbox.push("4".into()); // drops 2
        assert_eq!(lines(&mut outbox), ["[skipped 1 tweet]", "3", "4"]);
    }

    #[test]
    fn bytes_are_bounded_too() {
        let mut outbox = Outbox::new(100, 10);
        outbox.push("aaaa".into());
        outbox.push("bbbb".into());
        outbox.push("cccc".into()); // 12 bytes would not fit: drops aaaa
        assert_eq!(outbox.bytes(), 8);
        outbox.push("x".repeat(11)); // larger than the whole outbox: dropped itself
        assert_eq!(outbox.bytes(), 8);
        assert_eq!(lines(&mut outbox), ["[skipped 2 tweets]", "bbbb", "cccc"]);
        assert_eq!(outbox.bytes(), 0);
    }

    #[test]
    fn memory_stays_bounded_however_many_lines_arrive() {
        let mut outbox = Outbox::new(1000, 64 * 1024);
        for n in 0..1_000_000u64 {
            outbox.push(format!("tweet: number {n}"));
            assert!(outbox.len() <= 1000 && outbox.bytes() <= 64 * 1024);
        }
        let out = outbox.take(usize::MAX);
        assert_eq!(out[0], Outgoing::Skipped(1_000_000 - 1000));
        assert_eq!(out.last(), Some(&Outgoing::Line("tweet: number 999999".into())));
    }

    #[test]
    fn clear_forgets_lines_and_pending_notices() {
        let mut outbox = Outbox::new(1, 100);
        outbox.push("a".into());
        outbox.push("b".into());
        outbox.clear();
        assert!(outbox.is_empty());
        assert_eq!(outbox.skipped_total(), 1);
    }
}
