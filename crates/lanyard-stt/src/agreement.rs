//! LocalAgreement-2: partial transcripts that only ever grow.
//!
//! While an utterance is being spoken the server re-transcribes the audio
//! received so far about once a second. Each hypothesis covers the whole
//! utterance, and its last words change as more audio arrives ("call my
//! sis" becomes "call my sister"). Sending every hypothesis would make the
//! phone's text flicker. LocalAgreement-n (Macháček et al., *Turning Whisper
//! into Real-Time Transcription System*, 2023) commits a word only once `n`
//! consecutive hypotheses agree on it; with n = 2, the committed text is the
//! longest common prefix of the last two hypotheses.
//!
//! [`LocalAgreement`] adds two rules for a partial that the phone shows:
//!
//! - **Monotonic.** What was committed is never taken back. A later
//!   hypothesis that disagrees with a committed word commits nothing more
//!   until two hypotheses agree with the committed text again; the final
//!   transcript, which comes from one decode of the whole utterance, is what
//!   settles such a disagreement.
//! - **Words compare loosely.** Case and punctuation do not count ("Call"
//!   and "call," agree), because Whisper moves a comma or a capital as the
//!   sentence grows; the committed text keeps the spelling of the newer
//!   hypothesis.
//!
//! It is sans-I/O and knows nothing of Whisper: it takes texts and returns
//! texts.

/// Commits the words two consecutive hypotheses agree on.
#[derive(Debug, Default, Clone)]
pub struct LocalAgreement {
    /// Words committed so far, as displayed.
    committed: Vec<String>,
    /// The previous hypothesis, word by word.
    previous: Option<Vec<String>>,
}

impl LocalAgreement {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the newest hypothesis of the whole utterance and returns the
    /// committed text if this hypothesis made it grow, `None` otherwise.
    pub fn push(&mut self, hypothesis: &str) -> Option<String> {
        let words: Vec<String> = hypothesis.split_whitespace().map(str::to_owned).collect();
        let grew = match &self.previous {
            Some(previous) if agrees(&self.committed, &words) && agrees(&self.committed, previous) => {
                let start = self.committed.len();
                let common = words[start..].iter().zip(&previous[start..]).take_while(|(a, b)| same_word(a, b)).count();
                self.committed.extend(words[start..start + common].iter().cloned());
                common > 0
            }
            _ => false,
        };
        self.previous = Some(words);
        grew.then(|| self.text())
    }

    /// The committed text, words joined by single spaces.
    pub fn text(&self) -> String {
        self.committed.join(" ")
    }

    /// How many words are committed.
    pub fn len(&self) -> usize {
        self.committed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.committed.is_empty()
    }
}

/// `words` starts with `committed`, word for word (loosely).
fn agrees(committed: &[String], words: &[String]) -> bool {
    words.len() >= committed.len() && committed.iter().zip(words).all(|(a, b)| same_word(a, b))
}

/// Equal ignoring case and anything that is not a letter or digit.
fn same_word(a: &str, b: &str) -> bool {
    let key = |w: &str| w.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect::<String>();
    key(a) == key(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commits_what_two_hypotheses_share() {
        let mut la = LocalAgreement::new();
        assert_eq!(la.push("Remind me to call my sis"), None, "one hypothesis commits nothing");
        assert_eq!(la.push("Remind me to call my sister tomorrow").as_deref(), Some("Remind me to call my"));
        assert_eq!(
            la.push("Remind me to call my sister tomorrow morning.").as_deref(),
            Some("Remind me to call my sister tomorrow")
        );
        assert_eq!(
            la.push("Remind me to call my sister tomorrow morning."),
            Some("Remind me to call my sister tomorrow morning.".into())
        );
        assert_eq!(la.push("Remind me to call my sister tomorrow morning."), None, "nothing new");
    }

    #[test]
    fn case_and_punctuation_do_not_break_agreement() {
        let mut la = LocalAgreement::new();
        la.push("what is on my calendar");
        assert_eq!(la.push("What is on my calendar, this").as_deref(), Some("What is on my calendar,"));
    }

    #[test]
    fn a_disagreeing_hypothesis_takes_nothing_back() {
        let mut la = LocalAgreement::new();
        la.push("turn on the light");
        assert_eq!(la.push("turn on the lights in").as_deref(), Some("turn on the"));
        // The model changes its mind about a committed word: nothing is
        // retracted, and nothing more is committed from the disagreeing one.
        assert_eq!(la.push("turn off the lights in the kitchen"), None);
        assert_eq!(la.text(), "turn on the");
        // Two hypotheses that agree with the committed text again move it on.
        la.push("turn on the lights in the kitchen");
        assert_eq!(
            la.push("turn on the lights in the kitchen please").as_deref(),
            Some("turn on the lights in the kitchen")
        );
    }

    proptest! {
        /// Whatever the hypotheses, the committed text only grows, and every
        /// committed word was in two consecutive hypotheses at its position.
        #[test]
        fn committed_text_only_grows(hyps in proptest::collection::vec(
            proptest::collection::vec(prop_oneof!["a", "b", "c", "A,", "b."], 0..8), 1..12)
        ) {
            let mut la = LocalAgreement::new();
            let mut before: Vec<String> = Vec::new();
            let mut previous: Option<Vec<String>> = None;
            for h in &hyps {
                let out = la.push(&h.join(" "));
                let now: Vec<String> = la.text().split_whitespace().map(str::to_owned).collect();
                prop_assert!(now.len() >= before.len());
                prop_assert!(before.iter().zip(&now).all(|(a, b)| a == b), "{before:?} -> {now:?}");
                if let Some(text) = out {
                    prop_assert!(now.len() > before.len());
                    prop_assert_eq!(text, la.text());
                    let p = previous.as_ref().expect("growth needs a previous hypothesis");
                    for (i, w) in now.iter().enumerate().skip(before.len()) {
                        prop_assert!(same_word(w, &h[i]) && same_word(w, &p[i]));
                    }
                } else {
                    prop_assert_eq!(now.len(), before.len());
                }
                before = now;
                previous = Some(h.clone());
            }
        }
    }
}
