"""Tests of Point-JEPA's and 3D-JEPA's model side (modalities/points/pointjepa.py): the patches,
the sequencer, both kinds of masks over 1000 draws, the options, and one JEPA step through the
engine's model."""

from __future__ import annotations

import numpy as np
import pytest

from engine.batch import Sample, pack
from engine.config import load_config
from engine.data import build_embedder, method_options
from engine.model import JEPA
from modalities.options import OptionError
from modalities.points import MODALITY
from modalities.points.options import PointJepaMethod
from modalities.points.pointjepa import (
    COORD_SCALE,
    PointMasker,
    farthest_points,
    point_patches,
    sequence_order,
)


def _object(seed: int, n: int = 8192) -> np.ndarray:
    """Points on a random ellipsoid surface, in the unit sphere."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    v *= rng.uniform(0.3, 1.0, 3)
    return (v / np.linalg.norm(v, axis=1).max()).astype(np.float32)


def test_patches_hold_each_centres_nearest_points():
    opts = PointJepaMethod()
    pts = _object(0)
    tokens, coords = point_patches(pts, 8192, opts)
    assert tokens.shape == (64, 32 * 3 + 3) and tokens.dtype == np.float32
    assert coords.shape == (64, 4) and coords.dtype == np.int64
    x = pts[:1024]
    centres = tokens[:, -3:]
    np.testing.assert_array_equal(coords[:, :3], np.rint(centres * COORD_SCALE))
    assert coords[:, 3].tolist() == list(range(64))
    for i in (0, 17, 63):
        offsets = tokens[i, :96].reshape(32, 3)
        assert np.abs(offsets[0]).max() == 0  # the centre is its own nearest point
        d = np.linalg.norm(offsets, axis=1)
        assert np.all(np.diff(d) >= -1e-6)  # nearest first
        # exactly the 32 nearest of the 1024 points
        all_d = np.sort(np.linalg.norm(x - centres[i], axis=1))
        np.testing.assert_allclose(d, all_d[:32], atol=1e-5)
    # the centres are a farthest-point subset of the first 1024 points
    fps = x[farthest_points(x, 64)]
    assert {tuple(c) for c in centres.round(6)} == {tuple(c) for c in fps.round(6)}


def test_a_small_cloud_is_read_again_in_order():
    opts = PointJepaMethod(points=256, centres=16, neighbours=8)
    pts = _object(1, 300)
    tokens, _ = point_patches(pts, 100, opts)  # 100 distinct points of 300 rows
    assert tokens.shape == (16, 27)
    assert np.isin(tokens[:, -3:].round(6), pts[:100].round(6)).all()


def test_sequencer_walks_to_near_centres_over_1000_objects():
    """Over 1000 draws the mean step between consecutive centres in sequence order is far
    below a random order's, and the walk starts at the smallest coordinate sum."""
    rng = np.random.default_rng(0)
    seq_steps, rand_steps = [], []
    for _ in range(1000):
        c = rng.uniform(-1, 1, (64, 3))
        order = sequence_order(c)
        assert sorted(order.tolist()) == list(range(64))
        assert order[0] == np.argmin(c.sum(axis=1))
        seq_steps.append(np.linalg.norm(np.diff(c[order], axis=0), axis=1).mean())
        perm = rng.permutation(64)
        rand_steps.append(np.linalg.norm(np.diff(c[perm], axis=0), axis=1).mean())
    assert np.mean(seq_steps) < 0.5 * np.mean(rand_steps)


@pytest.mark.parametrize("masking", ["sequence", "multiblock"])
def test_mask_invariants_over_1000_draws(masking):
    opts = PointJepaMethod(masking=masking)
    masker = MODALITY.masker(opts)
    assert isinstance(masker, PointMasker)
    _, coords = point_patches(_object(2), 8192, opts)
    rng = np.random.default_rng(0)
    spreads, ctx_sizes = [], []
    xyz = coords[:, :3] / COORD_SCALE
    for _ in range(1000):
        ctx, targets = masker(rng, coords)
        assert len(targets) == 4 and len(ctx) >= 1
        for t in targets:
            assert np.all(np.diff(t) > 0)
            assert round(64 * 0.15) <= len(t) <= round(64 * 0.2)  # 15-20% of the tokens
            if masking == "sequence":  # a contiguous run of the sequence
                ranks = np.sort(coords[t, 3])
                assert ranks[-1] - ranks[0] == len(t) - 1
            spreads.append(np.linalg.norm(xyz[t] - xyz[t].mean(axis=0), axis=1).mean())
        taken = np.unique(np.concatenate(targets))
        assert not np.isin(ctx, taken).any()  # context and targets disjoint
        rest = 64 - len(taken)
        assert round(rest * 0.4) <= len(ctx) <= round(rest * 0.75)
        if masking == "sequence":  # a contiguous run of the tokens left
            left = np.setdiff1d(np.arange(64), taken)
            pos = np.searchsorted(left, np.sort(coords[ctx, 3]))
            assert pos[-1] - pos[0] == len(ctx) - 1
        ctx_sizes.append(len(ctx))
    # both kinds of block are compact in space: far below a random set's spread
    random_spread = np.mean(
        [
            np.linalg.norm(xyz[s] - xyz[s].mean(axis=0), axis=1).mean()
            for s in (rng.choice(64, 11, replace=False) for _ in range(200))
        ]
    )
    assert np.mean(spreads) < 0.75 * random_spread
    assert np.std(ctx_sizes) > 0  # the context's size varies


def test_masks_that_leave_no_context_are_refused():
    opts = PointJepaMethod(target_blocks=1, target_scale=(1.0, 1.0))
    _, coords = point_patches(_object(3), 8192, opts)
    with pytest.raises(ValueError, match="left no token for the context"):
        PointMasker(opts)(np.random.default_rng(0), coords)


@pytest.mark.parametrize(
    "section, reason",
    [
        ({"masking": "spiral"}, "modality.masking: expected one of"),
        ({"centres": 1}, "modality.centres"),
        ({"neighbours": 0}, "modality.neighbours"),
        ({"target_scale": [0.3, 0.2]}, "modality.target_scale"),
        ({"target_blocks": 0}, "modality.target_blocks"),
    ],
)
def test_method_options_are_checked(section, reason):
    with pytest.raises(OptionError, match=reason):
        MODALITY.method_options(section)


@pytest.mark.parametrize("masking", ["sequence", "multiblock"])
def test_one_jepa_step_with_the_engine_model(masking):
    """Tokenize, mask, collate and run the engine's JEPA; gradients reach the PointNet."""
    cfg = load_config(
        values={"model.embed_dim": 32, "model.num_heads": 2, "model.depth": 1,
                "model.pred_dim": 16, "model.pred_heads": 2, "model.pred_depth": 1,
                "modality.masking": masking, "modality.points": 256,
                "modality.centres": 32, "modality.neighbours": 16}
    )  # fmt: skip
    opts = method_options(MODALITY, cfg)
    masker = MODALITY.masker(opts)
    samples = []
    for i in range(2):
        rec = {"points": _object(10 + i, 1024), "valid_points": 1024 - 300 * i}
        t = MODALITY.tokenize(rec, {}, opts)
        ctx, tgts = masker(np.random.default_rng(i), t["coords"])
        samples.append(Sample(i, t["tokens"], t["coords"], ctx, tgts))
    batch = pack(samples, MODALITY.position_columns)
    model = JEPA(build_embedder(MODALITY, cfg), cfg.model)
    pred = model(batch)
    assert pred.shape == (len(batch.tgt_idx), 32)
    pred.square().mean().backward()
    assert model.encoder.embedder.first[0].weight.grad is not None
    assert model.encoder.embedder.pos[0].weight.grad is not None


def test_points_picture(tmp_path):
    """Demo objects read by the points reader, drawn with both kinds of mask."""
    import os

    from modalities.base import ReadContext
    from modalities.points import PointsOptions
    from modalities.points.demo import generate_cohort
    from modalities.show import main
    from pipelines.shards import write_dataset
    from pipelines.worker import full_schema

    paths = generate_cohort(tmp_path / "raw", 2, seed=4)
    opts = PointsOptions(num_points=1024)
    records = []
    for i, path in enumerate(paths):
        ctx = ReadContext(path, path, os.path.getsize(path), 1 << 34)
        records += [{"id": f"r{i}", "source": path, **r} for r in MODALITY.read(ctx, opts)]
    root = tmp_path / "points"
    write_dataset(root, "points", full_schema(MODALITY.schema(opts)), records, stats={})
    out = tmp_path / "points.png"
    assert main(["points", "--data", str(root), "--index", "1", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


@pytest.mark.parametrize("name", ["points_control", "points_pointjepa"])
def test_shipped_configs_load(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "engine" / "configs" / f"{name}.yaml"
    cfg = load_config(str(path))
    opts = method_options(MODALITY, cfg)
    assert opts.masking == "sequence" and cfg.loss.beta == 2.0
    if name == "points_pointjepa":  # the paper's numbers
        assert (opts.points, opts.centres, opts.neighbours) == (1024, 64, 32)
        assert (cfg.ema.start, cfg.ema.end) == (0.9995, 0.99999)


def test_grid_heads_refuse_point_tokens_with_a_reason():
    """engine.finetune's local and contextual heads place tokens on a rows x times grid from
    coords columns 0 and 1; point tokens' coords are centre coordinates (negative, wide): a
    clear error naming the pooled head, not a 400 GB allocation."""
    from engine.finetune import TokenGrids

    opts = PointJepaMethod()
    tokens, coords = point_patches(_object(4), 8192, opts)
    grids = TokenGrids([tokens], [coords], 1 + int(coords[:, 0].max()), 1 + int(coords[:, 1].max()))
    with pytest.raises(ValueError, match="use --head pooled"):
        grids.where(np.array([0]))
