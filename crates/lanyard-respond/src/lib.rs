//! Turning a transcript into the reply the user sees.
//!
//! The server hands every transcribed utterance to one [`Responder`], and
//! whatever [`Reply`] it returns becomes the push notification (title and
//! body) plus its data payload. A deployment picks its responder in the
//! `[responder]` table of the server's TOML config ([`ResponderConfig`]), and
//! [`build`] checks that table once, at start-up, so that a typo stops the
//! server with a message saying what to fix instead of failing the first
//! utterance.
//!
//! | `kind`      | what answers                                  | module      |
//! |-------------|-----------------------------------------------|-------------|
//! | `"builtin"` | a fixed acknowledgement quoting the words     | [`builtin`] |
//! | `"webhook"` | the operator's HTTP endpoint, HMAC-signed     | [`webhook`] |
//! | `"llm"`     | any OpenAI-compatible chat-completions server | [`llm`]     |
//!
//! # Failure semantics
//!
//! A remote responder gets a per-attempt timeout and a few retries with
//! exponential backoff and full jitter ([`retry`]). Connection errors,
//! timeouts, HTTP 429 and 5xx are retried; any other 4xx and an answer that
//! does not parse or validate are not, because sending the same request again
//! would get the same answer. When the attempts are spent, the configured
//! [`Fallback`] decides:
//!
//! - [`Fallback::Builtin`] (the default): answer with the built-in
//!   acknowledgement, and mark the reply's data with
//!   `"fallback": "webhook_failed"` (or `"llm_failed"`), so the user still
//!   hears back and the app can tell the difference.
//! - [`Fallback::Fail`]: return the [`RespondError`], and the server records
//!   the utterance as failed.
//!
//! The worst-case time one utterance spends in a responder is therefore
//! `max_attempts × timeout` plus the backoff sleeps (about 9.6 s with the
//! webhook's defaults), and the built-in responder never fails.
//!
//! # Delivered at least once
//!
//! The server may call a responder again for the same utterance, for instance
//! when it crashed after the webhook answered but before the reply was stored.
//! Every request carries the utterance id (the webhook also sends it as
//! `X-Lanyard-Utterance`), so a receiver with side effects can deduplicate.
//!
//! # Secrets
//!
//! Webhook secrets and LLM API keys are read once, at start-up, from an
//! environment variable (`secret_env` / `api_key_env`, recommended) or inline
//! in the config (`secret` / `api_key`). They are held in [`Secret`], whose
//! `Debug` prints `<redacted>`, and no log line or error message contains one.
//!
//! **Architecture invariant:** the only crate that knows how replies are made
//! (webhook signing, the chat-completions format); it knows nothing of the
//! store, push providers or axum, and its only output is a [`Reply`].

pub mod builtin;
pub mod config;
mod http;
pub mod llm;
pub mod retry;
mod text;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

pub use builtin::Builtin;
pub use config::{ConfigError, Fallback, LlmConfig, ResponderConfig, Secret, WebhookConfig};
pub use llm::Llm;
pub use webhook::{Webhook, verify_signature};

/// The `data` key that marks a reply made by a [`Fallback`]; its value names
/// what failed (`"webhook_failed"`, `"llm_failed"`).
pub const FALLBACK_KEY: &str = "fallback";

/// What a responder is told about one utterance.
///
/// This is also the webhook's request body, so its JSON shape is a public
/// contract: fields may be added, never renamed or removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplyRequest {
    /// The utterance this reply answers; unique, and the key a receiver
    /// deduplicates on (see "Delivered at least once" above).
    pub utterance_id: Uuid,
    /// The device (phone and pendant) that recorded it, so one endpoint can
    /// serve several users.
    pub device_id: Uuid,
    /// The name the user gave the device at registration, for personal replies.
    pub device_name: String,
    /// What speech-to-text heard. May be empty when nothing intelligible was said.
    pub transcript: String,
    /// The transcript in timed pieces, in order: `start` and `end` in
    /// seconds from the start of the utterance, `text`, and `words` (each
    /// with `word`, `start`, `end`, `probability`) where the engine timed
    /// them. Empty for an utterance transcribed on the phone. Added after
    /// the first version; read with a default, so a stored or replayed
    /// request without it still parses.
    #[serde(default)]
    pub segments: Vec<lanyard_proto::wire::Segment>,
    /// When the utterance ended on the pendant, in Unix milliseconds, so a
    /// responder can resolve "in ten minutes" against the moment of speaking
    /// rather than the moment of transcription.
    pub received_end_ms: i64,
    /// How long the utterance was, in seconds of audio.
    pub audio_secs: f32,
}

/// A reply: the notification's title and body, and its data payload.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reply {
    /// The notification's title (at most 100 characters when it came from a
    /// webhook; see [`webhook::MAX_TITLE_CHARS`]).
    pub title: String,
    /// The notification's text. Never empty.
    pub body: String,
    /// Extra key-value pairs for the app. Values are JSON strings because FCM
    /// carries only string data; the built-in responder leaves this empty, and
    /// a fallback reply carries `"fallback"` (see the crate docs).
    pub data: Map<String, Value>,
}

/// Turns one transcribed utterance into a reply; each deployment picks one.
#[async_trait]
pub trait Responder: Send + Sync + 'static {
    /// Answers `req`. Errors only when a remote responder failed and its
    /// fallback is [`Fallback::Fail`].
    async fn respond(&self, req: &ReplyRequest) -> Result<Reply, RespondError>;

    /// A short fixed name for logs and metrics: `"builtin"`, `"webhook"`, `"llm"`.
    fn name(&self) -> &'static str;
}

/// Why a remote responder produced no reply.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RespondError {
    /// The endpoint could not be reached: DNS, refused connection, TLS, or the
    /// connection dropped mid-answer. Retried.
    #[error("could not reach the endpoint: {0}")]
    Transport(String),
    /// One attempt took longer than the configured per-attempt timeout. Retried.
    #[error("no answer within {0:?}; raise timeout_ms if the endpoint is slow but healthy")]
    Timeout(Duration),
    /// The endpoint answered with a non-2xx status. Retried only for 429 and 5xx.
    #[error("the endpoint answered HTTP {status}: {detail}")]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The start of the answer's body, which usually says what was wrong.
        detail: String,
    },
    /// The endpoint answered 2xx, but not with something we can show. Not retried.
    #[error("the endpoint's answer is invalid: {0}")]
    InvalidAnswer(String),
    /// Every attempt failed with a retryable error; this holds the last one.
    #[error("gave up after {attempts} attempts; the last one failed: {last}")]
    GaveUp {
        /// How many attempts were made (the configured `max_attempts`).
        attempts: u32,
        /// The error of the final attempt.
        last: Box<RespondError>,
    },
}

impl RespondError {
    /// Whether sending the same request again might succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            RespondError::Transport(_) | RespondError::Timeout(_) => true,
            RespondError::Status { status, .. } => *status == 429 || (500..=599).contains(status),
            RespondError::InvalidAnswer(_) | RespondError::GaveUp { .. } => false,
        }
    }
}

/// Builds the responder a config asks for, checking the config first.
///
/// Call it once at start-up: it reads `secret_env` / `api_key_env` from the
/// environment, parses URLs and checks limits, and its error names the
/// `responder.*` key to fix.
pub fn build(cfg: &ResponderConfig) -> Result<Arc<dyn Responder>, ConfigError> {
    let responder: Arc<dyn Responder> = match cfg {
        ResponderConfig::Builtin => Arc::new(Builtin),
        ResponderConfig::Webhook(c) => Arc::new(Webhook::new(c)?),
        ResponderConfig::Llm(c) => Arc::new(Llm::new(c)?),
    };
    tracing::info!(responder = responder.name(), "responder ready");
    Ok(responder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_errors_are_transport_timeout_429_and_5xx() {
        let status = |status| RespondError::Status { status, detail: String::new() };
        assert!(RespondError::Transport("refused".into()).is_retryable());
        assert!(RespondError::Timeout(Duration::from_secs(3)).is_retryable());
        assert!(status(429).is_retryable());
        assert!(status(500).is_retryable());
        assert!(status(503).is_retryable());
        assert!(!status(400).is_retryable());
        assert!(!status(401).is_retryable());
        assert!(!status(404).is_retryable());
        assert!(!status(302).is_retryable());
        assert!(!RespondError::InvalidAnswer("not json".into()).is_retryable());
    }

    #[test]
    fn reply_request_json_shape_is_stable() {
        let req = ReplyRequest {
            utterance_id: Uuid::nil(),
            device_id: Uuid::nil(),
            device_name: "kitchen".into(),
            transcript: "hello".into(),
            segments: vec![lanyard_proto::wire::Segment { start: 0.0, end: 1.5, text: "hello".into(), words: vec![] }],
            received_end_ms: 1_700_000_000_000,
            audio_secs: 1.5,
        };
        let json = serde_json::to_value(&req).unwrap();
        let keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        let mut expected =
            ["utterance_id", "device_id", "device_name", "transcript", "segments", "received_end_ms", "audio_secs"]
                .map(String::from);
        expected.sort();
        let mut keys = keys;
        keys.sort();
        assert_eq!(keys, expected);
        assert_eq!(json["utterance_id"], "00000000-0000-0000-0000-000000000000");
        assert_eq!(json["audio_secs"], 1.5);
        assert_eq!(json["segments"], serde_json::json!([{"start": 0.0, "end": 1.5, "text": "hello"}]));
        // A body from before `segments` still parses, with none.
        let mut old = json.clone();
        old.as_object_mut().unwrap().remove("segments");
        let old: ReplyRequest = serde_json::from_value(old).unwrap();
        assert!(old.segments.is_empty());
    }
}
