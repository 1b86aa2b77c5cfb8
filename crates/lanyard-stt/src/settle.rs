//! When to settle a long utterance while it is still being spoken.
//!
//! Two kinds of decode settle: a settling decode of the audio received so
//! far, which keeps the segments that end at a pause well before its end;
//! and a speculative decode made when speech stops (a silence onset),
//! whose cut is in a pause already, so that all of it can settle when the
//! speaker goes on. The second settles whatever it decoded, once the
//! utterance is long enough to need it ([`SettlePolicy::speculative_from_secs`]).
//! (Settling a speculative decode only when it decoded 8 s of audio or
//! more, so that each settled piece had more context, was worse on the
//! `longform` bench on every count: the streamed WER went from 6.7 % to
//! 18.6 % on three passages, and TTFS p50 from 0 to 2.3 s, because the
//! longer decodes and this policy's settling decodes then held up the
//! final.)
//!
//! Settling (see `SpeechToText::transcribe_settled`) decodes the audio not
//! settled yet and keeps the segments that can no longer change, so that
//! after the last word only the rest is decoded. Each settling decode costs
//! the engine a window's encode and beam search, so it runs only when there
//! is enough unsettled audio for the final to be slower than a short
//! utterance's, and not more often than every few seconds of new audio. The
//! server's live state and the benchmarks that replay it share this rule.
//!
//! Sans-I/O: sample counts in, a yes or no out.

/// The rule; `Default` gives the tuned values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SettlePolicy {
    /// Unsettled audio, in seconds, from which a settling decode is worth
    /// it. Default 8: below it the final decode is as short as a short
    /// utterance's anyway (a 10 s window encodes in a fifth of a second).
    pub min_unsettled_secs: f32,
    /// New audio, in seconds, between two settling decodes of one
    /// utterance. Default 3: a settle leaves the last segment or two (a few
    /// seconds) unsettled, so settling more often would redo most of its work.
    pub every_secs: f32,
    /// How far into an utterance a speculative decode's cut must be for the
    /// decode to settle. Default 10: a shorter utterance's final fits one
    /// 10 s window (the engine's floor) and is as quick decoded whole, and
    /// a short command is then decoded in one piece, as the `ttfs` bench
    /// measures it.
    pub speculative_from_secs: f32,
}

impl Default for SettlePolicy {
    fn default() -> Self {
        Self { min_unsettled_secs: 8.0, every_secs: 3.0, speculative_from_secs: 10.0 }
    }
}

impl SettlePolicy {
    /// Whether to queue a settling decode now: `unsettled` samples are not
    /// settled, `total` have been received, and the last settling decode
    /// was queued when `last_tried` had been (0 if none), at `rate` Hz.
    pub fn due(&self, unsettled: usize, total: usize, last_tried: usize, rate: u32) -> bool {
        unsettled >= samples(self.min_unsettled_secs, rate) && total >= last_tried + samples(self.every_secs, rate)
    }

    /// Whether a speculative decode whose cut is `cut` samples into the
    /// utterance settles what it decoded (if nothing settled meanwhile).
    pub fn settles_speculative(&self, cut: usize, rate: u32) -> bool {
        cut >= samples(self.speculative_from_secs, rate)
    }
}

fn samples(secs: f32, rate: u32) -> usize {
    (secs.max(0.0) * rate as f32) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settles_long_unsettled_audio_every_few_seconds() {
        let p = SettlePolicy::default();
        let s = |secs: usize| secs * 16_000;
        assert!(!p.due(s(7), s(7), 0, 16_000), "too little unsettled audio");
        assert!(p.due(s(8), s(8), 0, 16_000));
        assert!(!p.due(s(9), s(30), s(28), 16_000), "tried 2 s ago");
        assert!(p.due(s(9), s(31), s(28), 16_000));
    }

    #[test]
    fn a_speculative_decode_settles_only_a_long_utterance() {
        let p = SettlePolicy::default();
        assert!(!p.settles_speculative(9 * 16_000, 16_000), "a short command is decoded whole");
        assert!(p.settles_speculative(10 * 16_000, 16_000));
    }
}
