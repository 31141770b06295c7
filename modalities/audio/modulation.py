"""The audio positive control of comodulation: noise bands whose loudness swings at a shared rate.

Every file (16 kHz mono, 5.12 s: 510 log-mel frames, one 512-frame segment) holds `bands` noise
bands, one centred in each 16-bin row of the ingest's 128-bin mel scale (so one row of 16 x 16
patches holds one band), each a third of its row wide. Each band's amplitude is modulated:
`1 + depth sin(phase_b(t))`, with `phase_b(t) = 2 pi integral r(t) dt + offset_b`. The rate r(t)
is the file's, shared by every band: a smooth random curve over time between 2 and 8 Hz
(log-uniform marginal), so one 160-ms patch holds a third to one and a third of a cycle.

- Token latent (`rates.npy`, [files, frames]): the rate at every 10-ms frame; a patch's latent is
  its frames' mean log-rate. No linear function of a patch's log-mel carries it (the phase is
  random), while the patch's time neighbours and the other bands constrain it: the positive
  control's kind (as the fMRI frequency control's tokens).
- Record label `sync`: "comodulated" (every band's offset the same: the bands swell and fade
  together) or "independent" (each band its own offset, uniform). Every patch's content is
  distributed alike in both classes (the same rate curve's law, a uniform phase); only the
  alignment of the bands at one time tells them apart, and in comodulated files a masked band is
  predictable from the others at the same time (A-JEPA's frequency-band targets).

`sync_score` is the label's one-number oracle: the mean correlation between the loudness time
courses of neighbouring bands. `python -m modalities.audio.modulation OUT --files N` writes the
files (WAV and FLAC alternately), `labels.csv` (path, sync), `rates.npy` and `demo.json`.
Imports numpy and soundfile.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from modalities.audio.fbank import LOW_FREQ
from modalities.audio.fbank import _mel as _mel

RATE = 16000
SECONDS = 5.12
HOP = 160  # the ingest's 10-ms hop at 16 kHz
N_MELS, ROW_BINS = 128, 16
RATE_HZ = (2.0, 8.0)
SYNC = ("comodulated", "independent")
VERSION = 1


def _hz(m: np.ndarray | float) -> np.ndarray:
    return 700.0 * np.expm1(np.asarray(m, dtype=np.float64) / 1127.0)


def band_edges(bands: int = N_MELS // ROW_BINS) -> list[tuple[float, float]]:
    """(low, high) Hz of each band: the middle third of its 16-bin row of the Kaldi mel scale
    (128 bins, 20 Hz to 8 kHz) the audio ingest uses."""
    lo, hi = _mel(LOW_FREQ), _mel(RATE / 2)
    step = (hi - lo) / (N_MELS + 1)
    out = []
    for k in range(bands):
        first = lo + (k * ROW_BINS + 1) * step  # centre of the row's first bin
        last = lo + (k * ROW_BINS + ROW_BINS) * step
        third = (last - first) / 3
        out.append((float(_hz(first + third)), float(_hz(last - third))))
    return out


def rate_curve(rng: np.random.Generator, n: int, sr: int = RATE) -> np.ndarray:
    """A smooth rate [n] in Hz: log-rate a sum of slow cosines (periods 1.5-6 s), squashed to
    RATE_HZ."""
    t = np.arange(n) / sr
    u = np.zeros(n)
    for _ in range(4):
        period = rng.uniform(1.5, 6.0)
        u += rng.normal() * np.cos(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
    u = 1 / (1 + np.exp(-u))  # (0, 1)
    lo, hi = np.log(RATE_HZ[0]), np.log(RATE_HZ[1])
    return np.exp(lo + (hi - lo) * u)


def synthesize(
    rng: np.random.Generator, sync: str, bands: int = 8, depth: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """One file's signal (peak 0.5) and its rate at every 10-ms frame."""
    n = int(round(SECONDS * RATE))
    rate = rate_curve(rng, n)
    phase = 2 * np.pi * np.cumsum(rate) / RATE
    common = rng.uniform(0, 2 * np.pi)
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    y = np.zeros(n)
    for lo, hi in band_edges(bands):
        spec = np.fft.rfft(rng.standard_normal(n))
        spec[(freqs < lo) | (freqs > hi)] = 0
        x = np.fft.irfft(spec, n)
        x /= x.std() + 1e-12
        offset = common if sync == "comodulated" else rng.uniform(0, 2 * np.pi)
        y += x * (1 + depth * np.sin(phase + offset))
    y += 10 ** (-50 / 20) * rng.standard_normal(n)
    frames = rate[: (n // HOP) * HOP].reshape(-1, HOP).mean(axis=1)
    return 0.5 * y / np.abs(y).max(), frames


def generate(out_dir: str | Path, n: int, seed: int = 0, bands: int = 8) -> list[str]:
    """Write `n` files, labels.csv, rates.npy and demo.json under `out_dir`; the files' paths."""
    import soundfile as sf

    if not 1 <= bands <= N_MELS // ROW_BINS:
        raise ValueError(f"bands must be 1..{N_MELS // ROW_BINS}, got {bands}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, paths, rates = [], [], []
    for i in range(n):
        rng = np.random.default_rng([seed, i, 0xC0DE])
        sync = SYNC[i % 2]
        y, frames = synthesize(rng, sync, bands)
        fmt = ("wav", "flac")[(i // 2) % 2]
        rel = f"clip-{i:05d}.{fmt}"
        tmp = out / (rel + ".part")
        sf.write(tmp, y.astype(np.float32), RATE, format=fmt.upper(), subtype="PCM_16")
        tmp.replace(out / rel)
        rows.append({"path": rel, "sync": sync})
        paths.append(str(out / rel))
        rates.append(frames.astype(np.float32))
    np.save(out / "rates.npy", np.stack(rates))
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["path", "sync"])
        w.writeheader()
        w.writerows(rows)
    meta = {"version": VERSION, "files": n, "seed": seed, "bands": bands, "control": "modulation"}
    (out / "demo.json").write_text(json.dumps(meta, indent=1) + "\n")
    return paths


def file_index(source: str) -> int:
    """The file number of a record's `source` (clip-NNNNN.*), its row in rates.npy."""
    return int(Path(source).name.split("-")[1].split(".")[0])


def sync_score(mel: np.ndarray, bands: int = 8, valid_frames: int | None = None) -> float:
    """The label's oracle from one log-mel [n_mels, frames]: the mean correlation between
    neighbouring bands' loudness over time (each band: the mean of its row's bins). Near 1 when
    comodulated, near 0 when independent."""
    x = np.asarray(mel, dtype=np.float64)[: bands * ROW_BINS, : valid_frames or None]
    loud = x.reshape(bands, ROW_BINS, -1).mean(axis=1)
    loud = loud - loud.mean(axis=1, keepdims=True)
    loud /= np.linalg.norm(loud, axis=1, keepdims=True) + 1e-12
    return float(np.mean(np.sum(loud[:-1] * loud[1:], axis=1)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m modalities.audio.modulation",
        description="Write the comodulation control (labels.csv: sync; rates.npy: token latents).",
    )
    p.add_argument("out", help="output folder")
    p.add_argument("--files", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bands", type=int, default=8, help="noise bands, one per patch row (<= 8)")
    args = p.parse_args(argv)
    try:
        paths = generate(args.out, args.files, args.seed, args.bands)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(paths)} files, labels.csv and rates.npy to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
