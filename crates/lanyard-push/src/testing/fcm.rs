//! [`FcmPeer`]: Google's OAuth token endpoint and FCM's HTTP v1 send
//! endpoint, on loopback, checking what Google checks.
//!
//! `POST /token` (form-encoded) checks, answering Google's `400
//! {"error": ...}` on failure:
//!
//! - `grant_type` is `urn:ietf:params:oauth:grant-type:jwt-bearer`
//!   (`unsupported_grant_type`);
//! - the assertion is RS256, signed by the service account's key, with `iss`
//!   = the account's email, `aud` = this endpoint, `scope` including
//!   [`crate::FCM_SCOPE`], `iat` not in the future and `exp` after now and at
//!   most an hour after `iat` (`invalid_grant`).
//!
//! and then issues `ya29.peer-N` valid `token_lifetime`.
//!
//! `POST /v1/projects/{project}/messages:send` checks, answering FCM's
//! `{"error": {"code", "message", "status", "details"}}` on failure:
//!
//! - `Authorization: Bearer` names an issued, unexpired, unrevoked token
//!   (`401 UNAUTHENTICATED`);
//! - the project is the account's (`403 PERMISSION_DENIED`);
//! - the body is `{"message": ...}` with a non-empty `token`, a
//!   `notification` with string `title` and `body`, `data` (if any) of
//!   strings only, and (Lanyard's rule) one collapse id of at most 64 bytes
//!   in `android.collapse_key`, `android.notification.tag` and
//!   `apns.headers.apns-collapse-id` (`400 INVALID_ARGUMENT`).
//!
//! A request that passes is answered by the script (by default `200` with
//! a message name).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Endpoint, Server, TestServiceAccount, parse_form, system_clock};
use crate::{Clock, FCM_SCOPE, MAX_COLLAPSE_ID_BYTES};

/// Decides the answer to a message that passed every check.
pub type FcmScript = Arc<dyn Fn(&ReceivedMessage) -> FcmReply + Send + Sync>;

/// An answer to a send: a status and FCM's error fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FcmReply {
    pub status: u16,
    /// The RPC status, such as `NOT_FOUND`.
    pub rpc_status: Option<String>,
    /// The FCM error code in `details`, such as `UNREGISTERED`.
    pub error_code: Option<String>,
    pub message: Option<String>,
    /// Seconds, sent as `Retry-After`.
    pub retry_after: Option<u64>,
}

impl FcmReply {
    /// `200`, accepted.
    pub fn ok() -> Self {
        Self { status: 200, rpc_status: None, error_code: None, message: None, retry_after: None }
    }

    /// An error as FCM writes it.
    pub fn error(status: u16, rpc_status: &str, error_code: Option<&str>, message: &str) -> Self {
        Self {
            status,
            rpc_status: Some(rpc_status.into()),
            error_code: error_code.map(str::to_owned),
            message: Some(message.into()),
            retry_after: None,
        }
    }

    /// What FCM answers for an uninstalled app's token.
    pub fn unregistered() -> Self {
        Self::error(404, "NOT_FOUND", Some("UNREGISTERED"), "Requested entity was not found.")
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

/// What the peer needs to know to check requests.
#[derive(Clone)]
pub struct FcmPeerConfig {
    pub project_id: String,
    pub client_email: String,
    /// The service account key's public half, SPKI PEM.
    pub public_key_pem: String,
    /// The `expires_in` of issued tokens; an hour at Google.
    pub token_lifetime: Duration,
    /// The peer's idea of now, for assertion and token ages.
    pub clock: Arc<dyn Clock>,
    pub script: FcmScript,
}

impl FcmPeerConfig {
    /// A peer for `account`, on the system clock, that accepts every
    /// well-formed message.
    pub fn new(account: &TestServiceAccount) -> Self {
        Self {
            project_id: account.project_id.clone(),
            client_email: account.client_email.clone(),
            public_key_pem: account.public_key_pem.clone(),
            token_lifetime: Duration::from_secs(3600),
            clock: system_clock(),
            script: Arc::new(|_| FcmReply::ok()),
        }
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn with_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    pub fn with_script(mut self, script: impl Fn(&ReceivedMessage) -> FcmReply + Send + Sync + 'static) -> Self {
        self.script = Arc::new(script);
        self
    }
}

/// One request to the token endpoint.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub form: Vec<(String, String)>,
    pub received_at: Instant,
    /// The status answered.
    pub answered_status: u16,
    /// The error answered (`invalid_grant: ...`), if any.
    pub answered_error: Option<String>,
    /// The access token issued, if any.
    pub issued: Option<String>,
}

/// One request to the send endpoint.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    pub path: String,
    /// The bearer token presented.
    pub access_token: Option<String>,
    /// The request body as JSON (`{"message": ...}`), `Null` if not JSON.
    pub body: Value,
    pub received_at: Instant,
    pub received_system: SystemTime,
    pub answered_status: u16,
    /// The error message answered, if any.
    pub answered_error: Option<String>,
}

impl ReceivedMessage {
    /// The `message` object.
    pub fn message(&self) -> &Value {
        &self.body["message"]
    }
}

#[derive(Debug, Deserialize)]
struct AssertionClaims {
    scope: String,
    iat: u64,
    exp: u64,
}

struct State {
    cfg: Mutex<FcmPeerConfig>,
    decoding_key: DecodingKey,
    /// Filled once the listener's address is known.
    token_uri: Mutex<String>,
    /// Issued token -> its expiry (peer clock).
    tokens: Mutex<HashMap<String, SystemTime>>,
    token_requests: Mutex<Vec<TokenRequest>>,
    received: Mutex<Vec<ReceivedMessage>>,
}

/// Google's token endpoint and FCM's send endpoint; see the module doc.
/// Stops when dropped.
pub struct FcmPeer {
    server: Server,
    state: Arc<State>,
}

impl FcmPeer {
    /// Starts a peer on `127.0.0.1:0`, over TLS (HTTP/1.1 or HTTP/2).
    pub async fn start(cfg: FcmPeerConfig) -> std::io::Result<Self> {
        let decoding_key = DecodingKey::from_rsa_pem(cfg.public_key_pem.as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("public_key_pem: {e}")))?;
        let state = Arc::new(State {
            cfg: Mutex::new(cfg),
            decoding_key,
            token_uri: Mutex::default(),
            tokens: Mutex::default(),
            token_requests: Mutex::default(),
            received: Mutex::default(),
        });
        let server = Server::start(state.clone(), &[b"h2", b"http/1.1"], false).await?;
        *state.token_uri.lock().unwrap() = format!("{}/token", server.url());
        Ok(Self { server, state })
    }

    /// The base URL, for [`crate::FcmConfig::base_url`].
    pub fn base_url(&self) -> String {
        self.server.url()
    }

    /// The token endpoint, for the service-account file's `token_uri` or
    /// [`crate::FcmConfig::token_uri_override`].
    pub fn token_uri(&self) -> String {
        self.state.token_uri.lock().unwrap().clone()
    }

    /// The peer's self-signed certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.server.cert_pem
    }

    /// Writes the certificate into `dir`, for `extra_root_certs`.
    pub fn write_cert(&self, dir: &Path) -> PathBuf {
        super::write_file(dir, &format!("fcm-peer-{}.pem", self.server.addr.port()), &self.server.cert_pem)
    }

    /// Replaces the script.
    pub fn set_script(&self, script: impl Fn(&ReceivedMessage) -> FcmReply + Send + Sync + 'static) {
        self.state.cfg.lock().unwrap().script = Arc::new(script);
    }

    /// Makes every token issued so far invalid, as if Google revoked them.
    pub fn revoke_tokens(&self) {
        self.state.tokens.lock().unwrap().clear();
    }

    /// Every token request so far, oldest first.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.state.token_requests.lock().unwrap().clone()
    }

    /// How many access tokens were issued.
    pub fn tokens_issued(&self) -> usize {
        self.state.token_requests.lock().unwrap().iter().filter(|r| r.issued.is_some()).count()
    }

    /// Every send request so far, oldest first.
    pub fn received(&self) -> Vec<ReceivedMessage> {
        self.state.received.lock().unwrap().clone()
    }
}

fn json_response(status: u16, body: &Value, retry_after: Option<u64>) -> Response<Full<Bytes>> {
    let mut resp = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(http::header::CONTENT_TYPE, "application/json; charset=UTF-8");
    if let Some(secs) = retry_after {
        resp = resp.header(http::header::RETRY_AFTER, secs.to_string());
    }
    resp.body(Full::new(Bytes::from(body.to_string()))).expect("a valid response")
}

impl Endpoint for State {
    fn handle(&self, req: Request<Bytes>) -> Response<Full<Bytes>> {
        let cfg = self.cfg.lock().unwrap().clone();
        let (parts, body) = req.into_parts();
        let path = parts.uri.path();
        if parts.method != Method::POST {
            return json_response(405, &json!({"error": "method not allowed"}), None);
        }
        if path == "/token" {
            return self.token(&cfg, &parts.headers, &body);
        }
        if let Some(rest) = path.strip_prefix("/v1/projects/")
            && let Some(project) = rest.strip_suffix("/messages:send")
        {
            return self.send(&cfg, project, path, &parts.headers, &body);
        }
        json_response(
            404,
            &json!({"error": {"code": 404, "message": format!("no such endpoint {path}"), "status": "NOT_FOUND"}}),
            None,
        )
    }
}

impl State {
    fn token(&self, cfg: &FcmPeerConfig, headers: &http::HeaderMap, body: &[u8]) -> Response<Full<Bytes>> {
        let form = parse_form(body);
        let mut rec = TokenRequest {
            form: form.clone(),
            received_at: Instant::now(),
            answered_status: 0,
            answered_error: None,
            issued: None,
        };
        let result = self.check_assertion(cfg, headers, &form);
        let resp = match result {
            Ok(()) => {
                let token = format!("ya29.peer-{}", self.token_requests.lock().unwrap().len() + 1);
                self.tokens.lock().unwrap().insert(token.clone(), cfg.clock.now() + cfg.token_lifetime);
                rec.answered_status = 200;
                rec.issued = Some(token.clone());
                json_response(
                    200,
                    &json!({"access_token": token, "expires_in": cfg.token_lifetime.as_secs(), "token_type": "Bearer"}),
                    None,
                )
            }
            Err((error, description)) => {
                rec.answered_status = 400;
                rec.answered_error = Some(format!("{error}: {description}"));
                json_response(400, &json!({"error": error, "error_description": description}), None)
            }
        };
        self.token_requests.lock().unwrap().push(rec);
        resp
    }

    fn check_assertion(
        &self,
        cfg: &FcmPeerConfig,
        headers: &http::HeaderMap,
        form: &[(String, String)],
    ) -> Result<(), (&'static str, String)> {
        let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let content_type = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !content_type.starts_with("application/x-www-form-urlencoded") {
            return Err(("invalid_request", format!("content-type {content_type:?} is not a form")));
        }
        if field("grant_type") != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
            return Err(("unsupported_grant_type", "Invalid grant_type".into()));
        }
        let assertion =
            field("assertion").ok_or(("invalid_request", "Missing required parameter: assertion".to_owned()))?;
        let header =
            jsonwebtoken::decode_header(assertion).map_err(|e| ("invalid_grant", format!("Invalid JWT: {e}")))?;
        if header.alg != Algorithm::RS256 {
            return Err(("invalid_grant", format!("Invalid JWT: alg {:?}, want RS256", header.alg)));
        }
        let mut validation = Validation::new(Algorithm::RS256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.set_issuer(&[&cfg.client_email]);
        let token_uri = self.token_uri.lock().unwrap().clone();
        validation.set_audience(&[&token_uri]);
        let claims = jsonwebtoken::decode::<AssertionClaims>(assertion, &self.decoding_key, &validation)
            .map_err(|e| ("invalid_grant", format!("Invalid JWT Signature or claims: {e}")))?
            .claims;
        if !claims.scope.split(' ').any(|s| s == FCM_SCOPE) {
            return Err(("invalid_scope", format!("scope {:?} lacks {FCM_SCOPE}", claims.scope)));
        }
        let now = cfg.clock.unix_secs();
        if claims.iat > now + 60 {
            return Err((
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe (iat in the future)"
                    .into(),
            ));
        }
        if claims.exp <= now || claims.exp < claims.iat || claims.exp - claims.iat > 3600 {
            return Err((
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe".into(),
            ));
        }
        Ok(())
    }

    fn send(
        &self,
        cfg: &FcmPeerConfig,
        project: &str,
        path: &str,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Response<Full<Bytes>> {
        let access_token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::to_owned);
        let mut rec = ReceivedMessage {
            path: path.to_owned(),
            access_token,
            body: serde_json::from_slice(body).unwrap_or(Value::Null),
            received_at: Instant::now(),
            received_system: cfg.clock.now(),
            answered_status: 0,
            answered_error: None,
        };
        let reply = match self.check_message(cfg, project, &rec) {
            Ok(()) => (cfg.script)(&rec),
            Err(reply) => reply,
        };
        rec.answered_status = reply.status;
        rec.answered_error = reply.message.clone();
        self.received.lock().unwrap().push(rec);
        if reply.status == 200 {
            return json_response(
                200,
                &json!({"name": format!("projects/{project}/messages/0:{}", self.received.lock().unwrap().len())}),
                None,
            );
        }
        let mut error = json!({
            "code": reply.status,
            "message": reply.message.clone().unwrap_or_default(),
            "status": reply.rpc_status.clone().unwrap_or_default(),
        });
        if let Some(code) = &reply.error_code {
            error["details"] =
                json!([{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}]);
        }
        json_response(reply.status, &json!({ "error": error }), reply.retry_after)
    }

    fn check_message(&self, cfg: &FcmPeerConfig, project: &str, rec: &ReceivedMessage) -> Result<(), FcmReply> {
        let unauthenticated = || {
            FcmReply::error(
                401,
                "UNAUTHENTICATED",
                None,
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
            )
        };
        let Some(token) = rec.access_token.as_deref() else {
            return Err(unauthenticated());
        };
        match self.tokens.lock().unwrap().get(token) {
            Some(expiry) if *expiry > cfg.clock.now() => {}
            _ => return Err(unauthenticated()),
        }
        if project != cfg.project_id {
            return Err(FcmReply::error(
                403,
                "PERMISSION_DENIED",
                None,
                &format!(
                    "Permission 'cloudmessaging.messages.create' denied on resource '//cloudresourcemanager.googleapis.com/projects/{project}'"
                ),
            ));
        }
        let invalid = |what: String| Err(FcmReply::error(400, "INVALID_ARGUMENT", Some("INVALID_ARGUMENT"), &what));
        let m = rec.message();
        if !m.is_object() {
            return invalid("Invalid JSON payload received. Peer: no message object.".into());
        }
        match m.get("token").and_then(Value::as_str) {
            None => return invalid("Recipient of the message is not set.".into()),
            Some("") => {
                return invalid("The registration token is not a valid FCM registration token".into());
            }
            Some(_) => {}
        }
        let n = &m["notification"];
        if !n["title"].is_string() || !n["body"].is_string() {
            return invalid("Invalid value at 'message.notification': Peer: title and body must be strings.".into());
        }
        if let Some(data) = m.get("data") {
            let all_strings = data.as_object().is_some_and(|d| d.values().all(Value::is_string));
            if !all_strings {
                return invalid("Invalid value at 'message.data': Peer: every value must be a string.".into());
            }
        }
        let cid = m["android"]["collapse_key"].as_str().unwrap_or("");
        if cid.is_empty() || cid.len() > MAX_COLLAPSE_ID_BYTES {
            return invalid(format!(
                "Invalid value at 'message.android.collapse_key': Peer: {cid:?} is empty or over {MAX_COLLAPSE_ID_BYTES} bytes."
            ));
        }
        if m["android"]["notification"]["tag"].as_str() != Some(cid) {
            return invalid(
                "Invalid value at 'message.android.notification.tag': Peer: must equal the collapse key.".into(),
            );
        }
        if m["apns"]["headers"]["apns-collapse-id"].as_str() != Some(cid) {
            return invalid(
                "Invalid value at 'message.apns.headers': Peer: apns-collapse-id must equal the collapse key.".into(),
            );
        }
        Ok(())
    }
}
