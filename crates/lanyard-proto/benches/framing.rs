//! Benchmark: the parsers every audio frame goes through, with criterion.
//!
//! All audio is 80-byte frames, the size of a 20 ms Opus frame at 32 kb/s
//! (the pendant's codec), with varied bytes. Groups:
//!
//! - `ble_parse`: `ble::parse` of one Lanyard notification: a middle
//!   fragment at MTU 23 (20 bytes) and a whole frame at MTU 185 (85 bytes).
//!   Elements are notifications.
//! - `reassembly`: a stream of 250 frames (5 s of audio) as the pendant
//!   sends them, through a fresh `Reassembler` (`push`, then `pop_ready` until
//!   empty), in Lanyard and Omi framing, fragmented at MTU 23 (6 Lanyard or
//!   5 Omi notifications a frame) and whole at MTU 185. Elements are frames
//!   delivered; the relay needs 50 a second per pendant.
//! - `wire`: `wire::parse_binary` of one AUDIO message (9-byte header and the
//!   frame) and `wire::parse_client_text` of the `open` and `end` control
//!   messages. Elements are messages.
//!
//! Run: `cargo bench -p lanyard-proto --bench framing`
//! (a quick look: `-- --warm-up-time 1 --measurement-time 3`).

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use lanyard_proto::Uuid;
use lanyard_proto::ble::{self, Codec, FrameSpec};
use lanyard_proto::omi::{self, OmiCodec};
use lanyard_proto::reassembly::Reassembler;
use lanyard_proto::wire::{self, Audio, ClientMsg};

/// Bytes in one 20 ms Opus frame at 32 kb/s.
const FRAME_LEN: usize = 80;
/// Frames in one reassembly stream: 5 s of audio, a typical utterance.
const STREAM_FRAMES: usize = 250;
/// The minimum BLE ATT MTU, where an 80-byte frame takes several notifications.
const MTU_MIN: usize = 23;
/// A common negotiated ATT MTU (iOS offers 185), where a frame fits in one.
const MTU_IOS: usize = 185;

/// Frame `i` of the stream: varied bytes, so nothing is special-cased on
/// repeated content.
fn frame(i: usize) -> Vec<u8> {
    (0..FRAME_LEN).map(|j| (i.wrapping_mul(31) ^ j.wrapping_mul(7)) as u8).collect()
}

/// The stream's notifications in Lanyard framing, in send order.
fn lanyard_stream(mtu: usize) -> Vec<Vec<u8>> {
    (0..STREAM_FRAMES)
        .flat_map(|i| {
            let data = frame(i);
            let spec = FrameSpec {
                seq: i as u16,
                codec: Codec::Opus16k20ms,
                start: i == 0,
                end: i == STREAM_FRAMES - 1,
                data: &data,
            };
            ble::packetize(&spec, mtu).unwrap()
        })
        .collect()
}

/// The stream's notifications in Omi framing, in send order.
fn omi_stream(mtu: usize) -> Vec<Vec<u8>> {
    let mut index = 0u16;
    let mut out = Vec::new();
    for i in 0..STREAM_FRAMES {
        let notes = omi::packetize(index, &frame(i), mtu);
        index = index.wrapping_add(notes.len() as u16);
        out.extend(notes);
    }
    out
}

/// Feeds every notification and drains every frame; returns frames delivered.
/// Omi's last frame is completed by `flush`, as the relay does when the link
/// goes quiet.
fn reassemble(r: &mut Reassembler, notes: &[Vec<u8>]) -> usize {
    let mut frames = 0;
    for n in notes {
        if let Some(f) = r.push(n).unwrap() {
            black_box(f);
            frames += 1;
        }
        while let Some(f) = r.pop_ready() {
            black_box(f);
            frames += 1;
        }
    }
    if let Some(f) = r.flush() {
        black_box(f);
        frames += 1;
    }
    frames
}

fn ble_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("ble_parse");
    g.throughput(Throughput::Elements(1));
    let fragmented = lanyard_stream(MTU_MIN);
    let whole = lanyard_stream(MTU_IOS);
    // A middle fragment (neither first nor last) and a whole frame.
    for (name, note) in [("fragment_mtu23", &fragmented[1]), ("frame_mtu185", &whole[1])] {
        g.bench_function(name, |b| b.iter(|| black_box(ble::parse(black_box(note)).unwrap())));
    }
    g.finish();
}

/// A reassembly case: its name, the notifications, and how to make a
/// reassembler for them.
type Case = (&'static str, Vec<Vec<u8>>, fn() -> Reassembler);

fn reassembly(c: &mut Criterion) {
    let mut g = c.benchmark_group("reassembly");
    g.throughput(Throughput::Elements(STREAM_FRAMES as u64));
    let cases: [Case; 4] = [
        ("lanyard_mtu23", lanyard_stream(MTU_MIN), Reassembler::lanyard),
        ("lanyard_mtu185", lanyard_stream(MTU_IOS), Reassembler::lanyard),
        ("omi_mtu23", omi_stream(MTU_MIN), || Reassembler::omi(OmiCodec::OpusFs320).unwrap()),
        ("omi_mtu185", omi_stream(MTU_IOS), || Reassembler::omi(OmiCodec::OpusFs320).unwrap()),
    ];
    for (name, notes, new) in &cases {
        // Check once, outside the timing, that every frame comes out whole.
        assert_eq!(reassemble(&mut new(), notes), STREAM_FRAMES, "{name}: every frame is delivered");
        // A fresh reassembler per stream (made outside the timing): a reused
        // one would take the repeated sequence numbers for duplicates.
        g.bench_function(*name, |b| b.iter_batched_ref(new, |r| reassemble(r, notes), BatchSize::SmallInput));
    }
    g.finish();
}

fn wire_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(1));
    let data = frame(7);
    let audio = wire::encode_audio(&Audio { handle: 3, seq: 1234, frame: &data });
    g.bench_function("parse_binary_audio", |b| b.iter(|| black_box(wire::parse_binary(black_box(&audio)).unwrap())));
    let utterance = Uuid::parse_str("0190b5a4-7c1e-7d2a-9f00-3c4b5a6d7e8f").unwrap();
    let open = ClientMsg::Open { utterance, handle: 3, codec: Codec::Opus16k20ms, unmarked: false }.to_json();
    let end = ClientMsg::End { utterance, frames: 250, speech_frames: None }.to_json();
    for (name, text) in [("parse_client_text_open", &open), ("parse_client_text_end", &end)] {
        g.bench_function(name, |b| b.iter(|| black_box(wire::parse_client_text(black_box(text)).unwrap())));
    }
    g.finish();
}

criterion_group!(benches, ble_parse, reassembly, wire_parse);
criterion_main!(benches);
