"""Point-JEPA's tokenizer, sequencer and masks, 3D-JEPA's multi-block masks, and the point patch
embedder (imports torch; loaded only by the model-side hooks).

Tokens (Point-JEPA, Point-MAE): the record's first `points` points (a record's order makes every
prefix cover the object: modalities/points/reader.py), `centres` centres by farthest-point
sampling from the first point (Open3D's), each centre's `neighbours` nearest points (Open3D's
KD-tree: 0.31 ms a sample at 1024 x 64 x 32 against 0.70 for brute force in numpy and 0.62 in
torch, the same neighbours: benchmarks/points_knn.py, docs/benchmarks.md), as coordinates
relative to their centre, nearest first. A token is those [neighbours x 3] offsets flattened,
then the centre's xyz (patch_dim = 3 * neighbours + 3).

The sequencer (Point-JEPA): the centres ordered by a nearest-unvisited walk that starts at the
centre with the smallest coordinate sum, so neighbours in the sequence are neighbours in space.
Tokens come out in that order; coords are (x, y, z, rank), xyz the centre in units of 1e-4 of the
unit sphere (int64, as the engine's coords are), rank the token's place in the sequence (the
engine groups positions by it: `position_columns`).

Masks:
- "sequence" (Point-JEPA): `target_blocks` target blocks, each a contiguous run of
  `target_scale` of the tokens in sequence order (they may overlap one another), and the context
  a contiguous run, `context_scale` of the tokens left, of the tokens left in sequence order.
- "multiblock" (3D-JEPA): the same counts as spatial neighbourhoods: each target block the
  nearest centres (`target_scale` of them) of a random centre, the context the nearest
  `context_scale` of the tokens left around another random centre.

The embedder (`PointEmbedder`): a mini-PointNet over each patch's offsets (a shared MLP 3-128-256,
max-pooled, the pooled feature beside each point's, a shared MLP 512-512-dim, max-pooled: Point-
MAE's; `pointnet` sets the widths) plus an MLP of the centre's xyz (3-128-dim), Point-JEPA's
learned position embedding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from modalities.points.options import PointJepaMethod

COORD_SCALE = 10000  # centre xyz in coords: units of 1e-4


def farthest_points(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of `k` points of `x` [n, 3] by farthest-point sampling from point 0, in the
    order picked (numpy; the reference `farthest_centres` is tested against)."""
    n = len(x)
    out = np.zeros(k, dtype=np.int64)
    dist = np.full(n, np.inf)
    last = 0
    for i in range(1, k):
        d = x - x[last]
        dist = np.minimum(dist, np.einsum("ij,ij->i", d, d))
        last = int(np.argmax(dist))
        out[i] = last
    return out


def sequence_order(centres: np.ndarray) -> np.ndarray:
    """Point-JEPA's sequencer: a nearest-unvisited walk from the centre with the smallest
    coordinate sum; the order of `centres` [m, 3] it visits them in."""
    m = len(centres)
    d = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    visited = np.zeros(m, dtype=bool)
    order = np.empty(m, dtype=np.int64)
    cur = int(np.argmin(centres.sum(axis=1)))
    for i in range(m):
        order[i] = cur
        visited[cur] = True
        if i + 1 < m:
            row = np.where(visited, np.inf, d[cur])
            cur = int(np.argmin(row))
    return order


def farthest_centres(x: np.ndarray, k: int) -> np.ndarray:
    """[k, 3] float32: the points farthest-point sampling from point 0 picks (Open3D's: the set
    `farthest_points` gives, in index order, 16x faster at 1024 -> 64)."""
    import open3d as o3d

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(x, dtype=np.float64)))
    return np.asarray(cloud.farthest_point_down_sample(k).points, dtype=np.float32)


def nearest(x: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """[len(queries), k] indices of each query's k nearest points of `x`, nearest first
    (Open3D's KD-tree)."""
    import open3d as o3d

    pts = o3d.utility.Vector3dVector(np.asarray(x, dtype=np.float64))
    tree = o3d.geometry.KDTreeFlann(o3d.geometry.PointCloud(pts))
    q = np.asarray(queries, dtype=np.float64)
    return np.stack([np.asarray(tree.search_knn_vector_3d(p, k)[1]) for p in q])


def point_patches(
    points: np.ndarray, valid: int, opts: PointJepaMethod
) -> tuple[np.ndarray, np.ndarray]:
    """(tokens float32 [centres, 3 * neighbours + 3], coords int64 [centres, 4]) of a record's
    points (module docstring)."""
    take = min(opts.points, int(valid))
    x = np.asarray(points[:take], dtype=np.float32)
    if take < opts.points:  # a small cloud: its points again, in order, as the record does
        x = x[np.arange(opts.points) % take]
    centres = farthest_centres(x, opts.centres)
    centres = centres[sequence_order(centres)]
    nn_idx = nearest(x, centres, opts.neighbours)
    offsets = x[nn_idx] - centres[:, None]
    tokens = np.concatenate([offsets.reshape(len(centres), -1), centres], axis=1)
    coords = np.zeros((len(centres), 4), dtype=np.int64)
    coords[:, :3] = np.rint(centres * COORD_SCALE)
    coords[:, 3] = np.arange(len(centres))
    return tokens.astype(np.float32), coords


def _run(rng: np.random.Generator, n: int, scale: tuple[float, float]) -> tuple[int, int]:
    """(start, length) of a contiguous run of `scale` of n items (at least 1)."""
    length = max(1, min(n, int(round(n * rng.uniform(*scale)))))
    return int(rng.integers(0, n - length + 1)), length


class PointMasker:
    """Point-JEPA's sequence blocks or 3D-JEPA's spatial blocks (module docstring)."""

    def __init__(self, opts: PointJepaMethod) -> None:
        self.opts = opts

    def __call__(self, rng: np.random.Generator, coords: Any) -> tuple[np.ndarray, list]:
        for _ in range(100):
            drawn = self._draw(rng, np.asarray(coords))
            if drawn is not None:
                return drawn
        raise ValueError(
            f"modality.target_blocks / target_scale: {self.opts.target_blocks} blocks of "
            f"{list(self.opts.target_scale)} left no token for the context in 100 draws"
        )

    def _draw(self, rng: np.random.Generator, c: np.ndarray) -> tuple[np.ndarray, list] | None:
        n = len(c)
        order = np.argsort(c[:, 3], kind="stable")  # token indices in sequence order
        o = self.opts
        if o.masking == "sequence":
            targets = []
            for _ in range(o.target_blocks):
                start, length = _run(rng, n, o.target_scale)
                targets.append(np.sort(order[start : start + length]))
            rest = order[~np.isin(order, np.concatenate(targets))]
            if len(rest) == 0:
                return None
            start, length = _run(rng, len(rest), o.context_scale)
            return np.sort(rest[start : start + length]), targets
        xyz = c[:, :3].astype(np.float64)
        d = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)
        targets = []
        for _ in range(o.target_blocks):
            length = max(1, min(n, int(round(n * rng.uniform(*o.target_scale)))))
            seed = int(rng.integers(n))
            targets.append(np.sort(np.argsort(d[seed], kind="stable")[:length]))
        taken = np.zeros(n, dtype=bool)
        taken[np.concatenate(targets)] = True
        rest = np.flatnonzero(~taken)
        if len(rest) == 0:
            return None
        length = max(1, min(len(rest), int(round(len(rest) * rng.uniform(*o.context_scale)))))
        seed = int(rng.choice(rest))
        near = rest[np.argsort(d[seed, rest], kind="stable")[:length]]
        return np.sort(near), targets


class PointEmbedder(nn.Module):
    """Mini-PointNet patch embedding plus an MLP of the centre (module docstring)."""

    def __init__(
        self, neighbours: int, dim: int, widths: tuple[int, int, int] = (128, 256, 512)
    ) -> None:
        super().__init__()
        self.neighbours = neighbours
        a, b, c = widths
        self.first = nn.Sequential(nn.Linear(3, a), nn.LayerNorm(a), nn.GELU(), nn.Linear(a, b))
        self.second = nn.Sequential(
            nn.Linear(2 * b, c), nn.LayerNorm(c), nn.GELU(), nn.Linear(c, dim)
        )
        self.pos = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, dim))

    def local(self, tokens: torch.Tensor) -> torch.Tensor:
        """The patch embedding alone [..., dim] (no positions)."""
        k = self.neighbours
        pts = tokens[..., : 3 * k].reshape(*tokens.shape[:-1], k, 3)
        f = self.first(pts)  # [..., k, 256]
        g = f.max(dim=-2, keepdim=True).values.expand_as(f)
        return self.second(torch.cat([g, f], dim=-1)).max(dim=-2).values

    def position(self, coords: torch.Tensor) -> torch.Tensor:
        return self.pos(coords[..., :3].to(torch.float32) / COORD_SCALE)

    def forward(self, tokens: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        return self.local(tokens) + self.position(coords)
