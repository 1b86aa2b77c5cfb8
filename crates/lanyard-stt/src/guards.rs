//! Pure checks that keep Whisper's decoder from running away.
//!
//! Whisper sometimes repeats itself instead of ending, most often when the
//! audio stops right after the last word. Three guards, from cheapest to
//! most expensive to act on:
//!
//! - [`max_length_for`] bounds the token budget by the speech duration, so a
//!   loop that never ends costs tenths of a second, not 448 tokens.
//! - [`repetition_cut`] finds a phrase of [`MIN_LOOP_WORDS`] or more words
//!   that the text repeats back to back ("Call Anna. Call Anna. Call"), and
//!   where the first repetition starts. The text before it is kept: the
//!   decoder transcribed the speech once and then looped, so the first copy
//!   is the transcript. This catches the short loops seen with trimmed
//!   windows, which end after two copies and do not compress enough to trip
//!   the next guard.
//! - [`compression_ratio`] is faster-whisper's test: the text's length over
//!   its zlib-compressed length (flate2 at level 6, like Python's `zlib`).
//!   Long degenerate output ("no no no ..." or babble) compresses well; the
//!   caller retries such hypotheses by sampling at higher temperatures.

use std::io::Write;

use flate2::Compression;
use flate2::write::ZlibEncoder;

/// Whisper's decoder has 448 positions; no generation may ask for more.
pub const WHISPER_MAX_LENGTH: usize = 448;

/// Tokens allowed on top of the duration-based budget, so that a very short
/// utterance ("yes.") still has room for punctuation and the end token.
pub const MAX_LENGTH_MARGIN: usize = 16;

/// Shortest phrase whose back-to-back repetition counts as a loop. Shorter
/// repeats ("no, no", "I think I think") occur in real speech; four words
/// repeated verbatim are almost always the decoder looping.
pub const MIN_LOOP_WORDS: usize = 4;

/// Token budget for `speech_secs` of audio at `tokens_per_sec`, plus
/// [`MAX_LENGTH_MARGIN`], capped at [`WHISPER_MAX_LENGTH`].
pub fn max_length_for(speech_secs: f32, tokens_per_sec: f32) -> usize {
    let budget = (speech_secs * tokens_per_sec).ceil().max(0.0) as usize;
    (budget + MAX_LENGTH_MARGIN).min(WHISPER_MAX_LENGTH)
}

/// Bytes of `text` over bytes of its zlib compression; 0 for empty text.
pub fn compression_ratio(text: &str) -> f32 {
    if text.is_empty() {
        return 0.0;
    }
    let mut encoder = ZlibEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(text.as_bytes()).expect("writing to a Vec cannot fail");
    let compressed = encoder.finish().expect("writing to a Vec cannot fail");
    text.len() as f32 / compressed.len() as f32
}

/// If `text` repeats a phrase of at least [`MIN_LOOP_WORDS`] words back to
/// back, the text before the first repetition, trimmed; otherwise `None`.
/// Words are compared ignoring case and punctuation, so "room. The" and
/// "room The" match.
pub fn repetition_cut(text: &str) -> Option<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let keys: Vec<String> = words
        .iter()
        .map(|w| w.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect())
        .collect();
    // For each period p, scan for a run of positions j with keys[j] == keys[j + p];
    // a run of MIN_LOOP_WORDS starting at i means keys[i..] repeats from i + p.
    let mut earliest: Option<usize> = None;
    for period in 1..keys.len() {
        let mut run = 0;
        for j in 0..keys.len() - period {
            if !keys[j].is_empty() && keys[j] == keys[j + period] {
                run += 1;
                if run >= MIN_LOOP_WORDS {
                    let repeat_start = j + 1 - run + period;
                    earliest = Some(earliest.map_or(repeat_start, |e| e.min(repeat_start)));
                    break;
                }
            } else {
                run = 0;
            }
        }
    }
    earliest.map(|cut| words[..cut].join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_length_grows_with_speech_and_is_capped() {
        assert_eq!(max_length_for(0.0, 8.0), MAX_LENGTH_MARGIN);
        assert_eq!(max_length_for(3.0, 8.0), 24 + MAX_LENGTH_MARGIN);
        assert_eq!(max_length_for(30.0, 20.0), WHISPER_MAX_LENGTH);
    }

    #[test]
    fn long_loops_compress_far_better_than_speech() {
        let sentence = "The quick brown fox jumps over the lazy dog.";
        assert!(compression_ratio(sentence) < 1.5);
        let looped = format!("{sentence} ").repeat(8);
        assert!(compression_ratio(&looped) > 2.4, "{}", compression_ratio(&looped));
        assert_eq!(compression_ratio(""), 0.0);
    }

    #[test]
    fn a_repeated_sentence_is_cut_after_its_first_copy() {
        // Loops seen with tiny.en on windows trimmed to the speech.
        assert_eq!(
            repetition_cut(
                "The meeting has been moved to the small conference room. The meeting has been moved to the small conference room."
            )
            .as_deref(),
            Some("The meeting has been moved to the small conference room.")
        );
        assert_eq!(
            repetition_cut("What time is it? What time is it? What time is").as_deref(),
            Some("What time is it?")
        );
        assert_eq!(
            repetition_cut("I think we should leave a little earlier to hide it. I think we should leave a little")
                .as_deref(),
            Some("I think we should leave a little earlier to hide it.")
        );
        assert_eq!(repetition_cut("no no no no no no").as_deref(), Some("no"));
    }

    #[test]
    fn ordinary_speech_is_left_alone() {
        for text in [
            "The quick brown fox jumps over the lazy dog.",
            "No, no, I said the other one.",
            "I think I think we should go.",
            "that that is is that that is not is not",
            "",
        ] {
            assert_eq!(repetition_cut(text), None, "{text:?}");
        }
    }
}
