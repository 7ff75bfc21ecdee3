//! Log records and their on-disk framing. Pure functions, no I/O.
//!
//! A frame is `[payload length: u32 LE][crc32 of payload: u32 LE][payload]`.
//! The payload starts with a kind byte; strings are `[u32 LE length][UTF-8]`.
//! A frame that runs past the end of the data is *incomplete* (a torn tail);
//! one whose checksum or contents do not match is *corrupt*.

/// Largest payload a frame may declare; anything larger is corruption.
pub const MAX_PAYLOAD: usize = 64 * 1024 * 1024;
/// Bytes of a frame before its payload.
pub const FRAME_HEADER: usize = 8;

/// An accepted event as stored and delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Position in its topic: 1, 2, 3, ... in publication order.
    pub seq: u64,
    /// 0 (lowest) to 9 (highest).
    pub priority: u8,
    /// The publisher's id.
    pub id: String,
    /// The JSON delivered to subscribers: `{"id", "priority", "msg", "ts"}`.
    pub body: String,
}

impl StoredEvent {
    /// Bytes this event holds in memory, roughly (for queue bounds).
    pub fn memory_size(&self) -> usize {
        std::mem::size_of::<Self>() + self.id.len() + self.body.len()
    }
}

/// A durable subscriber as a checkpoint remembers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointEntry {
    /// The subscriber's name.
    pub subscriber: String,
    /// It gets events with `seq > start`.
    pub start: u64,
    /// It had acked every event in `start + 1 ..= acked_through`.
    pub acked_through: u64,
}

/// One entry of a topic's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// An accepted event.
    Publish(StoredEvent),
    /// A durable subscriber acknowledged event `seq`.
    Ack {
        /// The subscriber's durable name.
        subscriber: String,
        /// The acknowledged event's sequence number.
        seq: u64,
    },
    /// A durable subscriber subscribed; it gets events after `start`.
    Subscribe {
        /// The subscriber's durable name.
        subscriber: String,
        /// It gets the events after this sequence number.
        start: u64,
    },
    /// A durable subscriber unsubscribed.
    Unsubscribe {
        /// The subscriber's durable name.
        subscriber: String,
    },
    /// Written first in every segment: the durable subscribers and the last
    /// sequence number so far, which supersede the metadata of older segments.
    Checkpoint {
        /// The last sequence number given out so far.
        last_seq: u64,
        /// Every durable subscriber, with its acknowledgement state.
        subscribers: Vec<CheckpointEntry>,
    },
}

const PUBLISH: u8 = 1;
const ACK: u8 = 2;
const SUBSCRIBE: u8 = 3;
const UNSUBSCRIBE: u8 = 4;
const CHECKPOINT: u8 = 5;

/// Appends `record`, framed, to `out`.
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    match record {
        Record::Publish(event) => {
            out.push(PUBLISH);
            out.extend_from_slice(&event.seq.to_le_bytes());
            out.push(event.priority);
            put_str(out, &event.id);
            put_str(out, &event.body);
        }
        Record::Ack { subscriber, seq } => {
            out.push(ACK);
            out.extend_from_slice(&seq.to_le_bytes());
            put_str(out, subscriber);
        }
        Record::Subscribe { subscriber, start } => {
            out.push(SUBSCRIBE);
            out.extend_from_slice(&start.to_le_bytes());
            put_str(out, subscriber);
        }
        Record::Unsubscribe { subscriber } => {
            out.push(UNSUBSCRIBE);
            put_str(out, subscriber);
        }
        Record::Checkpoint { last_seq, subscribers } => {
            out.push(CHECKPOINT);
            out.extend_from_slice(&last_seq.to_le_bytes());
            out.extend_from_slice(&(subscribers.len() as u32).to_le_bytes());
            for entry in subscribers {
                out.extend_from_slice(&entry.start.to_le_bytes());
                out.extend_from_slice(&entry.acked_through.to_le_bytes());
                put_str(out, &entry.subscriber);
            }
        }
    }
    let payload_len = (out.len() - start - FRAME_HEADER) as u32;
    let crc = crc32fast::hash(&out[start + FRAME_HEADER..]);
    out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// What is at the front of some log bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole, valid record and the bytes its frame took.
    Record(Record, usize),
    /// The data ends inside a frame (or is empty): a torn tail, or the end.
    Incomplete,
    /// The frame is damaged; the text says how.
    Corrupt(String),
}

/// Reads the frame at the front of `bytes`.
pub fn decode(bytes: &[u8]) -> Decoded {
    let Some(header) = bytes.get(..FRAME_HEADER) else { return Decoded::Incomplete };
    let payload_len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if payload_len > MAX_PAYLOAD {
        return Decoded::Corrupt(format!(
            "frame declares {payload_len} bytes, more than the {MAX_PAYLOAD} limit"
        ));
    }
    let Some(payload) = bytes.get(FRAME_HEADER..FRAME_HEADER + payload_len) else {
        return Decoded::Incomplete;
    };
    if crc32fast::hash(payload) != crc {
        return Decoded::Corrupt("checksum mismatch".into());
    }
    match decode_payload(payload) {
        Some(record) => Decoded::Record(record, FRAME_HEADER + payload_len),
        None => Decoded::Corrupt("checksum matches but the record does not parse".into()),
    }
}

/// Payload length declared by a frame header (to read the rest of it from a file).
pub fn declared_payload_len(header: &[u8; FRAME_HEADER]) -> usize {
    u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// A cursor over a payload; every read checks bounds.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, count: usize) -> Option<&[u8]> {
        if count > self.bytes.len() {
            return None;
        }
        let (head, tail) = self.bytes.split_at(count);
        self.bytes = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn string(&mut self) -> Option<String> {
        let len = self.u32()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

fn decode_payload(payload: &[u8]) -> Option<Record> {
    let mut reader = Reader { bytes: payload };
    let record = match reader.u8()? {
        PUBLISH => {
            let seq = reader.u64()?;
            let priority = reader.u8()?;
            let id = reader.string()?;
            let body = reader.string()?;
            Record::Publish(StoredEvent { seq, priority, id, body })
        }
        ACK => {
            let seq = reader.u64()?;
            Record::Ack { seq, subscriber: reader.string()? }
        }
        SUBSCRIBE => {
            let start = reader.u64()?;
            Record::Subscribe { start, subscriber: reader.string()? }
        }
        UNSUBSCRIBE => Record::Unsubscribe { subscriber: reader.string()? },
        CHECKPOINT => {
            let last_seq = reader.u64()?;
            let count = reader.u32()? as usize;
            let mut subscribers = Vec::with_capacity(count.min(1024));
            for _ in 0..count {
                let start = reader.u64()?;
                let acked_through = reader.u64()?;
                subscribers.push(CheckpointEntry { start, acked_through, subscriber: reader.string()? });
            }
            Record::Checkpoint { last_seq, subscribers }
        }
        _ => return None,
    };
    reader.bytes.is_empty().then_some(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<Record> {
        vec![
            Record::Publish(StoredEvent {
                seq: 7,
                priority: 9,
                id: "a1".into(),
                body: r#"{"id":"a1","priority":9,"msg":"héllo","ts":1}"#.into(),
            }),
            Record::Ack { subscriber: "worker".into(), seq: 7 },
            Record::Subscribe { subscriber: "worker".into(), start: 6 },
            Record::Unsubscribe { subscriber: "worker".into() },
            Record::Checkpoint {
                last_seq: 42,
                subscribers: vec![CheckpointEntry { subscriber: "w".into(), start: 3, acked_through: 10 }],
            },
        ]
    }

    #[test]
    fn every_record_round_trips() {
        let mut bytes = Vec::new();
        for record in samples() {
            encode(&record, &mut bytes);
        }
        let mut rest = &bytes[..];
        let mut decoded = Vec::new();
        while let Decoded::Record(record, used) = decode(rest) {
            decoded.push(record);
            rest = &rest[used..];
        }
        assert_eq!(decoded, samples());
        assert!(rest.is_empty());
    }

    #[test]
    fn a_cut_frame_is_incomplete_and_a_flipped_bit_is_corrupt() {
        let mut bytes = Vec::new();
        encode(&samples()[0], &mut bytes);
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), Decoded::Incomplete, "cut at {cut}");
        }
        for position in FRAME_HEADER..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[position] ^= 0x10;
            assert!(matches!(decode(&damaged), Decoded::Corrupt(_)), "flip at {position}");
        }
    }

    #[test]
    fn an_absurd_length_is_corrupt_not_a_huge_allocation() {
        let mut bytes = vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        bytes.extend_from_slice(&[1; 32]);
        assert!(matches!(decode(&bytes), Decoded::Corrupt(_)));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn publish_round_trips(seq in any::<u64>(), priority in 0u8..=9, id in ".{0,20}", body in ".{0,100}") {
            let record = Record::Publish(StoredEvent { seq, priority, id, body });
            let mut bytes = Vec::new();
            encode(&record, &mut bytes);
            prop_assert_eq!(decode(&bytes), Decoded::Record(record, bytes.len()));
        }
    }
}
