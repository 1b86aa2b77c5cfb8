//! The relay's events as `lanyard relay` prints them (a [`Stamped`] JSON
//! line each) and as the demo, the campaign and the tests read them back:
//! every variant, its exact JSON, and the round trip. The JSON is a contract
//! (docs/ffi.md, scripts and readers in other languages), so a renamed field
//! or tag fails here first.

use lanyard_relay::host::Stamped;
use lanyard_relay::uplink::{RelayEvent, RelayStats};
use serde_json::{Value, json};
use uuid::Uuid;

fn table() -> Vec<(RelayEvent, Value)> {
    let id = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);
    let ids = id.to_string();
    vec![
        (RelayEvent::Connected, json!({"event": "connected"})),
        (
            RelayEvent::Disconnected { reason: "reset".into(), retry_in_ms: 250 },
            json!({"event": "disconnected", "reason": "reset", "retry_in_ms": 250}),
        ),
        (RelayEvent::UtteranceStarted { id }, json!({"event": "utterance_started", "id": ids})),
        (
            RelayEvent::UtteranceEnded { id, frames: 150, lost: 2 },
            json!({"event": "utterance_ended", "id": ids, "frames": 150, "lost": 2}),
        ),
        (RelayEvent::Complete { id, frames: 150 }, json!({"event": "complete", "id": ids, "frames": 150})),
        (RelayEvent::Partial { id, text: "turn".into() }, json!({"event": "partial", "id": ids, "text": "turn"})),
        (
            RelayEvent::Final { id, text: "turn on the lights".into() },
            json!({"event": "final", "id": ids, "text": "turn on the lights"}),
        ),
        (
            RelayEvent::Reply { id, title: "Lights".into(), body: "Done. Café mode.".into() },
            json!({"event": "reply", "id": ids, "title": "Lights", "body": "Done. Café mode."}),
        ),
        (
            RelayEvent::Error { id: None, code: "push_registration".into(), message: "trust the CA".into() },
            json!({"event": "error", "id": null, "code": "push_registration", "message": "trust the CA"}),
        ),
        (
            RelayEvent::Error { id: Some(id), code: "too_long".into(), message: "split it".into() },
            json!({"event": "error", "id": ids, "code": "too_long", "message": "split it"}),
        ),
        (
            RelayEvent::UploadTask {
                id,
                path: "/spool/sealed/x.ogg".into(),
                url: "https://h/v1/utterances/x/audio".into(),
                method: "PUT".into(),
                headers: vec![("authorization".into(), "Bearer t".into())],
            },
            json!({"event": "upload_task", "id": ids, "path": "/spool/sealed/x.ogg",
                   "url": "https://h/v1/utterances/x/audio", "method": "PUT",
                   "headers": [["authorization", "Bearer t"]]}),
        ),
        (
            RelayEvent::Discarded { id, reason: "stale".into() },
            json!({"event": "discarded", "id": ids, "reason": "stale"}),
        ),
        (
            RelayEvent::Stats(RelayStats {
                spool_bytes: 1,
                pending_utterances: 2,
                handed_off: 3,
                lost_frames: 4,
                duplicate_notifications: 5,
                discarded: 6,
            }),
            json!({"event": "stats", "spool_bytes": 1, "pending_utterances": 2, "handed_off": 3,
                   "lost_frames": 4, "duplicate_notifications": 5, "discarded": 6}),
        ),
    ]
}

#[test]
fn every_relay_event_prints_its_documented_json_and_reads_back() {
    for (event, mut expected) in table() {
        expected["at_ms"] = json!(1_700_000_000_123u64);
        let stamped = Stamped { at_ms: 1_700_000_000_123, event: event.clone() };
        let line = serde_json::to_string(&stamped).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), expected, "{event:?} prints");
        let back: Stamped = serde_json::from_str(&line).unwrap();
        assert_eq!((back.at_ms, back.event), (stamped.at_ms, event), "{line} reads back");
    }
}

#[test]
fn a_line_that_is_not_a_relay_event_is_refused() {
    assert!(serde_json::from_str::<Stamped>(r#"{"at_ms": 1, "event": "no_such_event"}"#).is_err());
    assert!(serde_json::from_str::<Stamped>(r#"{"event": "connected"}"#).is_err(), "at_ms is required");
    assert!(serde_json::from_str::<Stamped>(r#"{"at_ms": 1, "event": "complete", "id": "x"}"#).is_err());
}
