"""Target normalisation (position-centred vs I-JEPA's layer norm), position groups, the MAE
targets and the training diagnostics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.batch import Sample, pack, pack_tokens, position_groups
from engine.config import ConfigError, load_config
from engine.diagnostics import (
    attention_entropy,
    check,
    constant_share,
    effective_rank,
    group_share,
)
from engine.model import (
    Encoder,
    center_by_position,
    double_center,
    normalize_targets,
    target_features,
    whiten_tokens,
)
from engine.objective import mae_targets
from modalities.grid import GridEmbedder


def test_position_groups_number_equal_coords_across_samples_and_isolate_padding():
    a = np.array([[0, 0], [0, 1], [1, 0]])
    b = np.array([[1, 0], [0, 1]])  # shorter: one padding slot in a [2, 3] layout
    group, n = position_groups([a, b], 3)
    assert n == 4  # three positions + the padding group
    assert group[0] != group[1] != group[2] != group[0]
    assert group[3] == group[2] and group[4] == group[1]  # same coords -> same group
    assert group[5] == n - 1  # padding is its own, last group
    # coords too wide for one int64 key take the row-wise path and agree with it
    wide = [np.array([[0, 10**12], [5, -(10**12)]]), np.array([[0, 10**12]])]
    g2, n2 = position_groups(wide, 2)
    assert n2 == 3 and g2[0] == g2[2] and g2[1] != g2[0] and g2[3] == 2


def test_center_by_position_removes_exactly_what_position_explains():
    torch.manual_seed(0)
    b, n, d = 5, 6, 4
    pos = torch.randn(n, d)
    content = torch.randn(b, n, d)
    group = torch.arange(n).repeat(b)
    only_pos = center_by_position(pos.expand(b, n, d).clone(), group, n)
    assert only_pos.abs().max() < 1e-6  # a target that only says where the token is: zero
    mixed = center_by_position(pos + content, group, n)
    torch.testing.assert_close(mixed, content - content.mean(0, keepdim=True))


def _batch(samples_tokens, coords):
    samples = [
        Sample(
            i, t, coords, np.arange(0, len(coords) // 2), [np.arange(len(coords) // 2, len(coords))]
        )
        for i, t in enumerate(samples_tokens)
    ]
    return pack(samples)


def test_normalize_targets_modes_and_bad_mode():
    rng = np.random.default_rng(0)
    coords = np.stack(np.meshgrid(np.arange(3), np.arange(4), indexing="ij"), -1).reshape(-1, 2)
    batch = _batch([rng.standard_normal((12, 16)).astype(np.float32) for _ in range(4)], coords)
    h = torch.randn(4, 12, 8)
    ln = normalize_targets(h, batch, "layer_norm")
    torch.testing.assert_close(ln, F.layer_norm(h, (8,)))
    pc = normalize_targets(h, batch, "position_centered")
    torch.testing.assert_close(pc, F.layer_norm(h - h.mean(0, keepdim=True), (8,)))
    dc = normalize_targets(h, batch, "double_centered")
    pos_centred = h - h.mean(0, keepdim=True)
    torch.testing.assert_close(
        dc, F.layer_norm(pos_centred - pos_centred.mean(1, keepdim=True), (8,))
    )
    with pytest.raises(ValueError, match="target norm"):
        normalize_targets(h, batch, "batch_norm")


def test_double_centred_targets_zero_a_record_constant_encoder_and_keep_padding():
    """A feature that says only which record a token is in (plus where it sits) leaves nothing
    once double-centred; position-centred targets keep it. Records of unequal length: the
    record mean is over its real tokens, padding rows stay zero."""
    rng = np.random.default_rng(1)
    coords = np.stack(np.meshgrid(np.arange(3), np.arange(4), indexing="ij"), -1).reshape(-1, 2)
    lengths = [12, 9, 12, 7]
    batch = pack_tokens(
        [rng.standard_normal((n, 16)).astype(np.float32) for n in lengths],
        [coords[:n] for n in lengths],
    )
    per_record, per_position = torch.randn(4, 1, 8), torch.randn(1, 12, 8)
    h = per_record + per_position + 1e-4 * torch.randn(4, 12, 8)
    for i, n in enumerate(lengths):
        h[i, n:] = 0
    valid = torch.arange(12)[None, :] < torch.tensor(lengths)[:, None]
    dc = normalize_targets(h, batch, "double_centered")
    pc = normalize_targets(h, batch, "position_centered")
    raw_dc = double_center(h, batch)
    assert raw_dc[valid].abs().max() < 0.02 and pc[valid].abs().mean() > 0.3
    assert torch.all(raw_dc[~valid] == 0)
    assert dc.shape == h.shape


def test_whitened_targets_give_every_direction_the_same_variance_and_keep_padding():
    """A direction 100x stronger than the rest (a record-level trait) no longer dominates once
    whitened: the real tokens' covariance is the identity (up to the eigenvalue floor), and
    padding rows are left alone."""
    torch.manual_seed(0)
    lengths = torch.tensor([30, 25, 30, 20])
    h = torch.randn(4, 30, 6, dtype=torch.float64) * torch.tensor([100.0, 1, 1, 1, 1, 0.5])
    h = h @ torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))[0]  # mix the directions
    valid = torch.arange(30)[None, :] < lengths[:, None]
    h[~valid] = 7.0
    h[valid] -= h[valid].mean(0)
    w = whiten_tokens(h, lengths, eps=0.0)
    x = w[valid]
    torch.testing.assert_close(x.T @ x / (len(x) - 1), torch.eye(6, dtype=torch.float64))
    assert torch.all(w[~valid] == 7.0)
    # the floor: eigenvalues below eps x their mean are not blown up
    flat = torch.zeros(4, 30, 6, dtype=torch.float64)
    flat[..., 0] = torch.randn(4, 30, dtype=torch.float64)
    assert whiten_tokens(flat, lengths)[..., 1:].abs().max() == 0


def test_target_features_position_only_encoder_gives_zero_centred_targets():
    """An encoder whose output ignores content (the positional shortcut) leaves nothing to
    regress once targets are position-centred, while I-JEPA's layer norm keeps full targets."""
    cfg = load_config(None, ["model.embed_dim=16", "model.depth=1", "model.num_heads=2"])
    enc = Encoder(GridEmbedder(16, 16), cfg.model)
    with torch.no_grad():
        enc.embedder.proj.weight.zero_()  # content never reaches the stream
    rng = np.random.default_rng(1)
    coords = np.stack(np.meshgrid(np.arange(2), np.arange(4), indexing="ij"), -1).reshape(-1, 2)
    batch = _batch([rng.standard_normal((8, 16)).astype(np.float32) for _ in range(3)], coords)
    centred = target_features(enc, batch, "position_centered")
    plain = target_features(enc, batch, "layer_norm")
    assert centred.abs().max() < 1e-4
    assert plain.std(0).mean() > 0.1  # the targets vary with position alone


def test_mae_targets_are_the_target_tokens_standardised():
    rng = np.random.default_rng(2)
    coords = np.stack(np.meshgrid(np.arange(2), np.arange(3), indexing="ij"), -1).reshape(-1, 2)
    toks = [rng.standard_normal((6, 16)).astype(np.float32) * 3 + 1 for _ in range(2)]
    batch = _batch(toks, coords)
    t = mae_targets(batch)
    want = np.concatenate([x[3:] for x in toks])
    want = (want - want.mean(1, keepdims=True)) / want.std(1, keepdims=True)
    np.testing.assert_allclose(t.numpy(), want, rtol=1e-4, atol=1e-4)


def test_config_keys_of_the_fixes():
    cfg = load_config(None)
    assert (cfg.loss.target_norm, cfg.model.init, cfg.loss.objective) == (
        "position_centered",
        "fan_in",
        "jepa",
    )
    for bad, key in (
        ("loss.target_norm=batch", "loss.target_norm"),
        ("model.init=xavier", "model.init"),
        ("loss.objective=byol", "loss.objective"),
        ("loss.spread=-0.1", "loss.spread"),
        ("loss.spread=nan", "loss.spread"),
    ):
        with pytest.raises(ConfigError, match=key):
            load_config(None, [bad])


def test_fan_in_init_puts_content_at_the_scale_of_position():
    """The issue's measurement: with I-JEPA's std 0.02 a 16-value patch reaches the stream at a
    variance far below the sin-cos positions; fan-in init brings it to the same order."""
    ratios = {}
    for scheme in ("fan_in", "ijepa"):
        cfg = load_config(None, ["model.embed_dim=64", "model.num_heads=4", f"model.init={scheme}"])
        torch.manual_seed(0)
        emb = Encoder(GridEmbedder(16, 64), cfg.model).embedder
        x = torch.randn(512, 16)
        content = F.linear(x, emb.proj.weight.detach()).var(0).mean()
        coords = torch.stack(torch.meshgrid(torch.arange(32), torch.arange(16), indexing="ij"), -1)
        position = emb.position(coords.reshape(-1, 2)).var(0).mean()
        ratios[scheme] = float(content / position)
    assert ratios["ijepa"] < 0.05 and 0.5 < ratios["fan_in"] < 10


def test_position_share_and_effective_rank():
    torch.manual_seed(0)
    n_pos, reps, d = 20, 8, 6
    group = torch.arange(n_pos).repeat(reps)
    pos = torch.randn(n_pos, d)[group]
    noise = torch.randn(n_pos * reps, d)
    valid = torch.ones(len(group), dtype=torch.bool)
    assert group_share(pos + 0.01 * noise, group, n_pos, valid) > 0.99
    assert group_share(noise, group, n_pos, valid) < 0.05
    half = group_share(pos + noise, group, n_pos, valid)
    assert 0.35 < half < 0.65
    records = torch.arange(reps).repeat_interleave(n_pos)  # the same values grouped otherwise
    assert group_share(pos + 0.01 * noise, records, reps, valid) < 0.05
    assert abs(effective_rank(torch.randn(4000, 8)) - 8) < 0.3
    line = torch.randn(500, 1) * torch.randn(1, 8)
    assert effective_rank(line) < 1.05


def test_attention_entropy_is_one_for_uniform_attention():
    cfg = load_config(None, ["model.embed_dim=16", "model.depth=2", "model.num_heads=2"])
    enc = Encoder(GridEmbedder(16, 16), cfg.model)
    for blk in enc.blocks:
        with torch.no_grad():
            blk.attn.qkv.weight[:32].zero_()  # q = k = 0: every score equal
            blk.attn.qkv.bias.zero_()
    coords = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(5), indexing="ij"), -1)
    ent = attention_entropy(enc, torch.randn(20, 16), coords.reshape(-1, 2))
    assert len(ent) == 2 and all(math.isclose(e, 1.0, abs_tol=1e-5) for e in ent)


def test_check_names_the_number_that_tripped():
    msgs = check({"pos_share": 0.95, "target_rank": 1.2, "target_std": 0.02}, 32, "layer_norm")
    assert any("positional shortcut" in m and "95%" in m and "position_centered" in m for m in msgs)
    assert any("effective rank is 1.20" in m for m in msgs)
    assert any("std is 0.020" in m for m in msgs)
    assert check({"pos_share": 0.4, "target_rank": 20.0, "target_std": 0.9}, 32, "layer_norm") == []
    msgs = check({"target_const": 0.95}, 32, "layer_norm")
    assert len(msgs) == 1 and "constant targets" in msgs[0] and "95%" in msgs[0]
    msgs = check({"rec_share": 0.6}, 32, "position_centered")
    assert len(msgs) == 1 and "record shortcut" in msgs[0] and "60%" in msgs[0]
    assert "double_centered" in msgs[0]
    assert check({"rec_share": 0.6}, 32, "double_centered") == []


def test_constant_share_sees_a_shared_vector():
    torch.manual_seed(0)
    noise = torch.randn(256, 32)
    assert constant_share(noise) < 0.05  # centred: about 1/256 + sampling
    shared = torch.randn(32) * 4 + 0.2 * noise  # one vector plus a little spread
    assert constant_share(shared) > 0.95
    assert constant_share(torch.zeros(0, 32)) == 0.0
