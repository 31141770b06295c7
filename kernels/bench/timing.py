"""The bench's harness: presets, result rows, timing (eager and CUDA-graph replays) and the
device ceilings (a large copy and a large matmul) each row is compared with."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


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
