"""Encoder.forward_all: host-side packing (no device sync) equals encoding each sample alone."""

from __future__ import annotations

import pytest
import torch

from engine.config import ModelConfig
from engine.model import Encoder, all_token_packing
from modalities.grid import GridEmbedder


@pytest.mark.parametrize("lengths", [[5, 9, 1], [9, 9, 9]])
def test_forward_all_packing_matches_per_sample_encoding(lengths):
    torch.manual_seed(0)
    cfg = ModelConfig(patch_len=4, embed_dim=16, depth=2, num_heads=2)
    enc = Encoder(GridEmbedder(4, 16), cfg).eval()
    nmax = max(lengths)
    tokens = torch.randn(len(lengths), nmax, 4)
    coords = torch.randint(0, 6, (len(lengths), nmax, 2))
    n = torch.tensor(lengths, dtype=torch.int32)
    packing = all_token_packing(lengths, nmax)
    assert (packing["valid_idx"] is None) == (min(lengths) == nmax)
    with torch.no_grad():
        packed = enc.forward_all(tokens, coords, n, packing)
        derived = enc.forward_all(tokens, coords, n)
        for b, k in enumerate(lengths):
            alone = enc.forward_all(tokens[b : b + 1, :k], coords[b : b + 1, :k], n[b : b + 1])
            torch.testing.assert_close(packed[b, :k], alone[0], rtol=1e-5, atol=1e-5)
            assert torch.all(packed[b, k:] == 0), "padding rows must stay zero"
    torch.testing.assert_close(packed, derived, rtol=0, atol=0)
