"""Encoder.forward_all: host-side packing (no device sync) equals encoding each sample alone."""

from __future__ import annotations

import pytest
import torch

from engine.batch import token_packing
from engine.config import ModelConfig
from engine.model import Encoder
from modalities.grid import GridEmbedder


@pytest.mark.parametrize("lengths", [[5, 9, 1], [9, 9, 9]])
def test_forward_all_packing_matches_per_sample_encoding(lengths):
    torch.manual_seed(0)
    cfg = ModelConfig(embed_dim=16, depth=2, num_heads=2)
    enc = Encoder(GridEmbedder(4, 16), cfg).eval()
    nmax = max(lengths)
    tokens = torch.randn(len(lengths), nmax, 4)
    coords = torch.randint(0, 6, (len(lengths), nmax, 2))
    n = torch.tensor(lengths, dtype=torch.int32)
    packing = token_packing(lengths, nmax)
    assert (packing.valid_idx is None) == (min(lengths) == nmax)
    with torch.no_grad():
        packed = enc.forward_all(tokens, coords, n, packing)
        derived = enc.forward_all(tokens, coords, n)
        for b, k in enumerate(lengths):
            alone = enc.forward_all(tokens[b : b + 1, :k], coords[b : b + 1, :k], n[b : b + 1])
            torch.testing.assert_close(packed[b, :k], alone[0], rtol=1e-5, atol=1e-5)
            assert torch.all(packed[b, k:] == 0), "padding rows must stay zero"
    torch.testing.assert_close(packed, derived, rtol=0, atol=0)


def test_layernorm_module_is_nn_layernorm_on_cpu_and_switchable():
    """The engine's LayerNorm keeps nn.LayerNorm's parameters and state-dict keys (checkpoints
    and exports load either way), equals it exactly on CPU with the fused switch on or off, and
    set_fused_layernorm reaches every norm of an encoder."""
    from engine.model import LayerNorm, set_fused_layernorm

    torch.manual_seed(0)
    ours, ref = LayerNorm(24, autocast_output=True), torch.nn.LayerNorm(24)
    with torch.no_grad():
        ours.weight.normal_()
        ours.bias.normal_()
    ref.load_state_dict(ours.state_dict())
    assert list(ours.state_dict()) == ["weight", "bias"]
    x = torch.randn(5, 7, 24, requires_grad=True)
    for fused in (True, False):
        ours.fused = fused
        assert torch.equal(ours(x), ref(x))
    cfg = ModelConfig(embed_dim=16, depth=2, num_heads=2)
    enc = Encoder(GridEmbedder(4, 16), cfg)
    norms = [m for m in enc.modules() if isinstance(m, LayerNorm)]
    assert len(norms) == 2 * cfg.depth + 1 and all(m.fused for m in norms)
    set_fused_layernorm(enc, False)
    assert not any(m.fused for m in norms)
