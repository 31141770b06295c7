"""Label atlases: loading, validation, and nearest-neighbour placement on a scan grid."""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modalities.fmri.options import BUILTIN_PREFIX, DEFAULT_ATLAS_PATH

# --------------------------------------------------------------------------------------------
# Atlas


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, so lru_cache can key on it
class Atlas:
    """A label image: `labels` holds the original label values; ROI i is `label_values[i]`."""

    path: str
    labels: np.ndarray  # 3D int32
    affine: np.ndarray
    label_values: tuple[int, ...]
    sha256: str
    is_default: bool

    @property
    def n_rois(self) -> int:
        return len(self.label_values)

    @property
    def description(self) -> str:
        if self.is_default:
            return f"built-in {self.n_rois}-parcel MNI152 atlas"
        return f"atlas {Path(self.path).name}"


def builtin_atlas_path(name: str) -> Path:
    """The shipped file of a built-in atlas name, `builtin:450` or `builtin:100`."""
    count = name.removeprefix(BUILTIN_PREFIX)
    path = DEFAULT_ATLAS_PATH.parent / f"default_atlas_{count}.nii.gz"
    if not count.isdigit() or not path.is_file():
        shipped = sorted(
            p.name[len("default_atlas_") : -len(".nii.gz")]
            for p in DEFAULT_ATLAS_PATH.parent.glob("default_atlas_*.nii.gz")
        )
        raise ValueError(
            f"unknown built-in atlas {name!r}; shipped: "
            + ", ".join(f"{BUILTIN_PREFIX}{n}" for n in shipped)
        )
    return path


def load_atlas(path: str | None) -> Atlas:
    """Load and validate a label atlas: a path, a built-in name (`builtin:100`), or None for the
    default `builtin:450`. Raises ValueError if unusable."""
    if path is None:
        resolved, builtin = str(DEFAULT_ATLAS_PATH), True
    elif path.startswith(BUILTIN_PREFIX):
        resolved, builtin = str(builtin_atlas_path(path)), True
    else:
        resolved, builtin = str(Path(path).expanduser().resolve()), False
    try:
        stat = os.stat(resolved)
    except OSError as exc:
        raise ValueError(f"atlas {resolved} cannot be opened: {exc.strerror}") from None
    return _load_atlas_cached(resolved, stat.st_mtime_ns, stat.st_size, builtin)


@functools.lru_cache(maxsize=4)
def _load_atlas_cached(path: str, mtime_ns: int, size: int, is_default: bool) -> Atlas:
    # mtime and size are part of the key so an atlas edited in place is read again.
    import nibabel as nib

    with open(path, "rb") as f:
        sha256 = hashlib.sha256(f.read()).hexdigest()
    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for a bad file; all mean "unusable"
        raise ValueError(f"atlas {path} is not a readable NIfTI label image: {exc}") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(
            f"atlas {path} has shape {data.shape}: a label atlas must be one 3D volume of integer "
            "labels (probabilistic 4D atlases are not supported)"
        )
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise ValueError(f"atlas {path} has non-numeric data type {data.dtype}")
    finite = np.isfinite(data)
    if not finite.all() or not np.array_equal(data, np.round(data)):
        raise ValueError(f"atlas {path} is not a label image: its values are not all integers")
    labels = data.astype(np.int64)
    if labels.min() < 0:
        raise ValueError(f"atlas {path} has negative labels; use 0 for background, >0 for ROIs")
    values = np.unique(labels[labels > 0])
    if values.size == 0:
        raise ValueError(f"atlas {path} has no labels (every voxel is 0 = background)")
    return Atlas(
        path=path,
        labels=labels.astype(np.int32),
        affine=np.asarray(img.affine, dtype=np.float64),
        label_values=tuple(int(v) for v in values),
        sha256=sha256,
        is_default=is_default,
    )


@dataclass(frozen=True)
class AtlasGrid:
    """The atlas on one scan grid: voxel indices (Fortran order) sorted by ROI, for reduceat."""

    voxels: np.ndarray  # int64 flat indices into the scan's 3D grid, Fortran order
    roi_of_voxel: np.ndarray  # int64 ROI index (0..n_rois-1) of each entry of `voxels`
    n_rois: int


def atlas_on_grid(atlas: Atlas, shape: tuple[int, int, int], affine: np.ndarray) -> AtlasGrid:
    """The atlas resampled (nearest neighbour) to a scan grid, cached per grid."""
    key = (np.asarray(affine, dtype=np.float64).round(4).tobytes(), tuple(int(s) for s in shape))
    return _atlas_on_grid_cached(atlas, key)


@functools.lru_cache(maxsize=16)
def _atlas_on_grid_cached(atlas: Atlas, key: tuple[bytes, tuple[int, ...]]) -> AtlasGrid:
    affine = np.frombuffer(key[0], dtype=np.float64).reshape(4, 4)
    shape = key[1]
    if atlas.labels.shape == shape and np.allclose(atlas.affine, affine, atol=1e-3):
        labels = atlas.labels
    else:
        labels = _nearest_labels(atlas, shape, affine)
    flat = labels.ravel(order="F")  # NIfTI voxel data is Fortran-ordered
    voxels = np.flatnonzero(flat)
    roi = np.searchsorted(np.asarray(atlas.label_values), flat[voxels])
    order = np.argsort(roi, kind="stable")
    return AtlasGrid(voxels=voxels[order], roi_of_voxel=roi[order], n_rois=atlas.n_rois)


def _nearest_labels(atlas: Atlas, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """Nearest-neighbour resampling of the atlas onto a scan grid (0 outside the atlas).

    Labels are categories, so interpolating them would invent new ones. Done with one affine map
    in numpy rather than nilearn's resample_img: importing nilearn.image costs ~3 s per Ray
    worker, longer than parcellating a scan.
    """
    vox2vox = np.linalg.inv(atlas.affine) @ np.asarray(affine, dtype=np.float64)
    grid = np.indices(shape[:3], dtype=np.float64).reshape(3, -1)
    # floor(x + 0.5): ties round up, as scipy.ndimage (and so nilearn) does for order 0
    idx = np.floor(vox2vox[:3, :3] @ grid + vox2vox[:3, 3:4] + 0.5).astype(np.int64)
    bounds = np.asarray(atlas.labels.shape)[:, None]
    inside = ((idx >= 0) & (idx < bounds)).all(axis=0)
    labels = np.zeros(grid.shape[1], dtype=np.int32)
    labels[inside] = atlas.labels[idx[0, inside], idx[1, inside], idx[2, inside]]
    return labels.reshape(shape[:3])
