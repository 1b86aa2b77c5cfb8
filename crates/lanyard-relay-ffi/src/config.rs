//! What the app passes in: the relay's configuration, the pendant's framing
//! and the app's lifecycle, as FFI types, and their conversion to
//! `lanyard-relay`'s own types.
//!
//! Conversions validate everything they can up front, so that a mistake in
//! the app shows up as a [`RelayError`] from the call that made it rather
//! than as a relay that quietly never connects.

use std::path::PathBuf;
use std::time::Duration;

use lanyard_proto::wire::{PushEnvironment, PushPlatform, PushRegistration};
use lanyard_relay::HostConfig;
use lanyard_relay::boundary::BoundaryConfig;
use lanyard_relay::planner::PlannerConfig;
use lanyard_relay::uplink::UplinkConfig;

use crate::error::RelayError;

/// How the relay is set up. One per [`crate::RelayCore`].
#[derive(Debug, Clone, uniffi::Record)]
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
    /// The fsync window: how much audio an OS crash may lose. 200 ms is the
    /// relay's default; 0 means "use the default".
    #[uniffi(default = 200)]
    pub sync_interval_ms: u64,
    /// BLE silence that ends an utterance when the pendant does not mark its
    /// end; 0 means "use the default" (1500 ms).
    #[uniffi(default = 1500)]
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
        let sync_interval = match self.sync_interval_ms {
            0 => lanyard_relay::spool::DEFAULT_SYNC_INTERVAL,
            ms => Duration::from_millis(ms),
        };
        let boundary = match self.silence_timeout_ms {
            0 => BoundaryConfig::default(),
            ms => BoundaryConfig { silence_timeout_ms: ms, ..Default::default() },
        };
        Ok(HostConfig {
            spool_dir: PathBuf::from(&self.spool_dir),
            server: self.server_url.clone(),
            token: self.token.clone(),
            sync_interval,
            boundary,
            uplink: UplinkConfig::default(),
            planner: PlannerConfig::default(),
            push: self.push()?,
            exit_after: None,
            send_interval: lanyard_relay::DEFAULT_SEND_INTERVAL,
            fsync_delay: Duration::ZERO,
            insecure: self.insecure,
            extra_root_certs: Vec::new(),
        })
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
