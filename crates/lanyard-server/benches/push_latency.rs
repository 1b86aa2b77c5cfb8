//! Benchmark: from a final transcript to the APNs request, as received by a
//! local APNs peer (HTTP/2 over TLS, ES256 provider token), with the
//! built-in responder.
//!
//! The phone sends a text-only utterance (its transcript is final on
//! arrival); the clock starts when the request is sent and stops when the
//! APNs peer has the notification. So the figure also includes the HTTP
//! request, the store writes of transcript, reply and outbox (fsynced), and
//! the sender's claim and record.
//!
//! Run: `cargo bench -p lanyard-server --bench push_latency`
//! (`LANYARD_BENCH_N` sets the number of utterances, 300 by default).

use std::sync::Arc;
use std::time::{Duration, Instant};

use lanyard_proto::Uuid;
use lanyard_proto::wire::{PushEnvironment, PushPlatform};
use lanyard_push::testing::{ApnsPeer, ApnsPeerConfig, TestApnsKey};
use lanyard_server::config::ApnsSection;
use lanyard_server::{ServerConfig, auth};
use lanyard_store::PushTarget;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("LANYARD_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let dir = tempfile::tempdir().unwrap();
    let key = TestApnsKey::generate();
    let peer = ApnsPeer::start(ApnsPeerConfig::new(&key, "com.example.lanyard")).await.unwrap();
    let mut cfg = ServerConfig::new(([127, 0, 0, 1], 0).into(), dir.path().join("server"));
    cfg.push.apns = Some(ApnsSection {
        key_path: key.write(dir.path()),
        key_id: key.key_id.clone(),
        team_id: key.team_id.clone(),
        topic: "com.example.lanyard".into(),
        production_url: Some(peer.url()),
        sandbox_url: Some(peer.url()),
        extra_root_certs: vec![peer.write_cert(dir.path())],
        expiration_secs: None,
    });
    let store = lanyard_server::open_store(&cfg).await.unwrap();
    let token = auth::mint_token();
    let device = Uuid::now_v7();
    store.add_device(device, "bench-phone", &auth::hash_token(&token), 0).await.unwrap();
    let target =
        PushTarget { platform: PushPlatform::Apns, token: "be".repeat(32), environment: PushEnvironment::Production };
    store.set_push_target(device, &target).await.unwrap();
    let model = lanyard_stt::default_model_dir();
    let stt =
        lanyard_stt::WhisperCt2::load(&model, Default::default()).expect("run scripts/setup to install the model");
    let server = lanyard_server::start(cfg, Arc::new(stt)).await.unwrap();
    let url = format!("http://{}", server.addr);
    let client = reqwest::Client::new();

    let mut lat = Vec::with_capacity(n);
    // A few warm-up rounds open the HTTP/2 connection and mint the JWT.
    for i in 0..n + 5 {
        let before = peer.received().len();
        let utt = Uuid::now_v7();
        let t0 = Instant::now();
        let resp = client
            .post(format!("{url}/v1/utterances/{utt}/text"))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "text": "what's on my calendar tomorrow" }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let received_at = loop {
            if let Some(r) = peer.received().get(before) {
                break r.received_at;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "no push arrived");
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        if i >= 5 {
            lat.push(received_at - t0);
        }
    }
    lat.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("final transcript -> APNs request received, built-in responder, {n} utterances:");
    println!(
        "  p50 {:.1} ms   p95 {:.1} ms   p99 {:.1} ms   min {:.1} ms   max {:.1} ms",
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.95)),
        ms(percentile(&lat, 0.99)),
        ms(lat[0]),
        ms(lat[lat.len() - 1])
    );
    let p95 = ms(percentile(&lat, 0.95));
    println!("  bar: p95 <= 30 ms: {}", if p95 <= 30.0 { "met" } else { "NOT met" });
    server.stop().await;
}
