//! The push sender: drains the store's outbox into the providers.
//!
//! A reply and its push request are stored in one transaction. The sender
//! claims due requests with a lease, hands each to the provider for its
//! platform, and records the outcome:
//!
//! | provider says                         | recorded as                                     |
//! |---------------------------------------|-------------------------------------------------|
//! | accepted                              | `sent` (and the utterance's `push_ms`)          |
//! | retry (429, 5xx, network)             | pending again, after backoff with jitter        |
//! | retry, `max_attempts` reached         | `undeliverable`, "gave up after N attempts: ..."|
//! | token invalid (410, BadDeviceToken, UNREGISTERED) | `undeliverable`, and the device's token disabled |
//! | permanent error                       | `undeliverable`, with the provider's reason     |
//!
//! Delivery is at least once: a sender killed after the provider accepted a
//! request but before the outcome was recorded sends it again once its lease
//! runs out. Every send of a request carries the same collapse id (the
//! utterance id), so the user sees one notification.

use std::sync::Arc;
use std::time::Duration;

use lanyard_proto::backoff::{Backoff, Jitter};
use lanyard_proto::wire::{PushEnvironment, PushPlatform};
use lanyard_push::{ApnsEnvironment, Notification, Platform, PushError, PushProvider};
use lanyard_store::{PushOutcome, PushRequest, Store};
use tokio::sync::Notify;

use crate::config::RetryPolicy;
use crate::now_ms;

/// Requests claimed per round. Sends in a round run concurrently, so this
/// also bounds the requests in flight to the providers.
const BATCH: u32 = 64;
/// How often the sender looks for retries that came due, when nothing wakes it.
const POLL: Duration = Duration::from_millis(200);

/// The provider-facing form of a stored request.
fn notification(req: &PushRequest) -> Notification {
    let data = match serde_json::from_str::<serde_json::Value>(&req.data_json) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    Notification {
        utterance_id: req.utterance_id,
        platform: match req.target.platform {
            PushPlatform::Apns => Platform::Apns,
            PushPlatform::Fcm => Platform::Fcm,
        },
        token: req.target.token.clone(),
        apns_environment: match req.target.environment {
            PushEnvironment::Production => ApnsEnvironment::Production,
            PushEnvironment::Sandbox => ApnsEnvironment::Sandbox,
        },
        title: req.title.clone(),
        body: req.body.clone(),
        data,
    }
}

/// The sender's state.
pub struct Sender {
    pub store: Arc<dyn Store>,
    pub provider: Arc<dyn PushProvider>,
    pub wake: Arc<Notify>,
    pub policy: RetryPolicy,
}

impl Sender {
    /// Runs until the process ends.
    pub async fn run(self) {
        loop {
            let now = now_ms();
            let lease = self.policy.claim_lease.as_millis() as i64;
            match self.store.claim_pushes(now, lease, BATCH).await {
                Ok(batch) if !batch.is_empty() => {
                    let full = batch.len() as u32 == BATCH;
                    futures::future::join_all(batch.iter().map(|req| self.deliver(req))).await;
                    if full {
                        continue;
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "cannot read the push outbox"),
            }
            let _ = tokio::time::timeout(POLL, self.wake.notified()).await;
        }
    }

    #[tracing::instrument(skip_all, fields(utterance = %req.utterance_id, attempt = req.attempts + 1))]
    async fn deliver(&self, req: &PushRequest) {
        let result = self.provider.send(&notification(req)).await;
        let outcome = match result {
            Ok(()) => PushOutcome::Sent,
            Err(PushError::Retry { reason, retry_after }) => {
                let attempts = req.attempts + 1;
                if attempts >= self.policy.max_attempts {
                    PushOutcome::Undeliverable { reason: format!("gave up after {attempts} attempts: {reason}") }
                } else {
                    let wait = self.backoff(attempts).max(retry_after.unwrap_or_default());
                    tracing::warn!(%reason, retry_in_ms = wait.as_millis() as u64, "push failed; will retry");
                    PushOutcome::Retry { next_attempt_ms: now_ms() + wait.as_millis() as i64, error: reason }
                }
            }
            Err(PushError::TokenInvalid { reason }) => {
                match self.store.disable_push_target(req.device_id, &req.target.token, &reason, now_ms()).await {
                    Ok(true) => tracing::warn!(device = %req.device_id, %reason, "push token disabled"),
                    Ok(false) => {}
                    Err(e) => tracing::error!(error = %e, "cannot disable a dead push token"),
                }
                PushOutcome::Undeliverable { reason: format!("the device token was rejected: {reason}") }
            }
            Err(PushError::Undeliverable { reason }) => PushOutcome::Undeliverable { reason },
        };
        if let PushOutcome::Undeliverable { reason } = &outcome {
            tracing::warn!(%reason, "push undeliverable");
        }
        if let Err(e) = self.store.record_push(req.utterance_id, &outcome, now_ms()).await {
            // The claim lapses and the request is sent again: at least once.
            tracing::error!(error = %e, "push outcome not recorded; it will be retried after the lease");
        }
    }

    /// Exponential backoff with equal jitter, capped: the retry count is
    /// the one stored with the request.
    fn backoff(&self, attempts: u32) -> Duration {
        Backoff::new(self.policy.base, self.policy.max).with_jitter(Jitter::Equal).delay(attempts, rand::random())
    }
}
