"""Opening a NIfTI scan (every refusal a reason), parcellation, cleaning, record schema."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from modalities.base import ModalityError
from modalities.fmri.atlas import AtlasGrid
from modalities.fmri.options import (
    _GZIP_MAGIC,
    _NIFTI2_MAGIC,
    _TIME_UNIT_SECONDS,
    MAX_PLAUSIBLE_TR_S,
    MIN_PLAUSIBLE_TR_S,
    FmriOptions,
)

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


def _stored_voxels(img: Any) -> np.ndarray:
    """The voxel array as stored (unscaled), [x, y, z, t] in NIfTI's Fortran order.

    A .nii.gz is inflated in one call with ISA-L (python-isal) when it is installed: about 1.4x
    zlib's speed, and inflating dominates reading a compressed scan. The array is then a view of
    the inflated bytes, which also saves the copy nibabel's reader makes. Anything else (plain
    .nii, which nibabel memory-maps) goes through nibabel.
    """
    filename = img.file_map["image"].filename
    try:
        from isal import igzip
    except ImportError:  # optional speed-up: nibabel's zlib path gives the same array
        igzip = None
    if igzip is None or not filename or not str(filename).lower().endswith(".gz"):
        return np.asanyarray(img.dataobj.get_unscaled())
    with open(filename, "rb") as f:
        data = igzip.decompress(f.read())
    # The array proxy knows where nibabel would read (a single-file header may say offset 0).
    proxy = img.dataobj
    dtype = np.dtype(proxy.dtype)
    offset = int(proxy.offset)
    count = int(np.prod(proxy.shape))
    if len(data) < offset + count * dtype.itemsize:
        raise EOFError("the inflated file is shorter than the header's voxel data")
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(
        proxy.shape, order=proxy.order
    )


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
        raw = _stored_voxels(img)
    except EOFError:
        raise ModalityError("truncated: the gzip stream ends before the voxel data") from None
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise ModalityError(f"corrupt gzip stream ({exc})") from None
    except (OSError, ValueError) as exc:
        raise ModalityError(f"cannot read the voxel data: {exc}") from None
    except Exception as exc:
        if type(exc).__name__ == "IsalError":  # isal's zlib error: a corrupt deflate stream
            raise ModalityError(f"corrupt gzip stream ({exc})") from None
        raise
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


def linear_detrend(x: np.ndarray) -> np.ndarray:
    """Remove each column's mean and least-squares linear trend (float64)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    x = x - x.mean(axis=0)
    if n < 2:
        return x
    ramp = np.arange(n, dtype=np.float64)
    ramp -= ramp.mean()
    ramp /= np.sqrt(ramp @ ramp)
    return x - np.outer(ramp, ramp @ x)


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
    filtering = low_pass is not None or opts.high_pass is not None
    if opts.detrend and not filtering:
        # The default path. Same result as nilearn.signal.clean(detrend=True), without importing
        # nilearn.signal (2.4 s of scipy imports in every fresh Ray worker).
        x = linear_detrend(x)
    elif filtering:
        from nilearn import signal as nsignal

        try:
            x = nsignal.clean(
                x,
                detrend=opts.detrend,
                standardize=None,
                filter="butterworth",
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


def _schema(
    n_rois: int, window: int, metadata: dict[str, str], participants_columns: tuple[str, ...] = ()
) -> pa.Schema:
    return pa.schema(
        [
            *(pa.field(c, pa.string()) for c in participants_columns),
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
