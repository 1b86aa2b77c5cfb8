//! Whisper's log-mel front end, written here rather than borrowed.
//!
//! The model was trained on features from one exact recipe, and small
//! departures (a symmetric window, a missing centre pad, HTK mel spacing)
//! cost accuracy without any error to point at. ct2rs's own front end feeds
//! audio through a streaming STFT that does not centre the frames, so this
//! module reproduces OpenAI Whisper / faster-whisper step by step:
//!
//! 1. periodic Hann window of `n_fft` (400) samples;
//! 2. centred STFT: the signal is reflect-padded by `n_fft / 2` on both sides,
//!    frames every `hop_length` (160) samples;
//! 3. the last frame is dropped, so `N` samples give `N / hop_length` frames
//!    (30 s give exactly 3000);
//! 4. power spectrum `|X|²`;
//! 5. Slaney-style mel filterbank (librosa `htk=False, norm="slaney"`,
//!    0 Hz to Nyquist);
//! 6. `log10(max(x, 1e-10))`, clamped from below at the global maximum − 8
//!    (an 80 dB dynamic range), then mapped by `(x + 4) / 4`.
//!
//! `testdata/mel_golden.json` holds reference numbers from an independent
//! numpy implementation (`testdata/make_mel_golden.py`); the unit tests here
//! compare against it.
//!
//! The output is laid out `[n_mels][n_frames]`, row-major, which is the
//! `[batch = 1, n_mels, frames]` layout CTranslate2's encoder takes.

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

use crate::PreprocessorConfig;

/// Floor inside the logarithm, so silent bins give −10 rather than −∞.
const LOG_FLOOR: f32 = 1e-10;

/// Dynamic range kept below the loudest bin, in log10 units (80 dB).
const DYNAMIC_RANGE: f32 = 8.0;

/// Log-mel features of one stretch of audio.
#[derive(Clone, Debug, PartialEq)]
pub struct LogMel {
    /// Number of mel bins (rows).
    pub n_mels: usize,
    /// Number of 10 ms frames (columns).
    pub n_frames: usize,
    /// `n_mels × n_frames` values, row-major (one row per mel bin).
    pub data: Vec<f32>,
}

impl LogMel {
    /// The columns `start..end` as a new, contiguous block: one encoder window.
    pub fn frames(&self, start: usize, end: usize) -> LogMel {
        assert!(start <= end && end <= self.n_frames, "frame range out of bounds");
        let n_frames = end - start;
        let mut data = Vec::with_capacity(self.n_mels * n_frames);
        for row in self.data.chunks_exact(self.n_frames.max(1)).take(self.n_mels) {
            data.extend_from_slice(&row[start..end]);
        }
        LogMel { n_mels: self.n_mels, n_frames, data }
    }
}

/// One mel filter, stored as its non-zero stretch of FFT bins: each filter is
/// a narrow triangle, so this skips about 95 % of the multiply-adds.
#[derive(Clone, Debug)]
struct MelFilter {
    first_bin: usize,
    weights: Vec<f32>,
}

/// A reusable front end: window, FFT plan and filterbank are built once per model.
#[derive(Clone)]
pub struct MelFrontEnd {
    n_fft: usize,
    hop_length: usize,
    window: Vec<f32>,
    filters: Vec<MelFilter>,
    /// The plan is immutable and `Send + Sync`; per-call scratch buffers keep
    /// the front end usable from many threads at once.
    fft: Arc<dyn RealToComplex<f32>>,
}

impl std::fmt::Debug for MelFrontEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MelFrontEnd")
            .field("n_fft", &self.n_fft)
            .field("hop_length", &self.hop_length)
            .field("n_mels", &self.filters.len())
            .finish()
    }
}

impl MelFrontEnd {
    /// Builds the front end described by a model's preprocessor config.
    pub fn new(config: &PreprocessorConfig) -> Self {
        let n_fft = config.n_fft;
        let bank = mel_filterbank(config.sampling_rate, n_fft, config.feature_size);
        let n_bins = n_fft / 2 + 1;
        let filters = bank
            .chunks_exact(n_bins)
            .map(|row| {
                let first = row.iter().position(|&w| w != 0.0).unwrap_or(0);
                let last = row.iter().rposition(|&w| w != 0.0).map_or(first, |i| i + 1);
                MelFilter { first_bin: first, weights: row[first..last].to_vec() }
            })
            .collect();
        Self {
            n_fft,
            hop_length: config.hop_length,
            window: hann_window_periodic(n_fft),
            filters,
            fft: RealFftPlanner::<f32>::new().plan_fft_forward(n_fft),
        }
    }

    /// Number of mel bins this front end produces.
    pub fn n_mels(&self) -> usize {
        self.filters.len()
    }

    /// Samples per frame.
    pub fn hop_length(&self) -> usize {
        self.hop_length
    }

    /// Whisper's normalised log-mel spectrogram of `samples`:
    /// `samples.len() / hop_length` frames.
    pub fn log_mel(&self, samples: &[f32]) -> LogMel {
        let n_mels = self.n_mels();
        let n_frames = samples.len() / self.hop_length;
        let mut data = vec![0.0f32; n_mels * n_frames];
        if n_frames == 0 {
            return LogMel { n_mels, n_frames, data };
        }

        let pad = (self.n_fft / 2) as isize;
        let mut frame = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = vec![0.0f32; spectrum.len()];
        let mut max = f32::NEG_INFINITY;

        for t in 0..n_frames {
            let start = (t * self.hop_length) as isize - pad;
            for (i, (out, w)) in frame.iter_mut().zip(&self.window).enumerate() {
                *out = samples[reflect_index(start + i as isize, samples.len())] * w;
            }
            self.fft
                .process_with_scratch(&mut frame, &mut spectrum, &mut scratch)
                .expect("buffers come from the plan, so their lengths match");
            for (p, c) in power.iter_mut().zip(&spectrum) {
                *p = c.norm_sqr();
            }
            for (m, filter) in self.filters.iter().enumerate() {
                let bins = &power[filter.first_bin..filter.first_bin + filter.weights.len()];
                let energy: f32 = bins.iter().zip(&filter.weights).map(|(p, w)| p * w).sum();
                let log = energy.max(LOG_FLOOR).log10();
                max = max.max(log);
                data[m * n_frames + t] = log;
            }
        }

        let floor = max - DYNAMIC_RANGE;
        for v in &mut data {
            *v = (v.max(floor) + 4.0) / 4.0;
        }
        LogMel { n_mels, n_frames, data }
    }
}

/// Index into a signal of length `len` after numpy-style `reflect` padding
/// (mirror without repeating the edge sample), for any offset.
fn reflect_index(i: isize, len: usize) -> usize {
    if len == 1 {
        return 0;
    }
    let period = 2 * (len as isize - 1);
    let i = i.rem_euclid(period);
    (if i < len as isize { i } else { period - i }) as usize
}

/// The periodic Hann window (`torch.hann_window(n)`, `np.hanning(n + 1)[:-1]`),
/// as Whisper uses; the symmetric one would shift every feature slightly.
pub fn hann_window_periodic(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = 2.0 * std::f64::consts::PI * i as f64 / n as f64;
            (0.5 - 0.5 * x.cos()) as f32
        })
        .collect()
}

/// Slaney's mel scale (librosa `htk=False`): linear below 1 kHz, logarithmic above.
fn hz_to_mel(hz: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    let min_log_mel = MIN_LOG_HZ / F_SP;
    let log_step = 6.4f64.ln() / 27.0;
    if hz >= MIN_LOG_HZ { min_log_mel + (hz / MIN_LOG_HZ).ln() / log_step } else { hz / F_SP }
}

/// Inverse of [`hz_to_mel`].
fn mel_to_hz(mel: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    let min_log_mel = MIN_LOG_HZ / F_SP;
    let log_step = 6.4f64.ln() / 27.0;
    if mel >= min_log_mel { MIN_LOG_HZ * (log_step * (mel - min_log_mel)).exp() } else { mel * F_SP }
}

/// librosa's `filters.mel(sr, n_fft, n_mels, fmin=0, fmax=sr/2, htk=False,
/// norm="slaney")`: `n_mels × (n_fft/2 + 1)` triangular filters, row-major,
/// each scaled to unit area (Slaney normalisation). Computed in f64 like
/// librosa, stored as f32 like Whisper's `mel_filters.npz`.
pub fn mel_filterbank(sampling_rate: usize, n_fft: usize, n_mels: usize) -> Vec<f32> {
    let n_bins = n_fft / 2 + 1;
    let nyquist = sampling_rate as f64 / 2.0;
    let fft_freqs: Vec<f64> = (0..n_bins).map(|k| nyquist * k as f64 / (n_bins - 1) as f64).collect();

    // n_mels + 2 points evenly spaced in mel, from 0 Hz to Nyquist.
    let (mel_min, mel_max) = (hz_to_mel(0.0), hz_to_mel(nyquist));
    let edges: Vec<f64> =
        (0..n_mels + 2).map(|i| mel_to_hz(mel_min + (mel_max - mel_min) * i as f64 / (n_mels + 1) as f64)).collect();

    let mut bank = vec![0.0f32; n_mels * n_bins];
    for m in 0..n_mels {
        let (lo, centre, hi) = (edges[m], edges[m + 1], edges[m + 2]);
        let area_norm = 2.0 / (hi - lo);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let rising = (f - lo) / (centre - lo);
            let falling = (hi - f) / (hi - centre);
            let weight = rising.min(falling).max(0.0);
            bank[m * n_bins + k] = (weight * area_norm) as f32;
        }
    }
    bank
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    /// Reference numbers from `testdata/make_mel_golden.py` (numpy, float64).
    #[derive(Deserialize)]
    struct Golden {
        filter_rows: BTreeMap<usize, Vec<f32>>,
        filter_sum: f64,
        features_shape: [usize; 2],
        features_frames: BTreeMap<usize, Vec<f32>>,
        features_max: f32,
        features_min: f32,
    }

    fn golden() -> Golden {
        serde_json::from_str(include_str!("../testdata/mel_golden.json")).unwrap()
    }

    /// Must match `test_signal` in the Python script: 0.5 s of a 440 Hz tone
    /// plus a chirp, then 0.25 s of silence.
    fn test_signal() -> Vec<f32> {
        let mut x: Vec<f32> = (0..8000)
            .map(|n| {
                let t = n as f64 / 16_000.0;
                let tau = 2.0 * std::f64::consts::PI;
                (0.5 * (tau * 440.0 * t).sin() + 0.25 * (tau * (200.0 + 3000.0 * t) * t).sin()) as f32
            })
            .collect();
        x.extend(std::iter::repeat_n(0.0, 4000));
        x
    }

    #[test]
    fn filterbank_matches_librosa_slaney() {
        let golden = golden();
        let bank = mel_filterbank(16_000, 400, 80);
        for (row, expected) in &golden.filter_rows {
            let actual = &bank[row * 201..(row + 1) * 201];
            for (k, (a, e)) in actual.iter().zip(expected).enumerate() {
                assert!((a - e).abs() <= 1e-6 + 1e-5 * e.abs(), "filter {row} bin {k}: {a} vs {e}");
            }
        }
        let sum: f64 = bank.iter().map(|&w| w as f64).sum();
        assert!((sum - golden.filter_sum).abs() < 1e-4, "{sum} vs {}", golden.filter_sum);
    }

    #[test]
    fn filterbank_properties() {
        let bank = mel_filterbank(16_000, 400, 80);
        for row in bank.chunks_exact(201) {
            assert!(row.iter().all(|&w| w >= 0.0));
            // Triangles: non-zero on one contiguous stretch of bins.
            let first = row.iter().position(|&w| w > 0.0).expect("no filter is empty at 80 bins");
            let last = row.iter().rposition(|&w| w > 0.0).unwrap();
            assert!(row[first..=last].iter().all(|&w| w > 0.0));
        }
        // Whisper's first filter has a single tap: bin 1 (40 Hz), weight 0.02486259.
        assert!((bank[1] - 0.024_862_59).abs() < 1e-7);
    }

    #[test]
    fn features_match_numpy_reference() {
        let golden = golden();
        let front = MelFrontEnd::new(&PreprocessorConfig::WHISPER);
        let mel = front.log_mel(&test_signal());
        assert_eq!([mel.n_mels, mel.n_frames], golden.features_shape);
        for (t, expected) in &golden.features_frames {
            for (m, e) in expected.iter().enumerate() {
                let a = mel.data[m * mel.n_frames + t];
                assert!((a - e).abs() < 2e-4, "frame {t} mel {m}: {a} vs {e}");
            }
        }
        let max = mel.data.iter().copied().fold(f32::MIN, f32::max);
        let min = mel.data.iter().copied().fold(f32::MAX, f32::min);
        assert!((max - golden.features_max).abs() < 1e-4);
        assert!((min - golden.features_min).abs() < 1e-4);
        // The clamp keeps exactly 8 log10 units, i.e. 2.0 after the /4.
        assert!((max - min - 2.0).abs() < 1e-5);
    }

    #[test]
    fn thirty_seconds_give_exactly_3000_frames() {
        let front = MelFrontEnd::new(&PreprocessorConfig::WHISPER);
        assert_eq!(front.log_mel(&vec![0.0; 480_000]).n_frames, 3000);
        assert_eq!(front.log_mel(&vec![0.0; 159]).n_frames, 0);
    }

    #[test]
    fn frames_slices_columns() {
        let mel = LogMel { n_mels: 2, n_frames: 3, data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0] };
        assert_eq!(mel.frames(1, 3).data, vec![2.0, 3.0, 5.0, 6.0]);
    }

    #[test]
    fn reflect_index_mirrors_without_repeating_the_edge() {
        let idx: Vec<usize> = (-3..7).map(|i| reflect_index(i, 4)).collect();
        assert_eq!(idx, vec![3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
    }
}
