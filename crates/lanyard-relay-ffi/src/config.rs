//! What the app passes in: the relay's configuration, the pendant's framing
//! and the app's lifecycle, as FFI types, and their conversion to
//! `lanyard-relay`'s own types.
//!
//! Conversions validate everything they can up front, so that a mistake in
//! the app shows up as a [`RelayError`] from the call that made it rather
//! than as a relay that quietly never connects.

use lanyard_proto::wire::{PushEnvironment, PushPlatform, PushRegistration};
use lanyard_relay::HostConfig;

use crate::error::RelayError;

/// How the relay is set up. One per [`crate::RelayCore`]. Its `Debug`
/// redacts the token.
#[derive(Clone, uniffi::Record)]
pub struct RelayConfig {
    /// Where the spool lives: a directory that survives app restarts and is
    /// not purged by the OS (on iOS, Application Support, not Caches). Audio
    /// waits here until the server holds it.
    pub spool_dir: String,
    /// The server's base URL, `https://host[:port]` (or `http://` in
    /// development).
    pub server_url: String,
    /// The device's bearer token, from `lanyard device add`.
    pub token: String,
    /// `apns` or `fcm`, to register for reply notifications at start. All
    /// three push fields are given together or not at all.
    #[uniffi(default = None)]
    pub push_platform: Option<String>,
    /// The token the platform issued (APNs device token in hex, or the FCM
    /// registration token).
    #[uniffi(default = None)]
    pub push_token: Option<String>,
    /// APNs only: `sandbox` for development builds, `production` (the
    /// default) for TestFlight and App Store builds.
    #[uniffi(default = None)]
    pub push_environment: Option<String>,
    /// The fsync window: how much audio an OS crash may lose. 0, the
    /// default, means the relay's own
    /// (`lanyard_relay::config::DEFAULT_SYNC_INTERVAL`, 200 ms).
    #[uniffi(default = 0)]
    pub sync_interval_ms: u64,
    /// BLE silence that ends an utterance when the pendant does not mark its
    /// end. 0, the default, means the relay's own
    /// (`lanyard_relay::config::DEFAULT_SILENCE_TIMEOUT_MS`, 1500 ms).
    #[uniffi(default = 0)]
    pub silence_timeout_ms: u64,
    /// Allow `http://` to a server that is not on this device (a laptop on
    /// the LAN, in development): the token and audio then cross the network
    /// in clear text. Off by default; never in a release build.
    #[uniffi(default = false)]
    pub insecure: bool,
}

impl RelayConfig {
    /// Checks the configuration and builds the host's.
    pub(crate) fn to_host(&self) -> Result<HostConfig, RelayError> {
        if self.spool_dir.trim().is_empty() {
            return Err(RelayError::InvalidConfig {
                message: "spool_dir is empty: pass a directory that survives app restarts \
                          (on iOS, under Application Support)"
                    .into(),
            });
        }
        lanyard_relay::host::stream_url(&self.server_url).map_err(|_| RelayError::InvalidConfig {
            message: format!(
                "server_url {:?} is not http(s)://host[:port]: pass the server's base URL, without a path",
                self.server_url
            ),
        })?;
        lanyard_relay::transport::check_server(&self.server_url, self.insecure)
            .map_err(|e| RelayError::InvalidConfig { message: e.to_string() })?;
        if self.token.trim().is_empty() {
            return Err(RelayError::InvalidConfig {
                message: "token is empty: register the device with `lanyard device add NAME` and pass the \
                          token it prints"
                    .into(),
            });
        }
        let mut host = HostConfig::new(&self.spool_dir, &self.server_url, &self.token)
            .with_sync_ms(self.sync_interval_ms)
            .with_silence_ms(self.silence_timeout_ms);
        host.push = self.push()?;
        host.insecure = self.insecure;
        Ok(host)
    }

    fn push(&self) -> Result<Option<PushRegistration>, RelayError> {
        let (platform, token) = match (&self.push_platform, &self.push_token) {
            (None, None) if self.push_environment.is_none() => return Ok(None),
            (Some(p), Some(t)) => (p, t),
            _ => {
                return Err(RelayError::InvalidConfig {
                    message: "push_platform and push_token go together: pass both to receive replies by \
                              push, or neither"
                        .into(),
                });
            }
        };
        let platform: PushPlatform =
            platform.parse().map_err(|e| RelayError::InvalidConfig { message: format!("push_platform: {e}") })?;
        if token.is_empty() || token.len() > 4096 {
            return Err(RelayError::InvalidConfig {
                message: "push_token must be 1 to 4096 characters: pass the token the platform issued".into(),
            });
        }
        let environment: PushEnvironment = match self.push_environment.as_deref() {
            None => PushEnvironment::default(),
            Some(name) => {
                name.parse().map_err(|e| RelayError::InvalidConfig { message: format!("push_environment: {e}") })?
            }
        };
        Ok(Some(PushRegistration { platform, token: token.clone(), environment }))
    }
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConfig")
            .field("spool_dir", &self.spool_dir)
            .field("server_url", &self.server_url)
            .field("token", &lanyard_proto::Secret::new(self.token.as_str()))
            .field("push_platform", &self.push_platform)
            .field("push_token", &self.push_token.as_deref().map(lanyard_proto::Secret::new))
            .field("push_environment", &self.push_environment)
            .field("sync_interval_ms", &self.sync_interval_ms)
            .field("silence_timeout_ms", &self.silence_timeout_ms)
            .field("insecure", &self.insecure)
            .finish()
    }
}

/// Which GATT service the pendant advertised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Framing {
    /// Lanyard's own framing (docs/protocol.md §1.2).
    Lanyard,
    /// The Omi framing (docs/protocol.md §1.6); the codec comes from the Omi
    /// codec characteristic.
    Omi,
}

impl From<Framing> for lanyard_proto::ble::Framing {
    fn from(f: Framing) -> Self {
        match f {
            Framing::Lanyard => Self::Lanyard,
            Framing::Omi => Self::Omi,
        }
    }
}

/// Where the app is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Lifecycle {
    /// In the foreground: no deadline.
    Foreground,
    /// In the background with `remaining_ms` of execution time left
    /// (`UIApplication.backgroundTimeRemaining`, in milliseconds).
    Background { remaining_ms: u64 },
    /// The system is about to suspend the app: hand off what cannot finish.
    WillSuspend,
}

impl From<Lifecycle> for lanyard_relay::Lifecycle {
    fn from(l: Lifecycle) -> Self {
        match l {
            Lifecycle::Foreground => Self::Foreground,
            Lifecycle::Background { remaining_ms } => Self::Background { remaining_ms },
            Lifecycle::WillSuspend => Self::WillSuspend,
        }
    }
}
