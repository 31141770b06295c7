"""Generic model pieces for records that hold one 2-D grid (rows x time), e.g. fMRI's ROI x time.

- `grid_patches`: cut a [R, T] grid into 1 x `patch_len` patches -> tokens [R*T/patch_len,
  patch_len] and integer coords (row, col), row-major.
- `sincos_2d`: fixed 2-D sin-cos positional embedding of (row, col) coords (I-JEPA's, computed
  from the coords, so any grid size works).
- `GridEmbedder`: Linear patch embedding plus `sincos_2d` (the modality `embedder`).
- `MultiBlockMasker`: I-JEPA's multi-block masking over the grid, per sample, variable lengths;
  its target blocks come from a list of `BlockSpec`s (V-JEPA's way: several groups of blocks,
  each with its own count, scale and aspect).
- `GridMethod`: the method options (patch length, mask specs, context block).
- `GridPieces`: a mixin giving a `Modality` tokenize / masker / embedder from the above.

Imports numpy, torch and `modalities.options` only (never `engine` or `pipelines`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from modalities.options import BlockSpec, check_range


def grid_patches(
    grid: np.ndarray,
    patch_len: int,
    center: np.ndarray | None = None,
    scale: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut `grid` [R, T] into 1 x `patch_len` patches.

    Returns tokens float32 [R * P, patch_len] and coords int64 [R * P, 2] = (row, col), row-major,
    with P = T / patch_len. `center` / `scale` ([R]) apply per-row robust scaling first
    ((x - center) / scale, Brain-JEPA's median / IQR). T must be a multiple of `patch_len`:
    silently dropping frames would make the model see less than the data holds.
    """
    grid = np.asarray(grid, dtype=np.float32)
    if grid.ndim != 2:
        raise ValueError(f"grid must be 2-D [rows, time], got shape {grid.shape}")
    rows, t = grid.shape
    if patch_len < 1 or t % patch_len:
        raise ValueError(f"grid length {t} is not a multiple of patch_len {patch_len}")
    if center is not None:
        grid = grid - np.asarray(center, dtype=np.float32).reshape(rows, 1)
    if scale is not None:
        s = np.asarray(scale, dtype=np.float32).reshape(rows, 1)
        # A constant ROI has IQR 0; dividing by it would turn a flat signal into inf.
        grid = grid / np.where(s > 0, s, 1.0)
    cols = t // patch_len
    tokens = np.ascontiguousarray(grid.reshape(rows * cols, patch_len))
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    coords = np.stack([r.reshape(-1), c.reshape(-1)], axis=1).astype(np.int64)
    return tokens, coords


def sincos_1d(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """Sin-cos embedding of integer positions `pos` [...] -> [..., dim] (dim even)."""
    if dim % 2:
        raise ValueError(f"sin-cos dimension must be even, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0)
    omega = 1.0 / (10000.0**omega)
    angles = pos.to(torch.float64).unsqueeze(-1) * omega
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1).to(torch.float32)


def sincos_2d(coords: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding of (row, col) `coords` [..., 2] -> [..., dim].

    Half the channels encode the row, half the column (I-JEPA's `get_2d_sincos_pos_embed`).
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos dimension must be a multiple of 4, got {dim}")
    return torch.cat([sincos_1d(coords[..., 0], dim // 2), sincos_1d(coords[..., 1], dim // 2)], -1)


class GridEmbedder(nn.Module):
    """Linear patch embedding plus fixed 2-D sin-cos positions."""

    def __init__(self, patch_dim: int, dim: int) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"embedding width must be a multiple of 4, got {dim}")
        self.patch_dim = patch_dim
        self.dim = dim
        self.proj = nn.Linear(patch_dim, dim)

    def position(self, coords: torch.Tensor) -> torch.Tensor:
        """Positional embedding [B, N, dim] of coords [B, N, 2] (no parameters)."""
        return sincos_2d(coords, self.dim).to(self.proj.weight.dtype)

    def local(self, tokens: torch.Tensor) -> torch.Tensor:
        """The patch embedding alone [..., dim] (no positions)."""
        return self.proj(tokens)

    def forward(self, tokens: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        return self.local(tokens) + self.position(coords)


def _block_shape(
    rng: np.random.Generator,
    rows: int,
    cols: int,
    scale: tuple[float, float],
    aspect: tuple[float, float],
) -> tuple[int, int]:
    """Height and width of a block covering about `scale` of the grid with aspect h/w."""
    area = rng.uniform(*scale) * rows * cols
    # Log-uniform aspect, so 0.75 and 1/0.75 are equally likely (I-JEPA samples it uniformly;
    # for the default 0.75-1.5 the difference is small).
    ar = math.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1])))
    h = max(1, round(math.sqrt(area * ar)))
    w = max(1, round(math.sqrt(area / ar)))
    # On elongated grids (fMRI: 450 ROIs x 10 time patches) a square-ish block does not fit;
    # clip the short side and give the area to the long side so the block keeps its scale.
    if w > cols:
        w = cols
        h = max(1, round(area / w))
    if h > rows:
        h = rows
        w = min(cols, max(1, round(area / h)))
    return h, w


@dataclass(frozen=True)
class GridMethod:
    """Method options of a grid modality (the run config's `modality:` section).

    patch_len: time steps per 1 x patch_len token. masks: the target block groups (I-JEPA:
    one group of 4 blocks of 15-20%). context_scale: the context block's share of the grid
    (aspect 1), minus the targets. min_context: a draw is redone while the context keeps fewer
    than this share of the tokens.
    """

    patch_len: int = 16
    masks: tuple[BlockSpec, ...] = field(default_factory=lambda: (BlockSpec(),))
    context_scale: tuple[float, float] = (0.85, 1.0)
    min_context: float = 0.1

    def __post_init__(self) -> None:
        if self.patch_len < 1:
            raise ValueError(f"patch_len: must be >= 1, got {self.patch_len}")
        if not self.masks:
            raise ValueError("masks: expected at least one block spec, got []")
        check_range("context_scale", self.context_scale)
        if not 0 <= self.min_context < 1:
            raise ValueError(f"min_context: must be in [0, 1), got {self.min_context}")


class MultiBlockMasker:
    """I-JEPA multi-block masking over a grid of tokens, one sample at a time.

    `num_targets` target blocks (scale 0.15-0.2, aspect 0.75-1.5), or the blocks of each
    `BlockSpec` in `targets` in order, then a context block (scale 0.85-1.0, aspect 1) minus the
    union of the targets. Every sample draws its own blocks, so lengths vary per sample; nothing
    is truncated. Draws again (up to `max_tries`) while the context keeps fewer than
    `min_context` of the tokens (fraction, at least one token).
    """

    def __init__(
        self,
        num_targets: int = 4,
        target_scale: tuple[float, float] = (0.15, 0.2),
        target_aspect: tuple[float, float] = (0.75, 1.5),
        context_scale: tuple[float, float] = (0.85, 1.0),
        context_aspect: tuple[float, float] = (1.0, 1.0),
        min_context: float = 0.1,
        max_tries: int = 100,
        targets: Sequence[BlockSpec] | None = None,
    ) -> None:
        if targets is None:
            if num_targets < 1:
                raise ValueError(f"num_targets must be >= 1, got {num_targets}")
            targets = [BlockSpec(num_targets, tuple(target_scale), tuple(target_aspect))]
        self.specs = tuple(targets)
        num_targets = sum(spec.num for spec in self.specs)
        if num_targets < 1:
            raise ValueError(f"num_targets must be >= 1, got {num_targets}")
        check_range("context_scale", tuple(context_scale))
        check_range("context_aspect", tuple(context_aspect), hi=math.inf)
        if not 0 <= min_context < 1:
            raise ValueError(f"min_context must be in [0, 1), got {min_context}")
        self.num_targets = num_targets
        self.context_scale = tuple(context_scale)
        self.context_aspect = tuple(context_aspect)
        self.min_context = min_context
        self.max_tries = max_tries

    def _block(self, rng: np.random.Generator, rows: int, cols: int, scale, aspect) -> np.ndarray:
        h, w = _block_shape(rng, rows, cols, scale, aspect)
        top = int(rng.integers(0, rows - h + 1))
        left = int(rng.integers(0, cols - w + 1))
        cell = np.zeros((rows, cols), dtype=bool)
        cell[top : top + h, left : left + w] = True
        return cell

    def __call__(
        self, rng: np.random.Generator, coords: np.ndarray
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Context and target token indices (sorted int64) for one sample with `coords` [N, 2]."""
        coords = np.asarray(coords)
        if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) == 0:
            raise ValueError(f"coords must be [N, 2] with N > 0, got shape {coords.shape}")
        rows, cols = int(coords[:, 0].max()) + 1, int(coords[:, 1].max()) + 1
        # cell -> token index; -1 where the grid has no token (a ragged grid)
        lookup = np.full((rows, cols), -1, dtype=np.int64)
        lookup[coords[:, 0], coords[:, 1]] = np.arange(len(coords))
        need = max(1, math.ceil(self.min_context * len(coords)))
        for _ in range(self.max_tries):
            targets = [
                self._block(rng, rows, cols, spec.scale, spec.aspect)
                for spec in self.specs
                for _ in range(spec.num)
            ]
            context = self._block(rng, rows, cols, self.context_scale, self.context_aspect)
            context &= ~np.logical_or.reduce(targets)
            ctx_idx = lookup[context]
            ctx_idx = np.sort(ctx_idx[ctx_idx >= 0])
            tgt_idx = [np.sort(t[t >= 0]) for t in (lookup[m] for m in targets)]
            if len(ctx_idx) >= need and all(len(t) > 0 for t in tgt_idx):
                return ctx_idx, tgt_idx
        raise ValueError(
            f"could not draw a mask leaving {need} context tokens of {len(coords)} in "
            f"{self.max_tries} tries; lower modality.min_context or the masks' scale"
        )


class GridPieces:
    """Mixin: `tokenize` / `masker` / `embedder` for a modality whose records hold one grid.

    Set `grid_column` (the record's [R, T] tensor column) and optionally the stats keys of
    per-row robust scaling. Method options: `GridMethod` (patch length, mask specs).
    """

    grid_column: ClassVar[str]
    row_center_stat: ClassVar[str | None] = None
    row_scale_stat: ClassVar[str | None] = None
    method_type: ClassVar[type] = GridMethod

    def tokenize(
        self, record: dict[str, Any], stats: dict[str, Any], opts: GridMethod
    ) -> dict[str, Any]:
        center = stats.get(self.row_center_stat) if self.row_center_stat else None
        scale = stats.get(self.row_scale_stat) if self.row_scale_stat else None
        tokens, coords = grid_patches(record[self.grid_column], opts.patch_len, center, scale)
        return {"tokens": tokens, "coords": coords}

    def masker(self, opts: GridMethod) -> MultiBlockMasker:
        return MultiBlockMasker(
            targets=opts.masks, context_scale=opts.context_scale, min_context=opts.min_context
        )

    def embedder(
        self, opts: GridMethod, dim: int, stats: dict[str, Any] | None = None
    ) -> GridEmbedder:
        return GridEmbedder(opts.patch_len, dim)

    def legacy_options(self, legacy: Mapping[str, Any]) -> dict[str, Any]:
        """`model.patch_len` and `mask.*` of a run saved before modality options, as they
        were read: one group of mask.num_targets blocks."""
        out: dict[str, Any] = {"patch_len": legacy.get("model.patch_len", 16)}
        out["masks"] = [
            {
                "num": legacy.get("mask.num_targets", 4),
                "scale": legacy.get("mask.target_scale", [0.15, 0.2]),
                "aspect": legacy.get("mask.target_aspect", [0.75, 1.5]),
            }
        ]
        out["context_scale"] = legacy.get("mask.context_scale", [0.85, 1.0])
        out["min_context"] = legacy.get("mask.min_context", 0.1)
        return out
