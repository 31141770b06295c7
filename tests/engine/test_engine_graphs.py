"""engine.graphs: the size buckets and the padded batch a CUDA graph of the step replays.

The graphs themselves need a GPU (benchmarks/jepa_step.py checks graphed against eager there
before it times); what decides their numbers is the padding, which runs here on CPU: a padded
batch must give the unpadded batch's predictions, loss and gradients.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import TINY

from engine.config import load_config
from engine.data import JEPALoader, build_embedder, resolve_modality
from engine.graphs import GraphedJEPA, _pad_bounds, bucket_size, pad_batch, padded_sizes
from engine.model import JEPA, target_features
from engine.objective import jepa_loss


def test_bucket_ladder():
    ratio = 1.04
    last = 0
    for n in range(1, 70_000, 97):
        size, prev = bucket_size(n, ratio)
        assert prev < n <= size and size % 64 == 0
        assert size >= last  # monotone
        last = size
        # At most one quantum or 4% of padding, whichever is larger.
        assert size - n < max(64, 0.04 * size + 64)
        assert bucket_size(prev + 1, ratio)[0] == size  # every n in (prev, size] pads to size
    with pytest.raises(ValueError, match="ratio"):
        bucket_size(10, 1.0)


def test_padding_sequences_fit_their_bound_at_every_count():
    # At both ends of a bucket (previous + 1: the most padding; size: none) every padding
    # sequence fits the attention bound, and the offsets end at the padded size.
    for n in [1, 63, 64, 65, 1000, 5751, 31768, 63515]:
        size, prev = bucket_size(n, 1.04)
        for real in (prev + 1, size):
            for max_len in (1, 64, 150, 196):
                batch = SimpleNamespace(
                    ctx_idx=torch.zeros(real, dtype=torch.int64),
                    tgt_idx=torch.zeros(7, dtype=torch.int64),
                    pred_src=torch.zeros(real, dtype=torch.int64),
                    max_ctx=max_len,
                    max_pred=max_len,
                )
                sizes = padded_sizes(batch, 1.04)
                assert sizes["ctx"] == size and sizes["max_ctx"] % 64 == 0
                bounds = _pad_bounds(real, size, sizes["ctx_seqs"], torch.device("cpu"))
                lengths = torch.diff(torch.cat([torch.tensor([real]), bounds.long()]))
                assert int(bounds[-1]) == size and int(lengths.min()) >= 0
                assert int(lengths.max()) <= sizes["max_ctx"], (n, real, max_len, sizes)


@pytest.fixture(scope="module")
def setup(grid_data):
    cfg = load_config(overrides=[*TINY, "data.num_workers=0"], values={"data.path": str(grid_data)})
    modality = resolve_modality(cfg.data.modality, "grid")
    batch = next(iter(JEPALoader(cfg, modality)))
    torch.manual_seed(0)
    model = JEPA(build_embedder(modality, cfg), cfg.model)
    return model, batch


def _loss_and_grads(model, batch, pred):
    tgt = target_features(model.encoder, batch)  # any fixed target serves
    loss = jepa_loss(pred, tgt.detach(), "smooth_l1")
    model.zero_grad(set_to_none=True)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("ratio", [1.04, 1.5])
def test_padded_batch_gives_the_unpadded_loss_and_gradients(setup, ratio):
    model, batch = setup
    sizes = padded_sizes(batch, ratio)
    tc, tt, tp = (getattr(batch, k).numel() for k in ("ctx_idx", "tgt_idx", "pred_src"))
    assert sizes["ctx"] > tc and sizes["tgt"] > tt and sizes["pred"] > tp  # real padding
    # Stale numbers in the buffers (an earlier, larger batch of the same bucket) change nothing.
    out = pad_batch(batch, sizes)
    for key in ("ctx_idx", "tgt_idx", "pred_src", "pred_out"):
        getattr(out, key).fill_(3)
    padded = pad_batch(batch, sizes, out=out)
    assert padded is out
    # Every padding sequence fits the attention bound, and the offsets end at the padded size.
    for cu_key, size, bound in (
        ("cu_ctx_seq", sizes["ctx"], sizes["max_ctx"]),
        ("cu_pred", sizes["pred"], sizes["max_pred"]),
    ):
        cu = getattr(padded, cu_key)
        assert int(cu[-1]) == size and int((cu[1:] - cu[:-1]).max()) <= bound
    want_pred = model(batch)
    full = model(padded)
    assert full.shape[0] == sizes["tgt"] and torch.isfinite(full).all()
    torch.testing.assert_close(full[:tt], want_pred, rtol=1e-5, atol=1e-6)
    want_loss, want_grads = _loss_and_grads(model, batch, model(batch))
    loss, grads = _loss_and_grads(model, batch, model(padded)[:tt])
    torch.testing.assert_close(loss, want_loss, rtol=1e-6, atol=0)
    for name, g in want_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_pad_batch_rejects_a_batch_larger_than_its_sizes(setup):
    _, batch = setup
    sizes = padded_sizes(batch, 1.04)
    sizes["ctx"] = batch.ctx_idx.numel() - 1
    with pytest.raises(ValueError, match="does not fit"):
        pad_batch(batch, sizes)


def test_graphed_jepa_is_eager_off_cuda(setup):
    model, batch = setup
    want = model(batch)
    graphed = GraphedJEPA(model)
    model.cuda_graphs = graphed  # the module's forward now goes through it
    try:
        assert torch.equal(model(batch), want)
        assert torch.equal(graphed(batch), model.forward_eager(batch))
    finally:
        model.cuda_graphs = None
    assert graphed.captures == 0 and graphed.failed is None
    with pytest.raises(ValueError, match="ratio"):
        GraphedJEPA(model, ratio=0.9)
