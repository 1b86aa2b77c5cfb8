//! Sample-rate conversion to the 16 kHz every engine takes.
//!
//! Pendants send 16 kHz audio, so the pipeline never needs this; it exists
//! for audio from elsewhere, such as a WAV posted to the server's
//! OpenAI-compatible `/v1/audio/transcriptions` at 44.1 or 48 kHz.
//!
//! The method is band-limited interpolation: each output sample is the input
//! convolved with a Hann-windowed sinc centred on the output instant. When
//! the rate goes down, the sinc's cutoff is the *output's* Nyquist frequency
//! (times `PASSBAND`, 0.94), so content that 16 kHz cannot carry is filtered out
//! instead of folding back as aliasing (a 12 kHz tone in 48 kHz audio would
//! otherwise come out as a 4 kHz one). The kernel is tabulated once per call
//! and read with linear interpolation, so no sine is computed per tap.
//! Speech needs nothing sharper: its useful content ends well below 8 kHz.

/// Fraction of the lower Nyquist frequency that passes; the rest of the band
/// is the filter's transition. 0.94 keeps speech up to 7.5 kHz at 16 kHz.
const PASSBAND: f64 = 0.94;

/// Zero crossings of the sinc on each side of the centre: the filter's
/// length. 16 gives a stop band far below what Whisper can hear, at 32
/// taps per output sample when upsampling (more when downsampling).
const ZERO_CROSSINGS: f64 = 16.0;

/// Kernel table entries per input sample of distance.
const TABLE_RESOLUTION: f64 = 256.0;

/// Converts mono samples from `from_hz` to `to_hz`. The output has
/// `input.len() * to_hz / from_hz` samples (rounded down); output sample
/// *n* is the signal at input time `n * from_hz / to_hz`.
///
/// # Panics
/// If either rate is 0.
pub fn resample(input: &[f32], from_hz: u32, to_hz: u32) -> Vec<f32> {
    assert!(from_hz > 0 && to_hz > 0, "sample rates must be positive");
    if from_hz == to_hz || input.is_empty() {
        return input.to_vec();
    }
    let out_len = (input.len() as u64 * u64::from(to_hz) / u64::from(from_hz)) as usize;
    let step = f64::from(from_hz) / f64::from(to_hz);
    // Cutoff as a fraction of the input's Nyquist frequency.
    let cutoff = (f64::from(to_hz) / f64::from(from_hz)).min(1.0) * PASSBAND;
    let half_width = ZERO_CROSSINGS / cutoff;
    let table = kernel_table(cutoff, half_width);
    let last = input.len() as i64 - 1;
    let mut out = Vec::with_capacity(out_len);
    for n in 0..out_len {
        let t = n as f64 * step;
        let lo = ((t - half_width).ceil() as i64).max(0);
        let hi = ((t + half_width).floor() as i64).min(last);
        let mut acc = 0.0f64;
        for k in lo..=hi {
            let pos = (t - k as f64 + half_width) * TABLE_RESOLUTION;
            let i = pos as usize;
            let frac = pos - i as f64;
            let (a, b) = (table[i], table.get(i + 1).copied().unwrap_or(0.0));
            acc += f64::from(input[k as usize]) * (a + (b - a) * frac);
        }
        out.push(acc as f32);
    }
    out
}

/// The windowed sinc `cutoff * sinc(cutoff * d) * hann(d / half_width)`,
/// sampled at `d = -half_width + i / TABLE_RESOLUTION`. Its taps sum to
/// about 1, so the gain at 0 Hz is 1.
fn kernel_table(cutoff: f64, half_width: f64) -> Vec<f64> {
    let len = (2.0 * half_width * TABLE_RESOLUTION).ceil() as usize + 1;
    (0..len)
        .map(|i| {
            let d = i as f64 / TABLE_RESOLUTION - half_width;
            if d.abs() >= half_width {
                return 0.0;
            }
            let x = std::f64::consts::PI * cutoff * d;
            let sinc = if x.abs() < 1e-12 { 1.0 } else { x.sin() / x };
            let hann = 0.5 * (1.0 + (std::f64::consts::PI * d / half_width).cos());
            cutoff * sinc * hann
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f64, rate: u32, secs: f64) -> Vec<f32> {
        let n = (f64::from(rate) * secs) as usize;
        (0..n).map(|i| (0.5 * (std::f64::consts::TAU * hz * i as f64 / f64::from(rate)).sin()) as f32).collect()
    }

    /// Largest difference from the ideal tone at 16 kHz, away from the edges
    /// (where the filter sees zeros beyond the input).
    fn max_error(out: &[f32], hz: f64) -> f32 {
        let ideal = tone(hz, 16_000, out.len() as f64 / 16_000.0);
        out.iter()
            .zip(&ideal)
            .skip(200)
            .take(out.len().saturating_sub(400))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }

    fn rms(x: &[f32]) -> f32 {
        (x.iter().map(|s| s * s).sum::<f32>() / x.len() as f32).sqrt()
    }

    #[test]
    fn speech_band_tones_survive_every_common_rate() {
        for rate in [8_000, 11_025, 22_050, 24_000, 44_100, 48_000, 96_000] {
            let out = resample(&tone(1000.0, rate, 1.0), rate, 16_000);
            assert_eq!(out.len(), 16_000, "{rate} Hz");
            let err = max_error(&out, 1000.0);
            assert!(err < 0.01, "{rate} Hz: a 1 kHz tone is off by {err}");
        }
        // 3.4 kHz, the top of the telephone band, through the odd ratio.
        let err = max_error(&resample(&tone(3400.0, 44_100, 1.0), 44_100, 16_000), 3400.0);
        assert!(err < 0.01, "{err}");
    }

    #[test]
    fn content_above_the_new_nyquist_is_removed_not_folded() {
        // A 12 kHz tone would alias to 4 kHz if decimated without a filter.
        let out = resample(&tone(12_000.0, 48_000, 1.0), 48_000, 16_000);
        let level = rms(&out[200..out.len() - 200]);
        assert!(level < 0.005, "aliased energy {level}, tone was {}", 0.5 / 2f32.sqrt());
        // Naive decimation does fold it, which is what makes this test meaningful.
        let naive: Vec<f32> = tone(12_000.0, 48_000, 1.0).into_iter().step_by(3).collect();
        assert!(rms(&naive) > 0.3);
    }

    #[test]
    fn same_rate_and_empty_input_pass_through() {
        let x = tone(440.0, 16_000, 0.1);
        assert_eq!(resample(&x, 16_000, 16_000), x);
        assert!(resample(&[], 48_000, 16_000).is_empty());
        assert_eq!(resample(&[0.25; 3], 48_000, 16_000).len(), 1);
        // Constant input keeps its level (gain 1 at 0 Hz).
        let dc = resample(&[0.25; 4800], 48_000, 16_000);
        assert!(dc[100..1500].iter().all(|s| (s - 0.25).abs() < 1e-3), "{:?}", &dc[100..105]);
    }
}
