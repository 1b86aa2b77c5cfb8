//! The one error type the FFI raises. Every message says what to do next,
//! because it ends up in an app developer's crash log, far from this code.

use thiserror::Error;

/// Errors from [`crate::RelayCore`]'s methods (Swift `throws`, Kotlin and
/// Python exceptions).
///
/// Flat: the foreign side gets the variant and its message (the `#[error]`
/// text), which is what an app logs or shows; the fields exist to build the
/// message.
#[derive(Debug, Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum RelayError {
    /// A [`crate::RelayConfig`] field is wrong; the message names it.
    #[error("invalid relay config: {message}")]
    InvalidConfig { message: String },
    /// The spool directory cannot be created or locked.
    #[error("cannot use the spool: {message}")]
    Spool { message: String },
    /// Another relay (in this process or another) has the spool open.
    #[error(
        "the spool at {path} is in use by another relay: create one RelayCore per spool directory, and \
         shut the old one down before creating a new one"
    )]
    SpoolInUse { path: String },
    /// The relay's runtime could not be started.
    #[error("cannot start the relay's runtime: {message}; the process may be out of threads or memory")]
    Runtime { message: String },
    /// An argument is malformed; the message says which.
    #[error("invalid argument: {message}")]
    InvalidArgument { message: String },
    /// The relay has stopped (after `shutdown`, or because it failed; the
    /// listener got a `Stopped` event saying why).
    #[error("the relay has stopped: create a new RelayCore to continue (the spool keeps what was not delivered)")]
    Stopped,
    /// `shutdown` was called from the relay's own thread (inside `on_event`),
    /// where waiting for the relay would wait for itself.
    #[error("shutdown called from inside on_event: call it from another thread (e.g. the main thread)")]
    CalledFromRelayThread,
    /// The relay did not finish within the shutdown timeout.
    #[error(
        "the relay did not stop within {timeout_ms} ms; frames already written are safe on disk, and the \
         next RelayCore on this spool recovers the rest"
    )]
    ShutdownTimeout { timeout_ms: u64 },
    /// The relay stopped with an error.
    #[error("the relay failed: {message}")]
    Failed { message: String },
}
