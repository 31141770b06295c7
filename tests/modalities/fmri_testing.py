"""Helpers of the fMRI reader tests (test_fmri.py, test_fmri_stats.py): read contexts, scans and
atlases written with nibabel, the framework's RecordBatch, a small demo cohort."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow as pa

from modalities.base import ReadContext
from modalities.fmri import DEFAULT_ATLAS_PATH, MODALITY, FmriOptions, generate_cohort

#: real NIfTI files no one here wrote (nibabel's test data)
NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
DEFAULT_ATLAS_TSV = DEFAULT_ATLAS_PATH.with_suffix("").with_suffix(".tsv")


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


def small_cohort(tmp_path_factory) -> list[str]:
    """Two demo subjects of 330 frames at 4 mm (the demo generator, small)."""
    out = tmp_path_factory.mktemp("demo")
    return generate_cohort(out, 2, seed=3, n_frames=330, voxel_mm=4.0)
