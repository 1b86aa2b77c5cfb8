//! Lanyard's pendant-to-phone framing over BLE GATT notifications.
//!
//! A pendant encodes audio into codec frames (one Opus frame = 20 ms) and
//! sends each frame as one or more GATT notifications on the audio
//! characteristic. Each notification starts with a 5-byte header:
//!
//! ```text
//!  byte 0          1       2       3           4          5 ..
//! +---------------+-------+-------+-----------+----------+-----------------+
//! | ver:4 | flg:4 | seq (u16 LE)  | frag idx  | codec id | payload ...     |
//! +---------------+-------+-------+-----------+----------+-----------------+
//!   ver = 1        wraps at 65536   0-based      see Codec
//!   flg bit 0 START  first frame of an utterance
//!   flg bit 1 END    last frame of an utterance
//!   flg bit 2 MORE   more fragments of this frame follow
//!   flg bit 3        reserved, must be 0
//! ```
//!
//! START and END are carried on every fragment of the frame they mark, so a
//! receiver may act on them from any fragment. A frame that both starts and
//! ends an utterance carries both. A pendant may end an utterance with an
//! empty END frame (payload length 0) when it has no audio left to send.
//!
//! The sequence number counts frames, not notifications: all fragments of one
//! frame share it. It runs on across utterances (START does not reset it) and
//! starts afresh only with a new BLE connection, when the relay calls
//! [`crate::reassembly::Reassembler::reset_link`]. It wraps, so a receiver
//! compares sequence numbers with [`seq_distance`].
//!
//! A frame is cut into chunks of [`payload_room`] bytes (15 at the minimum
//! ATT MTU of 23); fragment indices count 0, 1, 2, ... and every fragment but
//! the last sets MORE. At most [`MAX_FRAGMENTS`] fragments and
//! [`MAX_FRAME_LEN`] bytes make one frame.

use thiserror::Error;
use uuid::Uuid;

/// Size of the notification header in bytes.
pub const HEADER_LEN: usize = 5;
/// The only framing version defined so far. A receiver rejects others rather
/// than guess at a layout it does not know.
pub const VERSION: u8 = 1;
/// The smallest ATT MTU BLE allows. A notification carries at most MTU - 3
/// bytes, so with the minimum MTU each notification holds 15 payload bytes.
pub const MIN_ATT_MTU: usize = 23;
/// Largest attribute value GATT allows (Core spec, Vol 3, Part F, 3.2.9).
/// A notification never exceeds it, even when `ATT MTU - 3` would allow 514.
pub const MAX_NOTIFICATION_LEN: usize = 512;
/// Most fragments one frame may be split into: the fragment index is one
/// byte, so indices 0 to 255.
pub const MAX_FRAGMENTS: usize = 256;
/// Longest frame a receiver will reassemble: [`MAX_FRAGMENTS`] notifications
/// of a minimum-MTU link (15 payload bytes each), so that every frame a
/// receiver accepts can be sent over every link. An Opus frame at 32 kb/s is
/// about 80 bytes and a 20 ms PCM16 frame is 640; 3840 leaves room for
/// higher bitrates while bounding the memory an attacker can make us hold.
pub const MAX_FRAME_LEN: usize = MAX_FRAGMENTS * (MIN_ATT_MTU - 3 - HEADER_LEN);

const FLAG_START: u8 = 0b0001;
const FLAG_END: u8 = 0b0010;
const FLAG_MORE: u8 = 0b0100;
const FLAG_RESERVED: u8 = 0b1000;

/// The GATT profile of a Lanyard pendant.
///
/// The 128-bit UUIDs share the base `6c616e79-xxxx-4a8e-9d2b-5f3c1a7e0001`
/// ("lany" in ASCII), so a scanner filters on the service UUID alone.
pub mod gatt {
    use uuid::{Uuid, uuid};

    /// Primary service advertised by the pendant. Centrals scan for it.
    pub const SERVICE: Uuid = uuid!("6c616e79-0001-4a8e-9d2b-5f3c1a7e0001");
    /// Audio characteristic: notify only. Carries [`super`] framed audio.
    pub const AUDIO: Uuid = uuid!("6c616e79-0002-4a8e-9d2b-5f3c1a7e0001");
    /// Control characteristic: write with response. Carries [`super::Control`] commands.
    pub const CONTROL: Uuid = uuid!("6c616e79-0003-4a8e-9d2b-5f3c1a7e0001");
    /// The service an Omi pendant advertises ([`crate::omi::gatt::SERVICE`]):
    /// here so that [`super::Framing`] can name it without this module
    /// depending on `omi`, which builds on this one.
    pub const OMI_SERVICE: Uuid = uuid!("19b10000-e8f2-537e-4f6c-d104768a1214");
    /// Standard Battery Service (0x180F).
    pub const BATTERY_SERVICE: Uuid = uuid!("0000180f-0000-1000-8000-00805f9b34fb");
    /// Standard Battery Level characteristic (0x2A19): read and notify, one byte, percent.
    pub const BATTERY_LEVEL: Uuid = uuid!("00002a19-0000-1000-8000-00805f9b34fb");
}

/// Audio codecs a pendant may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    /// Opus, 16 kHz mono, 20 ms frames at 32 kb/s. The primary codec.
    Opus16k20ms,
    /// Signed 16-bit little-endian PCM, 16 kHz mono, 20 ms (320 samples) a frame.
    /// The fallback for pendants without an Opus encoder.
    Pcm16k,
}

impl Codec {
    /// Sample rate of the decoded audio, in Hz.
    pub const SAMPLE_RATE: u32 = 16_000;
    /// Samples in one 20 ms frame at 16 kHz.
    pub const FRAME_SAMPLES: usize = 320;
    /// Duration of one frame in milliseconds.
    pub const FRAME_MS: u32 = 20;

    /// The codec id on the wire.
    pub fn id(self) -> u8 {
        match self {
            Codec::Opus16k20ms => 1,
            Codec::Pcm16k => 2,
        }
    }

    /// Looks a wire codec id up.
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(Codec::Opus16k20ms),
            2 => Some(Codec::Pcm16k),
            _ => None,
        }
    }
}

/// One parsed notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification<'a> {
    /// Sequence number of the frame this notification is part of.
    pub seq: u16,
    /// Position of this piece within its frame, from 0.
    pub fragment: u8,
    /// Codec of the frame; the same on every fragment.
    pub codec: Codec,
    /// The frame is the first of an utterance.
    pub start: bool,
    /// The frame is the last of an utterance.
    pub end: bool,
    /// Further fragments of this frame follow.
    pub more: bool,
    /// The piece of the codec frame carried here.
    pub payload: &'a [u8],
}

/// Why a notification could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("notification is {0} bytes, shorter than the {HEADER_LEN}-byte header")]
    TooShort(usize),
    #[error("framing version {0} is not supported (expected {VERSION}); update the relay")]
    Version(u8),
    #[error("reserved flag bit is set; the pendant firmware speaks a newer framing")]
    ReservedFlag,
    #[error("codec id {0} is unknown; supported ids are 1 (Opus) and 2 (PCM16)")]
    UnknownCodec(u8),
}

/// Parses one audio notification.
pub fn parse(bytes: &[u8]) -> Result<Notification<'_>, FrameError> {
    if bytes.len() < HEADER_LEN {
        return Err(FrameError::TooShort(bytes.len()));
    }
    let version = bytes[0] >> 4;
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let flags = bytes[0] & 0x0f;
    if flags & FLAG_RESERVED != 0 {
        return Err(FrameError::ReservedFlag);
    }
    let fragment = bytes[3];
    let codec = Codec::from_id(bytes[4]).ok_or(FrameError::UnknownCodec(bytes[4]))?;
    Ok(Notification {
        seq: u16::from_le_bytes([bytes[1], bytes[2]]),
        fragment,
        codec,
        start: flags & FLAG_START != 0,
        end: flags & FLAG_END != 0,
        more: flags & FLAG_MORE != 0,
        payload: &bytes[HEADER_LEN..],
    })
}

/// Writes one notification into `out` (cleared first).
pub fn encode(n: &Notification<'_>, out: &mut Vec<u8>) {
    out.clear();
    let mut flags = 0;
    if n.start {
        flags |= FLAG_START;
    }
    if n.end {
        flags |= FLAG_END;
    }
    if n.more {
        flags |= FLAG_MORE;
    }
    out.push((VERSION << 4) | flags);
    out.extend_from_slice(&n.seq.to_le_bytes());
    out.push(n.fragment);
    out.push(n.codec.id());
    out.extend_from_slice(n.payload);
}

/// Errors from [`packetize`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PacketizeError {
    #[error("ATT MTU {0} is below the BLE minimum of {MIN_ATT_MTU}")]
    MtuTooSmall(usize),
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    FrameTooLong(usize),
}

/// A frame as the pendant hands it to the radio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameSpec<'a> {
    /// The pendant's frame counter (wrapping).
    pub seq: u16,
    /// Codec of `data`.
    pub codec: Codec,
    /// First frame of an utterance.
    pub start: bool,
    /// Last frame of an utterance.
    pub end: bool,
    /// One whole codec frame, at most [`MAX_FRAME_LEN`] bytes.
    pub data: &'a [u8],
}

/// Splits one codec frame into notifications that fit the negotiated ATT MTU.
///
/// A notification carries at most `att_mtu - 3` bytes (the ATT opcode and
/// handle take 3), and never more than [`MAX_NOTIFICATION_LEN`]; of those,
/// [`HEADER_LEN`] are our header. Every fragment repeats the frame's sequence
/// number, codec and START/END flags; all but the last set MORE. An empty
/// frame becomes one notification with an empty payload.
pub fn packetize(frame: &FrameSpec<'_>, att_mtu: usize) -> Result<Vec<Vec<u8>>, PacketizeError> {
    if att_mtu < MIN_ATT_MTU {
        return Err(PacketizeError::MtuTooSmall(att_mtu));
    }
    if frame.data.len() > MAX_FRAME_LEN {
        return Err(PacketizeError::FrameTooLong(frame.data.len()));
    }
    let room = payload_room(att_mtu);
    let chunks: Vec<&[u8]> = if frame.data.is_empty() { vec![&[][..]] } else { frame.data.chunks(room).collect() };
    let last = chunks.len() - 1;
    Ok(chunks
        .into_iter()
        .enumerate()
        .map(|(i, payload)| {
            let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
            encode(
                &Notification {
                    seq: frame.seq,
                    // Fits: room >= 15, so a frame of at most MAX_FRAME_LEN
                    // bytes has at most MAX_FRAGMENTS = 256 chunks.
                    fragment: i as u8,
                    codec: frame.codec,
                    start: frame.start,
                    end: frame.end,
                    more: i != last,
                    payload,
                },
                &mut out,
            );
            out
        })
        .collect())
}

/// Payload bytes one notification carries at `att_mtu`: 15 at the minimum
/// MTU of 23, 507 from MTU 515 up. Meaningless (0) below [`MIN_ATT_MTU`].
pub fn payload_room(att_mtu: usize) -> usize {
    att_mtu.saturating_sub(3).min(MAX_NOTIFICATION_LEN).saturating_sub(HEADER_LEN)
}

/// Signed distance from `from` to `to` on the wrapping u16 sequence circle:
/// positive when `to` is ahead. Values in `[-32768, 32767]`.
pub fn seq_distance(from: u16, to: u16) -> i32 {
    i32::from(to.wrapping_sub(from) as i16)
}

/// Commands the phone writes to the control characteristic.
///
/// ```text
/// +--------+-----------------+
/// | opcode | argument bytes  |
/// +--------+-----------------+
///  0x01 START_STREAM   (none)
///  0x02 STOP_STREAM    (none)
///  0x03 SET_CODEC      codec id (u8)
///  0x04 SYNC_CLOCK     unix time in ms (u64 LE)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Start sending audio notifications (the pendant may also start on its
    /// own voice activity detection).
    StartStream,
    /// Stop sending audio; an utterance in progress is ended with END.
    StopStream,
    /// Use this codec from the next utterance on.
    SetCodec(Codec),
    /// The phone's clock, so the pendant can timestamp utterances.
    SyncClock { unix_ms: u64 },
}

/// Why a control write could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ControlError {
    #[error("empty control write")]
    Empty,
    #[error("unknown control opcode 0x{0:02x}")]
    UnknownOpcode(u8),
    #[error("control opcode 0x{opcode:02x} takes {expected} argument bytes, got {got}")]
    BadLength { opcode: u8, expected: usize, got: usize },
    #[error("codec id {0} is unknown")]
    UnknownCodec(u8),
}

impl Control {
    /// Parses a control write, as the pendant firmware does.
    pub fn parse(bytes: &[u8]) -> Result<Self, ControlError> {
        let (&opcode, args) = bytes.split_first().ok_or(ControlError::Empty)?;
        let want = |expected: usize| {
            if args.len() == expected {
                Ok(())
            } else {
                Err(ControlError::BadLength { opcode, expected, got: args.len() })
            }
        };
        match opcode {
            0x01 => want(0).map(|()| Control::StartStream),
            0x02 => want(0).map(|()| Control::StopStream),
            0x03 => {
                want(1)?;
                Codec::from_id(args[0]).map(Control::SetCodec).ok_or(ControlError::UnknownCodec(args[0]))
            }
            0x04 => {
                want(8)?;
                let mut ms = [0u8; 8];
                ms.copy_from_slice(args);
                Ok(Control::SyncClock { unix_ms: u64::from_le_bytes(ms) })
            }
            other => Err(ControlError::UnknownOpcode(other)),
        }
    }

    /// Encodes a control write.
    pub fn encode(&self) -> Vec<u8> {
        match *self {
            Control::StartStream => vec![0x01],
            Control::StopStream => vec![0x02],
            Control::SetCodec(c) => vec![0x03, c.id()],
            Control::SyncClock { unix_ms } => {
                let mut v = vec![0x04];
                v.extend_from_slice(&unix_ms.to_le_bytes());
                v
            }
        }
    }
}

/// Which framing a pendant speaks, chosen from the service it advertises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    /// This module's framing, advertised with [`gatt::SERVICE`].
    Lanyard,
    /// The Omi framing of [`crate::omi`], advertised with its own service.
    Omi,
}

impl Framing {
    /// The service UUID that identifies the framing.
    pub fn service(self) -> Uuid {
        match self {
            Framing::Lanyard => gatt::SERVICE,
            Framing::Omi => gatt::OMI_SERVICE,
        }
    }
}
