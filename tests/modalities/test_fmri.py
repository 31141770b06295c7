"""Tests of modalities/fmri.py: real nibabel files, the demo cohort, TR handling, windowing, every
refused input with its reason, and dataset statistics on data with known structure."""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow as pa
import pytest
from fmri_testing import (
    DEFAULT_ATLAS_TSV,
    NIB_DATA,
    block_atlas,
    read_all,
    small_cohort,
    synthetic_scan,
    to_batch,
    varying_mask,
    write_scan,
)

from modalities import get_modality
from modalities.base import ModalityError
from modalities.fmri import (
    _NETWORK_NODES,
    MODALITY,
    FmriOptions,
    bids_entities,
    generate_cohort,
    header_tr,
    network_weights,
    resample_tr,
)

# ---------------------------------------------------------------------------------------------
# real nibabel files


@pytest.mark.parametrize(
    ("name", "klass"),
    [("example4d.nii.gz", nib.Nifti1Image), ("example_nifti2.nii.gz", nib.Nifti2Image)],
)
def test_nibabel_4d_files_match_nilearn_labels_masker(tmp_path, name, klass):
    from nilearn.maskers import NiftiLabelsMasker

    path = NIB_DATA / name
    img = nib.load(path)
    assert isinstance(img, klass)
    atlas = block_atlas(img, tmp_path / "atlas.nii.gz", (3, 2, 2), mask=varying_mask(img))
    opts = FmriOptions(atlas=str(atlas), window=2, detrend=False, standardize=False)
    records = read_all(path, opts)
    assert len(records) == 1
    rec = records[0]
    # pixdim[4] = 2000 labelled seconds: implausible, read as milliseconds (docs/fmri.md).
    assert rec["tr"] == pytest.approx(2.0)
    assert rec["subject"] == name.split(".")[0]
    n_rois = len(np.unique(np.asarray(nib.load(atlas).dataobj))) - 1
    assert rec["bold"].shape == (n_rois, 2) and rec["bold"].dtype == np.float32
    assert rec["bold"].flags.c_contiguous
    assert rec["n_missing_rois"] == 0

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = NiftiLabelsMasker(labels_img=str(atlas)).fit_transform(img).T
    np.testing.assert_allclose(rec["bold"], expected, rtol=1e-5)


def test_nibabel_functional_windows_are_z_scored_slices_of_one_series(tmp_path):
    path = NIB_DATA / "functional.nii"  # float64, 20 frames, TR 2 s
    img = nib.load(path)
    atlas = block_atlas(img, tmp_path / "atlas.nii.gz", (2, 2, 1), mask=varying_mask(img))
    opts = FmriOptions(atlas=str(atlas), window=8, hop=4)
    records = read_all(path, opts)
    assert [r["window_start"] for r in records] == [0, 4, 8, 12]
    assert [r["window_start_s"] for r in records] == [0.0, 8.0, 16.0, 24.0]
    # overlapping windows agree where they overlap
    np.testing.assert_array_equal(records[0]["bold"][:, 4:], records[1]["bold"][:, :4])
    series = np.concatenate([records[0]["bold"], records[2]["bold"], records[3]["bold"][:, 4:]], 1)
    assert series.shape[1] == 20
    np.testing.assert_allclose(series.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(series.std(axis=1, ddof=1), 1, rtol=1e-5)


@pytest.mark.parametrize("name", ["example4d.nii.gz", "example_nifti2.nii.gz", "functional.nii"])
def test_default_atlas_refuses_scans_outside_mni_space(name):
    with pytest.raises(ModalityError, match=r"ROIs of the built-in 450-parcel.*--atlas"):
        read_all(NIB_DATA / name, FmriOptions(window=2))


# ---------------------------------------------------------------------------------------------
# demo cohort with the default atlas


@pytest.fixture(scope="module")
def demo_cohort(tmp_path_factory) -> list[str]:
    return small_cohort(tmp_path_factory)


@pytest.fixture(scope="module")
def demo_records(demo_cohort) -> list[list[dict]]:
    return [read_all(Path(p), FmriOptions()) for p in demo_cohort]


def test_demo_cohort_reads_with_the_default_atlas(demo_cohort, demo_records):
    root = Path(demo_cohort[0]).parents[2]
    assert [Path(p).name for p in demo_cohort] == [
        "sub-01_task-rest_bold.nii.gz",
        "sub-02_task-rest_bold.nii.gz",
    ]
    participants = (root / "participants.tsv").read_text().splitlines()
    assert participants[0].split("\t") == ["participant_id", "group", "coupling"]
    assert {row.split("\t")[1] for row in participants[1:]} == {"control", "coupled"}

    opts = FmriOptions()
    schema = MODALITY.schema(opts)
    for i, records in enumerate(demo_records):
        assert [r["window_start"] for r in records] == [0, 160]  # 330 frames: 2 windows
        for rec in records:
            assert set(rec) == set(schema.names)
            assert rec["subject"] == f"sub-{i + 1:02d}" and rec["task"] == "rest"
            assert rec["bold"].shape == (450, 160)
            assert rec["n_rois"] == 450 and rec["n_missing_rois"] == 0
            assert rec["tr"] == 2.0
        to_batch(records, opts)  # the records fit the schema


def test_reading_is_deterministic(demo_cohort, demo_records):
    again = read_all(Path(demo_cohort[0]), FmriOptions())
    for x, y in zip(demo_records[0], again, strict=True):
        assert x["bold"].tobytes() == y["bold"].tobytes()


def test_demo_generation_is_deterministic(tmp_path):
    kw = {"n_frames": 12, "voxel_mm": 8.0}
    first = generate_cohort(tmp_path / "a", 1, seed=5, **kw)
    second = generate_cohort(tmp_path / "b", 1, seed=5, **kw)
    other = generate_cohort(tmp_path / "c", 1, seed=6, **kw)
    assert Path(first[0]).read_bytes() == Path(second[0]).read_bytes()
    a, c = (np.asarray(nib.load(p[0]).dataobj) for p in (first, other))
    assert a.shape[3] == 12 and not np.array_equal(a, c)
    header = nib.load(first[0]).header
    assert header.get_zooms() == (8.0, 8.0, 8.0, 2.0) and int(header["sform_code"]) == 4


def test_demo_networks_give_structured_connectivity_and_gradients(demo_records):
    opts = FmriOptions()
    batches = [to_batch(records, opts) for records in demo_records]
    stats = MODALITY.fit_stats(batches, opts)
    grads = np.asarray(stats["gradients"])
    assert grads.shape == (450, 30) and stats["gradient_dims"] == 30
    assert np.abs(grads).max(axis=0) == pytest.approx(np.ones(30))
    assert stats["n_windows"] == 4
    json.dumps(stats)

    # Parcels of one network move together; the "coupled" subject's default and frontoparietal
    # networks correlate more than the control's (the label a probe should find).
    table = np.genfromtxt(DEFAULT_ATLAS_TSV, delimiter="\t", names=True, dtype=None)
    xyz = np.stack([table["x_mm"], table["y_mm"], table["z_mm"]], axis=1)
    network = network_weights(xyz).argmax(axis=1)
    same = network[:, None] == network[None, :]
    names = list(_NETWORK_NODES)
    dmn, fp = network == names.index("default"), network == names.index("frontoparietal")
    coupling = []
    for records in demo_records:
        fc = np.corrcoef(np.concatenate([r["bold"] for r in records], axis=1))
        assert fc[same].mean() > fc[~same].mean() + 0.3
        coupling.append(fc[np.ix_(dmn, fp)].mean())
    control, coupled = coupling  # sub-01 is "control", sub-02 "coupled"
    assert coupled > control + 0.2


# ---------------------------------------------------------------------------------------------
# TR


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        (2.0, "sec", 2.0),
        (2000.0, "msec", 2.0),
        (720000.0, "usec", 0.72),
        (2.5, "unknown", 2.5),
        (2000.0, "sec", 2.0),  # ms written under a seconds unit (nibabel's example4d)
        (720.0, "unknown", 0.72),
    ],
)
def test_header_tr_units(value, unit, expected):
    header = nib.Nifti1Header()
    header.set_data_shape((2, 2, 2, 10))
    header.set_zooms((1, 1, 1, value))
    header.set_xyzt_units("mm", unit)
    assert header_tr(header) == pytest.approx(expected)
    assert header_tr(header, override=1.25) == 1.25


@pytest.mark.parametrize(
    ("value", "unit", "reason"),
    [
        (0.0, "sec", r"no repetition time \(pixdim\[4\] = 0\); pass --tr"),
        (2.0, "msec", r"implausible for BOLD; pass --tr"),
        (2.0, "hz", r"spectral data"),
    ],
)
def test_header_tr_refusals(value, unit, reason):
    header = nib.Nifti1Header()
    header.set_data_shape((2, 2, 2, 10))
    header.set_zooms((1, 1, 1, value))
    header.set_xyzt_units("mm", unit)
    with pytest.raises(ModalityError, match=reason):
        header_tr(header)


def test_tr_override_reaches_the_records(tmp_path):
    scan, atlas = synthetic_scan(tmp_path, 30, tr=0.0)
    with pytest.raises(ModalityError, match="pass --tr"):
        read_all(scan, FmriOptions(atlas=str(atlas), window=10))
    records = read_all(scan, FmriOptions(atlas=str(atlas), window=10, tr=1.5))
    assert [r["tr"] for r in records] == [1.5] * 3
    assert [r["window_start_s"] for r in records] == [0.0, 15.0, 30.0]


@pytest.mark.parametrize(("target", "frames"), [(2.0, 51), (0.5, 201), (1.0, 101)])
def test_target_tr_resamples_the_scan(tmp_path, target, frames):
    scan, atlas = synthetic_scan(tmp_path, 101, tr=1.0)
    records = read_all(scan, FmriOptions(atlas=str(atlas), window=frames, target_tr=target))
    assert len(records) == 1
    assert records[0]["tr"] == target and records[0]["bold"].shape == (4, frames)
    with pytest.raises(ModalityError, match=f"scan has {frames} frames"):
        read_all(scan, FmriOptions(atlas=str(atlas), window=frames + 1, target_tr=target))


def test_resample_tr_reproduces_a_slow_sinusoid():
    f = 0.03  # Hz, inside the BOLD band
    t_in = np.arange(300) * 0.72
    x = np.stack([np.sin(2 * np.pi * f * t_in), np.cos(2 * np.pi * f * t_in)], axis=1)
    y = resample_tr(x, 0.72, 2.0)
    t_out = np.arange(y.shape[0]) * 2.0
    assert y.shape == (int((299 * 0.72) // 2.0) + 1, 2)
    expected = np.stack([np.sin(2 * np.pi * f * t_out), np.cos(2 * np.pi * f * t_out)], axis=1)
    inner = slice(5, -5)  # the zero-phase filter's edges are padded, not exact
    np.testing.assert_allclose(y[inner], expected[inner], atol=0.02)
    up = resample_tr(x, 0.72, 0.36)
    np.testing.assert_allclose(up[::2], x, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# windowing, parcellation policy, options


@pytest.mark.parametrize(
    ("window", "hop", "starts"),
    [
        (10, None, [0, 10, 20, 30, 40]),
        (10, 7, [0, 7, 14, 21, 28, 35]),
        (10, 20, [0, 20, 40]),
        (50, None, [0]),
        (49, 1, [0, 1]),
    ],
)
def test_window_starts(tmp_path, window, hop, starts):
    scan, atlas = synthetic_scan(tmp_path, 50)
    opts = FmriOptions(atlas=str(atlas), window=window, hop=hop)
    records = read_all(scan, opts)
    assert [r["window_start"] for r in records] == starts
    assert all(r["bold"].shape == (4, window) for r in records)


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_constant_and_nan_voxels_do_not_count_and_empty_rois_are_flagged(tmp_path, dtype):
    rng = np.random.default_rng(1)
    data = (100 + 10 * rng.standard_normal((4, 4, 2, 30))).astype(dtype)
    data[0, 0, 0] = 0  # masked-out voxel in ROI 0: constant
    if dtype == np.float32:
        data[1, 0, 0, 5] = np.nan  # one bad frame in another voxel of ROI 0
    else:
        data[1, 0, 0] = 55  # integers cannot be NaN: another constant voxel
    data[:, 3] = 7.0  # ROI 3 has no time-varying voxel at all
    scan = write_scan(tmp_path / "scan.nii", data)
    labels = np.broadcast_to(np.arange(1, 5)[None, :, None], (4, 4, 2)).astype(np.int16)
    atlas = tmp_path / "atlas.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.eye(4)), atlas)
    opts = FmriOptions(atlas=str(atlas), window=30, detrend=False, standardize=False)
    (rec,) = read_all(scan, opts)
    roi0 = data[:, 0].reshape(8, 30)  # row = 2 * i + k for voxel (i, 0, k)
    good = np.ones(8, bool)
    good[[0, 2]] = False  # voxels (0, 0, 0) and (1, 0, 0)
    np.testing.assert_allclose(rec["bold"][0], roi0[good].mean(axis=0, dtype=np.float64), rtol=1e-6)
    assert rec["missing_rois"] == [3] and rec["n_missing_rois"] == 1
    np.testing.assert_array_equal(rec["bold"][3], 0.0)
    # 3 of 4 ROIs have signal: refused when 100% coverage is required
    strict = dataclasses.replace(opts, min_roi_coverage=1.0)
    with pytest.raises(ModalityError, match=r"only 3 of 4 ROIs of the atlas atlas.nii.gz"):
        read_all(scan, strict)


def test_atlas_outside_the_field_of_view(tmp_path):
    scan, atlas = synthetic_scan(tmp_path, 20)
    far = tmp_path / "far.nii.gz"
    shifted = np.eye(4)
    shifted[:3, 3] = 500.0  # half a metre away from the scan
    nib.save(nib.Nifti1Image(np.ones((4, 4, 2), np.int16), shifted), far)
    with pytest.raises(ModalityError, match=r"only 0 of 1 ROIs of the atlas far\.nii\.gz"):
        read_all(scan, FmriOptions(atlas=str(far), window=10))


def test_band_pass_removes_out_of_band_power(tmp_path):
    t = np.arange(400) * 1.0
    slow, fast = np.sin(2 * np.pi * 0.05 * t), np.sin(2 * np.pi * 0.3 * t)
    data = np.zeros((2, 1, 1, 400), np.float32)
    data[0, 0, 0] = 100 + slow + fast
    data[1, 0, 0] = 100 + slow - fast
    scan = write_scan(tmp_path / "scan.nii.gz", data, tr=1.0)
    atlas = tmp_path / "atlas.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((2, 1, 1), np.int16), np.eye(4)), atlas)
    opts = FmriOptions(atlas=str(atlas), window=400, low_pass=0.1, high_pass=0.01)
    (rec,) = read_all(scan, opts)
    # ROI mean = 100 + slow; the fast part cancels; band-pass keeps slow, z-scoring scales it
    expected = (slow - slow.mean()) / slow.std(ddof=1)
    assert np.corrcoef(rec["bold"][0], expected)[0, 1] > 0.99
    with pytest.raises(ModalityError, match="Nyquist"):
        read_all(scan, dataclasses.replace(opts, high_pass=0.6, low_pass=None))


def test_cli_options_round_trip(tmp_path):
    parser = argparse.ArgumentParser()
    MODALITY.add_cli_options(parser)
    args = parser.parse_args(
        ["--atlas", "labels.nii.gz", "--tr", "0.8", "--target-tr", "0.72", "--window", "100"]
        + ["--hop", "50", "--no-detrend", "--high-pass", "0.01", "--low-pass", "0.1"]
        + ["--no-standardize", "--min-roi-coverage", "0.9", "--gradient-dims", "10"]
    )
    opts = MODALITY.options_from_args(args)
    assert opts == FmriOptions(
        atlas=str(Path("labels.nii.gz").resolve()),
        tr=0.8,
        target_tr=0.72,
        window=100,
        hop=50,
        detrend=False,
        high_pass=0.01,
        low_pass=0.1,
        standardize=False,
        min_roi_coverage=0.9,
        gradient_dims=10,
    )
    json.dumps(dataclasses.asdict(opts))
    defaults = MODALITY.options_from_args(parser.parse_args([]))
    assert defaults == FmriOptions() and defaults.hop == 160 and defaults.window == 160
    with pytest.raises(ValueError, match="high_pass"):
        FmriOptions(high_pass=0.2, low_pass=0.1)
    with pytest.raises(ValueError, match="window"):
        FmriOptions(window=0)


def test_registry_schema_and_versions():
    modality = get_modality("fmri")
    assert modality is MODALITY and modality.matches("a/B.NII.GZ") and modality.matches("x.nii")
    schema = modality.schema(FmriOptions(window=16))
    assert schema.field("bold").type.shape == [450, 16]
    assert schema.field("window_start").type == pa.int32()
    assert set(modality.library_versions()) == {"nibabel", "nilearn", "numpy", "scipy"}


def test_bids_entities():
    """One parser for every modality (modalities.bids): the subject is the participant id,
    `sub-<label>`, the key of participants.tsv; entities from the file name, else the folders."""
    src = "s3://bucket/ds/sub-07/ses-2/func/sub-07_ses-2_task-rest_run-01_bold.nii.gz"
    want = {"subject": "sub-07", "session": "2", "task": "rest", "run": "01"}
    assert bids_entities(src) == want
    assert bids_entities("/data/sub-x1/func/bold.nii")["subject"] == "sub-x1"
    assert bids_entities("/scans/Patient_12.NII.GZ")["subject"] == "Patient_12"
    assert bids_entities("/d/sub-3/ses-b/eeg/x.fif")["session"] == "b"  # from the folder


def test_bad_atlas_is_an_options_error(tmp_path):
    probabilistic = tmp_path / "maps.nii.gz"
    nib.save(
        nib.Nifti1Image(np.random.rand(3, 3, 3, 4).astype(np.float32), np.eye(4)), probabilistic
    )
    with pytest.raises(ValueError, match="one 3D volume of integer labels"):
        MODALITY.schema(FmriOptions(atlas=str(probabilistic)))
    with pytest.raises(ValueError, match="cannot be opened"):
        MODALITY.schema(FmriOptions(atlas=str(tmp_path / "missing.nii.gz")))


# ---------------------------------------------------------------------------------------------
# bad input: each refused with its own reason


def _gz_bytes(path: Path) -> bytes:
    return path.read_bytes()


def make_bad(kind: str, tmp_path: Path) -> tuple[Path, FmriOptions, int]:
    """(file, options, max_file_bytes) for one kind of bad input."""
    opts = FmriOptions(window=2)
    limit = 1 << 34
    example = NIB_DATA / "example4d.nii.gz"
    if kind == "empty":
        path = tmp_path / "empty.nii.gz"
        path.write_bytes(b"")
    elif kind == "text named .nii":
        path = tmp_path / "notes.nii"
        path.write_text("subject 1, resting state, see scanner log\n" * 20)
    elif kind == "text named .nii.gz":
        path = tmp_path / "notes.nii.gz"
        path.write_text("not a scan\n" * 50)
    elif kind == "gzip of text":
        path = tmp_path / "notes2.nii.gz"
        path.write_bytes(gzip.compress(b"hello"))
    elif kind == "truncated .nii.gz":
        path = tmp_path / "cut.nii.gz"
        raw = example.read_bytes()
        path.write_bytes(raw[: len(raw) * 2 // 3])
    elif kind == "corrupt .nii.gz":
        path = tmp_path / "corrupt.nii.gz"
        raw = bytearray(example.read_bytes())
        mid = len(raw) // 2
        raw[mid : mid + 64] = bytes(64)
        path.write_bytes(bytes(raw))
    elif kind == "truncated .nii":
        path = tmp_path / "cut.nii"
        img = nib.load(example)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header), path)
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "3D image":
        path = NIB_DATA / "anatomical.nii"
    elif kind == "all-NaN":
        path = write_scan(tmp_path / "nan.nii.gz", np.full((3, 3, 3, 10), np.nan, np.float32))
        atlas = tmp_path / "atlas.nii.gz"
        nib.save(nib.Nifti1Image(np.ones((3, 3, 3), np.int16), np.eye(4)), atlas)
        opts = FmriOptions(atlas=str(atlas), window=5)
    elif kind == "shorter than a window":
        path = write_scan(tmp_path / "short.nii.gz", np.ones((2, 2, 2, 40), np.int16))
        opts = FmriOptions()
    elif kind == "over max-file-bytes":
        # the header alone declares 512^3 x 1000 float32 voxels (512 GiB); the file is 352 bytes
        header = nib.Nifti1Header()
        header.set_data_shape((512, 512, 512, 1000))
        header.set_data_dtype(np.float32)
        header.set_zooms((2, 2, 2, 2))
        path = tmp_path / "huge.nii"
        path.write_bytes(header.binaryblock + b"\x00" * 4)
        limit = 1 << 30
    elif kind == "CIFTI":
        path = NIB_DATA / "row_major.dconn.nii"
    else:
        raise AssertionError(kind)
    return path, opts, limit


BAD_INPUTS = {
    "empty": r"^empty file \(0 bytes\)$",
    "text named .nii": r"^not a NIfTI file",
    "text named .nii.gz": r"^named \.nii\.gz but not gzip-compressed",
    "gzip of text": r"^not a NIfTI file: 5 bytes",
    "truncated .nii.gz": r"^truncated: the gzip stream ends before the voxel data",
    "corrupt .nii.gz": r"^corrupt gzip stream",
    "truncated .nii": r"^truncated: the header needs \d+ bytes of file, it has \d+ bytes",
    "3D image": r"^3D image \(shape 33x41x25\): a BOLD scan needs a 4th \(time\) axis",
    "all-NaN": r"^all-NaN scan",
    "shorter than a window": r"^scan has 40 frames, shorter than one window of 160 frames$",
    "over max-file-bytes": r"^header declares 512x512x512x1000 voxels of float32 = 512000\.0 MiB"
    r".*--max-file-bytes limit of 1024\.0 MiB \(refused before reading\)",
    "CIFTI": r"^CIFTI file",
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_input_is_refused_with_its_reason(tmp_path, kind):
    path, opts, limit = make_bad(kind, tmp_path)
    with pytest.raises(ModalityError, match=BAD_INPUTS[kind]):
        read_all(path, opts, max_file_bytes=limit)
