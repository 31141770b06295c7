"""Tests of modalities/fmri.py: real nibabel files, the demo cohort, TR handling, windowing, every
refused input with its reason, and dataset statistics on data with known structure."""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow as pa
import pytest

from modalities import get_modality  # noqa: E402
from modalities.base import ModalityError, ReadContext  # noqa: E402
from modalities.fmri import (  # noqa: E402
    _NETWORK_NODES,
    DEFAULT_ATLAS_PATH,
    MODALITY,
    FmriOptions,
    bids_entities,
    connectivity_gradients,
    fit_fmri_stats,
    generate_cohort,
    header_tr,
    network_weights,
    resample_tr,
)

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
DEFAULT_ATLAS_TSV = DEFAULT_ATLAS_PATH.with_suffix("").with_suffix(".tsv")


# ---------------------------------------------------------------------------------------------
# helpers


def ctx(path: Path, max_file_bytes: int = 1 << 34) -> ReadContext:
    return ReadContext(
        source=str(path),
        local_path=str(path),
        size=os.path.getsize(path),
        max_file_bytes=max_file_bytes,
    )


def read_all(path: Path, opts: FmriOptions, **kw) -> list[dict]:
    return list(MODALITY.read(ctx(path, **kw), opts))


def write_scan(
    path: Path,
    data: np.ndarray,
    tr: float = 2.0,
    time_unit: str = "sec",
    affine: np.ndarray | None = None,
    klass=None,
) -> Path:
    klass = klass or nib.Nifti1Image
    img = klass(data, np.eye(4) if affine is None else affine)
    img.header.set_xyzt_units("mm", time_unit)
    zooms = list(img.header.get_zooms())
    zooms[3] = tr
    img.header.set_zooms(zooms)
    nib.save(img, path)
    return path


def block_atlas(img, path: Path, blocks=(2, 2, 2), mask: np.ndarray | None = None) -> Path:
    """A label image in the scan's own grid: boxes of the volume, restricted to `mask`."""
    shape = img.shape[:3]
    idx = np.indices(shape)
    labels = np.ones(shape, dtype=np.int16)
    stride = 1
    for axis, n in enumerate(blocks):
        labels += stride * (idx[axis] * n // shape[axis]).astype(np.int16)
        stride *= n
    if mask is not None:
        labels[~mask] = 0
    nib.save(nib.Nifti1Image(labels, img.affine), path)
    return path


def varying_mask(img) -> np.ndarray:
    data = np.asarray(img.dataobj, dtype=np.float64)
    return data.std(axis=-1) > 0


def to_batch(records: list[dict], opts: FmriOptions) -> pa.RecordBatch:
    """What the framework does: a RecordBatch of the schema, with the tensor column."""
    schema = MODALITY.schema(opts)
    arrays = []
    for field in schema:
        values = [r[field.name] for r in records]
        if field.name == "bold":
            tensor = pa.FixedShapeTensorArray.from_numpy_ndarray(np.stack(values))
            arrays.append(tensor)
        else:
            arrays.append(pa.array(values, type=field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def synthetic_scan(tmp_path: Path, n_frames: int, n_rois: int = 4, tr: float = 2.0, seed=0):
    """A 4 x n_rois x 2 grid scan, ROI r = column r, plus its atlas; returns (scan, atlas)."""
    rng = np.random.default_rng(seed)
    data = 100 + rng.standard_normal((4, n_rois, 2, n_frames)).astype(np.float32)
    scan = write_scan(tmp_path / "scan.nii.gz", data, tr=tr)
    labels = np.broadcast_to(np.arange(1, n_rois + 1)[None, :, None], (4, n_rois, 2))
    atlas = tmp_path / "atlas.nii.gz"
    nib.save(nib.Nifti1Image(labels.astype(np.int16), np.eye(4)), atlas)
    return scan, atlas


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
    out = tmp_path_factory.mktemp("demo")
    return generate_cohort(out, 2, seed=3, n_frames=330, voxel_mm=4.0)


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


# ---------------------------------------------------------------------------------------------
# statistics


def network_records(n_windows=6, n_rois=12, window=40, seed=0, missing=None, coupling=0.0):
    """Windows where ROIs [0, n/2) share one signal and [n/2, n) another, plus noise."""
    rng = np.random.default_rng(seed)
    half = n_rois // 2
    records = []
    for w in range(n_windows):
        a, b = rng.standard_normal((2, window))
        b = np.sqrt(1 - coupling**2) * b + coupling * a
        x = np.concatenate([np.tile(a, (half, 1)), np.tile(b, (n_rois - half, 1))])
        x = x + 0.5 * rng.standard_normal((n_rois, window))
        miss = [] if missing is None else missing(w)
        x[miss] = 1000.0  # junk that must not reach the statistics
        records.append(
            {
                "subject": f"s{w % 2}",
                "session": None,
                "task": "rest",
                "run": None,
                "window_start": w * window,
                "window_start_s": float(w * window),
                "tr": 1.0,
                "n_rois": n_rois,
                "n_missing_rois": len(miss),
                "missing_rois": miss,
                "bold": x.astype(np.float32),
            }
        )
    return records


def network_batches(records, sizes):
    opts = FmriOptions(window=records[0]["bold"].shape[1])
    schema = pa.schema([f for f in MODALITY.schema(opts) if f.name != "bold"]).append(
        pa.field("bold", pa.fixed_shape_tensor(pa.float32(), list(records[0]["bold"].shape)))
    )
    out, i = [], 0
    for size in sizes:
        chunk = records[i : i + size]
        i += size
        arrays = [
            pa.array([r[f.name] for r in chunk], type=f.type) for f in schema if f.name != "bold"
        ]
        arrays.append(
            pa.FixedShapeTensorArray.from_numpy_ndarray(np.stack([r["bold"] for r in chunk]))
        )
        out.append(pa.RecordBatch.from_arrays(arrays, schema=schema))
    return out


@pytest.mark.parametrize("coupling", [0.0, 0.3])
def test_first_gradient_separates_two_networks(coupling):
    # 40 ROIs: each keeps its top 4 connections (BrainSpace's 90% sparsity), all within its own
    # network; without coupling the affinity graph is two disconnected components.
    records = network_records(n_rois=40, coupling=coupling)
    stats = fit_fmri_stats(network_batches(records, [4, 2]))
    grads = np.asarray(stats["gradients"])
    assert grads.shape == (40, 30) and stats["gradient_dims"] == 30
    first = np.sign(grads[:, 0])
    assert abs(first[:20].sum()) == 20 and abs(first[20:].sum()) == 20 and first[0] != first[20]
    assert np.all(np.abs(grads) <= 1 + 1e-12)
    np.testing.assert_allclose(np.abs(grads).max(axis=0), 1.0)


def test_robust_scaling_equals_numpy_on_small_data():
    records = network_records()
    stats = fit_fmri_stats(network_batches(records, [4, 2]))
    values = np.stack([r["bold"] for r in records], axis=1).reshape(12, -1)
    q25, q50, q75 = np.percentile(values, [25, 50, 75], axis=1)
    np.testing.assert_allclose(stats["roi_median"], q50, rtol=1e-6)
    np.testing.assert_allclose(stats["roi_iqr"], q75 - q25, rtol=1e-6)
    assert stats["robust_sample_stride"] == 1 and stats["n_windows"] == 6
    assert stats["roi_windows"] == [6] * 12
    assert stats["gradient_dims"] == 11  # capped at n_rois - 1
    json.dumps(stats)


def test_stats_are_deterministic_and_independent_of_batching():
    records = network_records(n_windows=8)
    one = fit_fmri_stats(network_batches(records, [8]), gradient_dims=3)
    other = fit_fmri_stats(network_batches(records, [3, 1, 4]), gradient_dims=3)
    assert one == other
    assert len(one["gradients"][0]) == 3


def test_missing_rois_are_left_out_of_the_statistics():
    records = network_records(missing=lambda w: [2] if w % 2 else [])
    stats = fit_fmri_stats(network_batches(records, [6]))
    assert stats["roi_windows"][2] == 3 and stats["roi_windows"][0] == 6
    kept = np.concatenate([r["bold"][2] for r in records if not r["missing_rois"]])
    assert stats["roi_median"][2] == pytest.approx(np.median(kept), rel=1e-6)


def test_bounded_sample_keeps_median_close():
    records = network_records(n_windows=40, window=50, seed=2)
    exact = fit_fmri_stats(network_batches(records, [40]))
    bounded = fit_fmri_stats(network_batches(records, [40]), max_sample_values=12 * 1000)
    assert bounded["robust_sample_stride"] > 1 and exact["robust_sample_stride"] == 1
    np.testing.assert_allclose(bounded["roi_median"], exact["roi_median"], atol=0.15)
    np.testing.assert_allclose(bounded["roi_iqr"], exact["roi_iqr"], rtol=0.15)


def test_gradient_dims_capping():
    fc = np.corrcoef(np.random.default_rng(0).standard_normal((3, 50)))
    grads, lambdas = connectivity_gradients(fc, 30)
    assert grads.shape == (3, 2) and lambdas.shape == (2,)
    grads, _ = connectivity_gradients(np.ones((1, 1)), 30)
    assert grads.shape == (1, 0)


@pytest.mark.parametrize(
    "zooms, shape", [((3.0, 3.0, 3.0), (61, 73, 61)), ((2.5, 3.0, 3.5), (70, 72, 50))]
)
def test_atlas_resampling_matches_nilearn_nearest(zooms, shape):
    """Our numpy nearest-neighbour map gives the labels nilearn's resample_img gives."""
    import nibabel as nib
    from nilearn.image import resample_img

    from modalities.fmri import _nearest_labels, load_atlas

    atlas = load_atlas(None)
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = [-90.0, -126.0, -72.0]
    ref = resample_img(
        nib.Nifti1Image(atlas.labels, atlas.affine),
        target_affine=affine,
        target_shape=shape,
        interpolation="nearest",
        force_resample=True,
        copy_header=True,
    )
    ours = _nearest_labels(atlas, shape, affine)
    assert (ours > 0).sum() > 10000
    np.testing.assert_array_equal(ours, np.asarray(ref.dataobj).astype(np.int32))


def test_participants_columns_join_bids_participants_tsv(demo_cohort, tmp_path):
    opts = FmriOptions(participants_columns=["group", "coupling"])  # lists come back from JSON
    assert opts.participants_columns == ("group", "coupling")
    schema = MODALITY.schema(opts)
    assert schema.field("group").type == pa.string()
    root = Path(demo_cohort[0]).parents[2]
    rows = dict(
        line.split("\t")[:2] for line in (root / "participants.tsv").read_text().splitlines()[1:]
    )
    for path in demo_cohort:
        recs = read_all(Path(path), opts)
        assert {r["group"] for r in recs} == {rows[recs[0]["subject"]]}  # subject = participant_id
        assert all(r["coupling"] is not None for r in recs)
    assert {rows["sub-01"], rows["sub-02"]} == {"control", "coupled"}
    # a scan with no participants.tsv above it still lands, with nulls
    lone = tmp_path / "lone.nii.gz"
    lone.write_bytes(Path(demo_cohort[0]).read_bytes())
    assert {r["group"] for r in read_all(lone, opts)} == {None}


@pytest.mark.parametrize("bad", ["bold", "subject", "participant_id", ""])
def test_participants_columns_may_not_clash(bad):
    with pytest.raises(ValueError, match="participants column"):
        FmriOptions(participants_columns=(bad,))


def test_builtin_atlas_names(demo_cohort):
    small = FmriOptions(atlas="builtin:100")
    assert MODALITY.schema(small).field("bold").type.shape == [100, small.window]
    recs = read_all(Path(demo_cohort[0]), small)
    assert recs and recs[0]["n_rois"] == 100 and recs[0]["n_missing_rois"] == 0
    with pytest.raises(ValueError, match=r"unknown built-in atlas 'builtin:7'.*builtin:100"):
        MODALITY.schema(FmriOptions(atlas="builtin:7"))


@pytest.mark.parametrize("name", ["example4d.nii.gz", "example_nifti2.nii.gz"])
def test_isal_inflate_reads_what_nibabel_reads(name, demo_cohort):
    """The fast .nii.gz path returns exactly nibabel's stored array (dtype, order, offset)."""
    pytest.importorskip("isal", reason="the optional `fast` extra (make installs it)")
    from modalities.fmri.scan import _stored_voxels

    for path in (NIB_DATA / name, Path(demo_cohort[0])):
        img = nib.load(path)
        fast = _stored_voxels(img)
        slow = np.asanyarray(img.dataobj.get_unscaled())
        assert fast.dtype == slow.dtype and fast.shape == slow.shape
        np.testing.assert_array_equal(fast, slow)


@pytest.mark.parametrize("n", [2, 7, 160])
def test_linear_detrend_matches_nilearn(n):
    from nilearn.signal import clean

    from modalities.fmri.scan import linear_detrend

    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 5)) + np.arange(n)[:, None] * rng.standard_normal(5) + 3.0
    want = clean(x, detrend=True, standardize=None, filter=False, ensure_finite=False)
    np.testing.assert_allclose(linear_detrend(x), want, atol=1e-10)
