//! The simulated radio: how the pendant simulator and a relay on one host
//! exchange what would be BLE traffic.
//!
//! A real pendant talks GATT. For the simulator the same notifications travel
//! over a local byte stream (a TCP socket on loopback), so the relay's link
//! layer, reassembly and everything after it run exactly as with hardware.
//! The stream is a sequence of records:
//!
//! ```text
//! +------+----------------+-------------------+
//! | kind | len (u16 LE)   | payload (len)     |
//! +------+----------------+-------------------+
//!  0x01 ADVERTISE  service UUID (16 bytes) | ATT MTU (u16 LE) | codec characteristic (u8)
//!  0x02 NOTIFY     one audio notification, exactly as sent over the air
//!  0x03 BATTERY    battery level, percent (u8)
//! ```
//!
//! The pendant (the peripheral) listens; the relay (the central) connects.

use thiserror::Error;
use uuid::Uuid;

/// Largest payload: an ATT notification is at most 512 bytes; 1 KiB bounds
/// what a broken peer can make us buffer.
pub const MAX_RECORD: usize = 1024;

/// One record of the simulated radio stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// The pendant announces itself. `service` picks the framing (see
    /// [`crate::ble::Framing::service`]), `att_mtu` is the MTU the link
    /// negotiated, and `codec` is the value of Omi's codec characteristic
    /// (ignored for Lanyard framing, which names the codec in every
    /// notification; the simulator sends 0).
    Advertise { service: Uuid, att_mtu: u16, codec: u8 },
    /// One audio notification, exactly as sent over the air.
    Notify(Vec<u8>),
    /// Battery level in percent.
    Battery(u8),
}

/// Why the record stream could not be decoded. The stream is then out of
/// sync and must be closed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LinkError {
    #[error("unknown link record kind 0x{0:02x}")]
    UnknownKind(u8),
    #[error("link record of {0} bytes exceeds {MAX_RECORD}")]
    TooLong(usize),
    #[error("link record kind 0x{kind:02x} has a {len}-byte payload, expected {expected}")]
    BadLength { kind: u8, len: usize, expected: usize },
}

impl Record {
    /// Encodes one record.
    ///
    /// # Panics
    ///
    /// If a `Notify` payload is longer than [`MAX_RECORD`]: no decoder would
    /// accept it, and a BLE notification is never that long.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload): (u8, Vec<u8>) = match self {
            Record::Advertise { service, att_mtu, codec } => {
                let mut p = service.as_bytes().to_vec();
                p.extend_from_slice(&att_mtu.to_le_bytes());
                p.push(*codec);
                (1, p)
            }
            Record::Notify(n) => (2, n.clone()),
            Record::Battery(b) => (3, vec![*b]),
        };
        assert!(payload.len() <= MAX_RECORD, "link record of {} bytes exceeds {MAX_RECORD}", payload.len());
        let mut out = Vec::with_capacity(3 + payload.len());
        out.push(kind);
        out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        out.extend_from_slice(&payload);
        out
    }
}

/// Incremental decoder: feed bytes as they arrive, take whole records out.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Bytes received but not yet returned as records: at most one partial
    /// record once [`Decoder::next_record`] has returned `Ok(None)`.
    buf: Vec<u8>,
}

impl Decoder {
    /// An empty decoder, at a record boundary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes as they arrive; they may split records anywhere.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole record, `Ok(None)` if more bytes are needed.
    /// After an error the stream is out of sync and must be dropped.
    pub fn next_record(&mut self) -> Result<Option<Record>, LinkError> {
        if self.buf.len() < 3 {
            return Ok(None);
        }
        let kind = self.buf[0];
        let len = usize::from(u16::from_le_bytes([self.buf[1], self.buf[2]]));
        if len > MAX_RECORD {
            return Err(LinkError::TooLong(len));
        }
        if !(1..=3).contains(&kind) {
            return Err(LinkError::UnknownKind(kind));
        }
        if self.buf.len() < 3 + len {
            return Ok(None);
        }
        let payload: Vec<u8> = self.buf.drain(..3 + len).skip(3).collect();
        let want = |expected: usize| {
            if payload.len() == expected { Ok(()) } else { Err(LinkError::BadLength { kind, len, expected }) }
        };
        Ok(Some(match kind {
            1 => {
                want(19)?;
                let mut id = [0u8; 16];
                id.copy_from_slice(&payload[..16]);
                Record::Advertise {
                    service: Uuid::from_bytes(id),
                    att_mtu: u16::from_le_bytes([payload[16], payload[17]]),
                    codec: payload[18],
                }
            }
            2 => Record::Notify(payload),
            _ => {
                want(1)?;
                Record::Battery(payload[0])
            }
        }))
    }
}
