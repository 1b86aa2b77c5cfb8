//! 16 kHz mono PCM16 WAV, the upload container for PCM utterances.
//!
//! Pendants without an Opus encoder send PCM16 frames of 320 samples. A PCM
//! utterance handed off to a background upload is sealed as a canonical WAV
//! (RIFF, `fmt ` chunk with format 1, one `data` chunk); frame *i* is bytes
//! `640 i .. 640 (i + 1)` of the data, so the server can merge an upload with
//! frames it already holds from the stream, exactly as with Ogg Opus.
//!
//! The reader accepts what other writers produce too: extra chunks are
//! skipped, and only the format is enforced.

use thiserror::Error;

use crate::ble::Codec;

/// Bytes of one 20 ms PCM16 frame.
pub const FRAME_BYTES: usize = Codec::FRAME_SAMPLES * 2;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WavError {
    #[error("not a RIFF/WAVE file")]
    NotWav,
    #[error("the WAV `fmt ` chunk is missing or short")]
    NoFormat,
    #[error("WAV is {0}; Lanyard uploads are 16 kHz mono 16-bit PCM")]
    Format(String),
    #[error("the WAV has no `data` chunk")]
    NoData,
    #[error("the WAV data holds {0} bytes, not a whole number of 16-bit samples")]
    OddData(usize),
}

/// A WAV of the frames, which must be PCM16 little-endian.
pub fn write<'a>(frames: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let data: Vec<u8> = frames.into_iter().flatten().copied().collect();
    let mut out = Vec::with_capacity(44 + data.len());
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&Codec::SAMPLE_RATE.to_le_bytes());
    out.extend_from_slice(&(Codec::SAMPLE_RATE * 2).to_le_bytes()); // byte rate
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&data);
    out
}

/// Reads a WAV into 20 ms frames (the last may be shorter).
pub fn read(bytes: &[u8]) -> Result<Vec<Vec<u8>>, WavError> {
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(WavError::NotWav);
    }
    let mut pos = 12;
    let mut format_ok = false;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let len = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().expect("4 bytes")) as usize;
        let body = pos + 8;
        let end = body.saturating_add(len).min(bytes.len());
        match id {
            b"fmt " => {
                let f = &bytes[body..end];
                if f.len() < 16 {
                    return Err(WavError::NoFormat);
                }
                let (fmt, ch) = (u16::from_le_bytes([f[0], f[1]]), u16::from_le_bytes([f[2], f[3]]));
                let rate = u32::from_le_bytes([f[4], f[5], f[6], f[7]]);
                let bits = u16::from_le_bytes([f[14], f[15]]);
                if fmt != 1 || ch != 1 || rate != Codec::SAMPLE_RATE || bits != 16 {
                    return Err(WavError::Format(format!("format {fmt}, {ch} channel(s), {rate} Hz, {bits}-bit")));
                }
                format_ok = true;
            }
            b"data" => {
                if !format_ok {
                    return Err(WavError::NoFormat);
                }
                let data = &bytes[body..end];
                if !data.len().is_multiple_of(2) {
                    return Err(WavError::OddData(data.len()));
                }
                return Ok(data.chunks(FRAME_BYTES).map(<[u8]>::to_vec).collect());
            }
            _ => {}
        }
        // Chunks are padded to an even length.
        pos = body.saturating_add(len).saturating_add(len & 1);
    }
    Err(if format_ok { WavError::NoData } else { WavError::NoFormat })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_frame_for_frame() {
        let frames = vec![vec![1u8; FRAME_BYTES], vec![2u8; FRAME_BYTES], vec![3u8; 100]];
        let wav = write(frames.iter().map(Vec::as_slice));
        assert_eq!(wav.len(), 44 + 2 * FRAME_BYTES + 100);
        assert_eq!(read(&wav).unwrap(), frames);
    }

    #[test]
    fn other_formats_are_refused_with_what_they_are() {
        let mut wav = write([&[0u8; 4][..]]);
        wav[24..28].copy_from_slice(&44_100u32.to_le_bytes());
        assert_eq!(read(&wav), Err(WavError::Format("format 1, 1 channel(s), 44100 Hz, 16-bit".into())));
        assert_eq!(read(b"RIFF\0\0\0\0WAVE"), Err(WavError::NoFormat));
        assert_eq!(read(b"OggS"), Err(WavError::NotWav));
    }
}
