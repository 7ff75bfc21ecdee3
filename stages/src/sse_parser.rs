//! The server-sent-events wire format, parsed as the HTML standard says
//! (lines ending in CRLF, LF or CR; `field: value`; a blank line dispatches;
//! `id` persists; `retry` takes effect at once), with a cap on what one
//! event may hold.
//!
//! A line or an event longer than the cap is not buffered: its bytes are
//! counted and skipped, and at its blank line the parser reports it as
//! [`SseItem::TooLong`] with the last event id, so a receiver can say where
//! and go on. Memory stays at two caps (the line being read and the event
//! being built), whatever the server sends.

use std::time::Duration;

/// The default cap on one event (its `data` lines together) and on one line, bytes.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;

/// An event as dispatched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseMessage {
    /// The last event id seen (`id:` persists across events), empty if none.
    pub id: String,
    /// The `event:` type, `message` when none was given.
    pub event: String,
    /// The `data:` lines joined by `\n`.
    pub data: String,
}

/// What the parser found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// A complete event.
    Message(SseMessage),
    /// An event (or one of its lines) over the cap: skipped.
    TooLong {
        /// The last event id when it ended (its own `id:` if it had one).
        id: String,
        /// Bytes it had when it went over, plus those skipped after.
        bytes: u64,
    },
    /// The server's reconnection time (`retry:`), effective at once.
    Retry(Duration),
}

/// A push parser: feed it bytes as they arrive, take the items it completes.
#[derive(Debug)]
pub struct SseParser {
    max: usize,
    line: Vec<u8>,
    /// Bytes of the current line beyond the cap, which were not kept.
    line_skipped: u64,
    /// The previous byte was a `\r` (a `\n` right after it ends nothing more).
    after_cr: bool,
    /// Whether the stream's first line is still to come (a BOM is stripped from it).
    first_line: bool,
    data: String,
    event: String,
    last_id: String,
    /// The event being built went over the cap; bytes counted so far.
    over: Option<u64>,
}

impl SseParser {
    /// A parser holding at most `max` bytes of a line and of an event.
    pub fn new(max: usize) -> Self {
        SseParser {
            max: max.max(1),
            line: Vec::new(),
            line_skipped: 0,
            after_cr: false,
            first_line: true,
            data: String::new(),
            event: String::new(),
            last_id: String::new(),
            over: None,
        }
    }

    /// The last event id seen.
    pub fn last_event_id(&self) -> &str {
        &self.last_id
    }

    /// Parses `bytes`, appending every item they complete to `out`.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<SseItem>) {
        while !bytes.is_empty() {
            // A `\n` right after a `\r` ends nothing more (CRLF), even across feeds.
            if std::mem::take(&mut self.after_cr) && bytes[0] == b'\n' {
                bytes = &bytes[1..];
                continue;
            }
            match memchr::memchr2(b'\n', b'\r', bytes) {
                // A whole line within the cap in this piece is read where it is, not copied first.
                Some(end) if self.line.is_empty() && self.line_skipped == 0 && end <= self.max => {
                    self.after_cr = bytes[end] == b'\r';
                    self.field(&bytes[..end], out);
                    bytes = &bytes[end + 1..];
                }
                Some(end) => {
                    self.keep(&bytes[..end]);
                    self.after_cr = bytes[end] == b'\r';
                    self.end_line(out);
                    bytes = &bytes[end + 1..];
                }
                None => {
                    self.keep(bytes);
                    break;
                }
            }
        }
    }

    /// Adds `part` to the line being read, as far as the cap allows; counts the rest.
    fn keep(&mut self, part: &[u8]) {
        let kept = part.len().min(self.max.saturating_sub(self.line.len()));
        self.line.extend_from_slice(&part[..kept]);
        self.line_skipped += (part.len() - kept) as u64;
    }

    fn end_line(&mut self, out: &mut Vec<SseItem>) {
        let mut line = std::mem::take(&mut self.line);
        let skipped = std::mem::take(&mut self.line_skipped);
        if skipped > 0 {
            // A line over the cap spoils its event, whatever field it was.
            self.first_line = false;
            self.spoil(line.len() as u64 + skipped);
        } else {
            self.field(&line, out);
        }
        // The buffer keeps its capacity for the next line.
        line.clear();
        self.line = line;
    }

    /// Applies one complete line (within the cap).
    fn field(&mut self, line: &[u8], out: &mut Vec<SseItem>) {
        // Checked as UTF-8 first: lossy conversion is only needed for a bad line and is slower.
        let text = match std::str::from_utf8(line) {
            Ok(text) => std::borrow::Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(line),
        };
        let mut text: &str = &text;
        if std::mem::take(&mut self.first_line) {
            text = text.strip_prefix('\u{feff}').unwrap_or(text);
        }
        if text.is_empty() {
            self.dispatch(out);
            return;
        }
        if text.starts_with(':') {
            return;
        }
        let (field, value) = match text.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (text, ""),
        };
        match field {
            "event" => value.clone_into(&mut self.event),
            "data" => match self.over {
                Some(bytes) => self.over = Some(bytes + value.len() as u64 + 1),
                None if self.data.len() + value.len() + 1 > self.max => self.spoil(value.len() as u64 + 1),
                None => {
                    self.data.push_str(value);
                    self.data.push('\n');
                }
            },
            "id" if !value.contains('\0') => value.clone_into(&mut self.last_id),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(ms) = value.parse::<u64>() {
                    out.push(SseItem::Retry(Duration::from_millis(ms)));
                }
            }
            _ => {}
        }
    }

    /// Marks the event being built as over the cap by `bytes` more, dropping what it held.
    fn spoil(&mut self, bytes: u64) {
        let held = self.data.len() as u64;
        self.over = Some(self.over.map_or(held + bytes, |before| before + bytes));
        self.data = String::new();
    }

    fn dispatch(&mut self, out: &mut Vec<SseItem>) {
        let event = std::mem::take(&mut self.event);
        if let Some(bytes) = self.over.take() {
            out.push(SseItem::TooLong { id: self.last_id.clone(), bytes });
            return;
        }
        if self.data.is_empty() {
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        let event = if event.is_empty() { "message".to_string() } else { event };
        out.push(SseItem::Message(SseMessage { id: self.last_id.clone(), event, data }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Everything `input` yields, fed in pieces of `step` bytes.
    fn parse(input: &[u8], max: usize, step: usize) -> Vec<SseItem> {
        let mut parser = SseParser::new(max);
        let mut out = Vec::new();
        for piece in input.chunks(step.max(1)) {
            parser.feed(piece, &mut out);
        }
        out
    }

    fn message(id: &str, data: &str) -> SseItem {
        SseItem::Message(SseMessage { id: id.into(), event: "message".into(), data: data.into() })
    }

    #[test]
    fn fields_lines_and_dispatch_follow_the_standard() {
        let input = "\u{feff}: a comment\r\nid: 1\ndata: first\ndata:second\r\rid: 2\nevent: kind\ndata\n\nretry: 1500\n\
                     data: no id change\n\nid: x\0y\ndata: bad id ignored\n\ndata: unfinished";
        let got = parse(input.as_bytes(), 1000, 3);
        assert_eq!(
            got,
            vec![
                message("1", "first\nsecond"),
                SseItem::Message(SseMessage { id: "2".into(), event: "kind".into(), data: String::new() }),
                SseItem::Retry(Duration::from_millis(1500)),
                message("2", "no id change"),
                message("2", "bad id ignored"),
            ]
        );
        // An event with no data is not dispatched; `retry` with a non-digit is ignored.
        assert_eq!(parse(b"event: x\n\nretry: 1s\n\n", 100, 1), vec![]);
    }

    #[test]
    fn an_event_over_the_cap_is_reported_with_its_id_and_the_next_one_comes_through() {
        let big = "x".repeat(40);
        let input =
            format!("id: 7\ndata: {big}\n\nid: 8\ndata: a\ndata: {big}\ndata: more\n\nid: 9\ndata: ok\n\n");
        let got = parse(input.as_bytes(), 30, 7);
        assert_eq!(
            got,
            vec![
                SseItem::TooLong { id: "7".into(), bytes: 46 },
                SseItem::TooLong { id: "8".into(), bytes: 2 + 46 + 5 },
                message("9", "ok"),
            ]
        );
        // Many data lines each under the cap add up past it.
        let lines = "data: 123456789\n".repeat(5);
        assert_eq!(
            parse(format!("{lines}\n").as_bytes(), 30, 4),
            vec![SseItem::TooLong { id: String::new(), bytes: 50 }]
        );
    }

    proptest! {
        #[test]
        fn any_bytes_in_any_pieces_stay_within_the_cap(
            bytes in prop::collection::vec(any::<u8>(), 0..600),
            max in 1usize..40,
            step in 1usize..50,
        ) {
            let mut parser = SseParser::new(max);
            let mut out = Vec::new();
            for piece in bytes.chunks(step) {
                parser.feed(piece, &mut out);
                prop_assert!(parser.line.len() <= max && parser.data.len() <= max + 1);
            }
            for item in &out {
                if let SseItem::Message(message) = item {
                    prop_assert!(message.data.len() <= max, "{} bytes of data over {max}", message.data.len());
                }
            }
            // Pieces do not matter.
            prop_assert_eq!(out, parse(&bytes, max, bytes.len().max(1)));
        }
    }
}
