"""Fused token gather for JEPA masking: pick each sample's kept tokens, add positions, pack.

``gather_tokens(x, idx, cu_seqlens, pos)`` returns ``out [T, D]`` with
``out[t] = x[b, idx[t]] + pos[idx[t]]`` where ``b`` is the sample owning position ``t``
(``cu_seqlens[b] <= t < cu_seqlens[b + 1]``). Samples keep different numbers of tokens and the
result is already packed for :func:`kernels.attention.varlen_attention`.

Reads are one row of ``x`` (and ``pos``) per output row plus one index; the kernel finds each
row's sample by binary search in ``cu_seqlens``, so no per-token batch id is materialised. This
replaces I-JEPA's ``apply_masks``, which expands each index to an int64 ``[B, K, D]`` tensor (eight
bytes of index per payload element) and needs the same ``K`` for every sample.

``T`` may exceed ``cu_seqlens[-1]``: the rows from there to ``T`` are padding (a batch padded to
a fixed size, so a CUDA graph captured once replays for every batch of that size). They are
written as zeros, their indices are never read, and they send no gradient anywhere.

Backward scatters ``dout`` into ``dx``: plain stores (deterministic) when every sample's indices
are unique, fp32 atomics when they may repeat. ``dpos`` is ``dx`` summed over the batch, because
``x[b, n]`` and ``pos[n]`` receive exactly the same gradient terms.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import _dispatch
from kernels._dispatch import Backend


@triton.jit
def _find_sample(CU, offs_t, batch, search_steps, BLOCK_T: tl.constexpr):
    # Largest b in [0, batch) with cu[b] <= t; empty samples (cu[b] == cu[b+1]) are skipped
    # because the next non-empty sample starts at the same offset and is larger.
    lo = tl.zeros([BLOCK_T], dtype=tl.int32)
    hi = tl.zeros([BLOCK_T], dtype=tl.int32) + (batch - 1)
    for _ in range(search_steps):
        mid = (lo + hi + 1) // 2
        right = tl.load(CU + mid) <= offs_t
        lo = tl.where(right, mid, lo)
        hi = tl.where(right, hi, mid - 1)
    return lo


@triton.jit
def _gather_fwd_kernel(
    X,
    IDX,
    CU,
    POS,
    OUT,
    INV,
    total,
    dim,
    batch,
    n_tokens,
    search_steps,
    stride_xb,
    stride_xn,
    stride_pn,
    stride_ot,
    HAS_POS: tl.constexpr,
    WRITE_INV: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    t_ok = offs_t < total
    d_ok = offs_d < dim
    # Rows at or past cu[batch] are padding: stored as zeros, their indices unread.
    real = t_ok & (offs_t < tl.load(CU + batch))
    mask = real[:, None] & d_ok[None, :]
    b = _find_sample(CU, offs_t, batch, search_steps, BLOCK_T).to(tl.int64)
    i = tl.load(IDX + offs_t, mask=real, other=0).to(tl.int64)
    row = b * stride_xb + i * stride_xn
    val = tl.load(X + row[:, None] + offs_d[None, :], mask=mask, other=0.0)
    if HAS_POS:
        p = tl.load(POS + (i * stride_pn)[:, None] + offs_d[None, :], mask=mask, other=0.0)
        val = val.to(tl.float32) + p.to(tl.float32)
    out_ptrs = OUT + offs_t.to(tl.int64)[:, None] * stride_ot + offs_d[None, :]
    tl.store(out_ptrs, val.to(OUT.dtype.element_ty), mask=t_ok[:, None] & d_ok[None, :])
    if WRITE_INV:
        # inv[b, i] = t: which output row (if any) holds token i of sample b, for the backward.
        if tl.program_id(1) == 0:
            tl.store(INV + b * n_tokens + i, offs_t, mask=real)


@triton.jit
def _inverse_rows(INV, IDX, CU, b, offs_n, n_ok, batch, n_tokens, total):
    # Output row that took token n of sample b, or -1. The map is not pre-filled (no memset
    # launch): a slot the forward did not write holds garbage, so t is trusted only when row t
    # lies in sample b's range and took token n (idx[t] == n) - which, with unique indices, is
    # true exactly for the row the forward wrote there.
    live = n_ok & ((offs_n * 0 + b) < batch)  # the last chunk may run past the batch
    t = tl.load(INV + b * n_tokens + offs_n, mask=live, other=-1)
    b_in = tl.minimum(b, batch - 1)  # in bounds for the loads; `live` drops b >= batch
    lo = tl.load(CU + b_in)
    hi = tl.load(CU + b_in + 1)
    inside = live & (t >= lo) & (t < hi) & (t >= 0) & (t < total)
    i = tl.load(IDX + t, mask=inside, other=-1)
    return tl.where(inside & (i == offs_n), t, -1), live


@triton.jit
def _gather_bwd_inverse_kernel(
    DOUT,
    INV,
    IDX,
    CU,
    DX,
    DPOS,
    batch,
    n_tokens,
    dim,
    total,
    per_chunk,
    stride_dot,
    stride_dxb,
    stride_dxn,
    HAS_DX: tl.constexpr,
    HAS_DPOS: tl.constexpr,
    UNROLL: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # One pass over dx in its own layout: every dx row is written once (the gradient of the
    # output row that took it, or zeros), so no memset, no scatter and no second read for dpos,
    # which is summed in fp32 registers over this program's chunk of samples. Each iteration
    # takes UNROLL samples as one [UNROLL * BLOCK_N, BLOCK_D] tile (row r: sample r // BLOCK_N,
    # token r % BLOCK_N), so UNROLL times the bytes are in flight per program: with one chunk
    # of all samples (no partials to write and re-read) that is what keeps the memory busy.
    ROWS: tl.constexpr = UNROLL * BLOCK_N
    offs_r = tl.arange(0, ROWS)
    u = offs_r // BLOCK_N
    offs_n = tl.program_id(0) * BLOCK_N + offs_r % BLOCK_N
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    chunk = tl.program_id(2)
    n_ok = offs_n < n_tokens
    d_ok = offs_d < dim
    acc = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
    for j in range(0, per_chunk, UNROLL):
        b = (chunk * per_chunk + j + u).to(tl.int64)
        t, live = _inverse_rows(INV, IDX, CU, b, offs_n, n_ok, batch, n_tokens, total)
        live = live & ((j + u) < per_chunk)  # the chunk may end mid-iteration
        t = tl.where(live, t, -1)
        g = tl.load(
            DOUT + t.to(tl.int64)[:, None] * stride_dot + offs_d[None, :],
            mask=(t >= 0)[:, None] & d_ok[None, :],
            other=0.0,
        )
        if HAS_DX:
            rows = b * stride_dxb + offs_n.to(tl.int64) * stride_dxn
            tl.store(
                DX + rows[:, None] + offs_d[None, :],
                g.to(DX.dtype.element_ty),
                mask=live[:, None] & d_ok[None, :],
            )
        if HAS_DPOS:
            acc += g.to(tl.float32)
    if HAS_DPOS:
        # DPOS: dpos itself (one chunk) or this chunk's fp32 partial.
        tot = tl.sum(tl.reshape(acc, [UNROLL, BLOCK_N, BLOCK_D]), axis=0)
        n1 = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        dpos_ptrs = DPOS + (chunk * n_tokens + n1).to(tl.int64)[:, None] * dim + offs_d[None, :]
        tl.store(
            dpos_ptrs,
            tot.to(DPOS.dtype.element_ty),
            mask=(n1 < n_tokens)[:, None] & d_ok[None, :],
        )


@triton.jit
def _gather_bwd_kernel(
    DOUT,
    IDX,
    CU,
    DX,
    total,
    dim,
    batch,
    search_steps,
    stride_dot,
    stride_dxb,
    stride_dxn,
    ATOMIC: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    t_ok = (offs_t < total) & (offs_t < tl.load(CU + batch))  # padding rows send nothing
    mask = t_ok[:, None] & (offs_d < dim)[None, :]
    b = _find_sample(CU, offs_t, batch, search_steps, BLOCK_T).to(tl.int64)
    i = tl.load(IDX + offs_t, mask=t_ok, other=0).to(tl.int64)
    g = tl.load(
        DOUT + offs_t.to(tl.int64)[:, None] * stride_dot + offs_d[None, :], mask=mask, other=0.0
    )
    dx_ptrs = DX + (b * stride_dxb + i * stride_dxn)[:, None] + offs_d[None, :]
    if ATOMIC:
        tl.atomic_add(dx_ptrs, g.to(tl.float32), mask=mask, sem="relaxed")
    else:
        # Unique indices per sample: each dx row has at most one writer, so a store suffices.
        tl.store(dx_ptrs, g.to(DX.dtype.element_ty), mask=mask)


def _launch_shape(total: int, dim: int, device: torch.device) -> tuple[tuple[int, int], int, int]:
    block_d = min(_dispatch.next_pow2(max(dim, 1)), 256)
    block_t = max(1, 4096 // block_d) if device.type == "cuda" else 16
    return (_dispatch.cdiv(total, block_t), _dispatch.cdiv(dim, block_d)), block_t, block_d


def _search_steps(batch: int) -> int:
    return max(batch - 1, 0).bit_length()


def indices_unique(idx: torch.Tensor, cu_seqlens: torch.Tensor, n_tokens: int) -> bool:
    """True when no sample lists a token index twice (host syncs); padding rows are ignored."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    real = int(cu_seqlens[-1])
    sample = torch.repeat_interleave(
        torch.arange(lengths.numel(), device=idx.device), lengths, output_size=real
    )
    key = sample * n_tokens + idx[:real].long()
    return torch.unique(key).numel() == key.numel()


#: Launch settings of the inverse-map backward on GPU (benchmarks/gather_tune.py sweeps them):
#: BLOCK_N tokens x BLOCK_D channels per program, `unroll` samples per loop iteration, warps,
#: and at most `chunks` groups of samples in parallel when dpos is wanted (each group writes an
#: fp32 [N, D] partial that a second kernel sums; 1: no partials, dpos stored directly).
#: The sweep's winner on an H200 (fourth session, 2026-11-26; geometric mean over ViT-B/L/H and
#: predictor at batch 64 and 256): one token x 128 channels, 16 samples per iteration, 2 warps,
#: one chunk. Against the third session's 4 x 256, 2 per iteration, 8 chunks: 13-22% less time
#: at batch 64, within 2% at batch 256.
BWD_TILE = {"block_n": 1, "block_d": 128, "unroll": 16, "warps": 2, "chunks": 1}
#: The same for the interpreter (CPU tests): small tiles, and chunks so the partials are tested.
CPU_BWD_TILE = {"block_n": 8, "block_d": 64, "unroll": 2, "warps": 4, "chunks": 8}


def load_bwd_tile(path: str) -> dict:
    """Set :data:`BWD_TILE` from a JSON file (what benchmarks/gather_tune.py --write saves)."""
    import json
    from pathlib import Path

    tile = json.loads(Path(path).read_text())
    if set(tile) != set(BWD_TILE):
        raise ValueError(f"{path}: expected keys {sorted(BWD_TILE)}, got {sorted(tile)}")
    new = {k: int(v) for k, v in tile.items()}
    for k in ("block_n", "block_d", "unroll"):
        if new[k] < 1 or new[k] & (new[k] - 1):
            raise ValueError(f"{path}: {k} must be a power of two, got {new[k]}")
    if new["warps"] < 1 or new["chunks"] < 1:
        raise ValueError(f"{path}: warps and chunks must be >= 1, got {tile}")
    BWD_TILE.update(new)
    return dict(BWD_TILE)


def _inverse_launch(
    batch: int, n_tokens: int, dim: int, with_dpos: bool, device: torch.device
) -> tuple[tuple[int, int, int], int, int, int, int, int]:
    """(grid, samples per program, BLOCK_N, BLOCK_D, UNROLL, warps) of the inverse-map backward.

    With dpos the samples are split into at most `chunks` groups, one per program along the
    grid's third axis, each summing its samples in registers (one group: dpos written directly;
    more: fp32 partials, summed by a second kernel). Without dpos each program takes `unroll`
    samples, so all samples run in parallel.
    """
    tile = BWD_TILE if device.type == "cuda" else CPU_BWD_TILE
    block_d = min(_dispatch.next_pow2(max(dim, 1)), tile["block_d"])
    block_n, unroll = tile["block_n"], tile["unroll"]
    if with_dpos:
        per_chunk = _dispatch.cdiv(batch, min(batch, tile["chunks"]))
    else:
        per_chunk = min(unroll, batch)
    unroll = min(unroll, _dispatch.next_pow2(per_chunk))
    chunks = _dispatch.cdiv(batch, per_chunk)
    grid = (_dispatch.cdiv(n_tokens, block_n), _dispatch.cdiv(dim, block_d), chunks)
    return grid, per_chunk, block_n, block_d, unroll, tile["warps"]


@triton.jit
def _sum_chunks_kernel(PARTIAL, OUT, numel, chunks, BLOCK: tl.constexpr):
    # dpos = sum of the per-chunk fp32 partials, stored in pos's dtype in the same pass.
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for c in range(0, chunks):
        acc += tl.load(PARTIAL + c * numel + offs, mask=ok, other=0.0)
    tl.store(OUT + offs, acc.to(OUT.dtype.element_ty), mask=ok)


class GatherTokensFunction(torch.autograd.Function):
    """Autograd wrapper around the Triton gather and scatter kernels."""

    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        idx: torch.Tensor,
        cu_seqlens: torch.Tensor,
        pos: torch.Tensor | None,
        unique_indices: bool | None,
        need_grad: bool,
    ) -> torch.Tensor:
        batch, n_tokens, dim = x.shape
        total = idx.numel()
        out = _dispatch.empty((total, dim), x.dtype, x.device)
        # The inverse map (-1 where a token was not kept) costs 4 bytes per token of x and turns
        # the backward into one pass; with repeated indices it is unused (atomic backward).
        write_inv = need_grad and unique_indices is not False and total > 0 and dim > 0
        # Not pre-filled: the backward validates every entry it reads (see _inverse_rows).
        inv = _dispatch.empty((batch * n_tokens,), torch.int32, x.device) if write_inv else None
        if total > 0 and dim > 0:
            grid, block_t, block_d = _launch_shape(total, dim, x.device)
            _gather_fwd_kernel[grid](
                x,
                idx,
                cu_seqlens,
                pos if pos is not None else x,  # unread when HAS_POS is False
                out,
                inv if inv is not None else idx,  # unwritten when WRITE_INV is False
                total,
                dim,
                batch,
                n_tokens,
                _search_steps(batch),
                x.stride(0),
                x.stride(1),
                pos.stride(0) if pos is not None else 0,
                out.stride(0),
                HAS_POS=pos is not None,
                WRITE_INV=write_inv,
                BLOCK_T=block_t,
                BLOCK_D=block_d,
            )
        if inv is None:
            ctx.save_for_backward(idx, cu_seqlens)
        else:
            ctx.save_for_backward(idx, cu_seqlens, inv)
        ctx.x_shape = x.shape
        ctx.x_dtype = x.dtype
        ctx.pos_dtype = pos.dtype if pos is not None else None
        ctx.unique = unique_indices
        return out

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        idx, cu_seqlens, *inv = ctx.saved_tensors
        need_x, _, _, need_pos, _, _ = ctx.needs_input_grad
        none = (None,) * 4
        if not (need_x or need_pos):
            return None, *none, None
        batch, n_tokens, dim = ctx.x_shape
        dout = dout if dout.stride(-1) == 1 else dout.contiguous()
        unique = ctx.unique
        if unique is None:
            unique = indices_unique(idx, cu_seqlens, n_tokens)
        if unique and inv:
            return _backward_inverse(ctx, dout, idx, cu_seqlens, inv[0], need_x, need_pos)
        # Atomics accumulate in fp32 so repeated rows do not round in bf16 on every add.
        buf_dtype = ctx.x_dtype if unique else torch.float32
        dx = torch.zeros(ctx.x_shape, dtype=buf_dtype, device=dout.device)
        total = idx.numel()
        if total > 0 and dim > 0:
            grid, block_t, block_d = _launch_shape(total, dim, dout.device)
            _gather_bwd_kernel[grid](
                dout,
                idx,
                cu_seqlens,
                dx,
                total,
                dim,
                batch,
                _search_steps(batch),
                dout.stride(0),
                dx.stride(0),
                dx.stride(1),
                ATOMIC=not unique,
                BLOCK_T=block_t,
                BLOCK_D=block_d,
            )
        dpos = None
        if need_pos:
            dpos = dx.sum(0, dtype=torch.float32).to(ctx.pos_dtype)
        return (dx.to(ctx.x_dtype) if need_x else None), None, None, dpos, None, None


def _backward_inverse(
    ctx,
    dout: torch.Tensor,
    idx: torch.Tensor,
    cu_seqlens: torch.Tensor,
    inv: torch.Tensor,
    need_x: bool,
    need_pos: bool,
):
    """dx and dpos in one pass over dx's layout, reading each dout row once (unique indices)."""
    batch, n_tokens, dim = ctx.x_shape
    if batch == 0 or n_tokens == 0 or dim == 0:  # every output row is padding: no gradient
        dx = torch.zeros(ctx.x_shape, dtype=ctx.x_dtype, device=dout.device) if need_x else None
        dpos = None
        if need_pos:
            dpos = torch.zeros((n_tokens, dim), dtype=ctx.pos_dtype, device=dout.device)
        return dx, None, None, dpos, None, None
    grid, per_chunk, block_n, block_d, unroll, warps = _inverse_launch(
        batch, n_tokens, dim, need_pos, dout.device
    )
    dx = _dispatch.empty(ctx.x_shape, ctx.x_dtype, dout.device) if need_x else None
    dpos = partial = None
    if need_pos:
        dpos = _dispatch.empty((n_tokens, dim), ctx.pos_dtype, dout.device)
        if grid[2] > 1:
            partial = _dispatch.empty((grid[2], n_tokens, dim), torch.float32, dout.device)
    _gather_bwd_inverse_kernel[grid](
        dout,
        inv,
        idx,
        cu_seqlens,
        dx if dx is not None else dout,  # unwritten when HAS_DX is False
        (partial if partial is not None else dpos) if need_pos else dout,
        batch,
        n_tokens,
        dim,
        idx.numel(),
        per_chunk,
        dout.stride(0),
        dx.stride(0) if dx is not None else 0,
        dx.stride(1) if dx is not None else 0,
        HAS_DX=need_x,
        HAS_DPOS=need_pos,
        UNROLL=unroll,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        num_warps=warps,
    )
    if partial is not None:
        block = 1024 if dout.is_cuda else 256
        _sum_chunks_kernel[(_dispatch.cdiv(n_tokens * dim, block),)](
            partial, dpos, n_tokens * dim, grid[2], BLOCK=block
        )
    return dx, None, None, dpos, None, None


def _check_inputs(
    x: torch.Tensor, idx: torch.Tensor, cu_seqlens: torch.Tensor, pos: torch.Tensor | None
) -> None:
    if x.dim() != 3:
        raise ValueError(f"gather_tokens expects x [B, N, D], got shape {tuple(x.shape)}")
    if idx.dim() != 1 or idx.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"idx must be a 1-D int32/int64 tensor, got {idx.dtype} {tuple(idx.shape)}"
        )
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() != x.shape[0] + 1:
        raise ValueError(
            f"cu_seqlens must have batch + 1 = {x.shape[0] + 1} entries, "
            f"got {tuple(cu_seqlens.shape)}"
        )
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"cu_seqlens must be int32 or int64, got {cu_seqlens.dtype}")
    if pos is not None and (pos.dim() != 2 or pos.shape != x.shape[1:]):
        raise ValueError(f"pos must be [N, D] = {tuple(x.shape[1:])}, got {tuple(pos.shape)}")


def gather_tokens_reference(
    x: torch.Tensor, idx: torch.Tensor, cu_seqlens: torch.Tensor, pos: torch.Tensor | None = None
) -> torch.Tensor:
    """torch version of :func:`gather_tokens` (index_select; differentiable).

    Reads ``cu_seqlens[-1]`` on the host (a device sync on GPU) to size the padding rows.
    """
    _check_inputs(x, idx, cu_seqlens, pos)
    total, real = idx.numel(), int(cu_seqlens[-1])
    if real > total:
        raise ValueError(f"cu_seqlens[-1] = {real} exceeds the {total} indices")
    if real < total:  # padding rows: zeros, no gradient
        out = gather_tokens_reference(x, idx[:real], cu_seqlens, pos)
        return torch.cat([out, out.new_zeros(total - real, out.shape[1])])
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    sample = torch.repeat_interleave(
        torch.arange(x.shape[0], device=x.device), lengths, output_size=idx.numel()
    )
    # index_select on the flat view: its backward is an index_add, much faster on CPU than the
    # accumulate-index_put that advanced indexing x[sample, idx] backpropagates through.
    batch, n_tokens, dim = x.shape
    out = x.reshape(batch * n_tokens, dim).index_select(0, sample * n_tokens + idx.long())
    if pos is not None:
        # Add in at least fp32 (as the kernel does), never below the inputs' own precision.
        compute = torch.promote_types(torch.promote_types(x.dtype, pos.dtype), torch.float32)
        out = (out.to(compute) + pos.index_select(0, idx.long()).to(compute)).to(x.dtype)
    return out


def gather_tokens(
    x: torch.Tensor,
    idx: torch.Tensor,
    cu_seqlens: torch.Tensor,
    pos: torch.Tensor | None = None,
    unique_indices: bool | None = None,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Packed rows ``x[b, idx[t]] (+ pos[idx[t]])`` for every sample ``b``; returns ``[T, D]``.

    ``x [B, N, D]``; ``idx`` int32/int64 ``[T]`` holds each sample's token indices back to back,
    sample ``b`` owning ``idx[cu_seqlens[b]:cu_seqlens[b + 1]]`` (``cu_seqlens[0] == 0``,
    ``cu_seqlens[-1] <= T``; rows past ``cu_seqlens[-1]`` are padding: zeros, no gradient);
    indices must lie in ``[0, N)``. ``pos [N, D]`` is added in the same pass.
    ``unique_indices``: True promises no sample repeats an index (deterministic backward without
    atomics), False allows repeats (fp32 atomics), None checks in the backward (host syncs).
    """
    _check_inputs(x, idx, cu_seqlens, pos)
    tensors = (x, idx, cu_seqlens) if pos is None else (x, idx, cu_seqlens, pos)
    if not _dispatch.use_triton(backend, *tensors):
        return gather_tokens_reference(x, idx, cu_seqlens, pos)
    x = x if x.stride(-1) == 1 else x.contiguous()
    if pos is not None and pos.stride(-1) != 1:
        pos = pos.contiguous()
    need_grad = torch.is_grad_enabled() and (
        x.requires_grad or (pos is not None and pos.requires_grad)
    )
    return GatherTokensFunction.apply(
        x, idx.contiguous(), cu_seqlens.contiguous(), pos, unique_indices, need_grad
    )
