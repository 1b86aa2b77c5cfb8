//! Bodies of the fuzz targets, one function per parser of untrusted bytes.
//!
//! Each function takes arbitrary bytes, must never panic except through a
//! failed invariant assertion, and asserts what must hold for any input:
//! mostly that whatever a parser accepts encodes back to the same bytes (or
//! to a value that parses to the same thing). The `fuzz_targets/` binaries
//! are one-line wrappers for libFuzzer; keeping the bodies here lets the
//! stable-toolchain test in `tests/smoke.rs` run them too.

use lanyard_proto::ble::{self, Control, MAX_FRAME_LEN};
use lanyard_proto::link::{Decoder, MAX_RECORD};
use lanyard_proto::omi::{self, OmiCodec};
use lanyard_proto::reassembly::Reassembler;
use lanyard_proto::{oggopus, wire};

/// Lanyard notification header: anything accepted re-encodes to the input.
pub fn ble_notification(data: &[u8]) {
    if let Ok(n) = ble::parse(data) {
        assert_eq!(n.payload.len() + ble::HEADER_LEN, data.len());
        let mut out = Vec::new();
        ble::encode(&n, &mut out);
        assert_eq!(out, data, "parse then encode changed the bytes");
    }
}

/// Control writes: anything accepted re-encodes to the input.
pub fn ble_control(data: &[u8]) {
    if let Ok(c) = Control::parse(data) {
        assert_eq!(c.encode(), data, "parse then encode changed the bytes");
    }
}

/// Omi notification header: anything accepted re-encodes to the input.
pub fn omi_notification(data: &[u8]) {
    if let Ok(n) = omi::parse(data) {
        let mut out = Vec::new();
        omi::encode(&n, &mut out);
        assert_eq!(out, data, "parse then encode changed the bytes");
    }
}

/// A sequence of notifications into either reassembler.
///
/// Byte 0 picks the framing (even: Lanyard; odd: Omi with PCM16 or Opus).
/// The rest is a list of `len | bytes` items; a length byte of 0xff flushes
/// and 0xfe resets the link instead. Invariants: frames are at most
/// [`MAX_FRAME_LEN`] bytes; the counters match what was pushed and emitted;
/// Lanyard never emits a sequence number that is not ahead of the last one.
pub fn reassembler(data: &[u8]) {
    let Some((&mode, mut rest)) = data.split_first() else { return };
    let lanyard = mode % 2 == 0;
    let mut r = if lanyard {
        Reassembler::lanyard()
    } else {
        let codec = if mode & 2 == 0 { OmiCodec::Pcm16 } else { OmiCodec::OpusFs320 };
        Reassembler::omi(codec).expect("relay-carried codec")
    };
    let (mut pushed, mut emitted) = (0u64, 0u64);
    let mut last_seq: Option<u16> = None;
    let check = |f: &lanyard_proto::reassembly::Frame, last_seq: &mut Option<u16>| {
        assert!(f.data.len() <= MAX_FRAME_LEN);
        if let Some(last) = *last_seq {
            assert!(ble::seq_distance(last, f.seq) > 0, "frame {} emitted after {last}", f.seq);
        }
        *last_seq = Some(f.seq);
    };
    while let Some((&len, tail)) = rest.split_first() {
        match len {
            0xff => {
                if let Some(f) = r.flush() {
                    check(&f, &mut last_seq);
                    emitted += 1;
                }
                rest = tail;
            }
            0xfe => {
                r.reset_link();
                // Frames held for a reorder come out on reset, before the
                // numbering starts afresh.
                while let Some(f) = r.pop_ready() {
                    check(&f, &mut last_seq);
                    emitted += 1;
                }
                last_seq = None;
                rest = tail;
            }
            _ => {
                let (n, tail) = tail.split_at(usize::from(len).min(tail.len()));
                pushed += 1;
                if let Ok(Some(f)) = r.push(n) {
                    check(&f, &mut last_seq);
                    emitted += 1;
                }
                rest = tail;
            }
        }
        while let Some(f) = r.pop_ready() {
            check(&f, &mut last_seq);
            emitted += 1;
        }
    }
    let s = r.stats();
    assert_eq!(s.notifications, pushed);
    assert_eq!(s.frames, emitted);
    assert!(s.malformed + s.duplicates <= s.notifications);
}

/// AUDIO/ACK messages: anything accepted re-encodes to the input.
pub fn wire_binary(data: &[u8]) {
    if let Ok(b) = wire::parse_binary(data) {
        if let wire::Binary::Audio(a) = &b {
            assert!(a.frame.len() <= wire::limits::MAX_FRAME_BYTES);
        }
        assert_eq!(b.encode(), data, "parse then encode changed the bytes");
    }
}

/// Relay control JSON: anything accepted serializes to text that parses to
/// the same message and is stable under a second round trip.
pub fn wire_client_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(m) = wire::parse_client_text(text) {
        let json = m.to_json();
        assert_eq!(wire::parse_client_text(&json).as_ref(), Ok(&m));
        assert_eq!(wire::parse_client_text(&json).map(|m| m.to_json()), Ok(json));
    }
}

/// Server control JSON, as the relay parses it: same invariants.
pub fn wire_server_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(m) = wire::parse_server_text(text) {
        let json = m.to_json();
        assert_eq!(wire::parse_server_text(&json).as_ref(), Ok(&m));
        assert_eq!(wire::parse_server_text(&json).map(|m| m.to_json()), Ok(json));
    }
}

/// Uploaded Ogg Opus: accepted packets respect the limits, and writing them
/// again gives a file that reads back to the same packets.
pub fn oggopus_read(data: &[u8]) {
    if let Ok(packets) = oggopus::read(data) {
        assert!(packets.len() <= oggopus::MAX_PACKETS);
        assert!(packets.iter().all(|p| p.len() <= MAX_FRAME_LEN));
        let again = oggopus::write(1, packets.iter().map(Vec::as_slice));
        assert_eq!(oggopus::read(&again).expect("our own output reads"), packets);
    }
}

/// Opus packets' durations from their TOC byte: at most 120 ms, and the
/// total of a list is the sum of what each packet claims.
pub fn opus_toc(data: &[u8]) {
    use lanyard_proto::opus_toc;
    if let Ok(samples) = opus_toc::packet_samples(data) {
        assert!(samples > 0 && samples <= opus_toc::MAX_PACKET_SAMPLES);
    }
    let packets: Vec<&[u8]> = data.split(|&b| b == 0xFF).collect();
    if let Ok(secs) = opus_toc::duration_secs(packets.iter().copied()) {
        let sum: u32 = packets.iter().map(|p| opus_toc::packet_samples(p).expect("each packet read")).sum();
        assert!((secs - f64::from(sum) / 48_000.0).abs() < 1e-9);
    }
}

/// Checksummed records (the spool's and the server's audio files, read
/// back after a crash): the records read are a prefix that ends within the
/// input, and writing them again gives exactly that prefix.
pub fn record_read(data: &[u8]) {
    use lanyard_proto::record;
    let mut records = record::read(data, 0..=4096);
    let bodies: Vec<&[u8]> = records.by_ref().collect();
    let intact = records.intact_len();
    assert!(intact <= data.len());
    let mut again = Vec::new();
    for b in &bodies {
        assert!(b.len() <= 4096);
        record::push(&mut again, b);
    }
    assert_eq!(again, data[..intact], "the intact prefix is exactly the records read");
}

/// Uploaded WAV: accepted frames are whole 20 ms frames but the last, and
/// writing them again gives a file that reads back to the same frames.
pub fn wav_read(data: &[u8]) {
    if let Ok(frames) = lanyard_proto::wav::read(data) {
        let n = frames.len();
        assert!(frames.iter().take(n.saturating_sub(1)).all(|f| f.len() == lanyard_proto::wav::FRAME_BYTES));
        let again = lanyard_proto::wav::write(frames.iter().map(Vec::as_slice));
        assert_eq!(lanyard_proto::wav::read(&again).expect("our own output reads"), frames);
    }
}

/// Simulated-radio records, fed in pieces: byte 0 sets the piece size. The
/// records decoded re-encode to exactly the bytes they were decoded from.
pub fn link_decoder(data: &[u8]) {
    let Some((&step, stream)) = data.split_first() else { return };
    let step = usize::from(step).max(1);
    let mut d = Decoder::new();
    let mut reencoded = Vec::new();
    'feed: for piece in stream.chunks(step) {
        d.extend(piece);
        loop {
            match d.next_record() {
                Ok(Some(r)) => {
                    if let lanyard_proto::link::Record::Notify(n) = &r {
                        assert!(n.len() <= MAX_RECORD);
                    }
                    reencoded.extend(r.encode());
                }
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }
    assert_eq!(reencoded, stream[..reencoded.len()], "records re-encode to their bytes");
}
