//! A stable-toolchain stand-in for fuzzing: runs every target body over the
//! golden vectors, valid inputs built with the encoders, and random bytes and
//! random mutations of those, for a short while each.
//!
//! `LANYARD_FUZZ_SECS` sets the time per target (default 1 second). This
//! finds shallow bugs only; real coverage-guided fuzzing is in README.md.

use std::path::Path;
use std::time::{Duration, Instant};

use lanyard_proto::ble::{self, Codec, Control, FrameSpec};
use lanyard_proto::link::Record;
use lanyard_proto::wire::{self, Ack, Audio, Binary, ClientMsg, ServerMsg};
use lanyard_proto::{Uuid, oggopus, omi};

/// xorshift64*: deterministic, dependency-free randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// Flips, overwrites, inserts, deletes or truncates a few bytes.
    fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut v = seed.to_vec();
        for _ in 0..=self.below(4) {
            let at = self.below(v.len() + 1);
            match self.below(5) {
                0 if at < v.len() => v[at] ^= 1 << self.below(8),
                1 if at < v.len() => v[at] = self.next() as u8,
                2 => v.insert(at, self.next() as u8),
                3 if at < v.len() => {
                    v.remove(at);
                }
                _ => v.truncate(at),
            }
        }
        v
    }
}

fn secs() -> Duration {
    let s = std::env::var("LANYARD_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    Duration::from_secs_f64(s)
}

/// Hex strings from every golden vector file, decoded.
fn golden_hex() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/lanyard-proto/tests/golden");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("golden vectors") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            // Every quoted run of hex digits is a candidate input.
            for s in text.split('"').filter(|s| !s.is_empty() && s.len() % 2 == 0) {
                if let Ok(b) = hex_decode(s) {
                    out.push(b);
                }
            }
        }
    }
    out
}

fn hex_decode(s: &str) -> Result<Vec<u8>, ()> {
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or(())).collect()
}

fn run(name: &str, target: fn(&[u8]), seeds: &[Vec<u8>]) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
    for s in seeds {
        target(s);
    }
    let deadline = Instant::now() + secs();
    let mut runs = 0u64;
    while Instant::now() < deadline {
        let input = if seeds.is_empty() || rng.below(4) == 0 {
            rng.bytes(256)
        } else {
            let pick = rng.below(seeds.len());
            rng.mutate(&seeds[pick])
        };
        target(&input);
        runs += 1;
    }
    eprintln!("{name}: {} seeds, {runs} random inputs", seeds.len());
}

fn uuid() -> Uuid {
    Uuid::from_u128(0x0190_d3a4_5b6c_7d8e_9f00_1122_3344_5566)
}

#[test]
fn ble_notification() {
    let mut seeds = golden_hex();
    for mtu in [23, 30, 185] {
        let data: Vec<u8> = (0..200).map(|i| i as u8).collect();
        let spec = FrameSpec { seq: 0xffff, codec: Codec::Pcm16k, start: true, end: true, data: &data };
        seeds.extend(ble::packetize(&spec, mtu).unwrap());
    }
    run("ble_notification", lanyard_fuzz::ble_notification, &seeds);
}

#[test]
fn ble_control() {
    let mut seeds = golden_hex();
    seeds.extend(
        [
            Control::StartStream,
            Control::StopStream,
            Control::SetCodec(Codec::Pcm16k),
            Control::SyncClock { unix_ms: 1 },
        ]
        .iter()
        .map(Control::encode),
    );
    run("ble_control", lanyard_fuzz::ble_control, &seeds);
}

#[test]
fn omi_notification() {
    let mut seeds = golden_hex();
    seeds.extend(omi::packetize(0xfffe, &[7; 100], 23));
    run("omi_notification", lanyard_fuzz::omi_notification, &seeds);
}

#[test]
fn reassembler() {
    // Build inputs in the target's own format: mode byte, then len | bytes.
    let mut seeds = Vec::new();
    for mode in [0u8, 1, 3] {
        let mut input = vec![mode];
        let data: Vec<u8> = (0..90).map(|i| i as u8).collect();
        for seq in 0xfffeu16..=0xffff {
            let notes = if mode == 0 {
                let spec = FrameSpec { seq, codec: Codec::Opus16k20ms, start: false, end: false, data: &data };
                ble::packetize(&spec, 40).unwrap()
            } else {
                omi::packetize(seq.wrapping_mul(8), &data, 40)
            };
            for n in notes {
                input.push(n.len() as u8);
                input.extend(n);
            }
        }
        input.push(0xff);
        seeds.push(input);
    }
    run("reassembler", lanyard_fuzz::reassembler, &seeds);
}

#[test]
fn wire_binary() {
    let mut seeds = golden_hex();
    seeds.push(Binary::Audio(Audio { handle: 1, seq: 2, frame: &[3; 80] }).encode());
    seeds.push(Binary::Ack(Ack { handle: 1, next: 2 }).encode());
    run("wire_binary", lanyard_fuzz::wire_binary, &seeds);
}

#[test]
fn wire_client_json() {
    let seeds: Vec<Vec<u8>> = [
        ClientMsg::Open { utterance: uuid(), handle: 7, codec: Codec::Opus16k20ms, unmarked: false },
        ClientMsg::Open { utterance: uuid(), handle: 7, codec: Codec::Opus16k20ms, unmarked: true },
        ClientMsg::End { utterance: uuid(), frames: 150, speech_frames: None },
        ClientMsg::End { utterance: uuid(), frames: 150, speech_frames: Some(120) },
    ]
    .iter()
    .map(|m| m.to_json().into_bytes())
    .collect();
    run("wire_client_json", lanyard_fuzz::wire_client_json, &seeds);
}

#[test]
fn wire_server_json() {
    let seeds: Vec<Vec<u8>> = [
        ServerMsg::Opened { utterance: uuid(), handle: 7, next_seq: 3, complete: false },
        ServerMsg::Complete { utterance: uuid(), frames: 3 },
        ServerMsg::Final { utterance: uuid(), text: "hé \"x\"".into(), segments: vec![] },
        ServerMsg::Final {
            utterance: uuid(),
            text: "hé".into(),
            segments: vec![wire::Segment {
                start: 0.5,
                end: 1.25,
                text: "hé".into(),
                words: vec![wire::Word { word: "hé".into(), start: 0.5, end: 1.25, probability: 0.75 }],
            }],
        },
        ServerMsg::Reply { utterance: uuid(), title: "t".into(), body: "b".into() },
        ServerMsg::Error { utterance: None, code: "c".into(), message: "m".into() },
    ]
    .iter()
    .map(|m| m.to_json().into_bytes())
    .collect();
    run("wire_server_json", lanyard_fuzz::wire_server_json, &seeds);
    let _ = wire::STREAM_PATH;
}

#[test]
fn oggopus_read() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/lanyard-proto/tests/golden/three_packets.ogg");
    let mut seeds = vec![std::fs::read(golden).unwrap()];
    seeds.push(oggopus::write(5, [&[1u8, 2, 3][..], &[], &[4; 600]]));
    seeds.push(oggopus::write(6, std::iter::empty()));
    run("oggopus_read", lanyard_fuzz::oggopus_read, &seeds);
}

#[test]
fn opus_toc() {
    let seeds = vec![vec![0x48, 0xAA], vec![0x1B, 0x02], vec![0xFB, 0xC6, 0xFF, 0x48], vec![0x03, 0x00]];
    run("opus_toc", lanyard_fuzz::opus_toc, &seeds);
}

#[test]
fn record_read() {
    let mut two = Vec::new();
    lanyard_proto::record::push(&mut two, b"frame one");
    lanyard_proto::record::push(&mut two, &[0u8; 80]);
    let torn = two[..two.len() - 3].to_vec();
    run("record_read", lanyard_fuzz::record_read, &[two, torn, Vec::new()]);
}

#[test]
fn wav_read() {
    let seeds =
        vec![lanyard_proto::wav::write([&[1u8; 640][..], &[2u8; 10]]), lanyard_proto::wav::write(std::iter::empty())];
    run("wav_read", lanyard_fuzz::wav_read, &seeds);
}

#[test]
fn link_decoder() {
    let mut stream = vec![3u8];
    for r in [
        Record::Advertise { service: ble::gatt::SERVICE, att_mtu: 185, codec: 0 },
        Record::Notify(vec![0x11, 0, 0, 0, 1, 0xfc]),
        Record::Battery(80),
    ] {
        stream.extend(r.encode());
    }
    run("link_decoder", lanyard_fuzz::link_decoder, &[stream]);
}
