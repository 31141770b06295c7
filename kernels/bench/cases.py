"""The bench's cases: attention, EMA, token gather and LayerNorm, each ours beside its baselines
at JEPA shapes, every output checked against a baseline before it is timed."""

from __future__ import annotations

import argparse
import itertools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from kernels import _dispatch
from kernels.attention import varlen_attention
from kernels.bench.baselines import apply_masks_baseline, index_select_baseline
from kernels.bench.timing import (
    EMA_MODELS,
    Preset,
    Row,
    _lengths,
    _randn,
    _try,
    measure,
    time_graph_ms,
    time_ms,
)
from kernels.ema import ema_
from kernels.gather import gather_tokens
from kernels.layernorm import layer_norm

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
