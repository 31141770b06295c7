"""A synthetic cohort of labelled sounds for the audio ingest and A-JEPA's positive controls.

Every file holds pairs of short notes (100 ms each, onsets 300 ms apart; 300-500 ms of
background between pairs), in `voices` independent streams. Two labels per file, written to
`labels.csv` (columns path, sound and the structural label's name):

- `sound`, the plain class, one per file and also its folder (folder-per-class layout): tone
  (a sine), harmonic (six partials, 1/k), chirp (a glide over a major third) or noise (a band
  of noise a third of an octave wide). One patch of the spectrogram shows it.
- the structural label, the positive control (`relation`):
  - `direction` (default): whether the second note of every pair lies `interval` semitones
    (default 7, a fifth) above the first ("up") or below it ("down"). Each pair's centre pitch
    is drawn log-uniformly from 250 to 2000 Hz and its notes sit half the step below and above
    it, so both classes have the same distribution of pitches, of pitch spread and of timing.
    Only the order of a pair's two notes in time tells the classes apart.
  - `coupling`: whether the notes of each pair lie the step apart (up or down at random per
    pair: "coupled") or are unrelated, each drawn as a coupled pair's notes are
    ("independent"). A masked note is predictable from its partner only when coupled.
  No 16 x 16 patch (160 ms) holds two notes of one pair (the notes are 200 ms apart).

Nuisances (`nuisance=False` leaves out all but the first two): each file's sample rate (16,
22.05 or 44.1 kHz) and channel count (1 or 2), its level (peak 0.2-0.8) and channel gains, note
levels (+-3 dB), a background noise floor (-50 to -35 dB). Files are written as WAV (16-bit),
FLAC, OGG/Vorbis and MP3, each format as likely in either class (Ogg's random stream serial is
fixed, so the bytes are reproducible).

`direction_score` and `coupling_score` are the controls' one-number oracles, read from a
record's log-mel (benchmarks/audio_oracle.py runs them over a dataset).
`python -m modalities.audio.demo OUT --files N` writes a cohort. Imports numpy and soundfile.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

#: bump when the generated data change (the demo cache keys on it)
DEMO_VERSION = 1
SOUNDS = ("tone", "harmonic", "chirp", "noise")
DIRECTIONS = ("up", "down")
COUPLINGS = ("coupled", "independent")
#: the structural label: the pairs' direction, or whether their notes are related at all
RELATIONS = {"direction": DIRECTIONS, "coupling": COUPLINGS}
FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}
RATES = (16000, 22050, 44100)
NOTE_S = 0.100
PAIR_ONSET_S = 0.300
INTERVAL_SEMITONES = 7.0  # a fifth
#: onset-to-onset lag of a pair in 10-ms frames (the oracle's lag)
PAIR_LAG_FRAMES = round(PAIR_ONSET_S / 0.010)


def _ogg_crc_table() -> list[int]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else (r << 1)
        table.append(r & 0xFFFFFFFF)
    return table


_OGG_CRC = _ogg_crc_table()


def fix_ogg_serial(path: Path, serial: int) -> None:
    """Set the bitstream serial number of every page of an Ogg file (libvorbis picks a random
    one, so the same samples would give different bytes each run) and redo each page's CRC."""
    data = bytearray(path.read_bytes())
    pos = 0
    while pos < len(data):
        if data[pos : pos + 4] != b"OggS":
            raise ValueError(f"{path}: no Ogg page at byte {pos}")
        nseg = data[pos + 26]
        size = 27 + nseg + sum(data[pos + 27 : pos + 27 + nseg])
        data[pos + 14 : pos + 18] = serial.to_bytes(4, "little")
        data[pos + 22 : pos + 26] = b"\0\0\0\0"
        crc = 0
        for byte in data[pos : pos + size]:
            crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC[(crc >> 24) ^ byte]
        data[pos + 22 : pos + 26] = crc.to_bytes(4, "little")
        pos += size
    path.write_bytes(bytes(data))


def _note(rng: np.random.Generator, sound: str, f: float, rate: int) -> np.ndarray:
    n = int(round(NOTE_S * rate))
    t = np.arange(n) / rate
    if sound == "tone":
        x = np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    elif sound == "harmonic":
        x = sum(
            np.sin(2 * np.pi * k * f * t + rng.uniform(0, 2 * np.pi)) / k
            for k in range(1, 7)
            if k * f < 0.45 * rate
        )
    elif sound == "chirp":
        # a glide over a major third centred (in log frequency) on f
        lo, hi = f * 2 ** (-1 / 6), f * 2 ** (1 / 6)
        inst = lo * (hi / lo) ** (t / NOTE_S)
        x = np.sin(2 * np.pi * np.cumsum(inst) / rate)
    elif sound == "noise":
        spec = np.fft.rfft(rng.standard_normal(n))
        freqs = np.fft.rfftfreq(n, 1 / rate)
        spec[(freqs < f * 2 ** (-1 / 6)) | (freqs > f * 2 ** (1 / 6))] = 0
        x = np.fft.irfft(spec, n)
        x = x / (np.abs(x).max() + 1e-12)
    else:
        raise ValueError(f"unknown sound {sound!r}; known: {', '.join(SOUNDS)}")
    ramp = int(0.010 * rate)
    env = np.ones(n)
    env[:ramp] = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    env[-ramp:] = env[:ramp][::-1]
    x = np.asarray(x, dtype=np.float64) * env
    return x / (np.abs(x).max() + 1e-12)


def synthesize(
    rng: np.random.Generator,
    sound: str,
    direction: str,
    seconds: float,
    rate: int,
    nuisance: bool = True,
    interval: float = INTERVAL_SEMITONES,
    voices: int = 1,
) -> np.ndarray:
    """One file's mono signal (peak 1) (module docstring). `nuisance=False`: every note at the
    same level and the noise floor at -45 dB (the same random draws are made, so the notes are
    those of the file with nuisances)."""
    total = int(round(seconds * rate))
    y = np.zeros(total)
    for _ in range(voices):
        t = rng.uniform(0.05, 0.45)
        while t + PAIR_ONSET_S + NOTE_S < seconds - 0.02:
            centre = float(np.exp(rng.uniform(np.log(250.0), np.log(2000.0))))
            half = 2.0 ** (interval / 24.0)
            low, high = centre / half, centre * half
            if direction == "independent":  # two unrelated notes, each distributed as above
                other = float(np.exp(rng.uniform(np.log(250.0), np.log(2000.0))))
                up = rng.random() < 0.5
                first = low if up else high
                second = other / half if rng.random() < 0.5 else other * half
            elif direction == "coupled":  # the step, up or down at random per pair
                first, second = (low, high) if rng.random() < 0.5 else (high, low)
            else:
                first, second = (low, high) if direction == "up" else (high, low)
            for onset, f in ((t, first), (t + PAIR_ONSET_S, second)):
                db = rng.uniform(-3, 3)
                note = _note(rng, sound, f, rate) * 10 ** ((db if nuisance else 0.0) / 20)
                i = int(round(onset * rate))
                y[i : i + len(note)] += note[: total - i]
            t += PAIR_ONSET_S + NOTE_S + rng.uniform(0.3, 0.5)
    floor = rng.uniform(-50, -35)
    y += rng.standard_normal(total) * 10 ** ((floor if nuisance else -45.0) / 20)
    return y / np.abs(y).max()


def generate_cohort(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    seconds: float = 5.12,
    formats: tuple[str, ...] = tuple(FORMATS),
    sounds: tuple[str, ...] = SOUNDS,
    nuisance: bool = True,
    interval: float = INTERVAL_SEMITONES,
    voices: int = 1,
    relation: str = "direction",
) -> list[str]:
    """Write `n` files under `out_dir`/<sound>/ and `labels.csv`; return the files' paths.
    `nuisance=False` leaves out the level nuisances (`synthesize`) and the file level and
    channel gains (peak 0.5 in every channel)."""
    import soundfile as sf

    if relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; known: {', '.join(RELATIONS)}")
    bad = [f for f in formats if f not in FORMATS] + [s for s in sounds if s not in SOUNDS]
    if bad or not formats or not sounds:
        raise ValueError(
            f"unknown or missing formats / sounds {bad}; formats: {', '.join(FORMATS)}; "
            f"sounds: {', '.join(SOUNDS)}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, paths = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, i, 0xA0D10])
        direction = RELATIONS[relation][i % 2]
        sound = sounds[(i // 2) % len(sounds)]
        # both files of a direction pair share sound and format; each block of pairs shifts
        # the format against the sound, so 16 files hold every sound in two formats
        fmt = formats[(i // 2 + i // (2 * len(sounds))) % len(formats)]
        rate = int(rng.choice(RATES))
        channels = int(rng.integers(1, 3))
        y = synthesize(rng, sound, direction, seconds, rate, nuisance, interval, voices)
        level = rng.uniform(0.2, 0.8)
        y = y * (level if nuisance else 0.5)
        gains = [rng.uniform(0.8, 1.0) for _ in range(channels)]
        data = np.stack([y * (g if nuisance else 1.0) for g in gains], axis=1)
        rel = f"{sound}/clip-{i:05d}.{fmt}"
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        container, subtype = FORMATS[fmt]
        tmp = path.with_name(path.name + ".part")
        sf.write(tmp, data.astype(np.float32), rate, format=container, subtype=subtype)
        if container == "OGG":
            fix_ogg_serial(tmp, 0x4A455041 + i)
        tmp.replace(path)
        rows.append({"path": rel, "sound": sound, relation: direction})
        paths.append(str(path))
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["path", "sound", relation])
        w.writeheader()
        w.writerows(rows)
    meta = {"version": DEMO_VERSION, "files": n, "seed": seed, "seconds": seconds,
            "formats": list(formats), "sounds": list(sounds), "nuisance": nuisance,
            "interval": interval, "voices": voices, "relation": relation}  # fmt: skip
    (out / "demo.json").write_text(json.dumps(meta, indent=1) + "\n")
    return paths


def direction_score(mel: np.ndarray, valid_frames: int | None = None) -> float:
    """The control's oracle from one log-mel [n_mels, frames]: the mean change of the spectral
    centroid (in mel bins) from a note to the frame one pair lag later, over frame pairs where
    both hold a note. Positive: the second notes lie higher ("up")."""
    x = np.asarray(mel, dtype=np.float64)[:, : valid_frames or None]
    loud = x.max(axis=0)
    note = loud > np.median(loud) + 3.0  # ~13 dB over the typical (background) frame
    p = np.exp(x - x.max(axis=0, keepdims=True))
    centroid = (np.arange(len(x))[:, None] * p).sum(axis=0) / p.sum(axis=0)
    lag = PAIR_LAG_FRAMES
    both = note[:-lag] & note[lag:]
    if not both.any():
        return 0.0
    return float((centroid[lag:] - centroid[:-lag])[both].mean())


def coupling_score(
    mel: np.ndarray, valid_frames: int | None = None, interval: float = INTERVAL_SEMITONES
) -> float:
    """The coupling control's oracle from one log-mel [n_mels, frames]: over frame pairs one
    pair lag apart that both hold a note, the share whose loudest mel bins lie `interval`
    semitones apart (within a semitone and a half, for the mel grid's coarseness)."""
    from modalities.audio.fbank import LOW_FREQ

    x = np.asarray(mel, dtype=np.float64)[:, : valid_frames or None]
    n_mels = len(x)
    lo, hi = 1127.0 * np.log(1 + LOW_FREQ / 700.0), 1127.0 * np.log(1 + 8000.0 / 700.0)
    centres = 700.0 * (
        np.exp((lo + (hi - lo) * np.arange(1, n_mels + 1) / (n_mels + 1)) / 1127.0) - 1
    )
    loud = x.max(axis=0)
    note = loud > np.median(loud) + 3.0
    # the lowest bin within ~13 dB of the frame's loudest: a harmonic note's fundamental (the
    # wide high-frequency filters can sum more energy from its upper partials)
    lowest = np.argmax(x > loud[None, :] - 3.0, axis=0)
    peak = np.log2(centres[lowest]) * 12.0  # semitones
    lag = PAIR_LAG_FRAMES
    both = note[:-lag] & note[lag:]
    if not both.any():
        return 0.0
    step = np.abs(peak[lag:] - peak[:-lag])[both]
    return float(np.mean(np.abs(step - interval) < 1.5))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m modalities.audio.demo",
        description="Write the synthetic note-pair cohort (labels.csv: sound, direction).",
    )
    p.add_argument("out", help="output folder")
    p.add_argument("--files", type=int, default=48, help="number of files (default 48)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seconds", type=float, default=5.12, help="length of each file")
    p.add_argument(
        "--formats", default=",".join(FORMATS), help=f"comma-separated of {', '.join(FORMATS)}"
    )
    p.add_argument(
        "--sounds", default=",".join(SOUNDS), help=f"comma-separated of {', '.join(SOUNDS)}"
    )
    p.add_argument(
        "--no-nuisance",
        action="store_true",
        help="every file and note at one level, one noise floor (-45 dB)",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=INTERVAL_SEMITONES,
        metavar="SEMITONES",
        help=f"the step between a pair's notes (default {INTERVAL_SEMITONES:g}, a fifth)",
    )
    p.add_argument(
        "--voices",
        type=int,
        default=1,
        help="independent streams of pairs in each file, all in the file's direction (default 1)",
    )
    p.add_argument(
        "--relation",
        choices=tuple(RELATIONS),
        default="direction",
        help="the structural label: direction (up / down, default) or coupling (a pair's notes "
        "a step apart, or unrelated)",
    )
    args = p.parse_args(argv)
    try:
        paths = generate_cohort(
            args.out,
            args.files,
            args.seed,
            args.seconds,
            tuple(s.strip() for s in args.formats.split(",") if s.strip()),
            tuple(s.strip() for s in args.sounds.split(",") if s.strip()),
            nuisance=not args.no_nuisance,
            interval=args.interval,
            voices=args.voices,
            relation=args.relation,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(paths)} files and labels.csv to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
