//! The encoding of messages: a 4-byte big-endian length, then the bincode of one [`Msg`].
//!
//! This is the only file that names bincode, so the encoding can be swapped here alone
//! ([`crate::split`] frames big batches in parts through `encode_part` and `decode_part`;
//! [`crate::framing`] cuts frames out of the byte stream).

use bytes::{BufMut, BytesMut};

use crate::error::ProtocolError;
use crate::message::{ITEMS_VARIANT, Items, Msg};

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ 1 << 30 }>()
}

/// Decodes with an allocation limit proportional to the payload: a length field inside a
/// small frame cannot make us allocate much. Integer lists claim up to 8 bytes per element
/// encoded in as little as one, hence the factor.
fn decode_limited(payload: &[u8]) -> Result<(Msg, usize), bincode::error::DecodeError> {
    decode_bounded(payload, payload.len())
}

/// Decodes a `T` from the start of `bytes`, part of a frame of `frame` bytes (which sets the
/// allocation limit).
fn decode_bounded<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    frame: usize,
) -> Result<(T, usize), bincode::error::DecodeError> {
    use bincode::serde::decode_from_slice as d;
    let payload = bytes;
    let c = bincode::config::standard();
    match frame {
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
    encode_value_frame(msg, msg.name(), dst, max_frame)
}

/// Appends one frame holding `Msg::Items` of `items` to `dst`, without building the message
/// (its encoding is the variant's index, then the struct: [`ITEMS_VARIANT`]).
///
/// # Errors
/// As [`encode_frame`].
pub fn encode_items_frame(
    items: &Items,
    dst: &mut BytesMut,
    max_frame: usize,
) -> Result<(), ProtocolError> {
    encode_value_frame(&(ITEMS_VARIANT, items), "Items", dst, max_frame)
}

fn encode_value_frame<T: serde::Serialize>(
    value: &T,
    name: &str,
    dst: &mut BytesMut,
    max_frame: usize,
) -> Result<(), ProtocolError> {
    let start = dst.len();
    dst.put_u32(0);
    let mut writer = dst.writer();
    let encoded = bincode::serde::encode_into_std_write(value, &mut writer, config());
    let dst = writer.into_inner();
    let len = match encoded {
        Ok(len) => len,
        Err(e) => {
            dst.truncate(start);
            return Err(ProtocolError::Malformed(format!(
                "cannot encode {name}: {e}"
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

/// Appends the encoding of `value` (a part of a message) to `dst`.
///
/// # Errors
/// When it does not encode.
pub(crate) fn encode_part<T: serde::Serialize>(
    value: &T,
    dst: &mut BytesMut,
) -> Result<(), ProtocolError> {
    let mut writer = dst.writer();
    bincode::serde::encode_into_std_write(value, &mut writer, config())
        .map(|_| ())
        .map_err(|e| ProtocolError::Malformed(format!("cannot encode a message part: {e}")))
}

/// Decodes a `T` (a part of a message) from the start of `bytes`, within a frame of
/// `frame` bytes; the value and the bytes it took.
///
/// # Errors
/// When the bytes do not start with one.
pub(crate) fn decode_part<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    frame: usize,
) -> Result<(T, usize), ProtocolError> {
    decode_bounded(bytes, frame).map_err(|e| ProtocolError::Malformed(e.to_string()))
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
