//! Benchmark: Opus decode and encode of 20 ms frames at 16 kHz (32 kb/s,
//! VoIP), through lanyard-audio's `FrameDecoder` and `FrameEncoder`, with
//! criterion.
//!
//! The audio is 5 s of a synthetic speech-like signal (below), encoded once
//! before timing; the frames average about 80 bytes. lanyard-pendant's espeak-ng
//! speech is not used because lanyard-pendant depends on this crate, and a
//! dev-dependency back on it would build this crate twice. Groups:
//!
//! - `opus_decode/frame`: one frame through a long-lived decoder (the frames
//!   are taken in turn, so the decoder state stays realistic). Elements are
//!   frames.
//! - `opus_decode/second`: `decode_frames` on 1 s of audio (50 frames), as the
//!   server's pipeline decodes an utterance: a fresh decoder, then each frame.
//!   The time per iteration is the decode cost of one second of audio, i.e.
//!   its real-time factor in seconds per second. Elements are frames.
//! - `opus_encode/frame`: one frame through a long-lived encoder, what the
//!   pendant simulator pays per frame. Elements are frames.
//!
//! Run: `cargo bench -p lanyard-audio --bench opus`
//! (a quick look: `-- --warm-up-time 1 --measurement-time 3`).

use std::f32::consts::TAU;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lanyard_audio::{FRAME_SAMPLES, FrameDecoder, FrameEncoder, SAMPLE_RATE, decode_frames};
use lanyard_proto::ble::Codec;

/// Frames of audio encoded for the benchmark: 5 s.
const FRAMES: usize = 250;
/// Frames in one second of audio.
const FRAMES_PER_SEC: usize = 50;

/// Speech-like PCM: a voiced source whose pitch glides between about 100
/// and 160 Hz, with harmonics weighted by two formants that move from
/// syllable to syllable, syllables at about 4 a second with short pauses,
/// a burst of noise (a fricative) in every third syllable, a little breath
/// noise and a room's noise floor. Not speech, but it keeps the encoder in its
/// speech modes at the 32 kb/s (80 bytes a frame) that real speech gets, which
/// a pure tone or white noise would not; without the noise floor the pauses
/// would encode to a few bytes and halve the average.
fn speechlike(samples: usize) -> Vec<i16> {
    let rate = SAMPLE_RATE as f32;
    let mut noise = 0x2545_f491_u32;
    let mut phase = 0.0f32;
    (0..samples)
        .map(|n| {
            let t = n as f32 / rate;
            let syllable = (t * 4.0) as u32;
            let within = t * 4.0 - syllable as f32;
            // Raised-cosine envelope over 80 % of the syllable, then a pause.
            let env = if within < 0.8 { 0.5 - 0.5 * (TAU * within / 0.8).cos() } else { 0.0 };
            let f0 = 130.0 + 30.0 * (TAU * 0.7 * t).sin();
            phase = (phase + f0 / rate).fract();
            let (f1, f2) = (300.0 + 100.0 * (syllable % 7) as f32, 900.0 + 130.0 * (syllable % 11) as f32);
            let mut voiced = 0.0;
            for h in 1..=(3500.0 / f0) as u32 {
                let f = h as f32 * f0;
                let gain = 1.0 / (1.0 + ((f - f1) / 120.0).powi(2)) + 0.6 / (1.0 + ((f - f2) / 180.0).powi(2));
                voiced += gain * (TAU * phase * h as f32).sin();
            }
            // xorshift32 noise for the fricatives.
            noise ^= noise << 13;
            noise ^= noise >> 17;
            noise ^= noise << 5;
            let white = noise as f32 / u32::MAX as f32 - 0.5;
            let sample = if syllable % 3 == 2 && within < 0.25 { white * 0.6 } else { voiced * 0.25 + white * 0.05 };
            // A room's noise floor under everything, pauses included.
            (sample * env * 12_000.0 + white * 300.0).clamp(-32_768.0, 32_767.0) as i16
        })
        .collect()
}

fn opus(c: &mut Criterion) {
    let pcm = speechlike(FRAMES * FRAME_SAMPLES);
    let mut encoder = FrameEncoder::new(Codec::Opus16k20ms).unwrap();
    let frames: Vec<Vec<u8>> = pcm.chunks_exact(FRAME_SAMPLES).map(|f| encoder.encode(f).unwrap()).collect();
    let bytes: usize = frames.iter().map(Vec::len).sum();
    eprintln!(
        "opus bench: {FRAMES} frames of synthetic speech, {:.1} bytes a frame on average ({:.1} kb/s)",
        bytes as f32 / FRAMES as f32,
        bytes as f32 * 8.0 / (FRAMES as f32 * 0.02) / 1000.0
    );

    let mut g = c.benchmark_group("opus_decode");
    g.throughput(Throughput::Elements(1));
    let mut decoder = FrameDecoder::new(Codec::Opus16k20ms).unwrap();
    let mut out = Vec::with_capacity(FRAME_SAMPLES);
    let mut next = 0;
    g.bench_function("frame", |b| {
        b.iter(|| {
            out.clear();
            decoder.decode_into(black_box(&frames[next]), &mut out).unwrap();
            next = (next + 1) % FRAMES;
            black_box(&out);
        })
    });
    g.throughput(Throughput::Elements(FRAMES_PER_SEC as u64));
    let second = &frames[FRAMES_PER_SEC..2 * FRAMES_PER_SEC];
    g.bench_function("second", |b| {
        b.iter(|| black_box(decode_frames(Codec::Opus16k20ms, second.iter().map(Vec::as_slice)).unwrap()))
    });
    g.finish();

    let mut g = c.benchmark_group("opus_encode");
    g.throughput(Throughput::Elements(1));
    let mut next = 0;
    g.bench_function("frame", |b| {
        b.iter(|| {
            let f = encoder.encode(black_box(&pcm[next * FRAME_SAMPLES..(next + 1) * FRAME_SAMPLES])).unwrap();
            next = (next + 1) % FRAMES;
            black_box(f)
        })
    });
    g.finish();
}

criterion_group!(benches, opus);
criterion_main!(benches);
