//! Audio retention: the sweeper deletes the audio of finished utterances
//! older than `[audio] retention_days`, marks them purged in the store, and
//! the API says so. One test pins the clock and calls the sweep directly; the
//! other runs a real server whose background sweeper finds utterances that
//! were recorded, by their stored times, weeks ago.
//!
//! Neither needs the speech model: the server runs with a remote
//! speech-to-text backend that is never called.

use std::sync::Arc;
use std::time::Duration;

use lanyard_proto::Uuid;
use lanyard_proto::ble::Codec;
use lanyard_proto::wire::UtteranceState;
use lanyard_server::config::SttBackend;
use lanyard_server::retention::{self, BATCH, SweepReport};
use lanyard_server::{AudioStore, ServerConfig, auth, now_ms};
use lanyard_store::{Completion, ReplyRecord, Store};
use serde_json::Value;

const DAY_MS: i64 = 86_400_000;

/// Records an utterance of `frames` PCM frames created at `created_ms` and,
/// if `finish`, takes it to `replied`.
async fn recorded(store: &dyn Store, audio: &AudioStore, device: Uuid, created_ms: i64, finish: bool) -> Uuid {
    let id = Uuid::now_v7();
    store.open_utterance(id, device, Codec::Pcm16k, created_ms).await.unwrap();
    let w = audio.writer(device, id).unwrap();
    w.lock().unwrap().append_durable(0, [&[1u8; 640][..], &[2u8; 640], &[3u8; 640]]).unwrap();
    if finish {
        assert!(store.mark_complete(id, Completion::frames(3), created_ms + 100).await.unwrap());
        store.mark_stt_started(id, created_ms + 200).await.unwrap();
        store.set_transcript(id, "turn the lights off", &[], created_ms + 300).await.unwrap();
        let reply = ReplyRecord { title: "Lanyard".into(), body: "Noted.".into(), data_json: "{}".into() };
        store.set_reply(id, &reply, None, created_ms + 400).await.unwrap();
        audio.close(id);
    }
    id
}

/// A speech-to-text engine that is never reached: nothing listens at its port.
fn unused_stt() -> Arc<dyn lanyard_stt::SpeechToText> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let backend = SttBackend::Remote(lanyard_stt::RemoteConfig::new(format!("http://127.0.0.1:{port}/v1")));
    std::thread::spawn(move || lanyard_server::build_stt(&backend)).join().unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_with_a_pinned_clock_purges_exactly_the_expired_finished_audio() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ServerConfig::new(([127, 0, 0, 1], 0).into(), dir.path().to_owned());
    let store = lanyard_server::open_store(&cfg).await.unwrap();
    let audio = Arc::new(AudioStore::new(cfg.audio_dir()).unwrap());
    let device = Uuid::now_v7();
    store.add_device(device, "d", &[1; 32], 0).await.unwrap();
    let t0 = 1_000 * DAY_MS;
    let old = recorded(&*store, &audio, device, t0, true).await;
    let receiving = recorded(&*store, &audio, device, t0, false).await;
    let newer = recorded(&*store, &audio, device, t0 + DAY_MS, true).await;
    let day = Duration::from_secs(86_400);

    // Exactly one day old is not older than a one-day retention.
    assert_eq!(retention::sweep(&*store, &audio, t0 + DAY_MS, day).await.unwrap(), SweepReport::default());
    assert!(audio.path(device, old).exists());
    // A millisecond later it is; the utterance still being received is not
    // touched, however old, nor is the newer one.
    let report = retention::sweep(&*store, &audio, t0 + DAY_MS + 1, day).await.unwrap();
    assert_eq!(report, SweepReport { purged: 1, failed: 0 });
    assert!(!audio.path(device, old).exists());
    assert!(audio.path(device, receiving).exists() && audio.path(device, newer).exists());
    let u = store.utterance(old).await.unwrap().unwrap();
    assert_eq!(
        (u.audio_purged_ms, u.state, u.transcript.as_deref()),
        (Some(t0 + DAY_MS + 1), UtteranceState::Replied, Some("turn the lights off"))
    );
    // Nothing twice.
    assert_eq!(retention::sweep(&*store, &audio, t0 + DAY_MS + 2, day).await.unwrap().purged, 0);

    // A crash between deleting a file and marking it leaves the row unmarked
    // and the file gone: the next sweep marks it.
    std::fs::remove_file(audio.path(device, newer)).unwrap();
    assert_eq!(retention::sweep(&*store, &audio, t0 + 3 * DAY_MS, day).await.unwrap().purged, 1);
    assert!(store.utterance(newer).await.unwrap().unwrap().audio_purged_ms.is_some());
    assert_eq!(store.utterance(receiving).await.unwrap().unwrap().audio_purged_ms, None);
    assert!(audio.path(device, receiving).exists());

    // More than one batch in one sweep.
    let mut many = Vec::new();
    for i in 0..i64::from(BATCH) + 5 {
        many.push(recorded(&*store, &audio, device, t0 + 10 * DAY_MS + i, true).await);
    }
    let report = retention::sweep(&*store, &audio, t0 + 20 * DAY_MS, day).await.unwrap();
    assert_eq!(report.purged, u64::from(BATCH) + 5);
    assert!(many.iter().all(|id| !audio.path(device, *id).exists()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_sweeps_in_the_background_and_the_api_reports_purged_audio() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new(([127, 0, 0, 1], 0).into(), dir.path().to_owned());
    cfg.audio.sweep_interval_secs = 1;
    assert_eq!(cfg.audio.retention_days, 30, "the default");
    let store = lanyard_server::open_store(&cfg).await.unwrap();
    let audio = AudioStore::new(cfg.audio_dir()).unwrap();
    let token = auth::mint_token();
    let device = Uuid::now_v7();
    store.add_device(device, "d", &auth::hash_token(&token), 0).await.unwrap();
    let now = now_ms();
    let expired = recorded(&*store, &audio, device, now - 31 * DAY_MS, true).await;
    let kept = recorded(&*store, &audio, device, now - 29 * DAY_MS, true).await;
    let receiving = recorded(&*store, &audio, device, now - 40 * DAY_MS, false).await;
    let text = Uuid::now_v7();
    store.create_text_utterance(text, device, "typed on the phone", now - 40 * DAY_MS).await.unwrap();
    drop(audio);

    let server = lanyard_server::start(cfg.clone(), unused_stt()).await.unwrap();
    let url = format!("http://{}", server.addr);
    let mut purged = false;
    for _ in 0..200 {
        if store.utterance(expired).await.unwrap().unwrap().audio_purged_ms.is_some() {
            purged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(purged, "the sweeper never purged the expired audio");
    let audio = AudioStore::new(cfg.audio_dir()).unwrap();
    assert!(!audio.path(device, expired).exists());
    assert!(audio.path(device, kept).exists() && audio.path(device, receiving).exists());

    let client = reqwest::Client::new();
    let get = |id: Uuid| {
        let req = client.get(format!("{url}/v1/utterances/{id}")).bearer_auth(&token);
        async move {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.json::<Value>().await.unwrap()
        }
    };
    let v = get(expired).await;
    assert_eq!((v["audio"].as_str(), v["state"].as_str()), (Some("purged"), Some("replied")));
    assert!(v["audio_purged_ms"].as_i64().unwrap() >= now);
    assert_eq!(v["transcript"], "turn the lights off", "the transcript outlives the audio");
    assert_eq!(get(kept).await["audio"], "stored");
    assert_eq!(get(receiving).await["audio"], "stored");
    let t = get(text).await;
    assert_eq!((t["audio"].as_str(), &t["audio_purged_ms"]), (Some("none"), &Value::Null));
    let list: Value =
        client.get(format!("{url}/v1/utterances")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    let listed: Vec<(&str, &str)> = list["utterances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["id"].as_str().unwrap(), u["audio"].as_str().unwrap()))
        .collect();
    assert!(listed.contains(&(expired.to_string().as_str(), "purged")), "{listed:?}");
    // A relay that uploads the purged utterance again is told it is done,
    // and no audio comes back.
    let wav = lanyard_proto::wav::write([&[1u8; 640][..], &[2u8; 640], &[3u8; 640]]);
    let resp = client
        .put(format!("{url}/v1/utterances/{expired}/audio"))
        .bearer_auth(&token)
        .header("content-type", "audio/wav")
        .body(wav)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["added"], 0);
    assert!(!audio.path(device, expired).exists());
    let scrape = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    assert!(scrape.lines().any(|l| l.starts_with("lanyard_audio_purged_total ")), "{scrape}");
    server.stop().await;
}

/// Sets the file's last write back `age` from now.
fn written_ago(path: &std::path::Path, age: Duration) {
    let f = std::fs::File::options().append(true).open(path).unwrap();
    f.set_modified(std::time::SystemTime::now() - age).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utterances_abandoned_mid_stream_are_given_up_once_their_audio_is_old_too() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ServerConfig::new(([127, 0, 0, 1], 0).into(), dir.path().to_owned());
    let store = lanyard_server::open_store(&cfg).await.unwrap();
    let audio = Arc::new(AudioStore::new(cfg.audio_dir()).unwrap());
    let device = Uuid::now_v7();
    store.add_device(device, "d", &[1; 32], 0).await.unwrap();
    let week = Duration::from_secs(7 * 86_400);
    let now = now_ms();
    let ten_days = Duration::from_secs(10 * 86_400);

    // Opened ten days ago, and a relay still appends to some of them (their
    // files were written just now): more than a batch of those, so the sweep
    // must page past rows it leaves alone.
    let mut busy = Vec::new();
    for i in 0..i64::from(BATCH) + 5 {
        busy.push(recorded(&*store, &audio, device, now - 10 * DAY_MS + i, false).await);
    }
    // Opened after them, silent for ten days: abandoned.
    let abandoned = recorded(&*store, &audio, device, now - 10 * DAY_MS + 1_000, false).await;
    written_ago(&audio.path(device, abandoned), ten_days);
    // Silent for ten days but opened yesterday (a clock set back): kept.
    let young = recorded(&*store, &audio, device, now - DAY_MS, false).await;
    written_ago(&audio.path(device, young), ten_days);
    // Finished long ago: retention's business, not this sweep's.
    let finished = recorded(&*store, &audio, device, now - 10 * DAY_MS, true).await;
    written_ago(&audio.path(device, finished), ten_days);

    assert_eq!(retention::sweep_abandoned(&*store, &audio, now, week).await.unwrap(), 1);
    let u = store.utterance(abandoned).await.unwrap().unwrap();
    assert_eq!((u.state, u.error.as_deref()), (UtteranceState::Failed, Some(retention::ABANDONED)));
    assert!(u.audio_purged_ms.is_some(), "its audio is marked deleted");
    assert!(!audio.path(device, abandoned).exists());
    for id in busy.iter().chain([&young]) {
        assert_eq!(store.utterance(*id).await.unwrap().unwrap().state, UtteranceState::Receiving);
        assert!(audio.path(device, *id).exists());
    }
    assert_eq!(store.utterance(finished).await.unwrap().unwrap().state, UtteranceState::Replied);
    assert_eq!(store.receiving_count(device).await.unwrap(), BATCH + 6);
    // Nothing twice.
    assert_eq!(retention::sweep_abandoned(&*store, &audio, now, week).await.unwrap(), 0);
}
