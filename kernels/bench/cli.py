"""The `python -m kernels.bench` command line: pick kernels and presets, run, print the table,
write the JSON report."""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from kernels import _dispatch
from kernels.attention import load_tiles
from kernels.bench.cases import (
    bench_attention,
    bench_ema,
    bench_gather,
    bench_layernorm,
)
from kernels.bench.timing import (
    EMA_MODELS,
    PRESETS,
    Report,
    _finish,
    measure_ceilings,
)
from kernels.gather import load_bwd_tile

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
