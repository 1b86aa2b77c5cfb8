//! Voice activity on the server's side of the stream: where speech stops.
//!
//! [`Endpointer`] runs the `earshot` voice activity detector over an
//! utterance's 16 kHz audio as it arrives, in 16 ms frames, and says when
//! speech went quiet. The server uses it for two things:
//!
//! - **Silence onset** ([`VadEvent::SilenceOnset`]), after
//!   [`EndpointConfig::onset_ms`] of silence following speech: the moment to
//!   decode the utterance speculatively, while the pendant's own end marker
//!   (or the endpoint below) is still on its way. If no speech follows
//!   before the utterance ends, that decode is the final transcript and the
//!   wearer does not wait for a second one.
//! - **Endpoint** ([`VadEvent::Endpoint`]), after
//!   [`EndpointConfig::end_ms`] of silence following speech: the utterance is
//!   over even though the pendant sent no end marker (an Omi-style pendant
//!   streams without markers, and the BLE silence timeout never fires while
//!   it sends silent frames).
//!
//! It is sans-I/O: samples in, events out, positions in samples from the
//! start of the utterance.

use earshot::Detector;

/// Samples per detector frame (16 ms at 16 kHz), fixed by `earshot`.
pub const VAD_FRAME: usize = 256;

/// See [`Endpointer::voiced_now`].
pub const VOICED_NOW_MS: usize = 100;

/// Whether each whole 16 ms frame ([`VAD_FRAME`] samples) of `pcm` holds
/// voice, at earshot's recommended threshold. For decoders that skip
/// silence; a trailing partial frame is not judged.
pub fn voiced_frames(pcm: &[f32]) -> Vec<bool> {
    let mut detector = Detector::default_boxed();
    let threshold = EndpointConfig::default().threshold;
    let mut frame = Vec::with_capacity(VAD_FRAME);
    pcm.chunks_exact(VAD_FRAME)
        .map(|chunk| {
            frame.clear();
            frame.extend(chunk.iter().map(|s| if s.is_finite() { s.clamp(-1.0, 1.0) } else { 0.0 }));
            detector.predict_f32(&frame) >= threshold
        })
        .collect()
}

/// Thresholds of the [`Endpointer`]; `Default` gives the tuned values.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointConfig {
    /// A frame whose voice score is at least this is speech. Default 0.5,
    /// earshot's recommended threshold.
    pub threshold: f32,
    /// Speech must last this long before it counts, so a click or a cough
    /// frame does not start it. Default 48 ms (3 frames).
    pub min_speech_ms: u32,
    /// Silence after speech that triggers [`VadEvent::SilenceOnset`].
    /// Default 240 ms: longer than the gaps between words of ordinary speech,
    /// short enough to start the speculative decode well before a
    /// pendant's end marker, which follows its own hangover.
    pub onset_ms: u32,
    /// Silence after speech that triggers [`VadEvent::Endpoint`]. Default
    /// 800 ms, as common for dictation endpointers: a pause to think
    /// mid-sentence is usually shorter.
    pub end_ms: u32,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self { threshold: 0.5, min_speech_ms: 48, onset_ms: 240, end_ms: 800 }
    }
}

/// What the endpointer saw, with sample positions from the utterance start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VadEvent {
    /// Speech began (for the first time, or again after a silence onset).
    Speech { start: usize },
    /// `onset_ms` of silence followed speech that ended at `speech_end`.
    SilenceOnset { speech_end: usize },
    /// `end_ms` of silence followed speech that ended at `speech_end`.
    Endpoint { speech_end: usize },
}

/// Speech and silence of one utterance's audio, as it arrives.
pub struct Endpointer {
    cfg: EndpointConfig,
    detector: Box<Detector>,
    /// Samples not yet making a whole detector frame.
    pending: Vec<f32>,
    /// Samples consumed into whole frames.
    position: usize,
    /// Consecutive speech frames not yet counted as speech.
    voiced_run: usize,
    /// Where the current run of speech frames began.
    run_start: usize,
    /// Speech has started (and not been followed by an endpoint).
    speaking: bool,
    /// End of the last speech frame, once speech has started.
    speech_end: Option<usize>,
    onset_sent: bool,
    endpoint_sent: bool,
}

impl Endpointer {
    pub fn new(cfg: EndpointConfig) -> Self {
        Self {
            cfg,
            detector: Detector::default_boxed(),
            pending: Vec::with_capacity(VAD_FRAME),
            position: 0,
            voiced_run: 0,
            run_start: 0,
            speaking: false,
            speech_end: None,
            onset_sent: false,
            endpoint_sent: false,
        }
    }

    /// Takes the next samples of the utterance (16 kHz mono, any count) and
    /// returns what they showed, in order.
    pub fn push(&mut self, pcm: &[f32]) -> Vec<VadEvent> {
        let mut events = Vec::new();
        let mut rest = pcm;
        while !rest.is_empty() {
            let take = (VAD_FRAME - self.pending.len()).min(rest.len());
            self.pending.extend(rest[..take].iter().map(|s| if s.is_finite() { s.clamp(-1.0, 1.0) } else { 0.0 }));
            rest = &rest[take..];
            if self.pending.len() == VAD_FRAME {
                let score = self.detector.predict_f32(&self.pending);
                self.pending.clear();
                self.frame(score >= self.cfg.threshold, &mut events);
            }
        }
        events
    }

    fn frame(&mut self, voiced: bool, events: &mut Vec<VadEvent>) {
        let start = self.position;
        self.position += VAD_FRAME;
        let ms = |samples: usize| samples * 1000 / 16_000;
        if voiced {
            if self.voiced_run == 0 {
                self.run_start = start;
            }
            self.voiced_run += 1;
            if ms(self.voiced_run * VAD_FRAME) >= self.cfg.min_speech_ms as usize {
                // New speech, or speech again after a silence onset.
                if !self.speaking || self.onset_sent {
                    events.push(VadEvent::Speech { start: self.run_start });
                }
                self.speaking = true;
                self.onset_sent = false;
                self.endpoint_sent = false;
                self.speech_end = Some(self.position);
            }
            return;
        }
        self.voiced_run = 0;
        let Some(end) = self.speech_end.filter(|_| self.speaking) else { return };
        let silent = ms(self.position - end);
        if !self.onset_sent && silent >= self.cfg.onset_ms as usize {
            self.onset_sent = true;
            events.push(VadEvent::SilenceOnset { speech_end: end });
        }
        if !self.endpoint_sent && silent >= self.cfg.end_ms as usize {
            self.endpoint_sent = true;
            self.speaking = false;
            events.push(VadEvent::Endpoint { speech_end: end });
        }
    }

    /// End of the last speech, in samples from the utterance start; `None`
    /// before any speech.
    pub fn speech_end(&self) -> Option<usize> {
        self.speech_end
    }

    /// Speech is going on: it started, and no silence onset followed yet.
    pub fn in_speech(&self) -> bool {
        self.speaking && !self.onset_sent
    }

    /// The voice is on now: speech is going on and the last [`VOICED_NOW_MS`]
    /// held some of it. A partial draft is worth starting only then: in the
    /// pause that may be the end, it would hold the engine just when the
    /// final needs it.
    pub fn voiced_now(&self) -> bool {
        self.in_speech() && self.speech_end.is_some_and(|end| (self.position - end) * 1000 / 16_000 <= VOICED_NOW_MS)
    }

    /// Samples examined so far (whole frames).
    pub fn position(&self) -> usize {
        self.position
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vowel-like buzz: harmonics of 140 Hz, amplitude-modulated at
    /// syllable rate, which earshot scores as voice.
    fn voiced(ms: usize) -> Vec<f32> {
        (0..ms * 16)
            .map(|i| {
                let t = i as f32 / 16_000.0;
                let syllable = 0.6 + 0.4 * (t * 4.0 * std::f32::consts::TAU).sin();
                (1..=8).map(|h| (t * 140.0 * h as f32 * std::f32::consts::TAU).sin() / h as f32).sum::<f32>()
                    * 0.15
                    * syllable
            })
            .collect()
    }

    fn silence(ms: usize) -> Vec<f32> {
        vec![0.0; ms * 16]
    }

    #[test]
    fn silence_alone_is_not_speech() {
        let mut e = Endpointer::new(EndpointConfig::default());
        assert!(e.push(&silence(3_000)).is_empty());
        assert_eq!(e.speech_end(), None);
    }

    #[test]
    fn any_chunking_gives_the_same_events() {
        let audio: Vec<f32> = [silence(300), voiced(1_000), silence(1_000)].concat();
        let whole = Endpointer::new(EndpointConfig::default()).push(&audio);
        let mut e = Endpointer::new(EndpointConfig::default());
        let chunked: Vec<VadEvent> = audio.chunks(317).flat_map(|c| e.push(c)).collect();
        assert!(whole.iter().any(|e| matches!(e, VadEvent::Endpoint { .. })), "{whole:?}");
        assert_eq!(whole, chunked);
        assert_eq!(e.position(), audio.len() / VAD_FRAME * VAD_FRAME);
    }
}
