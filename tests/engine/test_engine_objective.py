from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY

from engine.config import load_config
from engine.data import JEPALoader, build_embedder, method_options, resolve_modality
from engine.graphs import GraphedTargetFeatures
from engine.model import JEPA, target_features
from engine.objective import collapse_stats, jepa_loss


def _pair(seed=0, n=37, d=12):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


def test_loss_equivalences():
    p, t = _pair()
    l1 = jepa_loss(p, t, "l1")
    l2 = jepa_loss(p, t, "l2")
    torch.testing.assert_close(l1, (p - t).abs().mean())
    torch.testing.assert_close(l2, ((p - t) ** 2).mean())
    # smooth L1 is L1 - beta/2 where |d| > beta, and squared error / (2 beta) where it is below
    torch.testing.assert_close(jepa_loss(p, t, "smooth_l1", beta=1e-6), l1, atol=1e-5, rtol=0)
    torch.testing.assert_close(jepa_loss(p, t, "smooth_l1", beta=100.0), l2 / 200.0)
    for kind in ("l1", "l2", "smooth_l1"):
        assert jepa_loss(t, t, kind) == 0


def test_loss_weighs_every_target_token_equally():
    p, t = _pair(n=30)
    sizes = [3, 11, 16]  # three target blocks of different lengths
    per_block = [jepa_loss(a, b, "l1") for a, b in zip(p.split(sizes), t.split(sizes), strict=True)]
    weighted = sum(lb * n for lb, n in zip(per_block, sizes, strict=True)) / sum(sizes)
    torch.testing.assert_close(jepa_loss(p, t, "l1"), weighted)


def test_collapse_monitor():
    p, t = _pair(d=6)
    s = collapse_stats(p, t)
    torch.testing.assert_close(torch.tensor(s["target_std"]), t.std(0, unbiased=False).mean())
    flat = collapse_stats(torch.ones(10, 6), t)
    assert flat["pred_std"] == 0 and flat["pred_std_min"] == 0


def _select(batch, keep: list[int], blocks_per_sample: int):
    """The same samples packed alone: unpack the kept samples and pack them again."""
    from engine.batch import Sample, pack

    samples = []
    for b in keep:
        n = int(batch.n_tokens[b])
        ctx = batch.ctx_idx[batch.cu_ctx[b] : batch.cu_ctx[b + 1]].numpy()
        # Each predictor sequence is the sample's context then one block's mask tokens.
        seqs = range(b * blocks_per_sample, (b + 1) * blocks_per_sample)
        ends = int(batch.cu_tgt[b]) + torch.cumsum(
            torch.tensor([int(batch.cu_pred[s + 1] - batch.cu_pred[s]) - len(ctx) for s in seqs]), 0
        )
        starts = [int(batch.cu_tgt[b]), *ends[:-1].tolist()]
        tgts = [batch.tgt_idx[lo:hi].numpy() for lo, hi in zip(starts, ends.tolist(), strict=True)]
        samples.append(
            Sample(
                int(batch.index[b]),
                batch.tokens[b, :n].numpy(),
                batch.coords[b, :n].numpy(),
                ctx,
                tgts,
            )
        )
    return pack(samples)


@pytest.mark.parametrize("which", ["pred", "target"])
def test_packed_samples_do_not_see_each_other(grid_data, which):
    """A sample's predictions and targets are the same in a batch of 8 as alone: varlen attention
    keeps sequences apart and nothing is truncated to the batch minimum."""
    cfg = load_config(overrides=[*TINY, "data.num_workers=0"], values={"data.path": str(grid_data)})
    modality = resolve_modality(cfg.data.modality, "grid")
    batch = next(iter(JEPALoader(cfg, modality)))
    torch.manual_seed(0)
    model = JEPA(build_embedder(modality, cfg), cfg.model)
    target = copy.deepcopy(model.encoder)
    run = (
        (lambda b: model(b).detach()) if which == "pred" else (lambda b: target_features(target, b))
    )
    full = run(batch)
    k = sum(spec.num for spec in method_options(modality, cfg).masks)
    for b in (0, 5):
        alone = run(_select(batch, [b], k))
        rows = slice(int(batch.cu_tgt[b]), int(batch.cu_tgt[b + 1]))
        torch.testing.assert_close(full[rows], alone, rtol=1e-5, atol=1e-5)


def test_graphed_target_features_fall_back_to_the_eager_numbers_off_cuda(grid_data):
    """Off CUDA (and when disabled) the graphed target path is exactly `target_features`; on a
    GPU benchmarks/jepa_step.py checks the replayed graph against eager before it times."""
    cfg = load_config(overrides=[*TINY, "data.num_workers=0"], values={"data.path": str(grid_data)})
    assert cfg.train.cuda_graph_target is True  # the default: on where it applies (CUDA)
    modality = resolve_modality(cfg.data.modality, "grid")
    batch = next(iter(JEPALoader(cfg, modality)))
    torch.manual_seed(0)
    target = JEPA(build_embedder(modality, cfg), cfg.model).encoder.requires_grad_(False)
    want = target_features(target, batch)
    for enabled in (True, False):
        graphed = GraphedTargetFeatures(target, enabled=enabled)
        assert torch.equal(graphed(batch), want)
        assert graphed.graphs == {} and graphed.failed is None


def test_context_every_layer_feeds_the_encoded_context_to_each_predictor_layer(grid_data):
    """model.pred_context=every_layer (3D-JEPA's context-aware decoder): every predictor layer's
    context rows are the projected encoder context, not what the previous layer made of them;
    with one layer both modes are the same computation."""
    base = [*TINY, "data.num_workers=0", "model.pred_depth=2"]
    out = {}
    for mode in ("once", "every_layer"):
        cfg = load_config(
            overrides=[*base, f"model.pred_context={mode}"], values={"data.path": str(grid_data)}
        )
        modality = resolve_modality(cfg.data.modality, "grid")
        batch = next(iter(JEPALoader(cfg, modality)))
        torch.manual_seed(0)
        model = JEPA(build_embedder(modality, cfg), cfg.model)
        seen = []
        hooks = [
            blk.register_forward_pre_hook(lambda _m, a, seen=seen: seen.append(a[0].detach()))
            for blk in model.predictor.blocks
        ]
        out[mode] = model(batch).detach()
        for h in hooks:
            h.remove()
        is_ctx = batch.pred_src < len(batch.ctx_idx)
        same = torch.equal(seen[0][is_ctx], seen[1][is_ctx])
        assert same == (mode == "every_layer")
        assert not torch.equal(seen[0][~is_ctx], seen[1][~is_ctx])  # mask tokens evolve
        # one layer: identical predictions
        one = copy.deepcopy(model)
        one.predictor.blocks = one.predictor.blocks[:1]
        out[f"{mode}-1"] = one(batch).detach()
    assert not torch.allclose(out["once"], out["every_layer"])
    torch.testing.assert_close(out["once-1"], out["every_layer-1"])
    with pytest.raises(ValueError, match="model.pred_context"):
        load_config(overrides=[*base, "model.pred_context=always"])


def _context_groups(batch) -> torch.Tensor:
    """Each packed context row's position group, the slow way."""
    n = batch.tokens.shape[1]
    out = []
    for s in range(len(batch.cu_ctx) - 1):
        for row in range(int(batch.cu_ctx[s]), int(batch.cu_ctx[s + 1])):
            out.append(int(batch.pos_group[s * n + int(batch.ctx_idx[row])]))
    return torch.tensor(out)


def test_spread_penalty_is_vicreg_on_position_centred_context_and_skips_padding(grid_data):
    """loss.spread's penalty: VICReg's variance hinge and covariance terms, computed after each
    position's batch mean is taken out (checked against a direct computation); a context that
    only says where its tokens sit counts as collapsed (the hinge's full 1 - sqrt(eps)); padding
    rows past cu_ctx[-1] change nothing; a collapsed encoder gets a gradient."""
    import dataclasses

    from engine.objective import spread_penalty

    cfg = load_config(overrides=[*TINY, "data.num_workers=0"], values={"data.path": str(grid_data)})
    modality = resolve_modality(cfg.data.modality, "grid")
    batch = next(iter(JEPALoader(cfg, modality)))
    groups = _context_groups(batch)
    t, d = len(groups), 6
    assert t == int(batch.cu_ctx[-1]) and len(torch.unique(groups)) < t  # positions repeat
    g = torch.Generator().manual_seed(0)
    ctx = 1.3 * torch.randn(t, d, generator=g, dtype=torch.float64)
    centred = ctx.clone()
    for k in torch.unique(groups):
        centred[groups == k] -= ctx[groups == k].mean(0)
    cov = centred.T @ centred / (t - 1)
    off = cov - torch.diag(torch.diagonal(cov))
    want = torch.relu(1 - torch.sqrt(torch.diagonal(cov) + 1e-4)).mean() + off.pow(2).sum() / d
    got = spread_penalty(ctx.float(), batch)
    torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-6)
    # position alone: centred away, every channel's std is 0
    only_pos = torch.randn(int(groups.max()) + 1, d, generator=g)[groups]
    expect = torch.tensor(1 - 1e-4**0.5)
    torch.testing.assert_close(spread_penalty(only_pos, batch), expect, rtol=1e-4, atol=1e-5)
    # padding rows (as engine.graphs pads a batch) are left out
    junk = 50 * torch.randn(5, d, generator=g)
    padded = dataclasses.replace(
        batch, ctx_idx=torch.cat([batch.ctx_idx, batch.ctx_idx.new_zeros(5)])
    )
    torch.testing.assert_close(spread_penalty(torch.cat([ctx.float(), junk]), padded), got)
    # through the model: the context features forward keeps, and a gradient into the encoder
    torch.manual_seed(0)
    model = JEPA(build_embedder(modality, cfg), cfg.model)
    model(batch)
    assert model.last_context is None  # kept only when asked (loss.spread > 0)
    model.keep_context = True
    model(batch)
    spread_penalty(model.last_context, batch).backward()
    assert model.encoder.blocks[0].fc1.weight.grad.abs().sum() > 0
