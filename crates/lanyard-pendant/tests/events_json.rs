//! The pendant simulator's events as `lanyard pendant-sim` prints them and
//! as the demo, the campaign and the tests read them back: every variant,
//! its exact JSON, and the round trip.

use lanyard_pendant::sim::SimEvent;
use serde_json::{Value, json};

#[test]
fn every_simulator_event_prints_its_json_and_reads_back() {
    let table = [
        (
            SimEvent::Listening { addr: "127.0.0.1:4100".parse().unwrap() },
            json!({"event": "listening", "addr": "127.0.0.1:4100"}),
        ),
        (SimEvent::CentralConnected { at_ms: 7 }, json!({"event": "central_connected", "at_ms": 7})),
        (
            SimEvent::WaitingForCentral { index: 3, at_ms: 8 },
            json!({"event": "waiting_for_central", "index": 3, "at_ms": 8}),
        ),
        (
            SimEvent::UtteranceStart { index: 0, text: "Turn on the lights.".into(), at_ms: 9, frames: 120 },
            json!({"event": "utterance_start", "index": 0, "text": "Turn on the lights.", "at_ms": 9, "frames": 120}),
        ),
        (
            SimEvent::UtteranceEnd {
                index: 0,
                at_ms: 10,
                frames: 120,
                dropped_notifications: 1,
                injected_drops: 2,
                reordered_frames: 3,
            },
            json!({"event": "utterance_end", "index": 0, "at_ms": 10, "frames": 120,
                   "dropped_notifications": 1, "injected_drops": 2, "reordered_frames": 3}),
        ),
        (SimEvent::Done { at_ms: 11 }, json!({"event": "done", "at_ms": 11})),
    ];
    for (event, expected) in table {
        let line = serde_json::to_string(&event).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), expected, "{event:?} prints");
        assert_eq!(serde_json::from_str::<SimEvent>(&line).unwrap(), event, "{line} reads back");
    }
}
