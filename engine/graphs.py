"""CUDA graphs of the JEPA step: the host's Python work replaced by graph replays.

A ViT-B JEPA step issues well over a thousand kernels from Python (torch ops and Triton
launches). On a fast GPU the host cannot keep up: the step waits on Python, not on the GPU.
Replaying CUDA graphs removes that cost.

- `GraphedTargetFeatures`: the target encoder's forward (no grad, every token, fixed shape per
  batch shape) captured once per shape.
- `GraphedJEPA`: the trained part's forward and backward (context encoder + predictor). Its token
  counts change every batch, so each batch is padded up to a size bucket (`pad_batch`): counts
  on a geometric ladder (``ratio`` 1.04: at most 4% padding, about 2% on average) and
  sequence-length bounds rounded up to 64. One graph per bucket is captured the first time the
  bucket is seen and replayed after that; the predictions are cut back to the real target rows,
  so the loss and the gradients are those of the unpadded batch.

The padding changes no real number's value: padding rows of the gathers are zeros
(`kernels.gather_tokens`), padding tokens form attention sequences of their own (so no real
token attends to them), padding predictor rows are read from real rows but never reach the
loss, and every padding row's gradient is exactly zero. Only float rounding differs (matrix
multiplies over more rows may pick other kernels).

Both fall back to the eager path on CPU, when disabled, past ``max_graphs`` buckets and after a
failed capture (with a warning). Imports torch, `engine.batch` and `engine.model`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from engine.batch import PackedBatch, TokenPacking
from engine.model import JEPA, Encoder, gather_tokens, normalize_targets, target_features

QUANTUM = 64  # token counts and sequence-length bounds are padded to multiples of this


@functools.lru_cache(maxsize=4096)
def bucket_size(n: int, ratio: float, quantum: int = QUANTUM) -> tuple[int, int]:
    """(size, previous): the smallest rung >= n of the ladder quantum, ..., each rung the
    previous times ``ratio`` (at least one quantum more) rounded up to a multiple of
    ``quantum``; and the rung below it (0 for the first). Every n in (previous, size] pads to
    size."""
    if ratio <= 1.0:
        raise ValueError(f"the bucket ratio must be > 1, got {ratio}")
    prev, size = 0, quantum
    while size < n:
        prev, size = size, max(size + quantum, math.ceil(size * ratio / quantum) * quantum)
    return size, prev


def _capture_failed(what: str, err: Exception) -> str:
    """Warn that a capture failed and the run goes on eagerly; the reason, for `.failed`."""
    reason = f"{type(err).__name__}: {err}"
    warnings.warn(
        f"CUDA graph capture of {what} failed ({reason}); running it eagerly from here on",
        RuntimeWarning,
        stacklevel=4,
    )
    return reason


def _capture_autocast() -> torch.autocast:
    """The caller's CUDA autocast state with the weight-cast cache off, for capturing: a cached
    cast would be replayed from the capture's buffer instead of recomputed from the weights."""
    return torch.autocast(
        "cuda",
        dtype=torch.get_autocast_dtype("cuda"),
        enabled=torch.is_autocast_enabled("cuda"),
        cache_enabled=False,
    )


def _round_up(n: int, quantum: int = QUANTUM) -> int:
    return max(quantum, math.ceil(n / quantum) * quantum)


def padded_sizes(batch: PackedBatch, ratio: float) -> dict[str, int]:
    """The padded sizes of a collated batch, read from shapes and host ints (no device sync).

    ctx / tgt / pred: token counts of the context, the target rows and the predictor's packed
    sequences, each padded to its bucket. max_ctx / max_pred: sequence-length bounds (the
    attention launch grids). ctx_seqs / pred_seqs: how many padding sequences the padding rows
    are split into, so that none is longer than its bound.
    """
    out: dict[str, int] = {}
    for name, key in (("ctx", "ctx_idx"), ("tgt", "tgt_idx"), ("pred", "pred_src")):
        size, lower = bucket_size(getattr(batch, key).numel(), ratio)
        out[name] = size
        if name != "tgt":  # padding sequences: enough for the most padding this bucket needs
            bound = out[f"max_{name}"] = _round_up(getattr(batch, f"max_{name}"))
            out[f"{name}_seqs"] = max(1, math.ceil((size - lower) / bound))
    return out


def _pad_bounds(real: int, size: int, seqs: int, device: torch.device) -> torch.Tensor:
    """End offsets of `seqs` near-equal padding sequences filling rows [real, size), computed
    on `device` (a copy from host memory would wait for the device's queue to drain)."""
    j = torch.arange(1, seqs + 1, device=device, dtype=torch.int64)
    return (real + (j * (size - real) + seqs - 1) // seqs).to(torch.int32)


def _empty_padded(batch: PackedBatch, sizes: dict[str, int]) -> PackedBatch:
    """`batch`'s padded layout for `sizes`, with fresh tensors (filled by `pad_batch`); the
    unpadded-only fields (n_tokens, packing, pos_group, index) are None."""
    dev = batch.ctx_idx.device
    b, s = batch.cu_ctx.numel() - 1, batch.cu_pred.numel() - 1

    def idx(n: int) -> torch.Tensor:
        return torch.zeros(n, dtype=torch.int64, device=dev)

    def cu(n: int) -> torch.Tensor:
        return torch.zeros(n, dtype=torch.int32, device=dev)

    return dataclasses.replace(
        batch,
        tokens=torch.empty_like(batch.tokens),
        coords=torch.empty_like(batch.coords),
        ctx_idx=idx(sizes["ctx"]),
        cu_ctx=cu(b + 1),
        cu_ctx_seq=cu(b + 1 + sizes["ctx_seqs"]),
        tgt_idx=idx(sizes["tgt"]),
        cu_tgt=cu(b + 1),
        pred_src=idx(sizes["pred"]),
        cu_pred=cu(s + 1 + sizes["pred_seqs"]),
        pred_out=idx(sizes["tgt"]),
        max_ctx=sizes["max_ctx"],
        max_pred=sizes["max_pred"],
        # What only the unpadded batch has (the step's forward never reads these): cleared, so
        # a captured graph can never bake in the capture batch's values.
        n_tokens=None,
        packing=None,
        pos_group=None,
        index=None,
    )


def pad_batch(
    batch: PackedBatch, sizes: dict[str, int], out: PackedBatch | None = None
) -> PackedBatch:
    """`batch` padded to `sizes` (`padded_sizes`), written into `out`'s tensors when given.

    Padding rows: context and target indices 0 (unread: rows past cu[-1] are zeros in the
    gather), predictor sources 0 (a real row; its outputs never reach the loss), predictions
    read back from row 0 (cut off by the caller). The context's padding rows and the
    predictor's padding rows form `*_seqs` attention sequences of their own (cu_ctx_seq,
    cu_pred). Only device copies and host ints: no device sync. The fields outside
    `PackedBatch.PADDED` are None (the padded step reads none of them).
    """
    tc, tt, tp = batch.ctx_idx.numel(), batch.tgt_idx.numel(), batch.pred_src.numel()
    if tc > sizes["ctx"] or tt > sizes["tgt"] or tp > sizes["pred"]:
        raise ValueError(f"batch of ({tc}, {tt}, {tp}) tokens does not fit the sizes {sizes}")
    p = _empty_padded(batch, sizes) if out is None else out
    b1, s1 = batch.cu_ctx.numel(), batch.cu_pred.numel()
    p.tokens.copy_(batch.tokens)
    p.coords.copy_(batch.coords)
    for key, n in (("ctx_idx", tc), ("tgt_idx", tt), ("pred_out", tt)):
        dst = getattr(p, key)
        dst[:n].copy_(getattr(batch, key))
        dst[n:].zero_()
    # Predictor sources index cat([context rows, mask rows]); the mask rows move down by the
    # context's padding.
    src = batch.pred_src
    p.pred_src[:tp].copy_(torch.where(src >= tc, src + (sizes["ctx"] - tc), src))
    p.pred_src[tp:].zero_()
    p.cu_ctx.copy_(batch.cu_ctx)
    p.cu_tgt.copy_(batch.cu_tgt)
    p.cu_ctx_seq[:b1].copy_(batch.cu_ctx)
    dev = p.cu_ctx_seq.device
    p.cu_ctx_seq[b1:].copy_(_pad_bounds(tc, sizes["ctx"], sizes["ctx_seqs"], dev))
    p.cu_pred[:s1].copy_(batch.cu_pred)
    p.cu_pred[s1:].copy_(_pad_bounds(tp, sizes["pred"], sizes["pred_seqs"], dev))
    return p


@dataclass
class _StepGraphs:
    """One bucket's captured forward and backward, and the static tensors they read and write."""

    fwd: Any  # torch.cuda.CUDAGraph
    bwd: Any
    inputs: PackedBatch  # the padded batch (its PADDED tensors refilled every call)
    sizes: dict[str, int]
    out: torch.Tensor  # predictions [tgt bucket, D]
    grad_out: torch.Tensor  # their gradient, copied in before the backward replays
    # Per trainable parameter: the shared gradient buffer the backward writes, None if unused.
    returned: tuple[torch.Tensor | None, ...]


class _Replay(torch.autograd.Function):
    """Autograd node of a replayed step: forward replays the forward graph, backward the
    backward graph, which leaves the parameters' gradients in the shared buffers `grads`; they
    reach the parameters through autograd as usual (gradient hooks included)."""

    @staticmethod
    def forward(ctx, g: _StepGraphs, *params: torch.Tensor) -> torch.Tensor:
        ctx.g = g
        g.fwd.replay()
        return g.out.detach()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        g = ctx.g
        g.grad_out.copy_(grad)
        g.bwd.replay()
        return (None, *g.returned)


class GraphedJEPA:
    """``model(batch)`` (predictions [Tt, D]) with forward and backward replayed from CUDA graphs.

    Install it as ``model.cuda_graphs = GraphedJEPA(model)``: the module's forward then runs
    it, also when a wrapper (DeepSpeed's engine) calls the module. The returned predictions live
    in a graph's output buffer until the next call (clone them to keep them longer).

    Each batch is padded to its size bucket (see the module docstring); the first batch of a
    bucket captures its graphs (two eager warm-up passes on a side stream, then the forward and
    the backward, `torch.autograd.grad` over the trainable parameters, each captured), later
    ones replay them. All buckets share one memory pool, one set of parameter-gradient buffers
    (the backward graphs copy their gradients there) and, per batch shape, the token and
    coordinate buffers, so a bucket costs little more than its index buffers and predictions.
    The graphs read the parameters in place, so optimizer steps and checkpoint loads are seen.

    Eager ``model.forward_eager(batch)`` runs instead on CPU, with ``enabled=False``, without
    grad, in eval mode, once ``max_graphs`` buckets exist, and after a failed capture (warned
    once; the graphs are dropped). ``captures`` counts the buckets captured so far.

    ``agree``: with several data-parallel ranks, a callable that takes this rank's "the graph
    can replay this batch" and returns whether every rank can (an all-reduce). Ranks then replay
    or run eagerly together, so the parameters' gradients reach DeepSpeed's hooks in the same
    order on every rank (ZeRO-2 packs them into its reduction buckets in that order).
    """

    def __init__(
        self,
        model: JEPA,
        enabled: bool = True,
        ratio: float = 1.04,
        max_graphs: int = 64,
        agree: Any = None,
    ) -> None:
        bucket_size(1, ratio)  # validates the ratio
        self.model, self.enabled, self.ratio, self.max_graphs = model, enabled, ratio, max_graphs
        self.agree = agree
        self.graphs: dict[tuple, _StepGraphs] = {}
        self.pool: Any = None
        self.params: tuple[torch.Tensor, ...] = ()
        self.grads: tuple[torch.Tensor | None, ...] = ()  # shared by every bucket's backward
        self.batch_buffers: dict[tuple, dict[str, torch.Tensor]] = {}  # tokens, coords
        self.failed: str | None = None
        self._warned_full = False

    def _key(self, batch: PackedBatch, sizes: dict[str, int]) -> tuple:
        return (
            *self._shape_key(batch),
            batch.cu_ctx.numel(),
            batch.cu_pred.numel(),
            tuple(sorted(sizes.items())),
            torch.is_autocast_enabled("cuda"),
            torch.get_autocast_dtype("cuda"),
        )

    @staticmethod
    def _shape_key(batch: PackedBatch) -> tuple:
        t, c = batch.tokens, batch.coords
        return tuple(t.shape), t.dtype, tuple(c.shape), c.dtype

    def _inputs(self, batch: PackedBatch, sizes: dict[str, int]) -> PackedBatch:
        """A bucket's static padded batch; tokens and coords shared by buckets of one shape."""
        padded = pad_batch(batch, sizes)
        shared = self.batch_buffers.setdefault(
            self._shape_key(batch), {"tokens": padded.tokens, "coords": padded.coords}
        )
        return dataclasses.replace(padded, **shared)

    def _capture(self, batch: PackedBatch, sizes: dict[str, int]) -> _StepGraphs | None:
        inputs = padded = self._inputs(batch, sizes)
        params = tuple(p for p in self.model.parameters() if p.requires_grad)
        device = batch.tokens.device
        amp = _capture_autocast()
        try:
            if list(map(id, params)) != list(map(id, self.params)):  # first capture, or new set
                self.graphs.clear()
                self.params = params
                self.grads = tuple(torch.zeros_like(p) for p in params)
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):  # warm-up: compiles kernels, creates handles
                for _ in range(2):
                    with amp:
                        out = self.model.forward_eager(padded)
                    torch.autograd.grad(out, params, torch.zeros_like(out), allow_unused=True)
            torch.cuda.current_stream(device).wait_stream(side)
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            fwd, bwd = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
            with torch.cuda.graph(fwd, pool=self.pool):
                with amp:
                    out = self.model.forward_eager(padded)
            grad_out = torch.empty_like(out)
            # The backward's kernels run on the forward's stream, the graphs' capture stream.
            # Its gradients are temporaries of the pool; the graph copies them into the
            # shared buffers (unused parameters keep a zero gradient there, never returned).
            with torch.cuda.graph(bwd, pool=self.pool):
                grads = torch.autograd.grad(out, params, grad_out, allow_unused=True)
                used = [i for i, g in enumerate(grads) if g is not None]
                if used:
                    torch._foreach_copy_([self.grads[i] for i in used], [grads[i] for i in used])
            returned = tuple(self.grads[i] if g is not None else None for i, g in enumerate(grads))
            del grads
        except Exception as err:  # noqa: BLE001 - any capture failure falls back to eager
            self.failed = _capture_failed("the JEPA step", err)
            # Release what the graphs hold (a capture that ran out of memory must not keep it).
            self.graphs.clear()
            self.batch_buffers.clear()
            self.grads = ()
            self.params = ()
            self.pool = None
            return None
        # Detached: the autograd graph of the capture is not kept alive by the static output.
        return _StepGraphs(fwd, bwd, inputs, sizes, out.detach(), grad_out, returned)

    @property
    def captures(self) -> int:
        return len(self.graphs)

    def _graph_for(self, batch: PackedBatch) -> _StepGraphs | None:
        """This batch's bucket graphs, captured now if new and allowed; None: run eagerly."""
        if self.failed is not None:
            return None
        sizes = padded_sizes(batch, self.ratio)
        key = self._key(batch, sizes)
        g = self.graphs.get(key)
        if g is None:
            if len(self.graphs) >= self.max_graphs:
                if not self._warned_full:
                    self._warned_full = True
                    warnings.warn(
                        f"{self.max_graphs} CUDA graph buckets captured; batches of new sizes "
                        "run eagerly (raise train.cuda_graph_buckets or the bucket ratio)",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                return None
            g = self._capture(batch, sizes)
            if g is not None:
                self.graphs[key] = g
        return g

    def _unalias_grads(self, g: _StepGraphs) -> None:
        # Autograd may keep a shared gradient buffer as the parameter's .grad (it steals a
        # tensor nobody else seems to hold); the next replay would overwrite it: with gradient
        # accumulation, the earlier micro-batch's gradient. Such a .grad gets its own copy.
        for p, s in zip(self.params, g.returned, strict=True):
            if s is not None and p.grad is not None and p.grad.data_ptr() == s.data_ptr():
                p.grad = p.grad.clone()

    def __call__(self, batch: PackedBatch) -> torch.Tensor:
        if (
            not self.enabled
            or not batch.tokens.is_cuda
            or not torch.is_grad_enabled()
            or not self.model.training
        ):
            return self.model.forward_eager(batch)
        g = self._graph_for(batch)
        replay = g is not None
        if self.agree is not None:  # every rank calls it, whatever its own answer
            replay = self.agree(replay)
        if not replay:
            return self.model.forward_eager(batch)
        pad_batch(batch, g.sizes, out=g.inputs)
        self._unalias_grads(g)
        pred = _Replay.apply(g, *self.params)
        return pred[: batch.tgt_idx.numel()]


class GraphedTargetFeatures:
    """`target_features` with the target encoder's forward replayed from a CUDA graph.

    The target encoder runs every token of every sample, so for full samples (no padding: images,
    fMRI and EEG grids) its input shape is fixed by the batch shape and one graph per shape
    serves every step. Replaying it costs one launch instead of the several hundred small ops a
    deep encoder's forward issues from Python, which is what a step pays when the host, not the
    GPU, is the bottleneck. The graph reads the target's parameters in place, so EMA updates and
    checkpoint loads are seen. The targets' normalisation (`normalize_targets`: a few ops over
    the batch, position-centred by the batch's own position groups) and the gather of each
    step's target rows (their count changes) run outside.

    Eager `target_features` runs instead on CPU, with `enabled=False`, for batches with padded
    samples, and after a failed capture (a warning says why; the run goes on eagerly).
    """

    def __init__(
        self,
        target: Encoder,
        enabled: bool = True,
        max_graphs: int = 8,
        norm: str = "layer_norm",
    ) -> None:
        self.target = target
        self.enabled = enabled
        self.norm = norm
        self.max_graphs = max_graphs
        self.graphs: dict[tuple, tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.pool: Any = None
        self.failed: str | None = None

    def _encode(
        self, tokens: torch.Tensor, coords: torch.Tensor, cu: torch.Tensor, n: int
    ) -> torch.Tensor:
        packing = TokenPacking(n, cu, None)  # n_tokens is then unread
        return self.target.forward_all(tokens, coords, None, packing)

    def _capture(
        self, key: tuple, tokens: torch.Tensor, coords: torch.Tensor, packing: TokenPacking
    ):
        n = tokens.shape[1]
        static_tokens, static_coords = tokens.clone(), coords.clone()
        cu = packing.cu_all.to(tokens.device)
        amp = _capture_autocast()
        try:
            side = torch.cuda.Stream(tokens.device)
            side.wait_stream(torch.cuda.current_stream(tokens.device))
            with torch.cuda.stream(side), amp:  # warm-up: compiles kernels, creates handles
                for _ in range(2):
                    self._encode(static_tokens, static_coords, cu, n)
            torch.cuda.current_stream(tokens.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool), amp:
                out = self._encode(static_tokens, static_coords, cu, n)
        except Exception as err:  # noqa: BLE001 - any capture failure falls back to eager
            self.failed = _capture_failed("the target encoder", err)
            return None
        self.pool = graph.pool()
        self.graphs[key] = (graph, static_tokens, static_coords, out)
        return self.graphs[key]

    @torch.no_grad()
    def __call__(self, batch: PackedBatch) -> torch.Tensor:
        tokens, coords, packing = batch.tokens, batch.coords, batch.packing
        if (
            not self.enabled
            or self.failed is not None
            or not tokens.is_cuda
            or packing.valid_idx is not None
        ):
            return target_features(self.target, batch, self.norm)
        key = (
            tuple(tokens.shape),
            tokens.dtype,
            tuple(coords.shape),
            coords.dtype,
            torch.is_autocast_enabled("cuda"),
            torch.get_autocast_dtype("cuda"),
        )
        entry = self.graphs.get(key)
        if entry is None:
            if len(self.graphs) >= self.max_graphs:
                return target_features(self.target, batch, self.norm)
            entry = self._capture(key, tokens, coords, packing)
            if entry is None:
                return target_features(self.target, batch, self.norm)
        graph, static_tokens, static_coords, out = entry
        static_tokens.copy_(tokens)
        static_coords.copy_(coords)
        graph.replay()
        h = normalize_targets(out, batch, self.norm)
        return gather_tokens(h, batch.tgt_idx, batch.cu_tgt, unique_indices=False)
