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

Causal masking is bottom-right aligned (as in FlashAttention >= 2.1): query ``i`` of a sample with
``Lq`` queries and ``Lk`` keys sees keys ``j <= i + Lk - Lq``. For ``Lq == Lk`` that is the usual
lower triangle. A query that sees no key (``Lq > Lk`` near the top, or ``Lk == 0``) outputs zeros.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels import _dispatch
from kernels._dispatch import Backend

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


# ----------------------------------------------------------------------------- Triton kernels


@triton.jit
def _attn_fwd_step(
    acc,
    l_i,
    m_i,
    q,
    K,
    V,
    k_start,
    k_len,
    q_len,
    n0,
    h,
    offs_m,
    offs_n,
    offs_d,
    d_ok,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    qk_scale2,
    MASKED: tl.constexpr,
    EVEN_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    # One key block of the online softmax. MASKED blocks (the ragged tail, and every block of a
    # causal sample) mask keys past the sample's end and above the diagonal; full blocks do not.
    offs_kn = n0 + offs_n
    k_ptrs = K + (k_start + offs_kn)[:, None] * stride_kt + h * stride_kh + offs_d[None, :]
    v_ptrs = V + (k_start + offs_kn)[:, None] * stride_vt + h * stride_vh + offs_d[None, :]
    if MASKED:
        n_ok = offs_kn < k_len
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
        v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
    elif EVEN_D:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    else:
        k = tl.load(k_ptrs, mask=d_ok[None, :], other=0.0)
        v = tl.load(v_ptrs, mask=d_ok[None, :], other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale2
    if MASKED:
        ok = n_ok[None, :]
        if CAUSAL:
            ok = ok & (offs_kn[None, :] <= offs_m[:, None] + (k_len - q_len))
        s = tl.where(ok, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PREC)
    return acc, l_i, m_new


@triton.jit
def _attn_fwd_kernel(
    Q,
    K,
    V,
    O,
    LSE,
    CU_Q,
    CU_K,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_ot,
    stride_oh,
    stride_lse_h,
    qk_scale2,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_PREC: tl.constexpr,
    EVEN_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    b = tl.program_id(1)
    h = tl.program_id(2)
    q_start = tl.load(CU_Q + b)
    q_len = tl.load(CU_Q + b + 1) - q_start
    m0 = pid_m * BLOCK_M
    # The grid is sized for the longest sample; shorter samples leave programs with no rows.
    if m0 >= q_len:
        return
    k_start = tl.load(CU_K + b)
    k_len = tl.load(CU_K + b + 1) - k_start

    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < q_len
    d_ok = offs_d < HEAD_DIM
    q_ptrs = Q + (q_start + offs_m)[:, None] * stride_qt + h * stride_qh + offs_d[None, :]
    # Rows past the sample's end load zeros (finite scores) and are never stored.
    q = tl.load(q_ptrs, mask=m_ok[:, None] & d_ok[None, :], other=0.0)

    # A finite start for the running max keeps rows that see no key free of (-inf) - (-inf).
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    if CAUSAL:
        # Keys past the last one any row of this block may see are never loaded.
        n_end = tl.minimum(k_len, m0 + BLOCK_M + k_len - q_len)
        for n0 in range(0, n_end, BLOCK_N):
            acc, l_i, m_i = _attn_fwd_step(
                acc, l_i, m_i, q, K, V, k_start, k_len, q_len, n0, h, offs_m, offs_n, offs_d,
                d_ok, stride_kt, stride_kh, stride_vt, stride_vh, qk_scale2,
                True, EVEN_D, CAUSAL, DOT_PREC,
            )  # fmt: skip
    else:
        n_full = k_len // BLOCK_N * BLOCK_N
        for n0 in range(0, n_full, BLOCK_N):
            acc, l_i, m_i = _attn_fwd_step(
                acc, l_i, m_i, q, K, V, k_start, k_len, q_len, n0, h, offs_m, offs_n, offs_d,
                d_ok, stride_kt, stride_kh, stride_vt, stride_vh, qk_scale2,
                False, EVEN_D, CAUSAL, DOT_PREC,
            )  # fmt: skip
        if n_full < k_len:
            acc, l_i, m_i = _attn_fwd_step(
                acc, l_i, m_i, q, K, V, k_start, k_len, q_len, n_full, h, offs_m, offs_n, offs_d,
                d_ok, stride_kt, stride_kh, stride_vt, stride_vh, qk_scale2,
                True, EVEN_D, CAUSAL, DOT_PREC,
            )  # fmt: skip

    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    acc = acc / l_safe[:, None]
    # Natural-log LSE; +inf for rows that saw no key makes the backward's probabilities 0.
    lse = tl.where(seen, (m_i + tl.log2(l_safe)) * 0.6931471805599453, float("inf"))
    o_ptrs = O + (q_start + offs_m)[:, None] * stride_ot + h * stride_oh + offs_d[None, :]
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    tl.store(LSE + h * stride_lse_h + q_start + offs_m, lse, mask=m_ok)


@triton.jit
def _attn_bwd_delta_kernel(
    O,
    DO,
    DELTA,
    total,
    stride_ot,
    stride_oh,
    stride_dot,
    stride_doh,
    stride_delta_h,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    # delta = rowsum(dO * O): the softmax backward's per-row correction term.
    pid = tl.program_id(0)
    h = tl.program_id(1)
    offs_t = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_t < total)[:, None] & (offs_d < HEAD_DIM)[None, :]
    o = tl.load(
        O + offs_t[:, None] * stride_ot + h * stride_oh + offs_d[None, :], mask=mask, other=0.0
    )
    do = tl.load(
        DO + offs_t[:, None] * stride_dot + h * stride_doh + offs_d[None, :], mask=mask, other=0.0
    )
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + h * stride_delta_h + offs_t, delta, mask=offs_t < total)


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    CU_Q,
    CU_K,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_dot,
    stride_doh,
    stride_dkt,
    stride_dkh,
    stride_dvt,
    stride_dvh,
    stride_lse_h,
    sm_scale,
    qk_scale2,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    pid_n = tl.program_id(0)
    b = tl.program_id(1)
    h = tl.program_id(2)
    k_start = tl.load(CU_K + b)
    k_len = tl.load(CU_K + b + 1) - k_start
    n0 = pid_n * BLOCK_N
    if n0 >= k_len:
        return
    q_start = tl.load(CU_Q + b)
    q_len = tl.load(CU_Q + b + 1) - q_start

    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < k_len
    d_ok = offs_d < HEAD_DIM
    kv_mask = n_ok[:, None] & d_ok[None, :]
    k = tl.load(
        K + (k_start + offs_n)[:, None] * stride_kt + h * stride_kh + offs_d[None, :],
        mask=kv_mask,
        other=0.0,
    )
    v = tl.load(
        V + (k_start + offs_n)[:, None] * stride_vt + h * stride_vh + offs_d[None, :],
        mask=kv_mask,
        other=0.0,
    )
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    m_begin = 0
    if CAUSAL:
        # Queries before the first that may see key n0 contribute nothing; skip their blocks.
        m_begin = tl.maximum(n0 - (k_len - q_len), 0) // BLOCK_M * BLOCK_M
    for m0 in range(m_begin, q_len, BLOCK_M):
        offs_qm = m0 + offs_m
        m_ok = offs_qm < q_len
        q_mask = m_ok[:, None] & d_ok[None, :]
        q = tl.load(
            Q + (q_start + offs_qm)[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
            mask=q_mask,
            other=0.0,
        )
        do = tl.load(
            DO + (q_start + offs_qm)[:, None] * stride_dot + h * stride_doh + offs_d[None, :],
            mask=q_mask,
            other=0.0,
        )
        lse = tl.load(LSE + h * stride_lse_h + q_start + offs_qm, mask=m_ok, other=float("inf"))
        delta = tl.load(DELTA + h * stride_lse_h + q_start + offs_qm, mask=m_ok, other=0.0)
        # Transposed scores [BLOCK_N, BLOCK_M], so dk and dv accumulate without a transpose.
        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * qk_scale2
        ok = n_ok[:, None] & m_ok[None, :]
        if CAUSAL:
            ok = ok & (offs_n[:, None] <= offs_qm[None, :] + (k_len - q_len))
        s_t = tl.where(ok, s_t, float("-inf"))
        p_t = tl.exp2(s_t - lse[None, :] * 1.4426950408889634)
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PREC)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PREC)

    dk = dk * sm_scale
    tl.store(
        DK + (k_start + offs_n)[:, None] * stride_dkt + h * stride_dkh + offs_d[None, :],
        dk.to(DK.dtype.element_ty),
        mask=kv_mask,
    )
    tl.store(
        DV + (k_start + offs_n)[:, None] * stride_dvt + h * stride_dvh + offs_d[None, :],
        dv.to(DV.dtype.element_ty),
        mask=kv_mask,
    )


@triton.jit
def _attn_bwd_dq_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DQ,
    CU_Q,
    CU_K,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_dot,
    stride_doh,
    stride_dqt,
    stride_dqh,
    stride_lse_h,
    sm_scale,
    qk_scale2,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    pid_m = tl.program_id(0)
    b = tl.program_id(1)
    h = tl.program_id(2)
    q_start = tl.load(CU_Q + b)
    q_len = tl.load(CU_Q + b + 1) - q_start
    m0 = pid_m * BLOCK_M
    if m0 >= q_len:
        return
    k_start = tl.load(CU_K + b)
    k_len = tl.load(CU_K + b + 1) - k_start

    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < q_len
    d_ok = offs_d < HEAD_DIM
    q_mask = m_ok[:, None] & d_ok[None, :]
    q = tl.load(
        Q + (q_start + offs_m)[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
        mask=q_mask,
        other=0.0,
    )
    do = tl.load(
        DO + (q_start + offs_m)[:, None] * stride_dot + h * stride_doh + offs_d[None, :],
        mask=q_mask,
        other=0.0,
    )
    lse2 = tl.load(LSE + h * stride_lse_h + q_start + offs_m, mask=m_ok, other=float("inf"))
    lse2 = lse2 * 1.4426950408889634
    delta = tl.load(DELTA + h * stride_lse_h + q_start + offs_m, mask=m_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    n_end = k_len
    if CAUSAL:
        n_end = tl.minimum(k_len, m0 + BLOCK_M + k_len - q_len)
    for n0 in range(0, n_end, BLOCK_N):
        offs_kn = n0 + offs_n
        n_ok = offs_kn < k_len
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(
            K + (k_start + offs_kn)[:, None] * stride_kt + h * stride_kh + offs_d[None, :],
            mask=kv_mask,
            other=0.0,
        )
        v = tl.load(
            V + (k_start + offs_kn)[:, None] * stride_vt + h * stride_vh + offs_d[None, :],
            mask=kv_mask,
            other=0.0,
        )
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale2
        ok = m_ok[:, None] & n_ok[None, :]
        if CAUSAL:
            ok = ok & (offs_kn[None, :] <= offs_m[:, None] + (k_len - q_len))
        s = tl.where(ok, s, float("-inf"))
        p = tl.exp2(s - lse2[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PREC)

    dq = dq * sm_scale
    tl.store(
        DQ + (q_start + offs_m)[:, None] * stride_dqt + h * stride_dqh + offs_d[None, :],
        dq.to(DQ.dtype.element_ty),
        mask=q_mask,
    )


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
    """Plain torch attention, one sample at a time, in at least float32 (differentiable)."""
    _check_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    compute = torch.promote_types(q.dtype, torch.float32)
    cq = cu_seqlens_q.tolist()
    ck = cu_seqlens_k.tolist()
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
