//! `LineCodec`: the log server's framing. One newline-terminated line is one record; memory per
//! connection stays bounded whatever a client sends.

use bytes::{Buf, BytesMut};
use memchr::memchr;
use tokio_util::codec::Decoder;

/// One decoded line: its text (invalid UTF-8 replaced) and how many bytes were cut off it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The line without its `\n` (and without a `\r` right before it).
    pub text: String,
    /// Bytes dropped from the end because the line was longer than the limit; 0 if none.
    pub truncated: usize,
}

/// Splits a byte stream into [`Line`]s of at most `max_line` bytes.
///
/// An over-long line keeps its first `max_line` bytes; the rest up to the next newline is
/// counted and discarded as it arrives, so a client that never sends a newline costs at most
/// `max_line` bytes of buffer plus one read.
#[derive(Debug)]
pub struct LineCodec {
    max_line: usize,
    /// How much of the buffer is already known to hold no newline, so that a line arriving in
    /// many small reads is not rescanned from its start each time.
    searched: usize,
    overlong: Option<Overlong>,
}

/// An over-long line whose newline has not arrived yet.
#[derive(Debug)]
struct Overlong {
    head: BytesMut,
    discarded: usize,
    /// A `\r` right before the newline is not part of the line, so it must not count as cut.
    last_was_cr: bool,
}

impl Overlong {
    fn finish(self) -> Line {
        let discarded = self.discarded.saturating_sub(usize::from(self.last_was_cr));
        let (text, cut) = text_at_char_boundary(&self.head);
        Line {
            text,
            truncated: discarded + cut,
        }
    }
}

impl LineCodec {
    /// A codec that cuts lines longer than `max_line` bytes (at least 1).
    pub fn new(max_line: usize) -> Self {
        LineCodec {
            max_line: max_line.max(1),
            searched: 0,
            overlong: None,
        }
    }

    /// The current line limit in bytes.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Changes the limit for the lines that follow, e.g. after a handshake read under a smaller one.
    pub fn set_max_line(&mut self, max_line: usize) {
        self.max_line = max_line.max(1);
    }

    /// Whether a line has started and is not complete yet.
    pub fn has_partial(&self, buf: &BytesMut) -> bool {
        self.overlong.is_some() || !buf.is_empty()
    }

    fn discard(&mut self, buf: &mut BytesMut) -> Option<Line> {
        let overlong = self.overlong.as_mut()?;
        match memchr(b'\n', buf) {
            Some(i) => {
                if i > 0 {
                    overlong.last_was_cr = buf[i - 1] == b'\r';
                }
                overlong.discarded += i;
                buf.advance(i + 1);
                self.overlong.take().map(Overlong::finish)
            }
            None => {
                if let Some(&last) = buf.last() {
                    overlong.last_was_cr = last == b'\r';
                }
                overlong.discarded += buf.len();
                buf.clear();
                None
            }
        }
    }
}

impl Decoder for LineCodec {
    type Item = Line;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Line>, std::io::Error> {
        if self.overlong.is_some() {
            return Ok(self.discard(buf));
        }
        let from = self.searched.min(buf.len());
        match memchr(b'\n', &buf[from..]) {
            Some(i) => {
                self.searched = 0;
                let mut raw = buf.split_to(from + i + 1);
                raw.truncate(raw.len() - 1);
                if raw.last() == Some(&b'\r') {
                    raw.truncate(raw.len() - 1);
                }
                Ok(Some(self.cut(raw)))
            }
            // One byte of slack: a line of exactly `max_line` bytes may still end in "\r\n".
            None if buf.len() > self.max_line + 1 => {
                self.searched = 0;
                let head = buf.split_to(self.max_line);
                self.overlong = Some(Overlong {
                    head,
                    discarded: 0,
                    last_was_cr: false,
                });
                Ok(self.discard(buf))
            }
            None => {
                self.searched = buf.len();
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Line>, std::io::Error> {
        if let Some(line) = self.decode(buf)? {
            return Ok(Some(line));
        }
        if let Some(overlong) = self.overlong.take() {
            return Ok(Some(overlong.finish()));
        }
        if buf.is_empty() {
            return Ok(None);
        }
        self.searched = 0;
        let mut raw = buf.split();
        if raw.last() == Some(&b'\r') {
            raw.truncate(raw.len() - 1);
        }
        Ok(Some(self.cut(raw)))
    }
}

impl LineCodec {
    /// A complete line, cut to the limit if it arrived whole in one read.
    fn cut(&self, mut raw: BytesMut) -> Line {
        let mut truncated = 0;
        if raw.len() > self.max_line {
            truncated = raw.len() - self.max_line;
            raw.truncate(self.max_line);
        }
        if truncated == 0 {
            return Line {
                text: String::from_utf8_lossy(&raw).into_owned(),
                truncated: 0,
            };
        }
        let (text, cut) = text_at_char_boundary(&raw);
        Line {
            text,
            truncated: truncated + cut,
        }
    }
}

/// The text of a cut line, without a UTF-8 sequence that the cut split in two (which would
/// otherwise show as a replacement character); returns how many bytes that dropped.
fn text_at_char_boundary(raw: &[u8]) -> (String, usize) {
    let mut end = raw.len();
    // A sequence is at most 4 bytes: look back at most 3 for the lead byte of the last one.
    for back in 1..=3.min(raw.len()) {
        let b = raw[raw.len() - back];
        if b & 0xC0 == 0x80 {
            continue;
        }
        let want = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        if want > back {
            end = raw.len() - back;
        }
        break;
    }
    (
        String::from_utf8_lossy(&raw[..end]).into_owned(),
        raw.len() - end,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(codec: &mut LineCodec, buf: &mut BytesMut, bytes: &[u8]) -> Vec<Line> {
        buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(line) = codec.decode(buf).expect("decode") {
            out.push(line);
        }
        out
    }

    fn eof(codec: &mut LineCodec, buf: &mut BytesMut) -> Vec<Line> {
        let mut out = Vec::new();
        while let Some(line) = codec.decode_eof(buf).expect("decode_eof") {
            out.push(line);
        }
        out
    }

    fn line(text: &str) -> Line {
        Line {
            text: text.to_owned(),
            truncated: 0,
        }
    }

    #[test]
    fn splits_lines_and_keeps_empty_ones() {
        let mut c = LineCodec::new(100);
        let mut b = BytesMut::new();
        let got = feed(&mut c, &mut b, b"one\ntwo\n\nthree\n");
        assert_eq!(got, vec![line("one"), line("two"), line(""), line("three")]);
        assert!(eof(&mut c, &mut b).is_empty());
    }

    #[test]
    fn a_line_split_across_writes_is_one_record() {
        let mut c = LineCodec::new(100);
        let mut b = BytesMut::new();
        assert!(feed(&mut c, &mut b, b"hel").is_empty());
        assert!(feed(&mut c, &mut b, b"lo wo").is_empty());
        assert_eq!(
            feed(&mut c, &mut b, b"rld\nnext"),
            vec![line("hello world")]
        );
        assert_eq!(feed(&mut c, &mut b, b" one\n"), vec![line("next one")]);
    }

    #[test]
    fn crlf_is_stripped_but_a_lone_cr_inside_is_kept() {
        let mut c = LineCodec::new(100);
        let mut b = BytesMut::new();
        let got = feed(&mut c, &mut b, b"dos\r\na\rb\n\r\n");
        assert_eq!(got, vec![line("dos"), line("a\rb"), line("")]);
        // "\r" and "\n" in separate reads.
        assert!(feed(&mut c, &mut b, b"split\r").is_empty());
        assert_eq!(feed(&mut c, &mut b, b"\n"), vec![line("split")]);
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let mut c = LineCodec::new(100);
        let mut b = BytesMut::new();
        let got = feed(&mut c, &mut b, b"bad \xff\xfe byte\n");
        assert_eq!(got, vec![line("bad \u{fffd}\u{fffd} byte")]);
    }

    #[test]
    fn partial_last_line_is_kept_at_eof() {
        let mut c = LineCodec::new(100);
        let mut b = BytesMut::new();
        assert_eq!(feed(&mut c, &mut b, b"full\npart"), vec![line("full")]);
        assert!(c.has_partial(&b));
        assert_eq!(eof(&mut c, &mut b), vec![line("part")]);
        assert!(!c.has_partial(&b));
    }

    #[test]
    fn long_line_is_truncated_once_and_the_rest_discarded() {
        let mut c = LineCodec::new(8);
        let mut b = BytesMut::new();
        assert!(feed(&mut c, &mut b, b"0123456789").is_empty());
        // The buffer does not keep what was discarded.
        assert!(b.is_empty());
        assert!(feed(&mut c, &mut b, b"abcdef").is_empty());
        let got = feed(&mut c, &mut b, b"gh\r\nafter\n");
        assert_eq!(
            got,
            vec![
                Line {
                    text: "01234567".into(),
                    truncated: 10
                },
                line("after")
            ]
        );
    }

    #[test]
    fn long_line_arriving_whole_is_truncated() {
        let mut c = LineCodec::new(4);
        let mut b = BytesMut::new();
        // No slack issue: the newline is already there.
        let got = feed(&mut c, &mut b, b"abcdefg\nok\n");
        assert_eq!(
            got,
            vec![
                Line {
                    text: "abcd".into(),
                    truncated: 3
                },
                line("ok")
            ]
        );
    }

    #[test]
    fn line_of_exactly_max_with_crlf_is_not_truncated() {
        let mut c = LineCodec::new(4);
        let mut b = BytesMut::new();
        assert!(feed(&mut c, &mut b, b"abcd\r").is_empty());
        assert_eq!(feed(&mut c, &mut b, b"\n"), vec![line("abcd")]);
        assert!(feed(&mut c, &mut b, b"abcde\r").is_empty());
        assert_eq!(
            feed(&mut c, &mut b, b"\n"),
            vec![Line {
                text: "abcd".into(),
                truncated: 1
            }]
        );
    }

    #[test]
    fn truncated_line_at_eof_is_kept() {
        let mut c = LineCodec::new(4);
        let mut b = BytesMut::new();
        assert!(feed(&mut c, &mut b, b"abcdefgh").is_empty());
        assert_eq!(
            eof(&mut c, &mut b),
            vec![Line {
                text: "abcd".into(),
                truncated: 4
            }]
        );
    }

    #[test]
    fn cut_does_not_split_a_utf8_sequence() {
        let mut c = LineCodec::new(5);
        let mut b = BytesMut::new();
        // "abcd" then "é" (2 bytes): a cut at 5 would split "é".
        let got = feed(&mut c, &mut b, "abcdéz\n".as_bytes());
        assert_eq!(
            got,
            vec![Line {
                text: "abcd".into(),
                truncated: 3
            }]
        );
    }

    #[test]
    fn memory_stays_bounded_without_newlines() {
        let mut c = LineCodec::new(16);
        let mut b = BytesMut::new();
        for _ in 0..1000 {
            assert!(feed(&mut c, &mut b, &[b'x'; 100]).is_empty());
            assert!(b.len() <= 17);
        }
        let got = feed(&mut c, &mut b, b"\n");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].truncated, 100_000 - 16);
    }
}
