//! Word times, the way faster-whisper's `word_timestamps=True` finds them:
//! CTranslate2 aligns a window's text tokens to its encoder frames by
//! dynamic time warping over the cross-attention of the model's alignment
//! heads (listed in its `config.json`); a word starts where the alignment
//! first reaches its first token and ends where it reaches the next word.

use std::path::Path;

use ct2rs::sys::StorageView;

use super::timeline::{TIME_PRECISION, TokenSegment};
use super::{WhisperCt2, inference};
use crate::{Segment, SttError, Word};

/// Width of the median filter over the attention, faster-whisper's 7.
const MEDIAN_FILTER_WIDTH: i64 = 7;

/// Whether the model's `config.json` names alignment heads. Without them
/// CTranslate2 cannot align, and transcripts carry no word times.
pub(super) fn has_alignment_heads(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("config.json")) else { return false };
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("alignment_heads").and_then(|h| h.as_array()).map(|h| !h.is_empty()))
        .unwrap_or(false)
}

impl WhisperCt2 {
    /// Fills `segments[i].words` for one window, whose token segments are
    /// `split` and which starts `offset` seconds into the audio.
    pub(super) fn add_words(
        &self,
        encoded: &StorageView,
        split: &[TokenSegment],
        segments: &mut [Segment],
        content_frames: usize,
        offset: f32,
    ) -> Result<(), SttError> {
        let tokens: Vec<u32> = split.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        if tokens.is_empty() {
            return Ok(());
        }
        let start: Vec<usize> =
            self.prompt.iter().filter_map(|t| self.tokenizer.token_to_id(t)).map(|id| id as usize).collect();
        let text_tokens = vec![tokens.iter().map(|&t| t as usize).collect::<Vec<_>>()];
        let result = self
            .model
            .align(encoded, &start, &text_tokens, &[content_frames], MEDIAN_FILTER_WIDTH)
            .map_err(inference)?
            .into_iter()
            .next()
            .ok_or_else(|| inference("CTranslate2 returned no alignment"))?;
        // The time (in timestamp steps) at which the alignment first
        // reaches each text index.
        let mut jump_times: Vec<f32> = Vec::new();
        let mut last = None;
        for a in &result.alignments {
            if last != Some(a.token_x) {
                jump_times.push(a.frame_x as f32 * TIME_PRECISION);
                last = Some(a.token_x);
            }
        }
        let words = self.split_words(&tokens)?;
        let mut index = 0;
        let mut per_segment_end = split.iter().scan(0, |n, s| {
            *n += s.tokens.len();
            Some(*n)
        });
        let mut segment = 0;
        let mut segment_end = per_segment_end.next().unwrap_or(0);
        for (text, count) in words {
            while index >= segment_end && segment + 1 < segments.len() {
                segment += 1;
                segment_end = per_segment_end.next().unwrap_or(usize::MAX);
            }
            let at = |i: usize| jump_times.get(i).or(jump_times.last()).copied().unwrap_or(0.0);
            let probs = &result.text_token_probs;
            let p = probs.get(index..(index + count).min(probs.len())).unwrap_or(&[]);
            let probability = if p.is_empty() { 0.0 } else { p.iter().sum::<f32>() / p.len() as f32 };
            let (w_start, w_end) = (offset + at(index), offset + at(index + count));
            if let Some(seg) = segments.get_mut(segment) {
                seg.words.push(Word { word: text, start: w_start, end: w_end.max(w_start), probability });
            }
            index += count;
        }
        Ok(())
    }

    /// Splits text tokens into words, each with its token count: a word
    /// starts at a token that begins with a space; punctuation stays with
    /// the word before it. Tokens are first grouped until they decode to
    /// whole characters (a byte-level token may hold half of one).
    fn split_words(&self, tokens: &[u32]) -> Result<Vec<(String, usize)>, SttError> {
        let decode = |ids: &[u32]| {
            self.tokenizer.decode(ids, false).map_err(|e| inference(format!("cannot decode tokens: {e}")))
        };
        let mut words: Vec<(String, usize)> = Vec::new();
        let mut pending: Vec<u32> = Vec::new();
        for &token in tokens {
            pending.push(token);
            let piece = decode(&pending)?;
            if piece.contains('\u{FFFD}') && pending.len() < 4 {
                continue;
            }
            let count = std::mem::take(&mut pending).len();
            let punctuation = !piece.trim().is_empty() && piece.trim().chars().all(|c| c.is_ascii_punctuation());
            match words.last_mut() {
                Some((word, n)) if !piece.starts_with(' ') || punctuation => {
                    word.push_str(piece.trim_start());
                    *n += count;
                }
                _ => words.push((piece.trim().to_owned(), count)),
            }
        }
        if !pending.is_empty() {
            let piece = decode(&pending)?;
            words.push((piece.trim().to_owned(), pending.len()));
        }
        Ok(words)
    }
}
