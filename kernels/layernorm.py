"""Fused LayerNorm over the last dimension, forward and backward, for the transformer blocks.

``layer_norm(x, weight, bias, eps, out_dtype=None)`` equals ``F.layer_norm(x, (D,), weight, bias,
eps)``, computed in fp32 whatever the input dtype, with the result stored as ``out_dtype`` (default
the input's). A pre-norm block's norm feeds a linear layer that autocast would cast to bf16 anyway,
so storing bf16 straight from the kernel saves writing the fp32 result and the cast kernel that
reads it again (and the backward then reads a bf16 gradient): same numbers, fewer bytes.

Why a kernel: in a JEPA step at ViT-B batch 128 on an H200, torch's LayerNorm took about 20 ms
of 82 ms of device time (its backward's gamma/beta reduction alone 6.5 ms), more than all the
attention kernels together (docs/benchmarks.md). Here the forward is one pass (each program
normalises a block of rows held in registers) and the backward one pass plus a small sum: each
program walks a contiguous range of rows, writes ``dx`` and keeps fp32 partial sums of ``dw`` and
``db`` in registers, and the partials of the at most a few hundred programs are summed at the end
(deterministic: no atomics).

Dispatch as for the other kernels: Triton on CUDA, the torch reference (``F.layer_norm``) on CPU,
Triton on CPU under ``TRITON_INTERPRET=1`` or when asked. Rows up to 16384 wide.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels import _dispatch
from kernels._dispatch import Backend

MAX_DIM = 16384


@triton.jit
def _ln_fwd_kernel(
    X,
    W,
    B,
    Y,
    STATS,
    rows,
    dim,
    stride_x,
    stride_y,
    eps,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < rows
    d_ok = offs_d < dim
    mask = m_ok[:, None] & d_ok[None, :]
    rows64 = offs_m.to(tl.int64)
    x = tl.load(X + rows64[:, None] * stride_x + offs_d[None, :], mask=mask, other=0.0)
    x = x.to(tl.float32)
    mean = tl.sum(x, axis=1) / dim
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / dim + eps)
    w = tl.load(W + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    b = tl.load(B + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(Y + rows64[:, None] * stride_y + offs_d[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(STATS + offs_m, mean, mask=m_ok)  # stats = [mean; rstd], [2, rows] fp32
    tl.store(STATS + rows + offs_m, rstd, mask=m_ok)


@triton.jit
def _ln_bwd_kernel(
    X,
    W,
    DY,
    DX,
    STATS,
    PARTIAL,
    rows,
    dim,
    rows_per_prog,
    stride_x,
    stride_dy,
    stride_dx,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # This program's rows: [start, end). dx row by row block; dw = sum(dy * xhat) and
    # db = sum(dy) over its rows kept in fp32 registers and written as one partial each.
    pid = tl.program_id(0)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < dim
    w = tl.load(W + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_D], dtype=tl.float32)
    db = tl.zeros([BLOCK_D], dtype=tl.float32)
    start = pid * rows_per_prog
    end = tl.minimum(start + rows_per_prog, rows)
    for r in range(start, end, BLOCK_M):
        offs_m = r + tl.arange(0, BLOCK_M)
        m_ok = offs_m < end
        mask = m_ok[:, None] & d_ok[None, :]
        rows64 = offs_m.to(tl.int64)
        x = tl.load(X + rows64[:, None] * stride_x + offs_d[None, :], mask=mask, other=0.0)
        dy = tl.load(DY + rows64[:, None] * stride_dy + offs_d[None, :], mask=mask, other=0.0)
        x = x.to(tl.float32)
        dy = dy.to(tl.float32)
        mean = tl.load(STATS + offs_m, mask=m_ok, other=0.0)
        rstd = tl.load(STATS + rows + offs_m, mask=m_ok, other=0.0)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        wdy = w[None, :] * dy
        c1 = tl.sum(xhat * wdy, axis=1) / dim
        c2 = tl.sum(wdy, axis=1) / dim
        dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        tl.store(
            DX + rows64[:, None] * stride_dx + offs_d[None, :],
            dx.to(DX.dtype.element_ty),
            mask=mask,
        )
        dw += tl.sum(dy * xhat, axis=0)
        db += tl.sum(dy, axis=0)
    tl.store(PARTIAL + pid * dim + offs_d, dw, mask=d_ok)
    tl.store(PARTIAL + (tl.num_programs(0) + pid) * dim + offs_d, db, mask=d_ok)


def _tile(dim: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_D, num_warps): about 4096 fp32 values per program on GPU."""
    block_d = max(16, _dispatch.next_pow2(dim))
    if device.type != "cuda":
        return max(1, min(16, 1024 // block_d)), block_d, 4
    block_m = max(1, min(32, 4096 // block_d))
    return block_m, block_d, 8 if block_d >= 4096 else 4


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _bwd_programs(rows: int, block_m: int, device: torch.device) -> tuple[int, int]:
    """(programs, rows per program): a few waves of programs, each a multiple of BLOCK_M rows."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        cap = 4 * _sm_count(index)  # looked up once per device: this runs every backward
    else:
        cap = 4
    blocks = _dispatch.cdiv(rows, block_m)
    progs = max(1, min(cap, blocks))
    per = _dispatch.cdiv(blocks, progs) * block_m
    return _dispatch.cdiv(rows, per), per


class LayerNormFunction(torch.autograd.Function):
    """Autograd wrapper around the Triton LayerNorm kernels."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float, out_dtype: torch.dtype):
        dim = x.shape[-1]
        x2 = x.reshape(-1, dim)
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        rows = x2.shape[0]
        y = _dispatch.empty((rows, dim), out_dtype, x.device)
        stats = _dispatch.empty((2, rows), torch.float32, x.device)  # mean, rstd
        block_m, block_d, warps = _tile(dim, x.device)
        if rows > 0:
            _ln_fwd_kernel[(_dispatch.cdiv(rows, block_m),)](
                x2,
                weight,
                bias,
                y,
                stats,
                rows,
                dim,
                x2.stride(0),
                y.stride(0),
                eps,
                BLOCK_M=block_m,
                BLOCK_D=block_d,
                num_warps=warps,
            )
        ctx.save_for_backward(x2, weight, stats)
        ctx.shape = x.shape
        ctx.x_dtype = x.dtype
        return y if x.dim() == 2 else y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, stats = ctx.saved_tensors
        rows, dim = x2.shape
        dy2 = dy.reshape(-1, dim)
        if dy2.stride(-1) != 1:
            dy2 = dy2.contiguous()
        dx = _dispatch.empty((rows, dim), ctx.x_dtype, dy.device)
        block_m, block_d, warps = _tile(dim, dy.device)
        progs, per = _bwd_programs(rows, block_m, dy.device)
        partial = _dispatch.empty((2, progs, dim), torch.float32, dy.device)
        if rows > 0:
            _ln_bwd_kernel[(progs,)](
                x2,
                weight,
                dy2,
                dx,
                stats,
                partial,
                rows,
                dim,
                per,
                x2.stride(0),
                dy2.stride(0),
                dx.stride(0),
                BLOCK_M=block_m,
                BLOCK_D=block_d,
                num_warps=warps,
            )
            sums = partial.sum(1)
        else:
            sums = torch.zeros((2, dim), dtype=torch.float32, device=dy.device)
        dw = sums[0].to(weight.dtype) if ctx.needs_input_grad[1] else None
        db = sums[1].to(weight.dtype) if ctx.needs_input_grad[2] else None
        return (dx if len(ctx.shape) == 2 else dx.view(ctx.shape)), dw, db, None, None


def layer_norm_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-5,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """torch version of :func:`layer_norm` (``F.layer_norm``, then a cast when asked)."""
    y = F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    return y if out_dtype is None or y.dtype == out_dtype else y.to(out_dtype)


def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-5,
    out_dtype: torch.dtype | None = None,
    backend: Backend = "auto",
) -> torch.Tensor:
    """LayerNorm over the last dimension with affine ``weight``/``bias`` ``[D]``, in fp32.

    ``x [..., D]`` fp32, bf16 or fp16; the result has ``x``'s shape and ``out_dtype`` (default
    ``x.dtype``). Gradients flow to ``x``, ``weight`` and ``bias``.
    """
    dim = x.shape[-1]
    if weight.shape != (dim,) or bias.shape != (dim,):
        raise ValueError(
            f"layer_norm: weight and bias must be [{dim}], got {tuple(weight.shape)} and "
            f"{tuple(bias.shape)}"
        )
    if not _dispatch.use_triton(backend, x, weight, bias):
        return layer_norm_reference(x, weight, bias, eps, out_dtype)
    if dim > MAX_DIM:
        raise ValueError(f"layer_norm kernel handles rows up to {MAX_DIM} wide, got {dim}")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"layer_norm kernel supports fp32, bf16, fp16; got {x.dtype}")
    weight = weight if weight.is_contiguous() else weight.contiguous()
    bias = bias if bias.is_contiguous() else bias.contiguous()
    return LayerNormFunction.apply(x, weight, bias, float(eps), out_dtype or x.dtype)
