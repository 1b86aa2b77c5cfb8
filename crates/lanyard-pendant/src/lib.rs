//! The pendant side of Lanyard.
//!
//! - The GATT profile and framing live in `lanyard_proto::ble` (and
//!   `lanyard_proto::omi` for Omi hardware); [`packetizer`] turns codec
//!   frames into notifications for either framing, as firmware does.
//! - [`speech`] synthesizes known sentences with espeak-ng, so tests and the
//!   demo have audio with reference texts.
//! - [`sim`] is a simulated pendant: it encodes that audio with libopus and
//!   sends it through the real framing at real-time pace to a relay over a
//!   loopback socket that stands in for the radio.

pub mod packetizer;
pub mod sim;
pub mod speech;
