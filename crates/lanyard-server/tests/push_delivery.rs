//! Push delivery against a local APNs peer that implements and verifies the
//! protocol (HTTP/2, TLS, ES256 provider tokens, headers, payload size).
//!
//! 1,000 replies, 10% of which first get a 5xx and 5% a 410 Unregistered:
//! every reply is delivered exactly once or recorded undeliverable with its
//! reason, each 410 token is disabled, and no reply is ever sent with a
//! collapse id other than its utterance id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lanyard_proto::Uuid;
use lanyard_proto::wire::{PushEnvironment, PushPlatform};
use lanyard_push::testing::{ApnsPeer, ApnsPeerConfig, PeerReply, TestApnsKey};
use lanyard_server::config::ApnsSection;
use lanyard_server::{ServerConfig, auth};
use lanyard_store::{PushStatus, PushTarget};
use lanyard_testkit::model_dir;

const TOPIC: &str = "com.example.lanyard";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_replies_through_failures_are_each_delivered_once_or_accounted_for() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestApnsKey::generate();
    let key_path = key.write(dir.path());

    // Token N (64 hex digits): N % 20 == 0 is unregistered (5%); N % 10 == 1 fails with
    // a 5xx on its first attempt (10%).
    let attempts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let seen = attempts.clone();
    let peer = ApnsPeer::start(ApnsPeerConfig::new(&key, TOPIC).with_script(move |push| {
        let token = push.device_token.clone().unwrap_or_default();
        let n = u32::from_str_radix(&token, 16).unwrap_or(0);
        let mut seen = seen.lock().unwrap();
        let attempt = seen.entry(token).or_default();
        *attempt += 1;
        if n % 20 == 0 {
            PeerReply::error(410, "Unregistered")
        } else if n % 10 == 1 && *attempt == 1 {
            PeerReply::error(if n % 20 == 1 { 500 } else { 503 }, "InternalServerError")
        } else {
            PeerReply::ok()
        }
    }))
    .await
    .unwrap();

    let mut cfg = ServerConfig::new(([127, 0, 0, 1], 0).into(), dir.path().join("server"));
    cfg.push.apns = Some(ApnsSection {
        key_path,
        key_id: key.key_id.clone(),
        team_id: key.team_id.clone(),
        topic: TOPIC.into(),
        production_url: Some(peer.url()),
        sandbox_url: Some(peer.url()),
        extra_root_certs: vec![peer.write_cert(dir.path())],
        expiration_secs: None,
    });
    cfg.push.retry_base_ms = 20;
    cfg.push.retry_max_ms = 200;
    let store = lanyard_server::open_store(&cfg).await.unwrap();
    const N: u32 = 1000;
    let mut devices = Vec::new();
    for n in 0..N {
        let token = auth::mint_token();
        let id = Uuid::now_v7();
        store.add_device(id, &format!("phone-{n}"), &auth::hash_token(&token), 0).await.unwrap();
        let target = PushTarget {
            platform: PushPlatform::Apns,
            token: format!("{n:064x}"),
            environment: PushEnvironment::Production,
        };
        store.set_push_target(id, &target).await.unwrap();
        devices.push((n, id, token, Uuid::now_v7()));
    }
    let stt = lanyard_stt::WhisperCt2::load(&model_dir(), Default::default()).unwrap();
    let server = lanyard_server::start(cfg, Arc::new(stt)).await.unwrap();
    let url = format!("http://{}", server.addr);

    // Each phone sends one utterance it transcribed itself.
    let client = reqwest::Client::new();
    futures::stream::iter(&devices)
        .map(|(n, _, token, utt)| {
            let req = client
                .post(format!("{url}/v1/utterances/{utt}/text"))
                .bearer_auth(token)
                .json(&serde_json::json!({ "text": format!("note number {n}") }));
            async move { assert_eq!(req.send().await.unwrap().status(), 202) }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;

    // Wait until every request reached a final status.
    let started = Instant::now();
    let mut requests = HashMap::new();
    while requests.len() < N as usize {
        assert!(started.elapsed() < Duration::from_secs(120), "only {} of {N} pushes settled", requests.len());
        for (_, _, _, utt) in &devices {
            if requests.contains_key(utt) {
                continue;
            }
            if let Some(p) = store.push_request(*utt).await.unwrap()
                && p.status != PushStatus::Pending
            {
                requests.insert(*utt, p);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let received = peer.received();
    let mut accepted: HashMap<String, u32> = HashMap::new();
    for r in &received {
        let collapse = r.header("apns-collapse-id").expect("every send carries a collapse id").to_string();
        let token = r.device_token.clone().unwrap();
        let n = usize::from_str_radix(&token, 16).unwrap();
        assert_eq!(collapse, devices[n].3.to_string(), "the collapse id is the utterance id, on every attempt");
        if r.answered_status == 200 {
            *accepted.entry(collapse).or_default() += 1;
        }
    }
    let (mut sent, mut undeliverable, mut disabled) = (0, 0, 0);
    for (n, device, _, utt) in &devices {
        let p = &requests[utt];
        if n % 20 == 0 {
            assert_eq!(p.status, PushStatus::Undeliverable);
            assert!(p.last_error.as_deref().unwrap().contains("Unregistered"), "{:?}", p.last_error);
            assert_eq!(accepted.get(&utt.to_string()), None);
            let d = store.device(*device).await.unwrap().unwrap();
            assert!(d.push.is_none() && d.push_disabled_reason.is_some(), "the 410 token of phone {n} is disabled");
            undeliverable += 1;
            disabled += 1;
        } else {
            assert_eq!(p.status, PushStatus::Sent, "phone {n}: {:?}", p.last_error);
            assert_eq!(accepted.get(&utt.to_string()), Some(&1), "phone {n}'s reply is delivered exactly once");
            let want_attempts = if n % 10 == 1 { 2 } else { 1 };
            assert_eq!(p.attempts, want_attempts, "phone {n}");
            sent += 1;
        }
    }
    eprintln!(
        "{N} replies: {sent} delivered once, {undeliverable} undeliverable (410), {disabled} tokens disabled, {} requests seen by APNs",
        received.len()
    );
    assert_eq!(received.len() as u32, N + N / 10, "one request per reply plus one retry per 5xx");
    server.stop().await;
}
