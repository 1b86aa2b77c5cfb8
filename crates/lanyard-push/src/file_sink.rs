//! [`FileSink`]: a development push provider that delivers nothing.
//!
//! It appends each notification, as it would be sent, to a JSON-lines file
//! and fsyncs it, so the demo and tests can see what a phone would have been
//! shown without Apple or Google accounts. It never fails for a notification's
//! sake; a file it cannot write is [`PushError::Retry`], so nothing queued is
//! lost while the disk is full.
//!
//! **Do not use it in production**: a notification "sent" here reaches no
//! one.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use serde::Serialize;

use crate::{ApnsEnvironment, Notification, Platform, PushError, PushProvider};

/// Writes notifications to a JSON-lines file instead of delivering them.
#[derive(Debug, Clone)]
pub struct FileSink {
    path: PathBuf,
}

/// One line of the file: the notification, its collapse id, and when it was
/// written.
#[derive(Serialize)]
struct SinkLine<'a> {
    utterance_id: String,
    platform: Platform,
    token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    apns_environment: Option<ApnsEnvironment>,
    collapse_id: String,
    title: &'a str,
    body: &'a str,
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    data: &'a serde_json::Map<String, serde_json::Value>,
    sent_at_ms: u128,
}

impl FileSink {
    /// A sink appending to `path`, created on the first notification.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

#[async_trait]
impl PushProvider for FileSink {
    async fn send(&self, n: &Notification) -> Result<(), PushError> {
        let line = SinkLine {
            utterance_id: n.utterance_id.to_string(),
            platform: n.platform,
            token: &n.token,
            apns_environment: (n.platform == Platform::Apns).then_some(n.apns_environment),
            collapse_id: n.collapse_id(),
            title: &n.title,
            body: &n.body,
            data: &n.data,
            sent_at_ms: std::time::SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0),
        };
        let mut json = serde_json::to_vec(&line).expect("a notification always serializes");
        json.push(b'\n');
        let path = self.path.clone();
        // One write_all of one line: a crash leaves at most a torn last line.
        tokio::task::spawn_blocking(move || {
            let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
            f.write_all(&json)?;
            f.sync_data()
        })
        .await
        .map_err(|e| PushError::retry(format!("the push sink's writer failed: {e}")))?
        .map_err(|e| {
            PushError::retry(format!(
                "cannot write the push sink {}: {e}; check the disk and the directory's permissions",
                self.path.display()
            ))
        })
    }

    fn name(&self) -> &'static str {
        "file-sink"
    }
}
