//! Per-device limits: rates (token buckets) and simultaneous streams.
//!
//! Every limit is per device, because a device's token is what the server
//! can hold to account; a device cannot starve another by sending more. The
//! numbers are in [`LimitsSection`] (`[limits]` in the config file) and the
//! answers in docs/protocol.md:
//!
//! | limit                          | default            | answer                        |
//! |--------------------------------|--------------------|-------------------------------|
//! | audio frames, all streams      | 1500/s, burst 6000 | close 4004 `RATE_LIMITED`     |
//! | uploads and text posts         | 10/s, burst 60     | HTTP 429 `rate_limited`       |
//! | frames in uploads              | 1500/s, burst 30000| HTTP 429 `rate_limited`       |
//! | simultaneous streams           | 4                  | HTTP 429 `too_many_streams`   |
//! | utterance opens on streams     | 2/s, burst 60      | close 4004 `RATE_LIMITED`     |
//! | utterances left unfinished     | 32                 | close 4004 `RATE_LIMITED`     |
//! | simultaneous transcriptions    | 2                  | HTTP 429 `too_many_requests`  |
//! | simultaneous uploads           | 2                  | HTTP 429 `too_many_uploads`   |
//! | live transcription slots       | 2 (of 64)          | the final only, no partials   |
//! | silence on a stream            | 60 s               | close 4005 `IDLE_TIMEOUT`     |
//! | responder calls                | 1/s, burst 20      | the reply waits its turn      |
//!
//! [`TokenBucket`] decides with the time passed in, so it is tested with a
//! simulated clock; [`Limiter`] holds the buckets and stream counts of every
//! device and reads the clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::config::LimitsSection;
use crate::error::ApiError;
use crate::metrics::{self, Limit, Limited};

/// A token bucket: `rate` tokens a second, up to `burst` saved. A request
/// takes one token or is refused. Sans-I/O: the caller passes the time.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`: a device starts with its whole burst.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Self { rate, burst, tokens: burst, last: now }
    }

    /// Takes one token if there is one. A clock that goes backwards (it
    /// cannot with `Instant`, but callers may pass any) refills nothing.
    pub fn take(&mut self, now: Instant) -> bool {
        self.take_n(1.0, now)
    }

    /// Takes `n` tokens at once if there are that many, else none.
    pub fn take_n(&mut self, n: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = self.last.max(now);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// How long from `now` until a token is there, without taking one:
    /// zero if one is there now.
    pub fn until_one(&self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        let tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        Duration::from_secs_f64(((1.0 - tokens) / self.rate).max(0.0))
    }

    /// How long until the next token: the `Retry-After` of a refusal.
    pub fn wait(&self) -> Duration {
        self.wait_for(1.0)
    }

    /// How long until there are `n` tokens (never, past the burst: the
    /// caller keeps `n` within it).
    pub fn wait_for(&self, n: f64) -> Duration {
        Duration::from_secs_f64(((n.min(self.burst) - self.tokens) / self.rate).max(0.0))
    }
}

/// The limits of every device, shared by all requests of one server.
pub struct Limiter {
    pub cfg: LimitsSection,
    frames: Mutex<HashMap<Uuid, Arc<Mutex<TokenBucket>>>>,
    requests: Mutex<HashMap<Uuid, TokenBucket>>,
    opens: Mutex<HashMap<Uuid, TokenBucket>>,
    uploaded: Mutex<HashMap<Uuid, TokenBucket>>,
    /// Tokens (by hash) of devices refused a stream for their opens, until
    /// when: a reconnect loop is answered from here, with no store lookup.
    refused: Mutex<HashMap<[u8; 32], Instant>>,
    /// Refusals of those tokens held open right now ([`Limiter::hold_refusal`]).
    held: Arc<Mutex<HashMap<[u8; 32], usize>>>,
    /// Open streams per device, counted from before the upgrade to the end
    /// of the connection by [`Slot`].
    streams: Arc<Mutex<HashMap<Uuid, usize>>>,
    /// Uploads in progress per device (`MAX_UPLOADS_PER_DEVICE`).
    uploads: Arc<Mutex<HashMap<Uuid, usize>>>,
    /// `/v1/audio/transcriptions` requests in progress per device, counted
    /// from before the body is read to the answer.
    transcriptions: Arc<Mutex<HashMap<Uuid, usize>>>,
}

/// Refused stream requests of one token held open at once
/// ([`Limiter::hold_refusal`]); more are answered at once, so that a
/// client cannot use the tarpit to hold many connections.
pub const HELD_REFUSALS_PER_TOKEN: usize = 2;

/// The longest a refused stream request is held before its 429.
pub const MAX_REFUSAL_HOLD: Duration = Duration::from_secs(1);

/// Buckets idle this long are full again, so dropping them changes nothing.
/// Pruning keeps the maps from growing with every device ever seen.
pub(crate) fn prune(buckets: &mut HashMap<Uuid, TokenBucket>, now: Instant, cfg_burst: f64, rate: f64) {
    if buckets.len() > 1024 {
        let full_after = Duration::from_secs_f64(cfg_burst / rate);
        buckets.retain(|_, b| now.saturating_duration_since(b.last) < full_after);
    }
}

impl Limiter {
    pub fn new(cfg: LimitsSection) -> Self {
        Self {
            cfg,
            frames: Mutex::new(HashMap::new()),
            requests: Mutex::new(HashMap::new()),
            opens: Mutex::new(HashMap::new()),
            uploaded: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
            held: Arc::new(Mutex::new(HashMap::new())),
            streams: Arc::new(Mutex::new(HashMap::new())),
            transcriptions: Arc::new(Mutex::new(HashMap::new())),
            uploads: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The device's frame bucket, shared by all its streams. A stream keeps
    /// it for its lifetime, so the hot path locks only this bucket.
    pub fn frame_bucket(&self, device: Uuid) -> Arc<Mutex<TokenBucket>> {
        let mut map = self.frames.lock().expect("limiter poisoned");
        if map.len() > 1024 {
            // Buckets no stream holds any more.
            map.retain(|_, b| Arc::strong_count(b) > 1);
        }
        map.entry(device)
            .or_insert_with(|| {
                Arc::new(Mutex::new(TokenBucket::new(self.cfg.frames_per_sec, self.cfg.frame_burst, Instant::now())))
            })
            .clone()
    }

    /// Takes one request token of the device; `Err` says how long to wait.
    pub fn request(&self, device: Uuid) -> Result<(), Duration> {
        take(&self.requests, device, self.cfg.requests_per_sec, self.cfg.request_burst, 1.0)
    }

    /// The 429 of a stream refused because its device has no opens left.
    pub(crate) fn opens_refusal(&self, wait: Duration) -> ApiError {
        metrics::emit(Limited { limit: Limit::Opens });
        ApiError::TooManyRequests {
            code: "rate_limited",
            message: format!(
                "this device opened more than {} utterances a second; reconnect after the Retry-After header's seconds",
                self.cfg.opens_per_sec
            ),
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        }
    }

    /// Takes one of the device's request tokens (an upload, a text post, a
    /// transcription), or answers 429 and counts it.
    pub(crate) fn take_request(&self, device: Uuid) -> Result<(), ApiError> {
        self.request(device).map_err(|wait| {
            metrics::emit(Limited { limit: Limit::Requests });
            ApiError::TooManyRequests {
                code: "rate_limited",
                message: format!(
                    "more than {} uploads, text posts and transcriptions a second (burst {}); retry after the Retry-After header's seconds",
                    self.cfg.requests_per_sec, self.cfg.request_burst
                ),
                retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
            }
        })
    }

    /// Takes one of the device's utterance-open tokens (`open` on a stream);
    /// `Err` says how long to wait.
    pub fn open(&self, device: Uuid) -> Result<(), Duration> {
        take(&self.opens, device, self.cfg.opens_per_sec, self.cfg.open_burst, 1.0)
    }

    /// Spends `frames` of the device's upload frame budget, or says how
    /// long to wait. Uploaded audio is paced like streamed audio
    /// (`frames_per_sec`), in a bucket of its own so that a background
    /// upload never closes the stream, and deep enough for one whole
    /// utterance (`MAX_UTTERANCE_FRAMES`) at once.
    pub fn upload_frames(&self, device: Uuid, frames: u32) -> Result<(), Duration> {
        let burst = self.cfg.frame_burst.max(f64::from(lanyard_proto::wire::limits::MAX_UTTERANCE_FRAMES));
        take(&self.uploaded, device, self.cfg.frames_per_sec, burst, f64::from(frames))
    }

    /// How long until the device may open an utterance again; zero when it
    /// may now. Takes nothing: a stream asks before its upgrade, so that a
    /// device that spent its opens cannot reconnect in a loop for free.
    pub fn open_wait(&self, device: Uuid) -> Duration {
        let map = self.opens.lock().expect("limiter poisoned");
        map.get(&device).map_or(Duration::ZERO, |b| b.until_one(Instant::now()))
    }

    /// Remembers that the token's device may not open a stream for `wait`.
    pub fn refuse_token(&self, token_hash: [u8; 32], wait: Duration) {
        let now = Instant::now();
        let mut map = self.refused.lock().expect("limiter poisoned");
        if map.len() > 1024 {
            map.retain(|_, until| *until > now);
        }
        map.insert(token_hash, now + wait);
    }

    /// How long the token is still refused a stream, if it is.
    pub fn token_refused(&self, token_hash: &[u8; 32]) -> Option<Duration> {
        let until = *self.refused.lock().expect("limiter poisoned").get(token_hash)?;
        until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())
    }

    /// A turn to hold a refused stream request open until its device may
    /// open again (a tarpit), or `None` when [`HELD_REFUSALS_PER_TOKEN`]
    /// of the token's are held already (then it is answered at once). A
    /// client that reconnects the moment it reads its 429 then loops at
    /// the opens rate, not as fast as the machine allows: on the `flood`
    /// bench, 38,660 refused reconnects in 62 s moved another device's
    /// reply p95 by 1.32x.
    pub fn hold_refusal(&self, token_hash: [u8; 32]) -> Option<Slot<[u8; 32]>> {
        Slot::take(&self.held, token_hash, HELD_REFUSALS_PER_TOKEN)
    }

    /// Reserves one of the device's stream slots, or `None` if all are taken.
    pub fn stream_slot(&self, device: Uuid) -> Option<Slot> {
        Slot::take(&self.streams, device, self.cfg.streams_per_device)
    }

    /// Reserves one of the device's `/v1/audio/transcriptions` slots, or
    /// `None` if all are taken: a request holds up to 25 MiB of body and
    /// its decoded audio until it is answered, so a device may not hold
    /// more than a few at once, whatever its request rate allows.
    pub fn transcription_slot(&self, device: Uuid) -> Option<Slot> {
        Slot::take(&self.transcriptions, device, self.cfg.transcriptions_per_device)
    }

    /// Reserves one of the device's upload slots (at most
    /// `MAX_UPLOADS_PER_DEVICE` bodies in memory at once), or answers 429
    /// `too_many_uploads` and counts it.
    pub(crate) fn upload_slot(&self, device: Uuid) -> Result<Slot, ApiError> {
        let cap = lanyard_proto::wire::limits::MAX_UPLOADS_PER_DEVICE;
        Slot::take(&self.uploads, device, cap).ok_or_else(|| {
            metrics::emit(Limited { limit: Limit::Requests });
            ApiError::TooManyRequests {
                code: "too_many_uploads",
                message: format!("this device has {cap} uploads in progress, its maximum; retry once one has finished"),
                retry_after_secs: 1,
            }
        })
    }
}

/// Takes `n` tokens of the device's bucket in `map`, or says how long
/// until there are that many.
fn take(map: &Mutex<HashMap<Uuid, TokenBucket>>, device: Uuid, rate: f64, burst: f64, n: f64) -> Result<(), Duration> {
    let now = Instant::now();
    let mut map = map.lock().expect("limiter poisoned");
    prune(&mut map, now, burst, rate);
    let bucket = map.entry(device).or_insert_with(|| TokenBucket::new(rate, burst, now));
    if bucket.take_n(n, now) { Ok(()) } else { Err(bucket.wait_for(n)) }
}

/// One of a device's slots of some kind (a stream, a transcription), or of
/// a token's (a held refusal); dropping it frees the slot, however the work
/// ended.
pub struct Slot<K: Eq + std::hash::Hash + Copy = Uuid> {
    key: K,
    held: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K: Eq + std::hash::Hash + Copy> Slot<K> {
    fn take(held: &Arc<Mutex<HashMap<K, usize>>>, key: K, cap: usize) -> Option<Self> {
        let mut map = held.lock().expect("limiter poisoned");
        let n = map.entry(key).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(Slot { key, held: held.clone() })
    }
}

impl<K: Eq + std::hash::Hash + Copy> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut map = self.held.lock().expect("limiter poisoned");
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_holds_at_most_two_refusals_at_once() {
        let limiter = Limiter::new(LimitsSection::default());
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let first = limiter.hold_refusal(a).expect("one");
        let _second = limiter.hold_refusal(a).expect("two");
        assert!(limiter.hold_refusal(a).is_none(), "a third is answered at once");
        assert!(limiter.hold_refusal(b).is_some(), "another token has turns of its own");
        drop(first);
        assert!(limiter.hold_refusal(a).is_some(), "a turn comes back when its refusal is answered");
    }

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(200.0, 500.0, t0);
        assert_eq!((0..600).filter(|_| b.take(t0)).count(), 500, "the burst, at once");
        assert!(!b.take(t0));
        assert!(b.wait() > Duration::ZERO && b.wait() <= Duration::from_millis(5));
        // One second later: 200 more, not 201.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..300).filter(|_| b.take(t1)).count(), 200);
        // Real-time audio (50 frames/s) for a minute never runs dry.
        let mut b = TokenBucket::new(200.0, 500.0, t0);
        for i in 0..3000u64 {
            assert!(b.take(t0 + Duration::from_millis(20 * i)), "frame {i}");
        }
        // 4x real time is the sustained limit; 5x runs out after the burst.
        let mut b = TokenBucket::new(200.0, 500.0, t0);
        let refused = (0..5000u64).filter(|i| !b.take(t0 + Duration::from_micros(4000 * i))).count();
        assert!(refused > 0 && refused < 1000, "{refused}");
        // Idle time refills only up to the burst.
        let mut b = TokenBucket::new(200.0, 500.0, t0);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..1000).filter(|_| b.take(later)).count(), 500);
    }

    #[test]
    fn stream_slots_are_counted_and_freed() {
        let limiter = Limiter::new(LimitsSection { streams_per_device: 2, ..Default::default() });
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let s1 = limiter.stream_slot(a).unwrap();
        let _s2 = limiter.stream_slot(a).unwrap();
        assert!(limiter.stream_slot(a).is_none());
        assert!(limiter.stream_slot(b).is_some(), "another device has its own slots");
        drop(s1);
        assert!(limiter.stream_slot(a).is_some());
        // Transcription slots are counted apart from streams.
        let limiter = Limiter::new(LimitsSection { transcriptions_per_device: 1, ..Default::default() });
        let _stream = limiter.stream_slot(a).unwrap();
        let t = limiter.transcription_slot(a).unwrap();
        assert!(limiter.transcription_slot(a).is_none());
        assert!(limiter.transcription_slot(b).is_some());
        drop(t);
        assert!(limiter.transcription_slot(a).is_some());
    }

    #[test]
    fn uploads_spend_frames_at_the_stream_rate_a_whole_utterance_at_a_time() {
        let limiter = Limiter::new(LimitsSection { frames_per_sec: 1000.0, frame_burst: 10.0, ..Default::default() });
        let a = Uuid::now_v7();
        // A whole 10-minute utterance fits the bucket, whatever the stream's burst.
        assert!(limiter.upload_frames(a, 30_000).is_ok());
        let wait = limiter.upload_frames(a, 3_000).unwrap_err();
        assert!(wait > Duration::from_millis(2_900) && wait <= Duration::from_secs(3), "{wait:?}");
        assert!(limiter.upload_frames(Uuid::now_v7(), 30_000).is_ok(), "another device has its own");
        // The stream's bucket is another one.
        assert!(limiter.frame_bucket(a).lock().unwrap().take(Instant::now()));
    }

    #[test]
    fn opens_have_their_own_bucket() {
        let limiter = Limiter::new(LimitsSection { opens_per_sec: 1.0, open_burst: 3.0, ..Default::default() });
        let a = Uuid::now_v7();
        assert!((0..3).all(|_| limiter.open(a).is_ok()));
        let wait = limiter.open(a).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(limiter.request(a).is_ok(), "requests are another budget");
        assert!(limiter.open(Uuid::now_v7()).is_ok(), "another device has its own");
        // Asking takes nothing.
        let wait = limiter.open_wait(a);
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        assert_eq!(limiter.open_wait(Uuid::now_v7()), Duration::ZERO);
        let b = Uuid::now_v7();
        assert!(limiter.open(b).is_ok());
        assert_eq!(limiter.open_wait(b), Duration::ZERO, "two tokens left");
    }
}
