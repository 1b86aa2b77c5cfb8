//! Server configuration: one TOML file, overridden by environment variables,
//! overridden by command-line flags.
//!
//! **Precedence** (later wins): built-in defaults, then the TOML file
//! (`--config`, `LANYARD_CONFIG`), then `LANYARD_*` environment variables,
//! then flags. The `lanyard serve` command applies the last two (clap reads a
//! flag or its environment variable); this module reads the file and fills in
//! defaults.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! data_dir = "/var/lib/lanyard"
//!
//! [stt]
//! model_dir = "/var/lib/lanyard/models/whisper-tiny.en"
//! threads = 0                      # 0: all cores
//!
//! [responder]                      # see lanyard-respond
//! kind = "builtin"
//!
//! [push]
//! max_attempts = 8                 # then the request is recorded undeliverable
//! retry_base_ms = 1000             # backoff: base * 2^attempt, with jitter
//! retry_max_ms = 300000
//! claim_lease_ms = 30000           # a crashed sender's claim expires after this
//!
//! [push.apns]
//! key_path = "/etc/lanyard/AuthKey_ABC123DEFG.p8"
//! key_id = "ABC123DEFG"
//! team_id = "TEAM123456"
//! topic = "com.example.pendant"    # the app's bundle id
//!
//! [push.fcm]
//! service_account_path = "/etc/lanyard/firebase-service-account.json"
//!
//! # The admin API (/v1/admin/...) is off unless a token is configured. Give
//! # the SHA-256 of the token, hex; or set LANYARD_ADMIN_TOKEN to the token
//! # itself, which wins over this key. Either way only the hash is kept.
//! admin_token_hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//!
//! [limits]                         # per device; see docs/protocol.md
//! idle_timeout_secs = 60           # a silent stream is closed (4005)
//! frames_per_sec = 1500            # sustained audio frames, 30x real time (4004)
//! frame_burst = 6000               # frames above the rate before 4004: 2 min of audio
//! requests_per_sec = 10            # uploads and text posts (HTTP 429)
//! request_burst = 60
//! streams_per_device = 4           # simultaneous WebSocket connections (HTTP 429)
//! ```
//!
//! Every section is checked at start-up, and a mistake fails the start with a
//! message that names the setting and what to do.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lanyard_respond::ResponderConfig;
use serde::Deserialize;
use thiserror::Error;

/// The TOML file, as written. Every field is optional: missing ones take
/// their defaults (or a flag's value).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub stt: SttSection,
    pub responder: Option<ResponderConfig>,
    #[serde(default)]
    pub push: PushSection,
    /// SHA-256 of the admin token, 64 hex digits. See [`admin_token_hash`].
    pub admin_token_hash: Option<String>,
    #[serde(default)]
    pub limits: LimitsSection,
}

/// `[limits]`: what one device may use. Each limit has its own answer (a
/// close code or an HTTP status), listed in docs/protocol.md.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// A stream with no message for this long is closed with 4005.
    pub idle_timeout_secs: u64,
    /// Audio frames per second a device may send, over all its streams,
    /// sustained. Real time is 50 (20 ms frames); the default, 1500, lets a
    /// relay catch up a backlog at 30x real time (it paces itself at 1000).
    /// Past the burst, 4004.
    pub frames_per_sec: f64,
    /// Frames a device may send above the rate before it is limited.
    pub frame_burst: f64,
    /// Uploads and text posts per second per device, sustained; past the
    /// burst, HTTP 429.
    pub requests_per_sec: f64,
    pub request_burst: f64,
    /// Simultaneous WebSocket connections of one device; one more is refused
    /// with HTTP 429 before the upgrade. A relay needs one; a few allow for a
    /// reconnect that overlaps a connection the server has not seen die yet.
    pub streams_per_device: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            idle_timeout_secs: lanyard_proto::wire::limits::IDLE_TIMEOUT_SECS,
            frames_per_sec: 1500.0,
            // 10 s of audio: a relay's in-flight window (250 frames) twice.
            frame_burst: 6000.0,
            // A relay uploads one file per utterance; ten a second is a
            // backlog draining, not speech.
            requests_per_sec: 10.0,
            request_burst: 60.0,
            streams_per_device: 4,
        }
    }
}

impl LimitsSection {
    /// Checks that every limit lets some traffic through.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Limits(m.to_string()));
        if self.idle_timeout_secs == 0 {
            return bad("idle_timeout_secs must be at least 1");
        }
        if !(self.frames_per_sec > 0.0 && self.frame_burst >= 1.0) {
            return bad("frames_per_sec must be > 0 and frame_burst at least 1");
        }
        if !(self.requests_per_sec > 0.0 && self.request_burst >= 1.0) {
            return bad("requests_per_sec must be > 0 and request_burst at least 1");
        }
        if self.streams_per_device == 0 {
            return bad("streams_per_device must be at least 1");
        }
        Ok(())
    }
}

/// The admin token's hash, from the environment's token (`LANYARD_ADMIN_TOKEN`,
/// passed in by the caller) or else the config file's `admin_token_hash`.
/// `None` leaves the admin API off.
///
/// A token must be at least [`MIN_ADMIN_TOKEN_LEN`] characters: it guards
/// device creation and deletion, and it is hashed with plain SHA-256, which
/// is only right for a high-entropy secret (see [`crate::auth`]).
pub fn admin_token_hash(file_hash: Option<&str>, env_token: Option<&str>) -> Result<Option<[u8; 32]>, ConfigError> {
    if let Some(token) = env_token.map(str::trim).filter(|t| !t.is_empty()) {
        if token.len() < MIN_ADMIN_TOKEN_LEN {
            return Err(ConfigError::Admin(format!(
                "LANYARD_ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_LEN} characters; make one with `openssl rand -base64 32`"
            )));
        }
        return Ok(Some(crate::auth::hash_token(token)));
    }
    let Some(hex) = file_hash else { return Ok(None) };
    let hex = hex.trim();
    let mut out = [0u8; 32];
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(ConfigError::Admin(
            "admin_token_hash must be 64 hex digits: the SHA-256 of the token (`printf %s TOKEN | sha256sum`)".into(),
        ));
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| ConfigError::Admin("admin_token_hash must be 64 hex digits".into()))?;
    }
    Ok(Some(out))
}

/// Shortest admin token accepted: 32 characters of base64 carry 192 bits.
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SttSection {
    pub model_dir: Option<PathBuf>,
    pub threads: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushSection {
    pub max_attempts: u32,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    pub claim_lease_ms: u64,
    pub apns: Option<ApnsSection>,
    pub fcm: Option<FcmSection>,
}

impl Default for PushSection {
    fn default() -> Self {
        Self {
            // 1 s doubling to 5 min: eight attempts span about eight minutes,
            // past which a reply to speech is stale anyway.
            max_attempts: 8,
            retry_base_ms: 1_000,
            retry_max_ms: 300_000,
            claim_lease_ms: 30_000,
            apns: None,
            fcm: None,
        }
    }
}

/// `[push.apns]`: token-based (`.p8`) authentication.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsSection {
    pub key_path: PathBuf,
    pub key_id: String,
    pub team_id: String,
    pub topic: String,
    /// Override the gateways, for tests against a local APNs peer.
    pub production_url: Option<String>,
    pub sandbox_url: Option<String>,
    /// Extra trusted roots (PEM), for a local peer's self-signed certificate.
    #[serde(default)]
    pub extra_root_certs: Vec<PathBuf>,
    /// How long APNs keeps trying to deliver (`apns-expiration`), in seconds.
    pub expiration_secs: Option<u64>,
}

/// `[push.fcm]`: FCM HTTP v1 with a service account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmSection {
    pub service_account_path: PathBuf,
    /// Override the FCM endpoint, for tests against a local peer.
    pub base_url: Option<String>,
    /// Override the service account's `token_uri`, for tests.
    pub token_uri: Option<String>,
    #[serde(default)]
    pub extra_root_certs: Vec<PathBuf>,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("[push] {0}")]
    Push(String),
    #[error("[limits] {0}")]
    Limits(String),
    #[error("admin token: {0}")]
    Admin(String),
}

impl FileConfig {
    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })
    }
}

/// Retry policy of the push sender.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub max: Duration,
    pub claim_lease: Duration,
}

impl PushSection {
    pub fn retry_policy(&self) -> Result<RetryPolicy, ConfigError> {
        if self.max_attempts == 0 {
            return Err(ConfigError::Push("max_attempts must be at least 1".into()));
        }
        if self.retry_base_ms == 0 || self.retry_max_ms < self.retry_base_ms {
            return Err(ConfigError::Push("retry_base_ms must be > 0 and retry_max_ms at least retry_base_ms".into()));
        }
        if self.claim_lease_ms < 100 {
            return Err(ConfigError::Push(
                "claim_lease_ms must be at least 100: a send must finish within its lease".into(),
            ));
        }
        Ok(RetryPolicy {
            max_attempts: self.max_attempts,
            base: Duration::from_millis(self.retry_base_ms),
            max: Duration::from_millis(self.retry_max_ms),
            claim_lease: Duration::from_millis(self.claim_lease_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_admin_token_from_toml() {
        let file: FileConfig = toml::from_str(
            r#"
            admin_token_hash = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08"
            [limits]
            idle_timeout_secs = 1
            streams_per_device = 2
            "#,
        )
        .unwrap();
        assert_eq!(file.limits.idle_timeout_secs, 1);
        assert_eq!(file.limits.streams_per_device, 2);
        assert_eq!(file.limits.frames_per_sec, LimitsSection::default().frames_per_sec, "unset keys keep defaults");
        file.limits.validate().unwrap();
        assert_eq!(LimitsSection::default().idle_timeout_secs, lanyard_proto::wire::limits::IDLE_TIMEOUT_SECS);
        // The hash of "test", as `printf %s test | sha256sum` prints it.
        let hash = admin_token_hash(file.admin_token_hash.as_deref(), None).unwrap().unwrap();
        assert_eq!(hash, crate::auth::hash_token("test"));
        // The environment's token wins over the file, and is hashed.
        let token = "x".repeat(MIN_ADMIN_TOKEN_LEN);
        let env = admin_token_hash(file.admin_token_hash.as_deref(), Some(&token)).unwrap().unwrap();
        assert_eq!(env, crate::auth::hash_token(&token));
        assert_eq!(admin_token_hash(None, None).unwrap(), None, "off by default");
        assert_eq!(admin_token_hash(None, Some("")).unwrap(), None);
        assert!(admin_token_hash(None, Some("short")).is_err());
        assert!(admin_token_hash(Some("abc"), None).is_err());
        assert!(admin_token_hash(Some(&"g".repeat(64)), None).is_err());
        let bad: LimitsSection = toml::from_str("idle_timeout_secs = 0").unwrap();
        assert!(bad.validate().is_err());
        assert!(toml::from_str::<FileConfig>("[limits]\nidle_timeout = 1").is_err(), "typos are errors");
    }
}
