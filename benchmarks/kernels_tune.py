"""Sweep the attention kernels' tile configs on a GPU; print median device ms per config.

Usage: python benchmarks/kernels_tune.py [--presets vit-b,vit-l,hd128] [--kinds fwd,dkdv,dq]
           [--write tiles.json] [--compile-only]

Times CUDA-graph replays (device time, as `python -m kernels.bench` does by default). Each config's
output is checked against the built-in tiles' output before it is timed. `--write` saves, for every
(kernel, padded head dim, short/long sequences), the config with the best geometric-mean time over
the presets that share it, in the JSON `python -m kernels.bench --tiles FILE` reads. Winners that
hold up go into `kernels.attention._block_sizes` as the defaults (fixed tiles keep compile and
test time predictable; autotuning every shape would multiply both).
"""

import argparse
import functools
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import triton  # noqa: E402

from kernels import attention as A  # noqa: E402
from kernels.bench import PRESETS, measure  # noqa: E402

CONFIGS = {
    "fwd": [(64, 64, 4, 3), (128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 3), (128, 32, 4, 3),
            (64, 32, 4, 3), (128, 64, 8, 2), (64, 64, 4, 2), (128, 128, 8, 2), (64, 128, 4, 3),
            (128, 64, 8, 4), (64, 64, 8, 3)],
    "dkdv": [(32, 64, 4, 3), (32, 64, 4, 2), (64, 64, 8, 2), (64, 128, 8, 2), (32, 128, 8, 2),
             (64, 64, 4, 3), (32, 32, 4, 2), (64, 128, 8, 3), (16, 64, 4, 2)],
    "dq": [(64, 32, 4, 2), (64, 64, 8, 2), (128, 64, 8, 2), (128, 32, 8, 2), (64, 64, 4, 3),
           (32, 64, 4, 2), (128, 128, 8, 2), (128, 64, 8, 3)],
}  # fmt: skip


def _inputs(name: str, batch: int, dev: torch.device):
    pre = PRESETS[name]
    gen = torch.Generator().manual_seed(0)
    if name == "hd128":
        lengths = [pre.tokens] * 8
    else:
        lengths = torch.randint(pre.tokens // 4, pre.tokens + 1, (batch,), generator=gen).tolist()
    cu = torch.tensor([0, *lengths], device=dev).cumsum(0).to(torch.int32)
    total = sum(lengths)
    q, k, v, do = (
        torch.randn(total, pre.heads, pre.head_dim, device=dev, dtype=torch.bfloat16)
        for _ in range(4)
    )
    return pre, cu, max(lengths), q, k, v, do


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="vit-b,vit-l,vit-h,predictor,hd128")
    p.add_argument("--kinds", default="fwd,dkdv,dq")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--write", default=None, help="save the winners as JSON here")
    p.add_argument("--compile-only", action="store_true")
    args = p.parse_args()
    dev = torch.device("cuda")
    timing = SimpleNamespace(reps=args.reps, warmup=2, timing="graph")
    default = A._block_sizes
    # (kind, key) -> {config: [ms ratio to the preset's best, ...]}
    ratios: dict[tuple[str, str], dict] = defaultdict(lambda: defaultdict(list))
    for name in args.presets.split(","):
        pre, cu, mx, q, k, v, do = _inputs(name, args.batch, dev)
        scale = pre.head_dim**-0.5
        o, lse = A._triton_forward(q, k, v, cu, cu, mx, mx, False, scale)
        want = A._triton_backward(do, q, k, v, o, lse, cu, cu, mx, mx, False, scale)
        bd = max(16, triton.next_power_of_2(pre.head_dim))
        key = f"{bd}/long" if mx >= A.LONG_SEQ else str(bd)
        fwd_call = functools.partial(A._triton_forward, q, k, v, cu, cu, mx, mx, False, scale)
        bwd_call = functools.partial(
            A._triton_backward, do, q, k, v, o, lse, cu, cu, mx, mx, False, scale
        )
        for kind in args.kinds.split(","):
            times = {}
            for cfg in CONFIGS[kind]:

                def patched(b, d, kd, fp32=False, max_len=0, kind=kind, cfg=cfg):
                    return cfg if kd == kind else default(b, d, kd, fp32, max_len)

                A._block_sizes = patched
                fn = fwd_call if kind == "fwd" else bwd_call
                try:
                    got = fn()
                    ref = (o,) if kind == "fwd" else want
                    ok = all(
                        torch.allclose(g.float(), r.float(), atol=2e-2, rtol=2e-2)
                        for g, r in zip(got[: len(ref)], ref, strict=True)
                    )
                    ms = None if args.compile_only else measure(fn, dev, timing)[0]
                    msg = "compiled" if ms is None else f"{ms:.4f} ms"
                    print(f"{name} {kind} {cfg} {msg}{'' if ok else ' WRONG'}", flush=True)
                    if ok and ms:
                        times[cfg] = ms
                except Exception as exc:  # out of resources etc.: report and go on
                    print(f"{name} {kind} {cfg} failed: {type(exc).__name__}", flush=True)
                finally:
                    A._block_sizes = default
            if times:
                best = min(times.values())
                for cfg, ms in times.items():
                    ratios[(kind, key)][cfg].append(ms / best)
        print(f"{name} built-in {[default(bd, dev, kd, False, mx) for kd in CONFIGS]}", flush=True)
    winners: dict[str, dict[str, list[int]]] = defaultdict(dict)
    for (kind, key), by_cfg in sorted(ratios.items()):
        n = max(len(r) for r in by_cfg.values())
        full = {c: r for c, r in by_cfg.items() if len(r) == n}  # ran on every preset
        cfg = min(full, key=lambda c: math.fsum(math.log(x) for x in full[c]))
        geo = math.exp(math.fsum(math.log(x) for x in full[cfg]) / n)
        winners[kind][key] = list(cfg)
        print(f"winner {kind} head_dim {key}: {cfg} ({geo:.3f}x of per-preset best, {n} presets)")
    if args.write:
        Path(args.write).write_text(json.dumps(winners, indent=1))
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
