//! The FCM provider against the FCM test peer: the OAuth flow (an RS256
//! assertion verified by the peer), the message's shape, access-token
//! caching and refresh (on a manual clock), a refused token fetched again,
//! each of FCM's answers mapped to its action, and bad service-account files
//! failing at start with a message that says what to fix.

mod common;

use std::time::Duration;

use common::{FcmRig, PROJECT};
use lanyard_push::testing::{FcmPeer, FcmPeerConfig, FcmReply, TestApnsKey, TestServiceAccount, write_file};
use lanyard_push::{FcmConfig, FcmProvider, PushError, PushProvider};
use serde_json::json;

const MINUTE: Duration = Duration::from_secs(60);

/// Whether an error is the expected one.
type Expect = fn(&PushError) -> bool;

#[tokio::test]
async fn oauth_then_send_passes_every_check_of_the_peer() {
    let rig = FcmRig::start().await;
    let n = rig.notification();
    rig.provider.send(&n).await.unwrap();

    let tokens = rig.peer.token_requests();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].answered_status, 200, "{:?}", tokens[0].answered_error);
    assert!(
        tokens[0].form.iter().any(|(k, v)| k == "grant_type" && v == "urn:ietf:params:oauth:grant-type:jwt-bearer")
    );

    let got = rig.peer.received();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.answered_status, 200, "{:?}", r.answered_error);
    assert_eq!(r.path, format!("/v1/projects/{PROJECT}/messages:send"));
    assert_eq!(r.access_token, tokens[0].issued);
    let cid = n.utterance_id.to_string();
    assert_eq!(
        r.body,
        json!({"message": {
            "token": n.token,
            "notification": {"title": "Lanyard", "body": "It is four o'clock."},
            "android": {"collapse_key": cid, "notification": {"tag": cid}},
            "apns": {"headers": {"apns-collapse-id": cid}},
            "data": {"utterance": "u-1"},
        }})
    );

    // The access token is cached.
    rig.provider.send(&n).await.unwrap();
    assert_eq!(rig.peer.tokens_issued(), 1);
}

#[tokio::test]
async fn the_access_token_is_fetched_again_shortly_before_it_expires() {
    let rig = FcmRig::start().await;
    rig.provider.send(&rig.notification()).await.unwrap();
    rig.clock.advance(54 * MINUTE);
    rig.provider.send(&rig.notification()).await.unwrap();
    assert_eq!(rig.peer.tokens_issued(), 1, "54 minutes into a 60-minute token: reused");
    rig.clock.advance(MINUTE);
    rig.provider.send(&rig.notification()).await.unwrap();
    assert_eq!(rig.peer.tokens_issued(), 2, "5 minutes before expiry: fetched again");
    assert!(rig.peer.received().iter().all(|r| r.answered_status == 200));
}

#[tokio::test]
async fn a_short_lived_token_is_honoured() {
    let rig = FcmRig::start_with(|c| c.with_token_lifetime(Duration::from_secs(600))).await;
    rig.provider.send(&rig.notification()).await.unwrap();
    rig.clock.advance(6 * MINUTE);
    rig.provider.send(&rig.notification()).await.unwrap();
    assert_eq!(rig.peer.tokens_issued(), 2);
}

#[tokio::test]
async fn a_refused_access_token_is_fetched_again_and_the_message_resent() {
    let rig = FcmRig::start().await;
    rig.provider.send(&rig.notification()).await.unwrap();
    rig.peer.revoke_tokens();
    rig.provider.send(&rig.notification()).await.unwrap();
    let statuses: Vec<_> = rig.peer.received().iter().map(|r| r.answered_status).collect();
    assert_eq!(statuses, vec![200, 401, 200]);
    assert_eq!(rig.peer.tokens_issued(), 2);
}

#[tokio::test]
async fn unregistered_is_token_invalid() {
    let rig = FcmRig::start().await;
    rig.peer.set_script(|_| FcmReply::unregistered());
    let err = rig.provider.send(&rig.notification()).await.unwrap_err();
    assert!(matches!(err, PushError::TokenInvalid { .. }), "{err}");
    assert!(err.to_string().contains("UNREGISTERED") && err.to_string().contains("disable this push target"), "{err}");
}

#[tokio::test]
async fn each_fcm_answer_maps_to_its_action() {
    let rig = FcmRig::start().await;
    let cases: Vec<(FcmReply, Expect)> = vec![
        (FcmReply::unregistered(), |e| matches!(e, PushError::TokenInvalid { .. })),
        (
            FcmReply::error(
                400,
                "INVALID_ARGUMENT",
                Some("INVALID_ARGUMENT"),
                "The registration token is not a valid FCM registration token",
            ),
            |e| matches!(e, PushError::TokenInvalid { .. }),
        ),
        (FcmReply::error(400, "INVALID_ARGUMENT", Some("INVALID_ARGUMENT"), "Invalid value at 'message.data'"), |e| {
            matches!(e, PushError::Undeliverable { .. })
        }),
        (FcmReply::error(403, "PERMISSION_DENIED", Some("SENDER_ID_MISMATCH"), "SenderId mismatch"), |e| {
            matches!(e, PushError::TokenInvalid { .. })
        }),
        (
            FcmReply::error(429, "RESOURCE_EXHAUSTED", Some("QUOTA_EXCEEDED"), "Quota exceeded").with_retry_after(60),
            |e| matches!(e, PushError::Retry { retry_after: Some(d), .. } if *d == Duration::from_secs(60)),
        ),
        (FcmReply::error(500, "INTERNAL", Some("INTERNAL"), "Internal error"), |e| {
            matches!(e, PushError::Retry { .. })
        }),
        (FcmReply::error(503, "UNAVAILABLE", Some("UNAVAILABLE"), "The service is unavailable"), |e| {
            matches!(e, PushError::Retry { .. })
        }),
        (FcmReply::error(401, "UNAUTHENTICATED", Some("THIRD_PARTY_AUTH_ERROR"), "Auth error from APNS"), |e| {
            matches!(e, PushError::Undeliverable { .. })
        }),
    ];
    for (reply, expected) in cases {
        let answer = reply.clone();
        rig.peer.set_script(move |_| answer.clone());
        let err = rig.provider.send(&rig.notification()).await.unwrap_err();
        assert!(expected(&err), "{reply:?} became {err:?}");
    }
    assert_eq!(rig.peer.tokens_issued(), 1, "no answer but a plain 401 fetches a new token");
}

#[tokio::test]
async fn a_refused_grant_is_retried_with_a_hint() {
    // The peer expects another account's email: the assertion is refused.
    let rig = FcmRig::start_with(|mut c| {
        c.client_email = "someone-else@lanyard-test.iam.gserviceaccount.com".into();
        c
    })
    .await;
    let err = rig.provider.send(&rig.notification()).await.unwrap_err();
    assert!(matches!(err, PushError::Retry { .. }), "{err}");
    assert!(err.to_string().contains("invalid_grant") && err.to_string().contains("service-account key"), "{err}");
    assert!(rig.peer.received().is_empty());
}

#[tokio::test]
async fn the_token_uri_override_replaces_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let account = TestServiceAccount::generate(PROJECT);
    let peer = FcmPeer::start(FcmPeerConfig::new(&account)).await.unwrap();
    let mut cfg = FcmConfig::new(account.write(dir.path(), "https://oauth2.googleapis.com/token"));
    cfg.base_url = peer.base_url();
    cfg.token_uri_override = Some(peer.token_uri());
    cfg.extra_root_certs = vec![peer.write_cert(dir.path())];
    let provider = FcmProvider::new(cfg).unwrap();
    assert_eq!(provider.project_id(), PROJECT);
    let n = common::notification(lanyard_push::Platform::Fcm, lanyard_push::ApnsEnvironment::Production);
    provider.send(&n).await.unwrap();
    assert_eq!(peer.tokens_issued(), 1);
}

fn config_error(cfg: FcmConfig) -> String {
    FcmProvider::new(cfg).unwrap_err().to_string()
}

#[test]
fn config_errors_say_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let account = TestServiceAccount::generate(PROJECT);
    let good = account.write(d, "https://oauth2.googleapis.com/token");
    assert!(FcmProvider::new(FcmConfig::new(&good)).is_ok());

    let msg = config_error(FcmConfig::new(d.join("missing.json")));
    assert!(msg.contains("missing.json") && msg.contains("Service accounts"), "{msg}");

    let msg = config_error(FcmConfig::new(write_file(d, "junk.json", "{not json")));
    assert!(msg.contains("junk.json") && msg.contains("not a service-account JSON key"), "{msg}");

    let mut v = account.json("https://oauth2.googleapis.com/token");
    v["type"] = json!("authorized_user");
    let msg = config_error(FcmConfig::new(write_file(d, "user.json", &v.to_string())));
    assert!(msg.contains("\"authorized_user\", not \"service_account\""), "{msg}");

    let mut v = account.json("https://oauth2.googleapis.com/token");
    v["private_key"] = json!(TestApnsKey::generate().private_key_pem);
    let msg = config_error(FcmConfig::new(write_file(d, "ec.json", &v.to_string())));
    assert!(msg.contains("EC P-256 key") && msg.contains("RSA"), "{msg}");

    let mut v = account.json("https://oauth2.googleapis.com/token");
    v.as_object_mut().unwrap().remove("client_email");
    let msg = config_error(FcmConfig::new(write_file(d, "noemail.json", &v.to_string())));
    assert!(msg.contains("client_email"), "{msg}");

    let mut cfg = FcmConfig::new(&good);
    cfg.base_url = "fcm.googleapis.com".into();
    let msg = config_error(cfg);
    assert!(msg.contains("base_url"), "{msg}");
}
