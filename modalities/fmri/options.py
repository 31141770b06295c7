"""fMRI options (ingest: `FmriOptions`; method: `BrainJepaConfig`) and the paper/format constants
they default to. Imports numpy and the standard library only (Ray ingest workers never import
torch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modalities.options import check_range, participants_problems

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
#: the built-in parcellation, made by modalities/data/make_default_atlas.py (see docs/fmri.md)
DEFAULT_ATLAS_PATH = DATA_DIR / "default_atlas_450.nii.gz"
#: `--atlas builtin:N` names a shipped parcellation (450, the default; 100 for CPU demos)
BUILTIN_PREFIX = "builtin:"

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

#: the record fields the reader always writes (participants columns may not reuse them)
RECORD_FIELDS = (
    "id",
    "source",
    "subject",
    "session",
    "task",
    "run",
    "window_start",
    "window_start_s",
    "tr",
    "n_rois",
    "n_missing_rois",
    "missing_rois",
    "bold",
)

_TIME_UNIT_SECONDS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}
_GZIP_MAGIC = b"\x1f\x8b"
_NIFTI2_MAGIC = b"n+2\x00\r\n\x1a\n"


@dataclass(frozen=True)
class FmriOptions:
    """Preprocessing options of the fMRI reader (all JSON-serialisable; recorded in the manifest).

    atlas: label image (3D, integer labels, 0 = background), or `builtin:N` for a shipped MNI152
        parcellation (N = 450 or 100); None = `builtin:450`.
    tr: repetition time in seconds, overriding the header's.
    target_tr: resample every scan to this TR (seconds); None keeps each scan's own TR.
    window: frames per record (after resampling). hop: frames between window starts (None = window).
    detrend: remove a linear trend per ROI. high_pass / low_pass: Butterworth band edges in Hz.
    standardize: z-score each ROI over the whole scan (after resampling).
    min_roi_coverage: refuse a scan in which fewer than this fraction of ROIs have signal.
    gradient_dims: dimensions of the brain-gradient vector in the dataset statistics.
    participants_columns: columns of the BIDS participants.tsv (found in a folder above the scan)
        copied into every record as strings, e.g. ("group", "age") for probes.
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
    participants_columns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.hop is None:
            object.__setattr__(self, "hop", self.window)
        # JSON (the manifest) and Ray hand lists back; the options stay hashable tuples.
        object.__setattr__(self, "participants_columns", tuple(self.participants_columns))
        problems = participants_problems(self.participants_columns, RECORD_FIELDS)
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
# Brain-JEPA's method options (the run config's `modality:` section)

POSITIONS = ("gradient", "roi_index")
#: robust scaling of each ROI: per_value (median / IQR over all its values in the dataset) or
#: subject_mean (median / IQR across subjects of its time-mean: the official code's)
SCALINGS = ("per_value", "subject_mean")


@dataclass(frozen=True)
class BrainJepaConfig:
    """Brain-JEPA's options; defaults are the paper's (official config `ukb_vitb_ep300.yaml`).

    patch_len: frames per token (1 ROI x 16 frames: 160 frames give 10 time patches).
    scaling: "per_value" ((x - median) / IQR of all the ROI's values in the dataset) or
        "subject_mean" (median / IQR across subjects of the ROI's time-mean: the official code).
    pos: "gradient" (the paper's brain-gradient positioning) or "roi_index" (the ablation:
        fixed sin-cos of the ROI index, the official code's `add_w="origin"`).
    obs_scale: the observation block keeps U(lo, hi) of the ROIs and, independently, of the
        time patches (0.84-1).
    cross_roi_scale: Cross-ROI target, share of all ROIs (0.45-0.6).
    cross_roi_patches: Cross-ROI target, time patches inside the observation span (2-5 of 10,
        the official 0.2-0.6 of the patches, floored).
    cross_time_rois: Cross-Time / Double-Cross, share of the context ROIs (Cross-Time) and of the
        other ROIs (Double-Cross) on each side (0.15-0.3).
    max_cross_time_patches: each side (early, late) masks U{0..this} edge patches (3: the official
        0.0-0.4 of 10 patches, floored).
    min_context: a draw is redone while the context keeps fewer than this share of the tokens.
    max_tries: redraws before giving up with an error.
    """

    patch_len: int = 16
    scaling: str = "per_value"
    pos: str = "gradient"
    obs_scale: tuple[float, float] = (0.84, 1.0)
    cross_roi_scale: tuple[float, float] = (0.45, 0.6)
    cross_roi_patches: tuple[int, int] = (2, 5)
    cross_time_rois: tuple[float, float] = (0.15, 0.3)
    max_cross_time_patches: int = 3
    min_context: float = 0.05
    max_tries: int = 100

    def __post_init__(self) -> None:
        if self.patch_len < 1:
            _bad("patch_len", "must be >= 1", self.patch_len)
        if self.scaling not in SCALINGS:
            _bad("scaling", f"expected one of {', '.join(SCALINGS)}", self.scaling)
        if self.pos not in POSITIONS:
            _bad("pos", f"expected one of {', '.join(POSITIONS)}", self.pos)
        for name in ("obs_scale", "cross_roi_scale", "cross_time_rois"):
            check_range(name, getattr(self, name))
        lo, hi = self.cross_roi_patches
        if not 1 <= lo <= hi:
            _bad("cross_roi_patches", "expected [min, max] with 1 <= min <= max", [lo, hi])
        if self.max_cross_time_patches < 0:
            _bad("max_cross_time_patches", "must be >= 0", self.max_cross_time_patches)
        if not 0 <= self.min_context < 1:
            _bad("min_context", "must be in [0, 1)", self.min_context)
        if self.max_tries < 1:
            _bad("max_tries", "must be >= 1", self.max_tries)


def _bad(key: str, why: str, value: Any) -> None:
    raise ValueError(f"{key}: {why}, got {value!r}")
