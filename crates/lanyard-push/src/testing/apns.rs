//! [`ApnsPeer`]: an APNs look-alike on loopback that checks what Apple
//! checks, and what Lanyard promises on top.
//!
//! The checks, in Apple's order, and the answer to each failure:
//!
//! | check | answer |
//! | --- | --- |
//! | HTTP/2 (ALPN `h2` only; HTTP/1 is refused at the connection) | — |
//! | `POST` | `405 MethodNotAllowed` |
//! | path `/3/device/{hex token}` | `404 BadPath`, `400 BadDeviceToken` |
//! | no header given twice | `400 DuplicateHeaders` |
//! | `authorization: bearer <JWT>` present | `403 MissingProviderToken` |
//! | JWT: ES256, `kid` = key id, signature by the key, `iss` = team id | `403 InvalidProviderToken` |
//! | JWT `iat` at most an hour old | `403 ExpiredProviderToken` |
//! | JWT `iat` not more than a minute in the future | `403 InvalidProviderToken` |
//! | `apns-topic` present, the configured topic | `400 MissingTopic`, `400 TopicDisallowed` |
//! | `apns-push-type: alert` | `400 InvalidPushType` |
//! | `apns-priority` 5 or 10 | `400 BadPriority` |
//! | `apns-expiration` present, an integer | `400 BadExpirationDate` |
//! | `apns-collapse-id` present (Lanyard's rule), at most 64 bytes | `400 Peer: MissingCollapseId`, `400 BadCollapseId` |
//! | `apns-id`, if any, a UUID | `400 BadMessageId` |
//! | payload not empty, at most 4096 bytes | `400 PayloadEmpty`, `413 PayloadTooLarge` |
//! | payload JSON with `aps.alert` an object (Lanyard's rule) | `400 Peer: BadPayload` |
//!
//! A request that passes is answered by the script (by default `200`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::Full;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::{Endpoint, Server, TestApnsKey, system_clock};
use crate::{APNS_MAX_PAYLOAD, Clock, MAX_COLLAPSE_ID_BYTES};

/// Decides the answer to a request that passed every check.
pub type ApnsScript = Arc<dyn Fn(&ReceivedPush) -> PeerReply + Send + Sync>;

/// An answer: a status, an APNs reason, and optionally a `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerReply {
    pub status: u16,
    pub reason: Option<String>,
    /// Seconds, sent as `Retry-After`.
    pub retry_after: Option<u64>,
}

impl PeerReply {
    /// `200`, delivered.
    pub fn ok() -> Self {
        Self { status: 200, reason: None, retry_after: None }
    }

    /// An error with Apple's reason string, such as `(410, "Unregistered")`.
    pub fn error(status: u16, reason: &str) -> Self {
        Self { status, reason: Some(reason.into()), retry_after: None }
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

/// What the peer needs to know to check requests.
#[derive(Clone)]
pub struct ApnsPeerConfig {
    pub key_id: String,
    pub team_id: String,
    /// The signing key's public half, SPKI PEM.
    pub public_key_pem: String,
    /// The bundle id requests must name.
    pub topic: String,
    /// The peer's idea of now, for the token's age.
    pub clock: Arc<dyn Clock>,
    pub script: ApnsScript,
}

impl ApnsPeerConfig {
    /// A peer for `key`'s team and `topic`, on the system clock, that
    /// accepts every well-formed request.
    pub fn new(key: &TestApnsKey, topic: &str) -> Self {
        Self {
            key_id: key.key_id.clone(),
            team_id: key.team_id.clone(),
            public_key_pem: key.public_key_pem.clone(),
            topic: topic.into(),
            clock: system_clock(),
            script: Arc::new(|_| PeerReply::ok()),
        }
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn with_script(mut self, script: impl Fn(&ReceivedPush) -> PeerReply + Send + Sync + 'static) -> Self {
        self.script = Arc::new(script);
        self
    }
}

/// One request as the peer received it, and what it answered.
#[derive(Debug, Clone)]
pub struct ReceivedPush {
    pub version: Version,
    pub method: Method,
    pub path: String,
    /// The `{token}` of `/3/device/{token}`, when the path has that shape.
    pub device_token: Option<String>,
    pub headers: HeaderMap,
    /// The bearer JWT, as sent.
    pub jwt: Option<String>,
    /// The JWT's `iat`, when it verified.
    pub jwt_iat: Option<u64>,
    pub body: Bytes,
    /// The body as JSON, when it is JSON.
    pub payload: Option<Value>,
    pub received_at: Instant,
    /// The peer clock's time at receipt.
    pub received_system: SystemTime,
    /// The status the peer answered.
    pub answered_status: u16,
    /// The reason the peer answered, if not `200`.
    pub answered_reason: Option<String>,
}

impl ReceivedPush {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
    iat: u64,
}

struct State {
    cfg: Mutex<ApnsPeerConfig>,
    decoding_key: DecodingKey,
    received: Mutex<Vec<ReceivedPush>>,
    jwts: Mutex<HashSet<String>>,
}

/// An APNs look-alike; see the module doc. Stops when dropped.
pub struct ApnsPeer {
    server: Server,
    state: Arc<State>,
}

impl ApnsPeer {
    /// Starts a peer on `127.0.0.1:0`.
    pub async fn start(cfg: ApnsPeerConfig) -> std::io::Result<Self> {
        let decoding_key = DecodingKey::from_ec_pem(cfg.public_key_pem.as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("public_key_pem: {e}")))?;
        let state =
            Arc::new(State { cfg: Mutex::new(cfg), decoding_key, received: Mutex::default(), jwts: Mutex::default() });
        let server = Server::start(state.clone(), &[b"h2"], true).await?;
        Ok(Self { server, state })
    }

    /// The base URL, for [`crate::ApnsConfig::production_url`] or
    /// [`crate::ApnsConfig::sandbox_url`].
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The peer's self-signed certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.server.cert_pem
    }

    /// Writes the certificate into `dir`, for `extra_root_certs`.
    pub fn write_cert(&self, dir: &Path) -> PathBuf {
        super::write_file(dir, &format!("apns-peer-{}.pem", self.server.addr.port()), &self.server.cert_pem)
    }

    /// The `[push.apns]` section of a server config that pushes to this
    /// peer, signing with `key` (written into `dir`, with the peer's
    /// certificate) for `topic`.
    pub fn apns_config_toml(&self, dir: &Path, key: &super::TestApnsKey, topic: &str) -> String {
        let key_path = key.write(dir);
        let cert = self.write_cert(dir);
        format!(
            "[push.apns]\nkey_path = {key_path:?}\nkey_id = {key_id:?}\nteam_id = {team_id:?}\ntopic = {topic:?}\n\
             production_url = {url:?}\nsandbox_url = {url:?}\nextra_root_certs = [{cert:?}]\n",
            key_id = key.key_id,
            team_id = key.team_id,
            url = self.url(),
        )
    }

    /// Replaces the script.
    pub fn set_script(&self, script: impl Fn(&ReceivedPush) -> PeerReply + Send + Sync + 'static) {
        self.state.cfg.lock().unwrap().script = Arc::new(script);
    }

    /// Every request so far, oldest first.
    pub fn received(&self) -> Vec<ReceivedPush> {
        self.state.received.lock().unwrap().clone()
    }

    /// How many distinct provider tokens have been presented, valid or not.
    pub fn jwts_seen(&self) -> usize {
        self.state.jwts.lock().unwrap().len()
    }
}

impl Endpoint for State {
    fn handle(&self, req: Request<Bytes>) -> Response<Full<Bytes>> {
        let cfg = self.cfg.lock().unwrap().clone();
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_owned();
        let jwt = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bearer ").or_else(|| v.strip_prefix("Bearer ")))
            .map(str::to_owned);
        if let Some(jwt) = &jwt {
            self.jwts.lock().unwrap().insert(jwt.clone());
        }
        let mut rec = ReceivedPush {
            version: parts.version,
            method: parts.method.clone(),
            device_token: path.strip_prefix("/3/device/").map(str::to_owned),
            path,
            headers: parts.headers.clone(),
            jwt,
            jwt_iat: None,
            payload: serde_json::from_slice(&body).ok(),
            body,
            received_at: Instant::now(),
            received_system: cfg.clock.now(),
            answered_status: 0,
            answered_reason: None,
        };
        let reply = match self.check(&cfg, &mut rec) {
            Ok(()) => (cfg.script)(&rec),
            Err(reply) => reply,
        };
        rec.answered_status = reply.status;
        rec.answered_reason = reply.reason.clone();
        let apns_id = rec.header("apns-id").map(str::to_owned).unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        self.received.lock().unwrap().push(rec);

        let mut resp = Response::builder()
            .status(StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
            .header("apns-id", apns_id);
        if let Some(secs) = reply.retry_after {
            resp = resp.header(http::header::RETRY_AFTER, secs.to_string());
        }
        let body = match &reply.reason {
            None => Bytes::new(),
            Some(reason) => {
                resp = resp.header(http::header::CONTENT_TYPE, "application/json");
                let mut v = serde_json::json!({ "reason": reason });
                if reply.status == 410 {
                    v["timestamp"] = serde_json::json!(cfg.clock.unix_secs() * 1000);
                }
                Bytes::from(v.to_string())
            }
        };
        resp.body(Full::new(body)).expect("a valid response")
    }
}

impl State {
    /// The checks of the module doc, in order; the first failure is the
    /// answer.
    fn check(&self, cfg: &ApnsPeerConfig, rec: &mut ReceivedPush) -> Result<(), PeerReply> {
        let fail = |status, reason: &str| Err(PeerReply::error(status, reason));
        if rec.version != Version::HTTP_2 {
            return fail(505, "Peer: HTTP/2 required");
        }
        if rec.method != Method::POST {
            return fail(405, "MethodNotAllowed");
        }
        let Some(token) = rec.device_token.as_deref() else {
            return fail(404, "BadPath");
        };
        if token.is_empty() {
            return fail(400, "MissingDeviceToken");
        }
        if !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return fail(400, "BadDeviceToken");
        }
        for name in rec.headers.keys() {
            if rec.headers.get_all(name).iter().count() > 1 {
                return fail(400, "DuplicateHeaders");
            }
        }

        let Some(jwt) = rec.jwt.clone() else {
            return fail(403, "MissingProviderToken");
        };
        let header = jsonwebtoken::decode_header(&jwt).map_err(|_| PeerReply::error(403, "InvalidProviderToken"))?;
        if header.alg != Algorithm::ES256 || header.kid.as_deref() != Some(cfg.key_id.as_str()) {
            return fail(403, "InvalidProviderToken");
        }
        let mut validation = Validation::new(Algorithm::ES256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        let claims = jsonwebtoken::decode::<Claims>(&jwt, &self.decoding_key, &validation)
            .map_err(|_| PeerReply::error(403, "InvalidProviderToken"))?
            .claims;
        if claims.iss != cfg.team_id {
            return fail(403, "InvalidProviderToken");
        }
        let now = cfg.clock.unix_secs();
        if claims.iat + 3600 < now {
            return fail(403, "ExpiredProviderToken");
        }
        if claims.iat > now + 60 {
            return fail(403, "InvalidProviderToken");
        }
        rec.jwt_iat = Some(claims.iat);

        match rec.header("apns-topic") {
            None => return fail(400, "MissingTopic"),
            Some(t) if t != cfg.topic => return fail(400, "TopicDisallowed"),
            Some(_) => {}
        }
        if rec.header("apns-push-type") != Some("alert") {
            return fail(400, "InvalidPushType");
        }
        if let Some(p) = rec.headers.get("apns-priority")
            && !matches!(p.as_bytes(), b"5" | b"10")
        {
            return fail(400, "BadPriority");
        }
        if rec.header("apns-expiration").and_then(|v| v.parse::<u64>().ok()).is_none() {
            return fail(400, "BadExpirationDate");
        }
        match rec.headers.get("apns-collapse-id") {
            None => return fail(400, "Peer: MissingCollapseId"),
            Some(c) if c.len() > MAX_COLLAPSE_ID_BYTES => return fail(400, "BadCollapseId"),
            Some(_) => {}
        }
        if let Some(id) = rec.headers.get("apns-id")
            && id.to_str().ok().and_then(|s| uuid::Uuid::parse_str(s).ok()).is_none()
        {
            return fail(400, "BadMessageId");
        }

        if rec.body.is_empty() {
            return fail(400, "PayloadEmpty");
        }
        if rec.body.len() > APNS_MAX_PAYLOAD {
            return fail(413, "PayloadTooLarge");
        }
        let alert_ok =
            rec.payload.as_ref().and_then(|p| p.get("aps")).and_then(|a| a.get("alert")).is_some_and(Value::is_object);
        if !alert_ok {
            return fail(400, "Peer: BadPayload");
        }
        Ok(())
    }
}
