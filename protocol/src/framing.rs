//! [`MessageCodec`]: the one framer of the protocol, which cuts frames out of the byte
//! stream (handshake and messages alike) and decodes them, big batches through
//! [`crate::split`]; and the [`FramePool`] that bounds, across connections, the bytes held in
//! partly read frames.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::codec::decode_payload;
use crate::error::ProtocolError;
use crate::message::Msg;

/// Bytes of a partly read frame a connection holds without charging a [`FrameBudget`].
pub const FREE_PARTIAL: usize = 64 << 10;

/// A bound shared by many connections on the bytes they hold in partly read frames (past
/// [`FREE_PARTIAL`] each), so peers that announce big frames and send them cannot together
/// take more than `limit`, whatever their number.
#[derive(Clone, Debug)]
pub struct FramePool {
    held: Arc<AtomicUsize>,
    limit: usize,
}

impl FramePool {
    /// A pool of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        FramePool {
            held: Arc::default(),
            limit,
        }
    }

    /// Bytes charged now, all connections together.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

/// One connection's account with a [`FramePool`]; gives back what it holds when dropped.
#[derive(Debug)]
pub struct FrameBudget {
    pool: FramePool,
    charged: usize,
}

impl FrameBudget {
    /// An account with `pool`, holding nothing.
    pub fn new(pool: &FramePool) -> Self {
        FrameBudget {
            pool: pool.clone(),
            charged: 0,
        }
    }

    /// Holds `bytes` in all (past the free part), charging or returning the difference.
    fn hold(&mut self, bytes: usize) -> Result<(), ProtocolError> {
        let want = bytes.saturating_sub(FREE_PARTIAL);
        if want > self.charged {
            let more = want - self.charged;
            let before = self.pool.held.fetch_add(more, Ordering::Relaxed);
            if before.saturating_add(more) > self.pool.limit {
                self.pool.held.fetch_sub(more, Ordering::Relaxed);
                return Err(ProtocolError::FrameBudget {
                    limit: self.pool.limit,
                });
            }
        } else {
            self.pool
                .held
                .fetch_sub(self.charged - want, Ordering::Relaxed);
        }
        self.charged = want;
        Ok(())
    }
}

impl Drop for FrameBudget {
    fn drop(&mut self) {
        self.pool.held.fetch_sub(self.charged, Ordering::Relaxed);
    }
}

/// A tokio-util codec from bytes to [`Msg`], with a maximum frame length and, for peers not
/// yet trusted, a share of a node-wide [`FramePool`].
#[derive(Debug)]
pub struct MessageCodec {
    max_frame: usize,
    budget: Option<FrameBudget>,
    /// Bytes of the last whole frame this peer sent: a trusted peer's next frame may be
    /// given that much room at once (bytes it did send), so frames of a steady size are read
    /// into one buffer rather than one grown (and copied) several times.
    last_frame: usize,
}

impl MessageCodec {
    /// A codec refusing frames over `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        MessageCodec {
            max_frame,
            budget: None,
            last_frame: 0,
        }
    }

    /// Charges partly read frames to `budget` from now on (`None`: no longer).
    pub fn set_budget(&mut self, budget: Option<FrameBudget>) {
        self.budget = budget;
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
            if let Some(b) = &mut self.budget {
                b.hold(src.len())?;
            }
            // Grow with what arrives (to at most four times what was received, from 64 KiB,
            // or, once trusted, to the size of the peer's last frame) rather than trusting
            // the announced size, so peers announcing big frames and sending little cannot
            // make us reserve memory. Four, not two: every growth copies what arrived so
            // far, and big frames are the common case of big items.
            let sent = if self.budget.is_none() {
                self.last_frame
            } else {
                0
            };
            src.reserve((4 + size - src.len()).min((3 * src.len()).max(64 << 10).max(sent)));
            return Ok(None);
        }
        self.last_frame = 4 + size;
        let mut frame = src.split_to(4 + size);
        if let Some(b) = &mut self.budget {
            b.hold(0)?;
        }
        if size >= crate::split::SPLIT_BYTES {
            let payload = frame.split_off(4).freeze();
            if let Some(msg) = crate::split::decode_split(&payload) {
                return msg.map(Some);
            }
            return decode_payload(&payload).map(Some);
        }
        decode_payload(&frame[4..]).map(Some)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn partly_read_frames_of_many_connections_share_one_bound() {
        let pool = FramePool::new(100 << 10);
        let mut a = MessageCodec::new(64 << 20);
        let mut b = MessageCodec::new(64 << 20);
        a.set_budget(Some(FrameBudget::new(&pool)));
        b.set_budget(Some(FrameBudget::new(&pool)));
        let mut partial = BytesMut::from(&(60u32 << 20).to_be_bytes()[..]);
        partial.extend_from_slice(&[0; 120 << 10]);
        assert_eq!(a.decode(&mut partial.clone()).unwrap(), None);
        assert_eq!(pool.held(), 4 + (120 << 10) - FREE_PARTIAL);
        // b cannot hold as much again: the pool is shared.
        assert!(matches!(
            b.decode(&mut partial.clone()),
            Err(ProtocolError::FrameBudget { .. })
        ));
        assert_eq!(pool.held(), 4 + (120 << 10) - FREE_PARTIAL);
        drop(a);
        assert_eq!(pool.held(), 0);
        assert_eq!(b.decode(&mut partial).unwrap(), None);
        b.set_budget(None);
        assert_eq!(pool.held(), 0);
    }

    use super::*;
    use crate::codec::*;
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
    fn a_big_announced_frame_reserves_with_what_arrived_not_what_was_announced() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&(32u32 << 20).to_be_bytes());
        buf.extend_from_slice(&[0; 100]);
        let mut codec = MessageCodec::new(64 << 20);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.capacity() <= 104 + (64 << 10), "{}", buf.capacity());
        // With a mebibyte received, at most three more ahead.
        buf.extend_from_slice(&vec![0; 1 << 20]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(
            buf.capacity() <= 4 * buf.len() + (64 << 10),
            "{}",
            buf.capacity()
        );
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
            tagged_items: false,
            withheld: Vec::new(),
            rtt_us: 0,
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
        // counts (empty: one length byte), items (lengths, bytes, gaps: 3), failures (1)
        let at = payload.len() - 4;
        assert_eq!(payload[at - 1], 0, "the empty list's length");
        payload.splice(at - 1..at, [3, 1, 2, 3]);
        assert!(decode_payload(&payload).is_err());
    }
}
