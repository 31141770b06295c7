"""Triton fused EMA against a float64 formula: dtypes, momentum kinds, chunk edges, alignment."""

import pytest
import torch

from kernels.ema import CHUNK, EMATarget, ema_

# Sizes around the chunk boundary, tiny tensors (norms, biases) and a 2-D weight.
SHAPES = [(1,), (3,), (CHUNK - 1,), (CHUNK,), (2 * CHUNK + 5,), (17, 33)]


def _expected(targets, sources, m):
    m = float(m)
    return [t.double() * m + (1.0 - m) * s.double() for t, s in zip(targets, sources, strict=True)]


def _check(targets, want):
    for i, (t, w) in enumerate(zip(targets, want, strict=True)):
        torch.testing.assert_close(
            t.double(), w, atol=1e-6, rtol=1e-6, msg=lambda m, i=i: f"{i}: {m}"
        )


@pytest.mark.parametrize("momentum_kind", ["float", "tensor"])
@pytest.mark.parametrize("src_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_ema_matches_formula(src_dtype, momentum_kind, device):
    targets = [torch.randn(s, device=device) for s in SHAPES]
    sources = [torch.randn(s, device=device).to(src_dtype) for s in SHAPES]
    m = 0.75 + 0.2 * torch.rand(()).item()
    momentum = torch.tensor(m, device=device) if momentum_kind == "tensor" else m
    want = _expected(targets, sources, m)
    ema_(targets, sources, momentum, backend="triton")
    _check(targets, want)


def test_ema_mixed_dtypes_unaligned_and_repeated_calls(device):
    # One call with fp32 and bf16 sources; views at odd offsets defeat 16-byte alignment.
    base_t = torch.randn(CHUNK + 16, device=device)
    base_s = torch.randn(CHUNK + 16, device=device)
    targets = [
        base_t[1 : CHUNK + 9],
        torch.randn(100, device=device),
        torch.randn(5, 7, device=device),
    ]
    sources = [
        base_s[3 : CHUNK + 11],
        torch.randn(100, device=device).bfloat16(),
        torch.randn(5, 7, device=device),
    ]
    for m in (0.9, 0.99, 1.0):  # the cached plan is reused; the momentum must still change
        want = _expected(targets, sources, m)
        ema_(targets, sources, m, backend="triton")
        _check(targets, want)


def test_ema_target_update_follows_schedule(device):
    online = torch.nn.Sequential(torch.nn.Linear(9, 31), torch.nn.LayerNorm(31)).to(device)
    target, ema = EMATarget.copy_of(online, total_steps=4, backend="triton")
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    before = [p.detach().double().clone() for p in target.parameters()]
    m = ema.update(online)
    assert m == pytest.approx(0.996) and ema.step == 1
    want = _expected(before, list(online.parameters()), m)
    _check(list(target.parameters()), want)
