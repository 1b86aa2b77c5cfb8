//! Per-attempt timeouts and retries with exponential backoff and full jitter.
//!
//! Both remote responders call their endpoint through [`RetryPolicy`]:
//!
//! 1. Each attempt runs under `timeout`, which covers connecting, sending,
//!    waiting and reading the whole answer. A hung endpoint costs one timeout,
//!    not a stuck pipeline.
//! 2. A retryable failure ([`RespondError::is_retryable`]: connection errors,
//!    timeouts, 429, 5xx) is followed by a sleep drawn uniformly from
//!    `[0, min(base × 2^(n-1), MAX_BACKOFF)]` before attempt `n + 1`. This is
//!    "full jitter": when an endpoint comes back after an outage, the servers
//!    that were waiting on it do not all retry in the same instant.
//! 3. After `max_attempts`, the last error is returned inside
//!    [`RespondError::GaveUp`]; a non-retryable error is returned at once.
//!
//! `Retry-After` is not honoured: the waits here are a few hundred
//! milliseconds, because a user is waiting for the notification.

use std::future::Future;
use std::time::Duration;

use lanyard_proto::backoff::{Backoff, Jitter};
use uuid::Uuid;

use crate::RespondError;

/// The longest sleep between two attempts, whatever the base and attempt
/// count: beyond this the user has given up on the reply anyway.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How a remote responder times out and retries. Built from the config's
/// `timeout_ms`, `max_attempts` and `backoff_base_ms`, already checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The limit on one attempt, from connecting to the last byte of the answer.
    pub timeout: Duration,
    /// Attempts in all, the first included; 1 means no retries.
    pub max_attempts: u32,
    /// The ceiling of the first backoff sleep; each later ceiling doubles.
    pub backoff_base: Duration,
}

impl RetryPolicy {
    /// The ceiling of the sleep after failed attempt `attempt` (1-based):
    /// `base × 2^(attempt-1)`, capped at [`MAX_BACKOFF`].
    pub fn backoff_ceiling(&self, attempt: u32) -> Duration {
        self.backoff().ceiling(attempt.saturating_sub(1))
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(self.backoff_base, MAX_BACKOFF).with_jitter(Jitter::Full)
    }

    /// Runs `attempt(n)` for n = 1, 2, ... under this policy; see the module docs.
    ///
    /// `responder` and `utterance` only label the log lines.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        responder: &'static str,
        utterance: Uuid,
        mut attempt: F,
    ) -> Result<T, RespondError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, RespondError>>,
    {
        let mut n = 1;
        loop {
            let result = match tokio::time::timeout(self.timeout, attempt(n)).await {
                Ok(result) => result,
                Err(_elapsed) => Err(RespondError::Timeout(self.timeout)),
            };
            let error = match result {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if !error.is_retryable() {
                tracing::warn!(responder, %utterance, attempt = n, %error, "attempt failed; not retrying");
                return Err(error);
            }
            if n >= self.max_attempts {
                tracing::warn!(responder, %utterance, attempt = n, %error, "last attempt failed");
                return Err(RespondError::GaveUp { attempts: n, last: Box::new(error) });
            }
            let wait = self.backoff().delay(n.saturating_sub(1), rand::random());
            tracing::info!(responder, %utterance, attempt = n, %error, ?wait, "attempt failed; retrying");
            tokio::time::sleep(wait).await;
            n += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy { timeout: Duration::from_millis(50), max_attempts, backoff_base: Duration::from_millis(1) }
    }

    #[test]
    fn ceiling_doubles_and_caps() {
        let p = RetryPolicy { backoff_base: Duration::from_millis(200), ..policy(3) };
        assert_eq!(p.backoff_ceiling(1), Duration::from_millis(200));
        assert_eq!(p.backoff_ceiling(2), Duration::from_millis(400));
        assert_eq!(p.backoff_ceiling(3), Duration::from_millis(800));
        assert_eq!(p.backoff_ceiling(10), MAX_BACKOFF);
        assert_eq!(p.backoff_ceiling(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn jitter_stays_under_its_ceiling_and_spreads_from_zero() {
        let p = RetryPolicy { backoff_base: Duration::from_millis(10), ..policy(3) };
        let waits: Vec<Duration> = (0..1000).map(|_| p.backoff().delay(0, rand::random())).collect();
        assert!(waits.iter().all(|w| *w <= p.backoff_ceiling(1)));
        assert!(waits.iter().any(|w| *w < Duration::from_millis(5)), "full jitter reaches below half");
    }

    #[tokio::test]
    async fn retries_retryable_errors_until_success() {
        let calls = AtomicU32::new(0);
        let out = policy(3)
            .run("test", Uuid::nil(), |n| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move { if n < 3 { Err(RespondError::Transport("refused".into())) } else { Ok(n) } }
            })
            .await;
        assert_eq!(out.unwrap(), 3);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts() {
        let calls = AtomicU32::new(0);
        let out: Result<(), _> = policy(2)
            .run("test", Uuid::nil(), |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(RespondError::Status { status: 503, detail: String::new() }) }
            })
            .await;
        match out {
            Err(RespondError::GaveUp { attempts: 2, last }) => {
                assert!(matches!(*last, RespondError::Status { status: 503, .. }))
            }
            other => panic!("expected GaveUp, got {other:?}"),
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn does_not_retry_a_bad_answer() {
        let calls = AtomicU32::new(0);
        let out: Result<(), _> = policy(3)
            .run("test", Uuid::nil(), |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(RespondError::InvalidAnswer("nope".into())) }
            })
            .await;
        assert!(matches!(out, Err(RespondError::InvalidAnswer(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn times_out_each_attempt() {
        let started = std::time::Instant::now();
        let out: Result<(), _> = policy(2)
            .run("test", Uuid::nil(), |_| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            })
            .await;
        match out {
            Err(RespondError::GaveUp { attempts: 2, last }) => {
                assert!(matches!(*last, RespondError::Timeout(t) if t == Duration::from_millis(50)))
            }
            other => panic!("expected GaveUp(Timeout), got {other:?}"),
        }
        // Two 50 ms attempts and a sleep of at most 1 ms: far below the hour each attempt wanted.
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    }
}
