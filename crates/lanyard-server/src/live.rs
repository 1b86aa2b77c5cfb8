//! Streaming transcription: partials while the user speaks, and a final
//! that is often ready when the utterance ends.
//!
//! Every frame a stream makes durable is also fed here, in order
//! ([`Live::feed`]). Per utterance, [`Live`] decodes the audio as it comes,
//! runs the endpointer (`lanyard_stt::Endpointer`) over it, and asks the
//! worker pool (`crate::stt_pool`) for two kinds of decode:
//!
//! - **partials**: each time [`PARTIAL_EVERY`] more audio has come in while
//!   the user speaks, a draft of everything so far. LocalAgreement-2
//!   (`lanyard_stt::LocalAgreement`) keeps only the words two consecutive
//!   drafts agree on, and a partial goes down the device's streams when
//!   that text grows: it never flickers and never takes a word back.
//! - **a speculative final**: when the endpointer hears speech stop
//!   (silence onset), a decode at final quality of the audio so far. If
//!   nothing but silence follows before the utterance ends, the pipeline
//!   takes it as the final transcript ([`Live::take_final`]) instead of
//!   decoding again after the end marker.
//! - **settling** (long utterances, by `lanyard_stt::SettlePolicy`): while the user
//!   speaks, the audio not settled yet is decoded with timestamps, and the
//!   segments that are closed and end well before the audio received so far
//!   are committed for good (`SpeechToText::transcribe_settled`), with the
//!   text before them as the prompt. Their audio is freed. The speculative
//!   final, and partial drafts, then decode only what follows the last
//!   committed segment, so a 3-minute monologue gets its final about as
//!   fast as a 5-second command.
//! - **an endpoint**: when the silence after speech reaches the
//!   endpointer's `end_ms` (800 ms), an `endpoint` message goes to the
//!   device's streams. A relay whose pendant marks no utterance boundaries
//!   (Omi streams continuously) ends the utterance there.
//!
//! Nothing here is durable, and nothing needs to be: the audio is, and the
//! pipeline decodes it in full whenever this state cannot vouch for it (the
//! server restarted mid-utterance, frames arrived by upload, speech resumed
//! after the speculative cut, the decode was dropped or is still too far
//! behind). Partials are best effort under the pool's counted drop policy.
//!
//! # Bounds
//!
//! At most [`MAX_LIVE`] utterances are followed at once, and at most
//! [`MAX_LIVE_PER_DEVICE`] of one device, so that a device opening
//! utterances by the dozen cannot take every slot; more get no partials, no
//! speculation and no endpoint, only their final (the engine could not keep
//! up with more talkers anyway, and decoding every stream would cost the
//! ingest path its CPU). Each refusal is counted
//! (`lanyard_limited_total{limit="live"}`). An utterance keeps at most
//! [`LIVE_MAX_AUDIO`] of audio that is not settled (if settling falls that
//! far behind, partials stop, its samples are freed, its final is decoded
//! in full, and only the endpointer goes on): 30 s of samples is 1.9 MB, so
//! the whole live state stays under about 125 MB. State not fed for
//! [`LIVE_IDLE`] is forgotten, so a stream that never comes back does not
//! hold memory.
//!
//! The words the partials agreed on are not given to the final decode:
//! they come from greedy drafts of the first seconds, which often mishear
//! the first word, and forcing them as its start cost 2.2 points of WER on
//! the `ttfs` bench's reference set. Only settled segments (decoded at final
//! quality) are given, with their times, as the prompt (`SpeechToText::transcribe_after`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lanyard_audio::{FRAME_SAMPLES, FrameDecoder};
use lanyard_proto::ble::Codec;
use lanyard_proto::wire::ServerMsg;
use lanyard_stt::{EndpointConfig, Endpointer, LocalAgreement, Segment, SettlePolicy, Transcript, VadEvent};
use tokio::sync::watch;
use uuid::Uuid;

use crate::hub::Hub;
use crate::metrics::{self, EndpointSent, PartialSent};
use crate::stt_pool::{DraftKind, SttPool};

const RATE: usize = 16_000;

/// New audio between two partial drafts.
pub const PARTIAL_EVERY: Duration = Duration::from_secs(1);

/// Audio not settled yet kept per utterance, at most.
pub const LIVE_MAX_AUDIO: Duration = Duration::from_secs(30);

/// Utterances followed at once.
pub const MAX_LIVE: usize = 64;

/// Utterances of one device followed at once. A wearer speaks one at a
/// time; the second covers an utterance whose end is still in flight when
/// the next one starts.
pub const MAX_LIVE_PER_DEVICE: usize = 2;

/// Endpoints remembered per utterance (see `Utterance::endpoints`): a relay
/// cuts at the first one it hears, so only a marked pendant's long
/// utterance, which no relay cuts, ever has many.
const MAX_MARKS: usize = 16;

/// State not fed for this long is dropped.
pub const LIVE_IDLE: Duration = Duration::from_secs(300);

/// The longest the pipeline waits for the speculative decode it took as the
/// final (running, or promoted to a final): it always ends, with a text or
/// `None`, unless the engine itself hangs, and a second decode of the same
/// audio would only queue behind it. So this is a last resort.
const SPECULATIVE_WAIT: Duration = Duration::from_secs(120);

/// Samples in `d` of audio.
fn secs(d: Duration) -> usize {
    (d.as_secs_f64() * RATE as f64) as usize
}

/// The transcript of a whole utterance from its settled segments and the
/// transcript of the audio after them, which starts at sample `base`.
fn joined(mut settled: Vec<Segment>, tail: Transcript, base: usize) -> Transcript {
    let offset = base as f32 / RATE as f32;
    let audio_secs = offset + tail.audio_secs;
    settled.extend(tail.shifted(offset).segments);
    let compute = 0.0;
    Transcript::from_segments(settled, audio_secs, compute)
}

/// What the live state holds of an utterance's final (see [`Live::take_final`]).
#[derive(Debug)]
pub enum LiveFinal {
    /// The whole final transcript.
    Done(Transcript),
    /// The segments settled while the user spoke, timed from the
    /// utterance's start, and the sample (at 16 kHz) where the audio they do
    /// not cover begins.
    Rest { settled: Vec<Segment>, from: usize },
}

impl LiveFinal {
    /// The final from the transcript of the rest of the audio (from `from`).
    pub fn joined(settled: Vec<Segment>, from: usize, rest: Transcript) -> Transcript {
        joined(settled, rest, from)
    }
}

/// Where an utterance's speculative decode stands.
#[derive(Clone, Debug, PartialEq)]
enum Spec {
    None,
    /// Queued or running, over the first `len` samples.
    Pending {
        len: usize,
    },
    /// Done: the transcript of the first `len` samples.
    Done {
        len: usize,
        transcript: Transcript,
    },
}

struct Utterance {
    device: Uuid,
    decoder: FrameDecoder,
    /// The samples from `base` on (absolute sample `base` is `pcm[0]`):
    /// the audio not settled yet.
    pcm: Vec<f32>,
    /// Samples settled, and freed, before `pcm`.
    base: usize,
    /// The settled segments, timed from the utterance's start.
    settled: Vec<Segment>,
    /// A settling decode is queued or running.
    settle_pending: bool,
    /// Absolute length when the last settling decode was queued.
    settle_tried: usize,
    /// Frames decoded so far; a batch that does not start here breaks the
    /// chain (see `broken`).
    frames: u32,
    /// Frames were missed: nothing here speaks for the utterance any more.
    broken: bool,
    /// Past [`LIVE_MAX_AUDIO`]: the samples are gone and there are no more
    /// partials or speculation, but the endpointer still listens, so that a
    /// marker-less (Omi) stream still gets its endpoint.
    overlong: bool,
    endpointer: Endpointer,
    /// The endpoints sent, newest last (at most [`MAX_MARKS`]): the frame
    /// count each named, and where the speech before it ended (`None` when
    /// speech began again before that frame count). A relay that cuts the
    /// utterance at one (`speech_frames`) is told apart from one that does
    /// not by this, in [`Live::take_final`].
    endpoints: Vec<(u32, Option<usize>)>,
    agreement: LocalAgreement,
    /// Absolute length when the last partial draft was queued.
    drafted: usize,
    draft_pending: bool,
    spec: watch::Sender<Spec>,
    /// The pipeline took the final, or the utterance is gone: no more partials.
    closed: bool,
    fed: Instant,
}

/// The live state of every utterance being streamed.
pub struct Live {
    pool: SttPool,
    hub: Arc<Hub>,
    /// Partials and speculation need a local engine; a remote one would get
    /// a request a second per talker.
    enabled: bool,
    utterances: Mutex<HashMap<Uuid, Arc<Mutex<Utterance>>>>,
}

impl Live {
    pub fn new(pool: SttPool, hub: Arc<Hub>) -> Self {
        let enabled = pool.engine().is_local();
        Self { pool, hub, enabled, utterances: Mutex::new(HashMap::new()) }
    }

    /// Takes frames `first..` of `utterance` that were just made durable.
    /// Cheap when the utterance is not followed; blocking (Opus decoding and
    /// voice activity), so callers on the runtime use `spawn_blocking`.
    ///
    /// Lock order: an utterance's lock may be held while calling into the
    /// pool, which may settle a replaced draft's callback on this thread. A
    /// partial's callback takes the utterance's lock, so a partial is never
    /// replaced (one at a time, `draft_pending`), and pool calls that drop
    /// partials (`cancel`) are made without the lock.
    pub fn feed(&self, device: Uuid, utterance: Uuid, codec: Codec, first: u32, frames: &[Vec<u8>]) {
        if !self.enabled || frames.is_empty() {
            return;
        }
        let Some(entry) = self.entry(device, utterance, codec, first) else { return };
        let mut u = entry.lock().expect("live utterance poisoned");
        u.fed = Instant::now();
        if u.broken || u.closed {
            return;
        }
        if first != u.frames {
            // Frames came by another way (an upload, a connection this
            // server did not see): the decoded audio would have a hole.
            u.broken = true;
            // Not under the lock: a dropped partial's callback takes it.
            drop(u);
            self.pool.cancel(utterance);
            return;
        }
        if !u.overlong && u.pcm.len() + frames.len() * FRAME_SAMPLES > LIVE_MAX_AUDIO.as_secs() as usize * RATE {
            // Too long to keep: the final is decoded in full, and only the
            // endpointer goes on (below), over the frames as they come.
            u.overlong = true;
            u.pcm = Vec::new();
            drop(u);
            self.pool.cancel(utterance);
            u = entry.lock().expect("live utterance poisoned");
        }
        if u.overlong {
            let mut pcm = Vec::with_capacity(frames.len() * FRAME_SAMPLES);
            for f in frames {
                if u.decoder.decode_into(f, &mut pcm).is_err() {
                    u.broken = true;
                    return;
                }
                u.frames += 1;
            }
            for ev in u.endpointer.push(&pcm) {
                if let VadEvent::Endpoint { .. } = ev {
                    self.endpoint(&mut u, utterance, None);
                }
            }
            return;
        }
        let start = u.pcm.len();
        for f in frames {
            let Utterance { decoder, pcm, .. } = &mut *u;
            if decoder.decode_into(f, pcm).is_err() {
                u.broken = true;
                return;
            }
            u.frames += 1;
        }
        let total = u.base + u.pcm.len();
        let events = {
            let Utterance { endpointer, pcm, .. } = &mut *u;
            endpointer.push(&pcm[start..])
        };
        for ev in events {
            match ev {
                VadEvent::SilenceOnset { .. } => {
                    // Decode what is here now, at final quality: the
                    // settled segments and the audio after them.
                    let len = u.endpointer.position().min(total);
                    self.speculate(&entry, &mut u, utterance, len);
                }
                VadEvent::Speech { .. } => {
                    // Speech again: a speculative decode (if any) stays, and
                    // `take_final` checks it against where speech ended. An
                    // endpoint of this same batch names a frame count past
                    // this speech's start: a cut there holds speech.
                    let frames = u.frames;
                    for mark in u.endpoints.iter_mut().filter(|m| m.0 == frames) {
                        mark.1 = None;
                    }
                }
                VadEvent::Endpoint { speech_end } => self.endpoint(&mut u, utterance, Some(speech_end)),
            }
        }
        self.maybe_settle(&entry, &mut u, utterance);
        self.maybe_partial(&entry, &mut u, utterance);
    }

    /// Sends an endpoint at the frames fed so far (for a pendant that marks
    /// no boundaries, Omi: the relay ends the utterance here), and notes it
    /// for a cut there (see [`Live::take_final`]). `speech_end`: where the
    /// speech before it ended, when known.
    fn endpoint(&self, u: &mut Utterance, utterance: Uuid, speech_end: Option<usize>) {
        let frames = u.frames;
        if u.endpoints.len() == MAX_MARKS {
            u.endpoints.remove(0);
        }
        u.endpoints.push((frames, speech_end));
        self.hub.send(u.device, &ServerMsg::Endpoint { utterance, frames });
        metrics::emit(EndpointSent);
    }

    /// Queues the speculative final over the first `len` samples: the
    /// settled segments as they are now, and a decode of the rest with
    /// them as the prompt.
    ///
    /// The decode also settles: `len` is [`EndpointConfig::onset_ms`] into
    /// a pause, so no word crosses it, and every segment of audio that ends
    /// there is as final as a settling decode's. If the utterance is long
    /// enough (`SettlePolicy::settles_speculative`: a short command is
    /// decoded whole) and nothing else settled in the meantime, its
    /// segments are committed and its audio freed. A long utterance spoken
    /// with pauses (most speech) is thus settled at each pause for free,
    /// and `SettlePolicy`'s own decodes are left for long stretches without
    /// one.
    fn speculate(&self, entry: &Arc<Mutex<Utterance>>, u: &mut Utterance, utterance: Uuid, len: usize) {
        u.spec.send_replace(Spec::Pending { len });
        let spec = u.spec.clone();
        let entry = Arc::downgrade(entry);
        let (base, settled) = (u.base, u.settled.clone());
        let tail = u.pcm[..len.saturating_sub(base).min(u.pcm.len())].to_vec();
        self.pool.draft_after(
            utterance,
            DraftKind::Speculative,
            tail,
            settled.clone(),
            Box::new(move |result| {
                let Some(Ok(t)) = result else {
                    spec.send_if_modified(|s| {
                        let mine = *s == (Spec::Pending { len });
                        if mine {
                            *s = Spec::None;
                        }
                        mine
                    });
                    return;
                };
                // Settle first (the lock is not held while the watch is).
                if let Some(entry) = entry.upgrade() {
                    let mut u = entry.lock().expect("live utterance poisoned");
                    let done = len.saturating_sub(base).min(u.pcm.len());
                    let long = SettlePolicy::default().settles_speculative(len, RATE as u32);
                    if !(u.closed || u.broken || u.overlong) && u.base == base && done > 0 && long {
                        let offset = base as f32 / RATE as f32;
                        u.settled.extend(t.segments.iter().cloned().map(|mut s| {
                            s.shift(offset);
                            s
                        }));
                        u.pcm.drain(..done);
                        u.base += done;
                        metrics::emit(metrics::Settled { secs: done as f64 / RATE as f64 });
                    }
                }
                // Only the decode this Pending stands for may settle it.
                spec.send_if_modified(|s| {
                    if *s != (Spec::Pending { len }) {
                        return false;
                    }
                    *s = Spec::Done { len, transcript: joined(settled, t, base) };
                    true
                });
            }),
        );
    }

    /// Settles a long utterance's audio while the user speaks (see the
    /// module doc): one decode at a time, when `SettlePolicy` says so.
    fn maybe_settle(&self, entry: &Arc<Mutex<Utterance>>, u: &mut Utterance, utterance: Uuid) {
        let total = u.base + u.pcm.len();
        let due = SettlePolicy::default().due(u.pcm.len(), total, u.settle_tried, RATE as u32);
        if !due || u.settle_pending {
            return;
        }
        u.settle_tried = total;
        u.settle_pending = true;
        let entry = Arc::downgrade(entry);
        let base = u.base;
        self.pool.draft_after(
            utterance,
            DraftKind::Settle,
            u.pcm.clone(),
            u.settled.clone(),
            Box::new(move |result| {
                let Some(entry) = entry.upgrade() else { return };
                let mut u = entry.lock().expect("live utterance poisoned");
                u.settle_pending = false;
                let Some(Ok(t)) = result else { return };
                if u.closed || u.broken || u.overlong || u.base != base {
                    return;
                }
                let done = ((t.audio_secs * RATE as f32).round() as usize).min(u.pcm.len());
                let offset = base as f32 / RATE as f32;
                u.settled.extend(t.segments.into_iter().map(|mut s| {
                    s.shift(offset);
                    s
                }));
                u.pcm.drain(..done);
                u.base += done;
                metrics::emit(metrics::Settled { secs: done as f64 / RATE as f64 });
            }),
        );
    }

    fn maybe_partial(&self, entry: &Arc<Mutex<Utterance>>, u: &mut Utterance, utterance: Uuid) {
        let len = u.base + u.pcm.len();
        let due = len >= u.drafted + secs(PARTIAL_EVERY);
        // While the voice is on: in a pause the draft would only repeat
        // itself, and if the pause is the end it would hold the engine just
        // when the final needs it (on the ttfs bench, drafts started in
        // pauses cost the final about 0.1 s at p50 and 0.4 s at p95).
        let speaking = u.endpointer.voiced_now();
        if !due || !speaking || u.draft_pending {
            return;
        }
        u.drafted = len;
        u.draft_pending = true;
        let (entry, hub, device) = (Arc::downgrade(entry), self.hub.clone(), u.device);
        self.pool.draft(
            utterance,
            DraftKind::Partial,
            u.pcm.clone(),
            Box::new(move |result| {
                let Some(entry) = entry.upgrade() else { return };
                let mut u = entry.lock().expect("live utterance poisoned");
                u.draft_pending = false;
                let Some(Ok(t)) = result else { return };
                if u.closed {
                    return;
                }
                // The draft is of the unsettled audio; the words settled
                // since it was queued come first either way.
                let settled = lanyard_stt::join_segment_texts(&u.settled);
                let draft = format!("{settled} {}", t.text);
                if let Some(text) = u.agreement.push(draft.trim()) {
                    hub.send(device, &ServerMsg::Partial { utterance, text });
                    metrics::emit(PartialSent);
                }
            }),
        );
    }

    /// The entry for `utterance`, made on its first frame.
    fn entry(&self, device: Uuid, utterance: Uuid, codec: Codec, first: u32) -> Option<Arc<Mutex<Utterance>>> {
        let mut map = self.utterances.lock().expect("live map poisoned");
        if let Some(e) = map.get(&utterance) {
            return Some(e.clone());
        }
        if first != 0 {
            // Joined mid-utterance (a resume after a server restart): the
            // start is on disk, not here.
            return None;
        }
        let now = Instant::now();
        map.retain(|_, e| e.lock().map(|u| now.duration_since(u.fed) < LIVE_IDLE).unwrap_or(false));
        let device_live =
            map.values().filter(|e| e.lock().map(|u| u.device == device && !u.closed).unwrap_or(false)).count();
        if map.len() >= MAX_LIVE || device_live >= MAX_LIVE_PER_DEVICE {
            metrics::emit(metrics::Limited { limit: metrics::Limit::Live });
            return None;
        }
        let decoder = FrameDecoder::new(codec).ok()?;
        let e = Arc::new(Mutex::new(Utterance {
            device,
            decoder,
            pcm: Vec::new(),
            base: 0,
            settled: Vec::new(),
            settle_pending: false,
            settle_tried: 0,
            frames: 0,
            broken: false,
            overlong: false,
            endpointer: Endpointer::new(EndpointConfig::default()),
            endpoints: Vec::new(),
            agreement: LocalAgreement::new(),
            drafted: 0,
            draft_pending: false,
            spec: watch::channel(Spec::None).0,
            closed: false,
            fed: now,
        }));
        map.insert(utterance, e.clone());
        Some(e)
    }

    /// The final transcript of the first `speech` frames of `utterance`,
    /// complete at `frames` frames (`speech < frames` when the relay cut it
    /// at an endpoint; see `Utterance::speech_frames` in the store), as far
    /// as the live state holds it: the speculative decode, if every frame
    /// was seen here and no speech came after the audio it decoded and
    /// before the cut (waiting for one still running); else, if every frame
    /// was seen here and some of the audio before the cut was settled, the
    /// settled segments and where the rest begins, for the pipeline to
    /// decode only that; else `None`, and the pipeline decodes in full.
    /// Forgets the utterance either way.
    pub async fn take_final(&self, utterance: Uuid, frames: u32, speech: u32) -> Option<LiveFinal> {
        let entry = self.utterances.lock().expect("live map poisoned").remove(&utterance)?;
        // Whether the speculative decode (over its first `len` samples) can
        // be the final: every frame came through here, and no speech after
        // its cut.
        let (device, mut spec, pending_useful, rest) = {
            let mut u = entry.lock().expect("live utterance poisoned");
            u.closed = true;
            let complete = !u.broken && !u.overlong && u.frames == frames;
            // Where the speech to transcribe ends: all of it, or, cut at an
            // endpoint, the speech before the endpoint that named the cut
            // (unknown at a cut this server sent no endpoint for).
            let (limit, speech_end) = if speech < frames {
                let mark = u.endpoints.iter().rev().find(|m| m.0 == speech).and_then(|m| m.1);
                (speech as usize * FRAME_SAMPLES, mark)
            } else {
                (usize::MAX, u.endpointer.speech_end())
            };
            let covers = |len: usize| complete && len <= limit && speech_end.is_some_and(|end| end <= len);
            let pending_useful = match &*u.spec.borrow() {
                Spec::Done { len, transcript } if covers(*len) => return Some(LiveFinal::Done(transcript.clone())),
                Spec::Pending { len } => covers(*len),
                _ => false,
            };
            let rest = (complete && u.base > 0 && u.base <= limit)
                .then(|| LiveFinal::Rest { settled: std::mem::take(&mut u.settled), from: u.base });
            (u.device, u.spec.subscribe(), pending_useful, rest)
        };
        if !pending_useful {
            // Partials and a useless speculative decode not started yet go;
            // the pipeline decodes the rest or all (after one already running).
            self.pool.cancel(utterance);
            return rest;
        }
        // Partials not started yet go; the speculative decode, if still
        // queued, becomes this utterance's final request in its device's
        // turn, and is waited for like one already running.
        self.pool.promote(utterance, device);
        let settled =
            tokio::time::timeout(SPECULATIVE_WAIT, spec.wait_for(|s| !matches!(s, Spec::Pending { .. }))).await;
        let Ok(Ok(state)) = settled else { return rest };
        let Spec::Done { transcript, .. } = (*state).clone() else { return rest };
        // A newer onset cannot come any more (the utterance is closed), and
        // this decode's cut was checked above.
        Some(LiveFinal::Done(transcript))
    }
}
