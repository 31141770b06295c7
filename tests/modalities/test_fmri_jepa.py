"""Tests of modalities/fmri/jepa.py (Brain-JEPA): the spatiotemporal masker's invariants over 1000
draws on the paper's 450 x 10 grid, robust-scaled tokens, the gradient positional embedding, the
`modality.*` options through the engine config, and one JEPA step on the fMRI pieces."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from engine.batch import Sample, pack
from engine.config import ConfigError, config_from_dict, load_config, save_config
from engine.data import build_embedder, method_options
from engine.model import JEPA
from modalities.fmri import MODALITY
from modalities.fmri.jepa import (
    BrainJepaConfig,
    BrainJepaEmbedder,
    SpatiotemporalMasker,
    tokenize_record,
)
from modalities.grid import sincos_1d

R, P = 450, 10  # Brain-JEPA: 450 ROIs x 160 frames -> 10 time patches of 16 frames


def grid_coords(rois: int = R, patches: int = P, skip=()) -> np.ndarray:
    r, t = np.meshgrid(np.arange(rois), np.arange(patches), indexing="ij")
    coords = np.stack([r.reshape(-1), t.reshape(-1)], axis=1).astype(np.int64)
    return coords[~np.isin(coords[:, 0], list(skip))]


def stats_for(rois: int, k: int = 3, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    g = rng.uniform(-1, 1, (rois, k))
    return {
        "roi_median": rng.normal(0, 1, rois).tolist(),
        "roi_iqr": rng.uniform(0.5, 2, rois).tolist(),
        "gradients": (g / np.abs(g).max(axis=0)).tolist(),
    }


# --------------------------------------------------------------------------------------------
# masker


def test_masker_invariants_over_1000_draws():
    opts = BrainJepaConfig()
    masker = SpatiotemporalMasker(opts)
    coords = grid_coords()
    roi, time = coords[:, 0], coords[:, 1]
    need = math.ceil(opts.min_context * len(coords))
    seen_edges, seen_alpha_width = set(), set()
    for seed in range(1000):
        m = masker.draw(np.random.default_rng(seed), coords)
        ctx = set(m.context.tolist())
        for name in ("cross_roi", "cross_time", "double_cross"):
            t = getattr(m, name)
            assert np.all(np.diff(t) > 0), name  # sorted, unique
            assert not ctx & set(t.tolist()), f"seed {seed}: context overlaps {name}"
        assert len(m.context) >= need

        # observation block: 84-100% of the ROIs and of the time patches
        t0, t1 = m.obs_span
        assert int(0.84 * R) <= len(m.obs_rois) <= R and int(0.84 * P) <= t1 - t0 <= P
        assert 0 <= t0 < t1 <= P

        # Cross-ROI: 45-60% of the ROIs x 2-5 contiguous patches inside the observation span
        a_rois, a_time = np.unique(roi[m.cross_roi]), np.unique(time[m.cross_roi])
        assert int(0.45 * R) <= len(a_rois) <= int(0.6 * R)
        assert 2 <= len(a_time) <= 5 and np.all(np.diff(a_time) == 1)
        assert t0 <= a_time[0] and a_time[-1] < t1
        assert len(m.cross_roi) == len(a_rois) * len(a_time)  # a full block
        seen_alpha_width.add(len(a_time))

        # context: observed ROIs minus the Cross-ROI ones, inside the span, off the edges
        c_rois = np.unique(roi[m.context])
        assert set(c_rois) <= set(m.obs_rois) and not set(c_rois) & set(a_rois)
        assert m.early <= 3 and m.late <= 3
        lo, hi = max(t0, m.early), min(t1, P - m.late)
        assert np.all((time[m.context] >= lo) & (time[m.context] < hi))
        assert len(m.context) == len(c_rois) * (hi - lo)  # every context ROI at every kept patch
        seen_edges.add((m.early, m.late))

        # Cross-Time (same ROIs as the context) / Double-Cross (other ROIs): only at the early or
        # late edge patches, i.e. before or after the context in time, 15-30% of the pool per side
        edge = (time < m.early) | (time >= P - m.late)
        for name, pool, same in (
            ("cross_time", c_rois, True),
            ("double_cross", np.setdiff1d(np.unique(roi), c_rois), False),
        ):
            t = getattr(m, name)
            assert edge[t].all(), f"seed {seed}: {name} outside the edge patches"
            assert set(roi[t]) <= set(c_rois) if same else not set(roi[t]) & set(c_rois)
            for side, n in (("early", m.early), ("late", m.late)):
                if n == 0:
                    continue
                at = time[t] < m.early if side == "early" else time[t] >= P - m.late
                k = len(np.unique(roi[t][at]))
                assert int(0.15 * len(pool)) <= k <= int(0.3 * len(pool)), (seed, name, side)
                assert at.sum() == k * n  # each picked ROI at every edge patch of that side
    # the draws cover the paper's ranges (a sampler stuck at one size would pass the bounds)
    assert seen_alpha_width == {2, 3, 4, 5}
    assert seen_edges == {(e, w) for e in range(4) for w in range(4)}


def test_masker_is_deterministic_and_returns_non_empty_blocks():
    masker = SpatiotemporalMasker()
    coords = grid_coords()
    a = masker(np.random.default_rng(3), coords)
    b = masker(np.random.default_rng(3), coords)
    c = masker(np.random.default_rng(4), coords)
    np.testing.assert_array_equal(a[0], b[0])
    assert len(a[1]) == len(b[1]) and all(
        np.array_equal(x, y) for x, y in zip(a[1], b[1], strict=True)
    )
    assert not np.array_equal(a[0], c[0])
    for seed in range(50):
        m = masker.draw(np.random.default_rng(seed), coords)
        blocks = masker(np.random.default_rng(seed), coords)[1]
        assert all(len(t) for t in blocks)
        assert len(blocks) == 1 + (len(m.cross_time) > 0) + (len(m.double_cross) > 0)


def test_masker_skips_rois_without_tokens_and_handles_short_grids():
    missing = set(range(0, 40, 3))
    coords = grid_coords(40, 4, skip=missing)
    masker = SpatiotemporalMasker(BrainJepaConfig(cross_roi_patches=(2, 5)))
    for seed in range(200):
        m = masker.draw(np.random.default_rng(seed), coords)
        for idx in (m.context, m.cross_roi, m.cross_time, m.double_cross):
            assert np.all((idx >= 0) & (idx < len(coords)))
        assert not set(m.obs_rois.tolist()) & missing
        assert m.early + m.late <= 4


def test_masker_gives_up_with_a_clear_message():
    masker = SpatiotemporalMasker(BrainJepaConfig(min_context=0.9, max_tries=5))
    with pytest.raises(
        ValueError, match=r"could not draw a Brain-JEPA mask.*modality\.min_context"
    ):
        masker(np.random.default_rng(0), grid_coords())


# --------------------------------------------------------------------------------------------
# options and the engine config


def test_options_through_the_engine_config_round_trip(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("modality:\n  obs_scale: [0.9, 1.0]\n  max_cross_time_patches: 2\n")
    cfg = load_config(f, ["modality.pos=roi_index", "modality.cross_roi_patches=[3, 4]"])
    assert cfg.modality == {
        "obs_scale": [0.9, 1.0],
        "max_cross_time_patches": 2,
        "pos": "roi_index",
        "cross_roi_patches": [3, 4],
    }
    save_config(cfg, tmp_path / "config.yaml")
    again = config_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert again == cfg
    opts = method_options(MODALITY, again)
    assert opts.pos == "roi_index" and opts.obs_scale == (0.9, 1.0)
    assert opts.cross_roi_patches == (3, 4) and opts.max_cross_time_patches == 2
    assert method_options(MODALITY, load_config()) == BrainJepaConfig()  # empty section


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("modality.obs_scale=[0.9, 0.8]", "modality.obs_scale"),
        ("modality.obs_scale=0.9", "modality.obs_scale"),
        ("modality.pos=anatomy", "modality.pos"),
        ("modality.cross_roi_patches=[2.5, 4]", "modality.cross_roi_patches"),
        ("modality.max_cross_time_patches=-1", "modality.max_cross_time_patches"),
        ("modality.min_context=1.5", "modality.min_context"),
        ("modality.obs_scael=[0.9, 1]", "modality.obs_scael"),
        ("modality.patch_len=0", "modality.patch_len"),
        ("modality.scaling=zscore", "modality.scaling"),
    ],
)
def test_bad_option_names_the_key(override, named):
    cfg = load_config(overrides=[override])  # free-form in the engine, checked by the modality
    with pytest.raises(ConfigError) as e:
        method_options(MODALITY, cfg)
    assert str(e.value).startswith((named + ":", named + "["))  # [i]: the item of a pair


def test_engine_config_refuses_nested_or_odd_modality_values():
    from engine.config import ConfigError

    # one level of nesting is a modality's own section (a run of several modalities); deeper
    # is refused
    assert load_config(overrides=["modality.a.b=1"]).modality == {"a": {"b": 1}}
    with pytest.raises(ConfigError, match=r"^modality\.a\.b\.c:"):
        load_config(overrides=["modality.a.b.c=1"])
    with pytest.raises(ConfigError, match=r"^modality\.pos:"):
        load_config(values={"modality.pos": object()})


# --------------------------------------------------------------------------------------------
# tokens


def test_tokens_are_robust_scaled_patches_that_round_trip():
    rng = np.random.default_rng(0)
    stats = stats_for(6)
    bold = rng.normal(3, 2, (6, 48)).astype(np.float32)
    out = tokenize_record({"bold": bold, "missing_rois": []}, stats, 16)
    tokens, coords = out["tokens"], out["coords"]
    assert tokens.shape == (18, 16) and tokens.dtype == np.float32
    np.testing.assert_array_equal(coords[:4], [[0, 0], [0, 1], [0, 2], [1, 0]])
    median, iqr = np.asarray(stats["roi_median"]), np.asarray(stats["roi_iqr"])
    back = tokens * iqr[coords[:, 0], None] + median[coords[:, 0], None]
    np.testing.assert_allclose(back.reshape(6, 48), bold, rtol=1e-5, atol=1e-5)
    # the scaled values are not the raw ones (the scaling happened)
    assert not np.allclose(tokens.reshape(6, 48), bold)
    # the official form reads the subject-mean statistics, chosen by modality.scaling
    subj = {**stats, "roi_median_subject": [1.0] * 6, "roi_iqr_subject": [4.0] * 6}
    opts = method_options(MODALITY, load_config(overrides=["modality.scaling=subject_mean"]))
    got = MODALITY.tokenize({"bold": bold, "missing_rois": []}, subj, opts)["tokens"]
    np.testing.assert_allclose(got.reshape(6, 48), (bold - 1.0) / 4.0, rtol=1e-6)
    with pytest.raises(ValueError, match="no 'roi_median_subject'.*re-run the fMRI ingest"):
        MODALITY.tokenize({"bold": bold, "missing_rois": []}, stats, opts)


def test_missing_rois_get_no_tokens_and_bad_stats_are_refused():
    stats = stats_for(6)
    bold = np.ones((6, 32), np.float32)
    bold[[1, 4]] = 0
    out = tokenize_record({"bold": bold, "missing_rois": [1, 4]}, stats, 16)
    assert sorted(set(out["coords"][:, 0].tolist())) == [0, 2, 3, 5]
    with pytest.raises(ValueError, match="cover 5 ROIs but the record has 6"):
        tokenize_record({"bold": bold}, stats_for(5), 16)
    with pytest.raises(ValueError, match="no 'roi_iqr'"):
        tokenize_record({"bold": bold}, {"roi_median": [0.0] * 6}, 16)
    with pytest.raises(ValueError, match="not a multiple of patch_len"):
        tokenize_record({"bold": bold[:, :30]}, stats, 16)


# --------------------------------------------------------------------------------------------
# embedder


def _embedder(stats: dict, pos: str = "gradient", dim: int = 16) -> BrainJepaEmbedder:
    torch.manual_seed(0)  # same weights for every call, so only the statistics differ
    return BrainJepaEmbedder(16, dim, np.asarray(stats["gradients"]), pos)


@torch.no_grad()
def test_time_half_is_sincos_and_gradient_half_follows_the_gradients():
    coords = torch.from_numpy(grid_coords(8, 5))[None]
    a = _embedder(stats_for(8, seed=0)).position(coords)[0]
    b = _embedder(stats_for(8, seed=1)).position(coords)[0]
    # time half: fixed sin-cos of the time patch, whatever the statistics
    expect = sincos_1d(coords[0, :, 1], 8)
    torch.testing.assert_close(a[:, :8], expect)
    torch.testing.assert_close(b[:, :8], expect)
    # ROI half: a function of the ROI alone (the same at every time patch), scaled to [-1, 1],
    # and it changes when the gradients change
    roi_half = a[:, 8:].reshape(8, 5, 8)
    torch.testing.assert_close(roi_half, roi_half[:, :1].expand(-1, 5, -1))
    assert float(a[:, 8:].min()) == pytest.approx(-1) and float(a[:, 8:].max()) == pytest.approx(1)
    assert not torch.allclose(a[:, 8:], b[:, 8:])
    # ROIs with different gradients get different positions
    assert torch.cdist(roi_half[:, 0], roi_half[:, 0]).triu(1).max() > 0


@torch.no_grad()
def test_roi_index_ablation_and_forward():
    stats = stats_for(8)
    emb = _embedder(stats, pos="roi_index")
    coords = torch.from_numpy(grid_coords(8, 5))[None]
    pos = emb.position(coords)[0]
    torch.testing.assert_close(pos[:, 8:], sincos_1d(coords[0, :, 0], 8))
    assert "gradients" not in emb.state_dict()
    tokens = torch.randn(1, len(coords[0]), 16)
    torch.testing.assert_close(emb(tokens, coords), emb.proj(tokens) + emb.position(coords))
    # the gradients are a buffer, saved with the weights
    assert "gradients" in _embedder(stats).state_dict()
    with pytest.raises(ValueError, match="multiple of 4"):
        BrainJepaEmbedder(16, 18, None, "roi_index")


def test_embedder_hook_takes_the_dataset_statistics_it_is_given():
    stats = stats_for(8)
    opts = BrainJepaConfig()
    emb = MODALITY.embedder(opts, 16, stats)
    np.testing.assert_allclose(emb.gradients.numpy(), np.asarray(stats["gradients"]), rtol=1e-6)
    with pytest.raises(ValueError, match="no 'gradients'.*modality.pos=roi_index"):
        MODALITY.embedder(opts, 16, {"roi_median": [0.0] * 8})
    # no statistics (a checkpoint older than stored statistics): a clear error, no dataset read
    with pytest.raises(ValueError, match="needs the dataset statistics.*modality.pos=roi_index"):
        MODALITY.embedder(opts, 16)
    # roi_index needs no statistics at all
    MODALITY.embedder(BrainJepaConfig(pos="roi_index"), 16)


def test_one_jepa_step_trains_the_gradient_projection():
    stats = stats_for(12)
    cfg = load_config(
        overrides=["model.embed_dim=16", "model.depth=1", "model.num_heads=2", "model.pred_dim=8"]
        + ["model.pred_depth=1", "model.pred_heads=2"]
    )
    rng = np.random.default_rng(0)
    opts = method_options(MODALITY, cfg)
    masker = MODALITY.masker(opts)
    samples = []
    for i in range(2):
        rec = {"bold": rng.normal(size=(12, 96)).astype(np.float32), "missing_rois": [i]}
        t = MODALITY.tokenize(rec, stats, opts)
        ctx, tgts = masker(np.random.default_rng(i), t["coords"])
        samples.append(Sample(i, t["tokens"], t["coords"], ctx, tgts))
    model = JEPA(build_embedder(MODALITY, cfg, stats), cfg.model)
    pred = model(pack(samples))
    pred.square().mean().backward()
    assert model.encoder.embedder.gradient_proj.weight.grad.abs().sum() > 0
