//! What the relay tells the app: [`RelayEvent`], a mirror of
//! `lanyard_relay::RelayEvent` with ids as strings and the time the relay saw
//! each event, and [`RelayListener`], the trait the app implements to hear it.
//!
//! The mirror is kept by hand rather than by deriving UniFFI traits on the
//! relay's own enum, so that `lanyard-relay` knows nothing about FFI and the
//! FFI can add events of its own (`Stopped`). The
//! `match` in [`RelayEvent::from_stamped`] is exhaustive: a new relay event
//! fails to compile here until it is mirrored.

use lanyard_relay::host::Stamped;
use lanyard_relay::uplink::RelayEvent as Inner;

/// One HTTP header of an [`RelayEvent::UploadTask`].
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

/// Events for the app. `at_ms` is Unix time in milliseconds when the relay
/// saw the event; utterance ids are UUID strings.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum RelayEvent {
    /// The WebSocket to the server is up.
    Connected { at_ms: u64 },
    /// The WebSocket went down; the relay retries in `retry_in_ms`.
    Disconnected { at_ms: u64, reason: String, retry_in_ms: u64 },
    /// The pendant started an utterance; its frames are being spooled.
    UtteranceStarted { at_ms: u64, id: String },
    /// The utterance ended with `frames` frames; `lost` were lost on BLE.
    UtteranceEnded { at_ms: u64, id: String, frames: u32, lost: u32 },
    /// The server holds all `frames` frames of the utterance durably; the
    /// spool has let it go.
    Complete { at_ms: u64, id: String, frames: u32 },
    /// A partial transcript.
    Partial { at_ms: u64, id: String, text: String },
    /// The final transcript.
    Final { at_ms: u64, id: String, text: String },
    /// The server's reply (also sent by push, collapsed by utterance id).
    Reply { at_ms: u64, id: String, title: String, body: String },
    /// Something went wrong; `code` is stable, `message` says what to do.
    Error { at_ms: u64, id: Option<String>, code: String, message: String },
    /// The relay handed the utterance off: upload the file at `path` with an
    /// HTTP `method` request to `url` carrying `headers` (on iOS, a
    /// URLSession background upload task), then call
    /// `RelayCore.upload_finished(id, ok)`.
    UploadTask { at_ms: u64, id: String, path: String, url: String, method: String, headers: Vec<HttpHeader> },
    /// The utterance was dropped by an explicit policy (`stale`, `evicted`, ...).
    Discarded { at_ms: u64, id: String, reason: String },
    /// The relay's counters (see the fields), every few seconds while they change.
    Stats {
        at_ms: u64,
        spool_bytes: u64,
        pending_utterances: u32,
        handed_off: u32,
        lost_frames: u64,
        duplicate_notifications: u64,
        discarded: u64,
    },
    /// The relay stopped: after `shutdown` (`error` is None) or because it
    /// failed (`error` says why and what to do). No event follows this one.
    Stopped { at_ms: u64, error: Option<String> },
}

impl RelayEvent {
    /// Converts a relay event as the host stamped it.
    pub(crate) fn from_stamped(s: Stamped) -> Self {
        let at_ms = s.at_ms;
        match s.event {
            Inner::Connected => Self::Connected { at_ms },
            Inner::Disconnected { reason, retry_in_ms } => Self::Disconnected { at_ms, reason, retry_in_ms },
            Inner::UtteranceStarted { id } => Self::UtteranceStarted { at_ms, id: id.to_string() },
            Inner::UtteranceEnded { id, frames, lost } => {
                Self::UtteranceEnded { at_ms, id: id.to_string(), frames, lost }
            }
            Inner::Complete { id, frames } => Self::Complete { at_ms, id: id.to_string(), frames },
            Inner::Partial { id, text } => Self::Partial { at_ms, id: id.to_string(), text },
            Inner::Final { id, text } => Self::Final { at_ms, id: id.to_string(), text },
            Inner::Reply { id, title, body } => Self::Reply { at_ms, id: id.to_string(), title, body },
            Inner::Error { id, code, message } => Self::Error { at_ms, id: id.map(|id| id.to_string()), code, message },
            Inner::UploadTask { id, path, url, method, headers } => Self::UploadTask {
                at_ms,
                id: id.to_string(),
                path,
                url,
                method,
                headers: headers.into_iter().map(|(name, value)| HttpHeader { name, value }).collect(),
            },
            Inner::Discarded { id, reason } => Self::Discarded { at_ms, id: id.to_string(), reason },
            Inner::Stats(s) => Self::Stats {
                at_ms,
                spool_bytes: s.spool_bytes,
                pending_utterances: s.pending_utterances,
                handed_off: s.handed_off,
                lost_frames: s.lost_frames,
                duplicate_notifications: s.duplicate_notifications,
                discarded: s.discarded,
            },
        }
    }
}

/// Implemented by the app to receive [`RelayEvent`]s.
///
/// Called on the relay's runtime thread, one event at a time, in order.
/// Return quickly: hop to your own queue (`DispatchQueue.main.async`, a
/// Kotlin coroutine channel) for anything slow. Never block here and never
/// call `RelayCore.shutdown` from here. A panic or exception in `on_event` is
/// caught and logged; the relay carries on.
#[uniffi::export(with_foreign)]
pub trait RelayListener: Send + Sync {
    fn on_event(&self, event: RelayEvent);
}
