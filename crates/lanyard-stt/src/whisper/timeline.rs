//! From a window's decoded tokens to timed segments, and where the next
//! window starts: the long-form rules of OpenAI's `transcribe` and
//! faster-whisper's `generate_segments`, as pure functions.
//!
//! With timestamps on, Whisper writes each segment as
//! `<|t0|> text <|t1|>`. Two timestamps in a row close one segment and open
//! the next. A window that ends on a lone timestamp after text says all of its
//! speech is done; otherwise the text after the last timestamp pair is cut
//! off mid-segment by the end of the window, and it is decoded again from
//! the start of the next window, which begins at that pair. That *seek* is
//! what keeps a word at a window edge from being lost or said twice.
//!
//! A segment is *closed* when a timestamp ends it. A stream still being
//! spoken settles only closed segments that end far enough before the audio
//! received so far ([`settled`]): the rest may still change.

/// Seconds per timestamp step (`<|0.02|>`).
pub const TIME_PRECISION: f32 = 0.02;
/// Mel frames per timestamp step: 10 ms frames, 20 ms steps.
pub const FRAMES_PER_STEP: usize = 2;

/// One segment of a window, in timestamp steps from the window's start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSegment {
    /// Start, in timestamp steps from the window start.
    pub start: u32,
    /// End, in timestamp steps from the window start.
    pub end: u32,
    /// Text tokens only (no timestamps, no special tokens).
    pub tokens: Vec<u32>,
    /// The segment's tokens as generated, timestamps included: what the
    /// next window's prompt is made of, as in OpenAI's and faster-whisper's
    /// loops (a prompt without timestamps makes the decoder drop them, and
    /// then stop early).
    pub raw: Vec<u32>,
    /// A timestamp ends this segment.
    pub closed: bool,
}

/// A window's segments and how far the window's audio is done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    pub segments: Vec<TokenSegment>,
    /// Mel frames from the window start to where the next window begins;
    /// never 0 for a non-empty window, so decoding always moves on.
    pub advance: usize,
}

/// Splits `tokens` (a generation result: text tokens and timestamps, no
/// prompt) of a window holding `content_frames` mel frames of audio.
/// `timestamp_begin` is the id of `<|0.00|>`; ids at or above it are
/// timestamps, ids at or above `eot` and below it are other special tokens.
pub fn split(tokens: &[u32], timestamp_begin: u32, eot: u32, content_frames: usize) -> Split {
    let is_ts = |t: u32| t >= timestamp_begin;
    let step = |t: u32| t - timestamp_begin;
    let text_only = |ts: &[u32]| ts.iter().copied().filter(|&t| t < eot).collect::<Vec<_>>();
    let max_step = (content_frames / FRAMES_PER_STEP) as u32;
    let n = tokens.len();
    let single_ending = n >= 2 && !is_ts(tokens[n - 2]) && is_ts(tokens[n - 1]);
    let mut pairs: Vec<usize> = (1..n).filter(|&i| is_ts(tokens[i]) && is_ts(tokens[i - 1])).collect();

    if pairs.is_empty() {
        // No segment boundary inside: one segment over the window, ending at
        // the last timestamp if the model gave one after some text.
        let last_ts = tokens.iter().rev().copied().find(|&t| is_ts(t)).map(step);
        let first_ts = tokens.first().copied().filter(|&t| is_ts(t)).map(step).unwrap_or(0);
        let end = match last_ts {
            Some(s) if s > first_ts => s.min(max_step),
            _ => max_step,
        };
        let text = text_only(tokens);
        let segments = if text.is_empty() || first_ts >= max_step {
            Vec::new()
        } else {
            vec![TokenSegment {
                start: first_ts.min(end),
                end,
                tokens: text,
                raw: tokens.to_vec(),
                closed: single_ending,
            }]
        };
        return Split { segments, advance: content_frames.max(1) };
    }

    if single_ending {
        pairs.push(n);
    }
    let mut segments = Vec::new();
    let mut last = 0;
    for &cut in &pairs {
        let slice = &tokens[last..cut];
        last = cut;
        let (Some(&first), Some(&end)) = (slice.first(), slice.last()) else { continue };
        let start = if is_ts(first) { step(first) } else { 0 };
        let end = if is_ts(end) { step(end) } else { start };
        let text = text_only(slice);
        if text.is_empty() {
            continue;
        }
        if start >= max_step && max_step > 0 {
            // It starts in the silence padding the window past the audio:
            // the decoder filling it (often with the sentence before again,
            // timed at the audio's very end), not speech.
            continue;
        }
        // A timestamp past the audio is the decoder running on into the
        // padding: clamp it to the audio.
        let end = end.min(max_step).max(start.min(max_step));
        segments.push(TokenSegment { start: start.min(end), end, tokens: text, raw: slice.to_vec(), closed: true });
    }
    let advance = if single_ending {
        content_frames
    } else {
        // The next window starts at the last closing timestamp.
        step(tokens[last - 1]) as usize * FRAMES_PER_STEP
    };
    Split { segments, advance: advance.clamp(1, content_frames.max(1)) }
}

/// How many of `segments` (in order, with ends in seconds) a stream still
/// being spoken may settle: the leading run of closed segments that end at
/// least `margin` seconds before `available` seconds of audio.
pub fn settled(segments: &[(f32, bool)], available: f32, margin: f32) -> usize {
    segments.iter().take_while(|(end, closed)| *closed && *end <= available - margin).count()
}

/// Where a stream still being spoken may be cut after its settled
/// segments: the most of the first `candidates` segments (ends in seconds,
/// in order) such that the last of them ends at a pause, and the cut: the
/// middle of that pause. `pauses` are the unvoiced stretches of the audio
/// (start, end in seconds, in order). A segment end counts as at a pause
/// when it lies within `tolerance` seconds of one: Whisper's timestamps are
/// coarse (tiny.en likes whole seconds).
///
/// Cutting only at pauses keeps a word from being split between a settled
/// segment and the next decode, where it would be lost or heard twice;
/// Whisper also ends segments mid-clause, and those ends are not trusted.
pub fn cut_at_pause(ends: &[f32], candidates: usize, pauses: &[(f32, f32)], tolerance: f32) -> Option<(usize, f32)> {
    (1..=candidates.min(ends.len())).rev().find_map(|k| {
        let end = ends[k - 1];
        pauses
            .iter()
            .find(|(start, stop)| end >= start - tolerance && end <= stop + tolerance)
            .map(|(start, stop)| (k, (start + stop) / 2.0))
    })
}

/// If `tokens` end in a loop (the same block of `min_block` or more tokens
/// three or more times back to back), their length up to the end of the
/// first copy. For a hypothesis that ran out of tokens: Whisper stuck in a
/// loop repeats until the budget ends, and those copies were never said.
/// A hypothesis that ended by itself is never trimmed: a person may say a
/// thing three times.
pub fn runaway_end(tokens: &[u32], min_block: usize) -> Option<usize> {
    let n = tokens.len();
    for period in min_block.max(1)..=n / 3 {
        // Count whole copies of the last `period` tokens going backwards.
        let mut copies = 1;
        while n >= (copies + 1) * period
            && tokens[n - (copies + 1) * period..n - copies * period] == tokens[n - period..]
        {
            copies += 1;
        }
        if copies >= 3 {
            return Some(n - (copies - 1) * period);
        }
    }
    None
}

/// The text tokens of the last segment of a prompt written as the loop
/// writes it (`<|t0|> text <|t1|>` per segment): the text after the last
/// timestamp that follows text, back to the timestamp before it. A prompt
/// without timestamps is one segment.
pub fn last_segment(prompt: &[u32], timestamp_begin: u32, eot: u32) -> Vec<u32> {
    let end = prompt.iter().rposition(|&t| t < timestamp_begin).map_or(0, |i| i + 1);
    let start = prompt[..end].iter().rposition(|&t| t >= timestamp_begin).map_or(0, |i| i + 1);
    prompt[start..end].iter().copied().filter(|&t| t < eot).collect()
}

/// Whether a window's first segment repeats the last segment of its prompt:
/// it starts with all of it, or is the end of it, two words or more, words
/// compared without case or punctuation. Whisper given the previous text
/// sometimes writes its end again over the next audio (an *echo*); people
/// also say a thing twice, so this only says when to look again (see the
/// loop in `mod.rs`), never what to delete.
pub fn echoes(prompt_last: &str, first: &str) -> bool {
    let (prev, first) = (words(prompt_last), words(first));
    prev.len() >= 2 && first.len() >= 2 && (first.starts_with(&prev) || prev.ends_with(&first))
}

/// Most words a person says per second. Fast speech is 4 to 6; the
/// headroom is for Whisper's coarse timestamps, which may shorten a
/// segment by a second.
pub const MAX_WORDS_PER_SEC: f32 = 8.0;

/// Whether a segment of `text` timed `secs` long is a *crammed repeat*:
/// more words than anyone could say in its time (two words, plus
/// [`MAX_WORDS_PER_SEC`] a second), four words or more, all of them a run
/// of `before` (the text decoded just before it), in order. Whisper writes
/// such a segment at the end of a window, over its last fraction of a
/// second: the sentence before it again ("…beside the clock tower." then
/// the whole sentence once more in 0.18 s). Both tests must hold: a
/// segment the timestamps squeezed but which says something new is kept,
/// and so is a repeat that had the time to be said.
pub fn crammed_repeat(before: &str, text: &str, secs: f32) -> bool {
    let (before, said) = (words(before), words(text));
    let n = said.len();
    n >= 4 && n as f32 > 2.0 + MAX_WORDS_PER_SEC * secs.max(0.0) && before.windows(n).any(|w| w == said.as_slice())
}

/// Words compared without case or punctuation.
fn words(s: &str) -> Vec<String> {
    s.chars()
        .map(|c| if c.is_alphanumeric() || c == '\'' { c.to_ascii_lowercase() } else { ' ' })
        .collect::<String>()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TS: u32 = 1000;
    const EOT: u32 = 900;
    fn ts(step: u32) -> u32 {
        TS + step
    }

    #[test]
    fn pairs_close_segments_and_a_lone_final_timestamp_finishes_the_window() {
        // <|0.00|> a b <|1.00|><|1.20|> c <|2.00|>
        let tokens = [ts(0), 1, 2, ts(50), ts(60), 3, ts(100)];
        let s = split(&tokens, TS, EOT, 3000);
        assert_eq!(s.segments.len(), 2);
        assert_eq!((s.segments[0].start, s.segments[0].end, s.segments[0].tokens.clone()), (0, 50, vec![1, 2]));
        assert_eq!((s.segments[1].start, s.segments[1].end, s.segments[1].tokens.clone()), (60, 100, vec![3]));
        assert!(s.segments.iter().all(|s| s.closed));
        assert_eq!(s.advance, 3000);
    }

    #[test]
    fn text_cut_off_by_the_window_is_decoded_again_from_the_last_pair() {
        // <|0.00|> a <|5.00|><|5.50|> b c (window ends mid-segment)
        let tokens = [ts(0), 1, ts(250), ts(275), 2, 3];
        let s = split(&tokens, TS, EOT, 3000);
        assert_eq!(s.segments.len(), 1);
        assert_eq!(s.segments[0].tokens, vec![1]);
        assert_eq!(s.advance, 250 * FRAMES_PER_STEP);
    }

    #[test]
    fn no_pair_is_one_segment_to_the_last_timestamp() {
        let s = split(&[ts(10), 1, 2, ts(80)], TS, EOT, 1000);
        assert_eq!(
            s.segments,
            vec![TokenSegment {
                start: 10,
                end: 80,
                tokens: vec![1, 2],
                raw: vec![ts(10), 1, 2, ts(80)],
                closed: true
            }]
        );
        assert_eq!(s.advance, 1000);
        let s = split(&[ts(10), 1, 2], TS, EOT, 1000);
        assert_eq!(s.segments[0].end, 500);
        assert!(!s.segments[0].closed);
    }

    #[test]
    fn timestamps_past_the_audio_are_clamped_and_special_tokens_dropped() {
        let s = split(&[ts(0), 1, EOT + 5, ts(400), ts(400), 2, ts(1400)], TS, EOT, 1000);
        assert_eq!(s.segments[0].tokens, vec![1]);
        assert_eq!(s.segments[1].end, 500);
        assert!(s.segments.iter().all(|x| x.start <= x.end));
    }

    #[test]
    fn a_segment_that_starts_past_the_audio_is_padding_not_speech() {
        // 1000 frames of audio are 500 steps: a segment at 500 is in the
        // padding, as the decoder's second copy of a sentence was, timed
        // at the very end of a 7.6 s piece of a stream.
        let s = split(&[ts(0), 1, 2, ts(380), ts(500), 1, 2, ts(500)], TS, EOT, 1000);
        assert_eq!(s.segments.len(), 1, "{s:?}");
        assert_eq!(s.segments[0].tokens, vec![1, 2]);
        assert_eq!(s.advance, 1000, "the audio is done");
        // With no pair: a lone segment in the padding is nothing.
        assert!(split(&[ts(600), 1, 2], TS, EOT, 1000).segments.is_empty());
        assert_eq!(split(&[ts(499), 1, 2], TS, EOT, 1000).segments.len(), 1);
    }

    #[test]
    fn settling_keeps_the_closed_segments_well_before_the_end() {
        let segs = [(3.0, true), (7.5, true), (9.6, true), (10.0, false)];
        assert_eq!(settled(&segs, 10.0, 1.0), 2);
        assert_eq!(settled(&segs[3..], 10.0, 1.0), 0);
    }

    #[test]
    fn a_loop_is_trimmed_to_one_copy_and_a_double_is_kept() {
        let mut t = vec![7, 8];
        t.extend([1, 2, 3, 4].repeat(4));
        assert_eq!(runaway_end(&t, 2), Some(6));
        let mut twice = vec![7, 8];
        twice.extend([1, 2, 3, 4].repeat(2));
        assert_eq!(runaway_end(&twice, 2), None);
    }

    #[test]
    fn a_stream_is_cut_only_where_a_settled_segment_ends_at_a_pause() {
        let pauses = [(3.1, 3.5), (8.0, 8.6)];
        // The second segment ends mid-speech (5.0): cut after the first.
        assert_eq!(cut_at_pause(&[3.0, 5.0, 9.0], 2, &pauses, 0.3), Some((1, 3.3)));
        // The third ends in the second pause, but is not a candidate.
        assert_eq!(cut_at_pause(&[3.0, 5.0, 8.4], 3, &pauses, 0.3), Some((3, 8.3)));
        assert_eq!(cut_at_pause(&[5.0], 1, &pauses, 0.3), None);
        assert_eq!(cut_at_pause(&[3.0], 0, &pauses, 0.3), None);
    }

    proptest! {
        #[test]
        fn split_never_stalls_or_panics(tokens in proptest::collection::vec(0u32..1600, 0..80), frames in 1usize..3000) {
            let s = split(&tokens, TS, EOT, frames);
            prop_assert!(s.advance >= 1 && s.advance <= frames);
            for seg in &s.segments {
                prop_assert!(seg.start <= seg.end);
                prop_assert!(seg.end as usize * FRAMES_PER_STEP <= frames.max(1) + FRAMES_PER_STEP);
                prop_assert!(seg.tokens.iter().all(|&t| t < EOT));
            }
        }

        #[test]
        fn every_text_token_before_the_seek_is_in_a_segment(words in proptest::collection::vec(proptest::collection::vec(0u32..EOT, 1..6), 1..6)) {
            // A well-formed window: each segment <|a|> words <|b|>, consecutive.
            let mut tokens = Vec::new();
            let mut t = 0;
            for w in &words {
                tokens.push(ts(t));
                tokens.extend(w);
                t += 10;
                tokens.push(ts(t));
            }
            let s = split(&tokens, TS, EOT, 3000);
            let got: Vec<u32> = s.segments.iter().flat_map(|s| s.tokens.clone()).collect();
            let want: Vec<u32> = words.concat();
            prop_assert_eq!(got, want);
            prop_assert_eq!(s.advance, 3000);
        }
    }

    #[test]
    fn the_last_segment_of_a_prompt_is_its_text_after_the_last_timestamp_pair() {
        // ts = 100.., eot = 50; text tokens are below 50.
        let p = [100, 1, 2, 110, 110, 3, 4, 5, 120];
        assert_eq!(last_segment(&p, 100, 50), vec![3, 4, 5]);
        // Cut off mid-segment, or bare text: what follows the last timestamp.
        assert_eq!(last_segment(&[100, 1, 2, 110, 110, 3], 100, 50), vec![3]);
        assert_eq!(last_segment(&[7, 8], 100, 50), vec![7, 8]);
        assert_eq!(last_segment(&[], 100, 50), Vec::<u32>::new());
        assert_eq!(last_segment(&[100, 110], 100, 50), Vec::<u32>::new());
    }

    #[test]
    fn a_crammed_repeat_is_a_run_of_the_text_before_in_too_little_time() {
        let before = "excuse me which platform does the next train to Bristol leave from the next train to Bristol \
                      leaves from the platform beside the clock tower.";
        let again = "The next train to Bristol leaves from the platform beside the clock tower.";
        assert!(crammed_repeat(before, again, 0.18), "13 words in 0.18 s, all said just before");
        assert!(!crammed_repeat(before, again, 2.0), "time enough to say it again: a person repeating");
        assert!(!crammed_repeat(before, "The last train to Bath leaves from the far platform.", 0.18), "something new");
        assert!(!crammed_repeat(before, "the clock tower", 0.0), "three words are no evidence");
        assert!(!crammed_repeat("", again, 0.0));
        // The boundary: 4 words need at least 0.25 s.
        assert!(crammed_repeat(before, "beside the clock tower", 0.24));
        assert!(!crammed_repeat(before, "beside the clock tower", 0.26));
    }

    proptest! {
        /// A segment with at least 1/MAX_WORDS_PER_SEC s per word is never
        /// crammed, whatever it repeats: spoken repeats are kept.
        #[test]
        fn a_repeat_with_time_to_say_it_is_kept(n in 1usize..40, extra in 0.0f32..5.0) {
            let text: Vec<String> = (0..n).map(|i| format!("w{}", i % 3)).collect();
            let text = text.join(" ");
            let before = format!("{text} {text}");
            prop_assert!(!crammed_repeat(&before, &text, n as f32 / MAX_WORDS_PER_SEC + extra));
        }
    }

    #[test]
    fn an_echo_repeats_the_prompts_last_segment_at_the_start() {
        let last = "He asked me the time, and I told him it was nearly midnight.";
        assert!(echoes(last, " he asked me the time and I told him it was nearly midnight"));
        assert!(echoes(last, "He asked me the time, and I told him it was nearly midnight. Then I left."));
        assert!(echoes(last, "it was nearly midnight."), "the end of it");
        assert!(!echoes(last, "It was a cold night."));
        assert!(!echoes(last, "midnight."), "one word is no evidence");
        assert!(!echoes("Yes.", "Yes. Yes."), "nor is a one-word prompt");
        assert!(!echoes(last, "He asked me again."));
    }
}
