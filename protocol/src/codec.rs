//! Frames and their encoding: a 4-byte big-endian length, then the bincode of one [`Msg`].
//!
//! The one framer of the protocol: handshake and messages alike go through
//! [`MessageCodec`]. This is the only file that names bincode, so the encoding can be
//! swapped here alone.

use bytes::{BufMut, BytesMut};
use tokio_util::codec::Decoder;

use crate::error::ProtocolError;
use crate::message::Msg;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ 1 << 30 }>()
}

/// Decodes with an allocation limit proportional to the payload: a length field inside a
/// small frame cannot make us allocate much. Integer lists claim up to 8 bytes per element
/// encoded in as little as one, hence the factor.
fn decode_limited(payload: &[u8]) -> Result<(Msg, usize), bincode::error::DecodeError> {
    use bincode::serde::decode_from_slice as d;
    let c = bincode::config::standard();
    match payload.len() {
        0..=4096 => d(payload, c.with_limit::<{ 32 << 10 }>()),
        4097..=262_144 => d(payload, c.with_limit::<{ 2 << 20 }>()),
        262_145..=8_388_608 => d(payload, c.with_limit::<{ 64 << 20 }>()),
        _ => d(payload, c.with_limit::<{ 512 << 20 }>()),
    }
}

/// Appends one frame holding `msg` to `dst`.
///
/// # Errors
/// When the message does not encode or its frame exceeds `max_frame`.
pub fn encode_frame(msg: &Msg, dst: &mut BytesMut, max_frame: usize) -> Result<(), ProtocolError> {
    let start = dst.len();
    dst.put_u32(0);
    let mut writer = dst.writer();
    let encoded = bincode::serde::encode_into_std_write(msg, &mut writer, config());
    let dst = writer.into_inner();
    let len = match encoded {
        Ok(len) => len,
        Err(e) => {
            dst.truncate(start);
            return Err(ProtocolError::Malformed(format!(
                "cannot encode {}: {e}",
                msg.name()
            )));
        }
    };
    if len > max_frame {
        dst.truncate(start);
        return Err(ProtocolError::FrameTooLarge {
            size: len,
            limit: max_frame,
        });
    }
    dst[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Decodes one frame's payload (without its length prefix).
///
/// # Errors
/// When the bytes are not exactly one message.
pub fn decode_payload(payload: &[u8]) -> Result<Msg, ProtocolError> {
    match decode_limited(payload) {
        Ok((msg, used)) if used == payload.len() => Ok(msg),
        Ok((msg, used)) => Err(ProtocolError::Malformed(format!(
            "{} trailing bytes after a {} message",
            payload.len() - used,
            msg.name()
        ))),
        Err(e) => Err(ProtocolError::Malformed(e.to_string())),
    }
}

/// A tokio-util codec from bytes to [`Msg`], with a maximum frame length.
#[derive(Debug)]
pub struct MessageCodec {
    max_frame: usize,
}

impl MessageCodec {
    /// A codec refusing frames over `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        MessageCodec { max_frame }
    }

    /// Changes the limit (after authentication).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }
}

impl Decoder for MessageCodec {
    type Item = Msg;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Msg>, ProtocolError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let size = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if size > self.max_frame {
            return Err(ProtocolError::FrameTooLarge {
                size,
                limit: self.max_frame,
            });
        }
        if src.len() < 4 + size {
            // Grow with what arrives rather than trusting the announced size up front, so
            // idle peers announcing big frames cannot make us reserve memory.
            src.reserve((4 + size - src.len()).min(1 << 20));
            return Ok(None);
        }
        let frame = src.split_to(4 + size);
        decode_payload(&frame[4..]).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::*;

    #[test]
    fn a_frame_round_trips() {
        let mut buf = BytesMut::new();
        encode_frame(&Msg::Heartbeat, &mut buf, 1024).unwrap();
        let mut codec = MessageCodec::new(1024);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Msg::Heartbeat));
        assert!(buf.is_empty());
    }

    #[test]
    fn a_huge_length_prefix_is_refused_before_any_allocation() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3][..]);
        let mut codec = MessageCodec::new(64 << 20);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn a_big_announced_frame_reserves_at_most_a_mebibyte_ahead() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&(32u32 << 20).to_be_bytes());
        buf.extend_from_slice(&[0; 100]);
        let mut codec = MessageCodec::new(64 << 20);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.capacity() <= 104 + (1 << 20), "{}", buf.capacity());
    }

    #[test]
    fn frames_arriving_in_pieces_decode_once_whole_and_in_order() {
        let mut wire = BytesMut::new();
        encode_frame(&Msg::Pause, &mut wire, 1024).unwrap();
        encode_frame(&Msg::Resume, &mut wire, 1024).unwrap();
        let mut codec = MessageCodec::new(1024);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in wire.iter() {
            buf.extend_from_slice(&[*byte]);
            while let Some(msg) = codec.decode(&mut buf).unwrap() {
                got.push(msg);
            }
        }
        assert_eq!(got, [Msg::Pause, Msg::Resume]);
    }

    #[test]
    fn the_limit_applies_to_encoding_and_can_be_raised() {
        let big = Msg::Error(crate::WireError::new(
            crate::ErrorKind::Internal,
            "x".repeat(2000),
        ));
        let mut buf = BytesMut::new();
        assert!(matches!(
            encode_frame(&big, &mut buf, 1024),
            Err(ProtocolError::FrameTooLarge { limit: 1024, .. })
        ));
        assert!(buf.is_empty(), "a refused frame leaves nothing behind");
        encode_frame(&big, &mut buf, 4096).unwrap();
        let mut codec = MessageCodec::new(1024);
        assert!(codec.decode(&mut buf.clone()).is_err());
        codec.set_max_frame(4096);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(big));
    }

    #[test]
    fn trailing_bytes_after_a_message_are_malformed() {
        let mut buf = BytesMut::new();
        encode_frame(&Msg::Reset, &mut buf, 1024).unwrap();
        let mut payload = buf[4..].to_vec();
        payload.push(0);
        assert!(matches!(
            decode_payload(&payload),
            Err(ProtocolError::Malformed(m)) if m.contains("trailing")
        ));
    }

    #[test]
    fn setup_round_trips_through_a_frame() {
        let msg = Msg::Setup(Box::new(Setup {
            session: crate::SessionId(7),
            chain: ChainSpec {
                name: "x".into(),
                version: "1".into(),
                modules: vec![serde_bytes::ByteBuf::from(vec![7u8; 152_586])],
                tasks: vec![],
                limits: Limits::default(),
            },
            send_failed_items: false,
        }));
        let mut buf = BytesMut::new();
        encode_frame(&msg, &mut buf, 64 << 20).unwrap();
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        assert_eq!(len + 4, buf.len());
        let mut codec = MessageCodec::new(64 << 20);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(msg));
    }

    #[test]
    fn lists_of_u32_travel_as_bytes_and_must_be_whole() {
        let outputs = |counts: Vec<u32>| {
            Msg::Outputs(Outputs {
                seq: 1,
                first: 0,
                counts: crate::U32s(counts),
                items: crate::Packed::new(),
                failures: vec![],
                continuations: vec![],
            })
        };
        let msg = outputs(vec![0, 1, u32::MAX]);
        let mut buf = BytesMut::new();
        encode_frame(&msg, &mut buf, 1024).unwrap();
        assert_eq!(decode_payload(&buf[4..]).unwrap(), msg);
        // The same message with a 3-byte list: not a whole number of u32s.
        let mut buf = BytesMut::new();
        encode_frame(&outputs(vec![]), &mut buf, 1024).unwrap();
        let mut payload = buf[4..].to_vec();
        let at = payload.len() - 3; // counts (empty: one length byte), items (2), failures (1)
        assert_eq!(payload[at - 1], 0, "the empty list's length");
        payload.splice(at - 1..at, [3, 1, 2, 3]);
        assert!(decode_payload(&payload).is_err());
    }
}
