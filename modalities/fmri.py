"""fMRI: 4D NIfTI BOLD scans -> ROI x time windows (Brain-JEPA input), stats, demo data.

One scan (NIfTI-1 or NIfTI-2, `.nii` / `.nii.gz`) becomes an ROI x time matrix by averaging the
voxels of each parcel of a label atlas (`--atlas`, or the built-in 450-parcel MNI152 atlas shipped
in `modalities/data/`), is cleaned (linear detrend, optional band-pass, optional resampling to a
target TR, per-ROI z-scoring) and cut into windows of `window` frames (Brain-JEPA: 160), one record
per window. `fit_stats` computes what Brain-JEPA needs later: per-ROI robust scaling (median, IQR)
and brain gradients (diffusion-map embedding of group functional connectivity). `generate_cohort`
writes a synthetic BIDS-like cohort in MNI space with network structure. docs/fmri.md is the user
guide; every policy below (TR units, missing ROIs, refused inputs) is described there too.

Imports numpy and pyarrow at top level; nibabel, nilearn and scipy are imported inside functions so
the engine can import `modalities` without them. Never imports `engine` or `pipelines`.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import json
import os
import re
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from modalities.base import Modality, ModalityError, ReadContext

DATA_DIR = Path(__file__).resolve().parent / "data"
#: the built-in parcellation, made by modalities/data/make_default_atlas.py (see docs/fmri.md)
DEFAULT_ATLAS_PATH = DATA_DIR / "default_atlas_450.nii.gz"

#: Brain-JEPA's window: 160 frames per sample.
DEFAULT_WINDOW = 160
#: Brain-JEPA's gradient positional embedding uses 30 gradient dimensions.
DEFAULT_GRADIENT_DIMS = 30
#: BrainSpace's default: keep the strongest 10% of connections of each ROI before the kernel.
GRADIENT_SPARSITY = 0.9
#: Diffusion maps' anisotropy; 0.5 is BrainSpace's and Margulies et al. 2016's choice.
DIFFUSION_ALPHA = 0.5
#: At most this many values are kept (per dataset, over all ROIs) to estimate median / IQR.
ROBUST_SAMPLE_VALUES = 1 << 24
#: A TR "in seconds" above this is read as milliseconds: no BOLD protocol has TR > 100 s, while
#: several converters write milliseconds under a seconds unit (nibabel's own example4d.nii.gz).
MAX_PLAUSIBLE_TR_S = 100.0
#: A TR below this (after unit conversion) is refused: 20 Hz is faster than any BOLD acquisition.
MIN_PLAUSIBLE_TR_S = 0.05

_TIME_UNIT_SECONDS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}
_GZIP_MAGIC = b"\x1f\x8b"
_NIFTI2_MAGIC = b"n+2\x00\r\n\x1a\n"


@dataclass(frozen=True)
class FmriOptions:
    """Preprocessing options of the fMRI reader (all JSON-serialisable; recorded in the manifest).

    atlas: label image (3D, integer labels, 0 = background); None = the built-in 450-parcel atlas.
    tr: repetition time in seconds, overriding the header's.
    target_tr: resample every scan to this TR (seconds); None keeps each scan's own TR.
    window: frames per record (after resampling). hop: frames between window starts (None = window).
    detrend: remove a linear trend per ROI. high_pass / low_pass: Butterworth band edges in Hz.
    standardize: z-score each ROI over the whole scan (after resampling).
    min_roi_coverage: refuse a scan in which fewer than this fraction of ROIs have signal.
    gradient_dims: dimensions of the brain-gradient vector in the dataset statistics.
    """

    atlas: str | None = None
    tr: float | None = None
    target_tr: float | None = None
    window: int = DEFAULT_WINDOW
    hop: int | None = None
    detrend: bool = True
    high_pass: float | None = None
    low_pass: float | None = None
    standardize: bool = True
    min_roi_coverage: float = 0.5
    gradient_dims: int = DEFAULT_GRADIENT_DIMS

    def __post_init__(self) -> None:
        if self.hop is None:
            object.__setattr__(self, "hop", self.window)
        problems = []
        if not isinstance(self.window, int) or self.window < 1:
            problems.append(f"window must be a positive number of frames, got {self.window!r}")
        if not isinstance(self.hop, int) or self.hop < 1:
            problems.append(f"hop must be a positive number of frames, got {self.hop!r}")
        for name in ("tr", "target_tr", "high_pass", "low_pass"):
            value = getattr(self, name)
            if value is not None and not (np.isfinite(value) and value > 0):
                problems.append(f"{name} must be a positive number, got {value!r}")
        if (
            self.high_pass is not None
            and self.low_pass is not None
            and not self.high_pass < self.low_pass
        ):
            problems.append(
                f"high_pass ({self.high_pass} Hz) must be below low_pass ({self.low_pass} Hz)"
            )
        if not 0.0 <= self.min_roi_coverage <= 1.0:
            problems.append(f"min_roi_coverage must be in [0, 1], got {self.min_roi_coverage!r}")
        if not isinstance(self.gradient_dims, int) or self.gradient_dims < 1:
            problems.append(f"gradient_dims must be a positive integer, got {self.gradient_dims!r}")
        if problems:
            raise ValueError("invalid fMRI options: " + "; ".join(problems))


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


def load_atlas(path: str | None) -> Atlas:
    """Load and validate a label atlas (None = the built-in one). Raises ValueError if unusable."""
    resolved = str(DEFAULT_ATLAS_PATH if path is None else Path(path).expanduser().resolve())
    try:
        stat = os.stat(resolved)
    except OSError as exc:
        raise ValueError(f"atlas {resolved} cannot be opened: {exc.strerror}") from None
    return _load_atlas_cached(resolved, stat.st_mtime_ns, stat.st_size, path is None)


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


# --------------------------------------------------------------------------------------------
# Opening a scan: every refusal here is a ModalityError with a reason a person understands


def _sniff(path: str) -> tuple[bool, int]:
    """(gzip-compressed, NIfTI version 1 or 2) from the first bytes, or a ModalityError."""
    size = os.path.getsize(path)
    if size == 0:
        raise ModalityError("empty file (0 bytes)")
    with open(path, "rb") as f:
        start = f.read(2)
    compressed = start == _GZIP_MAGIC
    named_gz = path.lower().endswith(".gz")
    if named_gz and not compressed:
        raise ModalityError("named .nii.gz but not gzip-compressed (no gzip magic bytes)")
    if compressed and not named_gz:
        raise ModalityError("gzip-compressed but named .nii: rename it to .nii.gz")
    try:
        if compressed:
            with gzip.open(path, "rb") as f:
                head = f.read(540)
        else:
            with open(path, "rb") as f:
                head = f.read(540)
    except EOFError:
        raise ModalityError("truncated: the gzip stream ends inside the NIfTI header") from None
    except (OSError, zlib.error) as exc:
        raise ModalityError(f"corrupt gzip stream ({exc})") from None
    if len(head) < 348:
        raise ModalityError(f"not a NIfTI file: {len(head)} bytes, shorter than a NIfTI header")
    for endian in ("<", ">"):
        sizeof_hdr = struct.unpack(endian + "i", head[:4])[0]
        if sizeof_hdr == 348:
            magic = head[344:348]
            if magic == b"n+1\x00":
                return compressed, 1
            if magic == b"ni1\x00":
                raise ModalityError(
                    "NIfTI-1 pair header (.hdr/.img, magic 'ni1'): the data is in a separate "
                    ".img file; convert to single-file .nii"
                )
            raise ModalityError("not a NIfTI file: 348-byte header without NIfTI magic (Analyze?)")
        if sizeof_hdr == 540:
            if head[4:12] == _NIFTI2_MAGIC:
                return compressed, 2
            raise ModalityError("not a NIfTI file: 540-byte header without NIfTI-2 magic")
    raise ModalityError("not a NIfTI file: the header-size field is neither 348 (NIfTI-1) nor 540")


def header_tr(header: Any, override: float | None = None) -> float:
    """Repetition time in seconds from a NIfTI header (pixdim[4] + xyzt_units), or the override.

    Seconds-or-unknown values above MAX_PLAUSIBLE_TR_S are read as milliseconds (see docs/fmri.md).
    """
    if override is not None:
        return float(override)
    zooms = header.get_zooms()
    raw = float(zooms[3]) if len(zooms) > 3 else 0.0
    unit = header.get_xyzt_units()[1]
    if unit in ("hz", "ppm", "rads"):
        raise ModalityError(f"the 4th axis is in {unit} (spectral data), not a BOLD time series")
    if not np.isfinite(raw) or raw <= 0:
        raise ModalityError(
            f"header has no repetition time (pixdim[4] = {raw:g}); pass --tr SECONDS"
        )
    if unit in _TIME_UNIT_SECONDS:
        tr = raw * _TIME_UNIT_SECONDS[unit]
        if unit == "sec" and tr > MAX_PLAUSIBLE_TR_S:
            tr = raw / 1000.0
    else:  # "unknown": assume seconds unless implausible
        tr = raw / 1000.0 if raw > MAX_PLAUSIBLE_TR_S else raw
    if tr < MIN_PLAUSIBLE_TR_S:
        raise ModalityError(
            f"repetition time {raw:g} {unit} = {tr:g} s is implausible for BOLD; pass --tr SECONDS"
        )
    return tr


def output_frames(n_frames: int, tr: float, target_tr: float | None) -> int:
    """Frames after resampling `n_frames` at `tr` to `target_tr` (same span, never extrapolated)."""
    if target_tr is None or _same_tr(tr, target_tr):
        return n_frames
    return int(np.floor((n_frames - 1) * tr / target_tr + 1e-6)) + 1


def _same_tr(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(a, b)


@dataclass
class _Scan:
    img: Any
    shape: tuple[int, int, int, int]
    tr: float


def _open_scan(path: str, max_file_bytes: int, opts: FmriOptions) -> _Scan:
    """Header-only checks: format, dimensionality, size limit, truncation, TR, length."""
    import nibabel as nib

    compressed, version = _sniff(path)
    klass = nib.Nifti2Image if version == 2 else nib.Nifti1Image
    try:
        img = klass.from_filename(path)
    except Exception as exc:  # HeaderDataError, ImageFileError, ValueError...: all "bad header"
        raise ModalityError(f"unreadable NIfTI-{version} header: {exc}") from None
    header = img.header
    intent = int(header["intent_code"])
    if 3000 <= intent < 3100:
        raise ModalityError(
            f"CIFTI file (intent code {intent}): grayordinate data, not a volumetric 4D scan"
        )
    shape = tuple(int(s) for s in img.shape)
    dtype = img.get_data_dtype()
    if dtype.fields is not None or not np.issubdtype(dtype, np.number):
        raise ModalityError(f"voxel type {dtype} is not a real-valued intensity")
    if np.issubdtype(dtype, np.complexfloating):
        raise ModalityError(f"voxel type {dtype} is complex, not a real-valued BOLD magnitude")
    shape_text = "x".join(map(str, shape))
    if len(shape) < 4:
        raise ModalityError(
            f"{len(shape)}D image (shape {shape_text}): a BOLD scan needs a 4th (time) axis"
        )
    if any(s > 1 for s in shape[4:]):
        raise ModalityError(f"{len(shape)}D image (shape {shape_text}) is not one 4D BOLD run")
    if min(shape) < 1:
        raise ModalityError(f"header declares an empty dimension (shape {shape_text})")
    n_bytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if n_bytes > max_file_bytes:
        raise ModalityError(
            f"header declares {shape_text} voxels of {dtype.name} = {n_bytes / 2**20:.1f} MiB of "
            f"data, over the --max-file-bytes limit of {max_file_bytes / 2**20:.1f} MiB "
            "(refused before reading)"
        )
    if not compressed:
        needed = int(header.get_data_offset()) + n_bytes
        have = os.path.getsize(path)
        if have < needed:
            raise ModalityError(
                f"truncated: the header needs {needed} bytes of file, it has {have} bytes"
            )
    tr = header_tr(header, opts.tr)
    shape4 = (shape[0], shape[1], shape[2], shape[3])
    n_out = output_frames(shape4[3], tr, opts.target_tr)
    if n_out < opts.window:
        resampled = "" if n_out == shape4[3] else f" after resampling to TR {opts.target_tr:g} s"
        raise ModalityError(
            f"scan has {n_out} frames{resampled}, shorter than one window of {opts.window} frames"
        )
    return _Scan(img=img, shape=shape4, tr=tr)


# --------------------------------------------------------------------------------------------
# Parcellation and cleaning


def parcellate(img: Any, grid: AtlasGrid) -> tuple[np.ndarray, np.ndarray]:
    """ROI mean time series [time, n_rois] (float64) and which ROIs had signal.

    Only voxels whose whole time series is finite and not constant count: a voxel outside the
    scanned brain (0 after skull stripping) or with a NaN frame would otherwise drag its ROI's mean.
    ROIs without such a voxel are all-zero and flagged absent. Reads the raw stored integers and
    applies the NIfTI scaling to the ROI means (it is linear), which saves a float copy of the scan.
    """
    shape = img.shape
    n_time = int(shape[3])
    n_vox = int(shape[0]) * int(shape[1]) * int(shape[2])
    try:
        raw = np.asanyarray(img.dataobj.get_unscaled())
    except EOFError:
        raise ModalityError("truncated: the gzip stream ends before the voxel data") from None
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise ModalityError(f"corrupt gzip stream ({exc})") from None
    except (OSError, ValueError) as exc:
        raise ModalityError(f"cannot read the voxel data: {exc}") from None
    # Fortran-ordered (x, y, z, t) -> a C-contiguous [t, voxel] view: gathering columns is local.
    by_time = raw.reshape(n_vox, n_time, order="F").T
    sub = by_time[:, grid.voxels]
    lo = sub.min(axis=0)
    hi = sub.max(axis=0)
    if np.issubdtype(sub.dtype, np.floating):
        valid = np.isfinite(lo) & np.isfinite(hi) & (hi > lo)
    else:
        valid = hi > lo
    if not valid.any():
        _explain_no_signal(raw, sub, grid)
    if not valid.all():
        sub[:, ~valid] = 0
    counts = np.bincount(grid.roi_of_voxel[valid], minlength=grid.n_rois)
    present = counts > 0
    # One reduceat segment per present ROI (voxels are sorted by ROI). A segment may run on into
    # the voxels of following absent ROIs; those are all invalid, hence zeroed, hence harmless.
    starts = np.searchsorted(grid.roi_of_voxel, np.flatnonzero(present))
    sums = np.add.reduceat(sub, starts, axis=1, dtype=np.float64)
    signals = np.zeros((n_time, grid.n_rois), dtype=np.float64)
    signals[:, present] = sums / counts[present]
    slope = float(img.dataobj.slope)
    inter = float(img.dataobj.inter)
    if slope != 1.0 or inter != 0.0:
        signals[:, present] = signals[:, present] * slope + inter
    return signals, present


def _explain_no_signal(raw: np.ndarray, sub: np.ndarray, grid: AtlasGrid) -> None:
    """Raise the most specific reason why no atlas voxel has a usable time series."""
    if np.issubdtype(raw.dtype, np.floating):
        if np.isnan(raw).all():
            raise ModalityError("all-NaN scan: every voxel of every frame is NaN")
        if not np.isfinite(sub).all(axis=0).any():
            raise ModalityError(
                "every voxel inside the atlas has NaN or infinite values in some frame"
            )
    if raw.size and np.all(raw.reshape(-1)[:1] == raw):
        raise ModalityError("constant scan: every voxel has the same value in every frame")
    raise ModalityError(
        f"none of the {grid.voxels.size} atlas voxels in this scan's field of view has a "
        "time-varying signal"
    )


def resample_tr(signals: np.ndarray, tr: float, target_tr: float) -> np.ndarray:
    """Resample [time, roi] signals from `tr` to `target_tr` seconds over the same time span.

    Downsampling first low-passes at the new Nyquist frequency (4th-order zero-phase Butterworth)
    so faster fluctuations do not alias; then a cubic spline is evaluated on the new time grid.
    """
    from scipy import interpolate
    from scipy import signal as sps

    n_in = signals.shape[0]
    n_out = output_frames(n_in, tr, target_tr)
    if n_out == n_in and _same_tr(tr, target_tr):
        return signals
    x = signals
    if target_tr > tr:
        sos = sps.butter(4, 0.5 / target_tr, btype="low", fs=1.0 / tr, output="sos")
        padlen = min(3 * (2 * len(sos) + 1), n_in - 1)
        x = sps.sosfiltfilt(sos, x, axis=0, padlen=padlen)
    t_in = np.arange(n_in) * tr
    t_out = np.arange(n_out) * target_tr
    if n_in < 4:  # a cubic spline needs 4 points; fall back to linear interpolation
        return np.stack([np.interp(t_out, t_in, col) for col in x.T], axis=1)
    return interpolate.CubicSpline(t_in, x, axis=0)(t_out)


def clean_signals(
    signals: np.ndarray, present: np.ndarray, tr: float, opts: FmriOptions
) -> tuple[np.ndarray, np.ndarray, float]:
    """Detrend / band-pass (nilearn.signal.clean, at the scan's TR), resample, then z-score.

    Returns (signals [time, roi] float64, present ROIs, output TR). Order matters: filtering runs
    before resampling (so downsampling sees band-limited data) and z-scoring last (so the output
    has unit variance on the grid it is stored on).
    """
    nyquist = 0.5 / tr
    if opts.high_pass is not None and opts.high_pass >= nyquist:
        raise ModalityError(
            f"--high-pass {opts.high_pass:g} Hz is at or above the Nyquist frequency "
            f"{nyquist:g} Hz of TR {tr:g} s: it would remove the whole signal"
        )
    # A low-pass at or above Nyquist is a no-op: the sampled signal holds no faster content.
    low_pass = opts.low_pass if opts.low_pass is not None and opts.low_pass < nyquist else None
    x = signals
    if opts.detrend or low_pass is not None or opts.high_pass is not None:
        from nilearn import signal as nsignal

        filtering = low_pass is not None or opts.high_pass is not None
        try:
            x = nsignal.clean(
                x,
                detrend=opts.detrend,
                standardize=None,
                filter="butterworth" if filtering else False,
                low_pass=low_pass,
                high_pass=opts.high_pass,
                t_r=tr,
                ensure_finite=False,
            )
        except ValueError as exc:
            if "padlen" in str(exc):
                raise ModalityError(
                    f"scan of {x.shape[0]} frames is too short for the band-pass filter ({exc})"
                ) from None
            raise
    out_tr = tr
    if opts.target_tr is not None and not _same_tr(tr, opts.target_tr):
        x = resample_tr(x, tr, opts.target_tr)
        out_tr = float(opts.target_tr)
    present = present.copy()
    if opts.standardize:
        mean = x.mean(axis=0)
        std = x.std(axis=0, ddof=1) if x.shape[0] > 1 else np.zeros(x.shape[1])
        flat = ~(std > 1e-12 * np.maximum(1.0, np.abs(mean)))
        present &= ~flat  # an ROI whose average is constant carries no signal either
        x = (x - mean) / np.where(flat, 1.0, std)
    x = np.asarray(x, dtype=np.float64)
    x[:, ~present] = 0.0
    return x, present, out_tr


# --------------------------------------------------------------------------------------------
# Records

_ENTITY = {
    key: re.compile(rf"(?:^|[_/\\]){key}-([A-Za-z0-9]+)") for key in ("sub", "ses", "task", "run")
}


def bids_entities(source: str) -> dict[str, str | None]:
    """subject / session / task / run from BIDS names (file name first, then folders).

    Without a `sub-` entity the subject is the file name without .nii / .nii.gz.
    """
    name = re.split(r"[/\\]", source)[-1]
    found: dict[str, str | None] = {}
    for key, pattern in _ENTITY.items():
        match = pattern.search(name)
        if match is None:
            matches = pattern.findall(source)
            found[key] = matches[-1] if matches else None
        else:
            found[key] = match.group(1)
    subject = found["sub"]
    if subject is None:
        subject = re.sub(r"\.nii(\.gz)?$", "", name, flags=re.IGNORECASE)
    return {"subject": subject, "session": found["ses"], "task": found["task"], "run": found["run"]}


def _schema(n_rois: int, window: int, metadata: dict[str, str]) -> pa.Schema:
    return pa.schema(
        [
            pa.field("subject", pa.string(), nullable=False),
            pa.field("session", pa.string()),
            pa.field("task", pa.string()),
            pa.field("run", pa.string()),
            pa.field("window_start", pa.int32(), nullable=False),
            pa.field("window_start_s", pa.float32(), nullable=False),
            pa.field("tr", pa.float32(), nullable=False),
            pa.field("n_rois", pa.int32(), nullable=False),
            pa.field("n_missing_rois", pa.int32(), nullable=False),
            pa.field("missing_rois", pa.list_(pa.int32()), nullable=False),
            pa.field(
                "bold",
                pa.fixed_shape_tensor(pa.float32(), [n_rois, window]),
                nullable=False,
                metadata={"axes": "roi,time"},
            ),
        ],
        metadata=metadata,
    )


# --------------------------------------------------------------------------------------------
# Dataset statistics


class _SystematicSample:
    """A bounded, deterministic sample of every ROI's values: time points with t % stride == 0.

    t counts time points over all windows in order. When the buffer is full the stride doubles and
    every other kept point goes, so the result depends only on the data order, not on batch sizes.
    Absent ROIs are stored as NaN and ignored.
    """

    def __init__(self, n_rois: int, max_values: int) -> None:
        self.capacity = max(64, max_values // max(n_rois, 1))
        self.stride = 1
        self.t = 0
        self.values: list[np.ndarray] = []  # [n_rois, k] float32
        self.times: list[np.ndarray] = []
        self.kept = 0

    def add(self, window: np.ndarray) -> None:
        n = window.shape[1]
        t = np.arange(self.t, self.t + n)
        self.t += n
        keep = t % self.stride == 0
        if keep.any():
            self.values.append(window[:, keep].astype(np.float32))
            self.times.append(t[keep])
            self.kept += int(keep.sum())
        while self.kept > self.capacity:
            self.stride *= 2
            values, times = self.finish()
            keep = times % self.stride == 0
            self.values, self.times = [values[:, keep]], [times[keep]]
            self.kept = int(keep.sum())

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.values:
            return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
        return np.concatenate(self.values, axis=1), np.concatenate(self.times)


def _window_correlations(x: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fisher-z of Pearson r per window ([b, R, R]) and the [b, R] mask of usable ROIs."""
    centred = x - x.mean(axis=2, keepdims=True)
    norm = np.sqrt((centred**2).sum(axis=2))
    usable = present & (norm > 1e-12)
    z = np.where(usable[..., None], centred / np.where(usable, norm, 1.0)[..., None], 0.0)
    r = np.matmul(z, z.transpose(0, 2, 1))
    return np.arctanh(np.clip(r, -1.0 + 1e-7, 1.0 - 1e-7)), usable


def connectivity_gradients(
    fc: np.ndarray, n_components: int, sparsity: float = GRADIENT_SPARSITY
) -> tuple[np.ndarray, np.ndarray]:
    """Diffusion-map gradients of a connectivity matrix, as BrainSpace computes them.

    Affinity: keep each row's strongest (1 - sparsity) share of entries, cosine similarity between
    the sparsified rows, negatives set to 0. Embedding: anisotropic diffusion maps (alpha 0.5,
    multiscale eigenvalues w / (1 - w)) solved exactly with a dense symmetric eigensolver. Each
    dimension is sign-fixed (largest-magnitude entry positive) and scaled to [-1, 1] (Brain-JEPA).
    ROIs with no affinity (never observed) get 0. Returns (gradients [R, k], eigenvalues [k]),
    k = min(n_components, connected ROIs - 1).
    """
    from scipy import linalg

    n = fc.shape[0]
    keep_k = max(1, int(n * (1.0 - sparsity)))
    order = np.argsort(-fc, axis=1, kind="stable")[:, :keep_k]
    sparse = np.zeros_like(fc)
    rows = np.arange(n)[:, None]
    sparse[rows, order] = fc[rows, order]
    norms = np.linalg.norm(sparse, axis=1)
    unit = sparse / np.where(norms > 0, norms, 1.0)[:, None]
    affinity = np.clip(unit @ unit.T, 0.0, None)
    affinity = 0.5 * (affinity + affinity.T)  # exact symmetry for eigh

    nodes = np.flatnonzero(affinity.sum(axis=1) > 0)
    k = min(n_components, nodes.size - 1)
    gradients = np.zeros((n, max(k, 0)))
    if k < 1:
        return gradients, np.zeros(0)
    w_mat = affinity[np.ix_(nodes, nodes)]
    d = w_mat.sum(axis=1) ** -DIFFUSION_ALPHA
    w_mat = w_mat * d[:, None] * d[None, :]
    degree = w_mat.sum(axis=1)
    inv_sqrt = 1.0 / np.sqrt(degree)
    sym = w_mat * inv_sqrt[:, None] * inv_sqrt[None, :]  # similar to the Markov matrix D^-1 W
    # The trivial eigenvector (eigenvalue 1) is known: sqrt(degree). Deflating it, rather than
    # dropping the first eigenvector found, stays right when a disconnected graph repeats
    # eigenvalue 1 (eigh would then return an arbitrary mix of the components' indicators).
    trivial = np.sqrt(degree) / np.linalg.norm(np.sqrt(degree))
    sym = sym - np.outer(trivial, trivial)
    evals, evecs = linalg.eigh(0.5 * (sym + sym.T))
    evals, evecs = evals[::-1], evecs[:, ::-1]
    # Right eigenvectors of D^-1 W, scaled as BrainSpace's (trivial eigenvector = all ones).
    psi = evecs * (inv_sqrt * np.linalg.norm(np.sqrt(degree)))[:, None]
    lambdas = evals[:k]
    # A disconnected graph has repeated eigenvalue 1; cap it so w / (1 - w) stays finite.
    lambdas = np.minimum(lambdas, 1.0 - 1e-9)
    lambdas = lambdas / (1.0 - lambdas)
    maps = psi[:, :k] * lambdas[None, :]
    peak = maps[np.abs(maps).argmax(axis=0), np.arange(k)]
    maps = maps * np.sign(peak)[None, :]
    scale = np.abs(maps).max(axis=0)
    maps = maps / np.where(scale > 0, scale, 1.0)[None, :]
    gradients[nodes] = maps
    return gradients, lambdas


def fit_fmri_stats(
    batches: Iterable[pa.RecordBatch],
    gradient_dims: int = DEFAULT_GRADIENT_DIMS,
    max_sample_values: int = ROBUST_SAMPLE_VALUES,
) -> dict[str, Any]:
    """Per-ROI robust scaling and brain gradients from written fMRI records (see docs/fmri.md)."""
    sample: _SystematicSample | None = None
    z_sum: np.ndarray | None = None
    pair_count: np.ndarray | None = None
    roi_windows: np.ndarray | None = None
    n_windows = 0
    shape: tuple[int, int] | None = None
    for batch in batches:
        if batch.num_rows == 0:
            continue
        bold = batch.column("bold").to_numpy_ndarray()
        if shape is None:
            shape = (int(bold.shape[1]), int(bold.shape[2]))
            sample = _SystematicSample(shape[0], max_sample_values)
            z_sum = np.zeros((shape[0], shape[0]))
            pair_count = np.zeros((shape[0], shape[0]), dtype=np.int64)
            roi_windows = np.zeros(shape[0], dtype=np.int64)
        present = np.ones((batch.num_rows, shape[0]), dtype=bool)
        if "missing_rois" in batch.schema.names:
            for i, missing in enumerate(batch.column("missing_rois").to_pylist()):
                present[i, missing] = False
        for lo in range(0, batch.num_rows, 32):  # chunks keep the [b, R, R] temporaries small
            x = bold[lo : lo + 32].astype(np.float64)
            p = present[lo : lo + 32]
            # Windows side by side along time: the sample's time counter runs across them.
            masked = np.where(p[:, :, None], x, np.nan)
            sample.add(masked.transpose(1, 0, 2).reshape(shape[0], -1))
            z, usable = _window_correlations(x, p)
            z_sum += z.sum(axis=0)  # rows / columns of unusable ROIs are exactly 0
            used = usable.astype(np.int64)
            pair_count += used.T @ used
            roi_windows += usable.sum(axis=0)
        n_windows += batch.num_rows
    if shape is None:
        raise ValueError("no fMRI records to compute statistics from")
    n_rois = shape[0]

    values, _ = sample.finish()
    seen = np.isfinite(values).any(axis=1)
    q = np.zeros((3, n_rois))
    if seen.any():
        q[:, seen] = np.nanpercentile(values[seen], [25, 50, 75], axis=1)
    median = q[1]
    iqr = q[2] - q[0]
    # An ROI with no spread (or never seen) gets IQR 1, so robust scaling leaves it unchanged.
    iqr = np.where(iqr > 0, iqr, 1.0)

    mean_z = np.where(pair_count > 0, z_sum / np.maximum(pair_count, 1), 0.0)
    fc = np.tanh(mean_z)
    np.fill_diagonal(fc, np.where(roi_windows > 0, 1.0, 0.0))
    gradients, lambdas = connectivity_gradients(fc, min(gradient_dims, n_rois - 1))
    return {
        "n_windows": n_windows,
        "n_rois": n_rois,
        "window": shape[1],
        "roi_median": [float(v) for v in median],
        "roi_iqr": [float(v) for v in iqr],
        "roi_windows": [int(v) for v in roi_windows],
        "robust_sample_stride": sample.stride,
        "gradient_dims": int(gradients.shape[1]),
        "gradients": [[float(v) for v in row] for row in gradients],
        "gradient_lambdas": [float(v) for v in lambdas],
        "gradient_method": (
            "diffusion maps (alpha 0.5, multiscale) of the cosine affinity of the group FC "
            f"sparsified to each row's top {100 * (1 - GRADIENT_SPARSITY):.0f}%; group FC = tanh "
            "of the mean Fisher z of per-window Pearson r; each dimension sign-fixed "
            "(largest |value| positive) and scaled to [-1, 1] by its max |value|"
        ),
    }


# --------------------------------------------------------------------------------------------
# Demo cohort

#: Approximate MNI coordinates (mm) of canonical resting-state network nodes (as commonly used
#: seeds; cf. Yeo et al. 2011's 7 networks). x > 0 nodes are mirrored to the left hemisphere.
_NETWORK_NODES: dict[str, list[tuple[float, float, float]]] = {
    "default": [(0, -52, 26), (0, 52, -6), (46, -66, 30)],
    "visual": [(10, -90, 2), (24, -76, -10)],
    "somatomotor": [(38, -22, 58), (56, -10, 30)],
    "dorsal_attention": [(26, -58, 52), (24, -8, 54)],
    "salience": [(36, 18, 2), (0, 20, 40)],
    "frontoparietal": [(44, 30, 28), (50, -50, 44)],
    "limbic": [(28, -16, -20), (24, 30, -16)],
}
#: In group "coupled" the default and frontoparietal networks share this much of their signal.
_GROUP_COUPLING = {"control": 0.0, "coupled": 0.7}
_DEMO_CHUNK = 8192


def network_weights(xyz: np.ndarray, sigma_mm: float = 15.0) -> np.ndarray:
    """[n, networks] soft membership of MNI points: Gaussian in the distance to each network's
    nearest node (nodes mirrored across the midline), normalised to sum to 1 per point."""
    nets = []
    for nodes in _NETWORK_NODES.values():
        pts = np.array([(sx, y, z) for x, y, z in nodes for sx in ((x, -x) if x else (x,))])
        dist = np.linalg.norm(xyz[:, None, :] - pts[None, :, :], axis=2).min(axis=1)
        nets.append(dist)
    dist = np.stack(nets, axis=1)
    # Subtracting each point's minimum keeps exp() away from underflow far from every node.
    logits = -((dist**2) - (dist.min(axis=1, keepdims=True) ** 2)) / (2 * sigma_mm**2)
    w = np.exp(logits)
    return w / w.sum(axis=1, keepdims=True)


def _band_limited_noise(
    rng: np.random.Generator, n: int, tr: float, lo: float = 0.01, hi: float = 0.1
) -> np.ndarray:
    """Unit-variance noise limited to [lo, hi] Hz: the classic resting-state BOLD band."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, d=tr)
    spectrum[(freqs < lo) | (freqs > hi)] = 0
    x = np.fft.irfft(spectrum, n)
    return (x - x.mean()) / (x.std() + 1e-12)


@functools.lru_cache(maxsize=2)
def _mni_grid(voxel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """(brain mask, affine) of nilearn's offline MNI152 brain mask on a `voxel_mm` grid."""
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.image import resample_img

    mask = load_mni152_brain_mask(resolution=2)
    ratio = voxel_mm / 2.0
    shape = tuple(int(np.ceil(s / ratio)) for s in mask.shape)
    affine = np.array(mask.affine, dtype=np.float64)
    affine[:3, :3] = np.diag([voxel_mm] * 3)
    out = resample_img(
        mask,
        target_affine=affine,
        target_shape=shape,
        interpolation="nearest",
        force_resample=True,
        copy_header=True,
    )
    return np.asarray(out.dataobj) > 0, affine


def generate_cohort(
    out_dir: str | Path,
    n_subjects: int,
    seed: int,
    n_frames: int = 480,
    voxel_mm: float = 4.0,
    tr: float = 2.0,
) -> list[str]:
    """Write a deterministic synthetic BIDS-like resting-state cohort in MNI152 space.

    Each voxel = baseline * (1 + 1% network signal + 0.2% global signal) + slow drift + 1% noise,
    stored as int16 like scanner output. Network signals are 0.01-0.1 Hz noise; every voxel mixes
    them with `network_weights` (mostly its nearest network's, so the whole brain has network
    structure). participants.tsv gives each subject a `group`:
    in "coupled" subjects the default and frontoparietal networks share 70% of their signal (a
    connectivity difference a probe can find). Returns the scan paths.
    """
    import nibabel as nib

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    brain, affine = _mni_grid(voxel_mm)
    ijk = np.argwhere(brain)
    xyz = nib.affines.apply_affine(affine, ijk)
    centre_dist = np.linalg.norm(xyz - xyz.mean(axis=0), axis=1)
    names = list(_NETWORK_NODES)
    weights = network_weights(xyz).astype(np.float32)
    default_k, fp_k = names.index("default"), names.index("frontoparietal")

    width = max(2, len(str(n_subjects)))
    rows = ["participant_id\tgroup\tcoupling"]
    paths = []
    for i in range(n_subjects):
        rng = np.random.default_rng([seed, i])
        group = "coupled" if i % 2 else "control"
        coupling = _GROUP_COUPLING[group]
        signals = np.stack([_band_limited_noise(rng, n_frames, tr) for _ in names])
        signals = signals.astype(np.float32)
        shared = signals[default_k]
        signals[fp_k] = np.sqrt(1 - coupling**2) * signals[fp_k] + coupling * shared
        global_signal = _band_limited_noise(rng, n_frames, tr).astype(np.float32)
        # Baseline: brighter centre (like EPI's coil profile), plus voxel-wise variation.
        baseline = 900 + 300 * np.exp(-(centre_dist**2) / (2 * 60.0**2))
        baseline = baseline * (1 + 0.05 * rng.standard_normal(len(ijk)))
        slope = rng.normal(0, 10, len(ijk)).astype(np.float32)
        wobble = rng.normal(0, 5, len(ijk)).astype(np.float32)
        t = np.linspace(0, 1, n_frames, dtype=np.float32)
        data = np.zeros(brain.shape + (n_frames,), dtype=np.int16, order="F")  # NIfTI order
        for lo in range(0, len(ijk), _DEMO_CHUNK):  # bounded memory at fine voxel sizes
            sl = slice(lo, lo + _DEMO_CHUNK)
            # float32 is plenty for values stored as int16, and twice as fast to generate.
            base = baseline[sl, None].astype(np.float32)
            bold = base * (1 + 0.01 * (weights[sl] @ signals) + 0.002 * global_signal)
            bold += np.outer(slope[sl], t) + np.outer(wobble[sl], np.cos(np.pi * t))
            bold += rng.standard_normal(bold.shape, dtype=np.float32) * (0.01 * base)
            v = ijk[sl]
            data[v[:, 0], v[:, 1], v[:, 2]] = np.clip(np.rint(bold), -32768, 32767)

        sub = f"sub-{i + 1:0{width}d}"
        func = out / sub / "func"
        func.mkdir(parents=True, exist_ok=True)
        img = nib.Nifti1Image(data, affine)
        img.header.set_xyzt_units("mm", "sec")
        img.header.set_zooms((voxel_mm, voxel_mm, voxel_mm, tr))
        img.header.set_qform(affine, code=4)  # 4 = MNI_152
        img.header.set_sform(affine, code=4)
        path = func / f"{sub}_task-rest_bold.nii.gz"
        tmp = func / f".{sub}_task-rest_bold.tmp.nii.gz"
        nib.save(img, tmp)
        os.replace(tmp, path)  # a killed run never leaves a half-written scan under the real name
        _write_text(func / f"{sub}_task-rest_bold.json", json.dumps({"RepetitionTime": tr}))
        rows.append(f"{sub}\t{group}\t{coupling}")
        paths.append(str(path))
    _write_text(out / "participants.tsv", "\n".join(rows) + "\n")
    _write_text(
        out / "dataset_description.json",
        json.dumps({"Name": "jepa-forge synthetic resting-state cohort", "BIDSVersion": "1.8.0"}),
    )
    return paths


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# The modality


def _coverage_error(atlas: Atlas, n_present: int, opts: FmriOptions) -> ModalityError:
    if atlas.is_default:
        hint = (
            "the built-in atlas is in MNI152 space: register the scan to MNI152, or pass "
            "--atlas LABELS.nii.gz in the scan's own space"
        )
    else:
        hint = "check that the atlas and the scan are in the same space (compare affines)"
    return ModalityError(
        f"only {n_present} of {atlas.n_rois} ROIs of the {atlas.description} have signal "
        f"in this scan (--min-roi-coverage {opts.min_roi_coverage:g}); {hint}"
    )


class FmriModality(Modality):
    """4D NIfTI BOLD scans -> windows of ROI x time (see the module docstring)."""

    name = "fmri"
    extensions = (".nii", ".nii.gz")
    options_type = FmriOptions

    def add_cli_options(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("fMRI options")
        g.add_argument(
            "--atlas",
            dest="fmri_atlas",
            metavar="LABELS.nii[.gz]",
            help="label image (0 = background); default: the built-in 450-parcel MNI152 atlas",
        )
        g.add_argument(
            "--tr", dest="fmri_tr", type=float, metavar="SECONDS", help="override the header TR"
        )
        g.add_argument(
            "--target-tr",
            dest="fmri_target_tr",
            type=float,
            metavar="SECONDS",
            help="resample every scan to this TR (default: keep each scan's TR)",
        )
        g.add_argument(
            "--window",
            dest="fmri_window",
            type=int,
            default=DEFAULT_WINDOW,
            metavar="FRAMES",
            help=f"frames per record (default {DEFAULT_WINDOW}, Brain-JEPA)",
        )
        g.add_argument(
            "--hop",
            dest="fmri_hop",
            type=int,
            metavar="FRAMES",
            help="frames between window starts (default: the window, i.e. no overlap)",
        )
        g.add_argument(
            "--detrend",
            dest="fmri_detrend",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="remove a linear trend per ROI (default on)",
        )
        g.add_argument(
            "--high-pass", dest="fmri_high_pass", type=float, metavar="HZ", help="e.g. 0.01"
        )
        g.add_argument(
            "--low-pass", dest="fmri_low_pass", type=float, metavar="HZ", help="e.g. 0.1"
        )
        g.add_argument(
            "--standardize",
            dest="fmri_standardize",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="z-score each ROI over the whole scan (default on)",
        )
        g.add_argument(
            "--min-roi-coverage",
            dest="fmri_min_roi_coverage",
            type=float,
            default=0.5,
            metavar="FRACTION",
            help="refuse scans where fewer ROIs than this have signal (default 0.5)",
        )
        g.add_argument(
            "--gradient-dims",
            dest="fmri_gradient_dims",
            type=int,
            default=DEFAULT_GRADIENT_DIMS,
            metavar="N",
            help=f"brain-gradient dimensions in stats (default {DEFAULT_GRADIENT_DIMS})",
        )

    def options_from_args(self, args: argparse.Namespace) -> FmriOptions:
        atlas = getattr(args, "fmri_atlas", None)
        return FmriOptions(
            # Absolute, so Ray workers with another working directory find the same file.
            atlas=None if atlas is None else str(Path(atlas).expanduser().resolve()),
            tr=getattr(args, "fmri_tr", None),
            target_tr=getattr(args, "fmri_target_tr", None),
            window=getattr(args, "fmri_window", DEFAULT_WINDOW),
            hop=getattr(args, "fmri_hop", None),
            detrend=getattr(args, "fmri_detrend", True),
            high_pass=getattr(args, "fmri_high_pass", None),
            low_pass=getattr(args, "fmri_low_pass", None),
            standardize=getattr(args, "fmri_standardize", True),
            min_roi_coverage=getattr(args, "fmri_min_roi_coverage", 0.5),
            gradient_dims=getattr(args, "fmri_gradient_dims", DEFAULT_GRADIENT_DIMS),
        )

    def schema(self, opts: FmriOptions) -> pa.Schema:
        atlas = load_atlas(opts.atlas)
        metadata = {
            "fmri.atlas": "default" if atlas.is_default else atlas.path,
            "fmri.atlas_sha256": atlas.sha256,
            "fmri.roi_labels": json.dumps(list(atlas.label_values)),
        }
        return _schema(atlas.n_rois, opts.window, metadata)

    def read(self, ctx: ReadContext, opts: FmriOptions) -> Iterator[dict[str, Any]]:
        atlas = load_atlas(opts.atlas)
        scan = _open_scan(ctx.local_path, ctx.max_file_bytes, opts)
        grid = atlas_on_grid(atlas, scan.shape[:3], scan.img.affine)
        if grid.voxels.size == 0:
            raise _coverage_error(atlas, 0, opts)
        signals, present = parcellate(scan.img, grid)
        n_present = int(present.sum())
        if n_present < opts.min_roi_coverage * atlas.n_rois:
            raise _coverage_error(atlas, n_present, opts)
        signals, present, out_tr = clean_signals(signals, present, scan.tr, opts)
        missing = [int(i) for i in np.flatnonzero(~present)]
        entities = bids_entities(ctx.source)
        bold = signals.astype(np.float32)
        for start in range(0, bold.shape[0] - opts.window + 1, opts.hop):
            yield {
                **entities,
                "window_start": start,
                "window_start_s": start * out_tr,
                "tr": out_tr,
                "n_rois": atlas.n_rois,
                "n_missing_rois": len(missing),
                "missing_rois": missing,
                "bold": np.ascontiguousarray(bold[start : start + opts.window].T),
            }

    def fit_stats(self, batches: Iterable[pa.RecordBatch], opts: FmriOptions) -> dict[str, Any]:
        return fit_fmri_stats(batches, gradient_dims=opts.gradient_dims)

    def demo(self, out_dir: str | Path, n: int, seed: int) -> list[str]:
        return generate_cohort(out_dir, n, seed)

    def library_versions(self) -> dict[str, str]:
        import nibabel
        import nilearn
        import scipy

        return {
            "nibabel": nibabel.__version__,
            "nilearn": nilearn.__version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
        }


MODALITY = FmriModality()
