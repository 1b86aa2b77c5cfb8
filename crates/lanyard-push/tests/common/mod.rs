//! Helpers shared by the integration tests: notifications, and providers
//! wired to test peers on a shared manual clock.

#![allow(dead_code)]

use std::sync::Arc;

use lanyard_push::testing::{ApnsPeer, ApnsPeerConfig, FcmPeer, FcmPeerConfig, TestApnsKey, TestServiceAccount};
use lanyard_push::{
    ApnsConfig, ApnsEnvironment, ApnsProvider, FcmConfig, FcmProvider, ManualClock, Notification, Platform,
};
use tempfile::TempDir;
use uuid::Uuid;

pub const TOPIC: &str = "com.example.lanyard";
pub const PROJECT: &str = "lanyard-test";

/// A 64-hex-digit APNs device token.
pub fn apns_token() -> String {
    "0123456789abcdef".repeat(4)
}

pub fn notification(platform: Platform, env: ApnsEnvironment) -> Notification {
    let mut data = serde_json::Map::new();
    data.insert("utterance".into(), serde_json::json!("u-1"));
    Notification {
        utterance_id: Uuid::now_v7(),
        platform,
        token: match platform {
            Platform::Apns => apns_token(),
            Platform::Fcm => "fcm-registration-token:APA91b".into(),
        },
        apns_environment: env,
        title: "Lanyard".into(),
        body: "It is four o'clock.".into(),
        data,
    }
}

/// An APNs provider whose production and sandbox URLs are two peers, all on
/// one manual clock.
pub struct ApnsRig {
    pub dir: TempDir,
    pub key: TestApnsKey,
    pub clock: Arc<ManualClock>,
    pub production: ApnsPeer,
    pub sandbox: ApnsPeer,
    pub cfg: ApnsConfig,
    pub provider: ApnsProvider,
}

impl ApnsRig {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = TestApnsKey::generate();
        let clock = Arc::new(ManualClock::starting_now());
        let production = ApnsPeer::start(ApnsPeerConfig::new(&key, TOPIC).with_clock(clock.clone())).await.unwrap();
        let sandbox = ApnsPeer::start(ApnsPeerConfig::new(&key, TOPIC).with_clock(clock.clone())).await.unwrap();
        let mut cfg = ApnsConfig::new(key.write(dir.path()), key.key_id.clone(), key.team_id.clone(), TOPIC);
        cfg.production_url = production.url();
        cfg.sandbox_url = sandbox.url();
        cfg.extra_root_certs = vec![production.write_cert(dir.path()), sandbox.write_cert(dir.path())];
        let provider = ApnsProvider::with_clock(cfg.clone(), clock.clone()).unwrap();
        Self { dir, key, clock, production, sandbox, cfg, provider }
    }

    pub fn notification(&self) -> Notification {
        notification(Platform::Apns, ApnsEnvironment::Production)
    }
}

/// An FCM provider whose token endpoint and send endpoint are one peer, on
/// one manual clock.
pub struct FcmRig {
    pub dir: TempDir,
    pub account: TestServiceAccount,
    pub clock: Arc<ManualClock>,
    pub peer: FcmPeer,
    pub cfg: FcmConfig,
    pub provider: FcmProvider,
}

impl FcmRig {
    pub async fn start() -> Self {
        Self::start_with(|c| c).await
    }

    pub async fn start_with(tweak: impl FnOnce(FcmPeerConfig) -> FcmPeerConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let account = TestServiceAccount::generate(PROJECT);
        let clock = Arc::new(ManualClock::starting_now());
        let peer = FcmPeer::start(tweak(FcmPeerConfig::new(&account).with_clock(clock.clone()))).await.unwrap();
        let mut cfg = FcmConfig::new(account.write(dir.path(), &peer.token_uri()));
        cfg.base_url = peer.base_url();
        cfg.extra_root_certs = vec![peer.write_cert(dir.path())];
        let provider = FcmProvider::with_clock(cfg.clone(), clock.clone()).unwrap();
        Self { dir, account, clock, peer, cfg, provider }
    }

    pub fn notification(&self) -> Notification {
        notification(Platform::Fcm, ApnsEnvironment::Production)
    }
}
