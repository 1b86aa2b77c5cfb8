//! Ogg Opus (RFC 7845) for the whole-utterance HTTP upload.
//!
//! iOS background sessions upload files over HTTP, so an utterance that could
//! not be streamed is sealed into a standard Ogg Opus file: one logical
//! stream, the `OpusHead` and `OpusTags` header packets, then one audio
//! packet per 20 ms frame, in order. Any Ogg Opus tool can play it, and the
//! server maps packet *i* to frame *i* of the utterance, which is what lets
//! a partly streamed utterance be completed by upload without duplicates.

use std::io::Cursor;

use ogg::{PacketReader, PacketWriteEndInfo, PacketWriter};
use thiserror::Error;

/// Opus always counts granule positions at 48 kHz.
const GRANULE_RATE: u64 = 48_000;
/// 20 ms at 48 kHz.
const GRANULE_PER_FRAME: u64 = 960;
/// Encoder delay to skip at 48 kHz; libopus' lookahead at 16 kHz is 6.5 ms.
pub const PRE_SKIP: u16 = 312;
/// The input rate we declare.
pub const INPUT_SAMPLE_RATE: u32 = 16_000;
/// Vendor string in OpusTags.
const VENDOR: &str = "lanyard";
/// Most audio packets accepted from an upload.
pub const MAX_PACKETS: usize = crate::wire::limits::MAX_UTTERANCE_FRAMES as usize;

/// Why an upload is not an Ogg Opus file the server accepts.
#[derive(Debug, Error)]
pub enum OggOpusError {
    #[error("not a valid Ogg stream: {0}")]
    Ogg(String),
    #[error("the first packet is not an OpusHead header; is this an Ogg Opus file?")]
    NoOpusHead,
    #[error("OpusHead declares {0} channels; Lanyard uploads are mono")]
    Channels(u8),
    #[error("the second packet is not an OpusTags header")]
    NoOpusTags,
    #[error("the stream has more than {MAX_PACKETS} audio packets")]
    TooManyPackets,
    #[error("audio packet {index} is {len} bytes, over the {max}-byte frame limit", max = crate::ble::MAX_FRAME_LEN)]
    PacketTooLarge { index: usize, len: usize },
    #[error("the stream interleaves several logical streams; upload one utterance per file")]
    MultipleStreams,
}

/// Writes frames (20 ms Opus packets at 16 kHz mono) as an Ogg Opus file.
///
/// Layout: page 0 holds `OpusHead` alone, page 1 `OpusTags` alone (both
/// with granule position 0), then the audio packets, 50 to a page (one
/// second), the last page flagged end-of-stream. The granule position of an
/// audio page is 960 times the number of packets up to and including the
/// last one completed on it. Each packet should be at most
/// [`crate::ble::MAX_FRAME_LEN`] bytes, or [`read`] will refuse the file.
pub fn write<'a>(serial: u32, frames: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = PacketWriter::new(&mut out);
        let mut head = Vec::with_capacity(19);
        head.extend_from_slice(b"OpusHead");
        head.push(1); // version
        head.push(1); // channels
        head.extend_from_slice(&PRE_SKIP.to_le_bytes());
        head.extend_from_slice(&INPUT_SAMPLE_RATE.to_le_bytes());
        head.extend_from_slice(&0i16.to_le_bytes()); // output gain
        head.push(0); // mapping family
        w.write_packet(head, serial, PacketWriteEndInfo::EndPage, 0).expect("writing to a Vec cannot fail");
        let mut tags = Vec::new();
        tags.extend_from_slice(b"OpusTags");
        tags.extend_from_slice(&(VENDOR.len() as u32).to_le_bytes());
        tags.extend_from_slice(VENDOR.as_bytes());
        tags.extend_from_slice(&0u32.to_le_bytes());
        let frames: Vec<&[u8]> = frames.into_iter().collect();
        let n = frames.len();
        // With no audio the tags page ends the stream: an empty sentinel
        // packet would be indistinguishable from an empty last frame.
        let tags_end = if n == 0 { PacketWriteEndInfo::EndStream } else { PacketWriteEndInfo::EndPage };
        w.write_packet(tags, serial, tags_end, 0).expect("writing to a Vec cannot fail");
        for (i, f) in frames.into_iter().enumerate() {
            let granule = (i as u64 + 1) * GRANULE_PER_FRAME;
            let end = if i + 1 == n {
                PacketWriteEndInfo::EndStream
            } else if (i + 1) % 50 == 0 {
                // About one page a second keeps pages small for streaming readers.
                PacketWriteEndInfo::EndPage
            } else {
                PacketWriteEndInfo::NormalPacket
            };
            w.write_packet(f.to_vec(), serial, end, granule).expect("writing to a Vec cannot fail");
        }
    }
    out
}

/// Reads an Ogg Opus file back into its audio packets, in order.
///
/// Checks what the server relies on: one logical stream, an `OpusHead` for
/// one channel, an `OpusTags`, at most [`MAX_PACKETS`] packets of at most
/// [`crate::ble::MAX_FRAME_LEN`] bytes. Page CRCs are checked by the Ogg
/// reader. Anything after the end-of-stream packet is ignored.
pub fn read(bytes: &[u8]) -> Result<Vec<Vec<u8>>, OggOpusError> {
    let mut r = PacketReader::new(Cursor::new(bytes));
    let mut next = || r.read_packet().map_err(|e| OggOpusError::Ogg(e.to_string()));
    let head = next()?.ok_or(OggOpusError::NoOpusHead)?;
    let serial = head.stream_serial();
    if head.data.len() < 19 || &head.data[..8] != b"OpusHead" {
        return Err(OggOpusError::NoOpusHead);
    }
    if head.data[9] != 1 {
        return Err(OggOpusError::Channels(head.data[9]));
    }
    if head.last_in_stream() {
        return Err(OggOpusError::NoOpusTags);
    }
    let tags = next()?.ok_or(OggOpusError::NoOpusTags)?;
    if tags.stream_serial() != serial {
        return Err(OggOpusError::MultipleStreams);
    }
    if tags.data.len() < 8 || &tags.data[..8] != b"OpusTags" {
        return Err(OggOpusError::NoOpusTags);
    }
    let mut packets = Vec::new();
    if tags.last_in_stream() {
        return Ok(packets);
    }
    while let Some(p) = next()? {
        if p.stream_serial() != serial {
            return Err(OggOpusError::MultipleStreams);
        }
        if p.data.len() > crate::ble::MAX_FRAME_LEN {
            return Err(OggOpusError::PacketTooLarge { index: packets.len(), len: p.data.len() });
        }
        if packets.len() == MAX_PACKETS {
            return Err(OggOpusError::TooManyPackets);
        }
        let last = p.last_in_stream();
        packets.push(p.data);
        if last {
            break;
        }
    }
    Ok(packets)
}

/// Duration of `frames` packets in seconds, for logs.
pub fn duration_secs(frames: usize) -> f64 {
    frames as f64 * GRANULE_PER_FRAME as f64 / GRANULE_RATE as f64
}
