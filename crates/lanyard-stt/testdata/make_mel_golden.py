"""Regenerate mel_golden.json, the reference numbers for the log-mel unit tests.

Run by hand (needs numpy only): python3 testdata/make_mel_golden.py > testdata/mel_golden.json
The tests read the JSON; they never run this script.

This is an independent float64 numpy rendering of what Whisper / faster-whisper do:
librosa.filters.mel(sr=16000, n_fft=400, n_mels=80, htk=False, norm="slaney"),
periodic Hann window, centred STFT with reflect padding, last frame dropped,
power spectrum, log10(max(x, 1e-10)), clamp to max - 8, (x + 4) / 4.
"""
import json

import numpy as np

SR, N_FFT, HOP, N_MELS = 16000, 400, 160, 80


def hz_to_mel(f):
    f = np.asanyarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-12) / min_log_hz) / logstep, mels)


def mel_to_hz(m):
    m = np.asanyarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * m
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), freqs)


def mel_filters():
    fftfreqs = np.linspace(0, SR / 2, 1 + N_FFT // 2)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(SR / 2), N_MELS + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    weights = np.zeros((N_MELS, 1 + N_FFT // 2))
    for i in range(N_MELS):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2 : N_MELS + 2] - mel_f[:N_MELS])
    return weights * enorm[:, None]


def test_signal():
    # Must match `test_signal` in src/mel.rs: 0.5 s of two tones and a chirp, then 0.25 s of silence.
    n = np.arange(8000, dtype=np.float64)
    t = n / SR
    x = 0.5 * np.sin(2 * np.pi * 440.0 * t) + 0.25 * np.sin(2 * np.pi * (200.0 + 3000.0 * t) * t)
    x = np.concatenate([x, np.zeros(4000)])
    return x.astype(np.float32).astype(np.float64)


def log_mel(x, filters):
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    padded = np.pad(x, N_FFT // 2, mode="reflect")
    n_frames = 1 + (len(padded) - N_FFT) // HOP
    frames = np.stack([padded[i * HOP : i * HOP + N_FFT] * window for i in range(n_frames)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    power = power[:-1]
    mel = filters @ power.T
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


filters = mel_filters()
feats = log_mel(test_signal(), filters)
rows = [0, 1, 10, 40, 79]
frames = [0, 1, 24, 49, 74]
out = {
    "filter_rows": {str(r): [float(f"{v:.7g}") for v in filters[r]] for r in rows},
    "filter_sum": float(filters.sum()),
    "features_shape": list(feats.shape),
    "features_frames": {str(t): [float(f"{v:.6g}") for v in feats[:, t]] for t in frames},
    "features_max": float(feats.max()),
    "features_min": float(feats.min()),
}
print(json.dumps(out, indent=1))
