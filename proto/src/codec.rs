//! Frames and the bincode configuration: the byte-level wire format.
//!
//! A frame is a `u32` little-endian payload length followed by the payload: one message
//! encoded with bincode 2 through serde, configured as little endian, variable-length integers
//! (bincode's varint: values below 251 take one byte) and a decode limit equal to the frame
//! limit of the direction (no length inside a payload can claim more than the frame holds).

use crate::error::{ProtoError, VIOLATION_PREFIX};
use crate::message::{Reply, Request};
use crate::{MAX_REPLY_FRAME, MAX_REQUEST_FRAME};
use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use bincode::error::DecodeError;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Bytes of the length prefix in front of every frame.
pub(crate) const PREFIX_LEN: usize = 4;

/// The fixed wire configuration with a decode limit of `N` bytes.
fn config<const N: usize>() -> Configuration<LittleEndian, Varint, Limit<N>> {
    bincode::config::standard()
        .with_little_endian()
        .with_variable_int_encoding()
        .with_limit::<N>()
}

/// Encodes `msg` as a complete frame, refusing a payload above `max` (a bug on this side:
/// the peer would refuse it).
pub(crate) fn encode_frame<T: Serialize, const N: usize>(
    msg: &T,
    max: u32,
) -> Result<Vec<u8>, ProtoError> {
    let mut frame = vec![0u8; PREFIX_LEN];
    bincode::serde::encode_into_std_write(msg, &mut frame, config::<N>())
        .map_err(|e| ProtoError::Encode(e.to_string()))?;
    let len = frame.len() - PREFIX_LEN;
    let len = u32::try_from(len)
        .ok()
        .filter(|&len| len <= max)
        .ok_or_else(|| ProtoError::Encode(format!("{len}-byte payload exceeds {max}")))?;
    frame[..PREFIX_LEN].copy_from_slice(&len.to_le_bytes());
    Ok(frame)
}

/// Decodes one payload, which must be exactly one message and no more than `N` bytes.
pub(crate) fn decode_payload<T: DeserializeOwned, const N: usize>(
    payload: &[u8],
) -> Result<T, ProtoError> {
    if payload.len() > N {
        return Err(ProtoError::FrameTooLarge {
            len: payload.len() as u64,
            max: N as u64,
        });
    }
    let (msg, used) = bincode::serde::decode_from_slice(payload, config::<N>()).map_err(|e| {
        match e {
            // Raised by a validating TryFrom (geometry, bitfield, piece map): a
            // well-formed value that breaks an invariant.
            DecodeError::OtherString(s) if s.starts_with(VIOLATION_PREFIX) => {
                ProtoError::Invalid(s.trim_start_matches(VIOLATION_PREFIX).to_string())
            }
            other => ProtoError::Decode(other.to_string()),
        }
    })?;
    if used != payload.len() {
        return Err(ProtoError::Decode(format!(
            "{} trailing bytes after the message",
            payload.len() - used
        )));
    }
    Ok(msg)
}

/// Encodes a request as a complete frame (length prefix included), ready to write.
pub fn encode_request(req: &Request) -> Result<Vec<u8>, ProtoError> {
    req.validate().map_err(ProtoError::Encode)?;
    encode_frame::<_, { MAX_REQUEST_FRAME as usize }>(req, MAX_REQUEST_FRAME)
}

/// Decodes the payload of one request frame (the bytes after the length prefix). Garbage is
/// [`ProtoError::Decode`], a rule broken [`ProtoError::Invalid`].
pub fn decode_request(payload: &[u8]) -> Result<Request, ProtoError> {
    let req: Request = decode_payload::<_, { MAX_REQUEST_FRAME as usize }>(payload)?;
    req.validate().map_err(ProtoError::Invalid)?;
    Ok(req)
}

/// Encodes a reply as a complete frame (length prefix included), ready to write. A `Piece`
/// reply is only the header: the caller writes the body after it.
pub fn encode_reply(reply: &Reply) -> Result<Vec<u8>, ProtoError> {
    reply.validate().map_err(ProtoError::Encode)?;
    encode_frame::<_, { MAX_REPLY_FRAME as usize }>(reply, MAX_REPLY_FRAME)
}

/// Decodes the payload of one reply frame (the bytes after the length prefix). Garbage is
/// [`ProtoError::Decode`], a rule broken [`ProtoError::Invalid`].
pub fn decode_reply(payload: &[u8]) -> Result<Reply, ProtoError> {
    let reply: Reply = decode_payload::<_, { MAX_REPLY_FRAME as usize }>(payload)?;
    reply.validate().map_err(ProtoError::Invalid)?;
    Ok(reply)
}

/// Reads the payload length from a frame's prefix, refusing one above `max` before anything is
/// allocated for it.
#[cfg(feature = "io")]
pub(crate) fn payload_len(prefix: [u8; PREFIX_LEN], max: u32) -> Result<usize, ProtoError> {
    let len = u32::from_le_bytes(prefix);
    if len > max {
        return Err(ProtoError::FrameTooLarge {
            len: len.into(),
            max: max.into(),
        });
    }
    usize::try_from(len).map_err(|_| ProtoError::FrameTooLarge {
        len: len.into(),
        max: max.into(),
    })
}
