"""Sweep the fused EMA kernel's chunk / block / warps on a GPU against `_foreach_lerp_`.

Usage: python benchmarks/ema_tune.py [--model vit-l] [--src fp32,bf16]

Times CUDA-graph replays (device time) of one update over a real ViT parameter list, for each
(CHUNK, BLOCK, num_warps) of `kernels.ema`, and `torch._foreach_lerp_` in the same process, and
prints GB/s on the payload (read target + read source + write target) and the ratio to lerp.
Every config's result is checked against `torch.lerp_` before it is timed.
"""

import argparse
import math
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from kernels import ema as E  # noqa: E402
from kernels.bench import EMA_MODELS, measure, vit_param_shapes  # noqa: E402

CONFIGS = [(4096, 4096, 8), (8192, 4096, 8), (16384, 4096, 8), (32768, 4096, 8),
           (16384, 2048, 4), (8192, 2048, 4), (65536, 8192, 8), (16384, 8192, 8)]  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vit-l", choices=sorted(EMA_MODELS))
    p.add_argument("--src", default="fp32,bf16")
    p.add_argument("--reps", type=int, default=15)
    args = p.parse_args()
    dev = torch.device("cuda")
    timing = SimpleNamespace(reps=args.reps, warmup=2, timing="graph")
    shapes = vit_param_shapes(*EMA_MODELS[args.model])
    n = sum(math.prod(s) for s in shapes)
    m = 0.998
    default = (E.CHUNK, E.BLOCK, E.EMA_WARPS)
    for name in args.src.split(","):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
        targets = [torch.randn(s, device=dev) for s in shapes]
        sources = [torch.randn(s, device=dev).to(dtype) for s in shapes]
        nbytes = n * (8 + sources[0].element_size())
        src32 = sources if dtype == torch.float32 else [s.float() for s in sources]
        lerp_ms = measure(
            lambda t=targets, s=src32: torch._foreach_lerp_(t, s, 1 - m), dev, timing, 4
        )[0]
        print(f"src {name}: _foreach_lerp_ {lerp_ms:.3f} ms {nbytes / lerp_ms / 1e6:.0f} GB/s")
        for chunk, block, warps in CONFIGS:
            E.CHUNK, E.BLOCK, E.EMA_WARPS = chunk, block, warps
            E._PLANS.clear()
            try:
                pairs = list(zip(targets, sources, strict=True))
                want = [t[:4096].clone().lerp_(s[:4096].float(), 1 - m) for t, s in pairs]
                E.ema_(targets, sources, m)
                ok = all(
                    torch.allclose(t[:4096], w, atol=1e-6)
                    for t, w in zip(targets, want, strict=True)
                )
                ms = measure(lambda t=targets, s=sources: E.ema_(t, s, m), dev, timing, 4)[0]
                verdict = "" if ok else " WRONG"
                print(
                    f"src {name}: chunk {chunk} block {block} warps {warps}: {ms:.3f} ms "
                    f"{nbytes / ms / 1e6:.0f} GB/s {lerp_ms / ms:.2f}x lerp{verdict}",
                    flush=True,
                )
            except Exception as exc:
                print(f"src {name}: chunk {chunk} failed: {type(exc).__name__}: {exc}", flush=True)
            finally:
                E.CHUNK, E.BLOCK, E.EMA_WARPS = default
                E._PLANS.clear()
    return 0


if __name__ == "__main__":
    sys.exit(main())
