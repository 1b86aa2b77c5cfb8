//! The server is killed with SIGKILL between handing a notification to APNs
//! and recording that it did. After a restart it sends at most once more,
//! with the same collapse id, so the user still sees one notification.
//!
//! Also: configuration mistakes stop `lanyard serve` at start-up with a
//! message that says what to fix.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Server, add_device, lanyard, model_dir};
use lanyard_push::testing::{ApnsPeer, ApnsPeerConfig, PeerReply, TestApnsKey};
use lanyard_store::{PushStatus, Store};
use lanyard_store_sqlite::SqliteStore;
use uuid::Uuid;

const TOPIC: &str = "com.example.lanyard";

fn config(dir: &std::path::Path, key: &TestApnsKey, peer: &ApnsPeer, topic: &str) -> std::path::PathBuf {
    let toml =
        format!("[push]\nretry_base_ms = 50\nclaim_lease_ms = 500\n\n{}", peer.apns_config_toml(dir, key, topic));
    let path = dir.join("server.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

async fn serve(data: &std::path::Path, config: &std::path::Path) -> (Server, String) {
    let mut cmd = lanyard().serve_command(data);
    cmd.arg("--model-dir").arg(model_dir()).arg("--config").arg(config);
    let server = lanyard_testkit::start_server(cmd, Duration::from_secs(60)).await.unwrap_or_else(|e| panic!("{e}"));
    let url = server.url.clone();
    (server, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_send_and_record_sends_at_most_once_more_with_the_same_collapse_id() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let key = TestApnsKey::generate();
    // The peer kills the server as the first notification arrives: APNs has
    // it, the server never learns so, and its outbox still says pending.
    let victim: Arc<Mutex<Option<u32>>> = Arc::default();
    let kill = victim.clone();
    let peer = ApnsPeer::start(ApnsPeerConfig::new(&key, TOPIC).with_script(move |_| {
        if let Some(pid) = kill.lock().unwrap().take() {
            let status = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
            assert!(status.success());
            std::thread::sleep(Duration::from_millis(100));
        }
        PeerReply::ok()
    }))
    .await
    .unwrap();
    let config = config(dir.path(), &key, &peer, TOPIC);
    let token = add_device(&data, "crash-phone");

    let (server, url) = serve(&data, &config).await;
    *victim.lock().unwrap() = server.child.process.id();
    let client = reqwest::Client::new();
    let resp = client
        .put(format!("{url}/v1/device/push"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "platform": "apns", "token": "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00", "environment": "sandbox" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let utt = Uuid::now_v7();
    let resp = client
        .post(format!("{url}/v1/utterances/{utt}/text"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "text": "remind me to call mum" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    // The server dies mid-send.
    let mut server = server;
    let status = tokio::time::timeout(Duration::from_secs(60), server.child.process.wait()).await.unwrap().unwrap();
    assert!(!status.success(), "the server was killed");
    assert_eq!(peer.received().len(), 1);
    let store = SqliteStore::open(&data.join("lanyard.db")).await.unwrap();
    assert_eq!(
        store.push_request(utt).await.unwrap().unwrap().status,
        PushStatus::Pending,
        "the send was not recorded"
    );

    // Restart on the same data: the lapsed claim is sent once more.
    let (_server, _) = serve(&data, &config).await;
    let started = Instant::now();
    loop {
        let p = store.push_request(utt).await.unwrap().unwrap();
        if p.status == PushStatus::Sent {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "never resent: {p:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give a wrongly repeated send time to show up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let received = peer.received();
    assert_eq!(received.len(), 2, "at most one more send after the restart");
    for r in &received {
        assert_eq!(r.header("apns-collapse-id"), Some(utt.to_string().as_str()), "the same collapse id both times");
        assert!(r.path.ends_with("/c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00"));
    }
    // Sandbox tokens go to the sandbox gateway (here both are the peer).
    assert!(store.utterance(utt).await.unwrap().unwrap().timings.push_ms.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_mistakes_fail_at_start_up_and_say_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestApnsKey::generate();
    let peer = ApnsPeer::start(ApnsPeerConfig::new(&key, TOPIC)).await.unwrap();
    let data = dir.path().join("server");
    let run = |config: &std::path::Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lanyard"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", data.to_str().unwrap(), "--config"])
            .arg(config)
            .arg("--model-dir")
            .arg(model_dir())
            .output()
            .unwrap();
        assert!(!out.status.success(), "a broken config must not start");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    // An unreadable key.
    let good = config(dir.path(), &key, &peer, TOPIC);
    let text = std::fs::read_to_string(&good).unwrap();
    let missing = dir.path().join("missing.toml");
    std::fs::write(&missing, text.replace(".p8", ".p8-gone")).unwrap();
    let err = run(&missing);
    assert!(err.contains("[push.apns]") && err.contains("p8-gone"), "{err}");

    // A topic that is not a bundle id.
    let bad_topic = config(dir.path(), &key, &peer, "not a bundle id");
    let err = run(&bad_topic);
    assert!(err.contains("[push.apns]") && err.to_lowercase().contains("topic"), "{err}");

    // A key that is not an EC P-256 key.
    let not_key = dir.path().join("notkey.toml");
    let junk = dir.path().join("junk.p8");
    std::fs::write(&junk, "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n").unwrap();
    let key_line = text.lines().find(|l| l.starts_with("key_path")).unwrap().to_string();
    std::fs::write(&not_key, text.replace(&key_line, &format!("key_path = {junk:?}"))).unwrap();
    let err = run(&not_key);
    assert!(err.contains("[push.apns]"), "{err}");

    // Unknown keys and syntax errors name the file.
    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "[push]\nmax_attempt = 3\n").unwrap();
    let err = run(&typo);
    assert!(err.contains("typo.toml") && err.contains("max_attempt"), "{err}");
}
