//! The one exponential backoff every Lanyard part retries with: the relay's
//! reconnects and push registration, the BLE link, the server's push
//! deliveries, the responders' and the remote speech engine's HTTP calls,
//! the simulator's phone.
//!
//! [`Backoff`] is a policy and a pure function of the retry number, so a
//! retry count kept in the store (the server's push queue) works as well as
//! a counter in memory ([`Retries`]). The jitter's randomness is passed in,
//! or drawn from a seeded generator, so the sans-I/O state machines stay
//! deterministic under test.
//!
//! Why not a crate: `backon`, the best kept one, fits its own retry loops;
//! its jitter adds up to the whole delay on top of the capped delay (so its
//! maximum is not one), it has no full or equal jitter, and it counts
//! attempts in an iterator rather than from a stored number.

use std::time::Duration;

/// How the delay is spread, after Marc Brooker's "Exponential Backoff and
/// Jitter".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Exactly the exponential delay: for one client retrying one thing.
    None,
    /// Half fixed, half random, in `[delay / 2, delay]`: a retry never comes
    /// at once, and a fleet still spreads out.
    Equal,
    /// Uniform in `[0, delay]`: the widest spread, for many servers waiting
    /// on one endpoint.
    Full,
}

/// An exponential backoff: retry `n` (from 0) waits up to
/// `base × 2ⁿ`, never more than `max`, spread by `jitter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    pub jitter: Jitter,
}

impl Backoff {
    /// `base`, doubling, capped at `max`, without jitter. A zero `base` is
    /// taken as 1 ms and a `max` under `base` as `base`, so nonsense
    /// settings still give a usable, non-zero backoff.
    pub fn new(base: Duration, max: Duration) -> Self {
        let base = base.max(Duration::from_millis(1));
        Backoff { base, max: max.max(base), jitter: Jitter::None }
    }

    /// The same backoff, spread by `jitter`.
    pub fn with_jitter(self, jitter: Jitter) -> Self {
        Backoff { jitter, ..self }
    }

    /// The longest wait before retry `retry` (from 0): `base × 2^retry`,
    /// capped at `max`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        self.base.saturating_mul(1u32 << retry.min(20)).min(self.max)
    }

    /// The wait before retry `retry`; `random` is any random number (used
    /// only with jitter).
    pub fn delay(&self, retry: u32, random: u64) -> Duration {
        let ceiling = self.ceiling(retry);
        let ms = ceiling.as_millis() as u64;
        match self.jitter {
            Jitter::None => ceiling,
            Jitter::Equal => Duration::from_millis(ms / 2 + random % (ms - ms / 2 + 1)),
            Jitter::Full => Duration::from_millis(random % (ms + 1)),
        }
    }
}

/// A [`Backoff`] with its retry count and a seeded jitter generator: for a
/// loop that retries until it succeeds, then starts over.
#[derive(Debug, Clone)]
pub struct Retries {
    backoff: Backoff,
    retry: u32,
    rng: u64,
}

impl Retries {
    /// `seed` feeds the jitter; pass something random in production and a
    /// constant in tests.
    pub fn new(backoff: Backoff, seed: u64) -> Self {
        Retries { backoff, retry: 0, rng: seed | 1 }
    }

    /// The wait before the next retry; each call counts one more failure.
    pub fn next_delay(&mut self) -> Duration {
        // xorshift64: good enough for jitter, and deterministic under a seed.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let delay = self.backoff.delay(self.retry, self.rng);
        self.retry = self.retry.saturating_add(1);
        delay
    }

    /// How many delays were handed out since the last [`Retries::reset`]:
    /// the failures in a row.
    pub fn failures(&self) -> u32 {
        self.retry
    }

    /// It worked: the next failure starts again from `base`.
    pub fn reset(&mut self) {
        self.retry = 0;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn without_jitter_it_doubles_caps_and_resets() {
        let mut r = Retries::new(Backoff::new(MS(1000), MS(30_000)), 1);
        let waits: Vec<u64> = (0..7).map(|_| r.next_delay().as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(r.failures(), 7);
        r.reset();
        assert_eq!(r.next_delay(), MS(1000));
        // Nonsense settings still give a usable, non-zero backoff.
        let mut z = Retries::new(Backoff::new(Duration::ZERO, Duration::ZERO), 1);
        assert!(z.next_delay() > Duration::ZERO);
    }

    #[test]
    fn a_seed_gives_the_same_jitter_and_another_seed_another() {
        let b = Backoff::new(MS(200), MS(10_000)).with_jitter(Jitter::Equal);
        let run = |seed| {
            let mut r = Retries::new(b, seed);
            (0..8).map(|_| r.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    proptest! {
        #[test]
        fn every_delay_is_within_its_jitters_range(
            base in 0u64..5_000, max in 0u64..120_000, retry in 0u32..64, random: u64,
        ) {
            for jitter in [Jitter::None, Jitter::Equal, Jitter::Full] {
                let b = Backoff::new(MS(base), MS(max)).with_jitter(jitter);
                let ceiling = b.ceiling(retry);
                prop_assert!(ceiling <= b.max && ceiling >= b.base.min(b.max));
                prop_assert!(b.ceiling(retry + 1) >= ceiling, "ceilings never shrink");
                let d = b.delay(retry, random);
                prop_assert!(d <= ceiling);
                match jitter {
                    Jitter::None => prop_assert_eq!(d, ceiling),
                    Jitter::Equal => prop_assert!(d * 2 >= ceiling - MS(1)),
                    Jitter::Full => {}
                }
            }
        }
    }
}
