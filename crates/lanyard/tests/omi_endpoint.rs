//! An Omi-style pendant streams without pause and marks no utterances: the
//! server's voice activity detector finds where speech stops and says so
//! (`endpoint`), and the relay splits the stream there. Without it the two
//! sentences below would be one utterance (the BLE data never goes quiet,
//! so the relay's silence timeout never fires).
//!
//! Server, pendant simulator and relay are separate `lanyard` processes on
//! loopback.

mod common;

use std::time::Duration;

use common::{RelayEvent, SimEvent, Stamped, add_device, expect_event, pendant, relay, start_server};
use lanyard_store::Store;
use lanyard_store_sqlite::SqliteStore;
use uuid::Uuid;

const FIRST: &str = "Please remind me to call my sister tomorrow morning.";
const SECOND: &str = "What is on my calendar this afternoon?";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuous_omi_stream_is_split_where_the_server_hears_speech_stop() {
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    let token = add_device(&server_dir, "omi-test");
    let (_server, url) = start_server(&server_dir).await;

    let mut pendant = pendant(&[
        "pendant-sim",
        "--listen",
        "127.0.0.1:0",
        "--framing",
        "omi",
        "--continuous",
        "--gap-ms",
        "1000",
        "--wait-for-central",
        "--linger-secs",
        "60",
        "--say",
        FIRST,
        "--say",
        SECOND,
    ]);
    let sim_addr = expect_event!(pendant, Duration::from_secs(30), SimEvent::Listening { addr } => addr).to_string();
    let spool = dir.path().join("spool");
    let mut relay = relay(&[
        "relay",
        "--server",
        &url,
        "--token",
        &token,
        "--pendant",
        &sim_addr,
        "--spool-dir",
        spool.to_str().unwrap(),
        "--exit-after",
        "2",
    ]);

    // The first utterance ends while the pendant still sends (silent)
    // frames, before the second sentence starts: only an endpoint does that.
    let ended = |stamped: Stamped| match stamped.event {
        RelayEvent::UtteranceEnded { id, .. } => Some((id, stamped.at_ms)),
        _ => None,
    };
    let (first, ended_ms) = relay.expect("utterance_ended", Duration::from_secs(60), ended).await;
    let utterance_start = Duration::from_secs(30);
    assert_eq!(expect_event!(pendant, utterance_start, SimEvent::UtteranceStart { index, .. } => index), 0);
    let (index, started_ms) =
        expect_event!(pendant, utterance_start, SimEvent::UtteranceStart { index, at_ms, .. } => (index, at_ms));
    assert_eq!(index, 1);
    assert!(ended_ms < started_ms, "the first utterance ended at {ended_ms}, after the second began at {started_ms}");
    let (second, _) = relay.expect("utterance_ended", Duration::from_secs(60), ended).await;
    let ids: Vec<Uuid> = vec![first, second];
    assert_ne!(ids[0], ids[1]);
    // `--exit-after 2`: it exits once both replies came.
    let status = tokio::time::timeout(Duration::from_secs(90), relay.process.wait()).await.unwrap().unwrap();
    assert!(status.success());

    let store = SqliteStore::open(&server_dir.join("lanyard.db")).await.unwrap();
    let texts: Vec<String> = {
        let mut t = Vec::new();
        for id in &ids {
            t.push(store.utterance(*id).await.unwrap().unwrap().transcript.unwrap().to_lowercase());
        }
        t
    };
    let first_row = store.utterance(ids[0]).await.unwrap().unwrap();
    eprintln!("split into: {texts:?}; the first has {} frames, speech {:?}", first_row.frames, first_row.speech_frames);
    assert!(texts[0].contains("sister") && !texts[0].contains("calendar"), "{texts:?}");
    assert!(texts[1].contains("calendar") && !texts[1].contains("sister"), "{texts:?}");
}
