//! Audio codecs and conversions shared by the pendant simulator and the server.
//!
//! Opus goes through libopus (the `opus` crate links the system library), so
//! the bytes the simulator sends are the bytes a real pendant's libopus would
//! send, and the server decodes what any Opus encoder produces.

use lanyard_proto::ble::Codec;
use thiserror::Error;

/// 16 kHz mono, 20 ms.
pub const SAMPLE_RATE: u32 = Codec::SAMPLE_RATE;
pub const FRAME_SAMPLES: usize = Codec::FRAME_SAMPLES;
/// The primary codec's bitrate. 32 kb/s is transparent for wideband speech
/// and leaves BLE headroom at the minimum connection interval.
pub const OPUS_BITRATE: i32 = 32_000;
/// The most bytes of audio data one Opus packet holds (RFC 6716, 3.4).
const MAX_PACKET_BYTES: usize = 1275;
/// The smallest frame [`FrameEncoder::opus_sized`] makes: 6 kb/s for 20 ms.
const MIN_SIZED_BYTES: usize = 15;
/// The most samples one Opus packet may decode to: 120 ms at 16 kHz.
const MAX_DECODED_SAMPLES: usize = 1920;

#[derive(Debug, Error)]
pub enum AudioError {
    #[error("opus: {0}")]
    Opus(#[from] opus::Error),
    #[error("PCM16 frame has an odd length of {0} bytes")]
    OddPcm(usize),
    #[error("expected {FRAME_SAMPLES} samples a frame, got {0}")]
    FrameSize(usize),
}

/// Encodes 20 ms frames of 16 kHz mono PCM.
pub struct FrameEncoder {
    codec: Codec,
    opus: Option<opus::Encoder>,
    buf: Vec<u8>,
    /// Every Opus frame padded to this many bytes ([`Self::opus_sized`]).
    sized: Option<usize>,
}

impl FrameEncoder {
    pub fn new(codec: Codec) -> Result<Self, AudioError> {
        let opus = match codec {
            Codec::Opus16k20ms => {
                let mut e = opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)?;
                e.set_bitrate(opus::Bitrate::Bits(OPUS_BITRATE))?;
                Some(e)
            }
            Codec::Pcm16k => None,
        };
        Ok(Self { codec, opus, buf: vec![0; 4000], sized: None })
    }

    /// An Opus encoder whose every frame is exactly `bytes` long (at least
    /// 15): constant bit rate, and padded with Opus's own padding, which
    /// every decoder skips, past the 1,275 bytes a packet's audio can use.
    /// For load tests that need frames of a chosen size that still decode
    /// as the audio given.
    pub fn opus_sized(bytes: usize) -> Result<Self, AudioError> {
        let bytes = bytes.max(MIN_SIZED_BYTES);
        let mut e = opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)?;
        let bitrate = (bytes.min(MAX_PACKET_BYTES) * 8 * 1000 / 20).clamp(6_000, 510_000) as i32;
        e.set_bitrate(opus::Bitrate::Bits(bitrate))?;
        e.set_vbr(false)?;
        Ok(Self { codec: Codec::Opus16k20ms, opus: Some(e), buf: vec![0; bytes.max(4000)], sized: Some(bytes) })
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Encodes exactly one frame of [`FRAME_SAMPLES`] samples.
    pub fn encode(&mut self, pcm: &[i16]) -> Result<Vec<u8>, AudioError> {
        if pcm.len() != FRAME_SAMPLES {
            return Err(AudioError::FrameSize(pcm.len()));
        }
        match &mut self.opus {
            Some(e) => {
                let limit = self.sized.map_or(self.buf.len(), |b| b.min(MAX_PACKET_BYTES));
                let n = e.encode(pcm, &mut self.buf[..limit])?;
                let n = match self.sized {
                    Some(bytes) if n < bytes => {
                        // `pad` returns libopus's OPUS_OK (0), not the length.
                        opus::packet::pad(&mut self.buf[..bytes], n)?;
                        bytes
                    }
                    _ => n,
                };
                Ok(self.buf[..n].to_vec())
            }
            None => Ok(pcm.iter().flat_map(|s| s.to_le_bytes()).collect()),
        }
    }
}

/// Decodes frames of either codec to f32 samples in [-1, 1].
pub struct FrameDecoder {
    opus: Option<opus::Decoder>,
    scratch: Vec<f32>,
}

impl FrameDecoder {
    pub fn new(codec: Codec) -> Result<Self, AudioError> {
        let opus = match codec {
            Codec::Opus16k20ms => Some(opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)?),
            Codec::Pcm16k => None,
        };
        Ok(Self { opus, scratch: vec![0.0; MAX_DECODED_SAMPLES] })
    }

    /// Decodes one frame and appends its samples to `out`.
    pub fn decode_into(&mut self, frame: &[u8], out: &mut Vec<f32>) -> Result<(), AudioError> {
        match &mut self.opus {
            Some(d) => {
                let n = d.decode_float(frame, &mut self.scratch, false)?;
                out.extend_from_slice(&self.scratch[..n]);
            }
            None => {
                if !frame.len().is_multiple_of(2) {
                    return Err(AudioError::OddPcm(frame.len()));
                }
                out.extend(frame.chunks_exact(2).map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0));
            }
        }
        Ok(())
    }

    /// Conceals one lost frame (Opus packet-loss concealment; silence for PCM).
    pub fn conceal_into(&mut self, out: &mut Vec<f32>) -> Result<(), AudioError> {
        match &mut self.opus {
            Some(d) => {
                let n = d.decode_float(&[], &mut self.scratch[..FRAME_SAMPLES], false)?;
                out.extend_from_slice(&self.scratch[..n]);
            }
            None => out.extend(std::iter::repeat_n(0.0, FRAME_SAMPLES)),
        }
        Ok(())
    }
}

/// Decodes a whole utterance's frames.
pub fn decode_frames<'a>(codec: Codec, frames: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<f32>, AudioError> {
    let mut dec = FrameDecoder::new(codec)?;
    let mut out = Vec::new();
    for f in frames {
        dec.decode_into(f, &mut out)?;
    }
    Ok(out)
}

/// Reads raw little-endian PCM16 bytes into samples.
pub fn pcm16_from_le_bytes(bytes: &[u8]) -> Vec<i16> {
    bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(frames: usize) -> Vec<i16> {
        (0..frames * FRAME_SAMPLES)
            .map(|i| ((i as f32 * 440.0 * std::f32::consts::TAU / SAMPLE_RATE as f32).sin() * 8000.0) as i16)
            .collect()
    }

    #[test]
    fn opus_round_trip_keeps_energy_and_length() {
        let pcm = tone(50);
        let mut enc = FrameEncoder::new(Codec::Opus16k20ms).unwrap();
        let frames: Vec<Vec<u8>> = pcm.chunks(FRAME_SAMPLES).map(|c| enc.encode(c).unwrap()).collect();
        // 32 kb/s at 50 frames/s is 80 bytes a frame on average.
        let mean = frames.iter().map(Vec::len).sum::<usize>() / frames.len();
        assert!((40..=120).contains(&mean), "mean Opus frame {mean} bytes");
        let out = decode_frames(Codec::Opus16k20ms, frames.iter().map(Vec::as_slice)).unwrap();
        assert_eq!(out.len(), pcm.len());
        let rms = |x: &[f32]| (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
        let want = rms(&pcm.iter().map(|&s| f32::from(s) / 32768.0).collect::<Vec<_>>());
        let got = rms(&out[FRAME_SAMPLES * 5..]);
        assert!((got / want - 1.0).abs() < 0.3, "rms {got} vs {want}");
    }

    #[test]
    fn sized_opus_frames_are_exactly_the_size_asked_and_decode() {
        let pcm = tone(10);
        for bytes in [15, 80, 1275, 2000] {
            let mut enc = FrameEncoder::opus_sized(bytes).unwrap();
            let frames: Vec<Vec<u8>> = pcm.chunks(FRAME_SAMPLES).map(|c| enc.encode(c).unwrap()).collect();
            assert!(
                frames.iter().all(|f| f.len() == bytes),
                "{bytes}: {:?}",
                frames.iter().map(Vec::len).collect::<Vec<_>>()
            );
            let out = decode_frames(Codec::Opus16k20ms, frames.iter().map(Vec::as_slice)).unwrap();
            assert_eq!(out.len(), pcm.len(), "{bytes}-byte frames decode to 20 ms each");
        }
        let mut enc = FrameEncoder::opus_sized(1).unwrap();
        assert_eq!(enc.encode(&pcm[..FRAME_SAMPLES]).unwrap().len(), MIN_SIZED_BYTES, "raised to the smallest size");
    }

    #[test]
    fn pcm_round_trip_is_exact() {
        let pcm = tone(2);
        let mut enc = FrameEncoder::new(Codec::Pcm16k).unwrap();
        let frames: Vec<Vec<u8>> = pcm.chunks(FRAME_SAMPLES).map(|c| enc.encode(c).unwrap()).collect();
        let out = decode_frames(Codec::Pcm16k, frames.iter().map(Vec::as_slice)).unwrap();
        let back: Vec<i16> = out.iter().map(|&s| (s * 32768.0) as i16).collect();
        assert_eq!(back, pcm);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut dec = FrameDecoder::new(Codec::Pcm16k).unwrap();
        assert!(dec.decode_into(&[1, 2, 3], &mut Vec::new()).is_err());
        let mut dec = FrameDecoder::new(Codec::Opus16k20ms).unwrap();
        // Garbage may decode or fail, but must not panic.
        let _ = dec.decode_into(&[0xff; 200], &mut Vec::new());
        let mut enc = FrameEncoder::new(Codec::Opus16k20ms).unwrap();
        assert!(enc.encode(&[0; 10]).is_err());
    }
}
