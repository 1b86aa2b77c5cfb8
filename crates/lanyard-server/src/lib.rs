//! The Lanyard server: ingest, durable audio, speech-to-text, replies, push.
//!
//! ```text
//!  relay --WS /v1/stream---> ingest --append+fsync--> audio files --ack--> relay
//!  relay --PUT upload------> upload --/                    |
//!                                      store.mark_complete (once per utterance)
//!                                                          v
//!                          pipeline: decode Opus -> Whisper -> responder
//!                                                          v
//!                          store: reply + push outbox (one transaction)
//!                                                          v
//!                          push sender -> provider; Final/Reply down the socket
//! ```
//!
//! Only this crate knows axum. Its state is [`AppState`]; [`start`] binds,
//! recovers unfinished work and serves until the returned handle is stopped.

mod api;
pub mod audio;
pub mod auth;
mod error;
mod hub;
mod ingest;
mod pipeline;
pub mod push;
pub mod responder;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use lanyard_store::Store;
use lanyard_store_sqlite::SqliteStore;
use lanyard_stt::SpeechToText;
use thiserror::Error;
use tokio::sync::Notify;

pub use crate::audio::AudioStore;
pub use crate::hub::Hub;
use crate::pipeline::Pipeline;
use crate::push::{FileSink, PushProvider};
use crate::responder::{Acknowledge, Responder};

/// Server settings. The `lanyard serve` command fills them from flags,
/// environment and defaults.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Holds `lanyard.db`, `audio/` and `push-sink.jsonl`.
    pub data_dir: PathBuf,
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
}

/// Shared by every request.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub audio: Arc<AudioStore>,
    pub hub: Arc<Hub>,
    pipeline: Pipeline,
}

/// A running server.
pub struct ServerHandle {
    pub addr: SocketAddr,
    shutdown: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
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

/// Starts the server with the given speech-to-text engine (loaded once by the
/// caller and shared by all utterances).
pub async fn start(cfg: ServerConfig, stt: Arc<dyn SpeechToText>) -> Result<ServerHandle, ServerError> {
    let store = open_store(&cfg).await?;
    let audio = Arc::new(
        AudioStore::new(cfg.audio_dir()).map_err(|source| ServerError::DataDir { path: cfg.audio_dir(), source })?,
    );
    let hub = Arc::new(Hub::default());
    let provider: Arc<dyn PushProvider> = Arc::new(FileSink::new(cfg.push_sink_path()));
    let responder: Arc<dyn Responder> = Arc::new(Acknowledge);
    let push_wake = Arc::new(Notify::new());
    let pipeline = Pipeline::spawn(store.clone(), audio.clone(), hub.clone(), stt, responder, push_wake.clone());
    tokio::spawn(push::run_sender(store.clone(), provider, push_wake));

    // Work a previous run accepted but did not finish.
    for id in store.unfinished().await? {
        tracing::info!(utterance = %id, "resuming unfinished utterance");
        pipeline.enqueue(id).await;
    }

    let state = AppState { store, audio, hub, pipeline };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServerError::Bind { addr: cfg.listen, source })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind { addr: cfg.listen, source })?;
    let shutdown = Arc::new(Notify::new());
    let app = api::router(state);
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move { stop.notified().await });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "server stopped with an error");
        }
    });
    tracing::info!(%addr, "lanyard server listening");
    Ok(ServerHandle { addr, shutdown, task })
}

/// Unix milliseconds, the store's unit of time.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
