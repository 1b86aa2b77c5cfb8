//! Whisper through CTranslate2 (`ct2rs::sys::Whisper`): long-form decoding
//! that keeps every spoken word, fast enough for a wearable.
//!
//! # Why the low-level binding
//!
//! ct2rs's high-level `Whisper` always pads to a 30 s window, always builds a
//! multilingual prompt (wrong for `.en` models), and has no long-form loop.
//! This module drives `ct2rs::sys::Whisper` directly: features come from
//! [`crate::mel`], the prompt is chosen per model, and the loop below decides
//! where each window starts.
//!
//! # Long-form decoding
//!
//! Audio of any length is transcribed the way OpenAI's `transcribe` and
//! faster-whisper's `generate_segments` do it (read them side by side with
//! [`timeline`]):
//!
//! - **timestamped segments**: the prompt leaves out `<|notimestamps|>`, so
//!   the decoder writes `<|t0|> text <|t1|>` per segment, and CTranslate2
//!   enforces Whisper's timestamp rules (the first timestamp within 1 s);
//! - **seeking**: the next window starts at the end of the last segment the
//!   window closed; text that the window's edge cut off mid-segment is
//!   decoded again there, so nothing at a window edge is lost or doubled;
//! - **the previous text as the prompt** (`<|startofprev|>` and the last 223
//!   text tokens), so the decoder keeps the style and names of what came
//!   before. It is reset after a window decoded above temperature 0.5,
//!   whose text is not trusted to steer the next;
//! - **quality fallbacks**: a hypothesis whose zlib compression ratio is
//!   above 2.4 (a loop) or whose average log-probability is below −1 is
//!   decoded again by sampling at 0.2, 0.4, … 1.0, best of five, unless the
//!   window is silence (`<|nospeech|>` above 0.6 with that low
//!   log-probability), which yields no text; if every attempt fails, the one
//!   with the best log-probability among those that do not loop is kept;
//! - **silence skipped by VAD**: windows are started at the first voiced
//!   audio (earshot, with a little audio kept before it), and audio with no
//!   voice at all is not decoded, so Whisper never "hears" words in silence.
//!
//! Repetition is never cut from text that ended by itself: people say things
//! twice, count, and repeat questions. Only a hypothesis that ran out of its
//! token budget with the same block three times or more at its end (a
//! runaway decoder) is trimmed to its first copy ([`timeline::runaway_end`]).
//!
//! # Echoes
//!
//! Given the previous text, Whisper sometimes begins a window by writing
//! the prompt's last sentence again over audio that does not say it (seen
//! after a pause that a stream settled: "He asked me the time…" twice in
//! the server's streaming test). A window whose first segment repeats the
//! prompt's last segment ([`timeline::echoes`]) is decoded again without
//! the prompt, and that decode is kept if it does not repeat it: the audio
//! decides, not the text. Someone who really said it twice is heard twice
//! both ways, and the first decode stays.
//!
//! # Crammed repeats
//!
//! Whisper sometimes ends a window with the sentence before written again
//! in its last fraction of a second: "…beside the clock tower." and then
//! the whole 13-word sentence once more, timed 10.00 to 10.18 s. No one
//! says 13 words in 0.18 s. A window's last segment, ending within a second
//! of its audio, with more words than its time can hold, all of them a run
//! of the text just before it (the two segments before it, or the prompt's
//! last segment), is dropped ([`timeline::crammed_repeat`]). A repeat with
//! time to be said, a squeezed segment that says something new, and any
//! segment before the window's last are kept.
//!
//! # Why a window shorter than 30 s
//!
//! Whisper was trained on 30 s windows and encoder cost grows with the
//! window: on the project's 2-core box tiny.en encodes 30 s in 1.0–1.5 s but
//! 10 s in 0.19 s. A window never holds more than 30 s of audio; when less is
//! left, it holds what is left, padded with silence (zeros before the
//! log-mel, exactly what Whisper's own pad is) up to a floor,
//! [`WhisperConfig::min_window_secs`] (10 s by default). Trimming to exactly
//! the speech would make the decoder loop; the floor's silence lets it end.
//! Not always, with a long prompt: a short window whose decode at
//! temperature 0 fails a quality check is encoded again 30 s wide, as the
//! reference does, and decoded there before any temperature fallback
//! (prompts-01's last 3.9 s looped six times at 10 s, four temperatures
//! deep; at 30 s it decodes right at once).
//!
//! # Streams still being spoken
//!
//! [`WhisperCt2::transcribe_settled`] decodes the audio received so far of an
//! utterance that goes on, and keeps only the segments that are settled:
//! closed by a timestamp, ending at least [`SETTLE_MARGIN_SECS`] before
//! the audio does, and ending at a pause the VAD heard (the cut is made in
//! the pause, so no word is split between a settled segment and the next
//! decode; Whisper also closes segments mid-clause, and tiny.en's
//! timestamps are whole seconds as often as not). The server commits those
//! while the user speaks and, after the last word, decodes only the rest
//! ([`WhisperCt2::transcribe_after`]). Each of these decodes gets the
//! committed segments as its prompt *with their times*, written as the
//! loop writes its own: given bare text, the decoder stops writing
//! timestamps, runs one segment to the end of the window, and nothing can
//! settle (measured: a 117 s monologue settled 8 s before its end, and its
//! final took 15 s; with times, 111 s and under a second).
//!
//! # The prompt
//!
//! English-only (`.en`) models were trained without language and task
//! tokens, so their prompt is `<|startoftranscript|>`; multilingual models
//! get `<|startoftranscript|><|en|><|transcribe|>`: lanyard transcribes
//! English, and forcing the language skips a detection pass. Drafts (partial
//! transcripts while the user speaks) add `<|notimestamps|>`: they need no
//! times, and are greedy with no fallback.
//!
//! # Word times
//!
//! [`SpeechToText::transcribe_with_words`] aligns each segment's tokens to the
//! audio with CTranslate2's cross-attention DTW (the model's alignment heads),
//! as faster-whisper's `word_timestamps=True` does.
//!
//! # Sharing
//!
//! [`WhisperCt2`] is loaded once and is `Send + Sync`: CTranslate2 queues
//! concurrent requests on its replica, and the front end uses per-call
//! buffers, so an `Arc<WhisperCt2>` can serve every connection.

mod timeline;
mod words;

use std::path::{Path, PathBuf};
use std::time::Instant;

use ct2rs::sys::{self, ComputeType, Device, StorageView, WhisperOptions};

use crate::endpoint::voiced_frames;
use crate::guards::{compression_ratio, max_length_for, repetition_cut};
use crate::mel::{LogMel, MelFrontEnd};
use crate::preprocessor::{PreprocessorConfig, ensure_preprocessor_config_with};
use crate::{Segment, SpeechToText, SttError, Transcript};

use timeline::TIME_PRECISION;

/// How near the end of a window's audio a segment must end to be checked
/// for a crammed repeat (see "Crammed repeats").
const CRAMMED_TAIL_SECS: f32 = 1.0;

/// The default floor under the encoder window, in seconds. 10 s encodes in
/// about 0.19 s on the project box (30 s: 1.0–1.5 s) and gave the same word
/// error rate as the full 30 s window on 30 synthesised sentences; shorter
/// floors made tiny.en repeat sentences (6 s) or loop and garble endings
/// (4 s and less).
pub const DEFAULT_MIN_WINDOW_SECS: f32 = 10.0;

/// How far before the end of the audio received so far a segment must end
/// to be settled while the stream goes on: a word being spoken at the edge
/// may still change the segment, and Whisper ends segments at pauses.
pub const SETTLE_MARGIN_SECS: f32 = 1.0;

/// Audio kept before the first voiced frame when a window skips silence, so
/// that a soft first syllable is not cut (VAD onsets lag the voice).
const VAD_PRE_ROLL_SECS: f32 = 0.4;

/// A stream still being spoken is cut after a settled segment only in an
/// unvoiced stretch at least this long (longer than a stop consonant's
/// closure), so that no word is split across the cut.
const PAUSE_MIN_SECS: f32 = 0.2;

/// How far from such a pause a segment's end timestamp may be and still
/// count as ending there (tiny.en's timestamps are coarse).
const PAUSE_TOLERANCE_SECS: f32 = 0.4;

/// Silence at a window's start shorter than this is decoded, not skipped.
const VAD_MIN_SKIP_SECS: f32 = 1.0;

/// Text tokens of the previous text given as the prompt: Whisper's
/// `n_text_ctx / 2 - 1`.
const MAX_PROMPT_TOKENS: usize = 223;

/// Files every CTranslate2 Whisper export has; checked up front so that a
/// wrong directory gives a clear error instead of a C++ exception.
const REQUIRED_FILES: [&str; 3] = ["model.bin", "config.json", "tokenizer.json"];

/// How the Whisper model is run. `Default` gives the values documented on
/// each field, which are faster-whisper's defaults unless a field says why not.
#[derive(Clone, Debug, PartialEq)]
pub struct WhisperConfig {
    /// CTranslate2 intra-op threads. Default: every available core, because
    /// latency is what the wearer notices.
    pub threads: usize,
    /// Shortest encoder window in seconds: less audio is padded with
    /// trailing silence up to this length (see the module doc for why).
    /// Default [`DEFAULT_MIN_WINDOW_SECS`]; values above 30 act as 30.
    pub min_window_secs: f32,
    /// Beam width at temperature 0; 1 is greedy search. Default 5.
    pub beam_size: usize,
    /// Samples drawn per fallback temperature; the best is kept. Default 5.
    pub best_of: usize,
    /// Token budget per second of audio in a window, for `max_length`.
    /// Default 8: fast English is about 4 words, 5–6 tokens, per second,
    /// and each segment adds two timestamps.
    pub max_tokens_per_sec: f32,
    /// Hypotheses whose zlib compression ratio exceeds this are decoded
    /// again at the next temperature. Default 2.4.
    pub compression_ratio_threshold: f32,
    /// Temperatures tried, in order, after a hypothesis fails a quality
    /// check. Default `[0.2, 0.4, 0.6, 0.8, 1.0]`.
    pub fallback_temperatures: Vec<f32>,
    /// A window whose `<|nospeech|>` probability is above this *and* whose
    /// average log-probability is below [`Self::log_prob_threshold`] is
    /// silence. Default 0.6; 1.0 disables the rule.
    pub no_speech_threshold: f32,
    /// Hypotheses with an average log-probability below this are decoded
    /// again at the next temperature. Default −1.0.
    pub log_prob_threshold: f32,
    /// Give the previous windows' text as the prompt. Default true.
    pub condition_on_previous_text: bool,
    /// After a window decoded above this temperature, the prompt starts
    /// afresh. Default 0.5.
    pub prompt_reset_on_temperature: f32,
}

impl Default for WhisperConfig {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            min_window_secs: DEFAULT_MIN_WINDOW_SECS,
            beam_size: 5,
            best_of: 5,
            max_tokens_per_sec: 8.0,
            compression_ratio_threshold: 2.4,
            fallback_temperatures: vec![0.2, 0.4, 0.6, 0.8, 1.0],
            no_speech_threshold: 0.6,
            log_prob_threshold: -1.0,
            condition_on_previous_text: true,
            prompt_reset_on_temperature: 0.5,
        }
    }
}

/// Token ids the long-form loop needs.
#[derive(Clone, Copy, Debug)]
struct Specials {
    eot: u32,
    /// `<|0.00|>`: this and every id above it are timestamps.
    timestamp_begin: u32,
}

/// A Whisper model in CTranslate2 format (any faster-whisper model directory).
pub struct WhisperCt2 {
    model: sys::Whisper,
    tokenizer: tokenizers::Tokenizer,
    front_end: MelFrontEnd,
    preprocessor: PreprocessorConfig,
    /// `<|startoftranscript|>` and, for multilingual models, language and task.
    prompt: Vec<&'static str>,
    specials: Specials,
    /// Cross-attention heads that follow the audio, for word times.
    alignment_heads: bool,
    config: WhisperConfig,
    dir: PathBuf,
}

impl std::fmt::Debug for WhisperCt2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperCt2")
            .field("dir", &self.dir)
            .field("prompt", &self.prompt)
            .field("preprocessor", &self.preprocessor)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
impl WhisperCt2 {
    /// Loads the model, tokenizer and front end from a CTranslate2 Whisper
    /// directory, writing `preprocessor_config.json` there if it is missing.
    pub fn load(dir: &Path, config: WhisperConfig) -> Result<Self, SttError> {
        if !dir.is_dir() {
            return Err(SttError::ModelDirMissing { dir: dir.to_path_buf() });
        }
        for file in REQUIRED_FILES {
            if !dir.join(file).is_file() {
                return Err(SttError::ModelFileMissing { dir: dir.to_path_buf(), file });
            }
        }

        let ct2_config = sys::Config {
            device: Device::CPU,
            // Whatever the weights were saved as, compute in float32: int8 on
            // the ruy backend garbled text in the project's measurements.
            compute_type: ComputeType::FLOAT32,
            num_threads_per_replica: config.threads.max(1),
            ..Default::default()
        };
        let model = sys::Whisper::new(dir, ct2_config)
            .map_err(|e| SttError::ModelLoad { dir: dir.to_path_buf(), message: format!("{e:#}") })?;

        // A missing file gets the model's own mel count, so large-v3 (128 bins) works too.
        let defaults = PreprocessorConfig { feature_size: model.n_mels(), ..PreprocessorConfig::WHISPER };
        let preprocessor = ensure_preprocessor_config_with(dir, &defaults)?;
        if preprocessor.feature_size != model.n_mels() {
            return Err(SttError::PreprocessorConfigInvalid {
                path: dir.join(crate::PREPROCESSOR_CONFIG_FILE),
                reason: format!(
                    "feature_size is {} but the model takes {} mel bins",
                    preprocessor.feature_size,
                    model.n_mels()
                ),
            });
        }

        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| SttError::Tokenizer { path: tokenizer_path.clone(), message: e.to_string() })?;
        let prompt = if model.is_multilingual() {
            vec!["<|startoftranscript|>", "<|en|>", "<|transcribe|>"]
        } else {
            vec!["<|startoftranscript|>"]
        };
        let id = |token: &str| {
            tokenizer.token_to_id(token).ok_or_else(|| SttError::Tokenizer {
                path: tokenizer_path.clone(),
                message: format!("it has no {token} token"),
            })
        };
        for token in prompt.iter().chain(&["<|startofprev|>"]) {
            id(token)?;
        }
        // Timestamps follow <|notimestamps|> in every Whisper vocabulary,
        // whether or not tokenizer.json lists them (CTranslate2's does).
        let specials = Specials { eot: id("<|endoftext|>")?, timestamp_begin: id("<|notimestamps|>")? + 1 };
        let alignment_heads = words::has_alignment_heads(dir);

        tracing::info!(
            dir = %dir.display(),
            multilingual = model.is_multilingual(),
            n_mels = model.n_mels(),
            threads = config.threads,
            "loaded Whisper model"
        );
        Ok(Self {
            front_end: MelFrontEnd::new(&preprocessor),
            model,
            tokenizer,
            preprocessor,
            prompt,
            specials,
            alignment_heads,
            config,
            dir: dir.to_path_buf(),
        })
    }
}

/// What one long-form pass is asked for.
#[derive(Clone, Copy, Debug, Default)]
struct Pass<'a> {
    /// Segments said just before this audio, given as the prompt.
    previous: &'a [Segment],
    /// The audio goes on after this: keep only the settled segments.
    settle: bool,
    /// Time each word.
    words: bool,
    /// A partial's draft: greedy, no fallback, replaced by the final.
    draft: bool,
}

/// What a long-form pass found.
#[derive(Debug, Default)]
struct Decoded {
    segments: Vec<Segment>,
    /// Samples of the input that the segments account for: all of it,
    /// except for a settling pass, where it is the end of the last settled
    /// segment (or where the first unsettled window began).
    settled_samples: usize,
}

/// One decoding attempt and the numbers the fallbacks look at.
#[derive(Debug)]
struct Hypothesis {
    /// Generated ids: text tokens and timestamps, no prompt.
    ids: Vec<u32>,
    text: String,
    compression_ratio: f32,
    avg_logprob: f32,
    no_speech_prob: f32,
    temperature: f32,
    /// It used up its token budget instead of ending.
    truncated: bool,
}

impl WhisperCt2 {
    /// The directory the model was loaded from.
    pub fn model_dir(&self) -> &Path {
        &self.dir
    }

    /// The settings this model runs with.
    pub fn config(&self) -> &WhisperConfig {
        &self.config
    }

    /// The long-form loop (see the module doc): windows of at most 30 s,
    /// each starting where the last one's closed segments end.
    fn long_form(&self, pcm: &[f32], pass: Pass<'_>) -> Result<Decoded, SttError> {
        check_finite(pcm)?;
        let hop = self.front_end.hop_length();
        let fps = self.preprocessor.sampling_rate as f32 / hop as f32;
        let max_frames = self.preprocessor.nb_max_frames;
        let content = pcm.len() / hop;
        let voice = Voice::of(pcm, hop);
        // One spectrogram over the whole input and the silence the last
        // window may need after it (the floor, at most), as faster-whisper
        // computes it: the loudness normalisation is global and every window
        // is a slice. More padding would change nothing but the cost: the
        // loudest bin is in the audio, and no window reaches further.
        // (A window widened to 30 s, below, computes it again with 30 s.)
        let mut features = self.features(pcm, self.window_frames(0));

        let mut prompt_tokens = self.previous_tokens(pass.previous)?;
        let mut out = Decoded::default();
        let mut seek = 0;
        while seek < content {
            let Some(voiced) = voice.first_from(seek, content) else {
                seek = content;
                break;
            };
            if voiced >= seek + (VAD_MIN_SKIP_SECS * fps) as usize {
                seek = voiced - (VAD_PRE_ROLL_SECS * fps) as usize;
            }
            let seg_frames = (content - seek).min(max_frames);
            let at_end = seek + seg_frames >= content;
            let window = self.window_frames(seg_frames);
            let prompt = self.prompt_tokens(&prompt_tokens, pass.draft);
            let budget = max_length_for(seg_frames as f32 / fps, self.config.max_tokens_per_sec);
            let mut encoded = self.encode(features.frames(seek, seek + window))?;
            let mut first = self.decode(&encoded, &prompt, budget, 0.0, pass.draft)?;
            if window < max_frames && !pass.draft && self.needs_fallback(&first) {
                // The short window is this loop's own departure from the
                // reference (see "Why a window shorter than 30 s"): before
                // any sampling, decode as the reference does, a 30 s window.
                tracing::debug!(
                    compression_ratio = first.compression_ratio,
                    avg_logprob = first.avg_logprob,
                    "Whisper hypothesis of a short window failed a quality check; widening it to 30 s"
                );
                if features.n_frames < seek + max_frames {
                    features = self.features(pcm, max_frames);
                }
                encoded = self.encode(features.frames(seek, seek + max_frames))?;
                first = self.decode(&encoded, &prompt, budget, 0.0, pass.draft)?;
            }
            let mut best = self.decode_with_fallback(&encoded, &prompt, budget, pass.draft, first)?;
            if !pass.draft && self.echoes_prompt(&best, &prompt_tokens, seg_frames)? {
                // See "Echoes" in the module doc: look again without the prompt.
                let bare = self.prompt_tokens(&[], false);
                let first = self.decode(&encoded, &bare, budget, 0.0, false)?;
                let again = self.decode_with_fallback(&encoded, &bare, budget, false, first)?;
                if self.is_silence(&again) || !self.echoes_prompt(&again, &prompt_tokens, seg_frames)? {
                    tracing::debug!(
                        "a window began with its prompt's last segment, and without the prompt it did not: an echo"
                    );
                    best = again;
                }
            }
            if self.is_silence(&best) {
                seek += seg_frames;
                continue;
            }
            let offset = seek as f32 / fps;
            let mut split = timeline::split(&best.ids, self.specials.timestamp_begin, self.specials.eot, seg_frames);
            self.drop_crammed_repeats(&mut split.segments, &prompt_tokens, seg_frames)?;
            let mut found = self.segments_of(&split.segments, offset)?;
            if pass.words && self.alignment_heads {
                self.add_words(&encoded, &split.segments, &mut found, seg_frames, offset)?;
            }
            if pass.settle && at_end {
                let ends: Vec<(f32, bool)> =
                    split.segments.iter().zip(&found).map(|(t, s)| (s.end, t.closed)).collect();
                let keep = timeline::settled(&ends, content as f32 / fps, SETTLE_MARGIN_SECS);
                let ends: Vec<f32> = found.iter().map(|s| s.end).collect();
                let pauses = voice.pauses(PAUSE_MIN_SECS, fps);
                let settled_frames = match timeline::cut_at_pause(&ends, keep, &pauses, PAUSE_TOLERANCE_SECS) {
                    Some((k, cut)) => {
                        found.truncate(k);
                        (cut * fps).round() as usize
                    }
                    None => {
                        found.clear();
                        seek
                    }
                };
                out.segments.extend(found.into_iter().filter(|s| !s.text.is_empty()));
                out.settled_samples = settled_frames.clamp(seek, content) * hop;
                return Ok(out);
            }
            if best.temperature > self.config.prompt_reset_on_temperature {
                prompt_tokens.clear();
            } else {
                let (eot, ts) = (self.specials.eot, self.specials.timestamp_begin);
                let raw = split.segments.iter().flat_map(|s| s.raw.iter().copied());
                prompt_tokens.extend(raw.filter(|&id| id < eot || id >= ts));
            }
            out.segments.extend(found.into_iter().filter(|s| !s.text.is_empty()));
            seek += split.advance;
        }
        // Everything was decoded (or was silence), including the samples
        // after the last whole mel frame, which no window can hold.
        out.settled_samples = if pass.settle { seek.min(content) * hop } else { pcm.len() };
        Ok(out)
    }

    /// The log-mel spectrogram of `pcm` followed by `window` frames of
    /// silence, as faster-whisper computes it: one spectrogram whose
    /// loudness normalisation is global, of which every window is a slice.
    /// More padding than the last window reads would change nothing but
    /// the cost: the loudest bin is in the audio.
    fn features(&self, pcm: &[f32], window: usize) -> LogMel {
        let pad = (window + 2) * self.front_end.hop_length();
        let mut padded = Vec::with_capacity(pcm.len() + pad);
        padded.extend_from_slice(pcm);
        padded.resize(pcm.len() + pad, 0.0);
        self.front_end.log_mel(&padded)
    }

    /// Encoder frames for a window holding `seg_frames` frames of audio:
    /// at least the floor, at most 30 s, and even (the encoder's first
    /// layer has stride 2).
    fn window_frames(&self, seg_frames: usize) -> usize {
        let max_frames = self.preprocessor.nb_max_frames;
        let hop = self.front_end.hop_length();
        let rate = self.preprocessor.sampling_rate as f32;
        let floor = (self.config.min_window_secs.max(0.0) * rate) as usize / hop;
        seg_frames.max(floor).div_ceil(2).saturating_mul(2).min(max_frames)
    }

    fn encode(&self, mut features: LogMel) -> Result<StorageView<'static>, SttError> {
        let shape = [1, features.n_mels, features.n_frames];
        let input = StorageView::new(&shape, &mut features.data, Device::CPU).map_err(inference)?;
        self.model.encode(&input, false).map_err(inference)
    }

    /// `<|startofprev|>` and the last text tokens said before, when there
    /// are any and the config conditions on them; then the start of
    /// transcript; `<|notimestamps|>` for a draft.
    fn prompt_tokens(&self, previous: &[u32], draft: bool) -> Vec<String> {
        let mut prompt = Vec::new();
        if self.config.condition_on_previous_text && !previous.is_empty() {
            prompt.push("<|startofprev|>".to_owned());
            let from = previous.len().saturating_sub(MAX_PROMPT_TOKENS);
            prompt.extend(previous[from..].iter().filter_map(|&id| self.token_string(id)));
        }
        prompt.extend(self.prompt.iter().map(|t| (*t).to_owned()));
        if draft {
            prompt.push("<|notimestamps|>".to_owned());
        }
        prompt
    }

    /// The vocabulary entry of `id`: timestamps are written `<|1.50|>`
    /// (tokenizer.json may not list them; CTranslate2's vocabulary does).
    fn token_string(&self, id: u32) -> Option<String> {
        if id >= self.specials.timestamp_begin {
            let secs = (id - self.specials.timestamp_begin) as f32 * TIME_PRECISION;
            return Some(format!("<|{secs:.2}|>"));
        }
        self.tokenizer.id_to_token(id)
    }

    /// The prompt tokens for `previous` segments, written as the long-form
    /// loop writes its own: `<|start|> text <|end|>` per segment, times
    /// counted from the start of the 30 s window the segment would have
    /// been decoded in. A prompt of bare text makes the decoder drop the
    /// timestamps (one segment over the whole window, never closed), so
    /// nothing could settle.
    fn previous_tokens(&self, previous: &[Segment]) -> Result<Vec<u32>, SttError> {
        // Only the last MAX_PROMPT_TOKENS are used: tokenize from the end.
        let mut texts = Vec::new();
        let mut count = 0;
        for segment in previous.iter().rev() {
            let tokens = self.text_tokens(&segment.text)?;
            if tokens.is_empty() {
                continue;
            }
            count += tokens.len() + 2;
            texts.push((segment, tokens));
            if count >= MAX_PROMPT_TOKENS {
                break;
            }
        }
        let max_step = (self.preprocessor.nb_max_frames / timeline::FRAMES_PER_STEP) as u32;
        let ts =
            |secs: f32| self.specials.timestamp_begin + ((secs.max(0.0) / TIME_PRECISION).round() as u32).min(max_step);
        let window = self.preprocessor.nb_max_frames as f32
            / (self.preprocessor.sampling_rate as f32 / self.front_end.hop_length() as f32);
        let mut out = Vec::with_capacity(count);
        let mut origin: Option<f32> = None;
        for (segment, tokens) in texts.into_iter().rev() {
            let o = match origin {
                Some(o) if segment.end - o <= window => o,
                _ => segment.start,
            };
            origin = Some(o);
            out.push(ts(segment.start - o));
            out.extend(tokens);
            out.push(ts(segment.end - o));
        }
        Ok(out)
    }

    /// The text tokens of `text` as Whisper writes them (with their leading
    /// space), for the prompt.
    fn text_tokens(&self, text: &str) -> Result<Vec<u32>, SttError> {
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let encoding = self
            .tokenizer
            .encode(format!(" {text}"), false)
            .map_err(|e| inference(format!("cannot tokenize the previous text: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Given `first`, the decode at temperature 0, decodes again at each
    /// fallback temperature while the hypothesis loops (compression ratio)
    /// or is improbable (average log-probability), unless it is silence. If
    /// every attempt fails, the most probable attempt that does not loop is
    /// kept (or the most probable of all). A draft is one greedy attempt.
    fn decode_with_fallback(
        &self,
        encoded: &StorageView,
        prompt: &[String],
        budget: usize,
        draft: bool,
        first: Hypothesis,
    ) -> Result<Hypothesis, SttError> {
        let fallbacks = if draft { &[][..] } else { &self.config.fallback_temperatures[..] };
        let mut failed: Vec<Hypothesis> = Vec::new();
        let mut first = Some(first);
        for temperature in std::iter::once(0.0).chain(fallbacks.iter().copied()) {
            let hypothesis = match first.take() {
                Some(h) => h,
                None => self.decode(encoded, prompt, budget, temperature, draft)?,
            };
            if !self.needs_fallback(&hypothesis) {
                return Ok(self.stop_runaway(hypothesis));
            }
            tracing::debug!(
                temperature,
                compression_ratio = hypothesis.compression_ratio,
                avg_logprob = hypothesis.avg_logprob,
                tokens = hypothesis.ids.len(),
                "Whisper hypothesis failed a quality check; decoding again hotter"
            );
            failed.push(hypothesis);
        }
        let threshold = self.config.compression_ratio_threshold;
        let by_logprob = |a: &&Hypothesis, b: &&Hypothesis| a.avg_logprob.total_cmp(&b.avg_logprob);
        let pick = failed
            .iter()
            .filter(|h| h.compression_ratio <= threshold)
            .max_by(by_logprob)
            .or_else(|| failed.iter().max_by(by_logprob))
            .map(|h| h.temperature);
        let index = failed.iter().position(|h| Some(h.temperature) == pick).unwrap_or(0);
        Ok(self.stop_runaway(failed.swap_remove(index)))
    }

    fn needs_fallback(&self, h: &Hypothesis) -> bool {
        let poor = h.compression_ratio > self.config.compression_ratio_threshold
            || h.avg_logprob < self.config.log_prob_threshold;
        poor && !self.is_silence(h)
    }

    /// Whether `h`'s first segment repeats the last segment of the prompt
    /// text `previous` ([`timeline::echoes`]).
    fn echoes_prompt(&self, h: &Hypothesis, previous: &[u32], seg_frames: usize) -> Result<bool, SttError> {
        let (ts, eot) = (self.specials.timestamp_begin, self.specials.eot);
        let last = timeline::last_segment(previous, ts, eot);
        if last.is_empty() {
            return Ok(false);
        }
        let split = timeline::split(&h.ids, ts, eot, seg_frames);
        let Some(first) = split.segments.first() else { return Ok(false) };
        Ok(timeline::echoes(&self.text_of(&last)?, &self.text_of(&first.tokens)?))
    }

    /// Drops a window's last segment when it repeats the text just before it
    /// in less time than it takes to say it ([`timeline::crammed_repeat`];
    /// see "Crammed repeats" in the module doc). Only a last segment that
    /// ends within [`CRAMMED_TAIL_SECS`] of the window's audio is looked at
    /// (where Whisper writes them), and "just before" is the two segments
    /// before it in the window, or the prompt's last segment where the
    /// window has fewer. `content_frames`: the window's mel frames of audio.
    fn drop_crammed_repeats(
        &self,
        segments: &mut Vec<timeline::TokenSegment>,
        previous: &[u32],
        content_frames: usize,
    ) -> Result<(), SttError> {
        let Some(last) = segments.last() else { return Ok(()) };
        let end_step = (content_frames / timeline::FRAMES_PER_STEP) as u32;
        let tail_steps = (CRAMMED_TAIL_SECS / TIME_PRECISION) as u32;
        if last.end + tail_steps < end_step {
            return Ok(());
        }
        let n = segments.len();
        let mut before = Vec::new();
        if n < 3 {
            let (ts, eot) = (self.specials.timestamp_begin, self.specials.eot);
            before.push(self.text_of(&timeline::last_segment(previous, ts, eot))?);
        }
        for s in &segments[n.saturating_sub(3)..n - 1] {
            before.push(self.text_of(&s.tokens)?);
        }
        let text = self.text_of(&last.tokens)?;
        let secs = last.end.saturating_sub(last.start) as f32 * TIME_PRECISION;
        if timeline::crammed_repeat(&before.join(" "), &text, secs) {
            tracing::debug!(secs, "Whisper wrote the text before again in too little time to say it; dropping it");
            segments.pop();
        }
        Ok(())
    }

    /// faster-whisper's no-speech rule: `<|nospeech|>` likely and the text improbable.
    fn is_silence(&self, h: &Hypothesis) -> bool {
        h.no_speech_prob > self.config.no_speech_threshold && h.avg_logprob < self.config.log_prob_threshold
    }

    /// Trims a runaway loop at the end of a hypothesis that used up its
    /// budget (see [`timeline::runaway_end`]); anything else is kept whole.
    fn stop_runaway(&self, mut h: Hypothesis) -> Hypothesis {
        if h.truncated
            && let Some(end) = timeline::runaway_end(&h.ids, 2)
        {
            tracing::warn!(tokens = h.ids.len(), kept = end, "Whisper ran away in a loop; keeping its first copy");
            h.ids.truncate(end);
            h.text = self.text_of(&h.ids).unwrap_or_default();
        }
        h
    }

    fn decode(
        &self,
        encoded: &StorageView,
        prompt: &[String],
        budget: usize,
        temperature: f32,
        draft: bool,
    ) -> Result<Hypothesis, SttError> {
        let options = self.options(budget + prompt.len(), temperature, draft);
        let result = self
            .model
            .generate(encoded, std::slice::from_ref(&prompt.to_vec()), &options)
            .map_err(inference)?
            .into_iter()
            .next()
            .ok_or_else(|| inference("CTranslate2 returned no result"))?;
        self.hypothesis(result, temperature, budget)
    }

    fn options(&self, max_length: usize, temperature: f32, draft: bool) -> WhisperOptions {
        let sampling = temperature > 0.0;
        WhisperOptions {
            beam_size: if sampling || draft { 1 } else { self.config.beam_size.max(1) },
            // topk 0 samples from the whole distribution; 1 is argmax.
            sampling_topk: if sampling { 0 } else { 1 },
            sampling_temperature: if sampling { temperature } else { 1.0 },
            num_hypotheses: if sampling { self.config.best_of.max(1) } else { 1 },
            max_length: max_length.min(MAX_TARGET_POSITIONS),
            return_scores: true,
            return_no_speech_prob: true,
            // Whisper's rule: the first timestamp within the first second.
            max_initial_timestamp_index: 50,
            suppress_blank: true,
            suppress_tokens: vec![-1],
            ..Default::default()
        }
    }

    /// The best sequence of one generation result and its figures.
    fn hypothesis(
        &self,
        result: sys::WhisperGenerationResult,
        temperature: f32,
        budget: usize,
    ) -> Result<Hypothesis, SttError> {
        let ids: Vec<u32> =
            result.sequences_ids.first().map_or_else(Vec::new, |ids| ids.iter().map(|&id| id as u32).collect());
        let text = self.text_of(&ids)?;
        // faster-whisper's average: the length-normalised score times the
        // length (length_penalty is 1), over the tokens plus the end token.
        let score = result.scores.first().copied().unwrap_or(0.0);
        let avg_logprob = score * ids.len() as f32 / (ids.len() + 1) as f32;
        Ok(Hypothesis {
            compression_ratio: compression_ratio(&text),
            truncated: ids.len() >= budget,
            text,
            ids,
            avg_logprob,
            no_speech_prob: result.no_speech_prob,
            temperature,
        })
    }

    /// The text of the text tokens among `ids`, trimmed.
    fn text_of(&self, ids: &[u32]) -> Result<String, SttError> {
        let text: Vec<u32> = ids.iter().copied().filter(|&id| id < self.specials.eot).collect();
        Ok(self
            .tokenizer
            .decode(&text, true)
            .map_err(|e| inference(format!("cannot decode tokens: {e}")))?
            .trim()
            .to_owned())
    }

    /// Timed segments from a window's token segments; `offset` is the
    /// window's start in seconds.
    fn segments_of(&self, split: &[timeline::TokenSegment], offset: f32) -> Result<Vec<Segment>, SttError> {
        split
            .iter()
            .map(|s| {
                Ok(Segment {
                    start: offset + s.start as f32 * TIME_PRECISION,
                    end: offset + s.end as f32 * TIME_PRECISION,
                    text: self.text_of(&s.tokens)?,
                    words: Vec::new(),
                })
            })
            .collect()
    }
}

/// Where the voice is, by mel frame, from earshot's 16 ms frames.
struct Voice {
    /// The first mel frame of each voiced VAD frame, in order.
    voiced: Vec<usize>,
}

impl Voice {
    fn of(pcm: &[f32], hop: usize) -> Self {
        let voiced = voiced_frames(pcm)
            .iter()
            .enumerate()
            .filter(|(_, v)| **v)
            .map(|(i, _)| i * crate::endpoint::VAD_FRAME / hop)
            .collect();
        Self { voiced }
    }

    /// The unvoiced stretches of at least `min_secs`, in seconds, in order
    /// (`fps` mel frames a second). The stretch after the last voiced frame
    /// is not one: the speaker may be drawing breath for the next word.
    fn pauses(&self, min_secs: f32, fps: f32) -> Vec<(f32, f32)> {
        let min = (min_secs * fps).ceil() as usize;
        let mut out = Vec::new();
        let mut previous_end = 0;
        for &start in &self.voiced {
            if start >= previous_end + min && previous_end > 0 {
                out.push((previous_end as f32 / fps, start as f32 / fps));
            }
            // A VAD frame (16 ms) spans the mel frame it starts in and the next.
            previous_end = previous_end.max(start + 2);
        }
        out
    }

    /// The first voiced mel frame in `from..to`, if any.
    fn first_from(&self, from: usize, to: usize) -> Option<usize> {
        // A VAD frame spans a little more than one mel frame; one that began
        // just before `from` still holds voice at `from`.
        let from_vad = from.saturating_sub(2);
        let i = self.voiced.partition_point(|&f| f < from_vad);
        self.voiced.get(i).copied().filter(|&f| f < to).map(|f| f.max(from))
    }
}

fn check_finite(pcm: &[f32]) -> Result<(), SttError> {
    match pcm.iter().position(|s| !s.is_finite()) {
        Some(index) => Err(SttError::InvalidAudio { index, value: pcm[index] }),
        None => Ok(()),
    }
}

/// Whisper's decoder context: 448 positions, prompt included.
const MAX_TARGET_POSITIONS: usize = 448;

impl WhisperCt2 {
    /// Transcribes the audio received so far of an utterance that goes on,
    /// after `previous` (the segments settled before it). Returns the
    /// settled segments, timed from the start of `pcm16k`, and how many
    /// samples of `pcm16k` they account for: the next call starts there.
    pub fn transcribe_settled(&self, pcm16k: &[f32], previous: &[Segment]) -> Result<(Vec<Segment>, usize), SttError> {
        let pass = Pass { previous, settle: true, ..Pass::default() };
        let decoded = self.long_form(pcm16k, pass)?;
        // Audio in the margin before the end may hold a word just begun.
        let hop = self.front_end.hop_length();
        let margin = (SETTLE_MARGIN_SECS * self.preprocessor.sampling_rate as f32) as usize;
        let cap = (pcm16k.len().saturating_sub(margin) / hop) * hop;
        // Never past the last settled segment's end, never into the margin
        // beyond it (silence there may be a word's start the VAD has not
        // confirmed yet).
        let rate = self.preprocessor.sampling_rate as f32;
        let last_end = decoded.segments.last().map_or(0, |s| ((s.end * rate) as usize / hop) * hop);
        let settled = decoded.settled_samples.min(cap.max(last_end));
        Ok((decoded.segments, settled))
    }

    /// Transcribes the rest of an utterance whose start was settled as
    /// `previous`: the final decode of a stream, over its tail only.
    pub fn transcribe_after(&self, pcm16k: &[f32], previous: &[Segment]) -> Result<Transcript, SttError> {
        self.transcript(pcm16k, Pass { previous, ..Pass::default() })
    }

    fn transcript(&self, pcm16k: &[f32], pass: Pass<'_>) -> Result<Transcript, SttError> {
        let started = Instant::now();
        let decoded = self.long_form(pcm16k, pass)?;
        let audio_secs = pcm16k.len() as f32 / self.preprocessor.sampling_rate as f32;
        Ok(Transcript::from_segments(decoded.segments, audio_secs, started.elapsed().as_secs_f32()))
    }
}

impl SpeechToText for WhisperCt2 {
    fn transcribe(&self, pcm16k: &[f32]) -> Result<Transcript, SttError> {
        self.transcript(pcm16k, Pass::default())
    }

    fn transcribe_with_words(&self, pcm16k: &[f32]) -> Result<Transcript, SttError> {
        self.transcript(pcm16k, Pass { words: true, ..Pass::default() })
    }

    /// One encoder batch and one beam search for up to [`MAX_BATCH`]
    /// utterances of the same window (see `run_batch`).
    fn transcribe_batch(&self, batch: &[&[f32]]) -> Vec<Result<Transcript, SttError>> {
        self.run_batch(batch)
    }

    /// Greedy search, no timestamps and no temperature fallback, for
    /// partials that the final decode replaces.
    fn transcribe_draft(&self, pcm16k: &[f32]) -> Result<Transcript, SttError> {
        let started = Instant::now();
        let mut t = self.transcript(pcm16k, Pass { draft: true, ..Pass::default() })?;
        // A draft is shown for a second and replaced; a loop in it is cut.
        if let Some(cut) = repetition_cut(&t.text) {
            t = Transcript::untimed(cut, t.audio_secs, started.elapsed().as_secs_f32());
        }
        Ok(t)
    }

    fn transcribe_settled(&self, pcm16k: &[f32], previous: &[Segment]) -> Result<(Vec<Segment>, usize), SttError> {
        WhisperCt2::transcribe_settled(self, pcm16k, previous)
    }

    fn transcribe_after(&self, pcm16k: &[f32], previous: &[Segment]) -> Result<Transcript, SttError> {
        WhisperCt2::transcribe_after(self, pcm16k, previous)
    }

    fn is_local(&self) -> bool {
        true
    }

    fn name(&self) -> &str {
        "whisper-ct2"
    }
}

/// Most utterances transcribed in one batch.
pub const MAX_BATCH: usize = 4;

impl WhisperCt2 {
    /// Transcribes several utterances at once (`SpeechToText::transcribe_batch`),
    /// as one encoder batch and one beam search over all of them, which keeps
    /// both cores busier than a single short utterance does. Utterances batch
    /// together when each fits one window of the same length (everything up
    /// to the window floor, 10 s by default) and has voice from its start.
    /// An item whose hypothesis fails a quality check, or whose window left
    /// audio undecoded, is transcribed on its own as
    /// [`SpeechToText::transcribe`] would. Results are in input order.
    fn run_batch(&self, batch: &[&[f32]]) -> Vec<Result<Transcript, SttError>> {
        let started = Instant::now();
        let one_by_one = || batch.iter().map(|pcm| self.transcribe(pcm)).collect();
        if batch.len() < 2 || batch.len() > MAX_BATCH {
            return one_by_one();
        }
        let hop = self.front_end.hop_length();
        let content: Vec<usize> = batch.iter().map(|pcm| pcm.len() / hop).collect();
        let windows: Vec<usize> = content.iter().map(|&c| self.window_frames(c)).collect();
        let batchable = content.iter().all(|&c| c > 0 && c <= self.preprocessor.nb_max_frames)
            && windows.iter().all(|&w| w == windows[0])
            && batch.iter().all(|pcm| check_finite(pcm).is_ok() && self.decodes_from_the_start(pcm));
        if !batchable {
            return one_by_one();
        }
        match self.batch_windows(batch, &content, windows[0]) {
            Ok(found) => found
                .into_iter()
                .zip(batch)
                .map(|(segments, pcm)| match segments {
                    Some(segments) => Ok(Transcript::from_segments(
                        segments,
                        pcm.len() as f32 / self.preprocessor.sampling_rate as f32,
                        started.elapsed().as_secs_f32(),
                    )),
                    None => self.transcribe(pcm),
                })
                .collect(),
            Err(e) => {
                // One bad item must not fail the others: each on its own.
                tracing::warn!(error = %e, "batched transcription failed; transcribing one by one");
                one_by_one()
            }
        }
    }

    /// Whether the long-form loop would start `pcm`'s first window at its
    /// start: it holds voice, and no second of silence comes first. Only
    /// such utterances batch, so a batch decodes what `transcribe` would.
    fn decodes_from_the_start(&self, pcm: &[f32]) -> bool {
        let hop = self.front_end.hop_length();
        let fps = self.preprocessor.sampling_rate as f32 / hop as f32;
        Voice::of(pcm, hop)
            .first_from(0, pcm.len() / hop)
            .is_some_and(|first| first < (VAD_MIN_SKIP_SECS * fps) as usize)
    }

    /// The batch's segments; `None` for an item to decode on its own.
    fn batch_windows(
        &self,
        batch: &[&[f32]],
        content: &[usize],
        window: usize,
    ) -> Result<Vec<Option<Vec<Segment>>>, SttError> {
        let hop = self.front_end.hop_length();
        let mut data = Vec::new();
        let mut n_mels = 0;
        for pcm in batch {
            let mut padded = pcm.to_vec();
            padded.resize((window + 2) * hop, 0.0);
            let features = self.front_end.log_mel(&padded).frames(0, window);
            n_mels = features.n_mels;
            data.extend_from_slice(&features.data);
        }
        let shape = [batch.len(), n_mels, window];
        let input = StorageView::new(&shape, &mut data, Device::CPU).map_err(inference)?;
        let encoded = self.model.encode(&input, false).map_err(inference)?;
        let fps = self.preprocessor.sampling_rate as f32 / hop as f32;
        let budget =
            content.iter().map(|&c| max_length_for(c as f32 / fps, self.config.max_tokens_per_sec)).max().unwrap_or(1);
        let prompt = self.prompt_tokens(&[], false);
        let prompts = vec![prompt.clone(); batch.len()];
        let options = self.options(budget + prompt.len(), 0.0, false);
        let results = self.model.generate(&encoded, &prompts, &options).map_err(inference)?;
        if results.len() != batch.len() {
            return Err(inference("CTranslate2 returned a result per batch item, but not as many"));
        }
        results
            .into_iter()
            .zip(content)
            .map(|(result, &frames)| {
                let h = self.hypothesis(result, 0.0, budget)?;
                if self.is_silence(&h) {
                    return Ok(Some(Vec::new()));
                }
                let split = timeline::split(&h.ids, self.specials.timestamp_begin, self.specials.eot, frames);
                if self.needs_fallback(&h) || h.truncated || split.advance < frames {
                    return Ok(None);
                }
                let segments = self.segments_of(&split.segments, 0.0)?;
                Ok(Some(segments.into_iter().filter(|s| !s.text.is_empty()).collect()))
            })
            .collect()
    }
}

fn inference(e: impl std::fmt::Display) -> SttError {
    SttError::Inference { message: format!("{e:#}") }
}
