//! Push delivery: the replies Lanyard writes reach the phone as APNs or FCM
//! notifications.
//!
//! Every way of delivering a notification implements one trait,
//! [`PushProvider`], and answers with one error type, [`PushError`], whose
//! three variants tell the caller (the server's outbox sender) what to do:
//! send again later, disable the device's token, or give up on this
//! notification. The providers are:
//!
//! - [`ApnsProvider`]: Apple Push Notification service, HTTP/2 with a JWT
//!   provider token signed by a `.p8` key.
//! - [`FcmProvider`]: Firebase Cloud Messaging HTTP v1, with an OAuth 2 access
//!   token obtained with a Google service-account key.
//! - [`FileSink`]: a development sink that writes each notification to a
//!   JSON-lines file and delivers nothing.
//! - [`Router`]: picks the provider by the notification's platform.
//!
//! Each notification carries a collapse id derived from its utterance id
//! ([`collapse_id`]), so that a notification sent twice (the outbox delivers
//! at least once) shows the user one notification.
//!
//! With the `test-peers` feature, the `testing` module offers an APNs peer and an FCM
//! peer that speak the real protocols on loopback and check every request the
//! way the real services would, so that tests run the real providers end to
//! end without a network.
//!
//! # Pointing at the real APNs
//!
//! You need an Apple Developer Program membership, and four things from
//! <https://developer.apple.com/account> > Certificates, Identifiers &
//! Profiles:
//!
//! 1. **The signing key** ([`ApnsConfig::key_path`]): Keys > "+" > enable
//!    "Apple Push Notifications service (APNs)" > download the
//!    `AuthKey_XXXXXXXXXX.p8` file. Apple lets you download it once; keep it
//!    secret. It is an EC P-256 key in PKCS#8 PEM, which is what this crate
//!    reads as is.
//! 2. **The key id** ([`ApnsConfig::key_id`]): the 10 characters shown next to
//!    the key (also the `XXXXXXXXXX` in the file name).
//! 3. **The team id** ([`ApnsConfig::team_id`]): 10 characters, shown under
//!    Membership details (and at the top right of the developer site).
//! 4. **The topic** ([`ApnsConfig::topic`]): the iOS app's bundle id, such as
//!    `com.example.lanyard`.
//!
//! The endpoint is chosen per notification from
//! [`Notification::apns_environment`]: apps built by Xcode for debugging get
//! *sandbox* tokens (`https://api.sandbox.push.apple.com`); TestFlight and App
//! Store builds get *production* tokens (`https://api.push.apple.com`). A
//! token sent to the wrong environment is answered `BadDeviceToken`, so the
//! app must report which one it registered with. One key works for both.
//! Leave [`ApnsConfig::production_url`], [`ApnsConfig::sandbox_url`] and
//! [`ApnsConfig::extra_root_certs`] at their defaults.
//!
//! # Pointing at the real FCM
//!
//! In the Firebase console (<https://console.firebase.google.com>), open the
//! project > Project settings > Service accounts > "Generate new private key".
//! That downloads a JSON file with `type`, `project_id`, `private_key`,
//! `client_email` and `token_uri`; give its path as
//! [`FcmConfig::service_account_path`]. Nothing else is needed: the project
//! id and the OAuth token endpoint are read from the file. The "Firebase
//! Cloud Messaging API (V1)" must be enabled for the project, in Project
//! settings, Cloud Messaging tab. Leave [`FcmConfig::base_url`],
//! [`FcmConfig::token_uri_override`] and [`FcmConfig::extra_root_certs`] at
//! their defaults. To deliver to iOS devices through FCM, upload the APNs
//! `.p8` key in the same Cloud Messaging tab as well.
//!
//! **Architecture invariant:** this crate knows APNs and FCM and nothing of
//! the store or of axum; callers hand it a [`Notification`] and act on the
//! [`PushError`] they get back.

mod apns;
mod clock;
mod error;
mod fcm;
mod file_sink;
mod http;
mod keys;
mod router;
#[cfg(feature = "test-peers")]
pub mod testing;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

pub use apns::{
    APNS_MAX_PAYLOAD, APNS_PRODUCTION_URL, APNS_SANDBOX_URL, ApnsConfig, ApnsProvider, TOKEN_MIN_REFRESH_INTERVAL,
    TOKEN_REFRESH_AFTER, apns_payload, map_apns_error,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{ConfigError, PushError};
pub use fcm::{
    ACCESS_TOKEN_MARGIN, FCM_DEFAULT_BASE_URL, FCM_SCOPE, FcmConfig, FcmProvider, GOOGLE_TOKEN_URI, fcm_message,
    map_fcm_error,
};
pub use file_sink::FileSink;
pub use router::Router;

/// The longest collapse id APNs accepts (the `apns-collapse-id` header), in
/// bytes.
pub const MAX_COLLAPSE_ID_BYTES: usize = 64;

/// Which push service a device token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Apns,
    Fcm,
}

/// Which APNs environment issued a device token. Tokens of one environment
/// are rejected by the other (`BadDeviceToken`), so the app reports the one
/// it registered with. Ignored for FCM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApnsEnvironment {
    /// Development builds (run from Xcode): `api.sandbox.push.apple.com`.
    Sandbox,
    /// TestFlight and App Store builds: `api.push.apple.com`.
    #[default]
    Production,
}

/// One notification to deliver: a reply to one utterance, for one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// The utterance this notification answers. Its string form is the
    /// collapse id, so a resend replaces rather than repeats the
    /// notification on the phone.
    pub utterance_id: Uuid,
    pub platform: Platform,
    /// The device token the app registered (APNs: hex; FCM: opaque).
    pub token: String,
    /// Only meaningful for [`Platform::Apns`].
    pub apns_environment: ApnsEnvironment,
    pub title: String,
    pub body: String,
    /// Extra keys for the app. APNs puts them next to `aps` at the top of the
    /// payload (an `aps` key here is ignored); FCM sends them as its `data`
    /// map, whose values must be strings, so other values are sent as their
    /// JSON text.
    pub data: serde_json::Map<String, Value>,
}

impl Notification {
    /// This notification's collapse id; see [`collapse_id`].
    pub fn collapse_id(&self) -> String {
        collapse_id(self.utterance_id)
    }

    /// The `data` map with every value a string, as FCM requires.
    pub(crate) fn string_data(&self) -> BTreeMap<String, String> {
        self.data
            .iter()
            .map(|(k, v)| {
                let s = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), s)
            })
            .collect()
    }
}

/// The collapse id of an utterance's notification: the utterance id's
/// hyphenated string (36 bytes, within APNs' 64). APNs sends it as
/// `apns-collapse-id`; FCM as the Android `collapse_key` and notification
/// `tag`, and as `apns-collapse-id` in its APNs block.
pub fn collapse_id(utterance_id: Uuid) -> String {
    let id = utterance_id.to_string();
    debug_assert!(id.len() <= MAX_COLLAPSE_ID_BYTES);
    id
}

/// A way of delivering notifications. Implementations: [`ApnsProvider`],
/// [`FcmProvider`], [`FileSink`] and [`Router`].
#[async_trait]
pub trait PushProvider: Send + Sync + 'static {
    /// Delivers one notification to the push service. `Ok` means the service
    /// accepted it; the error says whether to retry, disable the token, or
    /// give up (see [`PushError`]).
    async fn send(&self, n: &Notification) -> Result<(), PushError>;

    /// A short name for logs, such as `"apns"`.
    fn name(&self) -> &'static str;
}
