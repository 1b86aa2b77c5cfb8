//! The relay's defaults, in one place, and [`HostConfig::new`], which
//! fills them in.
//!
//! Every front end builds its [`HostConfig`] from here: `lanyard relay`
//! (its flags' defaults are these constants), the FFI's `RelayConfig` (a 0
//! means "the default"), and the benchmarks. docs/ffi.md states the numbers;
//! a test in this module holds it to them.
//!
//! | Setting | Default | Defined by |
//! |---|---|---|
//! | fsync window (`sync_interval`) | 200 ms | [`DEFAULT_SYNC_INTERVAL`] |
//! | send round (`send_interval`) | 200 ms | [`DEFAULT_SEND_INTERVAL`] |
//! | silence that ends an utterance | 1,500 ms | [`DEFAULT_SILENCE_TIMEOUT_MS`] |
//! | discard utterances older than | 1 hour | [`DEFAULT_TTL_MS`] |

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use lanyard_proto::Secret;

use crate::boundary::BoundaryConfig;
pub use crate::boundary::DEFAULT_SILENCE_TIMEOUT_MS;
pub use crate::host::DEFAULT_SEND_INTERVAL;
use crate::host::HostConfig;
pub use crate::planner::DEFAULT_TTL_MS;
use crate::planner::PlannerConfig;
pub use crate::spool::DEFAULT_SYNC_INTERVAL;
use crate::uplink::UplinkConfig;

impl HostConfig {
    /// A relay with every default: the spool in `spool_dir`, streaming to
    /// `server` with the device's `token`. Change fields after, or with
    /// `HostConfig { field, ..HostConfig::new(..) }`.
    pub fn new(spool_dir: impl Into<PathBuf>, server: impl Into<String>, token: impl Into<String>) -> Self {
        HostConfig {
            spool_dir: spool_dir.into(),
            server: server.into(),
            token: Secret::new(token),
            sync_interval: DEFAULT_SYNC_INTERVAL,
            send_interval: DEFAULT_SEND_INTERVAL,
            boundary: BoundaryConfig::default(),
            uplink: UplinkConfig::default(),
            planner: PlannerConfig::default(),
            push: None,
            exit_after: None,
            fsync_delay: Duration::ZERO,
            insecure: false,
            extra_root_certs: Vec::new(),
        }
    }

    /// Sets the fsync window; 0 ms keeps the default (a window of nothing
    /// would fsync every frame, which is never what a caller means).
    pub fn with_sync_ms(mut self, ms: u64) -> Self {
        if ms > 0 {
            self.sync_interval = Duration::from_millis(ms);
        }
        self
    }

    /// Sets the silence that ends an unmarked utterance; 0 ms keeps the
    /// default.
    pub fn with_silence_ms(mut self, ms: u64) -> Self {
        if ms > 0 {
            self.boundary.silence_timeout_ms = ms;
        }
        self
    }
}

/// By hand only to keep the field order; the token prints as a
/// [`Secret`] does.
impl fmt::Debug for HostConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostConfig")
            .field("spool_dir", &self.spool_dir)
            .field("server", &self.server)
            .field("token", &self.token)
            .field("sync_interval", &self.sync_interval)
            .field("send_interval", &self.send_interval)
            .field("boundary", &self.boundary)
            .field("uplink", &self.uplink)
            .field("planner", &self.planner)
            .field("push", &self.push)
            .field("exit_after", &self.exit_after)
            .field("fsync_delay", &self.fsync_delay)
            .field("insecure", &self.insecure)
            .field("extra_root_certs", &self.extra_root_certs)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_takes_every_default_and_zero_keeps_it() {
        let cfg = HostConfig::new("/spool", "https://h", "lyd_secret");
        assert_eq!(cfg.sync_interval, Duration::from_millis(200));
        assert_eq!(cfg.send_interval, Duration::from_millis(200));
        assert_eq!(cfg.boundary.silence_timeout_ms, 1500);
        assert_eq!(cfg.boundary.silence_timeout_ms, BoundaryConfig::default().silence_timeout_ms);
        let cfg = cfg.with_sync_ms(0).with_silence_ms(0);
        assert_eq!((cfg.sync_interval, cfg.boundary.silence_timeout_ms), (DEFAULT_SYNC_INTERVAL, 1500));
        let cfg = cfg.with_sync_ms(50).with_silence_ms(900);
        assert_eq!((cfg.sync_interval, cfg.boundary.silence_timeout_ms), (Duration::from_millis(50), 900));
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("lyd_secret") && shown.contains("<redacted>"), "{shown}");
    }

    /// docs/ffi.md names the defaults an app gets; they are these.
    #[test]
    fn docs_state_these_defaults() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/ffi.md")).unwrap();
        let sync = format!("fsync window, default {}", DEFAULT_SYNC_INTERVAL.as_millis());
        let silence = format!("(default {DEFAULT_SILENCE_TIMEOUT_MS})");
        let flat = doc.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(flat.contains(&sync), "docs/ffi.md should say `{sync}`");
        assert!(flat.contains(&silence), "docs/ffi.md should say `{silence}`");
    }
}
