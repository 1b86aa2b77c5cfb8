//! Property tests for every format: encode-then-decode round trips, parsers
//! that never panic and re-encode what they accept, and the reassembler's
//! accounting under random loss and duplication.
//!
//! Failing cases are saved under `proptest-regressions/`; commit those files
//! so that every later run replays them first.

use lanyard_proto::ble::{
    self, Codec, Control, FrameSpec, MAX_FRAME_LEN, MAX_NOTIFICATION_LEN, MIN_ATT_MTU, Notification,
};
use lanyard_proto::link::{Decoder, MAX_RECORD, Record};
use lanyard_proto::omi::{self, OmiCodec, OmiNotification};
use lanyard_proto::reassembly::{Frame, LinkStats, REORDER_WINDOW, Reassembler};
use lanyard_proto::wire::{self, Ack, Audio, Binary, ClientMsg, ServerMsg};
use lanyard_proto::{Uuid, oggopus};
use proptest::prelude::*;

fn codec() -> impl Strategy<Value = Codec> {
    prop_oneof![Just(Codec::Opus16k20ms), Just(Codec::Pcm16k)]
}

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

/// Seconds in steps of 1/64 up to about 26 minutes, and probabilities in
/// steps of 1/256: exact in binary, so equality after JSON is exact too.
fn secs() -> impl Strategy<Value = f32> {
    (0u32..100_000).prop_map(|n| n as f32 / 64.0)
}

fn segments() -> impl Strategy<Value = Vec<wire::Segment>> {
    let word = (any::<String>(), secs(), secs(), 0u32..=256).prop_map(|(word, start, end, p)| wire::Word {
        word,
        start,
        end,
        probability: p as f32 / 256.0,
    });
    let segment = (secs(), secs(), any::<String>(), prop::collection::vec(word, 0..3))
        .prop_map(|(start, end, text, words)| wire::Segment { start, end, text, words });
    prop::collection::vec(segment, 0..3)
}

/// Sequence numbers, often close to the wrap so that runs of frames cross it.
fn seq() -> impl Strategy<Value = u16> {
    prop_oneof![any::<u16>(), (0xffe0u16..=0xffff)]
}

fn att_mtu() -> impl Strategy<Value = usize> {
    prop_oneof![MIN_ATT_MTU..=64usize, MIN_ATT_MTU..=517usize]
}

/// What happens to one notification on its way.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    Keep,
    Drop,
    Duplicate,
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![6 => Just(Fate::Keep), 2 => Just(Fate::Drop), 1 => Just(Fate::Duplicate)]
}

fn kept(f: Fate) -> bool {
    f != Fate::Drop
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    // ------------------------------------------------------------ Lanyard BLE

    #[test]
    fn ble_encode_parse(seq: u16, fragment: u8, codec in codec(), start: bool, end: bool, more: bool,
                        payload in prop::collection::vec(any::<u8>(), 0..600)) {
        let n = Notification { seq, fragment, codec, start, end, more, payload: &payload };
        let mut out = Vec::new();
        ble::encode(&n, &mut out);
        prop_assert_eq!(out.len(), ble::HEADER_LEN + payload.len());
        prop_assert_eq!(ble::parse(&out), Ok(n));
    }

    #[test]
    fn ble_parse_never_panics_and_reencodes(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(n) = ble::parse(&bytes) {
            let mut out = Vec::new();
            ble::encode(&n, &mut out);
            prop_assert_eq!(out, bytes);
        }
    }

    #[test]
    fn ble_control_round_trip(c in prop_oneof![
        Just(Control::StartStream),
        Just(Control::StopStream),
        codec().prop_map(Control::SetCodec),
        any::<u64>().prop_map(|unix_ms| Control::SyncClock { unix_ms }),
    ]) {
        prop_assert_eq!(Control::parse(&c.encode()), Ok(c));
    }

    #[test]
    fn ble_control_parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..12)) {
        if let Ok(c) = Control::parse(&bytes) {
            prop_assert_eq!(c.encode(), bytes);
        }
    }

    /// Any frame up to the limit survives any MTU, across the sequence wrap.
    #[test]
    fn ble_packetize_reassemble(
        first_seq in seq(),
        att_mtu in att_mtu(),
        frames in prop::collection::vec(
            (codec(), any::<bool>(), any::<bool>(), prop_oneof![
                prop::collection::vec(any::<u8>(), 0..200),
                prop::collection::vec(any::<u8>(), 0..=MAX_FRAME_LEN),
                prop::collection::vec(any::<u8>(), MAX_FRAME_LEN..=MAX_FRAME_LEN),
            ]),
            1..6),
    ) {
        let mut r = Reassembler::lanyard();
        let mut pushed = 0;
        for (i, (codec, start, end, data)) in frames.iter().enumerate() {
            let spec = FrameSpec { seq: first_seq.wrapping_add(i as u16), codec: *codec, start: *start, end: *end, data };
            let notes = ble::packetize(&spec, att_mtu).unwrap();
            prop_assert!(notes.len() <= ble::MAX_FRAGMENTS);
            let mut got = None;
            for (k, n) in notes.iter().enumerate() {
                prop_assert!(n.len() <= (att_mtu - 3).min(MAX_NOTIFICATION_LEN));
                pushed += 1;
                let out = r.push(n).unwrap();
                prop_assert_eq!(out.is_some(), k + 1 == notes.len());
                got = got.or(out);
            }
            let f = got.unwrap();
            prop_assert_eq!(f, Frame { seq: spec.seq, codec: *codec, start: *start, end: *end, data: data.clone() });
        }
        prop_assert_eq!(r.stats(), LinkStats { notifications: pushed, frames: frames.len() as u64, ..LinkStats::default() });
    }

    #[test]
    fn ble_packetize_rejects_what_it_cannot_send(len in (MAX_FRAME_LEN + 1)..(MAX_FRAME_LEN + 64), att_mtu in 0..MIN_ATT_MTU) {
        let data = vec![0; len];
        let spec = FrameSpec { seq: 0, codec: Codec::Pcm16k, start: false, end: false, data: &data };
        prop_assert!(ble::packetize(&spec, 517).is_err());
        let spec = FrameSpec { data: &[], ..spec };
        prop_assert!(ble::packetize(&spec, att_mtu).is_err());
    }

    /// Drops and duplicates notifications at random. The first and last
    /// frames always arrive, so that every hole lies between two delivered
    /// frames. Frames delivered must be exactly the frames all of whose
    /// notifications arrived, and each counter must match what was done.
    #[test]
    fn ble_reassembler_accounting(
        first_seq in seq(),
        att_mtu in MIN_ATT_MTU..48usize,
        frames in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..100), prop::collection::vec(fate(), 8)), 2..24),
    ) {
        let last = frames.len() - 1;
        let mut r = Reassembler::lanyard();
        let mut expected = LinkStats::default();
        let mut want = Vec::new();
        let mut got = Vec::new();
        for (i, (data, fates)) in frames.iter().enumerate() {
            let seq = first_seq.wrapping_add(i as u16);
            let spec = FrameSpec { seq, codec: Codec::Opus16k20ms, start: i == 0, end: i == last, data };
            let notes = ble::packetize(&spec, att_mtu).unwrap();
            let fates: Vec<Fate> = (0..notes.len())
                .map(|k| {
                    let f = fates[k % fates.len()];
                    if (i == 0 || i == last) && f == Fate::Drop { Fate::Keep } else { f }
                })
                .collect();
            let arrived = fates.iter().filter(|f| kept(**f)).count();
            if arrived == notes.len() {
                expected.frames += 1;
                want.push(Frame { seq, codec: spec.codec, start: spec.start, end: spec.end, data: data.clone() });
            } else if arrived == 0 {
                expected.lost += 1;
            } else {
                expected.incomplete += 1;
                expected.lost += 1;
            }
            for (n, fate) in notes.iter().zip(&fates) {
                let copies = match fate { Fate::Keep => 1, Fate::Drop => 0, Fate::Duplicate => 2 };
                for _ in 0..copies {
                    expected.notifications += 1;
                    // Errors report holes; they are counted, not fatal.
                    if let Ok(Some(f)) = r.push(n) {
                        got.push(f);
                    }
                    got.extend(std::iter::from_fn(|| r.pop_ready()));
                }
                if copies == 2 {
                    expected.duplicates += 1;
                }
            }
        }
        // Frames held behind a gap come out when the link goes quiet.
        got.extend(r.flush());
        got.extend(std::iter::from_fn(|| r.pop_ready()));
        prop_assert_eq!(got, want);
        prop_assert_eq!(r.stats(), expected);
    }

    /// Whole frames delivered out of order within the reorder window come
    /// out in order, with nothing counted lost; a gap wider than the window
    /// is counted lost once it is given up on.
    #[test]
    fn ble_reorder_window(
        first_seq in seq(),
        n in 2usize..40,
        swaps in prop::collection::vec((0usize..40, 1usize..=REORDER_WINDOW), 0..10),
    ) {
        let frames: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; 1 + i % 5]).collect();
        let notes: Vec<Vec<u8>> = frames
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let spec = FrameSpec { seq: first_seq.wrapping_add(i as u16), codec: Codec::Opus16k20ms, start: i == 0, end: i == n - 1, data: d };
                ble::packetize(&spec, 185).unwrap().remove(0)
            })
            .collect();
        // Swap neighbours at most REORDER_WINDOW apart, never the first frame.
        let mut order: Vec<usize> = (0..n).collect();
        for (at, by) in swaps {
            let a = 1 + at % (n - 1);
            let b = (a + by).min(n - 1);
            order.swap(a, b);
        }
        // Out of order by more than the window only if some frame moved that far.
        let displaced = order.iter().enumerate().map(|(pos, &i)| pos.abs_diff(i)).max().unwrap_or(0);
        let mut r = Reassembler::lanyard();
        let mut got = Vec::new();
        for &i in &order {
            got.extend(r.push(&notes[i]).unwrap());
            got.extend(std::iter::from_fn(|| r.pop_ready()));
        }
        got.extend(r.flush());
        got.extend(std::iter::from_fn(|| r.pop_ready()));
        let seqs: Vec<u16> = got.iter().map(|f| f.seq).collect();
        let mut sorted = seqs.clone();
        sorted.sort_by_key(|s| ble::seq_distance(first_seq, *s));
        prop_assert_eq!(&seqs, &sorted, "frames come out in sequence order");
        if displaced <= REORDER_WINDOW {
            prop_assert_eq!(got.len(), n, "every frame delivered");
            prop_assert_eq!(r.stats().lost, 0);
        }
        prop_assert_eq!(r.stats().frames as usize + r.stats().duplicates as usize, n);
        prop_assert_eq!(r.stats().frames as usize, got.len());
    }

    // ------------------------------------------------------------ Omi

    #[test]
    fn omi_encode_parse(index: u16, sub_index: u8, payload in prop::collection::vec(any::<u8>(), 0..600)) {
        let n = OmiNotification { index, sub_index, payload: &payload };
        let mut out = Vec::new();
        omi::encode(&n, &mut out);
        prop_assert_eq!(omi::parse(&out), Ok(n));
    }

    #[test]
    fn omi_parse_never_panics_and_reencodes(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(n) = omi::parse(&bytes) {
            let mut out = Vec::new();
            omi::encode(&n, &mut out);
            prop_assert_eq!(out, bytes);
        }
    }

    #[test]
    fn omi_packetize_reassemble(
        first_index in seq(),
        att_mtu in att_mtu(),
        frames in prop::collection::vec(prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            prop::collection::vec(any::<u8>(), 0..=MAX_FRAME_LEN),
        ], 1..6),
        pcm: bool,
    ) {
        let codec = if pcm { OmiCodec::Pcm16 } else { OmiCodec::OpusFs320 };
        let mut r = Reassembler::omi(codec).unwrap();
        let mut index = first_index;
        let mut want = Vec::new();
        let mut got = Vec::new();
        for data in &frames {
            let notes = omi::packetize(index, data, att_mtu);
            prop_assert!(notes.len() <= 256);
            want.push(Frame { seq: index, codec: codec.to_lanyard().unwrap(), start: false, end: false, data: data.clone() });
            index = index.wrapping_add(notes.len() as u16);
            for n in &notes {
                prop_assert!(n.len() <= (att_mtu - 3).min(MAX_NOTIFICATION_LEN));
                got.extend(r.push(n).unwrap());
            }
        }
        got.extend(r.flush());
        prop_assert_eq!(got, want);
        let s = r.stats();
        prop_assert_eq!((s.frames, s.lost, s.duplicates, s.incomplete, s.malformed), (frames.len() as u64, 0, 0, 0, 0));
    }

    /// As for Lanyard, with Omi's rules: a frame is delivered when all its
    /// notifications and the first notification of the next frame arrived
    /// (the last frame is delivered by `flush`), and `lost` counts
    /// notifications.
    #[test]
    fn omi_reassembler_accounting(
        first_index in seq(),
        att_mtu in MIN_ATT_MTU..48usize,
        frames in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..100), prop::collection::vec(fate(), 8)), 2..24),
    ) {
        let last = frames.len() - 1;
        let mut r = Reassembler::omi(OmiCodec::OpusFs320).unwrap();
        let mut expected = LinkStats::default();
        let mut index = first_index;
        // Per frame: its notifications and their fates.
        let mut plan = Vec::new();
        for (i, (data, fates)) in frames.iter().enumerate() {
            let notes = omi::packetize(index, data, att_mtu);
            let fates: Vec<Fate> = (0..notes.len())
                .map(|k| {
                    let f = fates[k % fates.len()];
                    if (i == 0 || i == last) && f == Fate::Drop { Fate::Keep } else { f }
                })
                .collect();
            plan.push((index, data.clone(), notes, fates));
            index = index.wrapping_add(plan[i].2.len() as u16);
        }
        let mut want = Vec::new();
        for (i, (index, data, notes, fates)) in plan.iter().enumerate() {
            let arrived = fates.iter().filter(|f| kept(**f)).count();
            let next_start_arrived = i == last || kept(plan[i + 1].3[0]);
            if arrived == notes.len() && next_start_arrived {
                expected.frames += 1;
                want.push(Frame { seq: *index, codec: Codec::Opus16k20ms, start: false, end: false, data: data.clone() });
            } else if arrived > 0 {
                expected.incomplete += 1;
            }
            expected.lost += (notes.len() - arrived) as u64;
        }
        let mut got = Vec::new();
        for (_, _, notes, fates) in &plan {
            for (n, fate) in notes.iter().zip(fates) {
                let copies = match fate { Fate::Keep => 1, Fate::Drop => 0, Fate::Duplicate => 2 };
                for _ in 0..copies {
                    expected.notifications += 1;
                    got.extend(r.push(n).unwrap());
                }
                if copies == 2 {
                    expected.duplicates += 1;
                }
            }
        }
        got.extend(r.flush());
        prop_assert_eq!(got, want);
        prop_assert_eq!(r.stats(), expected);
    }

    /// Arbitrary notifications, either framing: no panic, bounded frames,
    /// and the counters add up.
    #[test]
    fn reassembler_never_panics(omi: bool, notes in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..64)) {
        let mut r = if omi { Reassembler::omi(OmiCodec::Pcm16).unwrap() } else { Reassembler::lanyard() };
        let mut frames = 0;
        for n in &notes {
            if let Ok(Some(f)) = r.push(n) {
                prop_assert!(f.data.len() <= MAX_FRAME_LEN);
                frames += 1;
            }
            if n.len() % 7 == 0 {
                frames += u64::from(r.flush().is_some());
            }
            frames += std::iter::from_fn(|| r.pop_ready()).count() as u64;
        }
        let s = r.stats();
        prop_assert_eq!(s.notifications, notes.len() as u64);
        prop_assert_eq!(s.frames, frames);
        prop_assert!(s.malformed + s.duplicates <= s.notifications);
    }

    // ------------------------------------------------------------ wire

    #[test]
    fn wire_audio_round_trip(handle: u32, seq: u32, frame in prop::collection::vec(any::<u8>(), 0..=wire::limits::MAX_FRAME_BYTES)) {
        let a = Binary::Audio(Audio { handle, seq, frame: &frame });
        let bytes = a.encode();
        prop_assert_eq!(bytes.len(), wire::AUDIO_HEADER_LEN + frame.len());
        prop_assert_eq!(wire::parse_binary(&bytes), Ok(a));
    }

    #[test]
    fn wire_ack_round_trip(handle: u32, next: u32) {
        let a = Ack { handle, next };
        let bytes = wire::encode_ack(a);
        prop_assert_eq!(wire::parse_binary(&bytes), Ok(Binary::Ack(a)));
    }

    #[test]
    fn wire_binary_never_panics_and_reencodes(bytes in prop::collection::vec(any::<u8>(), 0..32)) {
        if let Ok(b) = wire::parse_binary(&bytes) {
            prop_assert_eq!(b.encode(), bytes);
        }
    }

    #[test]
    fn wire_client_json_round_trip(m in prop_oneof![
        (uuid(), any::<u32>(), codec(), any::<bool>())
            .prop_map(|(utterance, handle, codec, unmarked)| ClientMsg::Open { utterance, handle, codec, unmarked }),
        (uuid(), any::<u32>(), any::<Option<u32>>()).prop_map(|(utterance, frames, speech_frames)| ClientMsg::End { utterance, frames, speech_frames }),
    ]) {
        prop_assert_eq!(wire::parse_client_text(&m.to_json()), Ok(m));
    }

    #[test]
    fn wire_server_json_round_trip(m in prop_oneof![
        (uuid(), any::<u32>(), any::<u32>(), any::<bool>()).prop_map(|(utterance, handle, next_seq, complete)| ServerMsg::Opened { utterance, handle, next_seq, complete }),
        (uuid(), any::<u32>()).prop_map(|(utterance, frames)| ServerMsg::Complete { utterance, frames }),
        (uuid(), any::<String>()).prop_map(|(utterance, text)| ServerMsg::Partial { utterance, text }),
        (uuid(), any::<u32>()).prop_map(|(utterance, frames)| ServerMsg::Endpoint { utterance, frames }),
        (uuid(), any::<String>(), segments()).prop_map(|(utterance, text, segments)| ServerMsg::Final { utterance, text, segments }),
        (uuid(), any::<String>(), any::<String>()).prop_map(|(utterance, title, body)| ServerMsg::Reply { utterance, title, body }),
        (prop::option::of(uuid()), any::<String>(), any::<String>()).prop_map(|(utterance, code, message)| ServerMsg::Error { utterance, code, message }),
    ]) {
        prop_assert_eq!(wire::parse_server_text(&m.to_json()), Ok(m));
    }

    #[test]
    fn wire_json_never_panics(s in any::<String>(), t in "\\{\"type\":\"(open|end|opened|error)\"[ -~]{0,80}\\}") {
        for text in [&s, &t] {
            if let Ok(m) = wire::parse_client_text(text) {
                prop_assert_eq!(wire::parse_client_text(&m.to_json()), Ok(m));
            }
            if let Ok(m) = wire::parse_server_text(text) {
                prop_assert_eq!(wire::parse_server_text(&m.to_json()), Ok(m));
            }
        }
    }

    // ------------------------------------------------------------ Ogg Opus

    #[test]
    fn oggopus_round_trip(serial: u32, packets in prop::collection::vec(prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..120),
        1 => prop::collection::vec(any::<u8>(), 0..=MAX_FRAME_LEN),
    ], 0..130)) {
        let file = oggopus::write(serial, packets.iter().map(Vec::as_slice));
        prop_assert_eq!(oggopus::read(&file).unwrap(), packets);
    }

    #[test]
    fn oggopus_read_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = oggopus::read(&bytes);
    }

    /// Damage a valid file: the reader may refuse it but must not panic, and
    /// a truncated file never yields more packets than were written.
    #[test]
    fn oggopus_read_damaged(packets in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..60),
                            at in any::<prop::sample::Index>(), byte: u8, cut: bool) {
        let mut file = oggopus::write(1, packets.iter().map(Vec::as_slice));
        let i = at.index(file.len());
        if cut {
            file.truncate(i);
        } else {
            file[i] = byte;
        }
        if let Ok(got) = oggopus::read(&file) {
            prop_assert!(got.len() <= packets.len());
        }
    }

    // ------------------------------------------------------------ link

    #[test]
    fn link_round_trip_any_split(records in prop::collection::vec(prop_oneof![
        (uuid(), any::<u16>(), any::<u8>()).prop_map(|(service, att_mtu, codec)| Record::Advertise { service, att_mtu, codec }),
        prop::collection::vec(any::<u8>(), 0..=MAX_RECORD).prop_map(Record::Notify),
        any::<u8>().prop_map(Record::Battery),
    ], 0..12), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8)) {
        let stream: Vec<u8> = records.iter().flat_map(Record::encode).collect();
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        cuts.push(0);
        cuts.push(stream.len());
        cuts.sort_unstable();
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for w in cuts.windows(2) {
            d.extend(&stream[w[0]..w[1]]);
            while let Some(r) = d.next_record().unwrap() {
                got.push(r);
            }
        }
        prop_assert_eq!(got, records);
    }

    #[test]
    fn link_decoder_never_panics(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..8)) {
        let mut d = Decoder::new();
        'outer: for c in &chunks {
            d.extend(c);
            loop {
                match d.next_record() {
                    Ok(Some(r)) => {
                        if let Record::Notify(n) = &r { prop_assert!(n.len() <= MAX_RECORD); }
                    }
                    Ok(None) => break,
                    Err(_) => break 'outer,
                }
            }
        }
    }
}
