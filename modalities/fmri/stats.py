"""Dataset statistics for Brain-JEPA: per-ROI robust scaling and connectivity gradients."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa

from modalities.fmri.options import (
    DEFAULT_GRADIENT_DIMS,
    DIFFUSION_ALPHA,
    GRADIENT_SPARSITY,
    ROBUST_SAMPLE_VALUES,
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


def _subject_mean_scaling(
    group_sum: dict[str, np.ndarray], group_n: dict[str, np.ndarray], n_rois: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per ROI: median and IQR across subjects of each subject's time-mean of the ROI (Brain-JEPA's
    official `_compute_normalization_params`). An IQR that is not above 1e-6 x (1 + |median|) (no
    spread of the means: one subject, or scans z-scored at ingest, whose means are all 0) is set
    to 1, so the scaling only centres that ROI; returns how many ROIs were floored."""
    if not group_sum:
        return np.zeros(n_rois), np.ones(n_rois), n_rois
    sums = np.stack([group_sum[g] for g in sorted(group_sum)])
    counts = np.stack([group_n[g] for g in sorted(group_n)])
    means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    seen = np.isfinite(means).any(axis=0)
    q = np.zeros((3, n_rois))
    if seen.any():
        q[:, seen] = np.nanpercentile(means[:, seen], [25, 50, 75], axis=0)
    median, iqr = q[1], q[2] - q[0]
    ok = iqr > 1e-6 * (1.0 + np.abs(median))
    return median, np.where(ok, iqr, 1.0), int((~ok).sum())


def fit_fmri_stats(
    batches: Iterable[pa.RecordBatch],
    gradient_dims: int = DEFAULT_GRADIENT_DIMS,
    max_sample_values: int = ROBUST_SAMPLE_VALUES,
    standardized: bool | None = None,
) -> dict[str, Any]:
    """Per-ROI robust scaling and brain gradients from written fMRI records (see docs/fmri.md).
    `standardized`: whether the ingest z-scored each ROI per scan (recorded in the statistics:
    the subject-mean scaling means nothing then, and the tokenizer refuses it)."""
    sample: _SystematicSample | None = None
    z_sum: np.ndarray | None = None
    pair_count: np.ndarray | None = None
    roi_windows: np.ndarray | None = None
    n_windows = 0
    shape: tuple[int, int] | None = None
    # Brain-JEPA's official scaling: per ROI, the median and IQR across subjects of the ROI's
    # time-mean. Each subject's time-mean is the mean over its windows (NaN where absent).
    group_sum: dict[str, np.ndarray] = {}
    group_n: dict[str, np.ndarray] = {}
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
        key = "subject" if "subject" in batch.schema.names else "source"
        groups = (
            batch.column(key).to_pylist()
            if key in batch.schema.names
            else [str(n_windows + i) for i in range(batch.num_rows)]
        )
        means = bold.mean(axis=2, dtype=np.float64)
        for i, g in enumerate(groups):
            g = str(g)
            if g not in group_sum:
                group_sum[g] = np.zeros(shape[0])
                group_n[g] = np.zeros(shape[0], dtype=np.int64)
            group_sum[g] += np.where(present[i], means[i], 0.0)
            group_n[g] += present[i]
        for lo in range(0, batch.num_rows, 32):  # chunks keep the [b, R, R] temporaries small
            x = bold[lo : lo + 32].astype(np.float64)
            p = present[lo : lo + 32]
            # Windows side by side along time: the sample's time counter runs across them.
            masked = np.where(p[:, :, None], x, np.nan)
            sample.add(masked.transpose(1, 0, 2).reshape(shape[0], -1))
            z, usable = _window_correlations(x, p)
            # one window at a time, in record order: the sums (rows / columns of unusable ROIs
            # are exactly 0) then do not depend on how the records were cut into batches, so the
            # driver and the workers writing the shards give the same statistics to the bit
            for zi in z:
                z_sum += zi
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

    subj_median, subj_iqr, floored = _subject_mean_scaling(group_sum, group_n, n_rois)

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
        "roi_median_subject": [float(v) for v in subj_median],
        "roi_iqr_subject": [float(v) for v in subj_iqr],
        "roi_iqr_subject_floored": int(floored),
        "standardized": standardized,
        "scaling_groups": len(group_sum),
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
