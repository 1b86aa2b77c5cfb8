//! The webhook responder: POST the transcript to the operator's endpoint, show its answer.
//!
//! # The request
//!
//! For every utterance, Lanyard sends
//!
//! ```text
//! POST {url}
//! Content-Type: application/json
//! X-Lanyard-Signature: t=1718000000,v1=5f2c…(64 hex digits)
//! X-Lanyard-Utterance: 0190f5a2-…
//!
//! {"utterance_id":"0190f5a2-…","device_id":"…","device_name":"kitchen",
//!  "transcript":"remind me to buy milk",
//!  "segments":[{"start":0.0,"end":2.1,"text":"remind me to buy milk"}],
//!  "received_end_ms":1718000000123,"audio_secs":2.1}
//! ```
//!
//! The body is a [`ReplyRequest`]. `segments` holds the transcript in timed
//! pieces (seconds from the start of the utterance; `words` inside a segment
//! where the engine timed them); it is empty for text sent by the phone, and
//! a hook that does not need times can ignore it. `X-Lanyard-Utterance` repeats its
//! `utterance_id`: the same utterance can arrive more than once (retries, or a
//! server restart before the reply was stored), so a hook with side effects
//! should deduplicate on it.
//!
//! # The answer
//!
//! A `2xx` with a JSON object:
//!
//! ```json
//! {"title": "Noted", "body": "Milk is on your list.", "data": {"list": "groceries"}}
//! ```
//!
//! - `title` (required): cut to [`MAX_TITLE_CHARS`] with an ellipsis.
//! - `body` (required, not blank): cut to [`MAX_BODY_CHARS`] with an ellipsis.
//! - `data` (optional): at most [`MAX_DATA_ENTRIES`] entries whose values are
//!   **strings**, because FCM carries only string data. Values are cut to
//!   [`MAX_DATA_VALUE_CHARS`]; keys longer than [`MAX_DATA_KEY_CHARS`] and the
//!   keys FCM reserves (`from`, `notification`, `message_type`, anything
//!   starting with `google` or `gcm`) are errors, as is `fallback`, which
//!   Lanyard uses itself. With those limits an ASCII reply fits FCM's 4 KB.
//! - Other fields are ignored, so a hook can grow without breaking.
//!
//! An answer that is not such an object is an error and is **not** retried
//! (the hook would most likely say the same again): the [`Fallback`] applies.
//! Redirects are not followed. Timeouts and retries are described in
//! [`crate::retry`].
//!
//! # The signature
//!
//! The header `X-Lanyard-Signature: t={unix_secs},v1={hex}` proves that the
//! request came from a server holding the shared secret and that the body was
//! not changed. `v1` is the lowercase hex HMAC-SHA256, keyed with the secret's
//! UTF-8 bytes, of
//!
//! ```text
//! {t}.{raw request body}
//! ```
//!
//! (the decimal timestamp, a full stop, then the body bytes exactly as
//! received). Each attempt is signed afresh, with its own timestamp. To verify:
//!
//! 1. Split the header on `,` and each part on the first `=`; take `t` and
//!    every `v1` (later versions or a secret rotation may add more entries;
//!    ignore keys you do not know).
//! 2. Reject the request if `t` is more than a few minutes (we suggest
//!    [`DEFAULT_TOLERANCE`], 5 minutes) from your clock: a captured request
//!    cannot be replayed later.
//! 3. Compute the HMAC over the **raw** body (not re-serialized JSON) and
//!    compare it with each `v1` in constant time.
//!
//! In Python:
//!
//! ```python
//! import hashlib, hmac, time
//!
//! def verify(secret: bytes, header: str, body: bytes, tolerance: int = 300) -> bool:
//!     t, signatures = None, []
//!     for part in header.split(","):
//!         key, _, value = part.strip().partition("=")
//!         if key == "t":
//!             t = value
//!         elif key == "v1":
//!             signatures.append(value)
//!     if t is None or not t.isdigit() or abs(time.time() - int(t)) > tolerance:
//!         return False
//!     expected = hmac.new(secret, t.encode() + b"." + body, hashlib.sha256).hexdigest()
//!     return any(hmac.compare_digest(expected, s) for s in signatures)
//!
//! # In Flask: verify(SECRET, request.headers["X-Lanyard-Signature"], request.get_data())
//! ```
//!
//! In Rust, with this crate:
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use lanyard_respond::webhook::{sign, verify_signature, DEFAULT_TOLERANCE};
//!
//! let secret = b"a shared secret of 16+ bytes";
//! let body = br#"{"transcript":"hello"}"#;
//! let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_718_000_000);
//! let header = sign(secret, 1_718_000_000, body); // what Lanyard sends
//! assert!(verify_signature(secret, &header, body, now, DEFAULT_TOLERANCE));
//! assert!(!verify_signature(secret, &header, b"{}", now, DEFAULT_TOLERANCE));
//! ```

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Sha256;

use crate::config::{Fallback, ResolvedWebhook, Secret, WebhookConfig, process_env};
pub use crate::config::{MAX_BODY_CHARS, MAX_TITLE_CHARS};
use crate::retry::RetryPolicy;
use crate::text::{collapse_whitespace, truncate_chars};
use crate::{ConfigError, Reply, ReplyRequest, RespondError, Responder, builtin};

/// The header carrying `t={unix_secs},v1={hex}`.
pub const SIGNATURE_HEADER: &str = "X-Lanyard-Signature";

/// The header repeating the utterance id, for deduplication without parsing the body.
pub const UTTERANCE_HEADER: &str = "X-Lanyard-Utterance";

/// A suggested limit on the distance between a signature's `t` and the
/// receiver's clock: wide enough for clock drift and retries, narrow enough
/// that a captured request cannot be replayed much later.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// The most `data` entries an answer may carry; see the module docs for the 4 KB budget.
pub const MAX_DATA_ENTRIES: usize = 10;

/// The longest `data` key: a key is an identifier, so it is refused rather than cut.
pub const MAX_DATA_KEY_CHARS: usize = 64;

/// The longest `data` value; longer ones are cut with an ellipsis.
pub const MAX_DATA_VALUE_CHARS: usize = 200;

/// The value of `data.fallback` on a reply made because the webhook failed.
pub const FALLBACK_MARKER: &str = "webhook_failed";

type HmacSha256 = Hmac<Sha256>;

/// The responder that asks the operator's webhook. See the module docs.
#[derive(Debug)]
pub struct Webhook {
    /// One client per responder, so connections to the hook are reused.
    client: reqwest::Client,
    url: reqwest::Url,
    secret: Secret,
    retry: RetryPolicy,
    fallback: Fallback,
}

impl Webhook {
    /// Checks `cfg` (reading `secret_env` from the environment) and builds the responder.
    pub fn new(cfg: &WebhookConfig) -> Result<Self, ConfigError> {
        let ResolvedWebhook { url, secret, retry, fallback } = cfg.resolve(&process_env)?;
        Ok(Webhook { client: crate::http::client(retry.timeout)?, url, secret, retry, fallback })
    }

    /// Asks the hook, with retries, without the fallback.
    async fn ask(&self, req: &ReplyRequest) -> Result<Reply, RespondError> {
        let body = serde_json::to_vec(req).expect("a ReplyRequest always serializes");
        let utterance = req.utterance_id.to_string();
        self.retry
            .run("webhook", req.utterance_id, |_attempt| {
                let signature = sign(self.secret.expose().as_bytes(), unix_now(), &body);
                let request = self
                    .client
                    .post(self.url.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header(SIGNATURE_HEADER, signature)
                    .header(UTTERANCE_HEADER, &utterance)
                    .body(body.clone());
                async move { parse_answer(&crate::http::send(request, None).await?) }
            })
            .await
    }
}

#[async_trait]
impl Responder for Webhook {
    async fn respond(&self, req: &ReplyRequest) -> Result<Reply, RespondError> {
        match self.ask(req).await {
            Ok(reply) => Ok(reply),
            Err(error) => match self.fallback {
                Fallback::Fail => Err(error),
                Fallback::Builtin => {
                    tracing::warn!(utterance = %req.utterance_id, %error, "webhook failed; answering with the built-in acknowledgement");
                    Ok(builtin::fallback(&req.transcript, FALLBACK_MARKER))
                }
            },
        }
    }

    fn name(&self) -> &'static str {
        "webhook"
    }
}

/// The `X-Lanyard-Signature` value for `body` sent at `unix_secs`:
/// `t={unix_secs},v1={hex HMAC-SHA256 of "{unix_secs}.{body}"}`.
pub fn sign(secret: &[u8], unix_secs: u64, body: &[u8]) -> String {
    let tag = mac(secret, unix_secs, body).finalize().into_bytes();
    format!("t={unix_secs},v1={}", hex::encode(tag))
}

/// Checks an `X-Lanyard-Signature` header against the raw `body`.
///
/// True when the header's `t` is within `tolerance` of `now` (either side)
/// and one of its `v1` entries is the HMAC of `{t}.{body}` under `secret`.
/// The comparison is constant-time; a malformed header is simply false.
pub fn verify_signature(secret: &[u8], header: &str, body: &[u8], now: SystemTime, tolerance: Duration) -> bool {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        let Some((key, value)) = part.trim().split_once('=') else { return false };
        match key {
            "t" if timestamp.is_some() => return false, // Two timestamps: ambiguous.
            "t" => timestamp = Some(value),
            "v1" => candidates.push(value),
            _ => {} // A future scheme version; not ours to judge.
        }
    }
    let Some(t) = timestamp.filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())) else {
        return false;
    };
    let Ok(t) = t.parse::<u64>() else { return false };
    let Ok(now) = now.duration_since(SystemTime::UNIX_EPOCH) else { return false };
    if now.as_secs().abs_diff(t) > tolerance.as_secs() {
        return false;
    }
    let expected = mac(secret, t, body);
    candidates.iter().any(|candidate| match hex::decode(candidate) {
        Ok(tag) => expected.clone().verify_slice(&tag).is_ok(),
        Err(_) => false,
    })
}

fn mac(secret: &[u8], unix_secs: u64, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(unix_secs.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The hook's answer as sent; checked by [`parse_answer`].
#[derive(Deserialize)]
struct Answer {
    title: String,
    body: String,
    #[serde(default)]
    data: Option<Map<String, Value>>,
}

/// Parses and checks a hook's answer; see "The answer" in the module docs.
pub(crate) fn parse_answer(bytes: &[u8]) -> Result<Reply, RespondError> {
    let answer: Answer = serde_json::from_slice(bytes).map_err(|e| {
        RespondError::InvalidAnswer(format!("expected a JSON object {{\"title\", \"body\", \"data\"?}}: {e}"))
    })?;
    let body = answer.body.trim();
    if body.is_empty() {
        return Err(RespondError::InvalidAnswer("`body` is empty; a notification must say something".into()));
    }
    let mut data = Map::new();
    let given = answer.data.unwrap_or_default();
    if given.len() > MAX_DATA_ENTRIES {
        return Err(RespondError::InvalidAnswer(format!(
            "`data` has {} entries; at most {MAX_DATA_ENTRIES} fit a push message",
            given.len()
        )));
    }
    for (key, value) in given {
        check_data_key(&key)?;
        let Value::String(value) = value else {
            return Err(RespondError::InvalidAnswer(format!(
                "`data.{key}` is {}; FCM carries only strings, so send it as a JSON string",
                kind_of(&value)
            )));
        };
        data.insert(key, Value::String(truncate_chars(&value, MAX_DATA_VALUE_CHARS)));
    }
    Ok(Reply {
        title: truncate_chars(&collapse_whitespace(&answer.title), MAX_TITLE_CHARS),
        body: truncate_chars(body, MAX_BODY_CHARS),
        data,
    })
}

fn check_data_key(key: &str) -> Result<(), RespondError> {
    let lower = key.to_ascii_lowercase();
    let reason = if key.is_empty() {
        "is empty"
    } else if key.chars().count() > MAX_DATA_KEY_CHARS {
        "is too long (at most 64 characters)"
    } else if matches!(lower.as_str(), "from" | "notification" | "message_type")
        || lower.starts_with("google")
        || lower.starts_with("gcm")
    {
        "is reserved by FCM"
    } else if key == crate::FALLBACK_KEY {
        "is reserved by Lanyard for its fallback marker"
    } else {
        return Ok(());
    };
    let shown = truncate_chars(key, MAX_DATA_KEY_CHARS);
    Err(RespondError::InvalidAnswer(format!("the `data` key `{shown}` {reason}")))
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef-test";
    const T: u64 = 1_718_000_000;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn invalid(json: &str) -> String {
        match parse_answer(json.as_bytes()) {
            Err(RespondError::InvalidAnswer(why)) => why,
            other => panic!("expected InvalidAnswer for {json}, got {other:?}"),
        }
    }

    #[test]
    fn signature_has_the_documented_shape() {
        let header = sign(SECRET, T, b"{}");
        let (t, v1) = header.split_once(',').unwrap();
        assert_eq!(t, "t=1718000000");
        let hex = v1.strip_prefix("v1=").unwrap();
        assert_eq!(hex.len(), 64);
        assert!(hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }

    /// RFC 4231 test case 2 pins the HMAC itself; the message is `{t}.{body}`.
    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        let mut mac = HmacSha256::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let mut mac = HmacSha256::new_from_slice(SECRET).unwrap();
        mac.update(b"1718000000.hello");
        assert_eq!(sign(SECRET, T, b"hello"), format!("t={T},v1={}", hex::encode(mac.finalize().into_bytes())));
    }

    /// A vector computed with Python's `hmac` module, i.e. the documented
    /// snippet's arithmetic, independently of this crate.
    #[test]
    fn signature_matches_python() {
        let header = sign(b"a shared secret of 16+ bytes", T, br#"{"transcript":"hello"}"#);
        assert_eq!(header, "t=1718000000,v1=592b356a769628a08a9284ecfb9e0b27946b35c37db72c25c749b0344dc815db");
    }

    #[test]
    fn verify_round_trips() {
        let body = br#"{"transcript":"hello"}"#;
        let header = sign(SECRET, T, body);
        assert!(verify_signature(SECRET, &header, body, at(T), DEFAULT_TOLERANCE));
        assert!(verify_signature(SECRET, &header, body, at(T + 300), DEFAULT_TOLERANCE));
        assert!(verify_signature(SECRET, &header, body, at(T - 300), DEFAULT_TOLERANCE));
        assert!(verify_signature(SECRET, &format!(" {} ", header.replace(',', " , ")), body, at(T), DEFAULT_TOLERANCE));
    }

    #[test]
    fn verify_rejects_tampering() {
        let body = br#"{"transcript":"hello"}"#;
        let header = sign(SECRET, T, body);
        let tolerance = DEFAULT_TOLERANCE;
        // Body changed.
        assert!(!verify_signature(SECRET, &header, br#"{"transcript":"hellp"}"#, at(T), tolerance));
        // Timestamp changed (to dodge the tolerance) but the tag kept.
        let moved = header.replace(&format!("t={T}"), &format!("t={}", T + 1));
        assert!(!verify_signature(SECRET, &moved, body, at(T + 1), tolerance));
        // Wrong secret.
        assert!(!verify_signature(b"another secret of 16+ bytes", &header, body, at(T), tolerance));
        // One hex digit of the tag flipped.
        let mut flipped = header.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        assert!(!verify_signature(SECRET, std::str::from_utf8(&flipped).unwrap(), body, at(T), tolerance));
        // Too old, too far in the future.
        assert!(!verify_signature(SECRET, &header, body, at(T + 301), tolerance));
        assert!(!verify_signature(SECRET, &header, body, at(T - 301), tolerance));
    }

    #[test]
    fn verify_rejects_malformed_headers() {
        let body = b"{}";
        let good = sign(SECRET, T, body);
        let v1 = good.split_once(',').unwrap().1;
        for header in [
            "",
            "garbage",
            v1,                                         // no timestamp
            &format!("t=,{v1}"),                        // empty timestamp
            &format!("t=-5,{v1}"),                      // not a number
            &format!("t=+{T},{v1}"),                    // sign is not a digit
            &format!("t={T},t={T},{v1}"),               // two timestamps
            &format!("t={T}"),                          // no tag
            &format!("t={T},v1=zz"),                    // tag not hex
            &format!("t={T},v1=abcd"),                  // tag too short
            &format!("t=99999999999999999999999,{v1}"), // overflows u64
        ] {
            assert!(!verify_signature(SECRET, header, body, at(T), DEFAULT_TOLERANCE), "accepted {header:?}");
        }
    }

    #[test]
    fn verify_accepts_any_matching_v1_and_ignores_unknown_keys() {
        let body = b"{}";
        let good = sign(SECRET, T, body);
        let v1 = good.split_once(',').unwrap().1;
        let zeros = "0".repeat(64);
        let rotated = format!("t={T},v1={zeros},{v1},v2=whatever");
        assert!(verify_signature(SECRET, &rotated, body, at(T), DEFAULT_TOLERANCE));
    }

    #[test]
    fn answer_is_parsed_and_fields_are_cut_not_rejected() {
        let reply =
            parse_answer(br#"{"title":"Noted","body":" Milk is on the list. ","data":{"list":"groceries"},"extra":1}"#)
                .unwrap();
        assert_eq!(reply.title, "Noted");
        assert_eq!(reply.body, "Milk is on the list.");
        assert_eq!(reply.data["list"], "groceries");

        let long = format!(
            r#"{{"title":"{}","body":"{}","data":{{"k":"{}"}}}}"#,
            "t".repeat(500),
            "b".repeat(5000),
            "v".repeat(500)
        );
        let reply = parse_answer(long.as_bytes()).unwrap();
        assert_eq!(reply.title.chars().count(), MAX_TITLE_CHARS);
        assert!(reply.title.ends_with('\u{2026}'));
        assert_eq!(reply.body.chars().count(), MAX_BODY_CHARS);
        assert!(reply.body.ends_with('\u{2026}'));
        assert_eq!(reply.data["k"].as_str().unwrap().chars().count(), MAX_DATA_VALUE_CHARS);

        let no_data = parse_answer(br#"{"title":"","body":"ok","data":null}"#).unwrap();
        assert!(no_data.data.is_empty());
    }

    #[test]
    fn bad_answers_say_why() {
        assert!(invalid("not json").contains("expected a JSON object"));
        assert!(invalid(r#"{"body":"no title"}"#).contains("title"));
        assert!(invalid(r#"{"title":"t","body":"  "}"#).contains("`body` is empty"));
        assert!(invalid(r#"{"title":"t","body":"b","data":{"n":3}}"#).contains("`data.n` is a number"));
        assert!(invalid(r#"{"title":"t","body":"b","data":{"o":{}}}"#).contains("an object"));
        assert!(invalid(r#"{"title":"t","body":"b","data":{"from":"x"}}"#).contains("reserved by FCM"));
        assert!(invalid(r#"{"title":"t","body":"b","data":{"google.x":"x"}}"#).contains("reserved by FCM"));
        assert!(invalid(r#"{"title":"t","body":"b","data":{"fallback":"x"}}"#).contains("reserved by Lanyard"));
        let many: Map<String, Value> = (0..11).map(|i| (format!("k{i}"), Value::String("v".into()))).collect();
        let json = serde_json::json!({"title": "t", "body": "b", "data": many}).to_string();
        assert!(invalid(&json).contains("11 entries"));
        let key = "k".repeat(65);
        assert!(invalid(&format!(r#"{{"title":"t","body":"b","data":{{"{key}":"v"}}}}"#)).contains("too long"));
    }
}
