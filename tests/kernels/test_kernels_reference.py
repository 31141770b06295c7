"""The torch reference paths (what CPU runs) and the dispatch rules, in the plain pytest process."""

import ast
import sys
from pathlib import Path

import pytest
import torch

import kernels
from kernels import _dispatch
from kernels.attention import varlen_attention_reference
from kernels.bench.baselines import apply_masks_baseline, index_select_baseline

KERNELS_DIR = Path(kernels.__file__).parent


def _cu(lengths):
    return torch.tensor([0, *lengths]).cumsum(0)


def _document_mask_attention(q, k, v, lq, lk, causal, scale):
    """All tokens at once with a [Tq, Tk] same-sample (and causal) mask: a different route."""
    sq = torch.repeat_interleave(torch.arange(len(lq)), torch.tensor(lq))
    sk = torch.repeat_interleave(torch.arange(len(lk)), torch.tensor(lk))
    allowed = sq[:, None] == sk[None, :]
    if causal:
        iq = torch.cat([torch.arange(n) for n in lq])
        ik = torch.cat([torch.arange(n) for n in lk])
        shift = (torch.tensor(lk) - torch.tensor(lq))[sq]
        allowed &= ik[None, :] <= (iq + shift)[:, None]
    scores = torch.einsum("qhd,khd->hqk", q, k) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, -1).nan_to_num(0.0)
    return torch.einsum("hqk,khd->qhd", probs, v)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_reference_matches_document_mask(causal):
    lq, lk = [1, 7, 63, 64, 65, 19], [3, 7, 63, 1, 80, 0]
    q = torch.randn(sum(lq), 3, 32, dtype=torch.float64)
    k = torch.randn(sum(lk), 3, 32, dtype=torch.float64)
    v = torch.randn(sum(lk), 3, 32, dtype=torch.float64)
    out = varlen_attention_reference(q, k, v, _cu(lq), _cu(lk), causal=causal, scale=0.2)
    want = _document_mask_attention(q, k, v, lq, lk, causal, 0.2)
    torch.testing.assert_close(out, want)


@pytest.mark.parametrize(
    "lq, lk, causal",
    [([7] * 4, [7] * 4, False), ([7] * 4, [7] * 4, True), ([1] * 9, [1] * 9, False),
     ([3] * 5, [8] * 5, False), ([4] * 3, [6] * 3, True), ([0] * 3, [5] * 3, False)],
)  # fmt: skip
def test_attention_reference_same_lengths_batched(lq, lk, causal):
    """Samples all of one length take one batched call (causal with lq != lk keeps the loop):
    the same result as the document mask, from non-contiguous q / k / v as the qkv split gives."""
    qkv = torch.randn(sum(lq), 3, 2, 32, dtype=torch.float64)
    kv = torch.randn(sum(lk), 2, 2, 32, dtype=torch.float64)
    q, k, v = qkv[:, 0], kv[:, 0], kv[:, 1]
    assert not q.is_contiguous() or q.numel() == 0
    out = varlen_attention_reference(q, k, v, _cu(lq), _cu(lk), causal=causal, scale=0.2)
    want = _document_mask_attention(q, k, v, lq, lk, causal, 0.2)
    torch.testing.assert_close(out, want)


def test_cpu_dispatch_uses_reference_and_is_differentiable():
    lengths = [5, 9]
    q = torch.randn(14, 2, 64, requires_grad=True)
    out = kernels.varlen_attention(q, q, q, _cu(lengths), _cu(lengths), 9, 9)
    assert _dispatch.INTERPRET or "VarlenAttention" not in out.grad_fn.name()
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_attention_padded_equals_varlen():
    b, n = 3, 11
    q, k, v = (torch.randn(b, n, 2, 32, dtype=torch.float64) for _ in range(3))
    lengths = [11, 4, 1]
    pad = torch.arange(n)[None, :] >= torch.tensor(lengths)[:, None]
    out = kernels.attention_padded(q, k, v, key_padding_mask=pad, backend="torch")
    keep = ~pad
    cu = _cu(lengths)
    packed = varlen_attention_reference(q[keep], k[keep], v[keep], cu, cu)
    torch.testing.assert_close(out[keep], packed)
    assert torch.all(out[pad] == 0)


def test_backend_rules():
    x = torch.randn(2, 5, 8)
    idx = torch.tensor([0, 4, 2])
    cu = torch.tensor([0, 1, 3])
    with pytest.raises(ValueError, match="backend must be"):
        kernels.gather_tokens(x, idx, cu, backend="cuda")
    if _dispatch.INTERPRET:
        assert _dispatch.use_triton("triton", x)
    else:
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            kernels.gather_tokens(x, idx, cu, backend="triton")
        assert not _dispatch.use_triton("auto", x)
    assert not _dispatch.use_triton("torch", x)


def test_gather_reference_matches_loop_and_baselines():
    x = torch.randn(3, 10, 6, dtype=torch.float64)
    pos = torch.randn(10, 6, dtype=torch.float64)
    keep = torch.stack([torch.randperm(10)[:4] for _ in range(3)])
    idx = keep.reshape(-1)
    cu = torch.tensor([0, 4, 8, 12])
    out = kernels.gather_tokens(x, idx, cu, pos)
    want = torch.cat([x[b, keep[b]] + pos[keep[b]] for b in range(3)])
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(apply_masks_baseline(x + pos, keep).reshape(12, 6), want)
    torch.testing.assert_close(index_select_baseline(x + pos, idx, cu), want)


def test_gather_reference_padding_rows():
    # Rows past cu[-1] are zeros and take no gradient; their (stale) indices are not read.
    x = torch.randn(2, 6, 4, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([1, 4, 0, 5, 2, 3, 99])  # 2 real + 2 real + 3 padding rows
    cu = torch.tensor([0, 2, 4])
    out = kernels.gather_tokens(x, idx, cu, unique_indices=True)
    torch.testing.assert_close(out[:4], torch.stack([x[0, 1], x[0, 4], x[1, 0], x[1, 5]]))
    assert torch.equal(out[4:], torch.zeros(3, 4, dtype=torch.float64))
    out.backward(torch.ones_like(out))
    assert x.grad.sum() == 4 * 4  # one per real row and channel
    assert not kernels.gather.indices_unique(torch.tensor([1, 1, 0, 2, 9]), cu, 6)
    assert kernels.gather.indices_unique(torch.tensor([1, 2, 1, 2, 1]), cu, 6)
    with pytest.raises(ValueError, match="exceeds"):
        kernels.gather_tokens(x, idx[:3], cu)


def test_layer_norm_reference_is_torch_layer_norm_on_cpu():
    x = torch.randn(3, 9, 20, requires_grad=True)
    w, b = torch.randn(20, requires_grad=True), torch.randn(20, requires_grad=True)
    out = kernels.layer_norm(x, w, b, 1e-6)
    assert torch.equal(out, torch.nn.functional.layer_norm(x, (20,), w, b, 1e-6))
    half = kernels.layer_norm(x, w, b, 1e-6, out_dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and torch.equal(half, out.to(torch.bfloat16))
    half.float().sum().backward()  # differentiable through the cast
    assert x.grad is not None and w.grad is not None and b.grad is not None
    if not _dispatch.INTERPRET:
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            kernels.layer_norm(x, w, b, backend="triton")


def test_input_validation_names_the_problem():
    x = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match="batch \\+ 1"):
        kernels.gather_tokens(x, torch.tensor([0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="pos must be"):
        kernels.gather_tokens(x, torch.tensor([0]), torch.tensor([0, 1, 1]), torch.randn(4, 8))
    q = torch.randn(4, 2, 32)
    with pytest.raises(ValueError, match="heads/head_dim"):
        kernels.varlen_attention(q, q[:, :1], q[:, :1], _cu([4]), _cu([4]), 4, 4)
    with pytest.raises(ValueError, match="float32"):
        kernels.ema_([torch.zeros(3, dtype=torch.bfloat16)], [torch.zeros(3)], 0.9)


def test_package_imports_only_torch_triton_stdlib():
    allowed = {"torch", "triton", "kernels", "__future__"} | set(sys.stdlib_module_names)
    for path in KERNELS_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"


def test_host_launch_arithmetic_matches_triton():
    import triton

    for a in range(0, 300):
        assert _dispatch.next_pow2(max(a, 1)) == triton.next_power_of_2(max(a, 1))
        for b in (1, 2, 3, 16, 64, 128, 4096):
            assert _dispatch.cdiv(a, b) == triton.cdiv(a, b)
