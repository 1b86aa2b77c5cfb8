//! TLS end to end, with a CA made here: `lanyard serve --tls-cert --tls-key`
//! answers HTTPS and nothing in clear text; a relay that trusts the CA
//! (`--ca-cert`) would connect, one that does not never sends its token;
//! and a relay refuses plain `http://` to another machine unless told
//! `--insecure`. (The happy path, speech to reply over TLS, is the demo's
//! test: `lanyard demo` runs over TLS by default.)

mod common;

use std::time::Duration;

use common::{RelayEvent, Stamped, add_device, expect_event, lanyard, model_dir, relay};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_speaks_only_tls_and_relays_trust_only_what_they_are_told() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
    let (ca_pem, cert_pem, key_pem) =
        (dir.path().join("ca.pem"), dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    std::fs::write(&cert_pem, cert.pem()).unwrap();
    std::fs::write(&key_pem, key.serialize_pem()).unwrap();

    let server_dir = dir.path().join("server");
    let token = add_device(&server_dir, "tls-phone");
    let model = model_dir();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let mut serve = lanyard().serve_command(&server_dir);
    serve.arg("--model-dir").arg(&model).arg("--tls-cert").arg(&cert_pem).arg("--tls-key").arg(&key_pem);
    let server = lanyard_testkit::start_server(serve, Duration::from_secs(60)).await.unwrap_or_else(|e| panic!("{e}"));
    let (url, addr) = (server.url.clone(), server.addr);
    assert_eq!(url, format!("https://{addr}"));

    // Clear text gets no HTTP answer.
    let plain =
        reqwest::Client::new().get(format!("http://{addr}/healthz")).timeout(Duration::from_secs(10)).send().await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
    // A client without the CA refuses the certificate.
    assert!(reqwest::Client::new().get(format!("{url}/healthz")).send().await.is_err());
    // One with it is served.
    let trusted = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    assert_eq!(trusted.get(format!("{url}/healthz")).send().await.unwrap().status(), 200);
    let me = trusted.get(format!("{url}/v1/utterances")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(me.status(), 200, "the token works over TLS");

    // A relay that does not trust the CA never gets through, and says why.
    // Its first request is the push registration, at start; the stream and
    // uploads use the same trust (the demo streams over TLS with --ca-cert).
    // (No pendant: nothing listens at port 1, and the relay runs anyway.)
    let relay_args = |spool: &str| {
        [
            "relay",
            "--server",
            &url,
            "--token",
            &token,
            "--sim",
            "127.0.0.1:1",
            "--spool-dir",
            spool,
            "--push-token",
            "apns:0a0b",
        ]
        .map(str::to_string)
        .to_vec()
    };
    let spool = path(&dir.path().join("spool-a"));
    let args = relay_args(&spool);
    let mut untrusting = relay(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let (code, message) = expect_event!(untrusting, Duration::from_secs(30),
        Stamped { event: RelayEvent::Error { code, message, .. }, .. } => (code, message));
    assert_eq!(code, "push_registration", "{message}");
    let lower = message.to_lowercase();
    assert!(lower.contains("certificate") || lower.contains("issuer"), "the error says why: {message}");
    untrusting.kill().await;
    let store = lanyard_store_sqlite::SqliteStore::open(&server_dir.join("lanyard.db")).await.unwrap();
    let pushed = || async {
        use lanyard_store::Store;
        let hash = lanyard_server::auth::hash_token(&token);
        store.device_by_token_hash(&hash).await.unwrap().unwrap().push.is_some()
    };
    assert!(!pushed().await, "nothing got through without the CA");
    // With --ca-cert it does.
    let spool = path(&dir.path().join("spool-b"));
    let mut args = relay_args(&spool);
    args.extend(["--ca-cert".to_string(), path(&ca_pem)]);
    let trusting = relay(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !pushed().await {
        assert!(std::time::Instant::now() < deadline, "the relay with --ca-cert never registered its push token");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    trusting.kill().await;

    // Plain http:// to another machine is refused before any connection
    // (192.0.2.0/24 is TEST-NET-1: nothing is sent there either way).
    let spool = path(&dir.path().join("spool-c"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args([
            "relay",
            "--server",
            "http://192.0.2.1:8080",
            "--token",
            &token,
            "--sim",
            "127.0.0.1:1",
            "--spool-dir",
            &spool,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a relay streamed in clear text to another machine");
    assert!(stderr.contains("clear text") && stderr.contains("--insecure"), "{stderr}");

    // A key that is not the certificate's stops the server at start, saying so.
    let other = dir.path().join("other-key.pem");
    std::fs::write(&other, KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", &path(&server_dir), "--model-dir", &path(&model)])
        .args(["--tls-cert", &path(&cert_pem), "--tls-key", &path(&other)])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("does not go with the certificate"), "{stderr}");
    server.child.kill().await;
}
