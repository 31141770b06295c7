"""A deterministic synthetic EEG cohort written as real EDF+ and FIF files (BIDS-like names).

Every subject has two resting recordings, `task-eyesclosed` and `task-eyesopen`. The scalp
signal is a forward projection of a few sources onto the 19 electrodes of the 10-20 system
(standard_1005 positions), so neighbouring electrodes are correlated the way a montage implies:

- background: 6 sources of 1/f ("pink") noise at random places inside the head;
- alpha: one posterior source at the subject's alpha peak (8-12 Hz), waxing and waning; its
  power is about 10x higher with the eyes closed than open (the Berger effect), which is the
  per-recording label a probe can find;
- beta: at every electrode a rhythm in the beta band (14-30 Hz) whose amplitude (3-20 uV,
  log-uniform) and frequency change every second, with a fresh phase each second. Subjects
  differ in how the amplitudes relate (participants.tsv column `rhythm`, the EEG positive
  control): `coupled`, the amplitude envelopes wax and wane together over neighbouring
  electrodes (a 10 cm scale) and seconds (2 s), so a token's beta amplitude is predictable from
  its context (the amplitude-envelope coupling of EEG / MEG connectivity studies);
  `independent`, every electrode-second draws its own. The frequency is drawn independently
  per electrode-second in both classes: content no context predicts. Each token's amplitude
  and frequency are distributed alike in both classes (modalities/latent_field.py), so no
  statistic of one token, nor the mean of any per-token feature, reads the label: it lives in
  structure across channels and time, the principle of the positive controls
  (docs/results.md). Classes alternate in pairs of subjects, so they are balanced against the
  file format (EDF / FIF alternate by subject). `coupling="frequency"` (the CLI's `--coupling
  frequency`) couples the frequencies instead, at a fixed amplitude: the fMRI control's design;
- artefacts: blinks (frontal, eyes open only), muscle bursts (20-60 Hz, temporal; half of them
  annotated `BAD_muscle`, which the reader skips), 50 Hz line noise, sensor noise;
- an ECG and an EOG channel that the reader must not take as EEG.

Even subjects are written as EDF+ with clinical names ("EEG T3-REF": old names, a reference
suffix), odd subjects as FIF with channel types and a digitised montage (standard positions
jittered by a few millimetres, as a real cap sits). Imports numpy at top level; MNE inside.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from modalities.bids import write_participants
from modalities.eeg.channels import standard_positions
from modalities.eeg.options import CHANNELS_10_20
from modalities.latent_field import uniform_field
from pipelines.shards import atomic_write_text

CONDITIONS = ("eyesclosed", "eyesopen")
#: Alpha amplitude (uV at the strongest electrode) per condition: closing the eyes raises
#: posterior alpha several-fold (Berger 1929; Barry et al. 2007 report ~2-3x in amplitude).
ALPHA_UV = {"eyesclosed": 20.0, "eyesopen": 6.0}
#: The beta rhythm: band (Hz), amplitude range (uV, log-uniform), and the coupled class's
#: correlation lengths of the amplitude over the scalp (metres) and time (seconds).
BETA_HZ = (14.0, 30.0)
BETA_UV = (3.0, 20.0)
BETA_SPACE_M = 0.10
BETA_TIME_S = 2.0
RHYTHMS = ("independent", "coupled")
#: what the `coupled` class couples: the beta amplitude envelopes (the demo's default) or the
#: beta frequencies at a fixed amplitude (the fMRI control's design, docs/results.md)
COUPLINGS = ("amplitude", "frequency")
BACKGROUND_UV = 8.0
#: Blinks per minute: ~15-20 at rest with eyes open (Bentivoglio et al. 1997), none when closed.
BLINKS_PER_MIN = {"eyesclosed": 0.0, "eyesopen": 15.0}
_OLD = {"T7": "T3", "T8": "T4", "P7": "T5", "P8": "T6"}


def _pink(rng: np.random.Generator, n: int, sfreq: float) -> np.ndarray:
    """Unit-variance 1/f noise (power ~ 1/f above 0.5 Hz)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / sfreq)
    spec /= np.sqrt(np.maximum(f, 0.5))
    x = np.fft.irfft(spec, n)
    return x / (x.std() + 1e-12)


def _band(rng: np.random.Generator, n: int, sfreq: float, lo: float, hi: float) -> np.ndarray:
    """Unit-variance noise limited to [lo, hi] Hz."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / sfreq)
    spec[(f < lo) | (f > hi)] = 0
    x = np.fft.irfft(spec, n)
    return x / (x.std() + 1e-12)


def _gain(electrodes: np.ndarray, source: np.ndarray, width: float = 0.05) -> np.ndarray:
    """Spatially smooth projection of a source onto electrodes: 1 / (1 + (d / width)^2), the
    fall-off of a radial dipole's potential with distance, normalised to a peak of 1."""
    d = np.linalg.norm(electrodes - source, axis=1)
    g = 1.0 / (1.0 + (d / width) ** 2)
    return g / g.max()


def _inside(rng: np.random.Generator, centre: np.ndarray, radius: float = 0.015) -> np.ndarray:
    return centre + rng.normal(0, radius, 3)


def beta_amplitudes(
    electrodes: np.ndarray, n_seconds: int, coupled: bool, rng: np.random.Generator
) -> np.ndarray:
    """The beta rhythm's amplitude (uV) at every electrode and second [C, n_seconds]:
    log-uniform on `BETA_UV` in both classes, a smooth field over the scalp and time when
    `coupled`, independent draws otherwise."""
    u = uniform_field(electrodes, n_seconds, BETA_SPACE_M, BETA_TIME_S, coupled, rng)
    return BETA_UV[0] * (BETA_UV[1] / BETA_UV[0]) ** u


def beta_frequencies(
    electrodes: np.ndarray, n_seconds: int, coupled: bool, rng: np.random.Generator
) -> np.ndarray:
    """The beta rhythm's frequency (Hz) at every electrode and second [C, n_seconds]: uniform
    on `BETA_HZ` in both classes, a smooth field over the scalp and time when `coupled`."""
    u = uniform_field(electrodes, n_seconds, BETA_SPACE_M, BETA_TIME_S, coupled, rng)
    return BETA_HZ[0] + (BETA_HZ[1] - BETA_HZ[0]) * u


def beta_rhythm(
    amp: np.ndarray, sfreq: float, rng: np.random.Generator, freq: np.ndarray | None = None
) -> np.ndarray:
    """[C, n_seconds * sfreq] uV: each electrode-second a sinusoid of amplitude `amp` at
    frequency `freq` (drawn uniformly on `BETA_HZ` when None), with a uniformly random phase."""
    k = np.arange(int(sfreq)) / sfreq
    if freq is None:
        freq = rng.uniform(*BETA_HZ, size=amp.shape)
    phase = rng.uniform(0, 2 * np.pi, size=amp.shape)
    wave = amp[..., None] * np.sin(2 * np.pi * freq[..., None] * k + phase[..., None])
    return wave.reshape(amp.shape[0], -1)


def simulate(
    rng: np.random.Generator,
    electrodes: np.ndarray,
    condition: str,
    alpha_hz: float,
    duration_s: float,
    sfreq: float,
    coupled: bool = False,
    coupling: str = "amplitude",
    background_uv: float = BACKGROUND_UV,
    beta_uv: float = 20.0,
    nuisance: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[float, float, str]]]:
    """(eeg uV [C, n], eog uV [n], ecg uV [n], annotations (onset, duration, description)).

    `coupled` picks the beta rhythm's class, `coupling` what it couples (module docstring);
    with `coupling="frequency"` every beta token has amplitude `beta_uv`. `background_uv`
    scales each of the six pink-noise background sources. `nuisance=False` leaves out the
    record-level traits that differ between recordings but not between the `rhythm` classes:
    the alpha rhythm (so the eyes-closed / eyes-open difference and the subject's alpha peak)
    and the blinks of the eyes-open condition. The muscle bursts (transient, half of them
    annotated), line, amplifier and background noise stay.
    """
    if coupling not in COUPLINGS:
        raise ValueError(f"coupling must be one of {COUPLINGS}, got {coupling!r}")
    if not (float(duration_s).is_integer() and float(sfreq).is_integer()):
        raise ValueError(f"duration_s and sfreq must be whole numbers, got {duration_s}, {sfreq}")
    n = int(round(duration_s * sfreq))
    t = np.arange(n) / sfreq
    centre = electrodes.mean(axis=0) - np.array([0, 0, 0.04])  # the head's centre, roughly
    eeg = np.zeros((len(electrodes), n))
    for _ in range(6):  # background: pink-noise sources spread through the head
        src = centre + rng.uniform(-0.05, 0.05, 3)
        eeg += background_uv * np.outer(_gain(electrodes, src, 0.06), _pink(rng, n, sfreq))
    # Alpha: posterior source, narrow band around the subject's peak, slowly modulated.
    occipital = np.array([0.0, -0.075, 0.03])
    envelope = 1.0 + 0.5 * _band(rng, n, sfreq, 0.05, 0.3)
    alpha = _band(rng, n, sfreq, alpha_hz - 0.75, alpha_hz + 0.75) * np.clip(envelope, 0.1, None)
    eeg += (ALPHA_UV[condition] if nuisance else 0.0) * np.outer(
        _gain(electrodes, _inside(rng, occipital)), alpha
    )
    if coupling == "amplitude":
        amp = beta_amplitudes(electrodes, int(duration_s), coupled, rng)
        eeg += beta_rhythm(amp, sfreq, rng)
    else:
        freq = beta_frequencies(electrodes, int(duration_s), coupled, rng)
        eeg += beta_rhythm(np.full(freq.shape, beta_uv), sfreq, rng, freq)

    annotations: list[tuple[float, float, str]] = []
    eyes = np.array([0.0, 0.11, -0.03])
    eog = np.zeros(n)
    n_blinks = rng.poisson(BLINKS_PER_MIN[condition] * duration_s / 60) if nuisance else 0
    blink_len = int(0.3 * sfreq)
    shape = np.sin(np.linspace(0, np.pi, blink_len)) ** 2
    g_eyes = _gain(electrodes, eyes, 0.04)
    for onset in rng.uniform(0, duration_s - 1, n_blinks):
        a = int(onset * sfreq)
        amp = rng.uniform(80, 200)
        eeg[:, a : a + blink_len] += amp * np.outer(g_eyes, shape)
        eog[a : a + blink_len] += 2 * amp * shape
    for k, onset in enumerate(rng.uniform(0, duration_s - 3, rng.poisson(duration_s / 60 * 2))):
        side = np.array([0.08 if k % 2 else -0.08, 0.0, 0.0])
        a, m = int(onset * sfreq), int(rng.uniform(0.5, 2.0) * sfreq)
        burst = 30.0 * _band(rng, m, sfreq, 20, min(60, sfreq / 2 - 1)) * np.hanning(m)
        eeg[:, a : a + m] += np.outer(_gain(electrodes, side, 0.03), burst)
        if k % 2 == 0:
            annotations.append((round(onset, 3), round(m / sfreq, 3), "BAD_muscle"))
    eeg += 2.0 * np.sin(2 * np.pi * 50 * t + rng.uniform(0, 2 * np.pi))  # line noise
    eeg += 1.5 * rng.standard_normal(eeg.shape)  # amplifier noise
    eog += 5.0 * rng.standard_normal(n)
    # ECG: a narrow QRS-like pulse at ~70 bpm.
    beat = 60 / rng.uniform(60, 80)
    phase = (t % beat) / beat
    ecg = 800.0 * np.exp(-(((phase - 0.3) / 0.01) ** 2)) + 20.0 * rng.standard_normal(n)
    return eeg, eog, ecg, annotations


def generate_cohort(
    out_dir: str | Path,
    n_recordings: int,
    seed: int,
    duration_s: float = 300.0,
    sfreq: float = 256.0,
    formats: tuple[str, ...] = ("edf", "fif"),
    coupling: str = "amplitude",
    background_uv: float = BACKGROUND_UV,
    beta_uv: float = 20.0,
    nuisance: bool = True,
) -> list[str]:
    """Write `n_recordings` recordings (two per subject: eyes closed / open); return their paths.

    Subject s is written in `formats[s % len(formats)]` ("edf" or "fif"); its beta rhythm is
    `RHYTHMS[(s // 2) % 2]` (pairs of subjects, balanced against the format). `coupling`,
    `background_uv`, `beta_uv` and `nuisance` as in `simulate` (the defaults are the demo
    cohort's).
    """
    if coupling not in COUPLINGS:
        raise ValueError(f"coupling must be one of {COUPLINGS}, got {coupling!r}")
    if not formats or set(formats) - {"edf", "fif"}:
        raise ValueError(f"formats must be a non-empty tuple of 'edf' / 'fif', got {formats!r}")
    import mne

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = standard_positions()
    names = list(CHANNELS_10_20)
    std = np.stack([table[c] for c in names]).astype(np.float64)
    n_subjects = math.ceil(n_recordings / 2)
    width = max(2, len(str(n_subjects)))
    participants: list[tuple] = []
    paths = []
    for s in range(n_subjects):
        rng = np.random.default_rng([seed, s])
        sub = f"sub-{s + 1:0{width}d}"
        alpha_hz = float(rng.uniform(8.5, 11.5))
        fmt = formats[s % len(formats)]
        # A real cap sits a few millimetres off the template positions.
        electrodes = std + rng.normal(0, 0.003, std.shape)
        rhythm = RHYTHMS[(s // 2) % 2]
        participants.append(
            (
                sub,
                int(rng.integers(20, 70)),
                "MF"[int(rng.integers(0, 2))],
                f"{alpha_hz:.2f}",
                rhythm,
            )
        )
        for c in range(2):
            r = 2 * s + c
            if r >= n_recordings:
                break
            condition = CONDITIONS[(s + c) % 2]  # alternate which condition comes first
            rec_rng = np.random.default_rng([seed, s, c])
            eeg, eog, ecg, ann = simulate(
                rec_rng,
                electrodes,
                condition,
                alpha_hz,
                duration_s,
                sfreq,
                rhythm == "coupled",
                coupling,
                background_uv,
                beta_uv,
                nuisance,
            )
            data = np.vstack([eeg, eog[None], ecg[None]]) * 1e-6  # microvolts -> volts
            eeg_dir = out / sub / "eeg"
            eeg_dir.mkdir(parents=True, exist_ok=True)
            path = eeg_dir / f"{sub}_task-{condition}_eeg.{fmt}"
            if fmt == "edf":
                ch = [f"EEG {_OLD.get(n, n).upper()}-REF" for n in names] + ["EOG", "ECG"]
                info = mne.create_info(ch, sfreq, "eeg")
            else:
                info = mne.create_info(names + ["EOG", "ECG"], sfreq, ["eeg"] * 19 + ["eog", "ecg"])
            raw = mne.io.RawArray(data, info, verbose="error")
            if fmt == "fif":
                dig = dict(zip(names, electrodes, strict=True))
                raw.set_montage(mne.channels.make_dig_montage(dig, coord_frame="head"))
            if ann:
                onset, duration, desc = zip(*ann, strict=True)
                raw.set_annotations(mne.Annotations(onset, duration, desc))
            _write_raw(raw, path, fmt)
            paths.append(str(path))
    write_participants(out / "participants.tsv", ("age", "sex", "alpha_hz", "rhythm"), participants)
    atomic_write_text(
        out / "dataset_description.json",
        json.dumps({"Name": "jepa-forge synthetic resting EEG cohort", "BIDSVersion": "1.8.0"}),
    )
    return paths


def _write_raw(raw, path: Path, fmt: str) -> None:
    import mne

    # Written under a temporary name and renamed, so a killed run never leaves a half file.
    tmp = path.with_name(f".tmp-{path.stem}.{fmt}")
    if fmt == "edf":
        mne.export.export_raw(tmp, raw, fmt="edf", overwrite=True, verbose="error")
    else:
        raw.save(tmp, fmt="single", overwrite=True, verbose="error")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(
        prog="python -m modalities.eeg.demo",
        description="Write a synthetic EEG cohort (EDF+ / FIF, participants.tsv) with the "
        "`rhythm` label; `pipelines.ingest eeg --demo-n` writes the default one itself.",
    )
    p.add_argument("out", help="output directory (BIDS-like: sub-XX/eeg/...)")
    p.add_argument("--recordings", type=int, default=24, help="two per subject (default 24)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duration", type=float, default=300.0, help="seconds per recording")
    p.add_argument("--coupling", choices=COUPLINGS, default="amplitude")
    p.add_argument("--background-uv", type=float, default=BACKGROUND_UV)
    p.add_argument(
        "--beta-uv", type=float, default=20.0, help="beta amplitude with --coupling frequency"
    )
    p.add_argument(
        "--formats",
        default="edf,fif",
        help="comma-separated file formats, alternating by subject (default edf,fif)",
    )
    p.add_argument(
        "--no-nuisance",
        action="store_true",
        help="leave out the alpha rhythm and blinks (record-level traits of the eyes-closed / "
        "eyes-open condition, not of the rhythm classes); muscle bursts stay",
    )
    args = p.parse_args(argv)
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    if args.recordings < 1:
        p.error("--recordings must be at least 1")
    if args.background_uv < 0 or args.beta_uv < 0:
        p.error("--background-uv and --beta-uv must not be negative")
    try:
        paths = generate_cohort(
            args.out,
            args.recordings,
            args.seed,
            args.duration,
            coupling=args.coupling,
            background_uv=args.background_uv,
            beta_uv=args.beta_uv,
            formats=formats,
            nuisance=not args.no_nuisance,
        )
    except (ValueError, OSError) as e:
        print(f"modalities.eeg.demo: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(paths)} recordings and participants.tsv to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
