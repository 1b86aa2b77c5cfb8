//! The APNs provider: HTTP/2 over TLS to Apple, authenticated with a JWT
//! provider token signed by the team's `.p8` key.
//!
//! # Why hyper, not the `a2` crate
//!
//! `a2` is a complete APNs client, but it decides two things this crate must
//! decide itself: it refreshes its provider token on its own schedule, with
//! the system clock, so the refresh rules below could neither be enforced
//! nor tested with a simulated clock; and it reports failures as its own
//! error type, whose response reasons we would map again. Sending a request
//! is the small part of APNs; owning the request (hyper 1 with
//! `hyper-rustls`, HTTP/2 only, see `http.rs`) keeps every decision in one
//! place: the token's age, the payload's size, and the mapping of each of
//! Apple's answers to a [`PushError`].
//!
//! # Provider token
//!
//! Apple wants the token reused and refreshed "no more than once every 20
//! minutes and no less than once every 60 minutes"; a token older than an
//! hour is answered `403 ExpiredProviderToken`, and one refreshed too often
//! `429 TooManyProviderTokenUpdates`. So:
//!
//! - one cached token serves every request, and is re-signed once it is
//!   [`TOKEN_REFRESH_AFTER`] (50 minutes) old;
//! - on `ExpiredProviderToken` the token is re-signed and the request sent
//!   once more, but only if the token is at least
//!   [`TOKEN_MIN_REFRESH_INTERVAL`] (20 minutes) old (or another request has
//!   re-signed it meanwhile, in which case the newer one is used); otherwise
//!   the answer is [`PushError::Retry`] and the token is kept.
//!
//! # Payload
//!
//! `{"aps":{"alert":{"title","body"},"sound":"default"}, ...data}`,
//! at most [`APNS_MAX_PAYLOAD`] bytes. A larger one has its body cut, on a
//! character boundary with an ellipsis, until it fits; if it does not fit
//! with an empty body, it is [`PushError::Undeliverable`].
//!
//! # Answers
//!
//! [`map_apns_error`] turns each of Apple's status and reason pairs
//! (<https://developer.apple.com/documentation/usernotifications/handling-notification-responses-from-apns>)
//! into the caller's action; its table is the documentation.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::clock::{Clock, SystemClock, age};
use crate::http::{HttpClient, Versions, retry_after};
use crate::{ConfigError, Notification, Platform, PushError, PushProvider};

/// APNs' production endpoint, for TestFlight and App Store builds.
pub const APNS_PRODUCTION_URL: &str = "https://api.push.apple.com";
/// APNs' development endpoint, for builds run from Xcode.
pub const APNS_SANDBOX_URL: &str = "https://api.sandbox.push.apple.com";
/// The largest payload APNs accepts for an alert notification, in bytes.
pub const APNS_MAX_PAYLOAD: usize = 4096;
/// A provider token is re-signed at this age: Apple rejects tokens older than
/// an hour, and 10 minutes of margin covers clock skew between us and Apple.
pub const TOKEN_REFRESH_AFTER: Duration = Duration::from_secs(50 * 60);
/// A provider token is never re-signed younger than this: Apple answers more
/// frequent updates with `429 TooManyProviderTokenUpdates`.
pub const TOKEN_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(20 * 60);
/// How long APNs keeps trying an offline device, unless configured: a reply
/// an hour late is still worth showing, a day late it is noise.
pub const DEFAULT_EXPIRATION: Duration = Duration::from_secs(60 * 60);
/// How long one request may take, unless configured.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The text that ends a cut body.
const ELLIPSIS: &str = "\u{2026}";

/// Where and as whom to send APNs notifications. See the crate doc for where
/// each value comes from.
#[derive(Debug, Clone)]
pub struct ApnsConfig {
    /// The `AuthKey_XXXXXXXXXX.p8` file: an EC P-256 private key, PKCS#8 PEM.
    pub key_path: PathBuf,
    /// The key's 10-character id, from Apple Developer > Keys.
    pub key_id: String,
    /// The 10-character Apple Developer team id.
    pub team_id: String,
    /// The app's bundle id, such as `com.example.lanyard`.
    pub topic: String,
    /// Base URL for production tokens; [`APNS_PRODUCTION_URL`] unless a test
    /// points it at a peer.
    pub production_url: String,
    /// Base URL for sandbox tokens; [`APNS_SANDBOX_URL`] unless a test points
    /// it at a peer.
    pub sandbox_url: String,
    /// PEM certificates to trust besides the public web roots; for test
    /// peers with self-signed certificates. Empty for the real APNs.
    pub extra_root_certs: Vec<PathBuf>,
    /// How long APNs keeps trying to deliver to an offline device (sent as
    /// `apns-expiration`, now plus this). Zero means "try once, store
    /// nothing" (`apns-expiration: 0`).
    pub expiration: Duration,
    /// The deadline for one request, connection included.
    pub request_timeout: Duration,
}

impl ApnsConfig {
    /// A configuration for the real APNs, with default expiration and
    /// deadline.
    pub fn new(
        key_path: impl Into<PathBuf>,
        key_id: impl Into<String>,
        team_id: impl Into<String>,
        topic: impl Into<String>,
    ) -> Self {
        Self {
            key_path: key_path.into(),
            key_id: key_id.into(),
            team_id: team_id.into(),
            topic: topic.into(),
            production_url: APNS_PRODUCTION_URL.to_owned(),
            sandbox_url: APNS_SANDBOX_URL.to_owned(),
            extra_root_certs: Vec::new(),
            expiration: DEFAULT_EXPIRATION,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// The claims of an APNs provider token: the team, and when it was signed.
#[derive(Debug, Serialize, Deserialize)]
struct ProviderClaims {
    iss: String,
    iat: u64,
}

/// The cached provider token.
#[derive(Debug, Clone)]
struct ProviderToken {
    jwt: String,
    issued_at: SystemTime,
}

/// Sends notifications to APNs. See the module doc.
pub struct ApnsProvider {
    http: HttpClient,
    key: EncodingKey,
    key_id: String,
    team_id: String,
    topic: String,
    production_url: String,
    sandbox_url: String,
    expiration: Duration,
    clock: Arc<dyn Clock>,
    /// One token for all requests; a std mutex, as signing is quick and no
    /// await happens under it.
    token: Mutex<Option<ProviderToken>>,
}

impl std::fmt::Debug for ApnsProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsProvider")
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .field("topic", &self.topic)
            .field("production_url", &self.production_url)
            .field("sandbox_url", &self.sandbox_url)
            .finish_non_exhaustive()
    }
}

impl ApnsProvider {
    /// Checks the configuration and loads the key; fails with a message that
    /// names the setting to fix.
    pub fn new(cfg: ApnsConfig) -> Result<Self, ConfigError> {
        Self::with_clock(cfg, Arc::new(SystemClock))
    }

    /// As [`ApnsProvider::new`], reading time from `clock`.
    pub fn with_clock(cfg: ApnsConfig, clock: Arc<dyn Clock>) -> Result<Self, ConfigError> {
        check_apple_id("key_id", &cfg.key_id, "the 10-character id shown next to the key in Apple Developer > Keys")?;
        check_apple_id(
            "team_id",
            &cfg.team_id,
            "the 10-character team id shown in Apple Developer > Membership details",
        )?;
        check_topic(&cfg.topic)?;
        let production_url = check_base_url("production_url", &cfg.production_url)?;
        let sandbox_url = check_base_url("sandbox_url", &cfg.sandbox_url)?;
        if cfg.request_timeout.is_zero() {
            return Err(bad_field("request_timeout", "must be more than zero".into()));
        }
        let key = load_key(&cfg.key_path)?;
        // Sign once now, so a key ring cannot use fails here rather than at
        // the first notification.
        sign_token(&key, &cfg.key_id, &cfg.team_id, clock.unix_secs()).map_err(|e| ConfigError::BadApnsKey {
            path: cfg.key_path.clone(),
            reason: format!("cannot sign with it: {e}"),
        })?;
        let http = HttpClient::new(Versions::Http2Only, &cfg.extra_root_certs, cfg.request_timeout)?;
        Ok(Self {
            http,
            key,
            key_id: cfg.key_id,
            team_id: cfg.team_id,
            topic: cfg.topic,
            production_url,
            sandbox_url,
            expiration: cfg.expiration,
            clock,
            token: Mutex::new(None),
        })
    }

    /// The cached provider token, re-signed first if it is
    /// [`TOKEN_REFRESH_AFTER`] old.
    fn current_token(&self) -> Result<String, PushError> {
        let mut cached = self.token.lock().unwrap();
        if let Some(t) = cached.as_ref()
            && age(&*self.clock, t.issued_at) < TOKEN_REFRESH_AFTER
        {
            return Ok(t.jwt.clone());
        }
        let fresh = self.sign_now()?;
        let jwt = fresh.jwt.clone();
        *cached = Some(fresh);
        Ok(jwt)
    }

    /// After `403 ExpiredProviderToken` for `used`: the token to send again
    /// with, or `None` when it is too young to re-sign (see the module doc).
    fn token_after_expired(&self, used: &str) -> Result<Option<String>, PushError> {
        let mut cached = self.token.lock().unwrap();
        match cached.as_ref() {
            Some(t) if t.jwt != used => return Ok(Some(t.jwt.clone())),
            Some(t) if age(&*self.clock, t.issued_at) < TOKEN_MIN_REFRESH_INTERVAL => {
                return Ok(None);
            }
            _ => {}
        }
        let fresh = self.sign_now()?;
        let jwt = fresh.jwt.clone();
        *cached = Some(fresh);
        Ok(Some(jwt))
    }

    fn sign_now(&self) -> Result<ProviderToken, PushError> {
        let issued_at = self.clock.now();
        let iat = issued_at.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        tracing::debug!(key_id = %self.key_id, iat, "signing a new APNs provider token");
        let jwt = sign_token(&self.key, &self.key_id, &self.team_id, iat)
            // The key signed at start-up; failing now is not the payload's fault.
            .map_err(|e| PushError::retry(format!("cannot sign the APNs provider token: {e}")))?;
        Ok(ProviderToken { jwt, issued_at })
    }

    /// The `apns-expiration` value: a UNIX time, or 0 for "try once".
    fn expiration_header(&self) -> String {
        if self.expiration.is_zero() {
            "0".to_owned()
        } else {
            (self.clock.unix_secs() + self.expiration.as_secs()).to_string()
        }
    }

    async fn post(
        &self,
        uri: &Uri,
        n: &Notification,
        payload: &Bytes,
        jwt: &str,
    ) -> Result<crate::http::Response, PushError> {
        let req = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .header(http::header::AUTHORIZATION, format!("bearer {jwt}"))
            .header("apns-topic", &self.topic)
            .header("apns-push-type", "alert")
            .header("apns-priority", "10")
            .header("apns-expiration", self.expiration_header())
            .header("apns-collapse-id", n.collapse_id())
            // Apple echoes it back and logs it; the utterance id ties its
            // records to ours.
            .header("apns-id", n.utterance_id.hyphenated().to_string())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(payload.clone()))
            .map_err(|e| PushError::undeliverable(format!("cannot build the APNs request: {e}")))?;
        self.http.send(req).await.map_err(|e| {
            PushError::retry(format!(
                "no answer from APNs at {}: {e}",
                uri.authority().map(|a| a.as_str()).unwrap_or("?")
            ))
        })
    }
}

#[async_trait]
impl PushProvider for ApnsProvider {
    async fn send(&self, n: &Notification) -> Result<(), PushError> {
        if n.platform != Platform::Apns {
            return Err(PushError::undeliverable(format!(
                "the APNs provider was handed a {:?} notification; route by platform",
                n.platform
            )));
        }
        check_device_token(&n.token)?;
        let payload = Bytes::from(apns_payload(n)?);
        let base = match n.apns_environment {
            crate::ApnsEnvironment::Production => &self.production_url,
            crate::ApnsEnvironment::Sandbox => &self.sandbox_url,
        };
        let uri: Uri = format!("{base}/3/device/{}", n.token)
            .parse()
            .map_err(|e| PushError::token_invalid(format!("the token does not fit in a URL: {e}")))?;

        let mut jwt = self.current_token()?;
        let mut resent = false;
        loop {
            let resp = self.post(&uri, n, &payload, &jwt).await?;
            if resp.status == StatusCode::OK {
                return Ok(());
            }
            let reason = serde_json::from_slice::<ApnsErrorBody>(&resp.body).ok().map(|b| b.reason);
            if resp.status == StatusCode::FORBIDDEN && reason.as_deref() == Some("ExpiredProviderToken") && !resent {
                match self.token_after_expired(&jwt)? {
                    Some(newer) => {
                        tracing::info!(utterance = %n.utterance_id, "APNs said the provider token expired; sending again with a new one");
                        jwt = newer;
                        resent = true;
                        continue;
                    }
                    None => {
                        return Err(PushError::retry(format!(
                            "APNs said ExpiredProviderToken, but the token is younger than {} minutes, so it is not re-signed yet (Apple limits refreshes); check this server's clock",
                            TOKEN_MIN_REFRESH_INTERVAL.as_secs() / 60
                        )));
                    }
                }
            }
            return Err(map_apns_error(
                resp.status.as_u16(),
                reason.as_deref(),
                retry_after(&resp.headers, self.clock.now()),
            ));
        }
    }

    fn name(&self) -> &'static str {
        "apns"
    }
}

/// APNs' error body: `{"reason": "BadDeviceToken", "timestamp": ...}`.
#[derive(Deserialize)]
struct ApnsErrorBody {
    reason: String,
}

/// Maps an APNs error answer to the caller's action, per Apple's table:
///
/// | status | reason | action |
/// | --- | --- | --- |
/// | 400 | `BadDeviceToken`, `DeviceTokenNotForTopic`, `MissingDeviceToken` | [`PushError::TokenInvalid`] |
/// | 410 | `Unregistered`, `ExpiredToken` (any 410) | [`PushError::TokenInvalid`] |
/// | 400 | `IdleTimeout` | [`PushError::Retry`] |
/// | 400 | `BadCollapseId`, `BadExpirationDate`, `BadMessageId`, `BadPriority`, `BadTopic`, `TopicDisallowed`, `MissingTopic`, `DuplicateHeaders`, `InvalidPushType`, `PayloadEmpty`, others | [`PushError::Undeliverable`] |
/// | 403 | `ExpiredProviderToken` | [`PushError::Retry`] (the provider re-signs first, see the module doc) |
/// | 403 | `InvalidProviderToken`, `MissingProviderToken`, `UnrelatedKeyIdInToken`, `BadEnvironmentKeyIdInToken`, `BadCertificate*`, `Forbidden` | [`PushError::Undeliverable`], naming the settings to check |
/// | 404, 405 | `BadPath`, `MethodNotAllowed` | [`PushError::Undeliverable`] |
/// | 413 | `PayloadTooLarge` | [`PushError::Undeliverable`] |
/// | 429 | `TooManyRequests`, `TooManyProviderTokenUpdates` | [`PushError::Retry`], after `retry_after` |
/// | 5xx | `InternalServerError`, `ServiceUnavailable`, `Shutdown` | [`PushError::Retry`], after `retry_after` |
/// | other 4xx | | [`PushError::Undeliverable`] |
/// | anything else | | [`PushError::Retry`] |
pub fn map_apns_error(status: u16, reason: Option<&str>, retry_after: Option<Duration>) -> PushError {
    let r = reason.unwrap_or("no reason given");
    let said = format!("APNs answered {status} {r}");
    match (status, r) {
        (410, _) => PushError::token_invalid(format!("{said}: the app was uninstalled or the token expired")),
        (400, "BadDeviceToken") => PushError::token_invalid(format!(
            "{said}: the token is malformed, or was issued by the other APNs environment (sandbox vs production)"
        )),
        (400, "DeviceTokenNotForTopic") => {
            PushError::token_invalid(format!("{said}: the token belongs to another app than the configured topic"))
        }
        (400, "MissingDeviceToken") => PushError::token_invalid(format!("{said}: the token is empty")),
        (400, "IdleTimeout") => PushError::Retry { reason: format!("{said}: the connection idled out"), retry_after },
        (400, "BadTopic" | "TopicDisallowed" | "MissingTopic") => {
            PushError::undeliverable(format!("{said}: check ApnsConfig::topic, which must be the app's bundle id"))
        }
        (
            400,
            "BadExpirationDate" | "BadPriority" | "BadCollapseId" | "BadMessageId" | "DuplicateHeaders"
            | "InvalidPushType",
        ) => PushError::undeliverable(format!("{said}: a request header is wrong; this is a bug in lanyard-push")),
        (403, "ExpiredProviderToken") => {
            PushError::Retry { reason: format!("{said}: the provider token is being renewed"), retry_after }
        }
        (
            403,
            "InvalidProviderToken" | "MissingProviderToken" | "UnrelatedKeyIdInToken" | "BadEnvironmentKeyIdInToken",
        ) => PushError::undeliverable(format!(
            "{said}: check ApnsConfig::key_id and team_id against the .p8 key, and that the key is not revoked in Apple Developer > Keys"
        )),
        (403, _) => {
            PushError::undeliverable(format!("{said}: APNs refuses this sender; check the key, team and topic"))
        }
        (413, _) => PushError::undeliverable(format!("{said}: the payload is over {APNS_MAX_PAYLOAD} bytes")),
        (429, _) => PushError::Retry { reason: format!("{said}: sending too fast"), retry_after },
        (500..=599, _) => PushError::Retry { reason: format!("{said}: APNs is having trouble"), retry_after },
        (400..=499, _) => PushError::undeliverable(said),
        _ => PushError::Retry { reason: format!("{said}: unexpected answer"), retry_after },
    }
}

/// The JSON payload for `n`, cut to [`APNS_MAX_PAYLOAD`] bytes; see the
/// module doc.
pub fn apns_payload(n: &Notification) -> Result<Vec<u8>, PushError> {
    let full = encode_payload(n, &n.body);
    if full.len() <= APNS_MAX_PAYLOAD {
        return Ok(full);
    }
    // The longest body prefix that fits with the ellipsis, by binary search
    // over char boundaries: JSON escaping makes the encoded size of a prefix
    // unpredictable, but it grows with the prefix. A prefix longer than the
    // limit never fits (each byte encodes to at least one), which bounds the
    // search.
    let body = n.body.as_str();
    let limit = floor_char_boundary(body, APNS_MAX_PAYLOAD);
    let bounds: Vec<usize> = body
        .char_indices()
        .map(|(i, _)| i)
        .take_while(|&i| i <= limit)
        .chain((limit == body.len()).then_some(limit))
        .collect();
    let encode_cut = |keep: usize| encode_payload(n, &format!("{}{ELLIPSIS}", &body[..keep]));
    let fitting = bounds.partition_point(|&keep| encode_cut(keep).len() <= APNS_MAX_PAYLOAD);
    if fitting == 0 {
        return Err(PushError::undeliverable(format!(
            "the APNs payload is {} bytes with an empty body, over APNs' {APNS_MAX_PAYLOAD}; shorten the title or the data",
            encode_cut(0).len()
        )));
    }
    Ok(encode_cut(bounds[fitting - 1]))
}

fn encode_payload(n: &Notification, body: &str) -> Vec<u8> {
    let mut aps = Map::new();
    aps.insert("alert".into(), json!({ "title": n.title, "body": body }));
    aps.insert("sound".into(), json!("default"));
    let mut root: Map<String, Value> =
        n.data.iter().filter(|(k, _)| k.as_str() != "aps").map(|(k, v)| (k.clone(), v.clone())).collect();
    root.insert("aps".into(), Value::Object(aps));
    serde_json::to_vec(&Value::Object(root)).expect("a JSON map always serializes")
}

/// The largest char boundary of `s` at or below `i`.
fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn sign_token(key: &EncodingKey, key_id: &str, team_id: &str, iat: u64) -> Result<String, jsonwebtoken::errors::Error> {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(key_id.to_owned());
    jsonwebtoken::encode(&header, &ProviderClaims { iss: team_id.to_owned(), iat }, key)
}

/// A device token is hex (64 digits today; Apple says the length may grow).
/// Anything else would be answered `BadDeviceToken`, or not fit in the path.
fn check_device_token(token: &str) -> Result<(), PushError> {
    if token.is_empty() {
        return Err(PushError::token_invalid("the APNs device token is empty"));
    }
    if !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(PushError::token_invalid("an APNs device token is hexadecimal digits, and this one is not"));
    }
    Ok(())
}

fn bad_field(field: &'static str, reason: String) -> ConfigError {
    ConfigError::BadField { provider: "APNs", field, reason }
}

/// Key ids and team ids are 10 upper-case letters and digits.
fn check_apple_id(field: &'static str, value: &str, what: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(bad_field(field, format!("it is empty; give {what}")));
    }
    if value.len() != 10 || !value.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) {
        return Err(bad_field(field, format!("{value:?} is not 10 upper-case letters and digits; give {what}")));
    }
    Ok(())
}

/// The topic is the app's bundle id: reverse-DNS, such as
/// `com.example.lanyard`.
fn check_topic(topic: &str) -> Result<(), ConfigError> {
    let hint = "give the iOS app's bundle id, such as com.example.lanyard (Xcode > target > Signing & Capabilities)";
    if topic.is_empty() {
        return Err(bad_field("topic", format!("it is empty; {hint}")));
    }
    let labels: Vec<&str> = topic.split('.').collect();
    let label_ok = |l: &&str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if labels.len() < 2 || !labels.iter().all(label_ok) {
        return Err(bad_field(
            "topic",
            format!("{topic:?} is not a bundle id (dot-separated letters, digits and hyphens, no spaces); {hint}"),
        ));
    }
    Ok(())
}

/// A base URL: https, a host, no path; returned without a trailing slash.
pub(crate) fn check_base_url_for(
    provider: &'static str,
    field: &'static str,
    url: &str,
    allow_http: bool,
) -> Result<String, ConfigError> {
    let bad = |reason: String| ConfigError::BadField { provider, field, reason };
    let trimmed = url.trim_end_matches('/');
    let uri: Uri = trimmed.parse().map_err(|e| bad(format!("{url:?} is not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if allow_http => {}
        _ => return Err(bad(format!("{url:?} must start with https://"))),
    }
    if uri.authority().is_none() {
        return Err(bad(format!("{url:?} has no host")));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad(format!("{url:?} must be a base URL without a path, such as {APNS_PRODUCTION_URL}")));
    }
    Ok(trimmed.to_owned())
}

fn check_base_url(field: &'static str, url: &str) -> Result<String, ConfigError> {
    check_base_url_for("APNs", field, url, false)
}

/// Loads the `.p8` key, checking that it is an unencrypted PKCS#8 EC P-256
/// key, and saying what it is instead when it is not.
fn load_key(path: &std::path::Path) -> Result<EncodingKey, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
        what: "the APNs signing key",
        path: path.to_owned(),
        hint: "set ApnsConfig::key_path to the AuthKey_XXXXXXXXXX.p8 file downloaded from Apple Developer > Keys, readable by this server",
        source,
    })?;
    let bad = |reason: String| ConfigError::BadApnsKey { path: path.to_owned(), reason };
    let der = crate::keys::pkcs8_der(&text).map_err(bad)?;
    match crate::keys::classify(&der) {
        crate::keys::KeyKind::EcP256 => Ok(EncodingKey::from_ec_der(&der)),
        other => Err(bad(format!("it is {other}, not an EC P-256 key"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn note(title: &str, body: &str) -> Notification {
        Notification {
            utterance_id: Uuid::nil(),
            platform: Platform::Apns,
            token: "ab".repeat(32),
            apns_environment: crate::ApnsEnvironment::Production,
            title: title.into(),
            body: body.into(),
            data: Map::new(),
        }
    }

    #[test]
    fn payload_has_the_documented_shape() {
        let mut n = note("Lanyard", "It is 4 pm.");
        n.data.insert("utterance".into(), json!("u1"));
        n.data.insert("aps".into(), json!("ignored"));
        let v: Value = serde_json::from_slice(&apns_payload(&n).unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"aps": {"alert": {"title": "Lanyard", "body": "It is 4 pm."}, "sound": "default"}, "utterance": "u1"})
        );
    }

    #[test]
    fn long_bodies_are_cut_on_a_char_boundary_with_an_ellipsis() {
        for unit in ["a", "é", "猫", "🦀", "\"", "\u{1}"] {
            let body = unit.repeat(5000);
            let n = note("t", &body);
            let p = apns_payload(&n).unwrap();
            assert!(p.len() <= APNS_MAX_PAYLOAD, "{unit}: {} bytes", p.len());
            let v: Value = serde_json::from_slice(&p).unwrap();
            let cut = v["aps"]["alert"]["body"].as_str().unwrap();
            assert!(cut.ends_with(ELLIPSIS), "{unit}");
            let kept = cut.strip_suffix(ELLIPSIS).unwrap();
            assert!(body.starts_with(kept));
            // It is cut no more than needed: one more unit would not fit.
            let mut longer = kept.to_owned();
            longer.push_str(unit);
            longer.push_str(ELLIPSIS);
            assert!(encode_payload(&n, &longer).len() > APNS_MAX_PAYLOAD, "{unit}: cut too much");
        }
        let short = note("t", "fits");
        assert_eq!(
            serde_json::from_slice::<Value>(&apns_payload(&short).unwrap()).unwrap()["aps"]["alert"]["body"],
            "fits"
        );
    }

    #[test]
    fn a_payload_too_large_without_its_body_is_undeliverable() {
        let n = note(&"t".repeat(5000), "body");
        assert!(matches!(apns_payload(&n), Err(PushError::Undeliverable { .. })));
    }

    #[test]
    fn error_mapping_follows_apples_table() {
        use PushError::*;
        let m = |s, r| map_apns_error(s, r, None);
        assert!(matches!(m(410, Some("Unregistered")), TokenInvalid { .. }));
        assert!(matches!(m(400, Some("BadDeviceToken")), TokenInvalid { .. }));
        assert!(matches!(m(400, Some("DeviceTokenNotForTopic")), TokenInvalid { .. }));
        assert!(matches!(m(429, Some("TooManyRequests")), Retry { .. }));
        assert!(matches!(m(500, Some("InternalServerError")), Retry { .. }));
        assert!(matches!(m(503, Some("ServiceUnavailable")), Retry { .. }));
        assert!(matches!(m(503, None), Retry { .. }));
        assert!(matches!(m(403, Some("ExpiredProviderToken")), Retry { .. }));
        assert!(matches!(m(413, Some("PayloadTooLarge")), Undeliverable { .. }));
        assert!(matches!(m(400, Some("BadTopic")), Undeliverable { .. }));
        assert!(matches!(m(400, Some("TopicDisallowed")), Undeliverable { .. }));
        assert!(matches!(m(400, Some("BadCollapseId")), Undeliverable { .. }));
        assert!(matches!(m(403, Some("InvalidProviderToken")), Undeliverable { .. }));
        let wait = Some(Duration::from_secs(7));
        assert_eq!(
            map_apns_error(429, Some("TooManyRequests"), wait),
            Retry { reason: "APNs answered 429 TooManyRequests: sending too fast".into(), retry_after: wait }
        );
    }

    #[test]
    fn ids_and_topics_are_checked() {
        assert!(check_apple_id("key_id", "ABC123DEFG", "").is_ok());
        assert!(check_apple_id("key_id", "", "").unwrap_err().to_string().contains("empty"));
        assert!(check_apple_id("key_id", "abc", "").is_err());
        assert!(check_topic("com.example.lanyard").is_ok());
        assert!(check_topic("com.example.lanyard.voip").is_ok());
        for bad in ["", "lanyard", "com.example .app", "com..app", ".com.app"] {
            assert!(check_topic(bad).is_err(), "{bad:?}");
        }
        assert!(check_base_url("production_url", "https://api.push.apple.com/").is_ok());
        assert!(check_base_url("production_url", "http://api.push.apple.com").is_err());
        assert!(check_base_url("production_url", "https://api.push.apple.com/3/device").is_err());
    }
}
