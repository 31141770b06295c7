from __future__ import annotations

import numpy as np
import pytest
import torch

from modalities.grid import GridEmbedder, MultiBlockMasker, grid_patches, sincos_1d, sincos_2d


def test_grid_patches_layout_and_scaling():
    rows, frames, p = 3, 32, 16
    grid = np.arange(rows * frames, dtype=np.float32).reshape(rows, frames)
    tokens, coords = grid_patches(grid, p)
    assert tokens.shape == (rows * frames // p, p) and coords.shape == (rows * 2, 2)
    for (r, c), tok in zip(coords, tokens, strict=True):
        np.testing.assert_array_equal(tok, grid[r, c * p : (c + 1) * p])
    center = np.array([1.0, 2.0, 3.0])
    scale = np.array([2.0, 0.0, 4.0])  # a zero IQR must not produce inf
    scaled, _ = grid_patches(grid, p, center, scale)
    np.testing.assert_allclose(scaled[0], (grid[0, :16] - 1.0) / 2.0)
    np.testing.assert_allclose(scaled[2], grid[1, :16] - 2.0)
    with pytest.raises(ValueError, match="not a multiple"):
        grid_patches(grid[:, :30], p)


def test_sincos_matches_the_formula_and_separates_positions():
    dim = 8
    pos = torch.tensor([0, 3])
    omega = 1.0 / 10000 ** (np.arange(dim // 2) / (dim / 2))
    expect = np.concatenate([np.sin(3 * omega), np.cos(3 * omega)])
    np.testing.assert_allclose(sincos_1d(pos, dim)[1].numpy(), expect, rtol=1e-6)
    coords = torch.tensor([[r, c] for r in range(5) for c in range(4)])
    emb = sincos_2d(coords, 16)
    assert torch.cdist(emb, emb).add(torch.eye(20)).min() > 1e-3  # all positions distinct
    e = GridEmbedder(4, 16)
    tok = torch.randn(2, 20, 4)
    out = e(tok, coords.expand(2, -1, -1))
    torch.testing.assert_close(out - e.proj(tok), emb.expand(2, -1, -1))


def _coords(rows, cols):
    return np.array([[r, c] for r in range(rows) for c in range(cols)])


def test_masker_invariants():
    rows, cols = 20, 10
    coords = _coords(rows, cols)
    masker = MultiBlockMasker(min_context=0.1)
    lengths = set()
    for seed in range(200):
        ctx, tgts = masker(np.random.default_rng(seed), coords)
        assert len(tgts) == 4
        assert len(ctx) >= 0.1 * len(coords)
        union = np.unique(np.concatenate(tgts))
        assert not np.intersect1d(ctx, union).size, "context overlaps a target"
        for t in tgts:
            assert len(t) and np.all(np.diff(t) > 0) and t.max() < len(coords)
            # a target is a rectangle of the grid covering about 15-20% of it
            r, c = coords[t, 0], coords[t, 1]
            assert len(t) == (r.max() - r.min() + 1) * (c.max() - c.min() + 1)
            assert 0.1 <= len(t) / len(coords) <= 0.26
        lengths.add((len(ctx), *map(len, tgts)))
    assert len(lengths) > 50, "mask sizes should vary per sample, not per batch"
    a = masker(np.random.default_rng(7), coords)
    b = masker(np.random.default_rng(7), coords)
    np.testing.assert_array_equal(a[0], b[0])


def test_masker_on_an_elongated_grid_keeps_the_target_scale():
    coords = _coords(450, 10)  # fMRI: 450 ROIs x 10 time patches
    masker = MultiBlockMasker()
    ctx, tgts = masker(np.random.default_rng(0), coords)
    for t in tgts:
        assert 0.13 <= len(t) / len(coords) <= 0.22


def test_masker_gives_up_with_a_clear_message():
    masker = MultiBlockMasker(num_targets=4, target_scale=(0.9, 0.9), min_context=0.5, max_tries=5)
    with pytest.raises(ValueError, match="min_context"):
        masker(np.random.default_rng(0), _coords(4, 4))
