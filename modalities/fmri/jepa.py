"""Brain-JEPA (Dong et al., NeurIPS 2024) for fMRI: tokens, gradient positions, masking.

- `BrainJepaConfig`: the method's options (the fMRI modality's `method_type`), parsed from the
  run config's `modality:` section (errors name the key, e.g. `modality.obs_scale`).
- `tokenize_record`: a record's `bold` [ROIs, frames], robust-scaled per ROI with the dataset's
  median / IQR, cut into 1 ROI x `patch_len` frame patches; coords (roi, time patch). ROIs the
  record lists as missing (rows of zeros) get no tokens.
- `BrainJepaEmbedder`: Linear patch embedding plus Brain-JEPA's positions: half sin-cos of the
  time patch, half a learned Linear projection of the ROI's brain-gradient vector (stats
  `gradients`, a buffer), min-max scaled to [-1, 1]; or, for the paper's ablation, a fixed
  sin-cos of the ROI index (`pos="roi_index"`).
- `SpatiotemporalMasker`: the observation block, Cross-ROI, Cross-Time and Double-Cross targets.

Imports numpy, torch and `modalities.grid`. Never imports `engine` or `pipelines`: the dataset
statistics (the gradients) come from the caller, which has them from the dataset, a checkpoint or
an export.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from modalities.fmri.options import POSITIONS, BrainJepaConfig
from modalities.grid import grid_patches, sincos_1d

# --------------------------------------------------------------------------------------------
# Tokens


def _stat(stats: Mapping[str, Any], key: str, n_rois: int) -> np.ndarray:
    if key not in stats:
        raise ValueError(
            f"the dataset statistics have no {key!r}: Brain-JEPA scales each ROI with the "
            "dataset's median / IQR and positions it by its gradients (re-run the fMRI ingest "
            "with --overwrite: a dataset ingested before this statistic existed lacks it)"
        )
    value = np.asarray(stats[key], dtype=np.float32)
    if len(value) != n_rois:
        raise ValueError(
            f"statistics {key!r} cover {len(value)} ROIs but the record has {n_rois}: the "
            "statistics belong to another dataset or atlas"
        )
    return value


def tokenize_record(
    record: Mapping[str, Any],
    stats: Mapping[str, Any],
    patch_len: int,
    scaling: str = "per_value",
) -> dict[str, np.ndarray]:
    """tokens float32 [N, patch_len] and coords int64 [N, 2] = (roi, time patch), ROI-major.

    Each ROI is scaled as (x - median) / IQR with the dataset's statistics (Brain-JEPA's robust
    scaling): `scaling` per_value reads roi_median / roi_iqr (over all the ROI's values),
    subject_mean roi_median_subject / roi_iqr_subject (across subjects of its time-mean, the
    official code's). Missing ROIs (`missing_rois`, written as zeros) are left out: a zero row is no
    signal, and predicting it would teach the model the ingest's placeholder.
    """
    bold = np.asarray(record["bold"], dtype=np.float32)
    n_rois = bold.shape[0]
    if scaling == "subject_mean" and stats.get("standardized"):
        raise ValueError(
            "modality.scaling=subject_mean needs series that were not z-scored at ingest: on "
            "scans standardised per ROI (--standardize, the ingest's default) every subject's "
            "time-mean is windowing residue near 0, and dividing by its spread across subjects "
            "inflates the tokens by a factor that depends on scan length (x3-70 measured); "
            "ingest with --no-standardize --no-detrend, or use modality.scaling=per_value"
        )
    if scaling == "subject_mean" and stats.get("roi_iqr_subject_floored") == n_rois:
        raise ValueError(
            "modality.scaling=subject_mean: no ROI's time-mean varies across this dataset's "
            "subjects (detrended or standardised at ingest, or one subject), so it would leave "
            "the series unscaled; ingest with --no-standardize --no-detrend, or use "
            "modality.scaling=per_value"
        )
    suffix = {"per_value": "", "subject_mean": "_subject"}[scaling]
    median = _stat(stats, f"roi_median{suffix}", n_rois)
    iqr = _stat(stats, f"roi_iqr{suffix}", n_rois)
    if "gradients" in stats:
        _stat(stats, "gradients", n_rois)  # the embedder indexes them by these ROI coords
    tokens, coords = grid_patches(bold, patch_len, median, iqr)
    missing = record.get("missing_rois")
    if missing is not None and len(missing):
        keep = ~np.isin(coords[:, 0], np.asarray(missing, dtype=np.int64))
        tokens, coords = np.ascontiguousarray(tokens[keep]), np.ascontiguousarray(coords[keep])
    return {"tokens": tokens, "coords": coords}


# --------------------------------------------------------------------------------------------
# Embedder


class BrainJepaEmbedder(nn.Module):
    """Linear patch embedding plus Brain-JEPA positions: cat(sin-cos(time patch), ROI half).

    The ROI half is `Linear(gradients[roi])` min-max scaled to [-1, 1] over all ROIs (as the
    official `GradTs_2dPE` does, which keeps the learned half on the sin-cos half's scale), or a
    fixed sin-cos of the ROI index with `pos="roi_index"`. The gradients are a buffer, so they
    travel with the weights in checkpoints and exports.
    """

    def __init__(
        self, patch_len: int, dim: int, gradients: np.ndarray | None, pos: str = "gradient"
    ) -> None:
        super().__init__()
        if dim % 4:
            # each half is a sin-cos (or sin-cos-sized) block of dim / 2 channels, itself even
            raise ValueError(f"model.embed_dim must be a multiple of 4, got {dim}")
        if pos not in POSITIONS:
            raise ValueError(f"modality.pos: expected one of {', '.join(POSITIONS)}, got {pos!r}")
        self.dim = dim
        self.pos = pos
        self.proj = nn.Linear(patch_len, dim)
        if pos == "gradient":
            if gradients is None:
                raise ValueError("modality.pos=gradient needs the dataset's gradients")
            g = torch.as_tensor(np.asarray(gradients, dtype=np.float32))
            if g.ndim != 2 or g.shape[1] < 1:
                raise ValueError(f"gradients must be [n_rois, k >= 1], got {tuple(g.shape)}")
            self.register_buffer("gradients", g)
            self.gradient_proj = nn.Linear(g.shape[1], dim // 2)

    def roi_table(self) -> torch.Tensor:
        """[n_rois, dim / 2]: the gradient half of every ROI (pos="gradient" only)."""
        table = self.gradient_proj(self.gradients)
        lo, hi = table.min(), table.max()
        return (table - lo) / (hi - lo).clamp_min(1e-6) * 2 - 1

    def position(self, coords: torch.Tensor) -> torch.Tensor:
        """Positional embedding [B, N, dim] of coords [B, N, 2] = (roi, time patch)."""
        half = self.dim // 2
        time = sincos_1d(coords[..., 1], half)
        if self.pos == "gradient":
            roi = self.roi_table()[coords[..., 0]]
        else:
            roi = sincos_1d(coords[..., 0], half)
        return torch.cat([time.to(roi.dtype), roi], dim=-1).to(self.proj.weight.dtype)

    def local(self, tokens: torch.Tensor) -> torch.Tensor:
        """The patch embedding alone [..., dim] (no positions)."""
        return self.proj(tokens)

    def forward(self, tokens: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        return self.local(tokens) + self.position(coords)


def build_embedder(
    opts: BrainJepaConfig, dim: int, stats: Mapping[str, Any] | None = None
) -> BrainJepaEmbedder:
    """The embedder of width `dim`; `stats`: the dataset statistics (gradient positions read
    their 'gradients')."""
    gradients = None
    if opts.pos == "gradient":
        if stats is None:
            raise ValueError(
                "modality.pos=gradient needs the dataset statistics (their 'gradients'), and none "
                "were given: the engine passes the dataset's, and checkpoints and exports carry "
                "them since they were first stored; an older checkpoint cannot rebuild its "
                "positions (retrain it, or use modality.pos=roi_index)"
            )
        if "gradients" not in stats:
            raise ValueError(
                "the dataset statistics have no 'gradients' (modality.pos=gradient needs them; "
                "re-run the fMRI ingest, or use modality.pos=roi_index)"
            )
        gradients = np.asarray(stats["gradients"], dtype=np.float32)
    return BrainJepaEmbedder(opts.patch_len, dim, gradients, opts.pos)


# --------------------------------------------------------------------------------------------
# Masker


@dataclass(frozen=True)
class BrainJepaMask:
    """One draw: token indices (sorted int64) of the context and of each target kind, plus the
    observation block and the edge patches it was built from (for pictures and tests)."""

    context: np.ndarray
    cross_roi: np.ndarray
    cross_time: np.ndarray
    double_cross: np.ndarray
    obs_rois: np.ndarray  # ROI ids of the observation block
    obs_span: tuple[int, int]  # its time patches [start, stop)
    early: int  # time patches [0, early) are Cross-Time / Double-Cross targets
    late: int  # and so are [n_patches - late, n_patches)

    def targets(self) -> list[np.ndarray]:
        """The non-empty target blocks, one predictor sequence each."""
        return [t for t in (self.cross_roi, self.cross_time, self.double_cross) if len(t)]


def _choose(rng: np.random.Generator, pool: np.ndarray, k: int) -> np.ndarray:
    return np.sort(rng.choice(pool, size=k, replace=False)) if k else pool[:0]


class SpatiotemporalMasker:
    """Brain-JEPA's spatiotemporal masking, one sample at a time (variable lengths, no truncation).

    - Observation block: `obs_scale` of the ROIs (a random subset: ROIs have no order) and a
      contiguous span of `obs_scale` of the time patches.
    - Cross-ROI (alpha): `cross_roi_scale` of all ROIs over `cross_roi_patches` contiguous patches
      inside the observation span. Its ROIs leave the context at every time (official code).
    - Edges: `early` ~ U{0..max} first and `late` ~ U{0..max} last time patches leave the context
      for every ROI. On each side, Cross-Time (beta) takes `cross_time_rois` of the context ROIs
      (same ROIs, other time) and Double-Cross (gamma) as large a share of the other ROIs (other
      ROIs, other time) at those patches.
    - Context: (observed ROIs minus Cross-ROI ROIs) x (observation span minus the edges), so it is
      disjoint from every target, and Cross-Time / Double-Cross lie before or after it in time.
    A draw leaving fewer than `min_context` of the tokens (or an empty Cross-ROI target) is redone.
    Deterministic given the generator.
    """

    def __init__(self, opts: BrainJepaConfig | None = None) -> None:
        self.opts = opts or BrainJepaConfig()

    def draw(self, rng: np.random.Generator, coords: np.ndarray) -> BrainJepaMask:
        """One mask for a sample with `coords` [N, 2] = (roi, time patch)."""
        coords = np.asarray(coords)
        if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) == 0:
            raise ValueError(f"coords must be [N, 2] with N > 0, got shape {coords.shape}")
        rois = np.unique(coords[:, 0])
        n_rois, n_time = int(coords[:, 0].max()) + 1, int(coords[:, 1].max()) + 1
        lookup = np.full((n_rois, n_time), -1, dtype=np.int64)
        lookup[coords[:, 0], coords[:, 1]] = np.arange(len(coords))
        need = max(1, math.ceil(self.opts.min_context * len(coords)))
        for _ in range(self.opts.max_tries):
            mask = self._draw_once(rng, rois, n_time, lookup)
            if len(mask.context) >= need and len(mask.cross_roi):
                return mask
        raise ValueError(
            f"could not draw a Brain-JEPA mask leaving {need} context tokens of {len(coords)} "
            f"({len(rois)} ROIs x {n_time} time patches) in {self.opts.max_tries} tries; lower "
            "modality.min_context, modality.max_cross_time_patches or modality.cross_roi_scale"
        )

    def _draw_once(
        self, rng: np.random.Generator, rois: np.ndarray, n_time: int, lookup: np.ndarray
    ) -> BrainJepaMask:
        o = self.opts
        r = len(rois)
        # Observation block: ROI and time shares drawn independently (official collator);
        # floored like the official int(), at least one of each.
        n_obs = max(1, int(r * rng.uniform(*o.obs_scale)))
        w_obs = max(1, int(n_time * rng.uniform(*o.obs_scale)))
        t0 = int(rng.integers(0, n_time - w_obs + 1))
        obs_rois = _choose(rng, rois, n_obs)
        # Cross-ROI: any ROIs (those also observed leave the context), inside the span.
        n_alpha = max(1, int(r * rng.uniform(*o.cross_roi_scale)))
        w_alpha = min(int(rng.integers(o.cross_roi_patches[0], o.cross_roi_patches[1] + 1)), w_obs)
        a0 = int(rng.integers(t0, t0 + w_obs - w_alpha + 1))
        alpha_rois = _choose(rng, rois, n_alpha)
        ctx_rois = np.setdiff1d(obs_rois, alpha_rois, assume_unique=True)
        other_rois = np.setdiff1d(rois, ctx_rois, assume_unique=True)
        # Edges: early then late, never overlapping on short grids.
        early = min(int(rng.integers(0, o.max_cross_time_patches + 1)), n_time)
        late = min(int(rng.integers(0, o.max_cross_time_patches + 1)), n_time - early)
        beta, gamma = np.zeros((r, n_time), bool), np.zeros((r, n_time), bool)
        for span in (np.arange(0, early), np.arange(n_time - late, n_time)):
            if not len(span):
                continue
            share = rng.uniform(*o.cross_time_rois)
            for cells, pool in ((beta, ctx_rois), (gamma, other_rois)):
                picked = _choose(rng, pool, int(len(pool) * share))
                cells[np.ix_(np.searchsorted(rois, picked), span)] = True
        alpha = np.zeros((r, n_time), bool)
        alpha[np.ix_(np.searchsorted(rois, alpha_rois), np.arange(a0, a0 + w_alpha))] = True
        context = np.zeros((r, n_time), bool)
        c0, c1 = max(t0, early), min(t0 + w_obs, n_time - late)
        context[np.ix_(np.searchsorted(rois, ctx_rois), np.arange(c0, max(c0, c1)))] = True
        table = lookup[rois]
        return BrainJepaMask(
            context=_indices(table, context),
            cross_roi=_indices(table, alpha),
            cross_time=_indices(table, beta),
            double_cross=_indices(table, gamma),
            obs_rois=obs_rois,
            obs_span=(t0, t0 + w_obs),
            early=early,
            late=late,
        )

    def __call__(
        self, rng: np.random.Generator, coords: np.ndarray
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """(context, [Cross-ROI, Cross-Time, Double-Cross]) token indices, empty blocks left out."""
        mask = self.draw(rng, coords)
        return mask.context, mask.targets()


def _indices(table: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Sorted token indices of the True cells of a [rois, time] grid (cells without a token
    skipped)."""
    idx = table[cells]
    return np.sort(idx[idx >= 0])
