//! The router sends each notification to its platform's provider, to the
//! fallback when its platform has none, and otherwise answers undeliverable
//! naming the settings to fill; the file sink writes one JSON line per
//! notification.

mod common;

use std::sync::Arc;

use common::{ApnsRig, FcmRig, notification};
use lanyard_push::{ApnsEnvironment, FileSink, Platform, PushError, PushProvider, Router};
use serde_json::Value;

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test]
async fn each_platform_goes_to_its_provider() {
    let apns = ApnsRig::start().await;
    let fcm = FcmRig::start().await;
    let router = Router::new(Some(apns.provider), Some(fcm.provider));
    router.send(&notification(Platform::Apns, ApnsEnvironment::Production)).await.unwrap();
    router.send(&notification(Platform::Fcm, ApnsEnvironment::Production)).await.unwrap();
    router.send(&notification(Platform::Apns, ApnsEnvironment::Sandbox)).await.unwrap();
    assert_eq!(apns.production.received().len(), 1);
    assert_eq!(apns.sandbox.received().len(), 1);
    assert_eq!(fcm.peer.received().len(), 1);
}

#[tokio::test]
async fn an_unconfigured_platform_is_undeliverable_and_names_the_settings() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(FileSink::new(dir.path().join("fcm.jsonl")));
    let router = Router::empty().with_fcm(sink);
    let err = router.send(&notification(Platform::Apns, ApnsEnvironment::Production)).await.unwrap_err();
    assert!(matches!(err, PushError::Undeliverable { .. }), "{err}");
    assert!(err.to_string().contains("ApnsConfig") && err.to_string().contains("key_path"), "{err}");

    let err =
        Router::new(None, None).send(&notification(Platform::Fcm, ApnsEnvironment::Production)).await.unwrap_err();
    assert!(err.to_string().contains("FcmConfig") && err.to_string().contains("service_account_path"), "{err}");
}

#[tokio::test]
async fn the_fallback_takes_platforms_without_a_provider() {
    let dir = tempfile::tempdir().unwrap();
    let fcm_path = dir.path().join("fcm.jsonl");
    let fallback_path = dir.path().join("fallback.jsonl");
    let router = Router::empty()
        .with_fcm(Arc::new(FileSink::new(&fcm_path)))
        .with_fallback(Arc::new(FileSink::new(&fallback_path)));
    router.send(&notification(Platform::Fcm, ApnsEnvironment::Production)).await.unwrap();
    router.send(&notification(Platform::Apns, ApnsEnvironment::Sandbox)).await.unwrap();
    assert_eq!(lines(&fcm_path).len(), 1);
    assert_eq!(lines(&fallback_path).len(), 1);
    assert_eq!(router.name(), "router");
}

#[tokio::test]
async fn the_file_sink_writes_one_line_per_notification() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("push-sink.jsonl");
    let sink = FileSink::new(&path);
    let a = notification(Platform::Apns, ApnsEnvironment::Sandbox);
    let b = notification(Platform::Fcm, ApnsEnvironment::Production);
    sink.send(&a).await.unwrap();
    sink.send(&b).await.unwrap();
    let got = lines(&path);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["utterance_id"], a.utterance_id.to_string());
    assert_eq!(got[0]["collapse_id"], a.utterance_id.to_string());
    assert_eq!(got[0]["platform"], "apns");
    assert_eq!(got[0]["apns_environment"], "sandbox");
    assert_eq!(got[0]["token"], a.token);
    assert_eq!(got[0]["title"], "Lanyard");
    assert_eq!(got[0]["data"]["utterance"], "u-1");
    assert_eq!(got[1]["platform"], "fcm");
    assert!(got[1].get("apns_environment").is_none());
}

#[tokio::test]
async fn an_unwritable_sink_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let sink = FileSink::new(dir.path().join("no-such-dir").join("sink.jsonl"));
    let err = sink.send(&notification(Platform::Fcm, ApnsEnvironment::Production)).await.unwrap_err();
    assert!(err.is_retry(), "{err}");
}
