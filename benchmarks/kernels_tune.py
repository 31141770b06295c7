"""Sweep the attention kernels' tile configs on a GPU; prints median ms per config and kernel.

Usage: python benchmarks/kernels_tune.py --presets vit-l,hd128 [--compile-only]
The winners go into `kernels.attention._block_sizes` by hand (fixed tiles keep compile time and
test time predictable; autotuning every shape would multiply both). Each config's output is
checked against the current default before it is timed.
"""

import argparse
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import triton  # noqa: E402

from kernels import attention as A  # noqa: E402
from kernels.bench import PRESETS, time_ms  # noqa: E402

CONFIGS = {
    "fwd": [(64, 64, 4, 3), (128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 3), (128, 32, 8, 3),
            (64, 32, 4, 3), (128, 64, 8, 2), (64, 64, 4, 2)],
    "dkdv": [(32, 64, 4, 2), (32, 64, 8, 2), (64, 64, 8, 2), (64, 128, 8, 2), (32, 128, 8, 2),
             (16, 64, 4, 2), (64, 64, 4, 3), (32, 32, 4, 2), (64, 128, 8, 3), (32, 64, 4, 3)],
    "dq": [(64, 64, 8, 2), (128, 64, 8, 2), (64, 32, 4, 2), (128, 32, 8, 2), (64, 64, 4, 3),
           (32, 64, 4, 2), (128, 128, 8, 2), (64, 64, 4, 2), (128, 64, 8, 3)],
}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="vit-l,vit-h,predictor,hd128")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--compile-only", action="store_true")
    args = p.parse_args()
    dev = torch.device("cuda")
    default = A._block_sizes
    for name in args.presets.split(","):
        pre = PRESETS[name]
        gen = torch.Generator().manual_seed(0)
        if name == "hd128":
            lengths = [pre.tokens] * 8
        else:
            lengths = torch.randint(pre.tokens // 4, pre.tokens + 1, (args.batch,), generator=gen)
            lengths = lengths.tolist()
        cu = torch.tensor([0, *lengths], device=dev).cumsum(0).to(torch.int32)
        mx, total = max(lengths), sum(lengths)
        q, k, v, do = (
            torch.randn(total, pre.heads, pre.head_dim, device=dev, dtype=torch.bfloat16)
            for _ in range(4)
        )
        scale = pre.head_dim**-0.5
        o, lse = A._triton_forward(q, k, v, cu, cu, mx, mx, False, scale)
        want = A._triton_backward(do, q, k, v, o, lse, cu, cu, mx, mx, False, scale)
        bd = triton.next_power_of_2(pre.head_dim)
        fwd_call = functools.partial(A._triton_forward, q, k, v, cu, cu, mx, mx, False, scale)
        bwd_call = functools.partial(
            A._triton_backward, do, q, k, v, o, lse, cu, cu, mx, mx, False, scale
        )
        for kind, configs in CONFIGS.items():
            for cfg in configs:

                def patched(b, d, kd, fp32=False, kind=kind, cfg=cfg):
                    return cfg if kd == kind else default(b, d, kd, fp32)

                A._block_sizes = patched
                fn = fwd_call if kind == "fwd" else bwd_call
                try:
                    got = fn()
                    ref = (o,) if kind == "fwd" else want
                    ok = all(
                        torch.allclose(g.float(), r.float(), atol=2e-2, rtol=2e-2)
                        for g, r in zip(got[: len(ref)], ref, strict=True)
                    )
                    ms = None if args.compile_only else time_ms(fn, dev, 20, 3)
                    msg = "compiled" if ms is None else f"{ms:.4f} ms"
                    print(f"{name} {kind} {cfg} {msg}{'' if ok else ' WRONG'}", flush=True)
                except Exception as exc:  # out of resources etc.: report and go on
                    print(f"{name} {kind} {cfg} failed: {type(exc).__name__}", flush=True)
                finally:
                    A._block_sizes = default
        print(f"{name} default {[default(bd, dev, kd) for kd in CONFIGS]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
