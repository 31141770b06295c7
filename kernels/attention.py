"""Variable-length attention on packed sequences: Triton kernels, torch reference, autograd.

Tokens of all samples are packed along one axis, ``q [total_q, heads, head_dim]``; sample ``b``
owns rows ``cu_seqlens_q[b]:cu_seqlens_q[b + 1]`` of ``q`` and ``cu_seqlens_k[b]:cu_seqlens_k[b+1]``
of ``k``/``v``, and its queries see only its own keys. JEPA needs this because every sample keeps
a different number of context tokens and nothing is truncated to the batch minimum.

The kernels follow FlashAttention-2: the forward streams key blocks through an online softmax and
saves the log-sum-exp per query row; the backward recomputes the probabilities from it, with one
kernel that owns a key block (dk, dv) and one that owns a query block (dq), so no atomics are
needed. Head dims that are not powers of two (80, 96) are padded to the next power of two in
registers and masked on load and store.

The Triton kernels live in `kernels.attention_triton`; this module launches them (tile choice,
input checks), wraps them for autograd and holds the torch reference.

Causal masking is bottom-right aligned (as in FlashAttention >= 2.1): query ``i`` of a sample with
``Lq`` queries and ``Lk`` keys sees keys ``j <= i + Lk - Lq``. For ``Lq == Lk`` that is the usual
lower triangle. A query that sees no key (``Lq > Lk`` near the top, or ``Lk == 0``) outputs zeros.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from kernels import _dispatch
from kernels._dispatch import Backend
from kernels.attention_triton import (
    _attn_bwd_delta_kernel,
    _attn_bwd_dkdv_kernel,
    _attn_bwd_dq_kernel,
    _attn_fwd_kernel,
)

LN2 = math.log(2.0)
LOG2E = 1.0 / LN2
SUPPORTED_HEAD_DIMS = (32, 64, 80, 96, 128)
#: GPU tiles for half-precision launches, {(kind, padded head dim, long): (BLOCK_M, BLOCK_N,
#: num_warps, num_stages)}: kind "fwd", "dkdv" or "dq"; long when the longest sample has at least
#: LONG_SEQ tokens. Entries here win over the built-in choice; `python -m kernels.bench --tiles
#: FILE` fills it from the JSON that benchmarks/kernels_tune.py writes.
TILES: dict[tuple[str, int, bool], tuple[int, int, int, int]] = {}
LONG_SEQ = 1024


def load_tiles(path: str) -> dict:
    """Fill :data:`TILES` from a JSON file ``{kind: {"64" or "128/long": [BM, BN, warps,
    stages]}}`` (what benchmarks/kernels_tune.py --write saves); returns the parsed JSON."""
    import json
    from pathlib import Path

    tiles = json.loads(Path(path).read_text())
    for kind, by_dim in tiles.items():
        if kind not in ("fwd", "dkdv", "dq"):
            raise ValueError(f"{path}: unknown kernel {kind!r} (expected fwd, dkdv or dq)")
        for key, cfg in by_dim.items():
            head_dim, _, long = key.partition("/")
            TILES[(kind, int(head_dim), long == "long")] = tuple(int(c) for c in cfg)
    return tiles


# ----------------------------------------------------------------------------- launch helpers


def _block_sizes(
    head_dim_padded: int, device: torch.device, kind: str, fp32: bool = False, max_len: int = 0
) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for one kernel.

    Under the interpreter small blocks keep numpy work low while still crossing block boundaries
    at the test lengths (63, 64, 65, 197). On GPU one measured set serves every head dim; per-shape
    autotuning would multiply compile and test time for little gain at JEPA's short sequences.
    """
    if device.type != "cuda":
        return 32, 32, 4, 1
    key = (kind, head_dim_padded, max_len >= LONG_SEQ)
    if not fp32 and key in TILES:
        return TILES[key]
    if fp32:
        # fp32 tiles are twice the bytes: smaller ones keep shared memory under the sm90 limit.
        return {"fwd": (64, 32, 4, 2), "dkdv": (32, 32, 4, 2), "dq": (64, 32, 4, 2)}[kind]
    # Measured on an H200 (triton 3.6, bf16, benchmarks/kernels_tune.py, CUDA-graph device
    # time, 2026-11-26): at JEPA lengths (<= 256 tokens) the forward's best tile was 64 x 32 at
    # every head dim and the backward's were best or within 5% at the ViT-L, ViT-H and predictor
    # presets; at head dim 128 x 2048 tokens bigger tiles with 8 warps win (backward 2.35 -> 2.18
    # ms with the dq and dkdv tiles below; forward 0.61 ms, 451 TFLOP/s).
    if max_len >= LONG_SEQ and head_dim_padded >= 128:
        return {"fwd": (128, 128, 8, 3), "dkdv": (64, 128, 8, 2), "dq": (128, 64, 8, 3)}[kind]
    return {"fwd": (64, 32, 4, 3), "dkdv": (32, 64, 4, 3), "dq": (64, 32, 4, 2)}[kind]


def _dot_precision(dtype: torch.dtype, device: torch.device) -> str:
    # fp32 inputs are for tests and reference-quality runs, so not plain TF32: on GPU 3xTF32
    # (near-fp32 accuracy on tensor cores; "ieee" spills badly), exact math in the interpreter.
    if dtype != torch.float32:
        return "tf32"
    return "tf32x3" if device.type == "cuda" else "ieee"


def _check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
) -> None:
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(
            "q, k, v must be packed [total_tokens, heads, head_dim], got shapes "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape or q.shape[1:] != k.shape[1:]:
        raise ValueError(
            "q, k, v disagree on heads/head_dim: "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if cu_seqlens_q.dim() != 1 or cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError(
            "cu_seqlens_q and cu_seqlens_k must be 1-D with batch + 1 entries each, got "
            f"{tuple(cu_seqlens_q.shape)} and {tuple(cu_seqlens_k.shape)}"
        )
    if cu_seqlens_q.dtype not in (torch.int32, torch.int64) or cu_seqlens_k.dtype not in (
        torch.int32,
        torch.int64,
    ):
        raise ValueError("cu_seqlens must be int32 or int64")


def _lastdim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _triton_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_q: torch.Tensor,
    cu_k: torch.Tensor,
    max_q: int,
    max_k: int,
    causal: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    total_q, heads, head_dim = q.shape
    batch = cu_q.numel() - 1
    block_d = max(16, _dispatch.next_pow2(head_dim))
    o = _dispatch.empty(q.shape, q.dtype, q.device)
    lse = _dispatch.empty((heads, total_q), torch.float32, q.device)
    if total_q == 0 or batch == 0 or max_q == 0:
        return o, lse
    bm, bn, warps, stages = _block_sizes(
        block_d, q.device, "fwd", q.dtype == torch.float32, max(max_q, max_k)
    )
    grid = (_dispatch.cdiv(max_q, bm), batch, heads)
    _attn_fwd_kernel[grid](
        q,
        k,
        v,
        o,
        lse,
        cu_q,
        cu_k,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        o.stride(0),
        o.stride(1),
        lse.stride(0),
        scale * LOG2E,
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        BLOCK_M=bm,
        BLOCK_N=bn,
        CAUSAL=causal,
        DOT_PREC=_dot_precision(q.dtype, q.device),
        EVEN_D=head_dim == block_d,
        num_warps=warps,
        num_stages=stages,
    )
    return o, lse


def _triton_backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    cu_q: torch.Tensor,
    cu_k: torch.Tensor,
    max_q: int,
    max_k: int,
    causal: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    total_q, heads, head_dim = q.shape
    batch = cu_q.numel() - 1
    block_d = max(16, _dispatch.next_pow2(head_dim))
    dq = _dispatch.empty(q.shape, q.dtype, q.device)
    dk = _dispatch.empty(k.shape, k.dtype, k.device)
    dv = _dispatch.empty(v.shape, v.dtype, v.device)
    if batch == 0 or (total_q == 0 and k.shape[0] == 0):
        return dq, dk, dv
    delta = _dispatch.empty((heads, total_q), torch.float32, q.device)
    prec = _dot_precision(q.dtype, q.device)
    if total_q > 0:
        block_t = 64 if q.is_cuda else 32
        _attn_bwd_delta_kernel[(_dispatch.cdiv(total_q, block_t), heads)](
            o,
            do,
            delta,
            total_q,
            o.stride(0),
            o.stride(1),
            do.stride(0),
            do.stride(1),
            delta.stride(0),
            HEAD_DIM=head_dim,
            BLOCK_D=block_d,
            BLOCK_T=block_t,
        )
    if max_k > 0:
        bm, bn, warps, stages = _block_sizes(
            block_d, q.device, "dkdv", q.dtype == torch.float32, max(max_q, max_k)
        )
        _attn_bwd_dkdv_kernel[(_dispatch.cdiv(max_k, bn), batch, heads)](
            q,
            k,
            v,
            do,
            lse,
            delta,
            dk,
            dv,
            cu_q,
            cu_k,
            q.stride(0),
            q.stride(1),
            k.stride(0),
            k.stride(1),
            v.stride(0),
            v.stride(1),
            do.stride(0),
            do.stride(1),
            dk.stride(0),
            dk.stride(1),
            dv.stride(0),
            dv.stride(1),
            lse.stride(0),
            scale,
            scale * LOG2E,
            HEAD_DIM=head_dim,
            BLOCK_D=block_d,
            BLOCK_M=bm,
            BLOCK_N=bn,
            CAUSAL=causal,
            DOT_PREC=prec,
            num_warps=warps,
            num_stages=stages,
        )
    if max_q > 0:
        bm, bn, warps, stages = _block_sizes(
            block_d, q.device, "dq", q.dtype == torch.float32, max(max_q, max_k)
        )
        _attn_bwd_dq_kernel[(_dispatch.cdiv(max_q, bm), batch, heads)](
            q,
            k,
            v,
            do,
            lse,
            delta,
            dq,
            cu_q,
            cu_k,
            q.stride(0),
            q.stride(1),
            k.stride(0),
            k.stride(1),
            v.stride(0),
            v.stride(1),
            do.stride(0),
            do.stride(1),
            dq.stride(0),
            dq.stride(1),
            lse.stride(0),
            scale,
            scale * LOG2E,
            HEAD_DIM=head_dim,
            BLOCK_D=block_d,
            BLOCK_M=bm,
            BLOCK_N=bn,
            CAUSAL=causal,
            DOT_PREC=prec,
            num_warps=warps,
            num_stages=stages,
        )
    return dq, dk, dv


class VarlenAttentionFunction(torch.autograd.Function):
    """Autograd wrapper around the Triton forward and backward kernels."""

    @staticmethod
    def forward(
        ctx,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cu_q: torch.Tensor,
        cu_k: torch.Tensor,
        max_q: int,
        max_k: int,
        causal: bool,
        scale: float,
    ) -> torch.Tensor:
        q, k, v = (_lastdim_contiguous(t) for t in (q, k, v))
        o, lse = _triton_forward(q, k, v, cu_q, cu_k, max_q, max_k, causal, scale)
        ctx.save_for_backward(q, k, v, o, lse, cu_q, cu_k)
        ctx.args = (max_q, max_k, causal, scale)
        return o

    @staticmethod
    def backward(ctx, do: torch.Tensor):
        q, k, v, o, lse, cu_q, cu_k = ctx.saved_tensors
        max_q, max_k, causal, scale = ctx.args
        dq, dk, dv = _triton_backward(
            _lastdim_contiguous(do), q, k, v, o, lse, cu_q, cu_k, max_q, max_k, causal, scale
        )
        return dq, dk, dv, None, None, None, None, None, None


# ----------------------------------------------------------------------------- reference


def varlen_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Plain torch attention, one sample at a time (one batched call when every sample has the
    same length), in at least float32 (differentiable)."""
    _check_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    compute = torch.promote_types(q.dtype, torch.float32)
    cq = cu_seqlens_q.tolist()
    ck = cu_seqlens_k.tolist()
    lens_q = {b - a for a, b in zip(cq[:-1], cq[1:], strict=True)}
    lens_k = {b - a for a, b in zip(ck[:-1], ck[1:], strict=True)}
    if len(lens_q) == len(lens_k) == 1 and q.shape[0] == cq[-1] and k.shape[0] == ck[-1]:
        # Every sample the same length (whole records of one shape, or one token each): a
        # single batched call instead of a Python loop over samples.
        (lq,), (lk,) = lens_q, lens_k
        if lq > 0 and lk > 0 and (not causal or lq == lk):
            qs, ks, vs = (
                t.to(compute).reshape(-1, n, *t.shape[1:]).transpose(1, 2)
                for t, n in ((q, lq), (k, lk), (v, lk))
            )
            out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, scale=scale)
            return out.transpose(1, 2).reshape(q.shape[0], out.shape[1], -1).to(q.dtype)
    outs = []
    for b in range(len(cq) - 1):
        qs = q[cq[b] : cq[b + 1]].to(compute).transpose(0, 1)  # [H, Lq, D]
        ks = k[ck[b] : ck[b + 1]].to(compute).transpose(0, 1)
        vs = v[ck[b] : ck[b + 1]].to(compute).transpose(0, 1)
        lq, lk = qs.shape[1], ks.shape[1]
        if lk > 0 and (not causal or lq == lk):
            # Every row sees a key and top-left == bottom-right: SDPA's fused CPU path is exact.
            # SDPA's fused (flash) kernels take only 4-D inputs; 3-D ones fall back to the math
            # path, which materialises the L x L scores and is ~5x slower at JEPA lengths.
            out = F.scaled_dot_product_attention(
                qs[None], ks[None], vs[None], is_causal=causal, scale=scale
            )[0]
        else:
            scores = (qs @ ks.transpose(1, 2)) * scale
            if causal:
                i = torch.arange(lq, device=q.device)[:, None]
                j = torch.arange(lk, device=q.device)[None, :]
                scores = scores.masked_fill(j > i + (lk - lq), float("-inf"))
            # Rows with no visible key softmax to NaN; they are defined as zeros (as in the kernel).
            out = torch.softmax(scores, dim=-1).nan_to_num(0.0) @ vs
        outs.append(out.transpose(0, 1))
    if not outs:
        return q.new_empty(q.shape)
    return torch.cat(outs, dim=0).to(q.dtype)


# ----------------------------------------------------------------------------- public API


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    causal: bool = False,
    scale: float | None = None,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Attention within each packed sample; returns ``[total_q, heads, head_dim]``.

    ``q [total_q, H, D]``, ``k``/``v [total_k, H, D]``; ``cu_seqlens_*`` are int32/int64 offsets
    of ``batch + 1`` entries starting at 0 and ending at the total token count; ``max_seqlen_*``
    bound the per-sample lengths (they size the launch grid, so no device sync is needed).
    ``causal`` is bottom-right aligned; ``scale`` defaults to ``head_dim ** -0.5``. Head dims
    32, 64, 80, 96, 128 run in Triton (fp16/bf16 on GPU, fp32 too); with ``backend="auto"``
    other head dims run on the torch reference (with a warning, once per head dim), with
    ``backend="triton"`` they are an error.
    """
    _check_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k)
    head_dim = q.shape[-1]
    scale = head_dim**-0.5 if scale is None else float(scale)
    if not _dispatch.use_triton(backend, q, k, v, cu_seqlens_q, cu_seqlens_k):
        return varlen_attention_reference(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale)
    if head_dim not in SUPPORTED_HEAD_DIMS:
        if backend == "triton":
            raise ValueError(
                f"head_dim {head_dim} not supported by the kernel; use one of {SUPPORTED_HEAD_DIMS}"
            )
        _warn_head_dim(head_dim)
        return varlen_attention_reference(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale)
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"varlen_attention kernel supports fp16, bf16, fp32; got {q.dtype}")
    return VarlenAttentionFunction.apply(
        q,
        k,
        v,
        cu_seqlens_q.to(torch.int32),
        cu_seqlens_k.to(torch.int32),
        int(max_seqlen_q),
        int(max_seqlen_k),
        bool(causal),
        scale,
    )


_WARNED_HEAD_DIMS: set[int] = set()


def _warn_head_dim(head_dim: int) -> None:
    if head_dim not in _WARNED_HEAD_DIMS:
        _WARNED_HEAD_DIMS.add(head_dim)
        warnings.warn(
            f"varlen_attention: head_dim {head_dim} is not one the Triton kernel takes "
            f"{SUPPORTED_HEAD_DIMS}; running the torch reference (slower, same result)",
            stacklevel=3,
        )


def attention_padded(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Self-attention on a padded batch ``[B, N, H, D]`` through the varlen core.

    ``key_padding_mask [B, N]`` is True at padding tokens (PyTorch's ``nn.MultiheadAttention``
    convention); those tokens are dropped from both queries and keys and their outputs are zero.
    Packing reads the mask on the host (one device sync); pass packed tensors to
    :func:`varlen_attention` directly in hot loops.
    """
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            "attention_padded expects q, k, v of one shape [B, N, H, D], got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    b, n = q.shape[:2]
    if key_padding_mask is None:
        keep = torch.ones(b, n, dtype=torch.bool, device=q.device)
    else:
        if key_padding_mask.shape != (b, n) or key_padding_mask.dtype != torch.bool:
            raise ValueError(
                f"key_padding_mask must be bool [B, N] = {(b, n)}, got "
                f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
            )
        keep = ~key_padding_mask
    lengths = keep.sum(1)
    cu = torch.zeros(b + 1, dtype=torch.int32, device=q.device)
    cu[1:] = lengths.cumsum(0)
    max_len = int(lengths.max().item()) if b > 0 else 0
    packed = varlen_attention(
        q[keep], k[keep], v[keep], cu, cu, max_len, max_len, causal, scale, backend
    )
    out = q.new_zeros(q.shape)
    out[keep] = packed
    return out
