//! Golden vectors: byte-exact examples of every format, checked both ways.
//!
//! The vectors in `tests/golden/` were written by `tests/golden/generate.py`,
//! an independent implementation of `docs/protocol.md`, and the short ones
//! are worked out by hand in their `why` fields. For each vector this test
//! checks that decoding the bytes gives the value and that encoding the value
//! gives the bytes, so a change to either side of any format shows up here.

use std::path::PathBuf;

use lanyard_proto::ble::{self, Codec, Control, ControlError, FrameError, FrameSpec, Notification};
use lanyard_proto::link::{Decoder, LinkError, Record};
use lanyard_proto::omi::{self, OmiCodec, OmiError, OmiNotification};
use lanyard_proto::reassembly::Reassembler;
use lanyard_proto::wire::{
    self, Ack, Audio, Binary, ClientMsg, DeletedData, DeviceCreated, ErrorBody, NewDevice, PushEnvironment,
    PushPlatform, PushRegistration, Segment, ServerMsg, TextUtterance, Timings, UploadResponse, UtteranceList,
    UtteranceState, UtteranceView, WireError, Word,
};
use lanyard_proto::{Uuid, oggopus};
use serde_json::Value;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn load(name: &str) -> Value {
    let path = golden_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn bytes(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

fn str_of(v: &Value) -> &str {
    v.as_str().expect("string")
}

fn u64_of(v: &Value) -> u64 {
    v.as_u64().expect("unsigned integer")
}

fn codec(v: &Value) -> Codec {
    serde_json::from_value(v.clone()).expect("codec name")
}

fn array<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
    v[key].as_array().unwrap_or_else(|| panic!("{key} is an array"))
}

#[test]
fn ble_notifications() {
    let file = load("ble_notifications.json");
    for v in array(&file, "vectors") {
        let name = str_of(&v["name"]);
        let wire = bytes(&v["hex"]);
        let payload = bytes(&v["payload"]);
        let expected = Notification {
            seq: u64_of(&v["seq"]) as u16,
            fragment: u64_of(&v["fragment"]) as u8,
            codec: codec(&v["codec"]),
            start: v["start"].as_bool().unwrap(),
            end: v["end"].as_bool().unwrap(),
            more: v["more"].as_bool().unwrap(),
            payload: &payload,
        };
        assert_eq!(ble::parse(&wire).as_ref(), Ok(&expected), "{name}: decode");
        let mut out = vec![0xee; 3];
        ble::encode(&expected, &mut out);
        assert_eq!(hex::encode(&out), hex::encode(&wire), "{name}: encode");
    }
    for v in array(&file, "errors") {
        let name = str_of(&v["name"]);
        let err = ble::parse(&bytes(&v["hex"])).expect_err(name);
        let kind = match err {
            FrameError::TooShort(_) => "too_short",
            FrameError::Version(_) => "version",
            FrameError::ReservedFlag => "reserved_flag",
            FrameError::UnknownCodec(_) => "unknown_codec",
        };
        assert_eq!(kind, str_of(&v["error"]), "{name}");
    }
}

#[test]
fn ble_packetize_and_reassemble() {
    let file = load("ble_packetize.json");
    for v in array(&file, "vectors") {
        let name = str_of(&v["name"]);
        let data = bytes(&v["data"]);
        let spec = FrameSpec {
            seq: u64_of(&v["seq"]) as u16,
            codec: codec(&v["codec"]),
            start: v["start"].as_bool().unwrap(),
            end: v["end"].as_bool().unwrap(),
            data: &data,
        };
        let expected: Vec<Vec<u8>> = array(v, "notifications").iter().map(bytes).collect();
        let got = ble::packetize(&spec, u64_of(&v["att_mtu"]) as usize).expect(name);
        assert_eq!(got, expected, "{name}: packetize");

        // Decode direction: the notifications reassemble to the frame.
        let mut r = Reassembler::lanyard();
        let mut frames = Vec::new();
        for n in &expected {
            frames.extend(r.push(n).expect(name));
        }
        assert_eq!(frames.len(), 1, "{name}: one frame");
        let f = &frames[0];
        assert_eq!((f.seq, f.codec, f.start, f.end), (spec.seq, spec.codec, spec.start, spec.end), "{name}");
        assert_eq!(f.data, data, "{name}: data");
    }
}

fn control_of(v: &Value) -> Control {
    match str_of(&v["op"]) {
        "start_stream" => Control::StartStream,
        "stop_stream" => Control::StopStream,
        "set_codec" => Control::SetCodec(codec(&v["codec"])),
        "sync_clock" => Control::SyncClock { unix_ms: u64_of(&v["unix_ms"]) },
        other => panic!("unknown op {other}"),
    }
}

#[test]
fn ble_control() {
    let file = load("ble_control.json");
    for v in array(&file, "vectors") {
        let name = str_of(&v["name"]);
        let wire = bytes(&v["hex"]);
        let expected = control_of(&v["command"]);
        assert_eq!(Control::parse(&wire), Ok(expected), "{name}: decode");
        assert_eq!(expected.encode(), wire, "{name}: encode");
    }
    for v in array(&file, "errors") {
        let name = str_of(&v["name"]);
        let kind = match Control::parse(&bytes(&v["hex"])).expect_err(name) {
            ControlError::Empty => "empty",
            ControlError::UnknownOpcode(_) => "unknown_opcode",
            ControlError::BadLength { .. } => "bad_length",
            ControlError::UnknownCodec(_) => "unknown_codec",
        };
        assert_eq!(kind, str_of(&v["error"]), "{name}");
    }
}

#[test]
fn omi_notifications() {
    let file = load("omi_notifications.json");
    for v in array(&file, "vectors") {
        let name = str_of(&v["name"]);
        let wire = bytes(&v["hex"]);
        let payload = bytes(&v["payload"]);
        let expected = OmiNotification {
            index: u64_of(&v["index"]) as u16,
            sub_index: u64_of(&v["sub_index"]) as u8,
            payload: &payload,
        };
        assert_eq!(omi::parse(&wire).as_ref(), Ok(&expected), "{name}: decode");
        let mut out = Vec::new();
        omi::encode(&expected, &mut out);
        assert_eq!(out, wire, "{name}: encode");
    }
    for v in array(&file, "errors") {
        let name = str_of(&v["name"]);
        let OmiError::TooShort(_) = omi::parse(&bytes(&v["hex"])).expect_err(name);
        assert_eq!(str_of(&v["error"]), "too_short");
    }
}

#[test]
fn omi_packetize_and_reassemble() {
    let file = load("omi_packetize.json");
    let codec = OmiCodec::from_id(u64_of(&file["codec_id"]) as u8).expect("known Omi codec");
    assert_eq!(codec, OmiCodec::OpusFs320);
    assert_eq!(codec.to_lanyard(), Some(Codec::Opus16k20ms));
    let att_mtu = u64_of(&file["att_mtu"]) as usize;
    let expected: Vec<Vec<u8>> = array(&file, "notifications").iter().map(bytes).collect();

    let frames: Vec<(u16, Vec<u8>)> =
        array(&file, "frames").iter().map(|f| (u64_of(&f["first_index"]) as u16, bytes(&f["data"]))).collect();
    let mut got = Vec::new();
    for (first, data) in &frames {
        got.extend(omi::packetize(*first, data, att_mtu));
    }
    assert_eq!(got, expected, "packetize");

    let mut r = Reassembler::omi(codec).unwrap();
    let mut out = Vec::new();
    for n in &expected {
        out.extend(r.push(n).expect("valid notification"));
    }
    out.extend(r.flush());
    let out: Vec<(u16, Vec<u8>)> = out
        .into_iter()
        .map(|f| {
            assert_eq!(f.codec, Codec::Opus16k20ms);
            (f.seq, f.data)
        })
        .collect();
    assert_eq!(out, frames, "reassemble");
    let stats = r.stats();
    assert_eq!((stats.frames, stats.lost, stats.duplicates, stats.incomplete), (3, 0, 0, 0));
}

#[test]
fn wire_binary() {
    let file = load("wire_binary.json");
    for v in array(&file, "vectors") {
        let name = str_of(&v["name"]);
        let wire = bytes(&v["hex"]);
        let frame = if v["kind"] == "audio" { bytes(&v["frame"]) } else { Vec::new() };
        let expected = match str_of(&v["kind"]) {
            "audio" => Binary::Audio(Audio {
                handle: u64_of(&v["handle"]) as u32,
                seq: u64_of(&v["seq"]) as u32,
                frame: &frame,
            }),
            "ack" => Binary::Ack(Ack { handle: u64_of(&v["handle"]) as u32, next: u64_of(&v["next"]) as u32 }),
            other => panic!("unknown kind {other}"),
        };
        assert_eq!(wire::parse_binary(&wire).as_ref(), Ok(&expected), "{name}: decode");
        assert_eq!(expected.encode(), wire, "{name}: encode");
        match &expected {
            Binary::Audio(a) => assert_eq!(wire::encode_audio(a), wire),
            Binary::Ack(a) => assert_eq!(wire::encode_ack(*a).to_vec(), wire),
        }
    }
    for v in array(&file, "errors") {
        let name = str_of(&v["name"]);
        let err = wire::parse_binary(&bytes(&v["hex"])).expect_err(name);
        let kind = match err {
            WireError::Empty => "empty",
            WireError::UnknownKind(_) => "unknown_kind",
            WireError::TooShort { .. } => "too_short",
            WireError::AckLength(_) => "ack_length",
            WireError::FrameTooLarge(_) => "frame_too_large",
            WireError::Json(_) | WireError::TextTooLarge(_) => "text",
        };
        assert_eq!(kind, str_of(&v["error"]), "{name}");
    }
}

const U: &str = "0190d3a4-5b6c-7d8e-9f00-112233445566";

fn utterance() -> Uuid {
    Uuid::parse_str(U).unwrap()
}

fn find<'a>(list: &'a [Value], name: &str) -> &'a str {
    let v = list.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("vector {name}"));
    str_of(&v["json"])
}

/// Checks every vector of `list` has a Rust value, so none goes untested.
fn all_named(list: &[Value], names: &[&str]) {
    let mut in_file: Vec<&str> = list.iter().map(|v| str_of(&v["name"])).collect();
    in_file.sort_unstable();
    let mut in_test = names.to_vec();
    in_test.sort_unstable();
    assert_eq!(in_file, in_test);
}

#[test]
fn wire_client_json() {
    let file = load("wire_json.json");
    let list = array(&file, "client");
    let cases = [
        ("open", ClientMsg::Open { utterance: utterance(), handle: 7, codec: Codec::Opus16k20ms, unmarked: false }),
        ("open_pcm", ClientMsg::Open { utterance: utterance(), handle: 0, codec: Codec::Pcm16k, unmarked: false }),
        (
            "open_unmarked",
            ClientMsg::Open { utterance: utterance(), handle: 7, codec: Codec::Opus16k20ms, unmarked: true },
        ),
        ("end", ClientMsg::End { utterance: utterance(), frames: 150, speech_frames: None }),
        ("end_cut", ClientMsg::End { utterance: utterance(), frames: 150, speech_frames: Some(120) }),
    ];
    all_named(list, &cases.iter().map(|c| c.0).collect::<Vec<_>>());
    for (name, value) in cases {
        let text = find(list, name);
        assert_eq!(wire::parse_client_text(text), Ok(value.clone()), "{name}: decode");
        assert_eq!(value.to_json(), text, "{name}: encode");
    }
    for v in array(&file, "client_errors") {
        let name = str_of(&v["name"]);
        let err = wire::parse_client_text(str_of(&v["json"])).expect_err(name);
        assert!(matches!(err, WireError::Json(_)), "{name}: {err}");
        assert_eq!(err.close_code(), wire::close::PROTOCOL);
    }
    let long = format!("{{\"type\":\"end\",\"utterance\":\"{U}\",\"frames\":1{}}}", " ".repeat(4096));
    assert_eq!(wire::parse_client_text(&long), Err(WireError::TextTooLarge(long.len())));
}

#[test]
fn wire_server_json() {
    let file = load("wire_json.json");
    let list = array(&file, "server");
    let u = utterance();
    let cases = [
        ("opened", ServerMsg::Opened { utterance: u, handle: 7, next_seq: 42, complete: false }),
        ("opened_complete", ServerMsg::Opened { utterance: u, handle: 7, next_seq: 150, complete: true }),
        ("complete", ServerMsg::Complete { utterance: u, frames: 150 }),
        ("partial", ServerMsg::Partial { utterance: u, text: "turn on the".into() }),
        ("endpoint", ServerMsg::Endpoint { utterance: u, frames: 88 }),
        ("final", ServerMsg::Final { utterance: u, text: "Turn on the lights \"now\".".into(), segments: vec![] }),
        (
            "final_segments",
            ServerMsg::Final {
                utterance: u,
                text: "Turn on the lights. Now.".into(),
                segments: vec![
                    Segment {
                        start: 0.0,
                        end: 1.5,
                        text: "Turn on the lights.".into(),
                        words: vec![
                            word("Turn", 0.0, 0.25, 0.75),
                            word("on", 0.25, 0.5, 1.0),
                            word("the", 0.5, 0.75, 0.5),
                            word("lights.", 0.75, 1.5, 0.875),
                        ],
                    },
                    Segment { start: 2.0, end: 2.5, text: "Now.".into(), words: vec![] },
                ],
            },
        ),
        ("reply", ServerMsg::Reply { utterance: u, title: "Lights".into(), body: "Done. Café mode.".into() }),
        (
            "error_utterance",
            ServerMsg::Error {
                utterance: Some(u),
                code: "utterance_too_long".into(),
                message: "an utterance may be at most 30000 frames; end it and start a new one".into(),
            },
        ),
        (
            "error_connection",
            ServerMsg::Error {
                utterance: None,
                code: "unauthorized".into(),
                message: "the bearer token is not valid; register the device again".into(),
            },
        ),
    ];
    all_named(list, &cases.iter().map(|c| c.0).collect::<Vec<_>>());
    for (name, value) in cases {
        let text = find(list, name);
        assert_eq!(wire::parse_server_text(text), Ok(value.clone()), "{name}: decode");
        assert_eq!(value.to_json(), text, "{name}: encode");
    }
}

/// A timed word, for the `segments` vectors.
fn word(word: &str, start: f32, end: f32, probability: f32) -> Word {
    Word { word: word.into(), start, end, probability }
}

fn http_case<T>(list: &[Value], name: &str, value: T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let text = find(list, name);
    assert_eq!(serde_json::from_str::<T>(text).expect(name), value, "{name}: decode");
    assert_eq!(serde_json::to_string(&value).unwrap(), text, "{name}: encode");
}

#[test]
fn http_json() {
    let file = load("wire_json.json");
    let list = array(&file, "http");
    let u = utterance();
    all_named(
        list,
        &[
            "utterance_view",
            "utterance_view_receiving",
            "upload_response",
            "push_registration",
            "push_registration_fcm",
            "push_registration_sandbox",
            "text_utterance",
            "utterance_list",
            "utterance_list_last",
            "deleted_data",
            "new_device",
            "device_created",
            "error_body",
        ],
    );
    http_case(
        list,
        "utterance_view",
        UtteranceView {
            id: u,
            state: UtteranceState::Replied,
            frames: 150,
            transcript: Some("turn on the lights".into()),
            segments: vec![Segment { start: 0.0, end: 1.25, text: "turn on the lights".into(), words: vec![] }],
            reply_title: Some("Lights".into()),
            reply_body: Some("Done.".into()),
            error: None,
            timings: Timings {
                received_end_ms: Some(1_700_000_000_000),
                stt_start_ms: Some(1_700_000_000_010),
                stt_done_ms: Some(1_700_000_000_400),
                reply_ms: Some(1_700_000_000_450),
                push_ms: Some(1_700_000_000_500),
            },
        },
    );
    http_case(
        list,
        "utterance_view_receiving",
        UtteranceView {
            id: u,
            state: UtteranceState::Receiving,
            frames: 3,
            transcript: None,
            segments: vec![],
            reply_title: None,
            reply_body: None,
            error: None,
            timings: Timings::default(),
        },
    );
    // A view from a server older than `segments` still parses, with none.
    let v1 = find(list, "utterance_view_receiving").replace("\"segments\":[],", "");
    assert!(!v1.contains("segments"));
    let old: UtteranceView = serde_json::from_str(&v1).expect("a v1 view");
    assert!(old.segments.is_empty());
    http_case(
        list,
        "upload_response",
        UploadResponse { utterance: u, state: UtteranceState::Complete, frames: 150, added: 108 },
    );
    http_case(
        list,
        "push_registration",
        PushRegistration {
            platform: PushPlatform::Apns,
            token: "a1b2c3".into(),
            environment: PushEnvironment::Production,
        },
    );
    http_case(
        list,
        "push_registration_sandbox",
        PushRegistration {
            platform: PushPlatform::Apns,
            token: "a1b2c3".into(),
            environment: PushEnvironment::Sandbox,
        },
    );
    http_case(
        list,
        "push_registration_fcm",
        PushRegistration { platform: PushPlatform::Fcm, token: "t".into(), environment: PushEnvironment::Production },
    );
    http_case(list, "text_utterance", TextUtterance { text: "call mum".into() });
    http_case(
        list,
        "utterance_list",
        UtteranceList {
            utterances: vec![UtteranceView {
                id: u,
                state: UtteranceState::Receiving,
                frames: 3,
                transcript: None,
                segments: vec![],
                reply_title: None,
                reply_body: None,
                error: None,
                timings: Timings::default(),
            }],
            next_before: Some(u),
        },
    );
    http_case(list, "utterance_list_last", UtteranceList { utterances: vec![], next_before: None });
    http_case(list, "deleted_data", DeletedData { utterances: 12, audio_files: 11 });
    http_case(list, "new_device", NewDevice { name: "kitchen".into() });
    http_case(list, "device_created", DeviceCreated { id: u, name: "kitchen".into(), token: "lyd_AAAA".into() });
    http_case(
        list,
        "error_body",
        ErrorBody { code: "payload_too_large".into(), message: "uploads are at most 4194304 bytes".into() },
    );
    for s in [
        UtteranceState::Receiving,
        UtteranceState::Complete,
        UtteranceState::Transcribed,
        UtteranceState::Replied,
        UtteranceState::Failed,
    ] {
        assert_eq!(UtteranceState::parse(s.as_str()), Some(s));
        assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{}\"", s.as_str()));
    }
}

fn record_of(v: &Value) -> Record {
    match str_of(&v["kind"]) {
        "advertise" => Record::Advertise {
            service: Uuid::parse_str(str_of(&v["service"])).unwrap(),
            att_mtu: u64_of(&v["att_mtu"]) as u16,
            codec: u64_of(&v["codec"]) as u8,
        },
        "notify" => Record::Notify(bytes(&v["payload"])),
        "battery" => Record::Battery(u64_of(&v["level"]) as u8),
        other => panic!("unknown record kind {other}"),
    }
}

#[test]
fn link_records() {
    let file = load("link_records.json");
    let mut stream = Vec::new();
    let mut records = Vec::new();
    for v in array(&file, "vectors") {
        let name = str_of(&v["name"]);
        let wire = bytes(&v["hex"]);
        let expected = record_of(&v["record"]);
        let mut d = Decoder::new();
        d.extend(&wire);
        assert_eq!(d.next_record(), Ok(Some(expected.clone())), "{name}: decode");
        assert_eq!(d.next_record(), Ok(None), "{name}: nothing left");
        assert_eq!(expected.encode(), wire, "{name}: encode");
        stream.extend_from_slice(&wire);
        records.push(expected);
    }
    // The whole stream, one byte at a time.
    let mut d = Decoder::new();
    let mut got = Vec::new();
    for b in &stream {
        d.extend(std::slice::from_ref(b));
        while let Some(r) = d.next_record().unwrap() {
            got.push(r);
        }
    }
    assert_eq!(got, records);
    // The advertised service picks the framing.
    assert_eq!(records[0], Record::Advertise { service: ble::gatt::SERVICE, att_mtu: 185, codec: 0 });
    assert_eq!(records[1], Record::Advertise { service: omi::gatt::SERVICE, att_mtu: 23, codec: 21 });

    for v in array(&file, "errors") {
        let name = str_of(&v["name"]);
        let mut d = Decoder::new();
        d.extend(&bytes(&v["hex"]));
        let kind = match d.next_record().expect_err(name) {
            LinkError::UnknownKind(_) => "unknown_kind",
            LinkError::TooLong(_) => "too_long",
            LinkError::BadLength { .. } => "bad_length",
        };
        assert_eq!(kind, str_of(&v["error"]), "{name}");
    }
}

#[test]
fn ogg_opus_three_packets() {
    let file = load("three_packets.json");
    let ogg = std::fs::read(golden_dir().join(str_of(&file["file"]))).unwrap();
    let packets: Vec<Vec<u8>> = array(&file, "packets").iter().map(bytes).collect();
    assert_eq!(oggopus::read(&ogg).expect("valid Ogg Opus"), packets, "decode");
    let written = oggopus::write(u64_of(&file["serial"]) as u32, packets.iter().map(Vec::as_slice));
    assert_eq!(hex::encode(&written), hex::encode(&ogg), "encode");
}
