//! Server configuration: one TOML file, overridden by environment variables,
//! overridden by command-line flags.
//!
//! **Precedence** (later wins): built-in defaults, then the TOML file
//! (`--config`, `LANYARD_CONFIG`), then `LANYARD_*` environment variables,
//! then flags. One function merges them all: [`load`] (its module doc lists
//! every flag and variable). `lanyard serve` only parses its flags into
//! [`Overrides`] and calls it.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! data_dir = "/var/lib/lanyard"
//!
//! [stt]
//! backend = "local"                # or "remote"; see below
//! model_dir = "/var/lib/lanyard/models/whisper-tiny.en"
//! threads = 0                      # 0: all cores
//!
//! [audio]
//! retention_days = 30              # audio of finished utterances; 0 keeps it forever
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
//! # Terminate TLS here (PEM files; see the server's `tls` module). Without
//! # it, listen on loopback behind a TLS proxy: tokens and audio must not
//! # cross a network in clear text.
//! # [tls]
//! # cert_path = "/etc/lanyard/fullchain.pem"
//! # key_path = "/etc/lanyard/privkey.pem"
//!
//! [limits]                         # per device; see docs/protocol.md
//! idle_timeout_secs = 60           # a silent stream is closed (4005)
//! frames_per_sec = 1500            # sustained audio frames, 30x real time (4004)
//! frame_burst = 6000               # frames above the rate before 4004: 2 min of audio
//! requests_per_sec = 10            # uploads and text posts (HTTP 429)
//! request_burst = 60
//! replies_per_sec = 1               # responder calls; past the burst, replies wait
//! reply_burst = 20
//! opens_per_sec = 2                # utterance opens on streams (4004)
//! open_burst = 60
//! unfinished_per_device = 32       # utterances opened, not ended (4004)
//! transcriptions_per_device = 2    # /v1/audio/transcriptions at once (HTTP 429)
//! abandoned_after_hours = 168      # unfinished and silent this long: given up, counted
//! streams_per_device = 4           # simultaneous WebSocket connections (HTTP 429)
//!
//! [connections]                    # the whole server; see docs/protocol.md
//! max_connections = 10000          # TCP connections at once; one more gets 503 and a close
//! header_timeout_secs = 10         # a request's headers must arrive within this, or the connection closes
//! body_timeout_secs = 120          # a request's body must arrive within this, or the request fails
//! send_timeout_secs = 30           # a stream whose peer reads nothing for this long is closed
//! ```
//!
//! docs/protocol.md lists every `[limits]` and `[connections]` key with its
//! default; a test reads that table and compares it with the defaults here.
//!
//! Every section is checked at start-up, and a mistake fails the start with a
//! message that names the setting and what to do.
//!
//! # Speech-to-text: local or remote
//!
//! `backend = "local"` (the default) loads the Whisper model from `model_dir`
//! and transcribes on this machine's CPU. `backend = "remote"` loads no model
//! at all and sends each utterance to an OpenAI-compatible
//! `POST .../audio/transcriptions` endpoint (see `lanyard_stt::RemoteStt`):
//!
//! ```toml
//! [stt]
//! backend = "remote"
//! url = "https://api.groq.com/openai/v1"  # base URL, or the full .../audio/transcriptions URL
//! api_key_env = "GROQ_API_KEY"            # or: api_key = "..."; neither for a server without auth
//! model = "whisper-large-v3"              # default "whisper-1" (OpenAI)
//! language = "en"                         # optional
//! timeout_secs = 60                       # per attempt
//! max_attempts = 3                        # on 5xx, 429 and connection errors; 1 = no retries
//! ```
//!
//! Another Lanyard server serves the same endpoint: point `url` at
//! `http://that-node:8080/v1` and give one of *its* device tokens as the key.
//! `model_dir` and `threads` apply only to `local`, and `url`, `api_key*`,
//! `model`, `language`, `timeout_secs` and `max_attempts` only to `remote`;
//! a key of the other backend is an error, so a half-edited file is caught.
//! Environment and flags: `LANYARD_STT_BACKEND` / `--stt-backend`,
//! `LANYARD_STT_URL` / `--stt-url`, `LANYARD_STT_MODEL` / `--stt-model`,
//! `LANYARD_STT_TIMEOUT_SECS` / `--stt-timeout-secs`, and
//! `LANYARD_STT_API_KEY` (the key itself, which wins over the file's).
//!
//! # Audio retention
//!
//! The audio file of an utterance is deleted `retention_days` after the
//! utterance was created, once it is finished (transcribed, replied or
//! failed); its transcript and reply stay, and the API reports
//! `"audio": "purged"`. Utterances still being received or transcribed are
//! never touched. `retention_days = 0` keeps audio forever. The default, 30
//! days, leaves time to look into a bad transcript without keeping a
//! wearer's voice indefinitely.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use lanyard_proto::Secret;
mod load;

use lanyard_respond::ResponderConfig;
pub use load::{DEFAULT_LISTEN, Env, Loaded, Overrides, data_dir, default_data_dir, load, process_env};
use serde::{Deserialize, Serialize};
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
    #[serde(default)]
    pub audio: AudioSection,
    #[serde(default)]
    pub connections: ConnectionsSection,
    /// `[tls]`: terminate TLS here (see `crate::tls`).
    pub tls: Option<crate::tls::TlsSection>,
}

/// `[audio]`: how long utterance audio is kept. See the module doc.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AudioSection {
    /// Days after its creation that a finished utterance's audio is deleted;
    /// 0 keeps audio forever.
    pub retention_days: u32,
    /// How often the sweeper looks for expired audio. Not in the TOML
    /// example: an hour is fine-grained enough for a retention in days, and
    /// tests lower it.
    pub sweep_interval_secs: u64,
}

/// The default retention: see the module doc.
pub const DEFAULT_RETENTION_DAYS: u32 = 30;

impl Default for AudioSection {
    fn default() -> Self {
        Self { retention_days: DEFAULT_RETENTION_DAYS, sweep_interval_secs: 3600 }
    }
}

impl AudioSection {
    /// The retention as a duration; `None` keeps audio forever.
    pub fn retention(&self) -> Option<Duration> {
        (self.retention_days > 0).then(|| Duration::from_secs(u64::from(self.retention_days) * 86_400))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.sweep_interval_secs == 0 {
            return Err(ConfigError::Audio("sweep_interval_secs must be at least 1".into()));
        }
        // Far beyond any sensible retention, and safely inside i64 milliseconds.
        if self.retention_days > 36_500 {
            return Err(ConfigError::Audio("retention_days must be at most 36500; use 0 to keep audio forever".into()));
        }
        Ok(())
    }
}

/// `[limits]`: what one device may use. Each limit has its own answer (a
/// close code or an HTTP status), listed in docs/protocol.md.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// A stream with no message for this long is closed with 4005.
    pub idle_timeout_secs: u64,
    /// Audio frames per second a device may send, over all its streams,
    /// sustained. Real time is 50 (20 ms frames); the default, 1500, lets a
    /// relay catch up a backlog after a network cut at 30x real time (it
    /// paces itself at 1000 a second, so it never meets the limit). Past the
    /// burst, 4004.
    pub frames_per_sec: f64,
    /// Frames a device may send above the rate before it is limited: the
    /// default, 6000, is two minutes of audio, so a relay's first seconds
    /// of catching up (and its in-flight window of 250 frames) never wait.
    pub frame_burst: f64,
    /// Uploads and text posts per second per device, sustained; past the
    /// burst, HTTP 429.
    pub requests_per_sec: f64,
    pub request_burst: f64,
    /// Simultaneous WebSocket connections of one device; one more is refused
    /// with HTTP 429 before the upgrade. A relay needs one; a few allow for a
    /// reconnect that overlaps a connection the server has not seen die yet.
    pub streams_per_device: usize,
    /// Responder calls (a webhook, an LLM: the operator pays for each) per
    /// second per device, sustained. Past the burst, a device's next reply
    /// waits its turn; nothing is dropped, and other devices do not wait.
    pub replies_per_sec: f64,
    pub reply_burst: f64,
    /// Utterances a device may open on its streams per second, sustained;
    /// past the burst the stream is closed with 4004 and the relay comes
    /// back after its backoff. A person starts an utterance every few
    /// seconds; a relay reconnecting re-opens its unfinished ones at once.
    pub opens_per_sec: f64,
    pub open_burst: f64,
    /// Utterances of one device left `receiving` (opened, not ended) at
    /// once. Opening one more new id closes the stream with 4004; resuming
    /// one of them is always allowed. A relay leaves one or two.
    pub unfinished_per_device: u32,
    /// Simultaneous `/v1/audio/transcriptions` requests of one device; one
    /// more is answered 429.
    pub transcriptions_per_device: usize,
    /// An utterance still `receiving` this many hours after it was opened,
    /// whose audio has not grown for as long, is given up: marked failed
    /// ("abandoned"), its audio deleted, counted in
    /// `lanyard_abandoned_total`. A relay offline for longer loses what it
    /// had not sent of it, and says so when it resumes. 0 keeps them forever.
    pub abandoned_after_hours: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            idle_timeout_secs: lanyard_proto::wire::limits::IDLE_TIMEOUT_SECS,
            frames_per_sec: 1500.0,
            frame_burst: 6000.0,
            // A relay uploads one file per utterance; ten a second is a
            // backlog draining, not speech.
            requests_per_sec: 10.0,
            request_burst: 60.0,
            streams_per_device: 4,
            // A person says a few things a minute; a phone back online
            // after a day sends its backlog in a burst of 20, then one a
            // second.
            replies_per_sec: 1.0,
            reply_burst: 20.0,
            opens_per_sec: 2.0,
            open_burst: 60.0,
            unfinished_per_device: 32,
            transcriptions_per_device: 2,
            // A week: longer than a phone is usually off the network.
            abandoned_after_hours: 168,
        }
    }
}

impl LimitsSection {
    /// `abandoned_after_hours` as a duration; `None` for 0 (never).
    pub fn abandoned_after(&self) -> Option<std::time::Duration> {
        (self.abandoned_after_hours > 0).then(|| std::time::Duration::from_secs(self.abandoned_after_hours * 3600))
    }

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
        if !(self.replies_per_sec > 0.0 && self.reply_burst >= 1.0) {
            return bad("replies_per_sec must be > 0 and reply_burst at least 1");
        }
        if !(self.opens_per_sec > 0.0 && self.open_burst >= 1.0) {
            return bad("opens_per_sec must be > 0 and open_burst at least 1");
        }
        if self.unfinished_per_device == 0 || self.transcriptions_per_device == 0 {
            return bad("unfinished_per_device and transcriptions_per_device must be at least 1");
        }
        Ok(())
    }
}

/// `[connections]`: what any client, authenticated or not, may hold of the
/// server. These guard the sockets themselves, before a token is read, so
/// they are global rather than per device. Their answers are listed in
/// docs/protocol.md ("Connection limits").
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionsSection {
    /// TCP connections open at once, WebSockets included. One more is
    /// answered 503 and closed, and counted. Keep it below the process's
    /// open-file limit (`ulimit -n`) less a few hundred for audio files and
    /// the database.
    pub max_connections: usize,
    /// A connection must deliver a request's complete headers within this
    /// many seconds of opening (or of its previous response), or it is
    /// closed: a client that trickles headers holds nothing for long.
    pub header_timeout_secs: u64,
    /// A request's body must arrive in full within this many seconds of its
    /// headers, or the request fails (400) and the connection closes. The
    /// default lets a 4 MiB upload through at 35 KB/s.
    pub body_timeout_secs: u64,
    /// A message to a stream that is not written within this many seconds
    /// (the peer reads nothing, so its TCP window stays shut) closes the
    /// stream: a client that never reads cannot pin the server's buffers.
    pub send_timeout_secs: u64,
}

impl Default for ConnectionsSection {
    fn default() -> Self {
        Self { max_connections: 10_000, header_timeout_secs: 10, body_timeout_secs: 120, send_timeout_secs: 30 }
    }
}

impl ConnectionsSection {
    /// Checks that every limit lets some traffic through.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Connections(m.to_string()));
        if self.max_connections == 0 {
            return bad("max_connections must be at least 1");
        }
        if self.header_timeout_secs == 0 || self.body_timeout_secs == 0 || self.send_timeout_secs == 0 {
            return bad("header_timeout_secs, body_timeout_secs and send_timeout_secs must each be at least 1");
        }
        Ok(())
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_secs)
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.body_timeout_secs)
    }

    pub fn send_timeout(&self) -> Duration {
        Duration::from_secs(self.send_timeout_secs)
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
        return Ok(Some(crate::token::hash_token(token)));
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

/// `[stt]`, as written. Every key is optional; [`SttSection::resolve`]
/// checks them together and fills in defaults. [`load`] overwrites keys
/// from the flags and `LANYARD_STT_*` before resolving.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SttSection {
    /// `local` (default) or `remote`.
    pub backend: Option<SttBackendKind>,
    /// Local: the CTranslate2 Whisper model directory.
    pub model_dir: Option<PathBuf>,
    /// Local: CPU threads; 0 or absent uses every core.
    pub threads: Option<usize>,
    /// Remote: the API's base URL or its full `/audio/transcriptions` URL.
    pub url: Option<String>,
    /// Remote: the bearer key, inline. At most one of this and `api_key_env`.
    pub api_key: Option<Secret>,
    /// Remote: the environment variable that holds the bearer key.
    pub api_key_env: Option<String>,
    /// Remote: the `model` field (default `whisper-1`).
    pub model: Option<String>,
    /// Remote: the `language` field, e.g. `en`; absent lets the server decide.
    pub language: Option<String>,
    /// Remote: per-attempt timeout in seconds (default 60, at most 600).
    pub timeout_secs: Option<u64>,
    /// Remote: attempts in all on 5xx, 429 and connection errors (default 3, at most 10).
    pub max_attempts: Option<u32>,
}

/// `[stt] backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SttBackendKind {
    Local,
    Remote,
}

impl std::str::FromStr for SttBackendKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "local" => Ok(Self::Local),
            "remote" => Ok(Self::Remote),
            other => Err(format!("{other:?} is not a speech-to-text backend; use local or remote")),
        }
    }
}

/// The speech-to-text engine to build, resolved from `[stt]`.
#[derive(Debug, Clone, PartialEq)]
pub enum SttBackend {
    /// Whisper on this machine.
    Local { model_dir: PathBuf, threads: usize },
    /// An OpenAI-compatible endpoint; no model is loaded here.
    Remote(lanyard_stt::RemoteConfig),
}

/// The longest remote timeout accepted: an utterance that waits longer has
/// lost its point, and the pipeline transcribes one utterance at a time.
pub const MAX_STT_TIMEOUT_SECS: u64 = 600;

/// The most remote attempts accepted: more would only hold the queue.
pub const MAX_STT_ATTEMPTS: u32 = 10;

impl SttSection {
    /// Checks the section and picks the backend. `env` reads `api_key_env`'s
    /// variable (`std::env::var` in the server; a fake in tests), and
    /// `default_model_dir` is used when `model_dir` is unset.
    pub fn resolve(
        &self,
        env: &dyn Fn(&str) -> Result<String, std::env::VarError>,
        default_model_dir: impl FnOnce() -> PathBuf,
    ) -> Result<SttBackend, ConfigError> {
        let bad = |m: String| Err(ConfigError::Stt(m));
        match self.backend.unwrap_or(SttBackendKind::Local) {
            SttBackendKind::Local => {
                let remote_keys = [
                    ("url", self.url.is_some()),
                    ("api_key", self.api_key.is_some()),
                    ("api_key_env", self.api_key_env.is_some()),
                    ("model", self.model.is_some()),
                    ("language", self.language.is_some()),
                    ("timeout_secs", self.timeout_secs.is_some()),
                    ("max_attempts", self.max_attempts.is_some()),
                ];
                if let Some((key, _)) = remote_keys.iter().find(|(_, set)| *set) {
                    return bad(format!(
                        "{key} applies only to backend = \"remote\"; set backend = \"remote\" (or --stt-backend remote) or remove {key}"
                    ));
                }
                Ok(SttBackend::Local {
                    model_dir: self.model_dir.clone().unwrap_or_else(default_model_dir),
                    threads: self.threads.unwrap_or(0),
                })
            }
            SttBackendKind::Remote => {
                if self.model_dir.is_some() || self.threads.is_some() {
                    return bad("model_dir and threads apply only to backend = \"local\"; remove them".into());
                }
                let Some(url) = self.url.as_deref().filter(|u| !u.trim().is_empty()) else {
                    return bad("backend = \"remote\" needs url, the API's base URL (e.g. https://api.openai.com/v1) or a Lanyard node's http://host:8080/v1".into());
                };
                // The engine's message names `[stt] url` itself.
                lanyard_stt::endpoint_url(url)
                    .map_err(|e| ConfigError::Stt(e.to_string().trim_start_matches("[stt] ").to_string()))?;
                let api_key = match (&self.api_key, self.api_key_env.as_deref()) {
                    (Some(_), Some(_)) => return bad("give either api_key or api_key_env, not both".into()),
                    (Some(key), None) if key.expose().trim().is_empty() => {
                        return bad("api_key is empty; set it, use api_key_env = \"VAR\", or remove it for a server without auth".into());
                    }
                    (Some(key), None) => Some(Secret::new(key.expose().trim())),
                    (None, Some(var)) => match env(var) {
                        Ok(v) if !v.trim().is_empty() => Some(Secret::new(v.trim())),
                        _ => {
                            return bad(format!(
                                "api_key_env: the environment variable `{var}` is not set or empty; export it before starting the server"
                            ));
                        }
                    },
                    (None, None) => None,
                };
                let timeout_secs = self.timeout_secs.unwrap_or(lanyard_stt::DEFAULT_REMOTE_TIMEOUT.as_secs());
                if !(1..=MAX_STT_TIMEOUT_SECS).contains(&timeout_secs) {
                    return bad(format!("timeout_secs must be 1 to {MAX_STT_TIMEOUT_SECS}"));
                }
                let max_attempts = self.max_attempts.unwrap_or(lanyard_stt::DEFAULT_REMOTE_ATTEMPTS);
                if !(1..=MAX_STT_ATTEMPTS).contains(&max_attempts) {
                    return bad(format!("max_attempts must be 1 to {MAX_STT_ATTEMPTS} (1: no retries)"));
                }
                let model = self.model.clone().unwrap_or_else(|| lanyard_stt::DEFAULT_REMOTE_MODEL.to_string());
                if model.trim().is_empty() {
                    return bad(
                        "model is empty; remove it for the default (whisper-1) or name the server's model".into()
                    );
                }
                Ok(SttBackend::Remote(lanyard_stt::RemoteConfig {
                    api_key,
                    model,
                    language: self.language.clone().filter(|l| !l.trim().is_empty()),
                    timeout: Duration::from_secs(timeout_secs),
                    max_attempts,
                    ..lanyard_stt::RemoteConfig::new(url.trim())
                }))
            }
        }
    }
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
    #[error("[connections] {0}")]
    Connections(String),
    #[error("admin token: {0}")]
    Admin(String),
    #[error("[stt] {0}")]
    Stt(String),
    #[error("[audio] {0}")]
    Audio(String),
    #[error("[tls] {0}")]
    Tls(String),
    #[error("environment variable {0}")]
    Env(String),
}

impl FileConfig {
    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
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
        assert_eq!(hash, crate::token::hash_token("test"));
        // The environment's token wins over the file, and is hashed.
        let token = "x".repeat(MIN_ADMIN_TOKEN_LEN);
        let env = admin_token_hash(file.admin_token_hash.as_deref(), Some(&token)).unwrap().unwrap();
        assert_eq!(env, crate::token::hash_token(&token));
        assert_eq!(admin_token_hash(None, None).unwrap(), None, "off by default");
        assert_eq!(admin_token_hash(None, Some("")).unwrap(), None);
        assert!(admin_token_hash(None, Some("short")).is_err());
        assert!(admin_token_hash(Some("abc"), None).is_err());
        assert!(admin_token_hash(Some(&"g".repeat(64)), None).is_err());
        let bad: LimitsSection = toml::from_str("idle_timeout_secs = 0").unwrap();
        assert!(bad.validate().is_err());
        assert!(toml::from_str::<FileConfig>("[limits]\nidle_timeout = 1").is_err(), "typos are errors");
    }

    /// docs/protocol.md 2.5 lists every `[limits]` and `[connections]` key
    /// with its default. Reads that table as TOML and compares it with the
    /// defaults, both ways: a value that differs, a key the docs name that
    /// the code lacks, and a key the docs leave out all fail.
    #[test]
    fn docs_agree_with_defaults() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/protocol.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let mut sections: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for line in doc.lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            // "| `[section] key` | value | ... |" splits into "", key, value, ...
            let Some(setting) = cells.get(1).and_then(|c| c.strip_prefix("`[")).and_then(|c| c.strip_suffix('`'))
            else {
                continue;
            };
            let (section, key) = setting.split_once("] ").expect("a setting reads `[section] key`");
            let value = cells[2];
            sections.entry(section.to_string()).or_default().push(format!("{key} = {value}"));
        }
        let text: String = sections.iter().map(|(s, keys)| format!("[{s}]\n{}\n", keys.join("\n"))).collect();
        let file: FileConfig =
            toml::from_str(&text).unwrap_or_else(|e| panic!("docs/protocol.md 2.5 is not valid config: {e}\n{text}"));
        assert_eq!(file.limits, LimitsSection::default(), "docs/protocol.md 2.5 and [limits]'s defaults differ");
        assert_eq!(
            file.connections,
            ConnectionsSection::default(),
            "docs/protocol.md 2.5 and [connections]'s defaults differ"
        );
        let documented = |section: &str, value: serde_json::Value| {
            for key in value.as_object().unwrap().keys() {
                let listed =
                    sections.get(section).is_some_and(|keys| keys.iter().any(|k| k.starts_with(&format!("{key} ="))));
                assert!(listed, "[{section}] {key} is not in docs/protocol.md 2.5; add its row");
            }
        };
        documented("limits", serde_json::to_value(LimitsSection::default()).unwrap());
        documented("connections", serde_json::to_value(ConnectionsSection::default()).unwrap());
    }

    fn env(var: &str) -> Result<String, std::env::VarError> {
        match var {
            "GROQ_KEY" => Ok("gsk_secret".into()),
            "EMPTY" => Ok(" ".into()),
            _ => Err(std::env::VarError::NotPresent),
        }
    }

    fn resolve(toml_text: &str) -> Result<SttBackend, ConfigError> {
        let file: FileConfig = toml::from_str(toml_text).unwrap();
        file.stt.resolve(&env, || PathBuf::from("/default/model"))
    }

    fn stt_error(toml_text: &str) -> String {
        resolve(toml_text).unwrap_err().to_string()
    }

    #[test]
    fn stt_backends_from_toml() {
        // No section: the local model at its default place, all cores.
        assert_eq!(resolve("").unwrap(), SttBackend::Local { model_dir: "/default/model".into(), threads: 0 });
        assert_eq!(
            resolve("[stt]\nmodel_dir = \"/m\"\nthreads = 2").unwrap(),
            SttBackend::Local { model_dir: "/m".into(), threads: 2 }
        );
        let SttBackend::Remote(r) = resolve(
            r#"
            [stt]
            backend = "remote"
            url = "https://api.groq.com/openai/v1"
            api_key_env = "GROQ_KEY"
            model = "whisper-large-v3"
            language = "en"
            timeout_secs = 20
            max_attempts = 2
            "#,
        )
        .unwrap() else {
            panic!("not remote")
        };
        assert_eq!(r.url, "https://api.groq.com/openai/v1");
        assert_eq!(r.api_key.as_ref().map(Secret::expose), Some("gsk_secret"));
        assert_eq!((r.model.as_str(), r.language.as_deref()), ("whisper-large-v3", Some("en")));
        assert_eq!((r.timeout, r.max_attempts), (Duration::from_secs(20), 2));
        // Defaults: OpenAI's model name, no key, 60 s, 3 attempts.
        let SttBackend::Remote(r) = resolve("[stt]\nbackend = \"remote\"\nurl = \"http://10.0.0.2:8080/v1\"").unwrap()
        else {
            panic!("not remote")
        };
        assert_eq!((r.model.as_str(), r.api_key, r.timeout.as_secs(), r.max_attempts), ("whisper-1", None, 60, 3));
        assert!(
            !format!(
                "{:?}",
                resolve("[stt]\nbackend = \"remote\"\nurl = \"http://h/v1\"\napi_key = \"sk-inline\"").unwrap()
            )
            .contains("sk-inline")
        );
    }

    #[test]
    fn stt_mistakes_say_what_to_fix() {
        let e = stt_error("[stt]\nbackend = \"remote\"");
        assert!(e.contains("[stt]") && e.contains("needs url"), "{e}");
        let e = stt_error("[stt]\nbackend = \"remote\"\nurl = \"ftp://h\"");
        assert!(e.starts_with("[stt] url \"ftp://h\"") && e.contains("http or https"), "{e}");
        let e = stt_error("[stt]\nbackend = \"remote\"\nurl = \"http://h/v1\"\napi_key_env = \"MISSING\"");
        assert!(e.contains("`MISSING` is not set"), "{e}");
        let e = stt_error("[stt]\nbackend = \"remote\"\nurl = \"http://h/v1\"\napi_key_env = \"EMPTY\"");
        assert!(e.contains("`EMPTY` is not set or empty"), "{e}");
        let e = stt_error(
            "[stt]\nbackend = \"remote\"\nurl = \"http://h/v1\"\napi_key = \"k\"\napi_key_env = \"GROQ_KEY\"",
        );
        assert!(e.contains("not both"), "{e}");
        let e = stt_error("[stt]\nbackend = \"remote\"\nurl = \"http://h/v1\"\nmodel_dir = \"/m\"");
        assert!(e.contains("only to backend = \"local\""), "{e}");
        let e = stt_error("[stt]\nurl = \"http://h/v1\"");
        assert!(e.contains("url applies only to backend = \"remote\""), "{e}");
        let e = stt_error("[stt]\nbackend = \"remote\"\nurl = \"http://h/v1\"\ntimeout_secs = 0");
        assert!(e.contains("timeout_secs must be 1 to 600"), "{e}");
        let e = stt_error("[stt]\nbackend = \"remote\"\nurl = \"http://h/v1\"\nmax_attempts = 0");
        assert!(e.contains("max_attempts must be 1 to 10"), "{e}");
        assert!(toml::from_str::<FileConfig>("[stt]\nbackend = \"cloud\"").is_err());
        assert!("cloud".parse::<SttBackendKind>().unwrap_err().contains("local or remote"));
    }

    #[test]
    fn audio_retention_from_toml() {
        let file: FileConfig = toml::from_str("").unwrap();
        assert_eq!(file.audio.retention(), Some(Duration::from_secs(30 * 86_400)));
        let file: FileConfig = toml::from_str("[audio]\nretention_days = 0").unwrap();
        assert_eq!(file.audio.retention(), None, "0 keeps audio forever");
        file.audio.validate().unwrap();
        let file: FileConfig = toml::from_str("[audio]\nretention_days = 7").unwrap();
        assert_eq!(file.audio.retention(), Some(Duration::from_secs(7 * 86_400)));
        let bad: FileConfig = toml::from_str("[audio]\nretention_days = 40000").unwrap();
        assert!(bad.audio.validate().unwrap_err().to_string().contains("[audio] retention_days"));
        assert!(toml::from_str::<FileConfig>("[audio]\nretention = 3").is_err(), "typos are errors");
    }
}
