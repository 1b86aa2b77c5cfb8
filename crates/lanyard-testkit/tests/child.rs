//! The typed JSON-lines reader against a shell that prints what a `lanyard`
//! process would, plus a line that is no event, then exits.

use std::time::Duration;

use lanyard_testkit::{Child, WaitError};
use serde::Deserialize;
use tokio::process::Command;

#[derive(Debug, PartialEq, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Event {
    Listening { addr: String },
    Done { at_ms: u64 },
}

fn shell(script: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script]);
    cmd
}

#[tokio::test]
async fn events_arrive_typed_and_a_stray_line_is_skipped() {
    let script =
        r#"echo '{"event":"listening","addr":"127.0.0.1:9"}'; echo 'not json'; echo '{"event":"done","at_ms":5}'"#;
    let mut child: Child<Event> = Child::spawn("printer", shell(script)).unwrap();
    let addr = child
        .expect("listening", Duration::from_secs(10), |e| match e {
            Event::Listening { addr } => Some(addr),
            _ => None,
        })
        .await;
    assert_eq!(addr, "127.0.0.1:9");
    assert_eq!(child.next(Duration::from_secs(10)).await.unwrap(), Event::Done { at_ms: 5 });
    let ended = child.next(Duration::from_secs(10)).await;
    assert!(matches!(ended, Err(WaitError::Ended { .. })), "{ended:?}");
}

#[tokio::test]
async fn a_silent_process_times_out() {
    let mut child: Child<Event> = Child::spawn("sleeper", shell("sleep 30")).unwrap();
    let waited = child.next(Duration::from_millis(200)).await;
    assert!(matches!(waited, Err(WaitError::Timeout { .. })), "{waited:?}");
    child.kill().await;
}
