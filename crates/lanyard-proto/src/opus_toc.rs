//! How much audio an Opus packet holds, read from its table-of-contents
//! byte (RFC 6716, section 3.1) without decoding it.
//!
//! Limits on audio are limits in seconds, and they must be checked before
//! any decoding: a 94 KB Ogg file of two-byte packets that each claim
//! 120 ms is an hour of audio, and decoding it first costs hundreds of MB.
//! Every entry point that takes Opus (the WebSocket's frames, uploads,
//! `/v1/audio/transcriptions`) measures packets here first.
//!
//! Sans-I/O: bytes in, a duration out.

use thiserror::Error;

use crate::ble::Codec;

/// Opus's clock: durations are counted in 48 kHz samples whatever the
/// decoded rate (a 20 ms frame is 960).
pub const OPUS_RATE: u32 = 48_000;

/// 20 ms at [`OPUS_RATE`]: the duration of every frame Lanyard stores.
pub const SAMPLES_20MS: u32 = 960;

/// The longest packet Opus allows: 120 ms.
pub const MAX_PACKET_SAMPLES: u32 = 5_760;

/// Why a packet's duration cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Error)]
pub enum TocError {
    /// An empty packet has no TOC byte.
    #[error("an empty Opus packet has no table-of-contents byte")]
    Empty,
    /// Code 3 packets carry their frame count in a second byte.
    #[error("an Opus packet of code 3 has no frame-count byte")]
    NoFrameCount,
    /// Code 3 with a frame count of 0.
    #[error("an Opus packet declares 0 frames")]
    NoFrames,
    /// More than 120 ms in one packet, which Opus forbids.
    #[error("an Opus packet declares {ms:.1} ms of audio; Opus allows at most 120 ms")]
    TooLong {
        /// What the packet claims, in milliseconds.
        ms: f32,
    },
}

/// Samples at 48 kHz in one frame of the packet whose TOC byte is `toc`.
fn frame_samples(toc: u8) -> u32 {
    let config = toc >> 3;
    match config {
        // SILK only: 10, 20, 40, 60 ms.
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        // Hybrid: 10, 20 ms.
        12..=15 => [480, 960][usize::from(config % 2)],
        // CELT only: 2.5, 5, 10, 20 ms.
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    }
}

/// The audio `packet` holds, in 48 kHz samples, from its TOC byte (and,
/// for code 3, its frame-count byte). Nothing else of the packet is read:
/// a packet that lies about itself fails later, in the decoder, which is
/// then given at most 120 ms to produce.
pub fn packet_samples(packet: &[u8]) -> Result<u32, TocError> {
    let &toc = packet.first().ok_or(TocError::Empty)?;
    let frames = match toc & 0b11 {
        0 => 1,
        1 | 2 => 2,
        _ => {
            let &count = packet.get(1).ok_or(TocError::NoFrameCount)?;
            match u32::from(count & 0x3F) {
                0 => return Err(TocError::NoFrames),
                n => n,
            }
        }
    };
    let samples = frame_samples(toc) * frames;
    if samples > MAX_PACKET_SAMPLES {
        return Err(TocError::TooLong { ms: samples as f32 / 48.0 });
    }
    Ok(samples)
}

/// Why a frame is not one stored frame of its codec.
#[derive(Debug, Clone, Copy, PartialEq, Error)]
pub enum FrameError {
    /// The packet's duration cannot be read.
    #[error("{0}")]
    Toc(#[from] TocError),
    /// A readable Opus packet of another length than 20 ms.
    #[error("Opus packet of {ms:.1} ms; every frame must be 20 ms")]
    NotTwentyMs {
        /// What the packet holds, in milliseconds.
        ms: f32,
    },
    /// A PCM frame longer than 20 ms, or with half a sample.
    #[error("the PCM frame is {len} bytes; a frame is at most 640 (20 ms of 16-bit 16 kHz mono), in whole samples")]
    Pcm {
        /// Its length in bytes.
        len: usize,
    },
}

/// Checks that `frame` is at most one 20 ms frame of `codec`, as the server
/// stores them, before anything decodes it: an Opus packet must be exactly
/// 20 ms; a PCM frame at most 640 bytes of whole samples (the last frame of
/// a WAV upload may be shorter).
pub fn check_frame(codec: Codec, frame: &[u8]) -> Result<(), FrameError> {
    match codec {
        Codec::Opus16k20ms => match packet_samples(frame)? {
            SAMPLES_20MS => Ok(()),
            samples => Err(FrameError::NotTwentyMs { ms: samples as f32 / 48.0 }),
        },
        Codec::Pcm16k if frame.len() <= Codec::FRAME_SAMPLES * 2 && frame.len().is_multiple_of(2) => Ok(()),
        Codec::Pcm16k => Err(FrameError::Pcm { len: frame.len() }),
    }
}

/// The total duration of `packets` in seconds, or the first packet whose
/// duration cannot be read (its index and why).
pub fn duration_secs<'a>(packets: impl IntoIterator<Item = &'a [u8]>) -> Result<f64, (usize, TocError)> {
    let mut total: u64 = 0;
    for (i, p) in packets.into_iter().enumerate() {
        total += u64::from(packet_samples(p).map_err(|e| (i, e))?);
    }
    Ok(total as f64 / f64::from(OPUS_RATE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A TOC byte: `config` (0..32), stereo flag 0, frame-count `code`.
    fn toc(config: u8, code: u8) -> u8 {
        (config << 3) | code
    }

    #[test]
    fn durations_follow_rfc_6716_table() {
        // SILK 20 ms, one frame: what libopus makes at 16 kHz and 32 kb/s.
        assert_eq!(packet_samples(&[toc(9, 0), 0xAA]), Ok(960));
        // CELT 2.5 ms, two frames (code 1 and code 2).
        assert_eq!(packet_samples(&[toc(16, 1)]), Ok(240));
        assert_eq!(packet_samples(&[toc(16, 2), 0, 0]), Ok(240));
        // Hybrid 10 ms.
        assert_eq!(packet_samples(&[toc(12, 0)]), Ok(480));
        // SILK 60 ms twice: 120 ms, the most allowed.
        assert_eq!(packet_samples(&[toc(3, 3), 2]), Ok(5_760));
        // CELT 20 ms, 6 frames (VBR and padding flags set).
        assert_eq!(packet_samples(&[toc(31, 3), 0b1100_0110]), Ok(5_760));
    }

    #[test]
    fn impossible_packets_are_refused() {
        assert_eq!(packet_samples(&[]), Err(TocError::Empty));
        assert_eq!(packet_samples(&[toc(9, 3)]), Err(TocError::NoFrameCount));
        assert_eq!(packet_samples(&[toc(9, 3), 0]), Err(TocError::NoFrames));
        // 60 ms times 3.
        assert_eq!(packet_samples(&[toc(3, 3), 3]), Err(TocError::TooLong { ms: 180.0 }));
    }

    #[test]
    fn an_hour_of_two_byte_packets_is_measured_without_decoding() {
        // The bomb: 30,000 packets of 120 ms in 60 KB.
        let bomb = vec![vec![toc(3, 3), 2]; 30_000];
        let secs = duration_secs(bomb.iter().map(Vec::as_slice)).unwrap();
        assert!((secs - 3_600.0).abs() < 1e-9, "{secs}");
        let bad = [vec![toc(9, 0)], vec![]];
        assert_eq!(duration_secs(bad.iter().map(Vec::as_slice)), Err((1, TocError::Empty)));
    }

    #[test]
    fn stored_frames_are_20_ms() {
        assert_eq!(check_frame(Codec::Opus16k20ms, &[toc(9, 0), 1, 2]), Ok(()));
        // Two 10 ms CELT frames are 20 ms too.
        assert_eq!(check_frame(Codec::Opus16k20ms, &[toc(18, 1)]), Ok(()));
        assert_eq!(check_frame(Codec::Opus16k20ms, &[toc(3, 3), 2]), Err(FrameError::NotTwentyMs { ms: 120.0 }));
        assert_eq!(check_frame(Codec::Opus16k20ms, &[]), Err(FrameError::Toc(TocError::Empty)));
        assert_eq!(check_frame(Codec::Pcm16k, &[0; 640]), Ok(()));
        assert_eq!(check_frame(Codec::Pcm16k, &[0; 10]), Ok(()));
        assert_eq!(check_frame(Codec::Pcm16k, &[0; 642]), Err(FrameError::Pcm { len: 642 }));
        assert_eq!(check_frame(Codec::Pcm16k, &[0; 3]), Err(FrameError::Pcm { len: 3 }));
    }

    proptest! {
        /// Any bytes: a duration of at most 120 ms in 2.5 ms steps, or an error; never a panic.
        #[test]
        fn any_packet_is_at_most_120_ms(packet in proptest::collection::vec(any::<u8>(), 0..8)) {
            if let Ok(samples) = packet_samples(&packet) {
                prop_assert!(samples > 0 && samples <= MAX_PACKET_SAMPLES);
                prop_assert_eq!(samples % 120, 0);
            }
        }
    }
}
