//! The open Omi pendant framing, accepted so that existing Omi hardware works.
//!
//! Omi sends audio as notifications on its own audio characteristic. Each
//! notification starts with a 3-byte header:
//!
//! ```text
//!  byte 0       1        2           3 ..
//! +-------+-------+------------+--------------+
//! | packet index  | sub-index  | payload ...  |
//! | (u16 LE)      | (u8)       |              |
//! +-------+-------+------------+--------------+
//! ```
//!
//! The packet index counts notifications and wraps. The sub-index is 0 on the
//! first notification of a codec frame and counts up for each further piece
//! of the same frame, so a frame is complete when the next notification with
//! sub-index 0 arrives (or when the stream goes quiet). The codec is not in
//! the header: the phone reads it once from the codec characteristic.
//!
//! Omi has no utterance markers; the relay ends an Omi utterance after a
//! silence timeout on the BLE data.

use thiserror::Error;

use crate::ble::{MAX_NOTIFICATION_LEN, MIN_ATT_MTU};

/// Size of the Omi notification header.
pub const HEADER_LEN: usize = 3;

/// The Omi GATT profile.
pub mod gatt {
    use uuid::{Uuid, uuid};

    /// Omi's audio service, which a central scans for.
    pub const SERVICE: Uuid = crate::ble::gatt::OMI_SERVICE;
    /// Audio data: notify.
    pub const AUDIO: Uuid = uuid!("19b10001-e8f2-537e-4f6c-d104768a1214");
    /// Codec type: read, one byte, see [`super::OmiCodec`].
    pub const CODEC: Uuid = uuid!("19b10002-e8f2-537e-4f6c-d104768a1214");
}

/// Codec ids from Omi's codec characteristic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OmiCodec {
    /// 0: PCM 16-bit, 16 kHz, mono.
    Pcm16,
    /// 1: PCM 8-bit, 16 kHz, mono.
    Pcm8,
    /// 20: Opus, 16 kHz, 160-sample frames (10 ms).
    Opus,
    /// 21: Opus, 16 kHz, 320-sample frames (20 ms). Current Omi firmware.
    OpusFs320,
}

impl OmiCodec {
    /// Looks a codec characteristic value up.
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            0 => Some(Self::Pcm16),
            1 => Some(Self::Pcm8),
            20 => Some(Self::Opus),
            21 => Some(Self::OpusFs320),
            _ => None,
        }
    }

    /// The codec characteristic value.
    pub fn id(self) -> u8 {
        match self {
            Self::Pcm16 => 0,
            Self::Pcm8 => 1,
            Self::Opus => 20,
            Self::OpusFs320 => 21,
        }
    }

    /// The Lanyard codec this maps to, if the relay can carry it as is.
    ///
    /// Opus at 16 kHz with 320-sample frames is exactly our primary codec and
    /// PCM16 at 16 kHz our fallback. The others would need transcoding on the
    /// phone, which the relay does not do.
    pub fn to_lanyard(self) -> Option<crate::ble::Codec> {
        match self {
            Self::OpusFs320 => Some(crate::ble::Codec::Opus16k20ms),
            Self::Pcm16 => Some(crate::ble::Codec::Pcm16k),
            Self::Pcm8 | Self::Opus => None,
        }
    }
}

/// One parsed Omi notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OmiNotification<'a> {
    /// Packet index: counts notifications, wrapping.
    pub index: u16,
    /// Position within the codec frame: 0 starts a new frame.
    pub sub_index: u8,
    /// The piece of the codec frame carried here.
    pub payload: &'a [u8],
}

/// Why an Omi notification could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OmiError {
    #[error("Omi notification is {0} bytes, shorter than the 3-byte header")]
    TooShort(usize),
}

/// Parses one Omi audio notification.
pub fn parse(bytes: &[u8]) -> Result<OmiNotification<'_>, OmiError> {
    if bytes.len() < HEADER_LEN {
        return Err(OmiError::TooShort(bytes.len()));
    }
    Ok(OmiNotification {
        index: u16::from_le_bytes([bytes[0], bytes[1]]),
        sub_index: bytes[2],
        payload: &bytes[HEADER_LEN..],
    })
}

/// Writes one Omi notification into `out` (cleared first).
pub fn encode(n: &OmiNotification<'_>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&n.index.to_le_bytes());
    out.push(n.sub_index);
    out.extend_from_slice(n.payload);
}

/// Payload bytes one Omi notification carries at `att_mtu`: 17 at the
/// minimum MTU of 23, 509 from MTU 515 up. MTUs below the BLE minimum are
/// treated as the minimum.
pub fn payload_room(att_mtu: usize) -> usize {
    (att_mtu.max(MIN_ATT_MTU) - 3).min(MAX_NOTIFICATION_LEN) - HEADER_LEN
}

/// Splits a frame into Omi notifications, as Omi firmware does, starting at
/// packet index `first_index`. Returns the notifications; the next frame
/// starts at `first_index + len` (wrapping). An empty frame becomes one
/// notification with an empty payload.
///
/// The sub-index is one byte, so a frame must fit in 256 notifications:
/// any frame of at most [`crate::ble::MAX_FRAME_LEN`] bytes does, at any MTU.
pub fn packetize(first_index: u16, frame: &[u8], att_mtu: usize) -> Vec<Vec<u8>> {
    let room = payload_room(att_mtu);
    let chunks: Vec<&[u8]> = if frame.is_empty() { vec![&[][..]] } else { frame.chunks(room).collect() };
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, payload)| {
            let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
            encode(
                &OmiNotification { index: first_index.wrapping_add(i as u16), sub_index: i as u8, payload },
                &mut out,
            );
            out
        })
        .collect()
}
