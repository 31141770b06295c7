"""The audio positive control of comodulation: noise bands whose loudness swings at a shared rate.

Every file (16 kHz mono, 5.12 s: 510 log-mel frames, one 512-frame segment) holds `bands`
bands, one in the middle third of each 16-bin row of the ingest's 128-bin mel scale (so one row
of 16 x 16 patches holds one band). Each band's amplitude is modulated by its envelope of
`phase_b(t) = 2 pi integral r(t) dt + offset_b`. The rate r(t) is the file's, shared by every
band: a smooth random curve over time between 2 and 8 Hz (log-uniform marginal), so one 160-ms
patch holds a third to one and a third of a cycle.

- Plain class `sound` (what fills the bands; one patch shows it): `noise` (band-limited noise
  swelling as `1 + depth sin(phase)`), `tone` (a sine at the band's centre, the same swell),
  `chirp` (a tone gliding up across the band, again and again, the same swell) or `bursts` (a
  rhythm: the noise gated into one short burst per cycle, `((1 + sin(phase)) / 2)^4`).

- Token latent (`rates.npy`, [files, frames]): the rate at every 10-ms frame; a patch's latent is
  its frames' mean log-rate. No linear function of a patch's log-mel carries it (the phase is
  random), but a nonlinear one carries most of it (the swing's curvature: an encoder fit on
  every patch alone reads R^2 0.84, with the patch's neighbours 0.94; docs/results.md), so it
  is not a structural latent. `phases.npy` ([files, bands]) holds each band's phase offset.
- Record label `sync`: "comodulated" (every band's offset the same: the bands swell and fade
  together) or "independent" (each band its own offset, uniform). Every patch's content is
  distributed alike in both classes (the same rate curve's law, a uniform phase; nearly: a
  band's spectral leakage into its neighbours' rows shows a little of two bands); only the
  alignment of the bands at one time tells them apart, and in comodulated files a masked band is
  predictable from the others at the same time (A-JEPA's frequency-band targets). With
  `--relation antiphase` the other class is "antiphase" instead (the upper half of the bands
  half a cycle behind the lower half): a masked band is then predictable from the others in
  both classes, so a JEPA has no reason to drop a band's phase (with independent offsets it is
  unpredictable in half the files).
- Level: each file's RMS is set to -30 dBFS, then a random gain of +-6 dB (uniform, drawn alike
  in both classes). Version 2 scaled every file to a fixed peak; comodulated bands peak
  together, so those files came out 2-3.5 dB quieter (seed spread 0.3-1 dB) and the label
  leaked into every patch's loudness: pooled patch embeddings at random init read it (0.90
  with 32 labels), the baseline any pretraining had to beat.

`sync_score` is the label's one-number oracle: the mean correlation between the loudness time
courses of neighbouring bands; `rate_track` the token latent's (each band's instantaneous
modulation rate). `python -m modalities.audio.modulation OUT --files N` writes the files (WAV,
FLAC and OGG/Vorbis in turn, each format holding every class), `labels.csv` (path, sync, sound),
`rates.npy`, `phases.npy` and `demo.json`. Imports numpy, soundfile and (`rate_track`) scipy.
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
#: the other class of `sync` by `relation`: independent offsets, or the upper half of the bands
#: half a cycle behind the lower half (every band predictable from the others in both classes)
RELATIONS = ("independent", "antiphase")
SOUNDS = ("noise", "tone", "chirp", "bursts")
FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS")}
#: 1: noise bands only, WAV and FLAC; 2: the four sounds, and OGG; 3: the level set by RMS and
#: a random gain, not by the peak (which told the classes apart)
VERSION = 3
#: every file's RMS before its gain (-30 dBFS: the crest factor stays under 12, so no file
#: clips), and the gain's range in dB (uniform, the same law in every class)
RMS, GAIN_DB = 0.0316, 6.0


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


def rate_curve(
    rng: np.random.Generator, n: int, sr: int = RATE, hz: tuple[float, float] = RATE_HZ
) -> np.ndarray:
    """A smooth rate [n] in Hz: log-rate a sum of slow cosines (periods 1.5-6 s), squashed to
    `hz` (low, high)."""
    t = np.arange(n) / sr
    u = np.zeros(n)
    for _ in range(4):
        period = rng.uniform(1.5, 6.0)
        u += rng.normal() * np.cos(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
    u = 1 / (1 + np.exp(-u))  # (0, 1)
    lo, hi = np.log(hz[0]), np.log(hz[1])
    return np.exp(lo + (hi - lo) * u)


def _carrier(rng: np.random.Generator, sound: str, lo: float, hi: float, n: int, glide: float):
    """One band's unit-variance carrier [n] between lo and hi Hz."""
    t = np.arange(n) / RATE
    if sound in ("noise", "bursts"):
        freqs = np.fft.rfftfreq(n, 1 / RATE)
        spec = np.fft.rfft(rng.standard_normal(n))
        spec[(freqs < lo) | (freqs > hi)] = 0
        x = np.fft.irfft(spec, n)
    elif sound == "tone":
        x = np.sin(2 * np.pi * np.sqrt(lo * hi) * t + rng.uniform(0, 2 * np.pi))
    elif sound == "chirp":
        # log-linear glides from lo to hi, each `glide` seconds, from a random point of the first
        frac = np.mod(t / glide + rng.uniform(0, 1), 1.0)
        x = np.sin(2 * np.pi * np.cumsum(lo * (hi / lo) ** frac) / RATE)
    else:
        raise ValueError(f"unknown sound {sound!r}; known: {', '.join(SOUNDS)}")
    return x / (x.std() + 1e-12)


def synthesize(
    rng: np.random.Generator,
    sync: str,
    bands: int = 8,
    depth: float = 0.95,
    sound: str = "noise",
    rate_hz: tuple[float, float] = RATE_HZ,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One file's signal (RMS -30 dBFS +- `GAIN_DB`), its rate at every 10-ms frame and each
    band's phase offset (radians)."""
    n = int(round(SECONDS * RATE))
    rate = rate_curve(rng, n, hz=rate_hz)
    phase = 2 * np.pi * np.cumsum(rate) / RATE
    common = rng.uniform(0, 2 * np.pi)
    glide = rng.uniform(0.25, 0.6)
    y, offsets = np.zeros(n), []
    for k, (lo, hi) in enumerate(band_edges(bands)):
        x = _carrier(rng, sound, lo, hi, n, glide)
        if sync == "comodulated":
            offset = common
        elif sync == "antiphase":
            offset = common + (np.pi if k >= bands // 2 else 0.0)
        elif sync == "independent":
            offset = rng.uniform(0, 2 * np.pi)
        else:
            raise ValueError(f"unknown sync {sync!r}")
        offsets.append(np.mod(offset, 2 * np.pi))
        swing = np.sin(phase + offset)
        env = (0.5 + 0.5 * swing) ** 4 if sound == "bursts" else 1 + depth * swing
        y += x * env
    y += 10 ** (-50 / 20) * rng.standard_normal(n)
    frames = rate[: (n // HOP) * HOP].reshape(-1, HOP).mean(axis=1)
    # The level: the file's RMS set, then a random gain drawn alike for both classes. Scaling to
    # a fixed peak instead (version 2) leaked the label: comodulated bands peak together, so
    # their files came out 2-3.5 dB quieter, which any patch's loudness showed.
    gain_db = rng.uniform(-GAIN_DB, GAIN_DB)
    y *= RMS * 10 ** (gain_db / 20) / np.sqrt(np.mean(y**2))
    if np.abs(y).max() >= 1.0:
        raise ValueError(f"{sound}/{sync} file would clip (peak {np.abs(y).max():.2f})")
    return y, frames, np.asarray(offsets)


def generate(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    bands: int = 8,
    rate_hz: tuple[float, float] = RATE_HZ,
    sounds: tuple[str, ...] = SOUNDS,
    relation: str = "independent",
) -> list[str]:
    """Write `n` files, labels.csv, rates.npy, phases.npy and demo.json under `out_dir`; the
    files' paths."""
    import soundfile as sf

    from modalities.audio.demo import fix_ogg_serial

    unknown = sorted(set(sounds) - set(SOUNDS))
    if unknown or not sounds:
        raise ValueError(f"sounds must be among {', '.join(SOUNDS)}, got {', '.join(sounds)}")
    if relation not in RELATIONS:
        raise ValueError(f"relation must be one of {', '.join(RELATIONS)}, got {relation!r}")
    classes = (SYNC[0], relation)
    if not 1 <= bands <= N_MELS // ROW_BINS:
        raise ValueError(f"bands must be 1..{N_MELS // ROW_BINS}, got {bands}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, paths, rates, phases = [], [], [], []
    for i in range(n):
        rng = np.random.default_rng([seed, i, 0xC0DE])
        # every (sync, sound) pair in each run of 8 files, the formats in turn by runs of 8
        sync, sound = classes[i % 2], sounds[(i // 2) % len(sounds)]
        y, frames, offsets = synthesize(rng, sync, bands, sound=sound, rate_hz=rate_hz)
        fmt = list(FORMATS)[(i // 8) % len(FORMATS)]
        container, subtype = FORMATS[fmt]
        rel = f"clip-{i:05d}.{fmt}"
        tmp = out / (rel + ".part")
        sf.write(tmp, y.astype(np.float32), RATE, format=container, subtype=subtype)
        if container == "OGG":
            fix_ogg_serial(tmp, 0x4A455041 + i)
        tmp.replace(out / rel)
        rows.append({"path": rel, "sync": sync, "sound": sound})
        paths.append(str(out / rel))
        rates.append(frames.astype(np.float32))
        phases.append(offsets.astype(np.float32))
    np.save(out / "rates.npy", np.stack(rates))
    np.save(out / "phases.npy", np.stack(phases))
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["path", "sync", "sound"])
        w.writeheader()
        w.writerows(rows)
    meta = {
        "version": VERSION,
        "files": n,
        "seed": seed,
        "bands": bands,
        "rate_hz": list(rate_hz),
        "sounds": list(sounds),
        "relation": relation,
        "control": "modulation",
    }
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


def rate_track(
    mel: np.ndarray, bands: int = 8, valid_frames: int | None = None, smooth: int = 17
) -> np.ndarray:
    """The token latent's oracle: each band's modulation rate at every frame, log Hz
    [bands, frames], from one log-mel [n_mels, frames]. A band's loudness (the mean of its row's
    bins) less its half-second moving mean, the instantaneous frequency of its analytic signal
    (Hilbert), averaged over `smooth` frames and clipped to 0.5-20 Hz. It reads the rate from a
    band's own time course around a frame: what the patch's time neighbours tell."""
    from scipy.ndimage import uniform_filter1d
    from scipy.signal import hilbert

    x = np.asarray(mel, dtype=np.float64)[: bands * ROW_BINS, : valid_frames or None]
    loud = x.reshape(bands, ROW_BINS, -1).mean(axis=1)
    loud = loud - uniform_filter1d(loud, 51, axis=1, mode="nearest")
    phase = np.unwrap(np.angle(hilbert(loud, axis=1)), axis=1)
    hz = np.gradient(phase, axis=1) * (RATE / HOP) / (2 * np.pi)
    hz = uniform_filter1d(hz, smooth, axis=1, mode="nearest")
    return np.log(np.clip(hz, 0.5, 20.0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m modalities.audio.modulation",
        description=(
            "Write the comodulation control (labels.csv: sync, sound; rates.npy and phases.npy: "
            "the rates and the bands' phase offsets)."
        ),
    )
    p.add_argument("out", help="output folder")
    p.add_argument("--files", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bands", type=int, default=8, help="noise bands, one per patch row (<= 8)")
    p.add_argument(
        "--rate-hz",
        type=float,
        nargs=2,
        default=list(RATE_HZ),
        metavar=("LOW", "HIGH"),
        help=f"the modulation rate's range (default {RATE_HZ[0]:g} {RATE_HZ[1]:g})",
    )
    p.add_argument(
        "--sounds",
        nargs="+",
        default=list(SOUNDS),
        choices=SOUNDS,
        help="what fills the bands, in turn (default: all four; version 1 was noise only)",
    )
    p.add_argument(
        "--relation", choices=RELATIONS, default="independent",
        help="sync's other class: independent offsets (default), or antiphase (the upper half "
        "of the bands half a cycle behind the lower: every band predictable from the others)",
    )  # fmt: skip
    args = p.parse_args(argv)
    try:
        if not 0 < args.rate_hz[0] <= args.rate_hz[1] < 50:
            raise ValueError(f"--rate-hz needs 0 < LOW <= HIGH < 50, got {args.rate_hz}")
        paths = generate(
            args.out, args.files, args.seed, args.bands, tuple(args.rate_hz), tuple(args.sounds),
            args.relation,
        )  # fmt: skip
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(paths)} files, labels.csv, rates.npy and phases.npy to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
