//! The APNs provider against the APNs test peer: every header and the JWT
//! pass the peer's checks, payloads are cut to fit, each of Apple's answers
//! maps to its action, the provider token is refreshed on Apple's schedule
//! (on a manual clock), the environment picks the endpoint, and bad
//! configuration fails at start with a message that says what to fix.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{ApnsRig, TOPIC};
use http::Version;
use lanyard_push::testing::{ApnsPeer, ApnsPeerConfig, PeerReply, TestApnsKey, TestServiceAccount, write_file};
use lanyard_push::{
    ApnsConfig, ApnsEnvironment, ApnsProvider, Clock, ConfigError, ManualClock, PushError, PushProvider, collapse_id,
};
use serde_json::{Value, json};

const MINUTE: Duration = Duration::from_secs(60);

/// Whether an error is the expected one.
type Expect = fn(&PushError) -> bool;

#[tokio::test]
async fn a_notification_passes_every_check_of_the_peer() {
    let rig = ApnsRig::start().await;
    let n = rig.notification();
    rig.provider.send(&n).await.unwrap();

    let got = rig.production.received();
    assert_eq!(got.len(), 1);
    assert!(rig.sandbox.received().is_empty());
    let r = &got[0];
    assert_eq!((r.answered_status, r.answered_reason.as_deref()), (200, None));
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.path, format!("/3/device/{}", n.token));
    assert_eq!(r.header("apns-topic"), Some(TOPIC));
    assert_eq!(r.header("apns-push-type"), Some("alert"));
    assert_eq!(r.header("apns-priority"), Some("10"));
    let now = rig.clock.unix_secs();
    assert_eq!(r.header("apns-expiration"), Some((now + 3600).to_string().as_str()));
    assert_eq!(r.header("apns-collapse-id"), Some(collapse_id(n.utterance_id).as_str()));
    assert_eq!(r.header("apns-collapse-id"), Some(n.utterance_id.to_string().as_str()));
    assert!(r.header("authorization").unwrap().starts_with("bearer "));
    assert_eq!(r.jwt_iat, Some(now), "the peer verified the JWT and read its iat");
    assert_eq!(
        r.payload.as_ref().unwrap(),
        &json!({
            "aps": {"alert": {"title": "Lanyard", "body": "It is four o'clock."}, "sound": "default"},
            "utterance": "u-1",
        })
    );
    assert_eq!(rig.production.jwts_seen(), 1);
}

#[tokio::test]
async fn the_environment_of_each_notification_picks_the_endpoint() {
    let rig = ApnsRig::start().await;
    let mut n = rig.notification();
    n.apns_environment = ApnsEnvironment::Sandbox;
    rig.provider.send(&n).await.unwrap();
    assert_eq!((rig.production.received().len(), rig.sandbox.received().len()), (0, 1));
    n.apns_environment = ApnsEnvironment::Production;
    rig.provider.send(&n).await.unwrap();
    assert_eq!((rig.production.received().len(), rig.sandbox.received().len()), (1, 1));
}

#[tokio::test]
async fn a_long_body_is_cut_to_fit_4096_bytes() {
    let rig = ApnsRig::start().await;
    let mut n = rig.notification();
    n.body = "Ünïcödé talk. ".repeat(800);
    rig.provider.send(&n).await.unwrap();
    let r = &rig.production.received()[0];
    assert_eq!(r.answered_status, 200);
    assert!(r.body.len() <= 4096 && r.body.len() > 4000, "{} bytes", r.body.len());
    let body = r.payload.as_ref().unwrap()["aps"]["alert"]["body"].as_str().unwrap();
    assert!(body.ends_with('\u{2026}'));
    assert!(n.body.starts_with(body.trim_end_matches('\u{2026}')));
}

#[tokio::test]
async fn a_payload_that_cannot_fit_is_undeliverable_without_a_request() {
    let rig = ApnsRig::start().await;
    let mut n = rig.notification();
    n.data.insert("blob".into(), json!("x".repeat(5000)));
    let err = rig.provider.send(&n).await.unwrap_err();
    assert!(matches!(err, PushError::Undeliverable { .. }), "{err}");
    assert!(rig.production.received().is_empty());
}

#[tokio::test]
async fn each_apns_answer_maps_to_its_action() {
    let rig = ApnsRig::start().await;
    let cases: Vec<(PeerReply, Expect)> = vec![
        (PeerReply::error(410, "Unregistered"), |e| matches!(e, PushError::TokenInvalid { .. })),
        (PeerReply::error(400, "BadDeviceToken"), |e| matches!(e, PushError::TokenInvalid { .. })),
        (PeerReply::error(400, "DeviceTokenNotForTopic"), |e| matches!(e, PushError::TokenInvalid { .. })),
        (PeerReply::error(500, "InternalServerError"), |e| matches!(e, PushError::Retry { retry_after: None, .. })),
        (
            PeerReply::error(503, "ServiceUnavailable").with_retry_after(30),
            |e| matches!(e, PushError::Retry { retry_after: Some(d), .. } if *d == Duration::from_secs(30)),
        ),
        (PeerReply::error(429, "TooManyRequests"), |e| matches!(e, PushError::Retry { .. })),
        (PeerReply::error(413, "PayloadTooLarge"), |e| matches!(e, PushError::Undeliverable { .. })),
        (PeerReply::error(400, "BadTopic"), |e| matches!(e, PushError::Undeliverable { .. })),
        (PeerReply::error(400, "TopicDisallowed"), |e| matches!(e, PushError::Undeliverable { .. })),
        (PeerReply::error(400, "BadCollapseId"), |e| matches!(e, PushError::Undeliverable { .. })),
    ];
    for (reply, expected) in cases {
        let answer = reply.clone();
        rig.production.set_script(move |_| answer.clone());
        let err = rig.provider.send(&rig.notification()).await.unwrap_err();
        assert!(expected(&err), "{reply:?} became {err:?}");
        assert!(err.to_string().contains(reply.reason.as_deref().unwrap()), "{err}");
    }
    // None of those made the provider re-sign its token.
    assert_eq!(rig.production.jwts_seen(), 1);
}

#[tokio::test]
async fn the_messages_say_what_to_do() {
    let rig = ApnsRig::start().await;
    rig.production.set_script(|_| PeerReply::error(410, "Unregistered"));
    let msg = rig.provider.send(&rig.notification()).await.unwrap_err().to_string();
    assert!(msg.contains("disable this push target"), "{msg}");
    rig.production.set_script(|_| PeerReply::error(503, "ServiceUnavailable"));
    let msg = rig.provider.send(&rig.notification()).await.unwrap_err().to_string();
    assert!(msg.contains("send it again later"), "{msg}");
    rig.production.set_script(|_| PeerReply::error(413, "PayloadTooLarge"));
    let msg = rig.provider.send(&rig.notification()).await.unwrap_err().to_string();
    assert!(msg.contains("do not retry"), "{msg}");
}

#[tokio::test]
async fn the_token_is_reused_and_re_signed_at_50_minutes() {
    let rig = ApnsRig::start().await;
    let t0 = rig.clock.unix_secs();
    rig.provider.send(&rig.notification()).await.unwrap();
    rig.clock.advance(49 * MINUTE);
    rig.provider.send(&rig.notification()).await.unwrap();
    assert_eq!(rig.production.jwts_seen(), 1, "a 49-minute-old token is reused");
    rig.clock.advance(MINUTE);
    rig.provider.send(&rig.notification()).await.unwrap();
    assert_eq!(rig.production.jwts_seen(), 2, "a 50-minute-old token is re-signed");
    let iats: Vec<_> = rig.production.received().iter().map(|r| r.jwt_iat.unwrap()).collect();
    assert_eq!(iats, vec![t0, t0, t0 + 50 * 60]);
}

#[tokio::test]
async fn concurrent_sends_share_one_token() {
    let rig = Arc::new(ApnsRig::start().await);
    let sends: Vec<_> = (0..16)
        .map(|_| {
            let rig = rig.clone();
            tokio::spawn(async move { rig.provider.send(&rig.notification()).await })
        })
        .collect();
    for s in sends {
        s.await.unwrap().unwrap();
    }
    assert_eq!(rig.production.received().len(), 16);
    assert_eq!(rig.production.jwts_seen(), 1);
}

#[tokio::test]
async fn expired_provider_token_re_signs_an_old_token_and_sends_again() {
    let rig = ApnsRig::start().await;
    let t0 = rig.clock.unix_secs();
    rig.provider.send(&rig.notification()).await.unwrap();
    rig.clock.advance(25 * MINUTE);
    // Apple disagrees about the first token's age.
    rig.production.set_script(move |r| {
        if r.jwt_iat == Some(t0) { PeerReply::error(403, "ExpiredProviderToken") } else { PeerReply::ok() }
    });
    rig.provider.send(&rig.notification()).await.unwrap();
    let got = rig.production.received();
    let statuses: Vec<_> = got.iter().map(|r| r.answered_status).collect();
    assert_eq!(statuses, vec![200, 403, 200]);
    assert_eq!(got[2].jwt_iat, Some(t0 + 25 * 60));
    assert_eq!(
        got[1].header("apns-collapse-id"),
        got[2].header("apns-collapse-id"),
        "the resend collapses with the first try"
    );
    assert_eq!(rig.production.jwts_seen(), 2);
}

#[tokio::test]
async fn expired_provider_token_never_re_signs_within_20_minutes() {
    let rig = ApnsRig::start().await;
    rig.provider.send(&rig.notification()).await.unwrap();
    rig.production.set_script(|_| PeerReply::error(403, "ExpiredProviderToken"));

    // 10 minutes old: kept, and the send is retried later.
    rig.clock.advance(10 * MINUTE);
    let err = rig.provider.send(&rig.notification()).await.unwrap_err();
    assert!(matches!(err, PushError::Retry { .. }), "{err}");
    assert!(err.to_string().contains("clock"), "{err}");
    assert_eq!(rig.production.jwts_seen(), 1);
    assert_eq!(rig.production.received().len(), 2, "no resend with the same token");

    // 21 minutes old: re-signed once and sent again; the new token is
    // refused too, and is not re-signed again.
    rig.clock.advance(11 * MINUTE);
    let err = rig.provider.send(&rig.notification()).await.unwrap_err();
    assert!(matches!(err, PushError::Retry { .. }), "{err}");
    assert_eq!(rig.production.jwts_seen(), 2);
    assert_eq!(rig.production.received().len(), 4);

    // Still within 20 minutes of that refresh: no third token.
    rig.clock.advance(19 * MINUTE);
    for _ in 0..3 {
        assert!(rig.provider.send(&rig.notification()).await.unwrap_err().is_retry());
    }
    assert_eq!(rig.production.jwts_seen(), 2);

    // At 20 minutes it may be re-signed again.
    rig.clock.advance(MINUTE);
    rig.production.set_script({
        let first_refresh = rig.production.received().last().unwrap().jwt.clone();
        move |r| {
            if r.jwt == first_refresh { PeerReply::error(403, "ExpiredProviderToken") } else { PeerReply::ok() }
        }
    });
    rig.provider.send(&rig.notification()).await.unwrap();
    assert_eq!(rig.production.jwts_seen(), 3);
}

#[tokio::test]
async fn the_peer_refuses_tokens_older_than_an_hour() {
    // The provider's clock lags the peer's by two hours: its fresh token
    // looks expired to the peer, and being fresh it is not re-signed.
    let rig = ApnsRig::start().await;
    let lagging = Arc::new(ManualClock::new(rig.clock.now() - 120 * MINUTE));
    let provider = ApnsProvider::with_clock(rig.cfg.clone(), lagging).unwrap();
    let err = provider.send(&rig.notification()).await.unwrap_err();
    assert!(matches!(err, PushError::Retry { .. }), "{err}");
    let r = &rig.production.received()[0];
    assert_eq!((r.answered_status, r.answered_reason.as_deref()), (403, Some("ExpiredProviderToken")));
}

#[tokio::test]
async fn the_peer_refuses_a_token_signed_by_another_key_or_team() {
    let rig = ApnsRig::start().await;
    let other = TestApnsKey::generate();
    let mut cfg = rig.cfg.clone();
    cfg.key_path = write_file(rig.dir.path(), "other.p8", &other.private_key_pem);
    let provider = ApnsProvider::with_clock(cfg, rig.clock.clone()).unwrap();
    let err = provider.send(&rig.notification()).await.unwrap_err();
    assert!(matches!(err, PushError::Undeliverable { .. }), "{err}");
    assert!(err.to_string().contains("InvalidProviderToken") && err.to_string().contains("key_id"), "{err}");

    let mut cfg = rig.cfg.clone();
    cfg.team_id = "OTHERTEAM1".into();
    let provider = ApnsProvider::with_clock(cfg, rig.clock.clone()).unwrap();
    let err = provider.send(&rig.notification()).await.unwrap_err();
    assert!(err.to_string().contains("InvalidProviderToken"), "{err}");
    let reasons: Vec<_> = rig.production.received().iter().map(|r| r.answered_reason.clone()).collect();
    assert_eq!(reasons, vec![Some("InvalidProviderToken".to_string()); 2]);
}

#[tokio::test]
async fn the_peer_refuses_a_wrong_topic_and_so_does_the_provider_mapping() {
    let rig = ApnsRig::start().await;
    let mut cfg = rig.cfg.clone();
    cfg.topic = "com.example.other".into();
    let provider = ApnsProvider::with_clock(cfg, rig.clock.clone()).unwrap();
    let err = provider.send(&rig.notification()).await.unwrap_err();
    assert!(matches!(err, PushError::Undeliverable { .. }), "{err}");
    assert!(err.to_string().contains("ApnsConfig::topic"), "{err}");
}

#[tokio::test]
async fn a_malformed_device_token_is_invalid_without_a_request() {
    let rig = ApnsRig::start().await;
    for bad in ["", "not hex at all", "../../etc"] {
        let mut n = rig.notification();
        n.token = bad.into();
        let err = rig.provider.send(&n).await.unwrap_err();
        assert!(matches!(err, PushError::TokenInvalid { .. }), "{bad:?}: {err}");
    }
    assert!(rig.production.received().is_empty());
}

#[tokio::test]
async fn an_unreachable_apns_is_retried() {
    let rig = ApnsRig::start().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cfg = rig.cfg.clone();
    cfg.production_url = format!("https://127.0.0.1:{port}");
    let provider = ApnsProvider::with_clock(cfg, rig.clock.clone()).unwrap();
    let err = provider.send(&rig.notification()).await.unwrap_err();
    assert!(matches!(err, PushError::Retry { .. }), "{err}");
    assert!(err.to_string().contains("no answer from APNs"), "{err}");
}

#[tokio::test]
async fn a_peer_with_an_untrusted_certificate_is_retried_not_trusted() {
    let rig = ApnsRig::start().await;
    let mut cfg = rig.cfg.clone();
    cfg.extra_root_certs.clear();
    let provider = ApnsProvider::with_clock(cfg, rig.clock.clone()).unwrap();
    let err = provider.send(&rig.notification()).await.unwrap_err();
    assert!(err.is_retry(), "{err}");
    assert!(rig.production.received().is_empty());
}

#[tokio::test]
async fn an_expiration_of_zero_is_sent_as_zero() {
    let rig = ApnsRig::start().await;
    let mut cfg = rig.cfg.clone();
    cfg.expiration = Duration::ZERO;
    let provider = ApnsProvider::with_clock(cfg, rig.clock.clone()).unwrap();
    provider.send(&rig.notification()).await.unwrap();
    assert_eq!(rig.production.received()[0].header("apns-expiration"), Some("0"));
}

/// A valid configuration, whose fields each test spoils one at a time.
fn good_config(dir: &std::path::Path) -> ApnsConfig {
    let key = TestApnsKey::generate();
    ApnsConfig::new(key.write(dir), key.key_id, key.team_id, TOPIC)
}

fn config_error(cfg: ApnsConfig) -> String {
    let err: ConfigError = ApnsProvider::new(cfg).unwrap_err();
    err.to_string()
}

#[test]
fn config_errors_say_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(ApnsProvider::new(good_config(d)).is_ok());

    let mut cfg = good_config(d);
    cfg.key_path = d.join("AuthKey_MISSING.p8");
    let msg = config_error(cfg);
    assert!(msg.contains("AuthKey_MISSING.p8") && msg.contains("Apple Developer > Keys"), "{msg}");

    let mut cfg = good_config(d);
    cfg.key_path = write_file(d, "rsa.p8", &TestServiceAccount::generate("p").private_key_pem);
    let msg = config_error(cfg);
    assert!(msg.contains("an RSA key, not an EC P-256 key"), "{msg}");

    let mut cfg = good_config(d);
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    cfg.key_path = write_file(d, "p384.p8", &p384.serialize_pem());
    let msg = config_error(cfg);
    assert!(msg.contains("P-384"), "{msg}");

    let mut cfg = good_config(d);
    let sec1 = std::fs::read_to_string(&cfg.key_path).unwrap().replace("PRIVATE KEY", "EC PRIVATE KEY");
    cfg.key_path = write_file(d, "sec1.pem", &sec1);
    let msg = config_error(cfg);
    assert!(msg.contains("SEC1") && msg.contains("openssl pkcs8 -topk8"), "{msg}");

    let mut cfg = good_config(d);
    cfg.key_path = write_file(d, "notes.txt", "hello");
    let msg = config_error(cfg);
    assert!(msg.contains("not a PEM file"), "{msg}");

    let mut cfg = good_config(d);
    cfg.topic = "my app".into();
    let msg = config_error(cfg);
    assert!(msg.contains("topic") && msg.contains("bundle id"), "{msg}");

    let mut cfg = good_config(d);
    cfg.key_id = String::new();
    let msg = config_error(cfg);
    assert!(msg.contains("key_id") && msg.contains("empty"), "{msg}");

    let mut cfg = good_config(d);
    cfg.team_id = "team".into();
    let msg = config_error(cfg);
    assert!(msg.contains("team_id") && msg.contains("10"), "{msg}");

    let mut cfg = good_config(d);
    cfg.production_url = "http://api.push.apple.com".into();
    let msg = config_error(cfg);
    assert!(msg.contains("production_url") && msg.contains("https://"), "{msg}");

    let mut cfg = good_config(d);
    cfg.extra_root_certs = vec![write_file(d, "not-a-cert.pem", "nothing here")];
    let msg = config_error(cfg);
    assert!(msg.contains("not-a-cert.pem") && msg.contains("no certificate"), "{msg}");
}

/// Sends one hand-made request to `peer` over HTTP/2 and returns the status
/// and APNs reason.
async fn raw_request(peer: &ApnsPeer, headers: &[(&str, String)], body: Vec<u8>) -> (u16, Option<String>) {
    use http_body_util::{BodyExt, Full};
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(peer.cert_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http2().build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build::<_, Full<bytes::Bytes>>(connector);
    let mut req = http::Request::post(format!("{}/3/device/{}", peer.url(), common::apns_token()));
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = client.request(req.body(Full::new(bytes::Bytes::from(body))).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let reason = serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["reason"].as_str().map(str::to_owned));
    (status, reason)
}

#[tokio::test]
async fn the_peer_answers_bad_requests_as_apns_would() {
    let key = TestApnsKey::generate();
    let peer = ApnsPeer::start(ApnsPeerConfig::new(&key, TOPIC)).await.unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let sign = |iat: u64| {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = Some(key.key_id.clone());
        let k = jsonwebtoken::EncodingKey::from_ec_pem(key.private_key_pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&h, &json!({"iss": key.team_id, "iat": iat}), &k).unwrap()
    };
    let good = |jwt: String| {
        vec![
            ("authorization", format!("bearer {jwt}")),
            ("apns-topic", TOPIC.to_string()),
            ("apns-push-type", "alert".to_string()),
            ("apns-priority", "10".to_string()),
            ("apns-expiration", (now + 3600).to_string()),
            ("apns-collapse-id", "c1".to_string()),
        ]
    };
    let payload = || br#"{"aps":{"alert":{"title":"t","body":"b"}}}"#.to_vec();
    let without = |name: &'static str| good(sign(now)).into_iter().filter(|(k, _)| *k != name).collect::<Vec<_>>();
    let with = |name: &'static str, value: &str| {
        let mut h = without(name);
        h.push((name, value.to_string()));
        h
    };

    assert_eq!(raw_request(&peer, &good(sign(now)), payload()).await, (200, None));
    let r = |s: &str| Some(s.to_string());
    assert_eq!(raw_request(&peer, &without("authorization"), payload()).await, (403, r("MissingProviderToken")));
    assert_eq!(raw_request(&peer, &good(sign(now - 3601)), payload()).await, (403, r("ExpiredProviderToken")));
    assert_eq!(raw_request(&peer, &good(sign(now + 600)), payload()).await, (403, r("InvalidProviderToken")));
    let forged = {
        let jwt = sign(now);
        let (head, _) = jwt.rsplit_once('.').unwrap();
        format!("{head}.{}", "A".repeat(86))
    };
    assert_eq!(raw_request(&peer, &good(forged), payload()).await, (403, r("InvalidProviderToken")));
    assert_eq!(raw_request(&peer, &without("apns-topic"), payload()).await, (400, r("MissingTopic")));
    assert_eq!(raw_request(&peer, &with("apns-push-type", "background"), payload()).await, (400, r("InvalidPushType")));
    assert_eq!(raw_request(&peer, &with("apns-priority", "7"), payload()).await, (400, r("BadPriority")));
    assert_eq!(raw_request(&peer, &without("apns-expiration"), payload()).await, (400, r("BadExpirationDate")));
    assert_eq!(
        raw_request(&peer, &with("apns-collapse-id", &"c".repeat(65)), payload()).await,
        (400, r("BadCollapseId"))
    );
    assert_eq!(raw_request(&peer, &with("apns-id", "not-a-uuid"), payload()).await, (400, r("BadMessageId")));
    assert_eq!(raw_request(&peer, &good(sign(now)), Vec::new()).await, (400, r("PayloadEmpty")));
    let big = format!(r#"{{"aps":{{"alert":{{"title":"t","body":"{}"}}}}}}"#, "x".repeat(4096)).into_bytes();
    assert_eq!(raw_request(&peer, &good(sign(now)), big).await, (413, r("PayloadTooLarge")));
    assert_eq!(raw_request(&peer, &good(sign(now)), br#"{"aps":{}}"#.to_vec()).await, (400, r("Peer: BadPayload")));
    assert_eq!(peer.received().len(), 14);
}
