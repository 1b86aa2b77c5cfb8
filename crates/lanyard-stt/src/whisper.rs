//! Whisper through CTranslate2 (`ct2rs::sys::Whisper`), tuned for short utterances.
//!
//! # Why the low-level binding
//!
//! ct2rs's high-level `Whisper` always pads to a 30 s window, always builds a
//! multilingual prompt (wrong for `.en` models), and computes features with an
//! uncentred STFT. This module drives `ct2rs::sys::Whisper` directly: features
//! come from [`crate::mel`], the prompt is chosen per model, and the encoder
//! sees a window sized to the audio.
//!
//! # Why a trimmed window, and why a floor under it
//!
//! Whisper was trained on 30 s windows, and the standard recipe pads every
//! utterance to 3000 frames. Encoder cost grows with the window: on the
//! project's 2-core box tiny.en encodes 30 s in 1.0–1.5 s but 10 s in 0.19 s.
//! The pendant sends single utterances of a few seconds, so the full pad is
//! mostly wasted time.
//!
//! Trimming to exactly the speech, though, makes the decoder loop: with no
//! silence after the last word it never predicts the end and repeats the
//! sentence until `max_length`. A little trailing silence stops the loops but
//! garbles the last words of ~3 s utterances. So the audio is padded with
//! silence (zeros before the log-mel, exactly what Whisper's own 30 s pad is)
//! up to a floor, [`WhisperConfig::min_window_secs`], default
//! [`DEFAULT_MIN_WINDOW_SECS`], and never beyond Whisper's 30 s. Longer input
//! is cut into consecutive 30 s windows (the last one padded to the floor)
//! whose texts are joined with spaces; a word straddling a cut may be lost,
//! which is acceptable for a wearable that sends utterances, not hours.
//!
//! # The prompt
//!
//! English-only (`.en`) models were trained without language and task tokens,
//! so their prompt is `<|startoftranscript|><|notimestamps|>`; feeding them
//! `<|en|><|transcribe|>` (ct2rs's default) confuses them. Multilingual models
//! get `<|startoftranscript|><|en|><|transcribe|><|notimestamps|>`: lanyard
//! transcribes English, and forcing the language skips a detection pass.
//!
//! # Guards against runaway decoding
//!
//! Described in [`crate::guards`]: `max_length` bounded by the speech
//! duration; a sentence repeated back to back is cut after its first copy;
//! a hypothesis whose zlib compression ratio exceeds
//! [`WhisperConfig::compression_ratio_threshold`] (faster-whisper's 2.4) is
//! retried by sampling at [`WhisperConfig::fallback_temperatures`], keeping
//! the least repetitive attempt if all fail. Two more, from faster-whisper:
//!
//! - the no-speech rule: when the model's `<|nospeech|>`
//!   probability is high *and* the text is improbable, the window is silence
//!   and yields no text (Whisper otherwise "hears" "you" or "Thank you.").
//!   Lanyard adds that a near-certain `<|nospeech|>` alone suffices
//!   ([`WhisperConfig::certain_no_speech_threshold`]).
//! - `suppress_blank` and `suppress_tokens = [-1]`, as faster-whisper passes them: CTranslate2 expands −1 to
//!   the `suppress_ids` of the model's `config.json` (Whisper's standard
//!   non-speech symbols) and suppresses `suppress_ids_begin` at the first step,
//!   which works for any faster-whisper model directory.
//!
//! # Sharing
//!
//! [`WhisperCt2`] is loaded once and is `Send + Sync`: CTranslate2 queues
//! concurrent requests on its replica, and the front end uses per-call
//! buffers, so an `Arc<WhisperCt2>` can serve every connection.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ct2rs::sys::{self, ComputeType, Device, StorageView, WhisperOptions};

use crate::guards::{compression_ratio, max_length_for, repetition_cut};
use crate::mel::MelFrontEnd;
use crate::preprocessor::{PreprocessorConfig, ensure_preprocessor_config_with};
use crate::{SpeechToText, SttError, Transcript};

/// The default floor under the encoder window, in seconds. 10 s encodes in
/// about 0.19 s on the project box (30 s: 1.0–1.5 s) and gave the same word
/// error rate as the full 30 s window on 30 synthesised sentences (9.1 % at
/// beam 5); shorter floors made tiny.en repeat sentences (6 s) or loop and
/// garble endings (4 s and less).
pub const DEFAULT_MIN_WINDOW_SECS: f32 = 10.0;

/// Files every CTranslate2 Whisper export has; checked up front so that a
/// wrong directory gives a clear error instead of a C++ exception.
const REQUIRED_FILES: [&str; 3] = ["model.bin", "config.json", "tokenizer.json"];

/// How the Whisper model is run. `Default` gives the tuned values documented
/// on each field.
#[derive(Clone, Debug, PartialEq)]
pub struct WhisperConfig {
    /// CTranslate2 intra-op threads. Default: every available core, because
    /// the server transcribes one utterance at a time and latency is what the
    /// wearer notices.
    pub threads: usize,
    /// Shortest encoder window in seconds: shorter audio is padded with
    /// trailing silence up to this length (see the module doc for why).
    /// Default [`DEFAULT_MIN_WINDOW_SECS`]; values above 30 act as 30.
    pub min_window_secs: f32,
    /// Beam width of the first decoding attempt; 1 is greedy search.
    /// Default 5, as faster-whisper: on 30 synthesised sentences
    /// (`examples/window_sweep.rs`) beam 5 gave 9.1 % WER against greedy's
    /// 15.2 %, at either window; the window floor made no difference.
    pub beam_size: usize,
    /// Token budget per second of speech, for `max_length`. Default 8:
    /// fast English is about 4 words, 5–6 tokens, per second.
    pub max_tokens_per_sec: f32,
    /// Hypotheses whose zlib compression ratio exceeds this are treated as
    /// loops and retried. Default 2.4, faster-whisper's value.
    pub compression_ratio_threshold: f32,
    /// Sampling temperatures tried, in order, after a looping hypothesis.
    /// Default `[0.4, 0.8]`: faster-whisper's six steps from 0.2 to 1.0
    /// would let one looping window cost six decodes on a 2-core box.
    pub fallback_temperatures: Vec<f32>,
    /// A window whose `<|nospeech|>` probability is above this *and* whose
    /// average log-probability is below [`Self::log_prob_threshold`] is
    /// silence. Default 0.6 (faster-whisper); 1.0 disables the rule.
    pub no_speech_threshold: f32,
    /// See [`Self::no_speech_threshold`]. Default −1.0 (faster-whisper).
    pub log_prob_threshold: f32,
    /// A window whose `<|nospeech|>` probability is above this is silence,
    /// however confident the text. Default 0.95, a lanyard addition:
    /// faster-whisper's rule alone lets tiny.en turn 3 s of digital silence
    /// into "you" (no-speech probability 0.987, average log-probability
    /// −0.67), while the test sentences scored at most 0.12.
    pub certain_no_speech_threshold: f32,
}

impl Default for WhisperConfig {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            min_window_secs: DEFAULT_MIN_WINDOW_SECS,
            beam_size: 5,
            max_tokens_per_sec: 8.0,
            compression_ratio_threshold: 2.4,
            fallback_temperatures: vec![0.4, 0.8],
            no_speech_threshold: 0.6,
            log_prob_threshold: -1.0,
            certain_no_speech_threshold: 0.95,
        }
    }
}

/// A Whisper model in CTranslate2 format (any faster-whisper model directory).
pub struct WhisperCt2 {
    model: sys::Whisper,
    tokenizer: tokenizers::Tokenizer,
    front_end: MelFrontEnd,
    preprocessor: PreprocessorConfig,
    /// Decoder prompt, chosen once from `is_multilingual()`.
    prompt: Vec<&'static str>,
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
            return Err(SttError::ModelDirMissing {
                dir: dir.to_path_buf(),
            });
        }
        for file in REQUIRED_FILES {
            if !dir.join(file).is_file() {
                return Err(SttError::ModelFileMissing {
                    dir: dir.to_path_buf(),
                    file,
                });
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
        let model = sys::Whisper::new(dir, ct2_config).map_err(|e| SttError::ModelLoad {
            dir: dir.to_path_buf(),
            message: format!("{e:#}"),
        })?;

        // A missing file gets the model's own mel count, so large-v3 (128 bins) works too.
        let defaults = PreprocessorConfig {
            feature_size: model.n_mels(),
            ..PreprocessorConfig::WHISPER
        };
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
        let tokenizer =
            tokenizers::Tokenizer::from_file(&tokenizer_path).map_err(|e| SttError::Tokenizer {
                path: tokenizer_path.clone(),
                message: e.to_string(),
            })?;
        let prompt = if model.is_multilingual() {
            vec![
                "<|startoftranscript|>",
                "<|en|>",
                "<|transcribe|>",
                "<|notimestamps|>",
            ]
        } else {
            vec!["<|startoftranscript|>", "<|notimestamps|>"]
        };
        if let Some(missing) = prompt.iter().find(|t| tokenizer.token_to_id(t).is_none()) {
            return Err(SttError::Tokenizer {
                path: tokenizer_path,
                message: format!("it has no {missing} token"),
            });
        }

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
            config,
            dir: dir.to_path_buf(),
        })
    }

    /// The directory the model was loaded from.
    pub fn model_dir(&self) -> &Path {
        &self.dir
    }

    /// The settings this model runs with.
    pub fn config(&self) -> &WhisperConfig {
        &self.config
    }

    /// Encodes one window and decodes it, with the loop and silence guards.
    fn transcribe_window(
        &self,
        mut features: crate::mel::LogMel,
        speech_secs: f32,
        mode: &Mode,
    ) -> Result<String, SttError> {
        let started = Instant::now();
        let shape = [1, features.n_mels, features.n_frames];
        let input = StorageView::new(&shape, &mut features.data, Device::CPU).map_err(inference)?;
        let encoded = self.model.encode(&input, false).map_err(inference)?;
        let encode_secs = started.elapsed().as_secs_f32();

        let max_length = max_length_for(speech_secs, self.config.max_tokens_per_sec);
        let hypothesis = self.decode_with_fallback(&encoded, max_length, mode)?;
        tracing::debug!(
            frames = features.n_frames,
            speech_secs,
            encode_secs,
            decode_secs = started.elapsed().as_secs_f32() - encode_secs,
            max_length,
            tokens = hypothesis.tokens,
            temperature = hypothesis.temperature,
            compression_ratio = hypothesis.compression_ratio,
            avg_logprob = hypothesis.avg_logprob,
            no_speech_prob = hypothesis.no_speech_prob,
            "transcribed window"
        );

        let no_speech = hypothesis.no_speech_prob;
        let silent = no_speech > self.config.certain_no_speech_threshold
            || (no_speech > self.config.no_speech_threshold
                && hypothesis.avg_logprob < self.config.log_prob_threshold);
        Ok(if silent {
            String::new()
        } else {
            // CTranslate2 returns the forced prefix with the rest.
            hypothesis.text
        })
    }

    /// Greedy or beam decoding first, then sampling at each fallback
    /// temperature while the text still compresses like a loop; if every
    /// attempt does, the least repetitive one. Each attempt's back-to-back
    /// repetitions are cut before it is judged. A draft is one greedy
    /// attempt: it is replaced seconds later, and a loop in it is cut like
    /// any other.
    fn decode_with_fallback(
        &self,
        encoded: &StorageView,
        max_length: usize,
        mode: &Mode,
    ) -> Result<Hypothesis, SttError> {
        let mut best: Option<Hypothesis> = None;
        let fallbacks = if mode.draft { &[][..] } else { &self.config.fallback_temperatures[..] };
        for temperature in std::iter::once(0.0).chain(fallbacks.iter().copied()) {
            let mut hypothesis = self.decode(encoded, max_length, temperature, mode)?;
            if let Some(cut) = repetition_cut(&hypothesis.text) {
                tracing::warn!(text = %hypothesis.text, kept = %cut, "Whisper repeated itself; keeping the first copy");
                hypothesis.compression_ratio = compression_ratio(&cut);
                hypothesis.text = cut;
            }
            if hypothesis.compression_ratio <= self.config.compression_ratio_threshold {
                return Ok(hypothesis);
            }
            tracing::warn!(
                temperature,
                compression_ratio = hypothesis.compression_ratio,
                text = %hypothesis.text,
                "Whisper hypothesis compresses like a loop; retrying"
            );
            if best
                .as_ref()
                .is_none_or(|b| hypothesis.compression_ratio < b.compression_ratio)
            {
                best = Some(hypothesis);
            }
        }
        Ok(best.expect("at least one attempt was made"))
    }

    fn decode(
        &self,
        encoded: &StorageView,
        max_length: usize,
        temperature: f32,
        mode: &Mode,
    ) -> Result<Hypothesis, SttError> {
        let options = self.options(max_length, temperature, mode);
        let result = self
            .model
            .generate(encoded, std::slice::from_ref(&mode.prompt(&self.prompt)), &options)
            .map_err(inference)?
            .into_iter()
            .next()
            .ok_or_else(|| inference("CTranslate2 returned no result"))?;
        self.hypothesis(result, temperature)
    }

    fn options(&self, max_length: usize, temperature: f32, mode: &Mode) -> WhisperOptions {
        let sampling = temperature > 0.0;
        WhisperOptions {
            beam_size: if sampling || mode.draft {
                1
            } else {
                self.config.beam_size.max(1)
            },
            // topk 0 samples from the whole distribution; 1 is argmax.
            sampling_topk: if sampling { 0 } else { 1 },
            sampling_temperature: if sampling { temperature } else { 1.0 },
            // Room for the forced prefix too, whether or not CTranslate2
            // counts the prompt in the length.
            max_length: (max_length + mode.prefix.len()).min(MAX_TARGET_POSITIONS),
            num_hypotheses: 1,
            return_scores: true,
            return_no_speech_prob: true,
            suppress_blank: true,
            suppress_tokens: vec![-1],
            ..Default::default()
        }
    }

    /// The text and guard figures of one generation result.
    fn hypothesis(&self, result: sys::WhisperGenerationResult, temperature: f32) -> Result<Hypothesis, SttError> {
        let ids: Vec<u32> = result
            .sequences_ids
            .first()
            .map_or_else(Vec::new, |ids| ids.iter().map(|&id| id as u32).collect());
        let text = self
            .tokenizer
            .decode(&ids, true)
            .map_err(|e| inference(format!("cannot decode tokens: {e}")))?
            .trim()
            .to_owned();
        // faster-whisper's average: the length-normalised score times the
        // length (length_penalty is 1), over the tokens plus the end token.
        let score = result.scores.first().copied().unwrap_or(0.0);
        let avg_logprob = score * ids.len() as f32 / (ids.len() + 1) as f32;
        Ok(Hypothesis {
            compression_ratio: compression_ratio(&text),
            text,
            tokens: ids.len(),
            avg_logprob,
            no_speech_prob: result.no_speech_prob,
            temperature,
        })
    }
}

impl SpeechToText for WhisperCt2 {
    fn transcribe(&self, pcm16k: &[f32]) -> Result<Transcript, SttError> {
        self.run(pcm16k, false, "")
    }

    /// Forces `prefix` as the start of the text (the words the partials
    /// already agreed on) and decodes only the rest, so the final does not
    /// start over. Audio longer than one window ignores the prefix.
    fn transcribe_with_prefix(&self, pcm16k: &[f32], prefix: &str) -> Result<Transcript, SttError> {
        self.run(pcm16k, false, prefix)
    }

    /// One encoder batch and one beam search for up to [`MAX_BATCH`]
    /// utterances of the same window (see `run_batch`).
    fn transcribe_batch(&self, batch: &[&[f32]]) -> Vec<Result<Transcript, SttError>> {
        self.run_batch(batch)
    }

    /// Greedy search and no temperature fallback, for partials that the
    /// final decode replaces.
    fn transcribe_draft(&self, pcm16k: &[f32]) -> Result<Transcript, SttError> {
        self.run(pcm16k, true, "")
    }

    fn is_local(&self) -> bool {
        true
    }

    fn name(&self) -> &str {
        "whisper-ct2"
    }
}

impl WhisperCt2 {
    fn run(&self, pcm16k: &[f32], draft: bool, prefix: &str) -> Result<Transcript, SttError> {
        let started = Instant::now();
        if let Some(index) = pcm16k.iter().position(|s| !s.is_finite()) {
            return Err(SttError::InvalidAudio {
                index,
                value: pcm16k[index],
            });
        }
        let rate = self.preprocessor.sampling_rate as f32;
        let audio_secs = pcm16k.len() as f32 / rate;

        let hop = self.front_end.hop_length();
        let min_window = (self.config.min_window_secs.max(0.0) * rate) as usize;
        let windows = plan_windows(
            pcm16k.len(),
            min_window,
            self.preprocessor.max_window_samples(),
            hop,
        );

        // One spectrogram over the whole (padded) input, as Whisper computes
        // it, so the loudness normalisation is global; windows are slices.
        let padded_len = windows.last().map_or(0, |w| w.start + w.len);
        let mut padded = pcm16k.to_vec();
        padded.resize(padded_len, 0.0);
        let features = self.front_end.log_mel(&padded);

        let mut texts = Vec::with_capacity(windows.len());
        for window in &windows {
            let frames = features.frames(window.start / hop, (window.start + window.len) / hop);
            let mode = if windows.len() == 1 { self.mode(draft, prefix)? } else { self.mode(draft, "")? };
            let text = self.transcribe_window(frames, window.speech as f32 / rate, &mode)?;
            if !text.is_empty() {
                texts.push(text);
            }
        }

        Ok(Transcript::untimed(texts.join(" "), audio_secs, started.elapsed().as_secs_f32()))
    }
}

/// Whisper's decoder context: 448 positions, prompt included.
const MAX_TARGET_POSITIONS: usize = 448;

/// How one window is decoded.
struct Mode {
    /// Greedy, no fallback (a partial's draft).
    draft: bool,
    /// Tokens forced after the prompt.
    prefix: Vec<String>,
}

impl Mode {
    fn prompt(&self, base: &[&'static str]) -> Vec<String> {
        base.iter().map(|t| (*t).to_owned()).chain(self.prefix.iter().cloned()).collect()
    }
}

/// Most utterances transcribed in one batch.
pub const MAX_BATCH: usize = 4;

impl WhisperCt2 {
    /// Transcribes several utterances at once (`SpeechToText::transcribe_batch`), as one encoder batch and one
    /// beam search over all of them, which keeps both cores busier than a
    /// single short utterance does. Utterances batch together when each fits
    /// one encoder window and the windows have the same length (everything
    /// up to the window floor, 10 s by default); otherwise, or for a
    /// hypothesis the loop guard rejects, they are transcribed one by one as
    /// [`SpeechToText::transcribe`] would. Results are in input order and
    /// equal to that method's, up to floating-point summation order.
    fn run_batch(&self, batch: &[&[f32]]) -> Vec<Result<Transcript, SttError>> {
        let started = Instant::now();
        let one_by_one = || batch.iter().map(|pcm| self.transcribe(pcm)).collect();
        if batch.len() < 2 || batch.len() > MAX_BATCH {
            return one_by_one();
        }
        let rate = self.preprocessor.sampling_rate as f32;
        let hop = self.front_end.hop_length();
        let min_window = (self.config.min_window_secs.max(0.0) * rate) as usize;
        let plans: Vec<Vec<Window>> = batch
            .iter()
            .map(|pcm| plan_windows(pcm.len(), min_window, self.preprocessor.max_window_samples(), hop))
            .collect();
        let Some(len) = plans.first().and_then(|p| p.first()).map(|w| w.len) else { return one_by_one() };
        let batchable = plans.iter().all(|p| p.len() == 1 && p[0].len == len)
            && batch.iter().all(|pcm| pcm.iter().all(|s| s.is_finite()));
        if !batchable {
            return one_by_one();
        }
        match self.batch_windows(batch, &plans, len) {
            Ok(texts) => texts
                .into_iter()
                .zip(batch)
                .map(|(text, pcm)| match text {
                    Some(text) => Ok(Transcript::untimed(text, pcm.len() as f32 / rate, started.elapsed().as_secs_f32())),
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

    /// The batch's texts; `None` for one the loop guard rejected.
    fn batch_windows(&self, batch: &[&[f32]], plans: &[Vec<Window>], len: usize) -> Result<Vec<Option<String>>, SttError> {
        let hop = self.front_end.hop_length();
        let rate = self.preprocessor.sampling_rate as f32;
        let mut data = Vec::new();
        let (mut n_mels, mut n_frames) = (0, 0);
        for pcm in batch {
            let mut padded = pcm.to_vec();
            padded.resize(len, 0.0);
            let features = self.front_end.log_mel(&padded).frames(0, len / hop);
            (n_mels, n_frames) = (features.n_mels, features.n_frames);
            data.extend_from_slice(&features.data);
        }
        let shape = [batch.len(), n_mels, n_frames];
        let input = StorageView::new(&shape, &mut data, Device::CPU).map_err(inference)?;
        let encoded = self.model.encode(&input, false).map_err(inference)?;
        let max_length = plans
            .iter()
            .map(|p| max_length_for(p[0].speech as f32 / rate, self.config.max_tokens_per_sec))
            .max()
            .unwrap_or(1);
        let mode = Mode { draft: false, prefix: Vec::new() };
        let prompts = vec![mode.prompt(&self.prompt); batch.len()];
        let results = self.model.generate(&encoded, &prompts, &self.options(max_length, 0.0, &mode)).map_err(inference)?;
        if results.len() != batch.len() {
            return Err(inference("CTranslate2 returned a result per batch item, but not as many"));
        }
        results
            .into_iter()
            .map(|result| {
                let mut h = self.hypothesis(result, 0.0)?;
                if let Some(cut) = repetition_cut(&h.text) {
                    h.compression_ratio = compression_ratio(&cut);
                    h.text = cut;
                }
                if h.compression_ratio > self.config.compression_ratio_threshold {
                    return Ok(None);
                }
                let silent = h.no_speech_prob > self.config.certain_no_speech_threshold
                    || (h.no_speech_prob > self.config.no_speech_threshold && h.avg_logprob < self.config.log_prob_threshold);
                Ok(Some(if silent { String::new() } else { h.text }))
            })
            .collect()
    }

    fn mode(&self, draft: bool, prefix: &str) -> Result<Mode, SttError> {
        let prefix_text = prefix.split_whitespace().collect::<Vec<_>>().join(" ");
        if prefix_text.is_empty() {
            return Ok(Mode { draft, prefix: Vec::new() });
        }
        // Whisper's text tokens carry their leading space.
        let encoding = self
            .tokenizer
            .encode(format!(" {prefix_text}"), false)
            .map_err(|e| inference(format!("cannot tokenize the prefix: {e}")))?;
        let prefix: Vec<String> = encoding.get_tokens().to_vec();
        if prefix.len() + self.prompt.len() >= MAX_TARGET_POSITIONS / 2 {
            // Too long to leave the decoder room: decode everything.
            return Ok(Mode { draft, prefix: Vec::new() });
        }
        Ok(Mode { draft, prefix })
    }
}

/// One decoding attempt and the numbers the guards look at.
#[derive(Debug)]
struct Hypothesis {
    text: String,
    tokens: usize,
    compression_ratio: f32,
    avg_logprob: f32,
    no_speech_prob: f32,
    temperature: f32,
}

/// One encoder input: `speech` samples of audio from `start`, followed by
/// `len - speech` samples of silence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    start: usize,
    speech: usize,
    len: usize,
}

/// Splits `n` samples into consecutive windows of at most `max_window`
/// samples, padding the last up to `min_window`. Lengths are rounded up to
/// an even number of frames (the encoder's first layer has stride 2) and
/// never exceed `max_window`.
fn plan_windows(n: usize, min_window: usize, max_window: usize, hop: usize) -> Vec<Window> {
    let step = 2 * hop;
    (0..n)
        .step_by(max_window)
        .map(|start| {
            let speech = (n - start).min(max_window);
            let len = speech.max(min_window).div_ceil(step) * step;
            Window {
                start,
                speech,
                len: len.min(max_window),
            }
        })
        .collect()
}

fn inference(e: impl std::fmt::Display) -> SttError {
    SttError::Inference {
        message: format!("{e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOP: usize = 160;
    const MAX: usize = 480_000;
    const MIN: usize = 160_000;

    #[test]
    fn short_audio_is_padded_to_the_floor() {
        assert_eq!(
            plan_windows(48_000, MIN, MAX, HOP),
            vec![Window {
                start: 0,
                speech: 48_000,
                len: MIN
            }]
        );
    }

    #[test]
    fn audio_above_the_floor_is_rounded_to_an_even_frame_count() {
        let w = plan_windows(200_001, MIN, MAX, HOP);
        assert_eq!(
            w,
            vec![Window {
                start: 0,
                speech: 200_001,
                len: 200_320
            }]
        );
        assert_eq!(w[0].len / HOP % 2, 0);
    }

    #[test]
    fn long_audio_is_split_into_30_s_windows() {
        let w = plan_windows(MAX + 32_000, MIN, MAX, HOP);
        assert_eq!(
            w,
            vec![
                Window {
                    start: 0,
                    speech: MAX,
                    len: MAX
                },
                Window {
                    start: MAX,
                    speech: 32_000,
                    len: MIN
                },
            ]
        );
    }

    #[test]
    fn the_floor_never_exceeds_30_s() {
        assert_eq!(plan_windows(1000, 10 * MAX, MAX, HOP)[0].len, MAX);
        assert!(plan_windows(0, MIN, MAX, HOP).is_empty());
    }
}
