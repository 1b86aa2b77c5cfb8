//! Frames to notifications, for either framing, as pendant firmware does it.

use lanyard_proto::ble::{self, Codec, FrameSpec, Framing, PacketizeError};
use lanyard_proto::omi;

/// Turns a stream of codec frames into notifications.
#[derive(Debug)]
pub struct Packetizer {
    framing: Framing,
    att_mtu: usize,
    /// Lanyard: frame sequence number. Omi: notification index.
    seq: u16,
}

impl Packetizer {
    pub fn new(framing: Framing, att_mtu: usize) -> Result<Self, PacketizeError> {
        if att_mtu < ble::MIN_ATT_MTU {
            return Err(PacketizeError::MtuTooSmall(att_mtu));
        }
        Ok(Self { framing, att_mtu, seq: 0 })
    }

    /// Starts numbering at `seq`, e.g. near the wrap point in tests.
    pub fn with_seq(mut self, seq: u16) -> Self {
        self.seq = seq;
        self
    }

    /// Notifications for one frame. `start`/`end` mark utterance boundaries;
    /// Omi framing has no place for them and drops them.
    pub fn frame(&mut self, codec: Codec, data: &[u8], start: bool, end: bool) -> Result<Vec<Vec<u8>>, PacketizeError> {
        match self.framing {
            Framing::Lanyard => {
                let out = ble::packetize(&FrameSpec { seq: self.seq, codec, start, end, data }, self.att_mtu)?;
                self.seq = self.seq.wrapping_add(1);
                Ok(out)
            }
            Framing::Omi => {
                if data.len() > ble::MAX_FRAME_LEN {
                    return Err(PacketizeError::FrameTooLong(data.len()));
                }
                let out = omi::packetize(self.seq, data, self.att_mtu);
                self.seq = self.seq.wrapping_add(out.len() as u16);
                Ok(out)
            }
        }
    }
}
