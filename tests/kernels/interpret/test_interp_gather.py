"""Triton token gather against a float64 reference: ragged/empty samples, repeats, grads."""

import pytest
import torch

from kernels.gather import gather_tokens, gather_tokens_reference

LENGTHS = [1, 7, 0, 63, 64, 65]
N_TOKENS = 70


def _indices(lengths, n, repeat, device, dtype):
    parts = []
    for length in lengths:
        if repeat:
            parts.append(torch.randint(0, n, (length,)))
        else:
            parts.append(torch.randperm(n)[:length])
    return torch.cat(parts).to(device=device, dtype=dtype)


def _cu(lengths, device, dtype=torch.int32):
    return torch.tensor([0, *lengths], device=device).cumsum(0).to(dtype)


@pytest.mark.parametrize(
    "repeat,unique_flag", [(False, True), (False, None), (True, None), (True, False)]
)
@pytest.mark.parametrize("with_pos", [False, True])
def test_gather_forward_backward(repeat, unique_flag, with_pos, device):
    dim = 80
    idx = _indices(LENGTHS, N_TOKENS, repeat, device, torch.int32)
    cu = _cu(LENGTHS, device)
    x = torch.randn(len(LENGTHS), N_TOKENS, dim, device=device, requires_grad=True)
    pos = torch.randn(N_TOKENS, dim, device=device, requires_grad=True) if with_pos else None
    out = gather_tokens(x, idx, cu, pos, unique_indices=unique_flag, backend="triton")
    assert "GatherTokens" in out.grad_fn.name()
    assert not torch.isnan(out).any()
    grad = torch.randn_like(out)
    out.backward(grad)
    x64 = x.detach().double().requires_grad_()
    pos64 = pos.detach().double().requires_grad_() if with_pos else None
    ref = gather_tokens_reference(x64, idx, cu, pos64)
    ref.backward(grad.double())
    torch.testing.assert_close(out.double(), ref.detach(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=1e-5, rtol=1e-5)
    if with_pos:
        torch.testing.assert_close(pos.grad.double(), pos64.grad, atol=1e-5, rtol=1e-5)


def test_gather_int64_fp16_pos_only_grad(device):
    # int64 indices and offsets, fp16 activations with fp32 positions, grad only for pos.
    lengths = [5, 33, 1]
    idx = _indices(lengths, 40, False, device, torch.int64)
    cu = _cu(lengths, device, torch.int64)
    x = torch.randn(3, 40, 48, device=device, dtype=torch.float16)
    pos = torch.randn(40, 48, device=device, requires_grad=True)
    out = gather_tokens(x, idx, cu, pos, backend="triton")
    assert out.dtype == torch.float16
    grad = torch.randn_like(out)
    out.backward(grad)
    pos64 = pos.detach().double().requires_grad_()
    ref = gather_tokens_reference(x.double(), idx, cu, pos64)
    ref.backward(grad.double())
    torch.testing.assert_close(out.double(), ref.detach(), atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(pos.grad.double(), pos64.grad, atol=1e-2, rtol=1e-3)


def test_gather_single_sample_strided_x(device):
    # batch of one (no search steps) and x a non-contiguous view along tokens.
    x = torch.randn(1, 2 * N_TOKENS, 32, device=device)[:, ::2]
    idx = torch.randperm(N_TOKENS)[:20].to(device)
    cu = _cu([20], device)
    out = gather_tokens(x, idx, cu, backend="triton")
    torch.testing.assert_close(out, x[0, idx], atol=0, rtol=0)


MANY = [3, 0, 17, 40, 1, 0, 25, 9, 40, 2, 11]  # 11 samples: some keep nothing, two keep all


@pytest.mark.parametrize(
    "need_x, lengths, tile",
    [
        # 11 samples, 8 chunks of 2 (the last half past the batch), 2 samples per iteration.
        (True, MANY, {}),
        (False, MANY, {}),
        # 20 samples: chunks of 3, so each chunk's second iteration has one sample of 2.
        (True, [5, 40, 0, 7, 13, 1, 39, 22, 0, 8, 30, 3, 40, 16, 2, 9, 27, 11, 0, 6], {}),
        # One chunk of all 11 samples, 4 per iteration: dpos stored directly, no partials.
        (True, MANY, {"chunks": 1, "unroll": 4}),
        # One chunk, one sample per iteration, one token per program.
        (True, MANY, {"chunks": 1, "unroll": 1, "block_n": 1}),
        # Without dpos: 8 samples per program (the last program's 3 are past the batch).
        (True, MANY, {"unroll": 8}),
        # The GPU default (1 token x 128 channels, 16 per iteration, one chunk): 11 samples
        # fill less than one iteration.
        (True, MANY, {"block_n": 1, "block_d": 128, "unroll": 16, "chunks": 1}),
    ],
)
def test_gather_inverse_backward_many_samples(need_x, lengths, tile, device, monkeypatch):
    # The inverse map is not pre-filled (the poisoning allocator fills it with random plausible
    # row numbers), so this also proves the backward trusts only entries the forward wrote.
    from kernels import gather

    monkeypatch.setattr(gather, "CPU_BWD_TILE", {**gather.CPU_BWD_TILE, **tile})
    monkeypatch.setattr(gather, "BWD_TILE", {**gather.BWD_TILE, **tile})
    n_tokens, dim = 40, 72
    idx = _indices(lengths, n_tokens, False, device, torch.int64)
    cu = _cu(lengths, device)
    x = torch.randn(len(lengths), n_tokens, dim, device=device, requires_grad=need_x)
    with_pos = tile.get("unroll") != 8
    pos = torch.randn(n_tokens, dim, device=device, requires_grad=with_pos)
    out = gather_tokens(x, idx, cu, pos, unique_indices=True, backend="triton")
    grad = torch.randn_like(out)
    out.backward(grad)
    x64 = x.detach().double().requires_grad_(need_x)
    pos64 = pos.detach().double().requires_grad_(with_pos)
    gather_tokens_reference(x64, idx, cu, pos64).backward(grad.double())
    if with_pos:
        torch.testing.assert_close(pos.grad.double(), pos64.grad, atol=1e-5, rtol=1e-5)
    if need_x:
        # Rows no sample kept must come back as exact zeros, not stale memory.
        torch.testing.assert_close(x.grad.double(), x64.grad, atol=0, rtol=0)


@pytest.mark.parametrize("unique_flag", [True, False, None])
@pytest.mark.parametrize("tile", [{}, {"block_n": 1, "block_d": 128, "unroll": 16, "chunks": 1}])
def test_gather_padding_rows(unique_flag, tile, device, monkeypatch):
    # T > cu[-1]: the trailing rows are padding (a batch padded to a CUDA graph's fixed size).
    # Their indices hold plausible token numbers (stale rows of an earlier batch), which must
    # be neither read into the output nor scattered into dx / dpos.
    from kernels import gather

    monkeypatch.setattr(gather, "CPU_BWD_TILE", {**gather.CPU_BWD_TILE, **tile})
    monkeypatch.setattr(gather, "BWD_TILE", {**gather.BWD_TILE, **tile})
    lengths, pad, n_tokens, dim = [5, 0, 40, 17], 23, 40, 48
    real = _indices(lengths, n_tokens, False, device, torch.int64)
    idx = torch.cat([real, torch.randint(0, n_tokens, (pad,)).to(device)])
    cu = _cu(lengths, device)
    x = torch.randn(len(lengths), n_tokens, dim, device=device, requires_grad=True)
    pos = torch.randn(n_tokens, dim, device=device, requires_grad=True)
    out = gather_tokens(x, idx, cu, pos, unique_indices=unique_flag, backend="triton")
    assert out.shape == (idx.numel(), dim)
    torch.testing.assert_close(out[real.numel() :], torch.zeros(pad, dim, device=device))
    grad = torch.randn_like(out)  # nonzero on the padding rows too: they must be ignored
    out.backward(grad)
    x64 = x.detach().double().requires_grad_()
    pos64 = pos.detach().double().requires_grad_()
    ref = gather_tokens_reference(x64, real, cu, pos64)
    ref.backward(grad[: real.numel()].double())
    torch.testing.assert_close(out[: real.numel()].double(), ref.detach(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pos.grad.double(), pos64.grad, atol=1e-5, rtol=1e-5)


def test_gather_only_padding_rows_and_no_samples(device):
    # A batch of no samples padded to 6 rows: zeros out, an empty dx and a zero dpos back.
    x = torch.randn(0, 10, 16, device=device, requires_grad=True)
    pos = torch.randn(10, 16, device=device, requires_grad=True)
    idx = torch.randint(0, 10, (6,), device=device)
    cu = torch.zeros(1, dtype=torch.int32, device=device)
    out = gather_tokens(x, idx, cu, pos, unique_indices=True, backend="triton")
    assert torch.equal(out, torch.zeros(6, 16, device=device))
    out.backward(torch.randn_like(out))
    assert x.grad.shape == x.shape
    assert torch.equal(pos.grad, torch.zeros_like(pos))
