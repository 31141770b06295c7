"""A-JEPA's model side: 16 x 16 patches of the log-mel, the masking curriculum, the embedder.

- `AJepaMethod` (options.py): the method options (the run config's `modality:` section).
- `spectrogram_patches`: a record's [n_mels, frames] log-mel -> tokens [N, pf * pt] (each patch
  flattened frequency-major) and coords (row = frequency patch, low frequencies first; col = time
  patch). Values are normalised as AudioMAE and A-JEPA do, (x - mean) / (2 std) with the
  dataset's mean and std; time patches that hold only the last segment's padding are dropped,
  so a short file has fewer tokens rather than tokens of silence it never had.
- `CurriculumMasker`: the masking curriculum. Each sample draws either I-JEPA's random blocks
  (targets: `masks`, context: a large block minus the targets) or a time-frequency-aware mask
  (targets: `time_strips` whole-height time strips and `freq_bands` whole-width frequency bands;
  context: every other token), the latter with probability p(step) that ramps linearly from
  `curriculum[0]` at batch `curriculum_steps[0]` to `curriculum[1]` at `curriculum_steps[1]`.
  The step is the batch's position in the data stream, which checkpoints restore, so a resumed
  run draws the same masks as an uninterrupted one.
- `GridEmbedder` (modalities/grid.py): a Linear patch embedding plus fixed 2-D sin-cos positions.

Imports numpy, torch (through modalities.grid) and the audio options only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from modalities.audio.options import AJepaMethod
from modalities.grid import MultiBlockMasker


def spectrogram_patches(
    mel: np.ndarray, valid_frames: int, mean: float, std: float, patch_freq: int, patch_time: int
) -> tuple[np.ndarray, np.ndarray]:
    """Tokens float32 [N, patch_freq * patch_time] and coords int64 [N, 2] (module docstring)."""
    x = np.asarray(mel, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"mel must be [n_mels, frames], got shape {x.shape}")
    n_mels, frames = x.shape
    if n_mels % patch_freq or frames % patch_time:
        raise ValueError(
            f"a {n_mels} x {frames} log-mel does not split into {patch_freq} x {patch_time} "
            f"patches (modality.patch_freq / patch_time must divide the mel bins / the segment)"
        )
    x = (x - np.float32(mean)) / np.float32(2.0 * std if std > 0 else 1.0)
    rows, cols = n_mels // patch_freq, frames // patch_time
    keep = max(1, min(cols, math.ceil(int(valid_frames) / patch_time)))
    grid = x.reshape(rows, patch_freq, cols, patch_time)[:, :, :keep].transpose(0, 2, 1, 3)
    tokens = np.ascontiguousarray(grid.reshape(rows * keep, patch_freq * patch_time))
    r, c = np.meshgrid(np.arange(rows), np.arange(keep), indexing="ij")
    coords = np.stack([r.reshape(-1), c.reshape(-1)], axis=1).astype(np.int64)
    return tokens, coords


def tf_probability(opts: AJepaMethod, step: int) -> float:
    """Probability of a time-frequency-aware mask at batch `step` (module docstring)."""
    if opts.masking == "block":
        return 0.0
    if opts.masking == "tf":
        return 1.0
    (p0, p1), (a, b) = opts.curriculum, opts.curriculum_steps
    if step <= a or b == a:
        return p0 if step <= a else p1
    return p0 + (p1 - p0) * min(1.0, (step - a) / (b - a))


def _span(rng: np.random.Generator, n: int, scale: tuple[float, float]) -> tuple[int, int]:
    width = min(n, max(1, round(rng.uniform(*scale) * n)))
    start = int(rng.integers(0, n - width + 1))
    return start, start + width


class CurriculumMasker:
    """A-JEPA's masks for one sample at a time (module docstring). `uses_step`: the engine's
    loader passes each batch's position in the stream as `step`."""

    uses_step = True

    def __init__(self, opts: AJepaMethod, max_tries: int = 100) -> None:
        self.opts = opts
        self.block = MultiBlockMasker(
            targets=opts.masks, context_scale=opts.context_scale, min_context=opts.min_context
        )
        self.max_tries = max_tries

    def tf_mask(
        self, rng: np.random.Generator, coords: np.ndarray
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Time strips and frequency bands as targets, every other token as context."""
        o = self.opts
        rows, cols = int(coords[:, 0].max()) + 1, int(coords[:, 1].max()) + 1
        need = max(1, math.ceil(o.min_context * len(coords)))
        for _ in range(self.max_tries):
            targets = []
            for _ in range(o.time_strips):
                lo, hi = _span(rng, cols, o.strip_scale)
                targets.append((coords[:, 1] >= lo) & (coords[:, 1] < hi))
            for _ in range(o.freq_bands):
                lo, hi = _span(rng, rows, o.band_scale)
                targets.append((coords[:, 0] >= lo) & (coords[:, 0] < hi))
            context = ~np.logical_or.reduce(targets)
            if context.sum() >= need:
                return np.flatnonzero(context), [np.flatnonzero(t) for t in targets]
        raise ValueError(
            f"could not draw a time-frequency mask leaving {need} context tokens of "
            f"{len(coords)} in {self.max_tries} tries; lower modality.min_context or the "
            "strips' and bands' scale"
        )

    def __call__(
        self, rng: np.random.Generator, coords: Any, step: int = 0
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        coords = np.asarray(coords)
        if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) == 0:
            raise ValueError(f"coords must be [N, 2] with N > 0, got shape {coords.shape}")
        if rng.random() < tf_probability(self.opts, step):
            return self.tf_mask(rng, coords)
        return self.block(rng, coords)
