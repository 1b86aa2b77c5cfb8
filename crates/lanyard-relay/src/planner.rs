//! The background-budget planner: a pure function of the state, the clock
//! and the deadline.
//!
//! # Why
//!
//! iOS wakes a backgrounded app for BLE data and gives it seconds; it may
//! suspend the app at any moment after that, and a suspended app cannot
//! network at all. Only a URLSession *background* upload, run by the system
//! on the app's behalf, keeps going; it carries HTTP only, from files. So by
//! the deadline, minus a safety margin, every finished utterance must be in
//! one of three states:
//!
//! 1. **acknowledged** by the server (streamed in time);
//! 2. **handed off**: sealed into a file and given back to the app as an
//!    upload task for its background session;
//! 3. **discarded** by the TTL policy, counted, with the reason.
//!
//! # Rules
//!
//! [`plan`] decides for each finished utterance that is not yet handed off:
//!
//! - older than [`PlannerConfig::ttl_ms`] since it started: **discard** as
//!   stale, in any lifecycle state. A reply to speech that old is no longer a
//!   reply; this is the explicit, counted policy for stale real-time events.
//! - in the foreground: **stream**. There is no deadline.
//! - the system is about to suspend the app: **hand off** everything.
//! - in the background with no network: **hand off**; the background
//!   session waits for the network on its own.
//! - in the background otherwise: walk the utterances oldest first and add up
//!   the time each needs to stream at the measured throughput (plus a
//!   connection set-up when not connected). Those that finish within the
//!   budget (deadline - margin - now) **stream**; the rest **hand off** now,
//!   while there is still time to seal the file.
//!
//! The host re-plans on every tick, so a link that slows down moves the
//! remaining utterances to hand-off as the budget shrinks. An utterance still
//! being spoken is not planned; on `WillSuspend` the host ends it first.

use uuid::Uuid;

/// Where the app is in its lifecycle, as the host app reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// In the foreground: no deadline.
    Foreground,
    /// In the background, with `remaining_ms` of execution time left when
    /// reported (`UIApplication.backgroundTimeRemaining`).
    Background { remaining_ms: u64 },
    /// The system is about to suspend the app: act now.
    WillSuspend,
}

/// The default [`PlannerConfig::ttl_ms`]: an hour-old utterance's reply
/// would only confuse.
pub const DEFAULT_TTL_MS: u64 = 60 * 60 * 1000;

/// Tunables of the planner.
#[derive(Debug, Clone)]
pub struct PlannerConfig {
    /// Time kept back before the deadline for sealing files and handing them
    /// to the system. Sealing a minute of Opus takes milliseconds; one second
    /// also covers a busy CPU and iOS's own margin.
    pub safety_margin_ms: u64,
    /// Utterances older than this are discarded as stale; [`DEFAULT_TTL_MS`]
    /// by default.
    pub ttl_ms: u64,
    /// Throughput assumed before any has been measured: 4 kB/s is the audio's
    /// own rate (32 kb/s), i.e. a link that just keeps up.
    pub default_throughput_bps: f64,
    /// Connecting and re-opening utterances costs a few round trips.
    pub connect_ms: u64,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        Self { safety_margin_ms: 1_000, ttl_ms: DEFAULT_TTL_MS, default_throughput_bps: 4_000.0, connect_ms: 600 }
    }
}

/// One finished utterance, as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct UttView {
    pub id: Uuid,
    /// When the utterance started, Unix ms.
    pub started_ms: u64,
    /// Bytes the server has not acknowledged yet.
    pub unacked_bytes: u64,
}

/// The state the planner decides from.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    pub now_ms: u64,
    /// `None` in the foreground.
    pub deadline_ms: Option<u64>,
    pub suspending: bool,
    pub network_up: bool,
    pub connected: bool,
    /// Measured upload throughput in bytes per second, if any.
    pub throughput_bps: Option<f64>,
    /// Finished utterances not yet acknowledged, handed off or discarded,
    /// oldest first.
    pub utterances: &'a [UttView],
}

/// Why an utterance was discarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscardReason {
    /// Older than the TTL.
    Stale { age_ms: u64 },
}

impl std::fmt::Display for DiscardReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiscardReason::Stale { age_ms } => write!(f, "stale: {} s old, past the TTL", age_ms / 1000),
        }
    }
}

/// What to do with one utterance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Stream,
    HandOff,
    Discard(DiscardReason),
}

/// Decides for every utterance in `input`, in the same order. See the module doc.
pub fn plan(cfg: &PlannerConfig, input: &PlanInput<'_>) -> Vec<(Uuid, Decision)> {
    let mut out = Vec::with_capacity(input.utterances.len());
    let throughput = input.throughput_bps.filter(|t| *t > 0.0).unwrap_or(cfg.default_throughput_bps);
    // The budget left for streaming, in ms; None means unlimited.
    let budget = input.deadline_ms.map(|d| d.saturating_sub(cfg.safety_margin_ms).saturating_sub(input.now_ms));
    let mut needed = if input.connected { 0.0 } else { cfg.connect_ms as f64 };
    for u in input.utterances {
        let age = input.now_ms.saturating_sub(u.started_ms);
        let decision = if age > cfg.ttl_ms {
            Decision::Discard(DiscardReason::Stale { age_ms: age })
        } else if input.suspending {
            Decision::HandOff
        } else {
            match budget {
                None => Decision::Stream,
                Some(_) if !input.network_up => Decision::HandOff,
                Some(budget) => {
                    needed += u.unacked_bytes as f64 * 1000.0 / throughput;
                    if needed <= budget as f64 { Decision::Stream } else { Decision::HandOff }
                }
            }
        };
        out.push((u.id, decision));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utt(n: u128, started_ms: u64, unacked_bytes: u64) -> UttView {
        UttView { id: Uuid::from_u128(n), started_ms, unacked_bytes }
    }

    fn input(utts: &[UttView]) -> PlanInput<'_> {
        PlanInput {
            now_ms: 100_000,
            deadline_ms: Some(110_000),
            suspending: false,
            network_up: true,
            connected: true,
            throughput_bps: Some(10_000.0),
            utterances: utts,
        }
    }

    fn decisions(cfg: &PlannerConfig, i: &PlanInput<'_>) -> Vec<Decision> {
        plan(cfg, i).into_iter().map(|(_, d)| d).collect()
    }

    #[test]
    fn streams_what_fits_oldest_first_and_hands_off_the_rest() {
        let cfg = PlannerConfig::default();
        // Budget 9 s at 10 kB/s: 90 kB. 40 + 40 fit, the third does not.
        let u = [utt(1, 99_000, 40_000), utt(2, 99_000, 40_000), utt(3, 99_000, 40_000)];
        assert_eq!(decisions(&cfg, &input(&u)), vec![Decision::Stream, Decision::Stream, Decision::HandOff]);
    }

    #[test]
    fn foreground_streams_and_suspension_hands_off() {
        let cfg = PlannerConfig::default();
        let u = [utt(1, 99_000, 1_000_000)];
        let mut i = input(&u);
        i.deadline_ms = None;
        assert_eq!(decisions(&cfg, &i), vec![Decision::Stream]);
        i.suspending = true;
        assert_eq!(decisions(&cfg, &i), vec![Decision::HandOff]);
    }

    #[test]
    fn no_network_in_the_background_hands_off() {
        let cfg = PlannerConfig::default();
        let u = [utt(1, 99_000, 10)];
        let mut i = input(&u);
        i.network_up = false;
        assert_eq!(decisions(&cfg, &i), vec![Decision::HandOff]);
        i.deadline_ms = None;
        assert_eq!(decisions(&cfg, &i), vec![Decision::Stream], "the foreground waits for the network");
    }

    #[test]
    fn stale_utterances_are_discarded_with_their_age() {
        let cfg = PlannerConfig { ttl_ms: 5_000, ..PlannerConfig::default() };
        let u = [utt(1, 90_000, 10), utt(2, 99_000, 10)];
        let d = decisions(&cfg, &input(&u));
        assert_eq!(d[0], Decision::Discard(DiscardReason::Stale { age_ms: 10_000 }));
        assert_eq!(d[1], Decision::Stream);
        assert_eq!(DiscardReason::Stale { age_ms: 10_000 }.to_string(), "stale: 10 s old, past the TTL");
    }

    #[test]
    fn a_past_deadline_hands_everything_off() {
        let cfg = PlannerConfig::default();
        let u = [utt(1, 99_000, 1)];
        let mut i = input(&u);
        i.now_ms = 109_500;
        assert_eq!(decisions(&cfg, &i), vec![Decision::HandOff]);
    }
}
