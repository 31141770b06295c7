"""Kaldi-compatible log-mel filterbank features (the `fbank` AudioMAE and A-JEPA feed their
encoders), in numpy.

AudioMAE and A-JEPA compute their inputs with `torchaudio.compliance.kaldi.fbank(wave,
htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
num_mel_bins=128, dither=0.0, frame_shift=10)`. `log_mel` gives the same numbers without torchaudio
(whose builds are pinned to one torch each): 25 ms frames every 10 ms with Kaldi's edge rule (only
whole frames, `snip_edges`), per-frame DC removal, pre-emphasis 0.97, a symmetric Hann window,
zero-padded to the next power of two, power spectrum, triangular filters spaced evenly on Kaldi's
mel scale (1127 ln(1 + f/700)) from 20 Hz to Nyquist with peak 1 and no area normalisation, and
the natural log floored at float32's epsilon. tests/modalities/test_audio_fbank.py checks it
against kaldi-native-fbank, a C++ port of Kaldi's own code.

Imports numpy only.
"""

from __future__ import annotations

import functools

import numpy as np

#: the log floor: log(max(energy, EPS)); digital silence maps to LOG_FLOOR
EPS = float(np.finfo(np.float32).eps)
LOG_FLOOR = float(np.log(EPS))
PREEMPHASIS = 0.97
LOW_FREQ = 20.0


def frame_geometry(
    sample_rate: int, frame_ms: float = 25.0, hop_ms: float = 10.0
) -> tuple[int, int]:
    """(frame length, hop) in samples, as Kaldi rounds them (400 and 160 at 16 kHz)."""
    return int(sample_rate * frame_ms / 1000.0), int(sample_rate * hop_ms / 1000.0)


def num_frames(n_samples: int, sample_rate: int) -> int:
    """Frames `log_mel` returns for `n_samples` samples (Kaldi's snip_edges rule)."""
    length, hop = frame_geometry(sample_rate)
    return 0 if n_samples < length else 1 + (n_samples - length) // hop


def _mel(f: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


@functools.lru_cache(maxsize=8)
def mel_filters(n_mels: int, n_fft: int, sample_rate: int) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] float32 triangles, linear in mel, peak 1 (Kaldi's MelBanks; the
    Nyquist bin has weight 0, as in Kaldi, which builds its banks over n_fft // 2 bins)."""
    nyquist = sample_rate / 2.0
    lo, hi = _mel(LOW_FREQ), _mel(nyquist)
    step = (hi - lo) / (n_mels + 1)
    left = lo + step * np.arange(n_mels)
    centre, right = left + step, left + 2 * step
    bins = _mel(np.arange(n_fft // 2) * sample_rate / n_fft)[None, :]
    up = (bins - left[:, None]) / (centre - left)[:, None]
    down = (right[:, None] - bins) / (right - centre)[:, None]
    w = np.clip(np.minimum(up, down), 0.0, None)
    return np.pad(w, ((0, 0), (0, 1))).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _hann(length: int) -> np.ndarray:
    # Kaldi's "hanning": symmetric, 0.5 - 0.5 cos(2 pi n / (N - 1))
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / (length - 1))).astype(np.float64)


def log_mel(
    wave: np.ndarray, sample_rate: int = 16000, n_mels: int = 128, chunk: int = 4096
) -> np.ndarray:
    """Kaldi fbank of a mono waveform (float, any scale: Kaldi's fbank is not scale-normalised,
    and AudioMAE feeds [-1, 1] samples) -> float32 [n_mels, frames] (module docstring).

    Works through the frames `chunk` at a time so an hour of audio never holds its whole
    framed copy in memory."""
    # float32 throughout, as Kaldi (BaseFloat) and torchaudio compute it: numpy >= 2 runs
    # float32 FFTs natively, half the time and memory of float64
    x = np.asarray(wave, dtype=np.float32).reshape(-1)
    length, hop = frame_geometry(sample_rate)
    n = num_frames(len(x), sample_rate)
    n_fft = 1 << (length - 1).bit_length()
    fb = np.ascontiguousarray(mel_filters(n_mels, n_fft, sample_rate).T)
    window = _hann(length).astype(np.float32)
    out = np.empty((n_mels, n), dtype=np.float32)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        idx = (np.arange(lo, hi) * hop)[:, None] + np.arange(length)[None, :]
        frames = x[idx]
        frames = frames - frames.mean(axis=1, keepdims=True)
        # pre-emphasis; Kaldi's first sample uses itself as its predecessor
        prev = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
        frames = (frames - np.float32(PREEMPHASIS) * prev) * window
        spec = np.fft.rfft(frames, n=n_fft, axis=1)
        power = spec.real**2 + spec.imag**2
        energies = power @ fb
        out[:, lo:hi] = np.log(np.maximum(energies, np.float32(EPS))).T
    return out
