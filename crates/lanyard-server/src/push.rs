//! Push delivery: providers behind one trait, fed from the store's outbox.
//!
//! A reply and its push request are stored in one transaction; the sender
//! then hands unsent requests to the provider and records each as sent. A
//! crash between the two resends on restart (at least once); the collapse
//! id, derived from the utterance id, makes the user see one notification.
//!
//! Real APNs and FCM providers come later. Until then the only provider is
//! [`FileSink`], which writes each request it would send to a JSON-lines file.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lanyard_store::{PushRequest, Store};
use serde::Serialize;
use tokio::sync::Notify;

#[async_trait]
pub trait PushProvider: Send + Sync + 'static {
    /// Hands one notification to the provider.
    async fn send(&self, req: &PushRequest) -> Result<(), String>;
    fn name(&self) -> &'static str;
}

/// The collapse id of an utterance's notification. APNs allows 64 bytes; a
/// UUID's 36 fit.
pub fn collapse_id(req: &PushRequest) -> String {
    req.utterance_id.to_string()
}

/// A push provider that delivers nothing: it appends each request, exactly
/// as it would be sent, to a JSON-lines file. Used by the demo and tests
/// until real APNs/FCM providers exist.
pub struct FileSink {
    path: PathBuf,
}

#[derive(Serialize)]
struct SinkLine<'a> {
    utterance_id: String,
    device_id: String,
    platform: &'a str,
    token: &'a str,
    collapse_id: String,
    title: &'a str,
    body: &'a str,
    sent_at_ms: i64,
}

impl FileSink {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }
}

#[async_trait]
impl PushProvider for FileSink {
    async fn send(&self, req: &PushRequest) -> Result<(), String> {
        let line = SinkLine {
            utterance_id: req.utterance_id.to_string(),
            device_id: req.device_id.to_string(),
            platform: match req.target.platform {
                lanyard_proto::wire::PushPlatform::Apns => "apns",
                lanyard_proto::wire::PushPlatform::Fcm => "fcm",
            },
            token: &req.target.token,
            collapse_id: collapse_id(req),
            title: &req.title,
            body: &req.body,
            sent_at_ms: crate::now_ms(),
        };
        let mut json = serde_json::to_vec(&line).map_err(|e| e.to_string())?;
        json.push(b'\n');
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
            f.write_all(&json)?;
            f.sync_data()
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot write push sink {}: {e}", self.path.display()))
    }

    fn name(&self) -> &'static str {
        "file-sink"
    }
}

/// Sends outbox rows whenever woken, and once at start for rows left by a crash.
pub async fn run_sender(store: Arc<dyn Store>, provider: Arc<dyn PushProvider>, wake: Arc<Notify>) {
    loop {
        match store.unsent_pushes(64).await {
            Ok(batch) => {
                for req in &batch {
                    match provider.send(req).await {
                        Ok(()) => {
                            if let Err(e) = store.mark_push_sent(req.utterance_id, crate::now_ms()).await {
                                tracing::error!(utterance = %req.utterance_id, error = %e, "push sent but not recorded");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(utterance = %req.utterance_id, provider = provider.name(), error = %e, "push failed; will retry");
                        }
                    }
                }
                if batch.len() == 64 {
                    continue;
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read the push outbox"),
        }
        // Woken by new replies; the timeout retries failed sends.
        let _ = tokio::time::timeout(Duration::from_secs(5), wake.notified()).await;
    }
}
