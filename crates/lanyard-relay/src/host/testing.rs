//! Helpers for the host's unit tests: a relay's configuration, and frames
//! as a pendant sends them.

use std::time::Duration;

use lanyard_proto::ble::{Codec, FrameSpec, Framing, packetize};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{HostConfig, PendantPort, Relay, open};
use crate::link::LinkEvent;
use crate::spool::Spool;

/// A relay on the spool in `dir`, its loop never run: the test plays
/// the loop's part by calling the core.
pub(super) fn relay(dir: &std::path::Path) -> (Relay, PendantPort) {
    let cfg = HostConfig { spool_dir: dir.to_path_buf(), ..relay_config() };
    open(cfg, mpsc::unbounded_channel().0).unwrap()
}

pub(super) fn relay_config() -> HostConfig {
    // Nothing listens on port 1: the relay must spool without a server.
    HostConfig { sync_interval: Duration::from_millis(200), ..HostConfig::new("", "http://127.0.0.1:1", "t") }
}

/// An Opus TOC byte (RFC 6716 3.1) for one 20 ms frame: configuration 1
/// (SILK narrowband, 20 ms), mono, code 0.
pub(super) const TOC_20MS: u8 = 1 << 3;

/// Frame `seq` as a pendant sends it: an Opus packet of 20 ms whose
/// other bytes say which frame it is.
pub(super) fn frame(seq: u16, start: bool) -> LinkEvent {
    let mut data = [seq as u8; 80];
    data[0] = TOC_20MS;
    notification(seq, start, false, &data)
}

pub(super) fn notification(seq: u16, start: bool, end: bool, data: &[u8]) -> LinkEvent {
    let spec = FrameSpec { seq, codec: Codec::Opus16k20ms, start, end, data };
    LinkEvent::Notification(packetize(&spec, 185).unwrap().remove(0))
}

pub(super) fn connected() -> LinkEvent {
    LinkEvent::Connected { framing: Framing::Lanyard, omi_codec: None, att_mtu: 185 }
}

/// Each utterance in the spool, oldest first: whether it ended, and its
/// frames, each as the byte after the TOC the pendant gave it.
pub(super) fn spooled(dir: &std::path::Path) -> Vec<(Uuid, bool, Vec<u8>)> {
    let (spool, _) = Spool::open(dir).unwrap();
    spool
        .pending()
        .map(|u| (u.id, u.ended, (0..u.frame_count()).map(|s| spool.read_frame(u.id, s).unwrap()[1]).collect()))
        .collect()
}
