//! Wall-clock time for the providers, behind a trait so tests can move it.
//!
//! Credentials are refreshed by age (an APNs provider token at 50 minutes,
//! an FCM access token shortly before it expires) and APNs expirations are
//! absolute UNIX times, so the providers read a wall clock. Tests hand them a
//! [`ManualClock`] and advance it by hours in microseconds.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;

    /// Seconds since the UNIX epoch (0 for a clock set before 1970).
    fn unix_secs(&self) -> u64 {
        self.now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }
}

/// The system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told; for tests.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<SystemTime>,
}

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: SystemTime) -> Self {
        Self { now: Mutex::new(start) }
    }

    /// A clock reading the system time now, whole seconds (JWT times are in
    /// seconds, so a test that reasons about ages wants no fraction).
    pub fn starting_now() -> Self {
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        Self::new(UNIX_EPOCH + Duration::from_secs(secs))
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap();
        *now += by;
    }

    pub fn set(&self, to: SystemTime) {
        *self.now.lock().unwrap() = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.lock().unwrap()
    }
}

/// How long ago `then` was, by `clock`; zero if `then` is in the future
/// (the clock was set back), rather than a panic.
pub(crate) fn age(clock: &dyn Clock, then: SystemTime) -> Duration {
    clock.now().duration_since(then).unwrap_or(Duration::ZERO)
}
