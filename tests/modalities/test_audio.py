"""Tests of modalities/audio (reader side): the Kaldi-compatible log-mel against
kaldi-native-fbank, the demo cohort in four formats, decoding, mono, resampling, segments,
labels, statistics, every refused input with its reason, and the ingest CLI end to end."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf

from modalities import get_modality
from modalities.audio import MODALITY, AudioOptions
from modalities.audio.demo import DIRECTIONS, direction_score, fix_ogg_serial, generate_cohort
from modalities.audio.fbank import LOG_FLOOR, log_mel, mel_filters, num_frames
from modalities.audio.stats import fit_audio_stats
from modalities.base import ModalityError, ReadContext
from pipelines.shards import records_to_table
from pipelines.worker import full_schema

SMALL = AudioOptions(segment_frames=256)


def ctx(path: Path, max_file_bytes: int = 1 << 34) -> ReadContext:
    return ReadContext(str(path), str(path), os.path.getsize(path), max_file_bytes)


def read_all(path: Path, opts: AudioOptions = SMALL, **kw) -> list[dict]:
    return list(MODALITY.read(ctx(path, **kw), opts))


def tone(freq: float, seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    y = 0.5 * np.sin(2 * np.pi * freq * t)
    return np.stack([y] * channels, axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("audio_demo")
    generate_cohort(out, 16, seed=3)
    return out


# -- the log-mel -------------------------------------------------------------------------------


def _kaldi(x: np.ndarray, rate: int, n_mels: int) -> np.ndarray:
    import kaldi_native_fbank as knf

    o = knf.FbankOptions()
    o.frame_opts.dither = 0.0
    o.frame_opts.window_type = "hanning"
    o.frame_opts.samp_freq = rate
    o.mel_opts.num_bins = n_mels
    o.mel_opts.use_slaney_mel_scale = False  # Kaldi's own mel scale, 1127 ln(1 + f / 700)
    o.mel_opts.norm = "none"
    fb = knf.OnlineFbank(o)
    fb.accept_waveform(rate, x.tolist())
    fb.input_finished()
    return np.array([fb.get_frame(i) for i in range(fb.num_frames_ready)]).T


@pytest.mark.parametrize(("rate", "n_mels"), [(16000, 80), (16000, 64), (44100, 128), (8000, 40)])
def test_log_mel_matches_kaldi(rate, n_mels):
    """Kaldi's C++ fbank (through kaldi-native-fbank) with AudioMAE's settings: Hann window, no
    dither, no energy. Kaldi itself refuses 128 bins at 16 kHz (a filter narrower than one FFT
    bin), which torchaudio's port and `log_mel` allow; the same code is compared at 128 bins on
    44.1 kHz."""
    rng = np.random.default_rng(rate + n_mels)
    t = np.arange(int(rate * 1.37)) / rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 900 * t * t)
    x = (x + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
    ours = log_mel(x, rate, n_mels)
    ref = _kaldi(x, rate, n_mels)
    assert ours.shape == ref.shape == (n_mels, num_frames(len(x), rate))
    assert np.abs(ours - ref).max() < 2e-3


def test_log_mel_geometry_and_floor():
    assert num_frames(399, 16000) == 0 and num_frames(400, 16000) == 1
    assert num_frames(16000, 16000) == 98  # Kaldi's snip_edges: whole frames only
    fb = mel_filters(128, 512, 16000)
    assert fb.shape == (128, 257) and fb[:, -1].max() == 0.0  # no Nyquist weight
    # triangles linear in mel, each rising to 1 where the next one starts: between the first
    # and the last centre they sum to 1 at every FFT bin (a partition of unity)
    assert fb.max() <= 1.0
    inner = slice(10, 250)  # bins from ~310 Hz up to just under the last centre
    assert np.allclose(fb[:, inner].sum(axis=0), 1.0, atol=1e-5)
    silent = log_mel(np.zeros(1600, dtype=np.float32))
    assert np.allclose(silent, LOG_FLOOR)
    # a 1 kHz tone peaks in the bin whose centre is nearest 1 kHz on the mel scale
    mel = log_mel(tone(1000.0, 1.0, 16000)[:, 0])
    centre = np.argmax(fb[:, round(1000 / 16000 * 512)])
    assert abs(int(np.argmax(mel.mean(axis=1))) - int(centre)) <= 1


# -- reading -----------------------------------------------------------------------------------


def test_registry_schema_and_scan(tmp_path):
    assert get_modality("audio") is MODALITY
    schema = full_schema(MODALITY.schema(SMALL))
    assert schema.field("mel").type == pa.fixed_shape_tensor(pa.float16(), [128, 256])
    for name in ("a.WAV", "b.flac", "c.ogg", "d.mp3", "e.opus"):
        assert MODALITY.matches(name)
    assert not MODALITY.matches("labels.csv")


def test_demo_cohort_in_four_formats(demo):
    files = sorted(p for p in demo.rglob("*") if MODALITY.matches(str(p)))
    assert {p.suffix for p in files} == {".wav", ".flac", ".ogg", ".mp3"}
    assert {p.parent.name for p in files} == {"tone", "harmonic", "chirp", "noise"}
    rows = list(__import__("csv").DictReader(open(demo / "labels.csv")))
    assert len(rows) == 16 and {r["direction"] for r in rows} == set(DIRECTIONS)
    for p in files:
        recs = read_all(p, AudioOptions(segment_frames=512))
        assert len(recs) == 1 and recs[0]["mel"].shape == (128, 512)
        assert recs[0]["sample_rate"] == 16000 and 500 <= recs[0]["valid_frames"] <= 512


def test_demo_generation_is_deterministic(tmp_path, demo):
    generate_cohort(tmp_path, 16, seed=3)
    for p in demo.rglob("*.*"):
        if p.name != "demo.json":
            assert (tmp_path / p.relative_to(demo)).read_bytes() == p.read_bytes(), p


def test_ogg_serial_fix_keeps_the_samples(tmp_path):
    path = tmp_path / "a.ogg"
    sf.write(path, tone(440, 0.5, 16000), 16000, format="OGG", subtype="VORBIS")
    before = sf.read(path)[0]
    fix_ogg_serial(path, 1234)
    assert np.array_equal(sf.read(path)[0], before)  # libogg checks each page's CRC
    assert path.read_bytes()[14:18] == (1234).to_bytes(4, "little")


def test_oracle_reads_the_direction(demo):
    opts = AudioOptions(segment_frames=512, labels="csv", labels_csv=str(demo / "labels.csv"),
                        label_column="direction")  # fmt: skip
    hits = []
    for p in sorted(demo.rglob("*.*")):
        if MODALITY.matches(str(p)):
            rec = read_all(p, opts)[0]
            hits.append(
                (direction_score(rec["mel"], rec["valid_frames"]) > 0) == (rec["label"] == "up")
            )
    assert np.mean(hits) == 1.0


def test_stereo_44k_tone_is_mixed_and_resampled(tmp_path):
    path = tmp_path / "t.flac"
    data = tone(1000.0, 3.0, 44100, channels=2)
    data[:, 1] *= 0.5
    sf.write(path, data, 44100)
    (rec,) = read_all(path, AudioOptions(segment_frames=512))
    assert rec["source_sample_rate"] == 44100 and rec["source_channels"] == 2
    assert rec["valid_frames"] == num_frames(48000, 16000)
    ref = log_mel(0.75 * tone(1000.0, 3.0, 16000)[:, 0])
    got = rec["mel"][:, : rec["valid_frames"]].astype(np.float32)
    loud = ref.max(axis=1) > ref.max() - 20  # the bins the tone fills
    assert np.abs(got[loud] - ref[loud]).max() < 0.1
    assert np.all(rec["mel"][:, rec["valid_frames"] :] == np.float16(LOG_FLOOR))


def test_segments_hop_tail_and_min_frames(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, tone(300.0, 6.0, 16000), 16000)  # 598 frames
    recs = read_all(path, AudioOptions(segment_frames=256))
    assert [r["offset_s"] for r in recs] == [0.0, 2.56, 5.12]
    assert [r["valid_frames"] for r in recs] == [256, 256, 86]
    recs = read_all(path, AudioOptions(segment_frames=256, hop_frames=128, min_frames=100))
    assert [r["valid_frames"] for r in recs] == [256, 256, 256, 214]  # the 86-frame tail: gone
    assert [r["offset_s"] for r in recs] == [0.0, 1.28, 2.56, 3.84]


def test_labels_from_folders_and_csv(tmp_path):
    for cls in ("dog", "rain"):
        (tmp_path / "audio" / cls).mkdir(parents=True)
        sf.write(tmp_path / "audio" / cls / "1-100.wav", tone(500, 0.5, 16000), 16000)
    dog = tmp_path / "audio" / "dog" / "1-100.wav"
    rain = tmp_path / "audio" / "rain" / "1-100.wav"
    assert read_all(dog, AudioOptions(segment_frames=32, labels="folder"))[0]["label"] == "dog"
    table = tmp_path / "meta.csv"  # ESC-50: bare file names; a longer path wins over a name
    table.write_text("filename,fold,category\n1-100.wav,1,generic\nrain/1-100.wav,1,rain\n")
    opts = AudioOptions(segment_frames=32, labels="csv", labels_csv=str(table),
                        label_column="category")  # fmt: skip
    assert read_all(dog, opts)[0]["label"] == "generic"
    assert read_all(rain, opts)[0]["label"] == "rain"
    bad = tmp_path / "bad.csv"
    bad.write_text("name,cls\nx.wav,a\n")
    ns = MODALITY_ARGS(["--labels-csv", str(bad)])
    with pytest.raises(ValueError, match="needs a path column"):
        MODALITY.options_from_args(ns)


def MODALITY_ARGS(extra: list[str]):
    from pipelines.ingest import build_parser

    return build_parser("audio").parse_args(["audio", *extra])


def test_cli_options_round_trip():
    opts = MODALITY.options_from_args(
        MODALITY_ARGS(["--segment", "512", "--hop", "256", "--n-mels", "64", "--labels", "folder"])
    )
    assert opts == AudioOptions(n_mels=64, segment_frames=512, hop_frames=256, labels="folder")
    assert MODALITY.options_type(**json.loads(json.dumps(opts.__dict__))) == opts


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"labels": "sideways"}, "labels: expected one of"),
        ({"labels": "csv"}, "goes with a labels CSV"),
        ({"segment_frames": 0}, "segment_frames"),
        ({"min_frames": 2000}, "min_frames"),
    ],
)
def test_invalid_options_are_refused(kw, reason):
    with pytest.raises(ValueError, match=reason):
        AudioOptions(**kw)


# -- bad input ---------------------------------------------------------------------------------


def _bad_file(tmp_path: Path, kind: str, demo: Path) -> Path:
    wav = next(demo.rglob("*.wav"))
    if kind == "empty":
        p = tmp_path / "empty.wav"
        p.write_bytes(b"")
    elif kind == "corrupt header":
        p = tmp_path / "header.flac"
        p.write_bytes(b"fLaX" + os.urandom(2000))
    elif kind == "truncated wav":
        p = tmp_path / "cut.wav"
        p.write_bytes(wav.read_bytes()[: wav.stat().st_size // 2])
    elif kind in ("truncated flac", "truncated ogg", "truncated mp3"):
        ext = kind.split()[1]
        src = next(demo.rglob(f"*.{ext}"))
        p = tmp_path / f"cut.{ext}"
        p.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    elif kind == "unsupported codec":
        p = tmp_path / "clip.m4a"
        p.write_bytes(b"\x00\x00\x00\x20ftypM4A " + os.urandom(4000))
    elif kind == "nan samples":
        p = tmp_path / "nan.wav"
        data = tone(440, 1.0, 16000)
        data[8000] = np.nan
        sf.write(p, data, 16000, subtype="FLOAT")
    elif kind == "silent":
        p = tmp_path / "silent.flac"
        sf.write(p, np.zeros((16000, 2), dtype=np.float32), 16000)
    elif kind == "too short":
        p = tmp_path / "click.wav"
        sf.write(p, tone(440, 0.05, 16000), 16000)
    else:
        raise AssertionError(kind)
    return p


BAD = {
    "empty": "empty file",
    "corrupt header": "cannot decode",
    "truncated wav": "truncated WAV",
    "truncated flac": "truncated or corrupt stream",
    "truncated ogg": "truncated Ogg stream",
    "truncated mp3": "truncated stream",
    "unsupported codec": "unsupported codec",
    "nan samples": "non-finite samples",
    "silent": "silent",
    "too short": "too short",
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_input_is_refused_with_its_reason(tmp_path, demo, kind):
    path = _bad_file(tmp_path, kind, demo)
    with pytest.raises(ModalityError, match=BAD[kind]):
        read_all(path)


def test_size_limits(tmp_path, demo):
    wav = next(demo.rglob("*.wav"))
    with pytest.raises(ModalityError, match="over --max-file-bytes"):
        read_all(wav, max_file_bytes=1000)
    # a small FLAC whose decoded payload is over the limit: refused from the header
    flac = tmp_path / "big.flac"
    sf.write(flac, np.zeros((160000, 1), dtype=np.float32) + 0.1, 16000)
    size = flac.stat().st_size
    with pytest.raises(ModalityError, match="decoded audio would be 640000 bytes"):
        read_all(flac, max_file_bytes=max(size, 600000))


def test_stats_count_real_frames_only(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, tone(700.0, 3.0, 16000), 16000)
    recs = read_all(path, AudioOptions(segment_frames=256))
    table = records_to_table(
        [{"id": str(i), "source": str(path), **r} for i, r in enumerate(recs)],
        full_schema(MODALITY.schema(AudioOptions(segment_frames=256))),
    )
    stats = fit_audio_stats(table.to_batches(max_chunksize=1))
    real = np.concatenate([r["mel"][:, : r["valid_frames"]] for r in recs], axis=1)
    assert stats["frames"] == real.shape[1] == num_frames(48000, 16000)
    assert stats["mean"] == pytest.approx(real.astype(np.float64).mean(), rel=1e-6)
    assert stats["std"] == pytest.approx(real.astype(np.float64).std(), rel=1e-6)
    assert len(stats["bin_mean"]) == 128 and stats["files"] == 1


def test_ingest_cli_end_to_end(tmp_path, demo):
    import shutil

    from pipelines import ingest
    from pipelines.shards import ShardDataset

    src = tmp_path / "in"
    shutil.copytree(demo, src)
    for kind in ("truncated wav", "silent"):
        bad = _bad_file(tmp_path, kind, demo)
        shutil.copy(bad, src / "tone" / bad.name)
    out = tmp_path / "ds"
    args = ["audio", "--input", str(src), "--output", str(out), "--num-cpus", "1", "--quiet",
            "--segment", "512", "--labels-csv", str(src / "labels.csv"),
            "--label-column", "direction"]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        code = ingest.main(args)
    assert code == 0, stdout.getvalue()
    assert "16 sources ok, 2 quarantined" in stdout.getvalue()
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert sorted(Path(e["path"]).name for e in errors) == ["cut.wav", "silent.flac"]
    ds = ShardDataset(out)
    assert len(ds) == 16 and {ds[i]["label"] for i in range(16)} == set(DIRECTIONS)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["segments"] == 16 and stats["labels"] == {"down": 8, "up": 8}
    assert -20 < stats["mean"] < 0 < stats["std"]


def test_coupling_relation_and_its_oracle(tmp_path):
    """`--relation coupling`: labels coupled / independent; the oracle separates them on a
    single-voice cohort of harmonic notes an octave apart."""
    from modalities.audio.demo import COUPLINGS, coupling_score, main

    args = [str(tmp_path), "--files", "8", "--sounds", "harmonic", "--relation", "coupling",
            "--interval", "12", "--no-nuisance", "--formats", "flac"]  # fmt: skip
    assert main(args) == 0
    rows = list(__import__("csv").DictReader(open(tmp_path / "labels.csv")))
    assert [r["coupling"] for r in rows] == list(COUPLINGS) * 4
    scores = {c: [] for c in COUPLINGS}
    for r in rows:
        rec = read_all(tmp_path / r["path"], AudioOptions(segment_frames=512))[0]
        scores[r["coupling"]].append(coupling_score(rec["mel"], rec["valid_frames"], 12.0))
    assert min(scores["coupled"]) > 0.5 > max(scores["independent"])
    with pytest.raises(SystemExit):
        main([str(tmp_path / "x"), "--relation", "sideways"])


def test_voices_add_note_streams(tmp_path):
    one = read_all(Path(generate_cohort(tmp_path / "a", 1, seed=5, voices=1)[0]),
                   AudioOptions(segment_frames=512))[0]  # fmt: skip
    three = read_all(Path(generate_cohort(tmp_path / "b", 1, seed=5, voices=3)[0]),
                     AudioOptions(segment_frames=512))[0]  # fmt: skip

    def note_frames(rec):
        loud = rec["mel"].astype(np.float32).max(axis=0)
        return int((loud > np.percentile(loud, 5) + 3.0).sum())  # over the noise floor

    assert note_frames(three) > 1.8 * note_frames(one)


def test_comodulation_control_files_latents_and_oracle(tmp_path):
    """modalities.audio.modulation: 24 files (every sound and sync, as WAV, FLAC and OGG)
    through the real reader; the bands sit one in each 16-bin mel row; the oracle separates the
    classes for every sound; rates are per 10-ms frame within 2-8 Hz; every file's level is
    the set RMS within its +-6 dB gain, whatever its class (not a fixed peak: version 2's leak);
    the rate oracle follows the rate; phases.npy holds the bands' offsets;
    the same seed writes the same bytes (the Ogg file too); `--sounds` and `--rate-hz` narrow
    the cohort, `--relation antiphase` makes the other class half a cycle apart, and bad values
    are refused."""
    import csv

    import soundfile as sf

    from modalities.audio import modulation as mod

    assert mod.main([str(tmp_path / "a"), "--files", "24", "--seed", "1"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "a" / "labels.csv")))
    assert [r["sync"] for r in rows] == list(mod.SYNC) * 12
    assert [r["sound"] for r in rows[:8]] == [s for s in mod.SOUNDS for _ in range(2)]
    assert [Path(r["path"]).suffix for r in rows[::8]] == [".wav", ".flac", ".ogg"]
    rates = np.load(tmp_path / "a" / "rates.npy")
    assert rates.shape == (24, 512) and rates.min() >= 2.0 and rates.max() <= 8.0
    phases = np.load(tmp_path / "a" / "phases.npy")  # each band's offset: one per comodulated file
    assert phases.shape == (24, 8) and phases.min() >= 0 and phases.max() < 2 * np.pi
    assert np.ptp(phases[0::2], axis=1).max() == 0 and np.ptp(phases[1::2], axis=1).min() > 0
    filters = mel_filters(128, 512, 16000)
    for k, (lo, hi) in enumerate(mod.band_edges()):
        # the band's centre frequency excites the mel bins of row k most
        peak = int(np.argmax(filters[:, int(round((lo + hi) / 2 / 16000 * 512))]))
        assert peak // 16 == k
    scores, tracked, true = {}, [], []
    for r in rows:
        rec = read_all(tmp_path / "a" / r["path"], AudioOptions(segment_frames=512))[0]
        assert rec["valid_frames"] == 510
        assert mod.file_index(str(tmp_path / "a" / r["path"])) == int(r["path"][5:10])
        score = mod.sync_score(rec["mel"], valid_frames=rec["valid_frames"])
        scores.setdefault(r["sound"], {}).setdefault(r["sync"], []).append(score)
        track = mod.rate_track(rec["mel"], valid_frames=rec["valid_frames"])
        assert track.shape == (8, 510) and np.isfinite(track).all()
        tracked.append(track.mean(axis=0))
        true.append(np.log(rates[int(r["path"][5:10]), :510]))
    for sound, by_sync in scores.items():
        assert min(by_sync["comodulated"]) > 0.7 > max(by_sync["independent"]), sound
    # the token latent's oracle follows the rate (R^2 0.85 over these files; 0.78 per token on
    # the 1024-file cohort of docs/results.md)
    assert np.corrcoef(np.concatenate(tracked), np.concatenate(true))[0, 1] ** 2 > 0.6
    for r in rows:
        if r["path"].endswith(".wav"):
            y, _ = sf.read(tmp_path / "a" / r["path"])
            db = 20 * np.log10(np.sqrt(np.mean(y**2)) / mod.RMS)
            assert abs(db) <= mod.GAIN_DB + 0.05, (r, db)
    mod.generate(tmp_path / "b", 17, seed=1)
    for name in ("clip-00001.wav", "clip-00016.ogg"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    args = [str(tmp_path / "c"), "--files", "4", "--sounds", "bursts", "--rate-hz", "1", "2"]
    assert mod.main(args) == 0
    assert {r["sound"] for r in csv.DictReader(open(tmp_path / "c" / "labels.csv"))} == {"bursts"}
    rates = np.load(tmp_path / "c" / "rates.npy")
    assert rates.min() >= 1.0 and rates.max() <= 2.0
    assert json.loads((tmp_path / "c" / "demo.json").read_text())["sounds"] == ["bursts"]
    assert mod.main([str(tmp_path / "d"), "--rate-hz", "3", "2"]) == 1
    # --relation antiphase: the other class has the upper bands half a cycle behind the lower
    assert mod.main([str(tmp_path / "e"), "--files", "8", "--relation", "antiphase"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "e" / "labels.csv")))
    assert [r["sync"] for r in rows] == ["comodulated", "antiphase"] * 4
    phases = np.load(tmp_path / "e" / "phases.npy")
    assert np.ptp(phases[0::2], axis=1).max() == 0
    lag = np.mod(phases[1::2, 4:] - phases[1::2, :4], 2 * np.pi)
    assert np.allclose(lag, np.pi) and np.ptp(phases[1::2, :4], axis=1).max() == 0
    score = {}
    for r in rows:
        rec = read_all(tmp_path / "e" / r["path"], AudioOptions(segment_frames=512))[0]
        score.setdefault(r["sync"], []).append(mod.sync_score(rec["mel"], valid_frames=510))
    assert min(score["comodulated"]) > max(score["antiphase"])
    assert json.loads((tmp_path / "e" / "demo.json").read_text())["relation"] == "antiphase"
    with pytest.raises(ValueError, match="relation must be one of"):
        mod.generate(tmp_path / "d", 2, relation="sideways")
    with pytest.raises(ValueError, match="sounds must be among"):
        mod.generate(tmp_path / "d", 2, sounds=("violin",))


def test_comodulation_probe_end_to_end(tmp_path):
    """benchmarks/audio_modulation_probe.py, which docs/results.md rests its audio numbers on:
    16 control files read by the audio reader (labels from the cohort's CSV), a 3-step run with
    loss.spread, then every probe (oracle, pooled patches, token rate, sync, sound) for the run
    and its random init, the token rate's oracle and a one-epoch fit of it from both encoders
    on 4 labelled files (and from one patch at a time), and sync read from the prediction error
    with each band masked, into the JSON."""
    import runpy
    import subprocess
    import sys

    from modalities.audio import MODALITY
    from modalities.audio import modulation as mod
    from modalities.base import ReadContext
    from pipelines.shards import write_dataset
    from pipelines.worker import full_schema

    repo = Path(__file__).resolve().parents[2]
    raw = tmp_path / "raw"
    paths = mod.generate(raw, 16, seed=2)
    opts = AudioOptions(
        segment_frames=512, labels="csv", labels_csv=str(raw / "labels.csv"), label_column="sync"
    )
    records = []
    for i, path in enumerate(paths):
        ctx = ReadContext(path, path, Path(path).stat().st_size, 1 << 34)
        records += [{"id": f"r{i}", "source": path, **r} for r in MODALITY.read(ctx, opts)]
    mel = np.concatenate([r["mel"][:, : r["valid_frames"]].ravel() for r in records]).astype(float)
    data = tmp_path / "ds"
    write_dataset(data, "audio", full_schema(MODALITY.schema(opts)), records,
                  stats={"mean": float(mel.mean()), "std": float(mel.std())})  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    train = [sys.executable, "-m", "engine.train", "--data", str(data), "--out", str(run),
             "--config", "engine/configs/audio_control.yaml", "--steps", "3",
             "--save-every", "3", "data.batch_size=4", "data.num_workers=0",
             "loss.spread=0.1"]  # fmt: skip
    subprocess.run(train, cwd=repo, env=env, check=True, capture_output=True, timeout=300)
    out = tmp_path / "probe.json"
    probe = runpy.run_path(str(repo / "benchmarks" / "audio_modulation_probe.py"))["main"]
    args = ["--data", str(data), "--raw", str(raw), "--run", f"{run}:0", "--labels", "4",
            "--folds", "2", "--oracle", "--patches", "--rate-gate", "1", "--gate-files", "4",
            "--gate-arms", "pretrained", "random-init", "--band-error",
            "--json", str(out)]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        assert probe(args) == 0
    res = json.loads(out.read_text())["results"]
    arms = {
        f"{run}/{a}{g}"
        for a in ("pretrained", "random-init")
        for g in ("", "/rate_gate", "/band_error")
    }
    assert set(res) == {"oracle/4", "oracle/token_rate", "patches"} | arms
    assert res["oracle/4"]["accuracy"] > 0.8  # one number per file reads the label
    assert res["oracle/token_rate"]["r2"] > 0.3  # and one number per token the rate
    assert np.isfinite(res["patches"]["token_rate_r2"])
    for key in ("token_swing_r2", "token_alignment_r2"):  # the cohort has phases.npy
        assert np.isfinite(res["patches"][key][0])
    for arm in ("pretrained", "random-init"):
        gate = res[f"{run}/{arm}/rate_gate"]
        assert (gate["train_files"], gate["test_files"]) == (4, 8)
        assert gate["encoder_moved"] > 0  # fine-tuned end to end, the loaded encoder too
        for curve in (gate["r2_by_epoch"], gate["train_r2_by_epoch"]):
            assert list(curve) == ["1"] and np.isfinite(curve["1"])
        err = res[f"{run}/{arm}/band_error"]  # what the predictor makes of each masked band
        assert np.isfinite([err["comodulated"], err["independent"]]).all()
        assert 0 <= err["sync_4"][0] <= 1
    # the same fit with every patch encoded alone (what one patch shows of the rate)
    with contextlib.redirect_stdout(io.StringIO()):
        assert probe(args[:10] + ["--rate-gate", "1", "--gate-alone", "--json", str(out)]) == 0
    gate = json.loads(out.read_text())["results"][f"{run}/random-init/rate_gate_alone"]
    assert gate["test_files"] == 8 and np.isfinite(gate["r2_by_epoch"]["1"])
    for arm in ("pretrained", "random-init"):
        r = res[f"{run}/{arm}"]
        keys = {"token_rate_r2", "token_swing_r2", "token_alignment_r2", "sync_4", "sound_4"}
        assert keys <= set(r)
        assert 0 <= r["sync_4"][0] <= 1 and np.isfinite(r["token_rate_r2"])
