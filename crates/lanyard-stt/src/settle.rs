//! When to settle a long utterance while it is still being spoken.
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
}

impl Default for SettlePolicy {
    fn default() -> Self {
        Self { min_unsettled_secs: 8.0, every_secs: 3.0 }
    }
}

impl SettlePolicy {
    /// Whether to queue a settling decode now: `unsettled` samples are not
    /// settled, `total` have been received, and the last settling decode
    /// was queued when `last_tried` had been (0 if none), at `rate` Hz.
    pub fn due(&self, unsettled: usize, total: usize, last_tried: usize, rate: u32) -> bool {
        let samples = |secs: f32| (secs.max(0.0) * rate as f32) as usize;
        unsettled >= samples(self.min_unsettled_secs) && total >= last_tried + samples(self.every_secs)
    }
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
}
