//! Audio retention: a background sweeper deletes the audio files of finished
//! utterances once they are older than `[audio] retention_days`.
//!
//! # What is deleted, and when
//!
//! An utterance's audio is deleted when both hold:
//!
//! - it is finished: `transcribed`, `replied` or `failed`. Audio that is
//!   still being received, or that waits for speech-to-text (a `complete`
//!   utterance, perhaps queued behind a restart), is never touched, however
//!   old, because the pipeline still needs it;
//! - it was created more than the retention ago. Creation, not completion,
//!   because the question retention answers is how long a recording of
//!   someone's voice is kept.
//!
//! The transcript, the reply and the row stay; the row records when the audio
//! went (`audio_purged_ms`), and the API shows `"audio": "purged"`.
//!
//! # Order, and crashes
//!
//! For each utterance the file is deleted first and the store marked second.
//! A crash between the two leaves an unmarked row whose file is gone; the
//! next sweep lists it again, finds no file (which counts as deleted) and
//! marks it. The other order could mark audio as purged that is still on
//! disk, and no later sweep would look at it again.
//!
//! # Cost
//!
//! A sweep reads the store in batches of [`BATCH`] through an index of the
//! rows whose audio is kept, so it costs the number of files it deletes, not
//! the length of the history. It runs at start-up and then every
//! `sweep_interval_secs` (an hour by default).

use std::sync::Arc;
use std::time::Duration;

use lanyard_store::{Store, StoreError};

use crate::audio::AudioStore;
use crate::metrics::{self, AudioPurged};

/// Utterances handled per store query.
pub const BATCH: u32 = 256;

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Utterances whose audio was deleted and marked purged.
    pub purged: u64,
    /// Files that could not be deleted (logged); tried again next sweep.
    pub failed: u64,
}

/// Deletes the audio of every finished utterance created before
/// `now_ms - retention`, and marks each purged at `now_ms`. Time is the
/// caller's, so that tests can pin it.
pub async fn sweep(
    store: &dyn Store,
    audio: &Arc<AudioStore>,
    now_ms: i64,
    retention: Duration,
) -> Result<SweepReport, StoreError> {
    let cutoff = now_ms.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
    let mut report = SweepReport::default();
    loop {
        let batch = store.audio_to_purge(cutoff, BATCH).await?;
        let full = batch.len() == BATCH as usize;
        let mut failed_here = 0;
        for c in batch {
            let files = audio.clone();
            let removed = tokio::task::spawn_blocking(move || files.remove(c.device_id, c.id))
                .await
                .map_err(|e| StoreError::Backend(format!("audio removal task: {e}")))?;
            match removed {
                // Already gone (a crash after the delete, or removed by hand) counts as deleted.
                Ok(_) => {
                    if store.mark_audio_purged(c.id, now_ms).await? {
                        report.purged += 1;
                    }
                }
                Err(e) => {
                    tracing::warn!(utterance = %c.id, error = %e, "cannot delete expired audio; trying again next sweep");
                    failed_here += 1;
                }
            }
        }
        report.failed += failed_here;
        // A batch with failures would come back the same: stop until the next sweep.
        if !full || failed_here > 0 {
            break;
        }
    }
    if report.purged > 0 {
        metrics::emit(AudioPurged { count: report.purged });
        tracing::info!(purged = report.purged, failed = report.failed, "expired audio deleted");
    }
    Ok(report)
}

/// Runs [`sweep`] at once and then every `interval`, for as long as the
/// runtime does. `None` retention (keep forever) starts nothing.
pub(crate) fn spawn(store: Arc<dyn Store>, audio: Arc<AudioStore>, retention: Option<Duration>, interval: Duration) {
    let Some(retention) = retention else {
        tracing::info!("[audio] retention_days = 0: audio is kept forever");
        return;
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = sweep(&*store, &audio, crate::now_ms(), retention).await {
                tracing::error!(error = %e, "audio retention sweep failed; trying again next interval");
            }
        }
    });
}
