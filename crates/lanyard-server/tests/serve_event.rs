//! What `lanyard serve` prints when it is ready, and how the processes that
//! started it read it back: the exact JSON and the round trip.

use lanyard_server::ServeEvent;
use serde_json::{Value, json};

#[test]
fn the_listening_event_prints_its_json_and_reads_back() {
    let event = ServeEvent::Listening {
        addr: "127.0.0.1:4000".parse().unwrap(),
        url: "https://127.0.0.1:4000".into(),
        data_dir: "/var/lib/lanyard".into(),
    };
    let line = serde_json::to_string(&event).unwrap();
    let expected = json!({"event": "listening", "addr": "127.0.0.1:4000", "url": "https://127.0.0.1:4000",
                          "data_dir": "/var/lib/lanyard"});
    assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), expected);
    assert_eq!(serde_json::from_str::<ServeEvent>(&line).unwrap(), event);
}
