//! The errors of push delivery: [`PushError`] for one send, [`ConfigError`]
//! for a provider that cannot start.
//!
//! [`PushError`] has exactly three variants because the caller can do exactly
//! three things: send again later, disable the device's token, or give up on
//! the notification. Providers map every response of their service to one of
//! them; the mapping is documented next to each provider.

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

/// Why a notification was not delivered, as the action the caller must take.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PushError {
    /// A temporary failure: rate limiting (429), a server error (5xx), a
    /// timeout, a refused connection, an expired credential that was just
    /// refreshed. Keep the notification and send it again later, no sooner
    /// than `retry_after` when the service gave one.
    #[error("push failed for now ({reason}); keep it and send it again later{}", retry_hint(retry_after))]
    Retry { reason: String, retry_after: Option<Duration> },

    /// The device token is no longer valid (the app was uninstalled, the
    /// token belongs to another app or environment). Disable this push target
    /// and do not retry; the app registers a new token when it next runs.
    #[error("the device token is invalid ({reason}); disable this push target until the app registers a new token")]
    TokenInvalid { reason: String },

    /// The notification can never be delivered as it is (payload too large,
    /// bad topic, a provider not configured). Record it as failed and do not
    /// retry it.
    #[error("the notification cannot be delivered ({reason}); record it as failed and do not retry it")]
    Undeliverable { reason: String },
}

fn retry_hint(retry_after: &Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!(", in {} s at the earliest", d.as_secs()),
        None => String::new(),
    }
}

impl PushError {
    pub(crate) fn retry(reason: impl Into<String>) -> Self {
        PushError::Retry { reason: reason.into(), retry_after: None }
    }

    pub(crate) fn token_invalid(reason: impl Into<String>) -> Self {
        PushError::TokenInvalid { reason: reason.into() }
    }

    pub(crate) fn undeliverable(reason: impl Into<String>) -> Self {
        PushError::Undeliverable { reason: reason.into() }
    }

    /// True for [`PushError::Retry`].
    pub fn is_retry(&self) -> bool {
        matches!(self, PushError::Retry { .. })
    }
}

/// A provider's configuration is unusable. Raised by the constructors, at
/// start-up, so that a bad key or id is found before the first reply is due.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A file named in the configuration cannot be read.
    #[error("cannot read {what} at {path}: {source}; {hint}")]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        hint: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// The APNs signing key is not an EC P-256 PKCS#8 key.
    #[error(
        "the APNs signing key {path} is not usable: {reason}. APNs needs the EC P-256 `AuthKey_XXXXXXXXXX.p8` file downloaded from Apple Developer > Keys"
    )]
    BadApnsKey { path: PathBuf, reason: String },

    /// The FCM service-account file is not a usable Google service-account
    /// key.
    #[error(
        "the FCM service-account file {path} is not usable: {reason}. Download it from the Firebase console > Project settings > Service accounts > Generate new private key"
    )]
    BadServiceAccount { path: PathBuf, reason: String },

    /// A configuration value is missing or malformed.
    #[error("{provider} setting `{field}` is invalid: {reason}")]
    BadField { provider: &'static str, field: &'static str, reason: String },

    /// An extra root certificate cannot be used.
    #[error(
        "the root certificate file {path} is not usable: {reason}; give PEM certificates (-----BEGIN CERTIFICATE-----)"
    )]
    BadRootCert { path: PathBuf, reason: String },
}
