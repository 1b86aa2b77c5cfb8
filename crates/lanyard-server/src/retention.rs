//! Audio retention: a background sweeper deletes the audio files of finished
//! utterances once they are older than `[audio] retention_days`, and gives
//! up on utterances abandoned mid-stream ([`sweep_abandoned`]).
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

use lanyard_store::{PurgeCandidate, Store, StoreError};

use crate::audio::AudioStore;
use crate::metrics::{self, Abandoned, AudioPurged};

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
            match remove_audio(audio, c).await? {
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

/// Deletes a candidate's audio file off the runtime. The outer error is the
/// task's; the inner one, the filesystem's (a missing file is `Ok(false)`).
async fn remove_audio(audio: &Arc<AudioStore>, c: PurgeCandidate) -> Result<std::io::Result<bool>, StoreError> {
    let files = audio.clone();
    tokio::task::spawn_blocking(move || files.remove(c.device_id, c.id))
        .await
        .map_err(|e| StoreError::Backend(format!("audio removal task: {e}")))
}

/// The error an abandoned utterance is marked failed with.
pub const ABANDONED: &str = "abandoned: the utterance was opened and never ended, and no audio came for [limits] abandoned_after_hours; its audio was deleted";

/// Gives up on utterances left `receiving` (opened and never ended) whose
/// row is older than `after` and whose audio file has not been written for
/// as long: each is marked failed with [`ABANDONED`] and its audio deleted,
/// so opens that are never ended cannot grow rows and files for ever.
/// Returns how many were given up, counted in `lanyard_abandoned_total`.
///
/// The row is marked first, and only if it is still `receiving`
/// (`Store::abandon`): an `end` that races the sweep wins, and a stream
/// that comes back later finds the row finished (`opened` with `complete`)
/// instead of appending to a file being deleted. A crash between the two
/// leaves a failed row whose audio the retention sweep deletes in its time.
pub async fn sweep_abandoned(
    store: &dyn Store,
    audio: &Arc<AudioStore>,
    now_ms: i64,
    after: Duration,
) -> Result<u64, StoreError> {
    let cutoff = now_ms.saturating_sub(i64::try_from(after.as_millis()).unwrap_or(i64::MAX));
    let written_before = std::time::SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(cutoff).unwrap_or(0));
    let mut given_up = 0;
    let mut seen = 0;
    // Rows still being written to are skipped, not changed, so a batch may
    // come back the same: page by how many were seen.
    loop {
        let batch = store.receiving_before(cutoff, BATCH.saturating_add(seen)).await?;
        let full = batch.len() as u32 == BATCH.saturating_add(seen);
        for c in batch.into_iter().skip(seen as usize) {
            let path = audio.path(c.device_id, c.id);
            let written = tokio::task::spawn_blocking(move || std::fs::metadata(path).and_then(|m| m.modified()).ok())
                .await
                .map_err(|e| StoreError::Backend(format!("audio metadata task: {e}")))?;
            if written.is_some_and(|t| t >= written_before) {
                // Audio came lately: a relay is still at it.
                seen += 1;
                continue;
            }
            if !store.abandon(c.id, ABANDONED).await? {
                // Ended (or deleted) since it was listed: not abandoned,
                // and no longer in the list.
                continue;
            }
            match remove_audio(audio, c).await? {
                Ok(_) => {
                    store.mark_audio_purged(c.id, now_ms).await?;
                }
                Err(e) => {
                    tracing::warn!(utterance = %c.id, error = %e, "cannot delete an abandoned utterance's audio; the retention sweep will")
                }
            }
            given_up += 1;
        }
        if !full {
            break;
        }
    }
    if given_up > 0 {
        metrics::emit(Abandoned { count: given_up });
        tracing::info!(given_up, "abandoned utterances given up");
    }
    Ok(given_up)
}

/// Runs [`sweep`] and [`sweep_abandoned`] at once and then every
/// `interval`, for as long as the runtime does. `None` for either (keep
/// forever) skips that sweep.
pub(crate) fn spawn(
    store: Arc<dyn Store>,
    audio: Arc<AudioStore>,
    retention: Option<Duration>,
    abandoned_after: Option<Duration>,
    interval: Duration,
) {
    if retention.is_none() {
        tracing::info!("[audio] retention_days = 0: audio is kept forever");
    }
    if retention.is_none() && abandoned_after.is_none() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Some(after) = abandoned_after
                && let Err(e) = sweep_abandoned(&*store, &audio, crate::now_ms(), after).await
            {
                tracing::error!(error = %e, "the sweep of abandoned utterances failed; trying again next interval");
            }
            if let Some(retention) = retention
                && let Err(e) = sweep(&*store, &audio, crate::now_ms(), retention).await
            {
                tracing::error!(error = %e, "audio retention sweep failed; trying again next interval");
            }
        }
    });
}
