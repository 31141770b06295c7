"""Sweep the gather backward's launch settings on a GPU: tokens x channels per program, samples
per loop iteration, warps, and how many chunks of samples sum dpos in parallel (fp32 partials)
or one (dpos stored directly).

Usage: python benchmarks/gather_tune.py [--presets vit-b,vit-l,vit-h,predictor] [--batch 64,256]
       [--write FILE]

For every preset and batch, times CUDA-graph replays (device time) of `gather_tokens` forward +
backward (x and pos both require grad, unique indices: the one-pass inverse-map backward) for
each setting of `kernels.gather.BWD_TILE`, on inputs rotated past L2 like `kernels.bench`, and
prints GB/s on the fewest payload bytes (the bench's count) and the share of the copy ceiling
measured in the same run. Each setting's dx and dpos are checked against the torch reference
before it is timed. `--write` saves the setting with the best geometric-mean time as JSON.
"""

import argparse
import itertools
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from kernels import gather as G  # noqa: E402
from kernels.bench import PRESETS, _randn, measure, measure_ceilings  # noqa: E402

SETTINGS = [
    {"block_n": bn, "block_d": bd, "unroll": u, "warps": w, "chunks": c}
    for bn, bd, u, w, c in [
        (4, 256, 2, 2, 8),  # the third session's winner: 8 chunks of fp32 partials
        (1, 128, 16, 2, 1),  # the fourth session's first sweep's winner
        (1, 256, 8, 2, 1), (1, 256, 16, 4, 1), (1, 128, 32, 2, 1), (1, 128, 32, 4, 1),
        (1, 64, 32, 2, 1), (1, 64, 16, 1, 1), (1, 128, 16, 1, 1), (2, 128, 16, 4, 1),
        (1, 256, 32, 4, 1), (1, 128, 16, 2, 2),
    ]
]  # fmt: skip


def case(preset: str, batch: int, dev: torch.device, dtype: torch.dtype, seed: int):
    p = PRESETS[preset]
    n, d = p.tokens, p.width
    gen = torch.Generator().manual_seed(seed)
    kk = max(1, round(n * 0.625))  # the bench's mean keep fraction (25-100%)
    keep = torch.stack([torch.randperm(n, generator=gen)[:kk] for _ in range(batch)])
    idx = keep.reshape(-1).to(torch.int32).to(dev)
    cu = torch.arange(0, batch * kk + 1, kk, dtype=torch.int32, device=dev)
    e = torch.empty(0, dtype=dtype).element_size()
    nbytes = (2 * batch * kk * d * e + n * d * e + idx.numel() * 4) + (
        batch * kk * d * e + batch * n * d * e + n * d * e
    )
    x = _randn((batch, n, d), dev, dtype)
    n_sets = max(1, min(16, math.ceil(256 * 2**20 / x.nbytes)))
    xs = [x] + [_randn(x.shape, dev, dtype) for _ in range(n_sets - 1)]
    pos = _randn((n, d), dev, dtype)
    return idx, cu, xs, pos, nbytes, f"{preset} B={batch} N={n} K={kk} D={d}"


def check(idx, cu, x, pos) -> bool:
    xa, pa = x.detach().requires_grad_(), pos.detach().requires_grad_()
    out = G.gather_tokens(xa, idx, cu, pa, unique_indices=True)
    grad = torch.randn_like(out)
    out.backward(grad)
    xr, pr = x.detach().float().requires_grad_(), pos.detach().float().requires_grad_()
    G.gather_tokens_reference(xr, idx, cu, pr).backward(grad.float())
    ok_x = torch.equal(xa.grad.float(), xr.grad)
    ok_p = torch.allclose(pa.grad.float(), pr.grad, atol=2e-2, rtol=1e-2)
    return ok_x and ok_p


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="vit-b,vit-l,vit-h,predictor")
    ap.add_argument("--batch", default="64,256")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--write", default=None, help="save the best setting here (JSON)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gather_tune: needs a CUDA GPU", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    timing = SimpleNamespace(reps=args.reps, warmup=2, timing="graph")
    ceil = measure_ceilings(dev, quick=False, reps=10)
    print(f"{torch.cuda.get_device_name(dev)}; copy ceiling {ceil['copy_gbps']:.0f} GB/s")
    default = dict(G.BWD_TILE)
    times: dict[int, list[float]] = {i: [] for i in range(len(SETTINGS))}
    for preset, batch in itertools.product(
        args.presets.split(","), map(int, args.batch.split(","))
    ):
        idx, cu, xs, pos, nbytes, name = case(preset, batch, dev, torch.bfloat16, 0)
        leaves = [(x.detach().requires_grad_(), pos.detach().requires_grad_()) for x in xs]
        grad = _randn((idx.numel(), xs[0].shape[-1]), dev, torch.bfloat16)
        turn = itertools.count()

        def fwd_bwd(leaves=leaves, grad=grad, turn=turn, idx=idx, cu=cu):
            xl, pl = leaves[next(turn) % len(leaves)]
            xl.grad = pl.grad = None
            G.gather_tokens(xl, idx, cu, pl, unique_indices=True).backward(grad)

        print(f"\n{name}: fwd+bwd, {nbytes / 1e6:.1f} MB payload")
        for i, s in enumerate(SETTINGS):
            G.BWD_TILE.clear()
            G.BWD_TILE.update(s)
            if not check(idx, cu, xs[0], pos):
                print(f"  {s}: WRONG RESULT, skipped")
                times[i].append(float("inf"))
                continue
            ms, _, err = measure(fwd_bwd, dev, timing, inner=max(len(leaves), 10))
            if ms is None:
                print(f"  {s}: {err}")
                times[i].append(float("inf"))
                continue
            times[i].append(ms)
            gbps = nbytes / ms / 1e6
            print(
                f"  {s}: {ms * 1e3:7.1f} us  {gbps:6.0f} GB/s  "
                f"{gbps / ceil['copy_gbps']:4.0%} of copy"
            )
    G.BWD_TILE.clear()
    G.BWD_TILE.update(default)
    score = {i: math.exp(sum(map(math.log, t)) / len(t)) for i, t in times.items() if t}
    best = min(score, key=score.get)
    print(f"\nwinner (geometric mean over cases): {SETTINGS[best]}")
    for i in sorted(score, key=score.get):
        print(f"  {SETTINGS[i]}: geo-mean {score[i] * 1e3:.1f} us")
    if args.write:
        Path(args.write).write_text(json.dumps(SETTINGS[best]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
