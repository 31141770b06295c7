"""Tests of the fMRI dataset statistics (robust scaling, connectivity gradients) on data with
known structure, atlas resampling, participants.tsv columns, and the readers' numeric helpers
against nilearn and nibabel."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow as pa
import pytest
from fmri_testing import (
    NIB_DATA,
    read_all,
    small_cohort,
)

from modalities.fmri import (
    MODALITY,
    FmriOptions,
    connectivity_gradients,
    fit_fmri_stats,
)


@pytest.fixture(scope="module")
def demo_cohort(tmp_path_factory) -> list[str]:
    return small_cohort(tmp_path_factory)


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


def test_subject_mean_scaling_is_the_official_form():
    """Brain-JEPA's official robust scaling: per ROI, median and IQR across subjects of each
    subject's time-mean (its windows averaged); missing ROIs stay out; no spread -> IQR 1."""
    rng = np.random.default_rng(4)
    records = network_records(n_windows=12, missing=lambda w: [3] if w == 0 else [])
    for w, r in enumerate(records):
        r["subject"] = f"s{w % 4}"
        r["bold"] = r["bold"] + rng.normal(0, 5, (12, 1)).astype(np.float32)  # baselines
    stats = fit_fmri_stats(network_batches(records, [5, 7]))
    means = {}
    for r in records:
        m = r["bold"].astype(np.float64).mean(axis=1)
        m[r["missing_rois"]] = np.nan
        means.setdefault(r["subject"], []).append(m)
    per_subject = np.stack([np.nanmean(np.stack(v), axis=0) for _, v in sorted(means.items())])
    q25, q50, q75 = np.percentile(per_subject, [25, 50, 75], axis=0)
    np.testing.assert_allclose(stats["roi_median_subject"], q50, rtol=1e-6)
    np.testing.assert_allclose(stats["roi_iqr_subject"], q75 - q25, rtol=1e-6)
    assert stats["scaling_groups"] == 4 and stats["roi_iqr_subject_floored"] == 0
    # scans z-scored at ingest: every time-mean is 0, nothing to scale by -> IQR 1, centred only
    for r in records:
        b = r["bold"].astype(np.float64)
        z = (b - b.mean(1, keepdims=True)) / np.maximum(b.std(1, keepdims=True), 1e-12)
        r["bold"] = z.astype(np.float32)
    flat = fit_fmri_stats(network_batches(records, [12]), standardized=True)
    assert flat["roi_iqr_subject"] == [1.0] * 12 and flat["roi_iqr_subject_floored"] == 12
    # ... and on standardised scans the tokenizer refuses the subject-mean form outright
    from modalities.fmri.jepa import tokenize_record

    rec = {"bold": records[1]["bold"][:, :32], "missing_rois": []}
    with pytest.raises(ValueError, match="subject_mean needs series that were not z-scored"):
        tokenize_record(rec, flat, 16, "subject_mean")
    with pytest.raises(ValueError, match="no ROI's time-mean varies"):
        tokenize_record(rec, {**flat, "standardized": False}, 16, "subject_mean")
    assert tokenize_record(rec, flat, 16, "per_value")["tokens"].shape == (24, 16)


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


def test_statistics_depend_on_the_record_order_not_on_the_batches():
    """The same records cut into other record batches (the driver's shards or the workers'
    groups: `pipelines.ingest --write`) give the same statistics to the bit."""
    records = network_records(n_rois=40, coupling=0.3)
    n = len(records)
    one = json.dumps(fit_fmri_stats(network_batches(records, [n])))
    for sizes in ([1] * n, [2, n - 2], [n - 3, 3]):
        assert json.dumps(fit_fmri_stats(network_batches(records, sizes))) == one
