"""Tests of modalities/eeg (reader side): real pyedflib files, the demo cohort, channel names,
preprocessing, every refused input with its reason, BrainVision triplets, and statistics."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import mne
import numpy as np
import pyarrow as pa
import pyedflib
import pytest

from modalities import get_modality
from modalities.base import ModalityError, ReadContext
from modalities.bids import bids_entities
from modalities.eeg import MODALITY, EegOptions
from modalities.eeg.channels import canonical_name, resolve_channels
from modalities.eeg.demo import generate_cohort
from modalities.eeg.reader import is_recording
from modalities.eeg.stats import fit_eeg_stats
from pipelines.shards import records_to_table
from pipelines.worker import full_schema

PYEDFLIB_DATA = Path(pyedflib.__file__).parent / "tests" / "data"
TEN_TWENTY = list(resolve_channels(EegOptions()).names)


def ctx(path: Path, max_file_bytes: int = 1 << 34) -> ReadContext:
    return ReadContext(str(path), str(path), os.path.getsize(path), max_file_bytes)


def read_all(path: Path, opts: EegOptions | None = None, **kw) -> list[dict]:
    return list(MODALITY.read(ctx(path, **kw), opts or EegOptions()))


def write_raw(
    path: Path,
    data_uv: np.ndarray,
    names: list[str],
    sfreq: float = 256.0,
    types: list[str] | str = "eeg",
    annotations: list[tuple[float, float, str]] = (),
) -> Path:
    """A recording as EDF (via edfio) or FIF, by suffix."""
    raw = mne.io.RawArray(data_uv * 1e-6, mne.create_info(names, sfreq, types), verbose="error")
    if annotations:
        raw.set_annotations(mne.Annotations(*zip(*annotations, strict=True)))
    if path.suffix == ".edf":
        mne.export.export_raw(path, raw, fmt="edf", overwrite=True, verbose="error")
    else:
        raw.save(path, overwrite=True, verbose="error")
    return path


def noise(rng_seed: int, n_channels: int, seconds: float, sfreq: float = 256.0) -> np.ndarray:
    return np.random.default_rng(rng_seed).normal(0, 20, (n_channels, int(seconds * sfreq)))


def write_brainvision(root: Path, stem: str, data_uv: np.ndarray, names: list[str], sfreq: float):
    """A minimal BrainVision triplet (.vhdr/.vmrk/.eeg, float32 multiplexed) written by hand."""
    chans = "\n".join(f"Ch{i + 1}={n},,1,µV" for i, n in enumerate(names))
    (root / f"{stem}.vhdr").write_text(
        "Brain Vision Data Exchange Header File Version 1.0\n\n[Common Infos]\nCodepage=UTF-8\n"
        f"DataFile={stem}.eeg\nMarkerFile={stem}.vmrk\nDataFormat=BINARY\n"
        f"DataOrientation=MULTIPLEXED\nNumberOfChannels={len(names)}\n"
        f"SamplingInterval={1e6 / sfreq}\n\n[Binary Infos]\nBinaryFormat=IEEE_FLOAT_32\n\n"
        f"[Channel Infos]\n{chans}\n",
        encoding="utf-8",
    )
    (root / f"{stem}.vmrk").write_text(
        "Brain Vision Data Exchange Marker File, Version 1.0\n\n[Common Infos]\nCodepage=UTF-8\n"
        f"DataFile={stem}.eeg\n\n[Marker Infos]\nMk1=New Segment,,1,1,0\n",
        encoding="utf-8",
    )
    data_uv.T.astype("<f4").tofile(root / f"{stem}.eeg")
    return root / f"{stem}.vhdr"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("eeg-demo")
    return [Path(p) for p in generate_cohort(root, 4, seed=1, duration_s=96.0)]


@pytest.fixture(scope="module")
def demo_records(demo) -> dict[str, list[dict]]:
    return {p.name: read_all(p) for p in demo}


# ---------------------------------------------------------------------------------------------
# names, options, entities


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("EEG FP1-REF", "Fp1"),
        ("EEG T3-LE", "T7"),
        ("T5", "P7"),
        ("fz", "Fz"),
        ("CZ", "Cz"),
        ("Fp2:AVG", "Fp2"),
        ("EEG PZ-A1", "Pz"),
        ("Fp1-F7", None),  # bipolar: not one electrode
        ("ECG", None),
        ("sine 8 Hz", None),
    ],
)
def test_channel_names_are_normalised_to_the_montage_spelling(raw, expected):
    assert canonical_name(raw) == expected


def test_unknown_channels_are_kept_without_position_or_dropped():
    keep = resolve_channels(EegOptions(channels=("Cz", "sine 5Hz")))
    assert keep.names == ("Cz", "sine 5Hz") and keep.unknown == ("sine 5Hz",)
    assert np.isfinite(keep.positions[0]).all() and np.isnan(keep.positions[1]).all()
    drop = resolve_channels(EegOptions(channels=("Cz", "sine 5Hz"), unknown_channels="drop"))
    assert drop.names == ("Cz",) and drop.dropped == ("sine 5Hz",)
    schema = MODALITY.schema(EegOptions(channels=("Cz", "sine 5Hz"), unknown_channels="drop"))
    assert schema.field("eeg").type.shape == [1, 16 * 128]


@pytest.mark.parametrize(
    "kw, reason",
    [
        ({"channels": "10-5"}, "unknown channel set"),
        ({"sfreq": 127.5}, "whole number of Hz"),
        ({"window_s": 2.5}, "whole number of seconds"),
        ({"low_pass": 64.0}, "below the output Nyquist"),
        ({"high_pass": 40.0, "low_pass": 30.0}, "must be below low_pass"),
        ({"bad_channels": "ignore"}, "bad_channels"),
        ({"channels": ("Cz", "cz")}, "listed twice"),
    ],
)
def test_invalid_options_are_refused_with_a_reason(kw, reason):
    with pytest.raises(ValueError, match=reason):
        EegOptions(**kw)
        resolve_channels(EegOptions(**kw))


def test_bids_entities():
    e = bids_entities("/d/sub-07/ses-2/eeg/sub-07_ses-2_task-rest_run-1_eeg.edf")
    assert e == {"subject": "sub-07", "session": "2", "task": "rest", "run": "1"}
    assert bids_entities("/d/night3.edf")["subject"] == "night3"
    assert bids_entities("/d/sub-3/x.fif")["subject"] == "sub-3"


def test_cli_options_round_trip():
    parser = argparse.ArgumentParser()
    MODALITY.add_cli_options(parser)
    args = parser.parse_args(
        ["--channels", "Cz,Pz", "--sfreq", "256", "--window", "8", "--hop", "4",
         "--high-pass", "0", "--low-pass", "40", "--notch", "50,100",
         "--bad-channels", "drop-window", "--label-from", "none"]
    )  # fmt: skip
    opts = MODALITY.options_from_args(args)
    assert opts.channels == ("Cz", "Pz") and opts.sfreq == 256 and opts.hop_s == 4
    assert opts.high_pass is None and opts.low_pass == 40 and opts.notch == (50.0, 100.0)
    # The manifest stores options as JSON: they must come back equal.
    assert EegOptions(**dataclasses.asdict(opts)) == opts
    assert MODALITY.options_from_args(parser.parse_args([])) == EegOptions()


def test_registry_schema_and_directory_scan(tmp_path):
    assert get_modality("eeg") is MODALITY
    for name in ("a.edf", "b.BDF", "c.vhdr", "d.set", "e.fif", "f.fif.gz", "g.gdf", "h.cnt"):
        assert is_recording(str(tmp_path / name)), name
    for name in ("c.vmrk", "c.eeg", "d.fdt", "notes.txt"):
        assert not is_recording(str(tmp_path / name)), name
    (tmp_path / "big_raw.fif").touch()
    assert not is_recording(str(tmp_path / "big_raw-1.fif"))  # continuation of a split FIF
    assert not is_recording(str(tmp_path / "sub-1_split-02_eeg.fif"))
    assert is_recording(str(tmp_path / "sub-1_split-01_eeg.fif"))


# ---------------------------------------------------------------------------------------------
# demo cohort and real files


def test_demo_cohort_edf_and_fif(demo, demo_records):
    assert {p.suffix for p in demo} == {".edf", ".fif"}
    schema = full_schema(MODALITY.schema(EegOptions()))
    for path in demo:
        recs = demo_records[path.name]
        assert len(recs) >= 3
        table = records_to_table([{"id": "x", "source": "s", **r} for r in recs], schema)
        assert table.num_rows == len(recs)
        r = recs[0]
        assert r["channels"] == TEN_TWENTY and r["eeg"].shape == (19, 2048)
        assert r["eeg"].dtype == np.float32 and r["n_channels"] == 19
        assert r["label"] in ("eyesclosed", "eyesopen") and r["subject"].startswith("sub-")
        # microvolts: tens of uV, not volts
        assert 3 < float(np.std(r["eeg"])) < 200
        if path.suffix == ".edf":  # clinical names mapped; ECG/EOG noted, not taken
            assert r["source_channels"][7] == "EEG T3-REF"
            assert sorted(r["dropped_channels"]) == ["ECG", "EOG"]
            np.testing.assert_allclose(r["positions"], resolve_channels(EegOptions()).positions)
        else:  # typed channels: EOG/ECG are not EEG; positions from the digitised montage
            assert r["dropped_channels"] == []
            std = resolve_channels(EegOptions()).positions
            shift = np.linalg.norm(r["positions"] - std, axis=1)
            assert 0 < shift.mean() < 0.01


def test_demo_windows_skip_bad_annotations(demo, demo_records):
    for path in demo:
        raw = mne.io.read_raw(path, verbose="error")
        bad = [(a["onset"] - raw.first_time, a["duration"]) for a in raw.annotations]
        starts = [r["window_start_s"] for r in demo_records[path.name]]
        for s in starts:
            assert not any(o < s + 16 and o + d > s for o, d in bad)
        free = [
            s for s in np.arange(0, 96 - 16 + 1, 16)
            if not any(o < s + 16 and o + d > s for o, d in bad)
        ]  # fmt: skip
        assert starts == free


def test_demo_label_is_in_posterior_alpha(demo_records):
    """Eyes-closed windows carry more 8-12 Hz power at O1/O2 than eyes-open ones."""

    def alpha(recs):
        x = np.stack([r["eeg"][[17, 18]] for r in recs])
        spec = np.abs(np.fft.rfft(x, axis=-1)) ** 2
        f = np.fft.rfftfreq(x.shape[-1], 1 / 128)
        return spec[..., (f >= 8) & (f <= 12)].sum(-1).mean()

    by_label = {"eyesclosed": [], "eyesopen": []}
    for recs in demo_records.values():
        by_label[recs[0]["label"]].append(alpha(recs))
    assert min(by_label["eyesclosed"]) > 3 * max(by_label["eyesopen"])


def test_demo_generation_is_deterministic(tmp_path, demo, demo_records):
    again = generate_cohort(tmp_path, 2, seed=1, duration_s=96.0)
    for p in again:
        first = demo_records[Path(p).name]
        for a, b in zip(first, read_all(Path(p)), strict=True):
            np.testing.assert_array_equal(a["eeg"], b["eeg"])


def test_pyedflib_edf_with_unnamed_channels_needs_a_channel_list():
    path = PYEDFLIB_DATA / "test_generator.edf"
    with pytest.raises(ModalityError, match="no EEG channels of the channel set"):
        read_all(path)
    opts = EegOptions(channels=("sine 8 Hz", "sine 15 Hz", "squarewave"), high_pass=None)
    recs = read_all(path, opts)
    assert len(recs) == 600 // 16
    r = recs[3]
    assert r["channels"] == ["sine 8 Hz", "sine 15 Hz", "squarewave"]
    assert np.isnan(r["positions"]).all() and r["n_channels"] == 3
    spec = np.abs(np.fft.rfft(r["eeg"], axis=-1))
    f = np.fft.rfftfreq(r["eeg"].shape[1], 1 / 128)
    assert f[spec[0].argmax()] == pytest.approx(8.0, abs=0.1)
    assert f[spec[1].argmax()] == pytest.approx(15.0, abs=0.1)


@pytest.mark.parametrize(
    "name", ["test_generator.bdf", "test_generator_datarec_generator_0_5.bdf",
             "test_generator_datarec_generator_2.bdf"]
)  # fmt: skip
def test_pyedflib_bdf_files_resample_to_128_hz(name):
    recs = read_all(PYEDFLIB_DATA / name, EegOptions(channels=("pink noise", "white noise")))
    assert len(recs) == 1  # 30 s of data: one 16 s window
    assert recs[0]["eeg"].shape == (2, 2048) and recs[0]["n_channels"] == 2


def test_pyedflib_single_electrode_edf_fills_its_slot():
    recs = read_all(PYEDFLIB_DATA / "test_subsecond.edf")
    assert len(recs) == int(697.99 // 16)
    mask = recs[0]["channel_mask"]
    assert mask.tolist() == [1] + [0] * 18 and recs[0]["n_channels"] == 1
    assert not recs[0]["eeg"][1:].any() and recs[0]["eeg"][0].any()


def test_brainvision_triplet(tmp_path):
    data = noise(0, 3, 40)
    vhdr = write_brainvision(tmp_path, "rec", data, ["Cz", "Pz", "Oz"], 256.0)
    recs = read_all(vhdr, EegOptions(channels=("Cz", "Pz", "Oz"), high_pass=None))
    assert len(recs) == 2
    # Same samples as MNE's reader, resampled: amplitudes of tens of microvolts survive.
    assert 10 < recs[0]["eeg"].std() < 25
    (tmp_path / "rec.eeg").unlink()
    with pytest.raises(ModalityError, match="unreadable BrainVision triplet.*'rec.eeg'.*missing"):
        read_all(vhdr)


# ---------------------------------------------------------------------------------------------
# preprocessing


def test_volts_to_microvolts_resampling_and_filters(tmp_path):
    t = np.arange(int(64 * 256)) / 256
    sig = np.stack([
        40 * np.sin(2 * np.pi * 10 * t),                # kept
        40 * np.sin(2 * np.pi * 10 * t) + 300,          # DC: removed by the high-pass
        40 * np.sin(2 * np.pi * 10 * t) + 30 * np.sin(2 * np.pi * 50 * t),  # notched
    ])  # fmt: skip
    path = write_raw(tmp_path / "s.fif", sig, ["Cz", "Pz", "Oz"])
    recs = read_all(path, EegOptions(channels=("Cz", "Pz", "Oz"), notch=(50.0,)))
    x = recs[1]["eeg"]  # a middle window: no filter edges
    amp = np.sqrt(2) * x.std(axis=1)
    np.testing.assert_allclose(amp, 40, rtol=0.03)
    assert abs(x[1].mean()) < 1.0
    f = np.fft.rfftfreq(x.shape[1], 1 / 128)
    spec = np.abs(np.fft.rfft(x[2])) / x.shape[1] * 2
    assert spec[np.argmin(abs(f - 50))] < 1.0


def test_window_and_hop(tmp_path):
    path = write_raw(tmp_path / "w.fif", noise(1, 2, 40), ["Cz", "Pz"])
    recs = read_all(path, EegOptions(channels=("Cz", "Pz"), window_s=10, hop_s=5))
    assert [r["window_start_s"] for r in recs] == [0, 5, 10, 15, 20, 25, 30]
    assert recs[0]["eeg"].shape == (2, 1280)


def test_bad_annotations_skip_windows(tmp_path):
    ann = [(20.0, 1.0, "BAD_movement"), (40.0, 0.0, "bad"), (50.0, 2.0, "Stimulus")]
    path = write_raw(tmp_path / "a.fif", noise(2, 2, 64), ["Cz", "Pz"], annotations=ann)
    recs = read_all(path, EegOptions(channels=("Cz", "Pz")))
    assert [r["window_start_s"] for r in recs] == [0.0, 48.0]


@pytest.mark.parametrize("policy", ["drop-channel", "drop-window"])
def test_flat_and_nan_channel_policies(tmp_path, policy):
    data = noise(3, 3, 48)
    data[1, : 16 * 256] = 5.0  # Pz flat in window 0
    data[2, 20 * 256 : 21 * 256] = np.nan  # Oz has NaN in window 1
    path = write_raw(tmp_path / "f.fif", data, ["Cz", "Pz", "Oz"])
    recs = read_all(path, EegOptions(channels=("Cz", "Pz", "Oz"), bad_channels=policy))
    if policy == "drop-window":
        assert [r["window_start_s"] for r in recs] == [32.0]
        return
    assert [r["window_start_s"] for r in recs] == [0.0, 16.0, 32.0]
    assert recs[0]["bad_channels"] == ["Pz"] and recs[0]["channel_mask"].tolist() == [1, 0, 1]
    assert not recs[0]["eeg"][1].any()
    assert recs[1]["bad_channels"] == ["Oz"] and np.isfinite(recs[1]["eeg"]).all()
    assert recs[2]["bad_channels"] == [] and recs[2]["n_channels"] == 3


# ---------------------------------------------------------------------------------------------
# refused inputs, each with its reason


def _truncated(tmp_path, demo):
    edf = next(p for p in demo if p.suffix == ".edf")
    data = edf.read_bytes()
    out = tmp_path / "trunc.edf"
    out.write_bytes(data[: len(data) * 2 // 3])
    return out


BAD_INPUTS = {
    "garbage": (lambda tmp, demo: _write(tmp / "x.edf", b"not an edf " * 50), "corrupt EDF/BDF"),
    "field": (
        lambda tmp, demo: _patch(next(p for p in demo if p.suffix == ".edf"), tmp, 236, b"xx"),
        "field 'data records' is 'xx'",
    ),
    "truncated": (_truncated, "truncated: the header declares"),
    "empty": (lambda tmp, demo: _write(tmp / "e.fif", b""), "empty file"),
    "not-fif": (lambda tmp, demo: _write(tmp / "n.fif", b"\x00" * 400), "unreadable header"),
    "no-eeg-typed": (
        lambda tmp, demo: write_raw(
            tmp / "m.fif", noise(4, 2, 40), ["ECG", "Resp"], types=["ecg", "misc"]
        ),
        "no EEG channels: the recording holds only ecg, misc",
    ),  # fmt: skip
    "no-eeg-named": (
        lambda tmp, demo: write_raw(tmp / "n.edf", noise(4, 2, 40), ["ECG", "Resp"]),
        "no EEG channels of the channel set",
    ),
    "short": (
        lambda tmp, demo: write_raw(tmp / "s.edf", noise(5, 2, 10), ["Cz", "Pz"]),
        "shorter than one window: 10.00 s",
    ),
    "flat": (
        lambda tmp, demo: write_raw(tmp / "f.fif", np.full((2, 40 * 256), 7.0), ["Cz", "Pz"]),
        "flat .* or non-finite in every window",
    ),
    "nan": (
        lambda tmp, demo: write_raw(tmp / "n.fif", np.full((2, 40 * 256), np.nan), ["Cz", "Pz"]),
        "flat .* or non-finite in every window",
    ),
    "all-bad": (
        lambda tmp, demo: write_raw(
            tmp / "b.fif", noise(6, 2, 40), ["Cz", "Pz"], annotations=[(0.0, 40.0, "BAD_x")]
        ),
        "no usable window: of 2 windows, 2 overlap annotations",
    ),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _patch(src: Path, tmp: Path, offset: int, value: bytes) -> Path:
    data = bytearray(src.read_bytes())
    data[offset : offset + 8] = value.ljust(8)
    return _write(tmp / "patched.edf", bytes(data))


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_input_is_refused_with_its_reason(tmp_path, demo, kind):
    make, reason = BAD_INPUTS[kind]
    path = make(tmp_path, demo)
    with pytest.raises(ModalityError, match=reason):
        read_all(path)


def test_size_limit_is_checked_before_reading(tmp_path, demo, monkeypatch):
    edf = next(p for p in demo if p.suffix == ".edf")

    def refuse(*a, **k):
        raise AssertionError("data read despite the size limit")

    monkeypatch.setattr(mne.io.BaseRaw, "get_data", refuse)
    with pytest.raises(ModalityError, match="19 channels x 24576 samples would decode to"):
        read_all(edf, max_file_bytes=1_000_000)


# ---------------------------------------------------------------------------------------------
# statistics


def _batches(records: list[dict], size: int) -> list[pa.RecordBatch]:
    schema = full_schema(MODALITY.schema(EegOptions()))
    rows = [{"id": str(i), "source": r["_source"], **r} for i, r in enumerate(records)]
    table = records_to_table(rows, schema)
    return table.to_batches(max_chunksize=size)


def test_stats_robust_scaling_positions_and_notes(demo_records):
    recs = [{**r, "_source": k} for k, rs in demo_records.items() for r in rs]
    recs[0] = {**recs[0], "channel_mask": np.r_[0, np.ones(18)].astype(np.uint8)}
    stats = fit_eeg_stats(_batches(recs, 7))
    assert stats["channels"] == TEN_TWENTY and stats["n_windows"] == len(recs)
    assert stats["channel_windows"][0] == len(recs) - 1
    cols = np.linspace(0, 2047, 64).round().astype(int)
    for c in (0, 9, 18):
        values = np.concatenate([r["eeg"][c, cols] for r in recs if r["channel_mask"][c]]).astype(
            np.float64
        )
        q = np.quantile(values, [0.25, 0.5, 0.75])
        assert stats["channel_median"][c] == pytest.approx(q[1], rel=1e-5, abs=1e-5)
        assert stats["channel_iqr"][c] == pytest.approx(q[2] - q[0], rel=1e-5)
    assert stats["dropped_channels"] == {"ECG": 2, "EOG": 2}  # per source, not per window
    assert set(stats["labels"]) == {"eyesclosed", "eyesopen"}
    assert stats["unpositioned_channels"] == [] and len(stats["positions"]) == 19
    # batching does not change anything
    assert fit_eeg_stats(_batches(recs, 1)) == stats


def test_stats_subsample_halves_deterministically(demo_records, monkeypatch):
    import modalities.eeg.stats as st

    recs = [{**r, "_source": k} for k, rs in demo_records.items() for r in rs]
    full = fit_eeg_stats(_batches(recs, 5))
    monkeypatch.setattr(st, "MAX_KEPT", 64 * 5)
    small = fit_eeg_stats(_batches(recs, 5))
    assert max(small["robust_sample_values"]) <= 64 * 5
    assert small == fit_eeg_stats(_batches(recs, 2))
    np.testing.assert_allclose(small["channel_iqr"], full["channel_iqr"], rtol=0.5)


# ---------------------------------------------------------------------------------------------
# end to end through `python -m pipelines.ingest eeg` (starts Ray)


@pytest.mark.slow
def test_ingest_cli_end_to_end(tmp_path, demo):
    import contextlib
    import io
    import json
    import shutil

    from pipelines import ingest
    from pipelines.shards import ShardDataset

    src = tmp_path / "in"
    src.mkdir()
    for p in demo[:2]:
        shutil.copy(p, src / p.name)
    write_brainvision(src, "sub-09_task-rest_eeg", noise(7, 3, 40), ["Cz", "Pz", "Oz"], 256.0)
    _truncated(src, demo)
    out = tmp_path / "ds"
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        code = ingest.main(
            ["eeg", "--input", str(src), "--output", str(out), "--num-cpus", "1", "--quiet"]
        )
    assert code == 0, stdout.getvalue()
    assert "3 sources ok, 1 quarantined" in stdout.getvalue()  # the triplet is one source
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [Path(e["path"]).name for e in errors] == ["trunc.edf"]
    assert errors[0]["reason"].startswith("truncated: the header declares")
    ds = ShardDataset(out)
    n_demo = sum(len(read_all(p)) for p in demo[:2])
    assert len(ds) == n_demo + 2
    stats = json.loads((out / "stats.json").read_text())
    assert stats["n_windows"] == len(ds) and stats["channels"] == TEN_TWENTY
    rec = ds[len(ds) - 1]
    assert rec["subject"] == "sub-09" and rec["channel_mask"].sum() == 2  # Oz: not in 10-20
    assert rec["dropped_channels"] == ["Oz"]
