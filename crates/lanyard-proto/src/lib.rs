//! Sans-I/O wire formats shared by the pendant, the relay and the server.
//!
//! Nothing in this crate opens a socket, touches a file or reads a clock:
//! every function takes bytes (or typed values) and returns typed values (or
//! bytes). That keeps the formats testable with golden vectors and property
//! tests, fuzzable, and usable from the phone through FFI.
//!
//! - [`ble`]: Lanyard's own pendant-to-phone notification framing and GATT profile.
//! - [`omi`]: the open Omi pendant framing, accepted for compatibility.
//! - [`reassembly`]: turns either framing's notifications back into codec frames.
//! - [`wire`]: the relay-to-server WebSocket protocol (`/v1/stream`).
//! - [`oggopus`]: the Ogg Opus container used by the whole-utterance HTTP upload.
//! - [`wav`]: 16 kHz PCM16 WAV, the upload container for PCM utterances.
//! - [`record`]: the length-and-CRC-32C record of every crash-safe file
//!   (the relay's spool, the server's audio).
//! - [`backoff`]: the one exponential backoff, with seeded jitter.
//! - [`link`]: the length-prefixed byte stream that carries notifications
//!   between the pendant simulator and a relay on one host.
//! - [`secret`]: [`Secret`], every configuration's credential type, which
//!   never prints its value.

pub mod backoff;
pub mod ble;
pub mod link;
pub mod oggopus;
pub mod omi;
pub mod opus_toc;
pub mod reassembly;
pub mod record;
pub mod secret;
pub mod wav;
pub mod wire;

pub use secret::Secret;
pub use uuid::Uuid;
