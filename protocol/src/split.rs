//! Frames of big batches in three parts — the message's head, the batch's bytes, its tail —
//! so the bytes of items are never copied to be framed: a sender writes them from where
//! they lie (vectored writes), a receiver keeps them as a slice of the frame it read.
//!
//! The bytes on the wire are exactly those of the whole-message encoding ([`crate::codec`]):
//! bincode writes a struct as its fields in order and a byte string as a varint length then
//! the bytes, so `Items`, `Outputs` and `Partial` cut at their batch's bytes are the
//! encodings of the fields before and after. The tests hold both encodings to each other.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;

use crate::codec::{decode_part, encode_part};
use crate::error::ProtocolError;
use crate::message::{Continuation, Failure, Items, Msg, Outputs, Partial};
use crate::packed::{Data, Gaps, Packed, U32s};
use crate::{Ids, TaskIndex};

pub use crate::packed::SPLIT_BYTES;

use crate::message::{
    ITEMS_VARIANT as ITEMS, OUTPUTS_VARIANT as OUTPUTS, PARTIAL_VARIANT as PARTIAL,
};

/// An encoded frame, length prefix included: `head`, then `data`, then `tail` (the last two
/// empty for a frame in one piece).
#[derive(Clone, Debug, Default)]
pub struct Frame {
    /// The length prefix and the message up to its batch's bytes (or the whole frame).
    pub head: Bytes,
    /// The batch's bytes, shared with whoever keeps the batch.
    pub data: Bytes,
    /// The rest of the message.
    pub tail: Bytes,
}

impl Frame {
    /// A frame in one piece.
    pub fn whole(bytes: Bytes) -> Frame {
        Frame {
            head: bytes,
            ..Frame::default()
        }
    }

    /// Bytes of the frame, prefix included.
    pub fn len(&self) -> usize {
        self.head.len() + self.data.len() + self.tail.len()
    }

    /// Whether the frame is empty (never, for an encoded one).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The batch of a message that carries one.
fn batch_of(msg: &mut Msg) -> Option<&mut Packed> {
    match msg {
        Msg::Items(i) => Some(&mut i.items),
        Msg::Outputs(o) => Some(&mut o.items),
        Msg::Partial(p) => Some(&mut p.items),
        _ => None,
    }
}

/// Encodes `msg` in parts when it carries a batch of at least [`SPLIT_BYTES`]: the batch's
/// bytes become shared (no copy) and stay in `msg`. `Ok(None)` for any other message.
///
/// # Errors
/// When the message does not encode or its frame would exceed `max_frame`.
pub fn encode_split(msg: &mut Msg, max_frame: usize) -> Result<Option<Frame>, ProtocolError> {
    if batch_of(msg).is_none_or(|b| b.bytes() < SPLIT_BYTES) {
        return Ok(None);
    }
    let mut head = BytesMut::with_capacity(256);
    head.put_u32(0);
    let mut tail = BytesMut::new();
    let data = match msg {
        Msg::Items(i) => items_parts(i, &mut head, &mut tail)?,
        Msg::Outputs(o) => {
            encode_part(
                &(OUTPUTS, o.seq, o.first, &o.counts, &o.items.lens),
                &mut head,
            )?;
            encode_part(&(&o.items.gaps, &o.failures, &o.continuations), &mut tail)?;
            o.items.data.share()
        }
        Msg::Partial(p) => {
            encode_part(&(PARTIAL, p.seq, p.index, &p.items.lens), &mut head)?;
            encode_part(&p.items.gaps, &mut tail)?;
            p.items.data.share()
        }
        _ => return Ok(None),
    };
    assemble(head, data, tail, max_frame).map(Some)
}

/// A batch of items as one frame: in parts when it is big (its bytes become shared and stay
/// in `items`), else whole in `buf` (which keeps its allocation for the next).
///
/// # Errors
/// When it does not encode or its frame would exceed `max_frame`.
pub fn encode_items(
    items: &mut Items,
    buf: &mut BytesMut,
    max_frame: usize,
) -> Result<Frame, ProtocolError> {
    if items.items.bytes() < SPLIT_BYTES {
        buf.clear();
        crate::codec::encode_items_frame(items, buf, max_frame)?;
        return Ok(Frame::whole(buf.split().freeze()));
    }
    let mut head = BytesMut::with_capacity(256);
    head.put_u32(0);
    let mut tail = BytesMut::new();
    let data = items_parts(items, &mut head, &mut tail)?;
    assemble(head, data, tail, max_frame)
}

/// An [`Items`]' parts: its head and tail encoded, its bytes (shared) returned.
fn items_parts(
    i: &mut Items,
    head: &mut BytesMut,
    tail: &mut BytesMut,
) -> Result<Bytes, ProtocolError> {
    encode_part(&(ITEMS, i.seq, &i.ids, &i.items.lens), head)?;
    encode_part(&(&i.items.gaps, i.stage), tail)?;
    Ok(i.items.data.share())
}

/// The frame of an encoded head, the batch's bytes and the encoded tail.
fn assemble(
    mut head: BytesMut,
    data: Bytes,
    tail: BytesMut,
    max_frame: usize,
) -> Result<Frame, ProtocolError> {
    encode_part(&(data.len() as u64), &mut head)?;
    let len = head.len() - 4 + data.len() + tail.len();
    if len > max_frame {
        return Err(ProtocolError::FrameTooLarge {
            size: len,
            limit: max_frame,
        });
    }
    head[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(Frame {
        head: head.freeze(),
        data,
        tail: tail.freeze(),
    })
}

/// The tail of an [`Outputs`], decoded with the same bounds as the whole message.
#[derive(Deserialize)]
struct OutputsTail {
    gaps: Gaps,
    #[serde(deserialize_with = "crate::message::bounded::seq")]
    failures: Vec<Failure>,
    #[serde(deserialize_with = "crate::message::bounded::seq")]
    continuations: Vec<Continuation>,
}

/// Reads the byte string at `at`: its bytes as a slice of `payload`, and where it ends.
fn data_at(payload: &Bytes, at: usize) -> Result<(Bytes, usize), ProtocolError> {
    let (len, used): (u64, usize) = decode_part(&payload[at..], payload.len())?;
    let start = at + used;
    let end = usize::try_from(len)
        .ok()
        .and_then(|l| start.checked_add(l))
        .filter(|&e| e <= payload.len())
        .ok_or_else(|| {
            ProtocolError::Malformed(format!(
                "a batch of {len} bytes in a {}-byte frame",
                payload.len()
            ))
        })?;
    Ok((payload.slice(start..end), end))
}

/// Decodes a frame's payload that carries a batch of at least [`SPLIT_BYTES`], keeping the
/// batch's bytes as a slice of it; `None` for any other payload (decode it whole).
pub fn decode_split(payload: &Bytes) -> Option<Result<Msg, ProtocolError>> {
    if payload.len() < SPLIT_BYTES
        || !matches!(payload.first(), Some(&b) if [ITEMS, OUTPUTS, PARTIAL].contains(&u32::from(b)))
    {
        return None;
    }
    Some(decode_split_inner(payload))
}

fn decode_split_inner(payload: &Bytes) -> Result<Msg, ProtocolError> {
    let all = payload.len();
    let (msg, end) = match u32::from(payload[0]) {
        ITEMS => {
            let ((seq, ids, lens), used): ((u64, Ids, U32s), usize) =
                decode_part(&payload[1..], all)?;
            let (data, at) = data_at(payload, 1 + used)?;
            let ((gaps, stage), used): ((Gaps, TaskIndex), usize) =
                decode_part(&payload[at..], all)?;
            let items = Packed {
                lens,
                data: Data::Shared(data),
                gaps,
            };
            (
                Msg::Items(Items {
                    seq,
                    ids,
                    items,
                    stage,
                }),
                at + used,
            )
        }
        OUTPUTS => {
            let ((seq, first, counts, lens), used): ((u64, u32, U32s, U32s), usize) =
                decode_part(&payload[1..], all)?;
            let (data, at) = data_at(payload, 1 + used)?;
            let (tail, used): (OutputsTail, usize) = decode_part(&payload[at..], all)?;
            (
                Msg::Outputs(Outputs {
                    seq,
                    first,
                    counts,
                    items: Packed {
                        lens,
                        data: Data::Shared(data),
                        gaps: tail.gaps,
                    },
                    failures: tail.failures,
                    continuations: tail.continuations,
                }),
                at + used,
            )
        }
        _ => {
            let ((seq, index, lens), used): ((u64, u32, U32s), usize) =
                decode_part(&payload[1..], all)?;
            let (data, at) = data_at(payload, 1 + used)?;
            let (gaps, used): (Gaps, usize) = decode_part(&payload[at..], all)?;
            (
                Msg::Partial(Partial {
                    seq,
                    index,
                    items: Packed {
                        lens,
                        data: Data::Shared(data),
                        gaps,
                    },
                }),
                at + used,
            )
        }
    };
    if end != all {
        return Err(ProtocolError::Malformed(format!(
            "{} trailing bytes after a {} message",
            all - end,
            msg.name()
        )));
    }
    Ok(msg)
}

#[cfg(test)]
mod items_tests {
    use super::*;
    use crate::codec::encode_frame;

    #[test]
    fn a_batch_encodes_as_its_message_does_whole_or_in_parts() {
        for size in [10, SPLIT_BYTES + 1] {
            let mut packed = Packed::default();
            packed.push(&vec![7; size]);
            packed.push(b"b");
            let items = Items {
                seq: 3,
                ids: crate::message::Ids::Range { start: 5, count: 2 },
                items: packed,
                stage: crate::TaskIndex(1),
            };
            let mut whole = BytesMut::new();
            encode_frame(&Msg::Items(items.clone()), &mut whole, 64 << 20).unwrap();
            let mut copy = items.clone();
            let frame = encode_items(&mut copy, &mut BytesMut::new(), 64 << 20).unwrap();
            let bytes: Vec<u8> = [&frame.head[..], &frame.data[..], &frame.tail[..]].concat();
            assert_eq!(bytes, whole.to_vec(), "size {size}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_payload, encode_frame};
    use crate::message::FailedTask;

    fn packed(n: usize, len: usize, salt: u8) -> Packed {
        (0..n)
            .map(|i| vec![salt.wrapping_add(i as u8); len + i % 3])
            .collect()
    }

    /// Items of `len` bytes each followed by `\n`, shared as they lie (a file's lines).
    fn lines(n: usize, len: usize) -> Packed {
        let mut data = Vec::new();
        for i in 0..n {
            data.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, len));
            data.push(b'\n');
        }
        Packed {
            lens: U32s(vec![len as u32; n]),
            data: Data::Shared(Bytes::from(data)),
            gaps: Gaps(vec![1; n]),
        }
    }

    fn messages() -> Vec<Msg> {
        vec![
            Msg::Items(Items {
                seq: 300,
                ids: Ids::Range {
                    start: 1 << 40,
                    count: 40,
                },
                items: packed(40, 2000, 1),
                stage: TaskIndex(3),
            }),
            Msg::Items(Items {
                seq: 1,
                ids: Ids::List(vec![5, 70_000]),
                items: packed(2, 100_000, 2),
                stage: TaskIndex(0),
            }),
            Msg::Items(Items {
                seq: 2,
                ids: Ids::Range { start: 0, count: 3 },
                items: lines(3, 30_000),
                stage: TaskIndex(0),
            }),
            Msg::Outputs(Outputs {
                seq: 7,
                first: 9,
                counts: U32s(vec![1, 0, 2]),
                items: packed(3, 40_000, 3),
                failures: vec![Failure {
                    index: 10,
                    task: Some(FailedTask {
                        index: TaskIndex(1),
                        name: "f".into(),
                    }),
                    item_start: b"abc".to_vec(),
                    item: Some(vec![9; 300]),
                    message: "boom".into(),
                }],
                continuations: vec![Continuation {
                    index: 11,
                    stage: TaskIndex(2),
                    items: packed(2, 10, 4),
                }],
            }),
            Msg::Partial(Partial {
                seq: 8,
                index: 250,
                items: packed(1, 70_000, 5),
            }),
        ]
    }

    fn joined(f: &Frame) -> Vec<u8> {
        [&f.head[..], &f.data[..], &f.tail[..]].concat()
    }

    #[test]
    fn parts_are_the_whole_encoding_cut_at_the_batch() {
        for msg in messages() {
            let mut whole = BytesMut::new();
            encode_frame(&msg, &mut whole, 64 << 20).unwrap();
            let mut m = msg.clone();
            let f = encode_split(&mut m, 64 << 20).unwrap().expect("split");
            assert_eq!(joined(&f), whole[..], "{}", msg.name());
            assert_eq!(m, msg, "the message keeps its batch");
            assert!(matches!(batch_of(&mut m).unwrap().data, Data::Shared(_)));
        }
    }

    #[test]
    fn split_decoding_gives_the_same_message_without_copying_the_batch() {
        for msg in messages() {
            let mut whole = BytesMut::new();
            encode_frame(&msg, &mut whole, 64 << 20).unwrap();
            let payload = Bytes::copy_from_slice(&whole[4..]);
            let mut got = decode_split(&payload).expect("a batch").unwrap();
            assert_eq!(got, decode_payload(&payload).unwrap());
            assert_eq!(got, msg);
            let data = &batch_of(&mut got).unwrap().data;
            let inside = payload.as_ptr_range().contains(&data.as_ptr());
            assert!(inside, "the batch is a slice of the frame");
        }
    }

    #[test]
    fn small_batches_and_other_messages_are_not_split() {
        let mut small = Msg::Partial(Partial {
            seq: 1,
            index: 0,
            items: packed(2, 10, 0),
        });
        assert!(encode_split(&mut small, 1 << 20).unwrap().is_none());
        assert!(
            encode_split(&mut Msg::Heartbeat, 1 << 20)
                .unwrap()
                .is_none()
        );
        let mut buf = BytesMut::new();
        encode_frame(&small, &mut buf, 1 << 20).unwrap();
        assert!(decode_split(&Bytes::copy_from_slice(&buf[4..])).is_none());
    }

    #[test]
    fn a_split_frame_over_the_limit_is_refused() {
        let mut msg = messages().remove(1);
        assert!(matches!(
            encode_split(&mut msg, 150_000),
            Err(ProtocolError::FrameTooLarge { limit: 150_000, .. })
        ));
    }

    #[test]
    fn truncated_or_lying_frames_are_errors_not_panics() {
        for msg in messages() {
            let mut whole = BytesMut::new();
            encode_frame(&msg, &mut whole, 64 << 20).unwrap();
            let payload = Bytes::copy_from_slice(&whole[4..]);
            // Cut anywhere past the threshold: always an error.
            for cut in [SPLIT_BYTES, payload.len() - 1, payload.len() - 5] {
                let short = payload.slice(..cut.min(payload.len() - 1));
                if let Some(r) = decode_split(&short) {
                    assert!(r.is_err(), "{} cut at {cut}", msg.name());
                }
            }
            // A trailing byte.
            let mut long = payload.to_vec();
            long.push(0);
            assert!(decode_split(&Bytes::from(long)).unwrap().is_err());
        }
        // Any byte of the head changed, to any of a few values: an error or a message,
        // never a panic.
        for msg in messages() {
            let mut whole = BytesMut::new();
            encode_frame(&msg, &mut whole, 64 << 20).unwrap();
            for at in 4..100.min(whole.len()) {
                for x in [0x01, 0x80, 0xfb, 0xff] {
                    let mut bad = whole[4..].to_vec();
                    bad[at - 4] ^= x;
                    let _ = decode_split(&Bytes::from(bad));
                }
            }
        }
        // A batch length far past the frame.
        let mut lying = vec![PARTIAL as u8, 1, 0, 0, 253];
        lying.extend_from_slice(&u64::MAX.to_le_bytes());
        lying.resize(SPLIT_BYTES + 10, 0);
        assert!(decode_split(&Bytes::from(lying)).unwrap().is_err());
    }
}
