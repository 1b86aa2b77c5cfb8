//! The Lanyard server: ingest, durable audio, speech-to-text, replies, push.
//!
//! ```text
//!  relay --WS /v1/stream---> ingest --append+fsync--> audio files --ack--> relay
//!            ^                 | durable frames           |
//!            |                 v                          |
//!            +-- Partial --- live: decode, VAD, drafts    |
//!                              | (speculative final)      |
//!  relay --PUT upload------> upload --/                    |
//!                                      store.mark_complete (once per utterance)
//!                                                          v
//!                          pipeline: speculative final, or decode Opus -> Whisper
//!                                                          v
//!                                                      responder
//!                                                          v
//!                          store: reply + push outbox (one transaction)
//!                                                          v
//!                          push sender -> provider; Final/Reply down the socket
//! ```
//!
//! Only this crate knows axum. Its state is [`AppState`]; [`start`] binds,
//! recovers unfinished work and serves until the returned handle is stopped.
//! The routes are listed in `api` and described, for clients, by
//! `GET /openapi.json` (`openapi`); per-device limits are in `limits`, the
//! connection limit and timeouts in `listen`, and every metric in
//! `metrics`. `transcribe` serves the node's speech-to-text to others
//! (OpenAI's `POST /v1/audio/transcriptions`), and `retention` deletes old
//! audio. [`build_stt`] makes the engine `[stt]` asks for: the
//! local Whisper model, or a remote endpoint with no model here; `stt_pool`
//! runs it for everyone, finals first, and `live` turns streamed audio into
//! partials and speculative finals.

mod admin;
mod api;
pub mod audio;
pub mod auth;
pub mod config;
pub mod dev_tls;
pub mod devices;
mod error;
mod fair;
mod hub;
mod ingest;
pub mod limits;
mod listen;
mod live;
pub mod metrics;
mod openapi;
mod pipeline;
mod push;
pub mod retention;
pub mod stt_pool;
pub mod tls;
pub mod token;
pub mod transcribe;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use lanyard_store::Store;
use lanyard_store_sqlite::SqliteStore;
use lanyard_stt::{SpeechToText, SttError};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::Notify;

pub use crate::audio::{Append, AudioStore};
use crate::config::{AudioSection, ConfigError, ConnectionsSection, LimitsSection, PushSection, SttBackend};
pub use crate::hub::Hub;
use crate::limits::Limiter;
use crate::live::Live;
use crate::pipeline::Pipeline;
use crate::stt_pool::SttPool;
use lanyard_push::PushProvider;
use lanyard_respond::ResponderConfig;

/// Server settings, resolved. The `lanyard serve` command fills them from
/// flags, environment, the config file and defaults (see [`config`]).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Holds `lanyard.db`, `audio/` and `push-sink.jsonl`.
    pub data_dir: PathBuf,
    pub responder: ResponderConfig,
    pub push: PushSection,
    pub limits: LimitsSection,
    /// How long audio is kept.
    pub audio: AudioSection,
    /// What any connection may hold: the connection limit and timeouts.
    pub connections: ConnectionsSection,
    /// SHA-256 of the admin token; `None` turns the admin API off. See
    /// [`config::admin_token_hash`].
    pub admin_token_hash: Option<[u8; 32]>,
    /// The certificate and key to terminate TLS with; `None` serves plain
    /// HTTP, for loopback or behind a TLS proxy (see [`tls`]).
    pub tls: Option<tls::TlsSection>,
}

impl ServerConfig {
    /// Defaults for everything but the address and the data directory. The
    /// admin API is off.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            data_dir,
            responder: ResponderConfig::Builtin,
            push: PushSection::default(),
            limits: LimitsSection::default(),
            audio: AudioSection::default(),
            connections: ConnectionsSection::default(),
            admin_token_hash: None,
            tls: None,
        }
    }
}

impl ServerConfig {
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("lanyard.db")
    }

    pub fn audio_dir(&self) -> PathBuf {
        self.data_dir.join("audio")
    }

    pub fn push_sink_path(&self) -> PathBuf {
        self.data_dir.join("push-sink.jsonl")
    }
}

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}; is another server running there? Pick another address with --listen")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot prepare the data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("store: {0}")]
    Store(#[from] lanyard_store::StoreError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("[push.apns] {0}")]
    Apns(String),
    #[error("[push.fcm] {0}")]
    Fcm(String),
    #[error("[responder] {0}")]
    Responder(String),
    #[error(transparent)]
    Stt(#[from] SttError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Builds the speech-to-text engine `[stt]` resolved to. Local loads the
/// Whisper model (seconds, and the model must be installed); remote loads
/// nothing and contacts nobody until the first utterance. Blocking.
pub fn build_stt(backend: &SttBackend) -> Result<Arc<dyn SpeechToText>, ServerError> {
    Ok(match backend {
        SttBackend::Local { model_dir, threads } => {
            let mut cfg = lanyard_stt::WhisperConfig::default();
            if *threads > 0 {
                cfg.threads = *threads;
            }
            Arc::new(lanyard_stt::WhisperCt2::load(model_dir, cfg)?)
        }
        SttBackend::Remote(remote) => {
            let engine = lanyard_stt::RemoteStt::new(remote.clone())?;
            tracing::info!(endpoint = %engine.endpoint(), model = %remote.model, "speech-to-text is remote; no model is loaded here");
            Arc::new(engine)
        }
    })
}

/// Builds the push providers from the config, failing on any mistake. With
/// no provider configured, notifications go to a file sink in the data
/// directory, which delivers nothing and says so in the log.
pub fn build_push_provider(cfg: &ServerConfig) -> Result<Arc<dyn PushProvider>, ServerError> {
    let push = &cfg.push;
    if push.apns.is_none() && push.fcm.is_none() {
        tracing::warn!(path = %cfg.push_sink_path().display(), "no [push.apns] or [push.fcm] configured: push requests go to a file sink and reach no phone");
        return Ok(Arc::new(lanyard_push::FileSink::new(cfg.push_sink_path())));
    }
    let apns = push
        .apns
        .as_ref()
        .map(|a| {
            let mut c =
                lanyard_push::ApnsConfig::new(a.key_path.clone(), a.key_id.clone(), a.team_id.clone(), a.topic.clone());
            if let Some(u) = &a.production_url {
                c.production_url = u.clone();
            }
            if let Some(u) = &a.sandbox_url {
                c.sandbox_url = u.clone();
            }
            c.extra_root_certs = a.extra_root_certs.clone();
            if let Some(s) = a.expiration_secs {
                c.expiration = std::time::Duration::from_secs(s);
            }
            lanyard_push::ApnsProvider::new(c).map_err(|e| ServerError::Apns(e.to_string()))
        })
        .transpose()?;
    let fcm = push
        .fcm
        .as_ref()
        .map(|f| {
            let mut c = lanyard_push::FcmConfig::new(f.service_account_path.clone());
            if let Some(u) = &f.base_url {
                c.base_url = u.clone();
            }
            c.token_uri_override = f.token_uri.clone();
            c.extra_root_certs = f.extra_root_certs.clone();
            lanyard_push::FcmProvider::new(c).map_err(|e| ServerError::Fcm(e.to_string()))
        })
        .transpose()?;
    Ok(Arc::new(lanyard_push::Router::new(apns, fcm)))
}

/// Shared by every request.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub audio: Arc<AudioStore>,
    pub hub: Arc<Hub>,
    pipeline: Pipeline,
    limiter: Arc<Limiter>,
    admin_token_hash: Option<[u8; 32]>,
    /// The one speech-to-text engine behind its worker pool, shared by the
    /// pipeline, streaming partials and `POST /v1/audio/transcriptions`
    /// (see `stt_pool` for the priorities).
    stt: SttPool,
    /// Partials and speculative finals of the utterances being streamed.
    live: Arc<Live>,
    /// `[connections] send_timeout_secs`: a stream message not written by
    /// then closes the stream.
    send_timeout: std::time::Duration,
    /// This API's OpenAPI document, built once from the route table (the
    /// `openapi` module reads `api`; `api` serves it from here).
    openapi: Arc<serde_json::Value>,
}

/// What `lanyard serve` prints on stdout, one JSON line each: the channel a
/// process that started it (the demo, the campaign, the benchmark, the
/// tests) reads, with this same type. Logs go to stderr.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ServeEvent {
    /// Bound, recovered and ready: the address is the real one when the
    /// server was asked for port 0, and `url` says whether it serves TLS.
    Listening { addr: SocketAddr, url: String, data_dir: PathBuf },
}

/// A running server.
pub struct ServerHandle {
    pub addr: SocketAddr,
    /// Whether it serves HTTPS (and `wss://`).
    pub tls: bool,
    shutdown: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// The base URL clients use: `http://` or `https://`, and the address.
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.addr)
    }

    /// Stops accepting, closes streams, and waits for the server to end.
    pub async fn stop(self) {
        self.shutdown.notify_waiters();
        let _ = self.task.await;
    }

    /// Waits until the server ends by itself.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Opens the store at its configured path.
pub async fn open_store(cfg: &ServerConfig) -> Result<Arc<dyn Store>, ServerError> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|source| ServerError::DataDir { path: cfg.data_dir.clone(), source })?;
    Ok(Arc::new(SqliteStore::open(&cfg.db_path()).await?))
}

/// Checks every section of the configuration the way [`start`] will, without
/// starting anything: providers read their keys, the responder its settings.
pub fn validate(cfg: &ServerConfig) -> Result<(), ServerError> {
    cfg.push.retry_policy()?;
    cfg.limits.validate()?;
    cfg.audio.validate()?;
    cfg.connections.validate()?;
    cfg.tls.as_ref().map(tls::acceptor).transpose()?;
    build_push_provider(cfg)?;
    lanyard_respond::build(&cfg.responder).map_err(|e| ServerError::Responder(e.to_string()))?;
    Ok(())
}

/// Starts the server with the given speech-to-text engine (loaded once by the
/// caller and shared by all utterances).
pub async fn start(cfg: ServerConfig, stt: Arc<dyn SpeechToText>) -> Result<ServerHandle, ServerError> {
    let store = open_store(&cfg).await?;
    let audio = Arc::new(
        AudioStore::new(cfg.audio_dir()).map_err(|source| ServerError::DataDir { path: cfg.audio_dir(), source })?,
    );
    let hub = Arc::new(Hub::default());
    // Configuration mistakes stop the start here, before the port opens.
    let policy = cfg.push.retry_policy()?;
    cfg.limits.validate()?;
    cfg.audio.validate()?;
    cfg.connections.validate()?;
    let tls = cfg.tls.as_ref().map(tls::acceptor).transpose()?;
    let provider = build_push_provider(&cfg)?;
    let responder = lanyard_respond::build(&cfg.responder).map_err(|e| ServerError::Responder(e.to_string()))?;
    let push_wake = Arc::new(Notify::new());
    let stt = SttPool::start(stt, stt_pool::DEFAULT_WORKERS);
    let live = Arc::new(Live::new(stt.clone(), hub.clone()));
    let pipeline = Pipeline::spawn(
        store.clone(),
        audio.clone(),
        hub.clone(),
        stt.clone(),
        live.clone(),
        responder,
        push_wake.clone(),
        cfg.limits.clone(),
    );
    tokio::spawn(push::Sender { store: store.clone(), provider, wake: push_wake, policy }.run());

    // Work a previous run accepted but did not finish.
    for id in store.unfinished().await? {
        tracing::info!(utterance = %id, "resuming unfinished utterance");
        match store.utterance(id).await? {
            Some(u) => pipeline.enqueue(u.device_id, id).await,
            None => tracing::warn!(utterance = %id, "an unfinished utterance vanished before it was resumed"),
        }
    }

    if cfg.admin_token_hash.is_none() {
        tracing::info!("no admin token configured: the admin API (/v1/admin) is off");
    }
    // Install the metrics recorder before the first event.
    metrics::handle();
    let limiter = Arc::new(Limiter::new(cfg.limits.clone()));
    retention::spawn(
        store.clone(),
        audio.clone(),
        cfg.audio.retention(),
        cfg.limits.abandoned_after(),
        std::time::Duration::from_secs(cfg.audio.sweep_interval_secs),
    );
    let send_timeout = cfg.connections.send_timeout();
    let state = AppState {
        store,
        audio,
        hub,
        pipeline,
        limiter,
        admin_token_hash: cfg.admin_token_hash,
        stt,
        live,
        send_timeout,
        openapi: Arc::new(openapi::document()),
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServerError::Bind { addr: cfg.listen, source })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind { addr: cfg.listen, source })?;
    let shutdown = Arc::new(Notify::new());
    let app = api::router(state);
    // The accept loop applies `[connections]` (see `listen`).
    let secure = tls.is_some();
    if !secure && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "serving plain HTTP on a non-loopback address: device tokens and audio cross the network in clear text; give [tls] (--tls-cert, --tls-key) or put a TLS proxy in front");
    }
    let task = tokio::spawn(listen::serve(listener, app, cfg.connections.clone(), shutdown.clone(), tls));
    tracing::info!(%addr, tls = secure, "lanyard server listening");
    Ok(ServerHandle { addr, tls: secure, shutdown, task })
}

/// Every route the server answers, as (method, path template), in the
/// order they are registered. The OpenAPI document describes each of them.
pub fn routes() -> Vec<(&'static str, &'static str)> {
    api::routes().into_iter().map(|r| (r.method, r.path)).collect()
}

/// Unix milliseconds, the store's unit of time.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
