//! Reading bounded lines from a telnet-style client: shared by the broker and
//! the telnet command server.

use std::io;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// What reading one line gave.
#[derive(Debug, PartialEq, Eq)]
pub enum LineRead {
    /// A line (without `\n`) is in the buffer.
    Line,
    /// The line was longer than the limit and was skipped.
    TooLong,
    /// The connection closed.
    End,
}

/// Reads one `\n`-terminated line of at most `limit` bytes (a final line
/// without `\n` counts too); a longer line is consumed and reported, never
/// buffered whole. A `\r` before the `\n` stays in the line but does not
/// count toward the limit.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    limit: usize,
) -> io::Result<LineRead> {
    line.clear();
    let mut too_long = false;
    let mut any = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(match (any, too_long) {
                (false, _) => LineRead::End,
                (true, true) => LineRead::TooLong,
                (true, false) => LineRead::Line,
            });
        }
        any = true;
        let (chunk, used, complete) = match available.iter().position(|&b| b == b'\n') {
            Some(end) => (&available[..end], end + 1, true),
            None => (available, available.len(), false),
        };
        // A `\r` before the `\n` does not count toward the limit; one that
        // ends what has arrived so far may be that `\r`, its `\n` still to come.
        let last = chunk.last().or(line.last());
        let counted = line.len() + chunk.len() - usize::from(last == Some(&b'\r'));
        if !too_long && counted > limit {
            too_long = true;
            line.clear();
        }
        if !too_long {
            line.extend_from_slice(chunk);
        }
        reader.consume(used);
        if complete {
            return Ok(if too_long { LineRead::TooLong } else { LineRead::Line });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], limit: usize) -> Vec<(LineRead, Vec<u8>)> {
        // A tiny buffer splits lines across reads, as a slow client would.
        let mut reader = tokio::io::BufReader::with_capacity(3, input);
        let mut line = Vec::new();
        let mut read = Vec::new();
        loop {
            let outcome = read_line(&mut reader, &mut line, limit).await.unwrap();
            if outcome == LineRead::End {
                return read;
            }
            read.push((outcome, line.clone()));
        }
    }

    #[tokio::test]
    async fn reads_telnet_lines_skips_long_ones_and_keeps_a_final_partial_line() {
        let read = lines(b"sub a\r\n0123456789\nok\nlast", 5).await;
        assert_eq!(
            read,
            vec![
                (LineRead::Line, b"sub a\r".to_vec()),
                (LineRead::TooLong, Vec::new()),
                (LineRead::Line, b"ok".to_vec()),
                (LineRead::Line, b"last".to_vec()),
            ]
        );
        assert!(lines(b"", 5).await.is_empty());
    }
}
