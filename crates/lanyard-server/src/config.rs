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
}

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
