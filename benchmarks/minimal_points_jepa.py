"""A minimal textbook JEPA on point tokens, written apart from the engine: the cross-check of
Point-JEPA's results (docs/results.md, "Points").

It reads the same tokens as the engine (the points modality's tokenizer: each token a patch's
neighbour offsets and its centre, in Point-JEPA's sequencer order, with the centre's xyz), and
shares nothing else with it: a textbook PointNet patch embedding (a shared MLP 3-64-64 on each
neighbour's offset, max over the patch, then linear) plus an MLP of the centre's xyz, torch's
`nn.TransformerEncoderLayer` (4 x 64), the predictor, schedule and update step of
`benchmarks/minimal_jepa.py` (1 x 32, fed the targets' position codes), targets one contiguous run
of 40-50% of the tokens in sequencer order (the rest is the context), an EMA target encoder (0.99
-> 1), smooth L1 on targets centred by sequencer rank (each rank's batch mean taken out, as
`minimal_jepa.py` centres each grid position and the engine groups point positions by rank) then
layer-normalised; `--targets layer_norm` is I-JEPA's plain targets (with a linear patch embedding
they collapsed: loss 0.0007 and chance probes at 1000 steps, seed 0). `--probe LABEL` ends with a
logistic probe of the trained target encoder and of its own random init (mean and std pooled token
features, `--labels` labelled records per draw, 10 draws, tested on the rest;
`engine.probe.linear_probe`, the evaluation only, as `benchmarks/points_probe.py` calls it); `--raw
DIR` probes every label of the demo cohort's labels.csv instead (orientation, arrangement, part).

    python benchmarks/minimal_points_jepa.py --data DIR [--steps 1000] [--seed 0] [--targets ...] \
        [--option centres=32 ...] [--probe label | --raw RAW] [--labels 8 32 128]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
# benchmarks/kernels.py would shadow the `kernels` package: import the two scripts' parts, then
# drop this folder (points_probe drops it too, when it is imported)
sys.path.insert(0, str(HERE))
from minimal_jepa import Predictor, set_lr, take, update  # noqa: E402
from points_probe import cohort_labels  # noqa: E402

sys.path[:] = [p for p in sys.path if Path(p).resolve() != HERE]

from modalities import get_modality  # noqa: E402
from pipelines.shards import ShardDataset  # noqa: E402

#: the CPU control's tokenizer (engine/configs/points_control.yaml), the engine runs' inputs
CONTROL = {"points": 512, "centres": 32, "neighbours": 16}


class PointEncoder(nn.Module):
    def __init__(self, patch: int, dim: int = 64, depth: int = 4, heads: int = 4):
        super().__init__()
        self.dim = dim
        self.neighbours = (patch - 3) // 3  # a token: its offsets, then its centre
        self.point = nn.Sequential(nn.Linear(3, 64), nn.GELU(), nn.Linear(64, 64))
        self.proj = nn.Linear(64, dim)
        self.where = nn.Sequential(nn.Linear(3, dim), nn.GELU(), nn.Linear(dim, dim))
        layer = dict(dim_feedforward=4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, activation="gelu", **layer) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def pos(self, xyz: torch.Tensor) -> torch.Tensor:
        return self.where(xyz)

    def forward(self, x: torch.Tensor, xyz: torch.Tensor, keep: torch.Tensor | None = None):
        k = self.neighbours
        offsets = x[..., : 3 * k].reshape(*x.shape[:-1], k, 3)
        h = self.proj(self.point(offsets).amax(-2)) + self.pos(xyz)
        if keep is not None:
            h = torch.gather(h, 1, keep[..., None].expand(-1, -1, self.dim))
        for blk in self.blocks:
            h = blk(h)
        return self.norm(h)


def load_tokens(data: str, options: dict) -> tuple[np.ndarray, np.ndarray]:
    """tokens [records, N, patch] and centres [records, N, 3] (unit sphere), in sequencer order."""
    ds = ShardDataset(data)
    modality = get_modality(ds.modality)
    if ds.modality != "points":
        raise ValueError(f"{data}: a {ds.modality} dataset; this JEPA reads point tokens")
    opts = modality.method_options({**CONTROL, **options})
    toks, xyz = [], []
    for i in range(len(ds)):
        t = modality.tokenize(ds[i], ds.stats, opts)
        order = np.argsort(t["coords"][:, 3], kind="stable")  # the sequencer's rank
        toks.append(t["tokens"][order])
        xyz.append(t["coords"][order, :3] * 1e-4)  # stored in 1e-4 units
    return np.stack(toks).astype(np.float32), np.stack(xyz).astype(np.float32)


def run_mask(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Target tokens of one sample: a contiguous run of k in sequencer order."""
    target = np.zeros(n, bool)
    start = int(rng.integers(0, n - k + 1))
    target[start : start + k] = True
    return target


def train(
    tokens: np.ndarray,
    xyz: np.ndarray,
    targets: str = "rank_centered",
    steps: int = 1000,
    seed: int = 0,
    batch: int = 16,
    lr: float = 1e-3,
    ema: tuple[float, float] = (0.99, 1.0),
    log_every: int = 250,
) -> PointEncoder:
    """Train and return the EMA target encoder."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    enc = PointEncoder(tokens.shape[-1])
    pred = Predictor(enc.dim)
    target = copy.deepcopy(enc).requires_grad_(False)
    params = [*enc.parameters(), *pred.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    x_all, c_all = torch.as_tensor(tokens), torch.as_tensor(xyz)
    n = tokens.shape[1]
    t0 = time.time()
    for step in range(steps):
        set_lr(opt, step, steps, lr)
        pick = rng.integers(0, len(tokens), batch)
        x, c = x_all[pick], c_all[pick]
        k = max(1, int(n * rng.uniform(0.4, 0.5)))  # one size a batch
        m = np.stack([run_mask(rng, n, k) for _ in range(batch)])
        tgt_idx = torch.as_tensor(np.stack([np.flatnonzero(r) for r in m]))
        ctx_idx = torch.as_tensor(np.stack([np.flatnonzero(~r) for r in m]))
        pos = enc.pos(c)
        p = pred(enc(x, c, ctx_idx), take(pos, ctx_idx), take(pos, tgt_idx))
        with torch.no_grad():
            h = target(x, c)
            if targets == "rank_centered":
                h = h - h.mean(0, keepdim=True)  # tokens are in rank order in every sample
            h = F.layer_norm(h, (enc.dim,))
        loss = F.smooth_l1_loss(p, take(h, tgt_idx))
        update(opt, loss, params, target, enc, ema[0] + (ema[1] - ema[0]) * step / steps)
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"minimal_points_jepa: step {step} loss {loss.item():.4f} "
                  f"({time.time() - t0:.0f} s)", flush=True)  # fmt: skip
    return target


@torch.no_grad()
def pooled_features(enc: PointEncoder, tokens: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """[records, 2 * dim]: each record's token features' mean and std."""
    out = []
    for lo in range(0, len(tokens), 64):
        f = enc(torch.as_tensor(tokens[lo : lo + 64]), torch.as_tensor(xyz[lo : lo + 64]))
        out.append(torch.cat([f.mean(1), f.std(1)], -1).numpy())
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--targets", choices=("rank_centered", "layer_norm"), default="rank_centered")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--option", nargs="*", default=[], metavar="KEY=VALUE",
        help="tokenizer options over the CPU control's (points, centres, neighbours)",
    )  # fmt: skip
    p.add_argument("--probe", metavar="LABEL", help="probe the result and its random init")
    p.add_argument("--raw", type=Path, help="the demo cohort's folder: probe its labels.csv")
    p.add_argument("--labels", type=int, nargs="+", default=[8, 32, 128])
    args = p.parse_args(argv)
    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--option expects KEY=VALUE, got {item!r}")
        options[key] = yaml.safe_load(value)
    tokens, xyz = load_tokens(args.data, options)
    enc = train(tokens, xyz, args.targets, args.steps, args.seed)
    out: dict = {"records": len(tokens), "tokens": int(tokens.shape[1]), "seed": args.seed,
                 "targets": args.targets}  # fmt: skip
    if args.probe or args.raw:
        from engine.probe import linear_probe, read_column

        ds = ShardDataset(args.data)
        if args.raw:
            labels = cohort_labels(ds, args.data, args.raw)
        else:
            labels = {args.probe: read_column(ds, args.data, args.probe)}
        torch.manual_seed(args.seed)  # train() seeds, then builds: this is its starting encoder
        init = PointEncoder(tokens.shape[-1]).eval()
        out["probe"] = {}
        for name, e in (("pretrained", enc.eval()), ("random-init", init)):
            feats = pooled_features(e, tokens, xyz)
            out["probe"][name] = {
                f"{label}_{n}": round(
                    float(linear_probe(feats, y, 10, 0, train_groups=n)["mean"]), 3
                )
                for label, y in labels.items()
                for n in args.labels
            }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
