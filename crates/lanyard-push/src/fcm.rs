//! The FCM provider: Firebase Cloud Messaging HTTP v1, authenticated with an
//! OAuth 2 access token that a Google service-account key obtains.
//!
//! # Access token
//!
//! The service account's RSA key signs an RS256 JWT assertion
//! (`iss` = the account's email, `scope` = [`FCM_SCOPE`], `aud` = the token
//! endpoint, `exp` = `iat` + 1 hour), which is posted to the token endpoint
//! (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`) in exchange for
//! an access token valid `expires_in` seconds (an hour at Google). The token
//! is cached and fetched again [`ACCESS_TOKEN_MARGIN`] before it expires. A
//! `401` from FCM means the token was revoked or expired early: it is
//! fetched again and the message sent once more.
//!
//! This is hand-rolled with `jsonwebtoken` rather than taken from
//! `gcp_auth`, which looks for credentials in the environment and the
//! metadata server and would hide the token endpoint that the test peer
//! replaces.
//!
//! # Message
//!
//! `POST {base}/v1/projects/{project_id}/messages:send` with [`fcm_message`]:
//! a notification, the collapse id as Android `collapse_key` and
//! notification `tag` and as the `apns-collapse-id` header of its APNs
//! block, and the data as strings.
//!
//! # Answers
//!
//! [`map_fcm_error`] turns FCM's errors
//! (<https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode>) into
//! the caller's action; its table is the documentation.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::clock::{Clock, SystemClock};
use crate::http::{HttpClient, Versions, retry_after};
use crate::{ConfigError, Notification, Platform, PushError, PushProvider};

/// FCM's endpoint.
pub const FCM_DEFAULT_BASE_URL: &str = "https://fcm.googleapis.com";
/// The OAuth scope that allows sending FCM messages.
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// Google's token endpoint, used when the service-account file names none.
pub const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// An access token is fetched again this long before it expires, so that a
/// request in flight never carries one that expires on the way.
pub const ACCESS_TOKEN_MARGIN: Duration = Duration::from_secs(5 * 60);
/// How long the JWT assertion is valid; Google allows at most an hour.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(60 * 60);
/// How long one request may take, unless configured.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Where and as whom to send FCM messages. See the crate doc for where the
/// service-account file comes from.
#[derive(Debug, Clone)]
pub struct FcmConfig {
    /// The service-account JSON key file from the Firebase console.
    pub service_account_path: PathBuf,
    /// [`FCM_DEFAULT_BASE_URL`] unless a test points it at a peer.
    pub base_url: String,
    /// Replaces the file's `token_uri`; for tests.
    pub token_uri_override: Option<String>,
    /// PEM certificates to trust besides the public web roots; for test
    /// peers with self-signed certificates. Empty for the real FCM.
    pub extra_root_certs: Vec<PathBuf>,
    /// The deadline for one request (token or message), connection included.
    pub request_timeout: Duration,
}

impl FcmConfig {
    /// A configuration for the real FCM.
    pub fn new(service_account_path: impl Into<PathBuf>) -> Self {
        Self {
            service_account_path: service_account_path.into(),
            base_url: FCM_DEFAULT_BASE_URL.to_owned(),
            token_uri_override: None,
            extra_root_certs: Vec::new(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// The fields of a service-account key file that are used.
#[derive(Deserialize)]
struct ServiceAccount {
    #[serde(rename = "type")]
    kind: String,
    project_id: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    client_email: String,
    #[serde(default)]
    token_uri: Option<String>,
}

/// The claims of the OAuth JWT assertion.
#[derive(Debug, Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

/// A cached access token.
#[derive(Debug, Clone)]
struct AccessToken {
    token: String,
    expires_at: SystemTime,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

/// Sends notifications through FCM HTTP v1. See the module doc.
pub struct FcmProvider {
    http: HttpClient,
    key: EncodingKey,
    key_id: Option<String>,
    client_email: String,
    project_id: String,
    token_uri: String,
    send_uri: Uri,
    clock: Arc<dyn Clock>,
    /// A tokio mutex, held while a token is fetched, so that concurrent
    /// sends wait for one fetch rather than each making their own.
    token: tokio::sync::Mutex<Option<AccessToken>>,
}

impl std::fmt::Debug for FcmProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FcmProvider")
            .field("client_email", &self.client_email)
            .field("project_id", &self.project_id)
            .field("token_uri", &self.token_uri)
            .field("send_uri", &self.send_uri)
            .finish_non_exhaustive()
    }
}

impl FcmProvider {
    /// Reads and checks the service-account file; fails with a message that
    /// says what to fix.
    pub fn new(cfg: FcmConfig) -> Result<Self, ConfigError> {
        Self::with_clock(cfg, Arc::new(SystemClock))
    }

    /// As [`FcmProvider::new`], reading time from `clock`.
    pub fn with_clock(cfg: FcmConfig, clock: Arc<dyn Clock>) -> Result<Self, ConfigError> {
        let path = &cfg.service_account_path;
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
            what: "the FCM service-account file",
            path: path.clone(),
            hint: "set FcmConfig::service_account_path to the JSON key from the Firebase console > Project settings > Service accounts, readable by this server",
            source,
        })?;
        let bad = |reason: String| ConfigError::BadServiceAccount { path: path.clone(), reason };
        let sa: ServiceAccount =
            serde_json::from_str(&text).map_err(|e| bad(format!("it is not a service-account JSON key: {e}")))?;
        if sa.kind != "service_account" {
            return Err(bad(format!(
                "its type is {:?}, not \"service_account\" (google-services.json and OAuth client files are not service-account keys)",
                sa.kind
            )));
        }
        if sa.project_id.is_empty()
            || !sa.project_id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b':' | b'.'))
        {
            return Err(bad(format!("its project_id {:?} is not a Google Cloud project id", sa.project_id)));
        }
        if !sa.client_email.contains('@') {
            return Err(bad(format!("its client_email {:?} is not an email address", sa.client_email)));
        }
        let der = crate::keys::pkcs8_der(&sa.private_key).map_err(|e| bad(format!("its private_key: {e}")))?;
        match crate::keys::classify(&der) {
            crate::keys::KeyKind::Rsa => {}
            other => {
                return Err(bad(format!("its private_key is {other}; Google service-account keys are RSA")));
            }
        }
        let key = EncodingKey::from_rsa_pem(sa.private_key.as_bytes())
            .map_err(|e| bad(format!("its private_key cannot be read: {e}")))?;

        let token_uri =
            cfg.token_uri_override.clone().or(sa.token_uri.clone()).unwrap_or_else(|| GOOGLE_TOKEN_URI.to_owned());
        let token_field = if cfg.token_uri_override.is_some() { "token_uri_override" } else { "token_uri" };
        token_uri
            .parse::<Uri>()
            .ok()
            .filter(|u| matches!(u.scheme_str(), Some("https" | "http")) && u.authority().is_some())
            .ok_or_else(|| ConfigError::BadField {
                provider: "FCM",
                field: token_field,
                reason: format!("{token_uri:?} is not an http(s) URL"),
            })?;
        let base = crate::apns::check_base_url_for("FCM", "base_url", &cfg.base_url, true)?;
        let send_uri: Uri = format!("{base}/v1/projects/{}/messages:send", sa.project_id)
            .parse()
            .map_err(|e| bad(format!("its project_id does not fit in a URL: {e}")))?;
        if cfg.request_timeout.is_zero() {
            return Err(ConfigError::BadField {
                provider: "FCM",
                field: "request_timeout",
                reason: "must be more than zero".into(),
            });
        }

        let provider = Self {
            http: HttpClient::new(Versions::Http1And2, &cfg.extra_root_certs, cfg.request_timeout)?,
            key,
            key_id: sa.private_key_id,
            client_email: sa.client_email,
            project_id: sa.project_id,
            token_uri,
            send_uri,
            clock,
            token: tokio::sync::Mutex::new(None),
        };
        // Sign once now, so a key ring cannot use fails here rather than at
        // the first notification.
        provider.assertion().map_err(|e| bad(format!("its private_key cannot sign: {e}")))?;
        Ok(provider)
    }

    /// The project messages are sent to.
    pub fn project_id(&self) -> &str {
        &self.project_id
    }

    fn assertion(&self) -> Result<String, jsonwebtoken::errors::Error> {
        let iat = self.clock.unix_secs();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = self.key_id.clone();
        let claims = AssertionClaims {
            iss: &self.client_email,
            scope: FCM_SCOPE,
            aud: &self.token_uri,
            iat,
            exp: iat + ASSERTION_LIFETIME.as_secs(),
        };
        jsonwebtoken::encode(&header, &claims, &self.key)
    }

    /// A valid access token: the cached one, or a new one if it is within
    /// [`ACCESS_TOKEN_MARGIN`] of expiring, or if it is `stale` (FCM just
    /// refused it).
    async fn access_token(&self, stale: Option<&str>) -> Result<String, PushError> {
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref() {
            let fresh = self.clock.now() + ACCESS_TOKEN_MARGIN < t.expires_at;
            if fresh && stale != Some(t.token.as_str()) {
                return Ok(t.token.clone());
            }
        }
        let t = self.fetch_token().await?;
        let token = t.token.clone();
        *cached = Some(t);
        Ok(token)
    }

    async fn fetch_token(&self) -> Result<AccessToken, PushError> {
        let assertion =
            self.assertion().map_err(|e| PushError::retry(format!("cannot sign the OAuth assertion: {e}")))?;
        let body = format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}");
        let req = Request::builder()
            .method(Method::POST)
            .uri(&self.token_uri)
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| PushError::retry(format!("cannot build the OAuth token request: {e}")))?;
        let asked_at = self.clock.now();
        let resp = self.http.send(req).await.map_err(|e| {
            PushError::retry(format!("no answer from the OAuth token endpoint {}: {e}", self.token_uri))
        })?;
        if resp.status != StatusCode::OK {
            // Every failure here is retried: 5xx and 429 are temporary, and a
            // refused grant (a deleted key, a skewed clock) needs an operator
            // but should not lose the notifications queued meanwhile.
            let detail = String::from_utf8_lossy(&resp.body[..resp.body.len().min(300)]).into_owned();
            return Err(PushError::Retry {
                reason: format!(
                    "the OAuth token endpoint {} answered {}: {detail}; if this persists, check that the service-account key is not deleted (Google Cloud console > IAM > Service accounts) and that this server's clock is right",
                    self.token_uri, resp.status
                ),
                retry_after: retry_after(&resp.headers, self.clock.now()),
            });
        }
        let t: TokenResponse = serde_json::from_slice(&resp.body).map_err(|e| {
            PushError::retry(format!("the OAuth token endpoint {} answered with no usable token: {e}", self.token_uri))
        })?;
        tracing::debug!(expires_in = t.expires_in, "fetched an FCM access token");
        Ok(AccessToken { token: t.access_token, expires_at: asked_at + Duration::from_secs(t.expires_in) })
    }

    async fn post(&self, body: &Bytes, token: &str) -> Result<crate::http::Response, PushError> {
        let req = Request::builder()
            .method(Method::POST)
            .uri(self.send_uri.clone())
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(http::header::CONTENT_TYPE, "application/json; charset=UTF-8")
            .body(Full::new(body.clone()))
            .map_err(|e| PushError::undeliverable(format!("cannot build the FCM request: {e}")))?;
        self.http.send(req).await.map_err(|e| PushError::retry(format!("no answer from FCM at {}: {e}", self.send_uri)))
    }
}

#[async_trait]
impl PushProvider for FcmProvider {
    async fn send(&self, n: &Notification) -> Result<(), PushError> {
        if n.platform != Platform::Fcm {
            return Err(PushError::undeliverable(format!(
                "the FCM provider was handed a {:?} notification; route by platform",
                n.platform
            )));
        }
        if n.token.is_empty() {
            return Err(PushError::token_invalid("the FCM registration token is empty"));
        }
        let body = Bytes::from(serde_json::to_vec(&fcm_message(n)).expect("a JSON value always serializes"));
        let mut token = self.access_token(None).await?;
        let mut resent = false;
        loop {
            let resp = self.post(&body, &token).await?;
            if resp.status.is_success() {
                return Ok(());
            }
            let err = serde_json::from_slice::<FcmErrorBody>(&resp.body).ok().map(|b| b.error);
            let error_code = err.as_ref().and_then(|e| e.details.iter().find_map(|d| d.error_code.clone()));
            if resp.status == StatusCode::UNAUTHORIZED
                && error_code.as_deref() != Some("THIRD_PARTY_AUTH_ERROR")
                && !resent
            {
                tracing::info!(utterance = %n.utterance_id, "FCM refused the access token; fetching a new one and sending again");
                token = self.access_token(Some(&token)).await?;
                resent = true;
                continue;
            }
            return Err(map_fcm_error(
                resp.status.as_u16(),
                err.as_ref().and_then(|e| e.status.as_deref()),
                error_code.as_deref(),
                err.as_ref().and_then(|e| e.message.as_deref()),
                retry_after(&resp.headers, self.clock.now()),
            ));
        }
    }

    fn name(&self) -> &'static str {
        "fcm"
    }
}

/// FCM's error body: `{"error": {"code", "message", "status", "details":
/// [{"@type", "errorCode"}]}}`.
#[derive(Deserialize)]
struct FcmErrorBody {
    error: FcmErrorInner,
}

#[derive(Deserialize)]
struct FcmErrorInner {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    details: Vec<FcmErrorDetail>,
}

#[derive(Deserialize)]
struct FcmErrorDetail {
    #[serde(rename = "errorCode", default)]
    error_code: Option<String>,
}

/// The HTTP v1 request body for `n`; see the module doc.
pub fn fcm_message(n: &Notification) -> Value {
    let cid = n.collapse_id();
    let mut message = json!({
        "token": n.token,
        "notification": { "title": n.title, "body": n.body },
        "android": { "collapse_key": cid, "notification": { "tag": cid } },
        "apns": { "headers": { "apns-collapse-id": cid } },
    });
    if !n.data.is_empty() {
        message["data"] = json!(n.string_data());
    }
    json!({ "message": message })
}

/// Maps an FCM error answer to the caller's action:
///
/// | status | FCM error code / status | action |
/// | --- | --- | --- |
/// | 404 | `UNREGISTERED` (or any 404) | [`PushError::TokenInvalid`] |
/// | 403 | `SENDER_ID_MISMATCH` | [`PushError::TokenInvalid`] (the token belongs to another Firebase project) |
/// | 400 | `INVALID_ARGUMENT` whose message is about the token | [`PushError::TokenInvalid`] |
/// | 400 | any other | [`PushError::Undeliverable`] |
/// | 401 | `THIRD_PARTY_AUTH_ERROR` | [`PushError::Undeliverable`] (the APNs key uploaded to Firebase is refused) |
/// | 401 | other | [`PushError::Retry`] (the provider fetches a new access token first) |
/// | 403 | other (`PERMISSION_DENIED`) | [`PushError::Undeliverable`] |
/// | 429 | `QUOTA_EXCEEDED` | [`PushError::Retry`], after `retry_after` |
/// | 5xx | `INTERNAL`, `UNAVAILABLE` | [`PushError::Retry`], after `retry_after` |
/// | other 4xx | | [`PushError::Undeliverable`] |
/// | anything else | | [`PushError::Retry`] |
pub fn map_fcm_error(
    status: u16,
    rpc_status: Option<&str>,
    error_code: Option<&str>,
    message: Option<&str>,
    retry_after: Option<Duration>,
) -> PushError {
    let code = error_code.or(rpc_status).unwrap_or("no error code");
    let msg = message.unwrap_or("");
    let said = format!("FCM answered {status} {code}: {msg}");
    let about_token = msg.to_ascii_lowercase().contains("token");
    match (status, code) {
        (404, _) | (_, "UNREGISTERED") => {
            PushError::token_invalid(format!("{said} (the app was uninstalled or the token expired)"))
        }
        (_, "SENDER_ID_MISMATCH") => {
            PushError::token_invalid(format!("{said} (the token belongs to another Firebase project)"))
        }
        (400, _) if about_token => PushError::token_invalid(format!("{said} (the token is malformed)")),
        (400, _) => PushError::undeliverable(format!(
            "{said} (the message is malformed; this is a bug in lanyard-push or in the notification's data)"
        )),
        (401, "THIRD_PARTY_AUTH_ERROR") => PushError::undeliverable(format!(
            "{said} (the APNs key or certificate uploaded in Firebase > Project settings > Cloud Messaging is refused)"
        )),
        (401, _) => PushError::Retry { reason: format!("{said} (the access token was refused)"), retry_after },
        (403, _) => PushError::undeliverable(format!(
            "{said} (the service account may not send: give it the Firebase Cloud Messaging API Admin role and enable the FCM API v1)"
        )),
        (429, _) => PushError::Retry { reason: format!("{said} (sending too fast)"), retry_after },
        (500..=599, _) => PushError::Retry { reason: format!("{said} (FCM is having trouble)"), retry_after },
        (400..=499, _) => PushError::undeliverable(said),
        _ => PushError::Retry { reason: format!("{said} (unexpected answer)"), retry_after },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn message_has_the_documented_shape() {
        let mut data = serde_json::Map::new();
        data.insert("kind".into(), json!("reply"));
        data.insert("n".into(), json!(3));
        let id = Uuid::from_u128(7);
        let n = Notification {
            utterance_id: id,
            platform: Platform::Fcm,
            token: "tok".into(),
            apns_environment: crate::ApnsEnvironment::Production,
            title: "T".into(),
            body: "B".into(),
            data,
        };
        let cid = id.to_string();
        assert_eq!(
            fcm_message(&n),
            json!({"message": {
                "token": "tok",
                "notification": {"title": "T", "body": "B"},
                "android": {"collapse_key": cid, "notification": {"tag": cid}},
                "apns": {"headers": {"apns-collapse-id": cid}},
                "data": {"kind": "reply", "n": "3"},
            }})
        );
    }

    #[test]
    fn error_mapping_follows_the_fcm_table() {
        use PushError::*;
        assert!(matches!(map_fcm_error(404, Some("NOT_FOUND"), Some("UNREGISTERED"), None, None), TokenInvalid { .. }));
        assert!(matches!(
            map_fcm_error(
                400,
                Some("INVALID_ARGUMENT"),
                Some("INVALID_ARGUMENT"),
                Some("The registration token is not a valid FCM registration token"),
                None
            ),
            TokenInvalid { .. }
        ));
        assert!(matches!(
            map_fcm_error(
                400,
                Some("INVALID_ARGUMENT"),
                Some("INVALID_ARGUMENT"),
                Some("Invalid JSON payload received."),
                None
            ),
            Undeliverable { .. }
        ));
        assert!(matches!(
            map_fcm_error(403, Some("PERMISSION_DENIED"), Some("SENDER_ID_MISMATCH"), None, None),
            TokenInvalid { .. }
        ));
        assert!(matches!(map_fcm_error(403, Some("PERMISSION_DENIED"), None, None, None), Undeliverable { .. }));
        assert!(matches!(map_fcm_error(401, Some("UNAUTHENTICATED"), None, None, None), Retry { .. }));
        assert!(matches!(map_fcm_error(401, None, Some("THIRD_PARTY_AUTH_ERROR"), None, None), Undeliverable { .. }));
        let wait = Some(Duration::from_secs(9));
        assert!(
            matches!(map_fcm_error(429, None, Some("QUOTA_EXCEEDED"), None, wait), Retry { retry_after, .. } if retry_after == wait)
        );
        assert!(matches!(map_fcm_error(500, Some("INTERNAL"), None, None, None), Retry { .. }));
        assert!(matches!(map_fcm_error(503, Some("UNAVAILABLE"), None, None, None), Retry { .. }));
    }
}
