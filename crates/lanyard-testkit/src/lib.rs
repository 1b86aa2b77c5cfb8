//! What Lanyard's end-to-end tests, the fault campaign (`lanyard-sim`) and the
//! load generator (`lanyard-bench`) share, so that each is written once:
//!
//! - [`Child`]: a child process whose stdout JSON lines arrive as typed
//!   events (the very types the process prints: `lanyard_relay::host::Stamped`,
//!   `lanyard_pendant::sim::SimEvent`, `lanyard_server::ServeEvent`), with
//!   waits that time out; [`forward`] sends several children's events into
//!   one channel, tagged;
//! - [`Lanyard`]: the `lanyard` executable, with [`Lanyard::start_server`]
//!   (`lanyard serve` on `127.0.0.1:0`, and the address it got) and
//!   [`Lanyard::add_device`] (`lanyard device add`); [`start_server`] starts
//!   any prepared `serve` command the same way;
//! - [`model_dir`]: the installed speech model, or a failure that says how
//!   to install it;
//! - [`now_ms`]: the Unix-millisecond clock every printed event uses.
//!
//! Integration tests use real processes on real sockets: nothing here mocks
//! a role. Production crates never depend on this one (the tidy test checks).

mod child;
mod lanyard;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

pub use child::{Child, WaitError, forward};
pub use lanyard::{Lanyard, Server, StartError, start_server};

/// The speech model directory the tests use: `LANYARD_MODEL_DIR`, else where
/// `scripts/setup` installs it ([`lanyard_stt::require_model_dir`]).
/// Missing is a failure, not a skip.
pub fn model_dir() -> PathBuf {
    lanyard_stt::require_model_dir().unwrap_or_else(|e| panic!("{e}"))
}

/// Unix milliseconds: the clock of every `at_ms` the processes print, so a
/// reader's own times compare with theirs.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Waits up to `within` for the next event of `child` (a [`Child`]) that
/// matches the pattern, skipping the others, and evaluates to the expression
/// after `=>`; panics with the pattern's text otherwise. For tests:
///
/// ```ignore
/// let id = expect_event!(relay, secs(30), Stamped { event: RelayEvent::UtteranceStarted { id }, .. } => id);
/// ```
#[macro_export]
macro_rules! expect_event {
    ($child:expr, $within:expr, $pattern:pat => $out:expr) => {
        $child
            .expect(stringify!($pattern), $within, |event| match event {
                $pattern => Some($out),
                #[allow(unreachable_patterns)]
                _ => None,
            })
            .await
    };
}
