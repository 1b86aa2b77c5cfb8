//! The relay is killed with SIGKILL mid-utterance and restarted on the same
//! spool: the utterance still completes, and is transcribed exactly once.
//!
//! Server, pendant simulator and relay are separate `lanyard` processes on
//! loopback. The pendant keeps speaking while the relay is dead (those
//! notifications are lost, as over the air); the restarted relay recovers
//! the spooled part, adopts the rest of the utterance as it arrives, and
//! resumes the upload from the server's last durable frame.

mod common;

use std::time::Duration;

use common::{RelayEvent, SimEvent, Stamped, add_device, expect_event, pendant, relay, start_server};
use lanyard_store::Store;
use lanyard_store_sqlite::SqliteStore;
use uuid::Uuid;

const SENTENCE: &str = "Please remind me to water the plants in the garden when I get home tonight after work.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_mid_utterance_completes_it_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    let spool = dir.path().join("spool");
    let token = add_device(&server_dir, "kill-test");
    let (_server, url) = start_server(&server_dir).await;

    let mut pendant = pendant(&[
        "pendant-sim",
        "--listen",
        "127.0.0.1:0",
        "--wait-for-central",
        "--linger-secs",
        "120",
        "--mtu",
        "23",
        "--say",
        SENTENCE,
    ]);
    let sim_addr = expect_event!(pendant, Duration::from_secs(30), SimEvent::Listening { addr } => addr).to_string();
    let relay_args = [
        "relay",
        "--server",
        &url,
        "--token",
        &token,
        "--pendant",
        &sim_addr,
        "--spool-dir",
        spool.to_str().unwrap(),
        "--push-token",
        "apns:kill-test-token",
        "--exit-after",
        "1",
    ];
    let mut first = relay(&relay_args);
    let id: Uuid = expect_event!(first, Duration::from_secs(30),
        Stamped { event: RelayEvent::UtteranceStarted { id }, .. } => id);
    let frames = expect_event!(pendant, Duration::from_secs(5), SimEvent::UtteranceStart { frames, .. } => frames);
    assert!(frames > 150, "the sentence should last several seconds");

    // Mid-utterance: about 1.5 s of a 5 s sentence is spooled.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.kill().await;
    let segments = |dir: &std::path::Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect()
    };
    let spooled_segments = segments(&spool).len();
    assert!(spooled_segments > 0, "the killed relay left its spool on disk");
    tokio::time::sleep(Duration::from_millis(400)).await;

    let mut relay = relay(&relay_args);
    let (ended, frames) = expect_event!(relay, Duration::from_secs(30),
        Stamped { event: RelayEvent::UtteranceEnded { id, frames, .. }, .. } => (id, frames));
    assert_eq!(ended, id, "the restarted relay adopts the unfinished utterance");
    let replied =
        expect_event!(relay, Duration::from_secs(60), Stamped { event: RelayEvent::Reply { id, .. }, .. } => id);
    assert_eq!(replied, id);
    let status = tokio::time::timeout(Duration::from_secs(30), relay.process.wait()).await.unwrap().unwrap();
    assert!(status.success(), "the relay exits cleanly after the reply");

    // The server's own record of it.
    let store = SqliteStore::open(&server_dir.join("lanyard.db")).await.unwrap();
    let utt = store.utterance(id).await.unwrap().expect("the server has the utterance");
    assert_eq!(store.transcript_writes(id).await.unwrap(), 1, "transcribed exactly once");
    assert_eq!(utt.frames, frames, "every spooled frame reached the server, none twice");
    let transcript = utt.transcript.unwrap();
    eprintln!("after the kill: {frames} frames at the server, transcript {transcript:?}");
    let words = transcript.split_whitespace().count();
    assert!(words >= 5, "a real transcript of the sentence, got {transcript:?}");
    // Nothing else was created: one utterance, one push request. The push
    // queue delivers after the reply went out on the stream, so its record
    // may come a moment after the relay heard the reply.
    let sink = server_dir.join("push-sink.jsonl");
    let waited = std::time::Instant::now();
    while !sink.exists() && waited.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pushes = std::fs::read_to_string(&sink).expect("the push request is recorded within 10 s of the reply");
    assert_eq!(pushes.lines().count(), 1, "one push request: {pushes}");
    assert!(pushes.contains(&id.to_string()));
    // The spool is empty once the server holds everything (besides it, the
    // directory holds only the note of the OS boot the relay ran in, and
    // the single-writer lock file).
    let left = segments(&spool);
    assert!(left.len() <= 1, "only the active (empty or done) segment may remain: {left:?}");
    let other: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| !n.to_string_lossy().ends_with(".seg") && n != "boot-id" && n != ".relay.lock")
        .collect();
    assert!(other.is_empty(), "nothing else is left in the spool: {other:?}");
}
