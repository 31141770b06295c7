"""``python -m kernels.bench``: time the kernels against what a JEPA user runs today.

Side by side in one process, at JEPA shapes: varlen attention vs ``scaled_dot_product_attention``
on the padded batch (and ``torch.nn.attention.varlen`` / FlexAttention with a document mask where
they exist); fused EMA vs I-JEPA's per-parameter loop, V-JEPA 2's ``_foreach_mul_`` +
``_foreach_add_`` and ``_foreach_lerp_`` on a real ViT parameter list; token gather vs I-JEPA's
``apply_masks`` and ``index_select``. Each row reports the median time, throughput, its share of
this device's ceilings (a large copy and a large matmul, measured in the same run) and the
speedup over the best baseline. Every case first checks our output against a baseline, so a
broken kernel cannot report a time. On CPU the torch reference paths run at small sizes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from kernels import _dispatch
from kernels.attention import load_tiles, varlen_attention
from kernels.ema import ema_
from kernels.gather import (
    apply_masks_baseline,
    gather_tokens,
    index_select_baseline,
    load_bwd_tile,
)
from kernels.layernorm import layer_norm


@dataclass(frozen=True)
class Preset:
    """A JEPA encoder/predictor shape: tokens per sample, heads, head dim, width."""

    tokens: int
    heads: int
    head_dim: int

    @property
    def width(self) -> int:
        return self.heads * self.head_dim


# I-JEPA / V-JEPA encoders at 224 px (ViT-B/16, ViT-L/16: 196 tokens; ViT-H/14: 256 tokens, head
# dim 80) and the narrow predictor (width 384) that sees context plus mask tokens.
PRESETS = {
    "vit-b": Preset(196, 12, 64),
    "vit-l": Preset(196, 16, 64),
    "vit-h": Preset(256, 16, 80),
    "predictor": Preset(196, 12, 32),
    "hd128": Preset(2048, 16, 128),  # long-sequence point against FlashAttention-3's hd128 numbers
}
# (width, depth) of the ViTs whose parameter lists the EMA case updates.
EMA_MODELS = {"vit-s": (384, 12), "vit-b": (768, 12), "vit-l": (1024, 24), "vit-h": (1280, 32)}


@dataclass
class Row:
    kernel: str
    case: str
    impl: str
    phase: str
    ms: float | None
    throughput: float | None = None
    unit: str = ""
    ceiling_share: float | None = None
    speedup: float | None = None
    baseline: bool = True
    note: str = ""
    eager_ms: float | None = None  # one synchronised call, host launch work included
    speedup_eager: float | None = None


@dataclass
class Report:
    device: str
    kernel_backend: str
    ceilings: dict = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    config: dict = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_CPU_GEN = torch.Generator().manual_seed(1234)


def _randn(shape, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normal random tensor drawn on the host: a failed CUDA-graph capture can leave the device
    generator unusable (\"offset increment outside graph capture\"), the host one never."""
    return torch.randn(tuple(shape), generator=_CPU_GEN).to(device=device, dtype=dtype)


def time_ms(fn: Callable[[], object], device: torch.device, reps: int, warmup: int) -> float:
    """Median wall time of ``fn`` in milliseconds (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def time_graph_ms(fn: Callable[[], object], reps: int, warmup: int, inner: int = 10) -> float:
    """Median device time of one ``fn`` call, from replays of a CUDA graph of ``inner`` calls.

    Replays carry no host work, so this is what the kernels cost when the host keeps ahead of
    the device (as in a training step of real size), not Python and launch overhead.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as CUDA graphs require
        for _ in range(max(warmup, 1)):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    # Capture on the warm-up stream: autograd's gradient accumulators remember the stream they
    # were created on, and one left on another stream breaks the capture.
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        for _ in range(inner):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / inner)
    del graph
    return statistics.median(times)


def measure(
    fn: Callable[[], object], device: torch.device, args: argparse.Namespace, inner: int = 10
) -> tuple[float | None, float | None, str]:
    """(ms, eager ms, note): ``ms`` is graph-replay time on CUDA with ``--timing graph``."""
    eager, err = _try(lambda: time_ms(fn, device, args.reps, args.warmup))
    if err or device.type != "cuda" or args.timing != "graph":
        return eager, eager, err
    ms, gerr = _try(lambda: time_graph_ms(fn, args.reps, args.warmup, inner))
    if gerr:  # e.g. a baseline that syncs with the host: report its eager time, and say so
        return eager, eager, f"eager time (no CUDA graph: {gerr.removeprefix('unavailable: ')})"
    return ms, eager, ""


def measure_ceilings(device: torch.device, quick: bool, reps: int) -> dict:
    """Copy bandwidth (GB/s, read + write) and matmul throughput (TFLOP/s) of this device."""
    nbytes = (256 if quick else 1024) * 2**20
    src = _randn((nbytes // 4,), device)
    dst = torch.empty_like(src)
    copy_ms = time_ms(lambda: dst.copy_(src), device, reps, 2)
    n = 1024 if device.type == "cpu" else 8192
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    a = _randn((n, n), device, dtype)
    b = _randn((n, n), device, dtype)
    mm_ms = time_ms(lambda: a @ b, device, reps, 2)
    return {
        "copy_gbps": 2 * nbytes / copy_ms / 1e6,
        "copy_bytes": nbytes,
        "matmul_tflops": 2 * n**3 / mm_ms / 1e9,
        "matmul": f"{n}x{n}x{n} {str(dtype).replace('torch.', '')}",
    }


def _lengths(batch: int, tokens: int, keep: tuple[float, float], gen: torch.Generator) -> list[int]:
    lo = max(1, round(keep[0] * tokens))
    hi = max(lo, round(keep[1] * tokens))
    return torch.randint(lo, hi + 1, (batch,), generator=gen).tolist()


def _finish(rows: list[Row]) -> None:
    """Speedup of our rows over the fastest baseline of the same case and phase."""
    for r in rows:
        if r.baseline or r.ms is None:
            continue
        base = [
            b.ms
            for b in rows
            if b.baseline and b.ms is not None and b.case == r.case and b.phase == r.phase
        ]
        if base:
            r.speedup = min(base) / r.ms
        base_eager = [
            b.eager_ms
            for b in rows
            if b.baseline and b.eager_ms is not None and b.case == r.case and b.phase == r.phase
        ]
        if base_eager and r.eager_ms:
            r.speedup_eager = min(base_eager) / r.eager_ms


def _try(fn: Callable[[], float]) -> tuple[float | None, str]:
    try:
        return fn(), ""
    except Exception as exc:  # a baseline missing on this build/device is reported, not fatal
        return None, f"unavailable: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"


# ----------------------------------------------------------------------------- attention


def bench_attention(
    name: str, preset: Preset, args: argparse.Namespace, device: torch.device, ceil: dict
) -> list[Row]:
    gen = torch.Generator().manual_seed(args.seed)
    lengths = _lengths(args.batch, preset.tokens, args.keep, gen)
    h, d = preset.heads, preset.head_dim
    dtype = args.dtype
    total, max_len = sum(lengths), max(lengths)
    cu = torch.tensor([0, *lengths], device=device).cumsum(0).to(torch.int32)
    q, k, v = (_randn((total, h, d), device, dtype) for _ in range(3))
    case = f"{name} B={args.batch} len {min(lengths)}-{max_len} H={h} D={d}"
    if args.causal:
        case += " causal"
    pairs = sum(n * n for n in lengths) / (2 if args.causal else 1)
    fwd_flops = 4 * pairs * h * d
    rows: list[Row] = []

    def row(impl, phase, ms, eager, flops, baseline, note):
        tf = flops / ms / 1e9 if ms else None
        share = tf / ceil["matmul_tflops"] if tf else None
        rows.append(
            Row(
                "attention",
                case,
                impl,
                phase,
                ms,
                tf,
                "TFLOP/s",
                share,
                None,
                baseline,
                note,
                eager,
            )
        )

    def add(impl: str, fns: tuple[Callable, Callable, Callable], baseline: bool, note: str = ""):
        fwd, bwd, both = fns
        f_ms, f_eager, f_err = measure(fwd, device, args)
        row(
            impl,
            "fwd",
            f_ms,
            f_eager,
            fwd_flops,
            baseline,
            "; ".join(x for x in (f_err, note) if x),
        )
        b_eager, b_err = _try(lambda: time_ms(bwd, device, args.reps, args.warmup))
        b_ms, b_note = b_eager, b_err
        if device.type == "cuda" and args.timing == "graph" and f_ms and not f_err and not b_err:
            # A backward captured alone would run on the forward's (uncaptured) stream, so the
            # graph times forward + backward and the backward is that minus the forward.
            both_ms, err = _try(lambda: time_graph_ms(both, args.reps, args.warmup))
            if err:
                b_note = f"eager time (no CUDA graph: {err.removeprefix('unavailable: ')})"
            else:
                b_ms, b_note = both_ms - f_ms, "graph: fwd+bwd minus fwd"
        b_note = "; ".join(x for x in (b_note, note) if x)
        row(impl, "bwd", b_ms, b_eager, 2.5 * fwd_flops, baseline, b_note)

    def fwd_bwd(run: Callable[[list[torch.Tensor]], torch.Tensor], inputs: list[torch.Tensor]):
        leaves = [t.detach().requires_grad_() for t in inputs]
        out = run(leaves)
        grad = _randn(out.shape, out.device, out.dtype)

        def bwd():
            for t in leaves:
                t.grad = None
            out.backward(grad, retain_graph=True)

        fresh = [t.detach().requires_grad_() for t in inputs]  # no graph kept from outside

        def both():
            for t in fresh:
                t.grad = None
            run(fresh).backward(grad)

        def fwd():
            with torch.no_grad():
                return run(inputs)

        return fwd, bwd, both

    ours = lambda t: varlen_attention(t[0], t[1], t[2], cu, cu, max_len, max_len, args.causal)  # noqa: E731
    fns = fwd_bwd(ours, [q, k, v])
    out_ours = fns[0]()

    # Padded batch [B, H, N, D] plus a key-padding mask: the usual way without varlen support.
    pad = torch.zeros(args.batch, max_len, dtype=torch.bool, device=device)
    for i, n in enumerate(lengths):
        pad[i, :n] = True
    qp, kp, vp = (
        torch.zeros(args.batch, max_len, h, d, device=device, dtype=dtype) for _ in range(3)
    )
    qp[pad], kp[pad], vp[pad] = q, k, v
    qp, kp, vp = (t.transpose(1, 2).contiguous() for t in (qp, kp, vp))
    mask = pad[:, None, None, :]
    if args.causal:
        # Bottom-right aligned within each sample's valid prefix equals top-left here (Lq == Lk).
        mask = mask & torch.ones(max_len, max_len, dtype=torch.bool, device=device).tril()

    def sdpa_masked(t):
        return F.scaled_dot_product_attention(t[0], t[1], t[2], attn_mask=mask)

    want = sdpa_masked([qp, kp, vp]).transpose(1, 2)[pad]
    tol = 2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4
    if not torch.allclose(out_ours.float(), want.float(), atol=tol, rtol=tol):
        raise RuntimeError(f"attention {case}: our output differs from SDPA; not timing it")
    impl = "ours (triton)" if _dispatch.use_triton("auto", q) else "ours (torch reference)"
    add(impl, fns, baseline=False)
    add("sdpa padded + mask", fwd_bwd(sdpa_masked, [qp, kp, vp]), baseline=True)
    if not args.causal:
        # Flash backend cannot take a padding mask: this computes padded tokens too (upper bound).
        add(
            "sdpa padded, no mask",
            fwd_bwd(lambda t: F.scaled_dot_product_attention(*t), [qp, kp, vp]),
            baseline=True,
            note="ignores padding (not equivalent)",
        )
    if device.type == "cuda":
        _attention_torch_varlen(args, q, k, v, cu, max_len, add, fwd_bwd)
        if not args.no_flex:
            _attention_flex(args, device, q, k, v, lengths, add, fwd_bwd)
    return rows


def _attention_torch_varlen(args, q, k, v, cu, max_len, add, fwd_bwd) -> None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return
    if args.causal:
        return  # its causal flag changed across releases (is_causal, window_size): non-causal only
    add(
        "torch varlen_attn",
        fwd_bwd(lambda t: varlen_attn(t[0], t[1], t[2], cu, cu, max_len, max_len), [q, k, v]),
        baseline=True,
    )


def _attention_flex(args, device, q, k, v, lengths, add, fwd_bwd) -> None:
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return
    doc = torch.repeat_interleave(
        torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device)
    )
    causal = args.causal

    def mask_mod(b, h, qi, ki):
        same = doc[qi] == doc[ki]
        return same & (qi >= ki) if causal else same

    total = doc.numel()
    block_mask = create_block_mask(mask_mod, None, None, total, total, device=str(device))
    compiled = torch.compile(flex_attention, dynamic=False)

    def run(t):
        o = compiled(*(x.transpose(0, 1).unsqueeze(0) for x in t), block_mask=block_mask)
        return o.squeeze(0).transpose(0, 1)

    add("flex_attention doc mask", fwd_bwd(run, [q, k, v]), baseline=True)


# ----------------------------------------------------------------------------- EMA


def vit_param_shapes(width: int, depth: int, patch: int = 16) -> list[tuple[int, ...]]:
    """Parameter shapes of a timm-style ViT encoder (patch embed, blocks, final norm)."""
    shapes: list[tuple[int, ...]] = [(width, 3, patch, patch), (width,)]
    hidden = 4 * width
    for _ in range(depth):
        shapes += [(width,), (width,), (3 * width, width), (3 * width,), (width, width), (width,)]
        shapes += [(width,), (width,), (hidden, width), (hidden,), (width, hidden), (width,)]
    return shapes + [(width,), (width,)]


def bench_ema(args: argparse.Namespace, device: torch.device, ceil: dict) -> list[Row]:
    shapes = vit_param_shapes(*EMA_MODELS[args.ema_model])
    rows: list[Row] = []
    for src_dtype in (torch.float32, torch.bfloat16):
        rows += _ema_case(shapes, src_dtype, args, device, ceil)
    return rows


def _ema_case(
    shapes: list[tuple[int, ...]],
    src_dtype: torch.dtype,
    args: argparse.Namespace,
    device: torch.device,
    ceil: dict,
) -> list[Row]:
    m = 0.998
    n_params = sum(math.prod(s) for s in shapes)
    targets = [_randn(s, device) for s in shapes]
    sources = [_randn(s, device, src_dtype) for s in shapes]
    check = [t.clone() for t in targets[:4]]
    ema_(targets[:4], sources[:4], m)
    for c, s in zip(check, sources[:4], strict=True):
        c.lerp_(s.float(), 1 - m)
    if not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(targets[:4], check, strict=True)):
        raise RuntimeError("ema_: output differs from torch.lerp_; not timing it")
    src_name = str(src_dtype).replace("torch.", "")
    case = f"{args.ema_model} {n_params / 1e6:.0f}M params, {len(shapes)} tensors, src {src_name}"
    # Read target + read source + write target.
    nbytes = n_params * (8 + sources[0].element_size())

    def loop():
        for t, s in zip(targets, sources, strict=True):
            t.mul_(m).add_(s, alpha=1 - m)

    def foreach_mul_add():
        torch._foreach_mul_(targets, m)
        torch._foreach_add_(targets, sources, alpha=1 - m)

    def foreach_lerp():
        src = sources if src_dtype == torch.float32 else [s.float() for s in sources]
        torch._foreach_lerp_(targets, src, 1 - m)

    on_triton = _dispatch.use_triton("auto", targets[0])
    lerp_note = "" if src_dtype == torch.float32 else "incl. .float() copies"
    cands = [
        (
            "ours (triton)" if on_triton else "ours (torch reference)",
            lambda: ema_(targets, sources, m),
            False,
            "",
        ),
        ("per-param mul_+add_ (I-JEPA)", loop, True, ""),
        ("_foreach_mul_+_foreach_add_ (V-JEPA 2)", foreach_mul_add, True, ""),
        ("_foreach_lerp_", foreach_lerp, True, lerp_note),
    ]
    rows = []
    for name, fn, baseline, note in cands:
        ms, eager, err = measure(fn, device, args, inner=4)
        gbps = nbytes / ms / 1e6 if ms else None
        share = gbps / ceil["copy_gbps"] if gbps else None
        note = "; ".join(x for x in (err, note) if x)
        rows.append(
            Row("ema", case, name, "update", ms, gbps, "GB/s", share, None, baseline, note, eager)
        )
    return rows


# ----------------------------------------------------------------------------- gather


def _bandwidth_rows(
    kernel: str,
    case: str,
    label: str,
    baseline: bool,
    phases: tuple,
    device: torch.device,
    args: argparse.Namespace,
    ceil: dict,
    n_sets: int,
) -> list[Row]:
    """Time each (phase, fn, payload bytes) and report GB/s and the share of the copy ceiling."""
    rows = []
    for phase, fn, nbytes in phases:
        ms, eager, err = measure(fn, device, args, inner=max(n_sets, 10))
        gbps = nbytes / ms / 1e6 if ms else None
        share = gbps / ceil["copy_gbps"] if gbps else None
        rows.append(
            Row(kernel, case, label, phase, ms, gbps, "GB/s", share, None, baseline, err, eager)
        )
    return rows


def bench_gather(
    name: str, preset: Preset, args: argparse.Namespace, device: torch.device, ceil: dict
) -> list[Row]:
    gen = torch.Generator().manual_seed(args.seed)
    b, n, d = args.batch, preset.tokens, preset.width
    # apply_masks needs the same K for every sample, so all rows keep K (the mean keep fraction).
    kk = max(1, round(n * (args.keep[0] + args.keep[1]) / 2))
    keep = torch.stack([torch.randperm(n, generator=gen)[:kk] for _ in range(b)]).to(device)
    idx = keep.reshape(-1).to(torch.int32)
    cu = torch.arange(0, b * kk + 1, kk, device=device, dtype=torch.int32)
    dtype = args.dtype
    x = _randn((b, n, d), device, dtype)
    pos = _randn((n, d), device, dtype)
    case = f"{name} B={b} N={n} K={kk} D={d} +pos"
    e = x.element_size()
    # Fewest bytes: each kept x row read once, pos read once (its rows repeat across samples and
    # stay in cache), out written once; backward reads dout and writes all of dx and dpos.
    fwd_bytes = 2 * b * kk * d * e + n * d * e + idx.numel() * 4
    bwd_bytes = b * kk * d * e + b * n * d * e + n * d * e
    impl = "ours (triton)" if _dispatch.use_triton("auto", x) else "ours (torch reference)"

    runs = {
        impl: (lambda xx, pp: gather_tokens(xx, idx, cu, pp, unique_indices=True), False),
        "apply_masks (I-JEPA)": (
            lambda xx, pp: apply_masks_baseline(xx + pp, keep).reshape(-1, d),
            True,
        ),
        "index_select": (lambda xx, pp: index_select_baseline(xx + pp, idx, cu), True),
    }
    want = runs["index_select"][0](x, pos)
    if not torch.equal(runs[impl][0](x, pos), want):
        raise RuntimeError(f"gather {case}: our output differs from index_select; not timing it")
    # Bandwidth-bound: rotate through enough input sets that they cannot all sit in the
    # device's L2 cache (about 50 MB on an H100/H200), so the numbers are memory numbers.
    n_sets = max(1, min(16, math.ceil(256 * 2**20 / x.nbytes))) if device.type == "cuda" else 1
    xs = [x] + [_randn(x.shape, device, dtype) for _ in range(n_sets - 1)]
    rows = []
    for label, (run, baseline) in runs.items():
        leaves = [(xx.detach().requires_grad_(), pos.detach().requires_grad_()) for xx in xs]
        with torch.no_grad():  # the leaves' first autograd use is inside the timed calls
            out0 = run(xs[0], pos)
        grad = _randn(out0.shape, device, out0.dtype)
        turn = itertools.count()

        def fwd(run=run, turn=turn):
            with torch.no_grad():
                run(xs[next(turn) % n_sets], pos)

        def fwd_bwd(run=run, leaves=leaves, grad=grad, turn=turn):
            xl, pl = leaves[next(turn) % n_sets]
            xl.grad = pl.grad = None
            run(xl, pl).backward(grad)

        phases = (("fwd", fwd, fwd_bytes), ("fwd+bwd", fwd_bwd, fwd_bytes + bwd_bytes))
        rows += _bandwidth_rows("gather", case, label, baseline, phases, device, args, ceil, n_sets)
    return rows


def bench_layernorm(
    name: str, preset: Preset, args: argparse.Namespace, device: torch.device, ceil: dict
) -> list[Row]:
    """A block's pre-norm at this preset's width over every token of the batch: fp32 input (the
    residual stream under autocast), output in the bench dtype (what the next linear reads)."""
    rows_n, d = args.batch * preset.tokens, preset.width
    out_dtype = args.dtype
    x = _randn((rows_n, d), device)
    w = 1.0 + 0.1 * _randn((d,), device)
    b = 0.1 * _randn((d,), device)
    case = f"{name} rows={rows_n} D={d} fp32 -> {str(out_dtype).removeprefix('torch.')}"
    o = torch.empty(0, dtype=out_dtype).element_size()
    # Fewest bytes: forward reads x, writes y (+ mean/rstd); backward reads x and dy, writes dx.
    fwd_bytes = rows_n * d * (4 + o) + rows_n * 8
    bwd_bytes = rows_n * d * (4 + o + 4) + rows_n * 8
    impl = "ours (triton)" if _dispatch.use_triton("auto", x) else "ours (torch reference)"
    runs = {
        impl: (lambda xx, ww, bb: layer_norm(xx, ww, bb, 1e-6, out_dtype), False),
        "F.layer_norm + cast (autocast)": (
            lambda xx, ww, bb: F.layer_norm(xx, (d,), ww, bb, 1e-6).to(out_dtype),
            True,
        ),
    }
    want = runs["F.layer_norm + cast (autocast)"][0](x, w, b)
    got = runs[impl][0](x, w, b)
    tol = 1e-5 if out_dtype == torch.float32 else 2e-2
    if not torch.allclose(got.float(), want.float(), atol=tol, rtol=tol):
        raise RuntimeError(f"layernorm {case}: ours differs from F.layer_norm; not timing it")
    n_sets = max(1, min(16, math.ceil(256 * 2**20 / x.nbytes))) if device.type == "cuda" else 1
    xs = [x] + [_randn(x.shape, device) for _ in range(n_sets - 1)]
    grad = _randn(want.shape, device, out_dtype)
    rows = []
    for label, (run, baseline) in runs.items():
        leaves = [
            (xx.detach().requires_grad_(), w.detach().requires_grad_(), b.detach().requires_grad_())
            for xx in xs
        ]
        turn = itertools.count()

        def fwd(run=run, turn=turn):
            with torch.no_grad():
                run(xs[next(turn) % n_sets], w, b)

        def fwd_bwd(run=run, leaves=leaves, turn=turn):
            xl, wl, bl = leaves[next(turn) % n_sets]
            xl.grad = wl.grad = bl.grad = None
            run(xl, wl, bl).backward(grad)

        phases = (("fwd", fwd, fwd_bytes), ("fwd+bwd", fwd_bwd, fwd_bytes + bwd_bytes))
        rows += _bandwidth_rows(
            "layernorm", case, label, baseline, phases, device, args, ceil, n_sets
        )
    return rows


# ----------------------------------------------------------------------------- CLI


def _profile(args, device, rows_fn: Callable[[], object], tag: str) -> None:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    out = Path(args.profile)
    out.mkdir(parents=True, exist_ok=True)
    with profile(activities=acts) as prof:
        rows_fn()
    prof.export_chrome_trace(str(out / f"{tag}.json"))


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(report: Report) -> None:
    c = report.ceilings
    print(f"device: {report.device} | kernels run as: {report.kernel_backend}")
    print(
        f"ceilings: copy {c['copy_gbps']:.1f} GB/s ({c['copy_bytes'] / 2**20:.0f} MiB), "
        f"matmul {c['matmul_tflops']:.2f} TFLOP/s ({c['matmul']})"
    )
    graph = report.config.get("timing") == "graph"
    header = (
        f"{'impl':<42} {'phase':<8} {'median ms':>10} {'throughput':>18} {'% ceil':>7} "
        f"{'speedup':>8}" + (f" {'eager ms':>9} {'eager x':>8}" if graph else "")
    )
    last = None
    for r in report.rows:
        if (r.kernel, r.case) != last:
            print(f"\n[{r.kernel}] {r.case}\n{header}")
            last = (r.kernel, r.case)
        tp = f"{_fmt(r.throughput, '.2f')} {r.unit}" if r.throughput else "-"
        share = f"{100 * r.ceiling_share:.0f}%" if r.ceiling_share else "-"
        sp = f"{r.speedup:.2f}x" if r.speedup else ""
        ms = _fmt(r.ms, ".3f")
        extra = ""
        if graph:
            spe = f"{r.speedup_eager:.2f}x" if r.speedup_eager else ""
            extra = f" {_fmt(r.eager_ms, '.3f'):>9} {spe:>8}"
        print(f"{r.impl:<42} {r.phase:<8} {ms:>10} {tp:>18} {share:>7} {sp:>8}{extra}  {r.note}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m kernels.bench", description=__doc__.split("\n")[0])
    p.add_argument(
        "--kernels",
        default="attention,ema,gather,layernorm",
        help="comma list of kernels to time",
    )
    p.add_argument("--presets", default=None, help=f"comma list of {sorted(PRESETS)}")
    p.add_argument("--batch", type=int, default=None, help="samples per batch")
    p.add_argument("--keep", default="0.25,1.0", help="min,max fraction of tokens kept per sample")
    p.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"])
    p.add_argument("--causal", action="store_true", help="causal attention")
    p.add_argument("--ema-model", default=None, choices=sorted(EMA_MODELS))
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per row (median)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--timing",
        choices=("graph", "eager"),
        default="graph",
        help="on CUDA: 'graph' times CUDA-graph replays (device time, no launch overhead; eager "
        "times are printed beside), 'eager' one synchronised call per repetition",
    )
    p.add_argument(
        "--tiles",
        default=None,
        help="JSON of attention tiles {kind: {'64' or '128/long': [BLOCK_M, BLOCK_N, warps, "
        "stages]}} (what benchmarks/kernels_tune.py --write saves) instead of the built-in ones",
    )
    p.add_argument(
        "--gather-tile",
        default=None,
        help="JSON of the gather backward's launch setting {block_n, block_d, unroll, warps, "
        "chunks} (what benchmarks/gather_tune.py --write saves) instead of the built-in one",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-flex", action="store_true", help="skip FlexAttention (compiles per shape)")
    p.add_argument("--full", action="store_true", help="GPU-sized shapes even on CPU (slow there)")
    p.add_argument("--json", default=None, help="write the report as JSON here")
    p.add_argument("--profile", default=None, help="write torch.profiler traces to this folder")
    args = p.parse_args(argv)
    on_gpu = torch.cuda.is_available()
    big = on_gpu or args.full
    args.presets = (
        args.presets or ("vit-b,vit-l,vit-h,predictor" if big else "vit-b,predictor")
    ).split(",")
    args.batch = args.batch or (64 if big else 4)
    args.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("bf16" if on_gpu else "fp32")
    ]
    args.ema_model = args.ema_model or ("vit-l" if big else "vit-s")
    args.reps = args.reps or (20 if on_gpu else 5)
    if not on_gpu:
        args.timing = "eager"  # CUDA graphs need a GPU
    lo, hi = (float(x) for x in args.keep.split(","))
    if not 0 < lo <= hi <= 1:
        p.error(f"--keep needs 0 < min <= max <= 1, got {args.keep}")
    args.keep = (lo, hi)
    for name in args.presets:
        if name not in PRESETS:
            p.error(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    backend = (
        "triton"
        if _dispatch.use_triton("auto", torch.empty(0, device=device))
        else "torch reference"
    )
    if device.type == "cpu":
        print(
            f"CPU run: kernels execute their torch reference paths ({backend}) at small sizes "
            f"(batch {args.batch}, {args.ema_model} EMA); numbers are not GPU kernel numbers."
        )
    if args.tiles:
        tiles = load_tiles(args.tiles)
        print(f"attention tiles from {args.tiles}: {tiles}")
    if args.gather_tile:
        print(f"gather backward tile from {args.gather_tile}: {load_bwd_tile(args.gather_tile)}")
    report = Report(dev_name, backend, config={k: str(v) for k, v in vars(args).items()})
    report.ceilings = measure_ceilings(
        device, quick=device.type == "cpu" and not args.full, reps=args.reps
    )
    kernels = args.kernels.split(",")
    t0 = time.perf_counter()
    for kernel in kernels:
        if kernel == "ema":
            jobs = [("ema", lambda: bench_ema(args, device, report.ceilings))]
        elif kernel in ("attention", "gather", "layernorm"):
            fn = {"attention": bench_attention, "gather": bench_gather}.get(kernel, bench_layernorm)
            jobs = [
                (
                    f"{kernel}-{name}",
                    lambda fn=fn, name=name: fn(name, PRESETS[name], args, device, report.ceilings),
                )
                for name in args.presets
            ]
        else:
            print(f"unknown kernel {kernel!r}", file=sys.stderr)
            return 2
        for tag, job in jobs:
            rows = job()
            _finish(rows)
            report.rows += rows
            if args.profile:
                _profile(args, device, job, tag)
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps({**asdict(report)}, indent=2))
    ours = [r for r in report.rows if not r.baseline and r.speedup]
    geo = math.exp(statistics.fmean(math.log(r.speedup) for r in ours)) if ours else float("nan")
    print(
        f"\nbench: {len(report.rows)} rows, {len(ours)} of ours, geometric-mean speedup over best "
        f"baseline {geo:.2f}x on {dev_name} ({backend}) in {time.perf_counter() - t0:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
