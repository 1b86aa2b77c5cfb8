//! The relay: the phone-side core of Lanyard.
//!
//! It takes audio notifications from the pendant, writes every frame to a
//! durable spool before anything else, streams the spool to the server over
//! the WebSocket protocol, and deletes audio only once the server has
//! acknowledged holding all of it.
//!
//! The deciding parts are sans-I/O and testable with a simulated clock:
//! - [`spool`]: the on-disk, crash-safe frame log;
//! - [`boundary`]: utterance boundaries from pendant markers or silence;
//! - [`uplink`]: what to send, when to reconnect, when the spool may delete;
//! - [`planner`]: what to stream, hand off or discard in the background;
//! - the host's `RelayCore`: the loop's rounds, wake-ups, fsyncs and exit.
//!
//! [`config`] holds the relay's defaults and [`HostConfig::new`], which
//! every front end (the CLI, the FFI) builds its configuration from.
//!
//! [`host`] is the thin tokio shell that wires them to a pendant link and a
//! WebSocket; [`link`] is how a pendant's notifications reach it, and
//! `ble` (feature `ble`) is the Linux host's btleplug radio.

#[cfg(feature = "ble")]
pub mod ble;
pub mod boundary;
pub mod config;
pub mod host;
pub mod link;
pub mod planner;
pub mod seal;
pub mod spool;
pub mod transport;
pub mod uplink;

pub use host::{Control, DEFAULT_SEND_INTERVAL, HostConfig, Lifecycle, PendantPort, Relay, open, run};
pub use uplink::RelayEvent;
