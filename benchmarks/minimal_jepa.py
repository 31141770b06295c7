"""A minimal textbook JEPA written apart from the engine, to cross-check what the engine learns.

Nothing of `engine.model`, `engine.objective`, the engine's maskers or its EMA is used: its own
transformer (torch's `nn.TransformerEncoderLayer`), a learned row embedding plus a sin-cos
column code, its own block masks on a (row, column) token grid (a random 40-50% of the rows over
1-2 contiguous columns are the targets; the rest is the context), an EMA target encoder, smooth
L1 on the targets. `--targets layer_norm` is I-JEPA's target normalisation; `position_centered`
subtracts each position's batch mean first (the engine's default). It reads the same shards and
the same tokens (the modality's tokenizer) as the engine, so the two see identical inputs.

    python benchmarks/minimal_jepa.py --data DIR --out FILE.safetensors [--targets ...]
        [--steps N] [--seed S] [--option KEY=VALUE ...] [--probe LABEL]

`--option` sets the modality's tokenizer options (e.g. `features=spectrum` for EEG: its tokens
are then log spectra); `--probe LABEL` ends with a linear probe of the trained target encoder
and of its own random init on the records' `LABEL` (mean and std pooled token features, 8
labelled subjects per draw, 10 draws; `engine.probe.linear_probe`, the evaluation only).

`load(FILE)` returns the trained target encoder and `features(...)` its per-token features, which
`benchmarks/positive_controls.py` probes beside the engine's. Imports torch, numpy, yaml,
safetensors, `pipelines.shards` and `modalities` (data only); `--probe` adds `engine.probe`.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from modalities import get_modality  # noqa: E402
from pipelines.shards import ShardDataset  # noqa: E402


def sincos(pos: torch.Tensor, dim: int) -> torch.Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float32) / (dim / 2))
    angle = pos.float()[..., None] * omega
    return torch.cat([angle.sin(), angle.cos()], -1)


class Encoder(nn.Module):
    def __init__(self, patch: int, rows: int, dim: int = 64, depth: int = 4, heads: int = 4):
        super().__init__()
        self.dim = dim
        self.proj = nn.Linear(patch, dim)
        self.row = nn.Parameter(torch.randn(rows, dim // 2) * 0.02)
        layer = dict(dim_feedforward=4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, activation="gelu", **layer) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def pos(self, coords: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.row[coords[..., 0]], sincos(coords[..., 1], self.dim // 2)], -1)

    def forward(self, x: torch.Tensor, coords: torch.Tensor, keep: torch.Tensor | None = None):
        h = self.proj(x) + self.pos(coords)
        if keep is not None:
            h = torch.gather(h, 1, keep[..., None].expand(-1, -1, self.dim))
        for blk in self.blocks:
            h = blk(h)
        return self.norm(h)


class Predictor(nn.Module):
    def __init__(self, dim: int, width: int = 32, depth: int = 1, heads: int = 4):
        super().__init__()
        self.inp = nn.Linear(dim, width)
        self.pos = nn.Linear(dim, width)
        self.mask = nn.Parameter(torch.randn(width) * 0.02)
        layer = dict(dim_feedforward=4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, activation="gelu", **layer)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)

    def forward(self, ctx, pos_ctx, pos_tgt):
        h = torch.cat([self.inp(ctx) + self.pos(pos_ctx), self.mask + self.pos(pos_tgt)], 1)
        for blk in self.blocks:
            h = blk(h)
        return self.out(self.norm(h[:, ctx.shape[1] :]))


def block_mask(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Target cells of one sample: 40-50% of the rows over 1-2 contiguous columns."""
    target = np.zeros((rows, cols), bool)
    k = max(1, int(rows * rng.uniform(0.4, 0.5)))
    width = min(cols, int(rng.integers(1, 3)))
    c0 = int(rng.integers(0, cols - width + 1))
    target[np.ix_(rng.choice(rows, k, replace=False), np.arange(c0, c0 + width))] = True
    return target.reshape(-1)


def load_tokens(data: str, options: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """tokens [records, N, patch] and coords [N, 2] of a grid dataset whose records all share
    one token grid (the modality's tokenizer, its default options updated by `options`)."""
    ds = ShardDataset(data)
    modality = get_modality(ds.modality)
    opts = modality.method_options(options or {})  # fMRI's defaults: 1 x 16 (Brain-JEPA's)
    toks, coords = [], None
    for i in range(len(ds)):
        t = modality.tokenize(ds[i], ds.stats, opts)
        if coords is None:
            coords = t["coords"][:, :2]
        elif not np.array_equal(coords, t["coords"][:, :2]):
            raise ValueError(f"{data}: record {i} has another token grid than record 0")
        toks.append(t["tokens"])
    return np.stack(toks).astype(np.float32), np.asarray(coords)


def set_lr(opt: torch.optim.Optimizer, step: int, steps: int, lr: float) -> None:
    """Linear warm-up over the first tenth of the run, then a cosine decay."""
    warm = max(1, steps // 10)
    if step < warm:
        opt.param_groups[0]["lr"] = lr * (step + 1) / warm
    else:
        opt.param_groups[0]["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / steps))


def take(t: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """Rows `i` [B, K] of `t` [B, N, D]."""
    return torch.gather(t, 1, i[..., None].expand(-1, -1, t.shape[-1]))


def update(
    opt: torch.optim.Optimizer,
    loss: torch.Tensor,
    params: list[nn.Parameter],
    target: nn.Module,
    enc: nn.Module,
    momentum: float,
) -> None:
    """One optimiser step (gradients clipped at norm 1), then the EMA of `enc` into `target`."""
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    with torch.no_grad():
        for a, b in zip(target.parameters(), enc.parameters(), strict=True):
            a.lerp_(b, 1 - momentum)


def train(
    tokens: np.ndarray,
    coords: np.ndarray,
    targets: str = "position_centered",
    steps: int = 1500,
    seed: int = 0,
    batch: int = 16,
    lr: float = 1e-3,
    ema: tuple[float, float] = (0.99, 1.0),
    log_every: int = 250,
) -> Encoder:
    """Train and return the EMA target encoder."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    rows, cols = int(coords[:, 0].max()) + 1, int(coords[:, 1].max()) + 1
    enc = Encoder(tokens.shape[-1], rows)
    pred = Predictor(enc.dim)
    target = copy.deepcopy(enc).requires_grad_(False)
    params = [*enc.parameters(), *pred.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    x_all, c = torch.as_tensor(tokens), torch.as_tensor(coords)
    t0 = time.time()
    for step in range(steps):
        set_lr(opt, step, steps, lr)
        x = x_all[rng.integers(0, len(tokens), batch)]
        m = np.stack([block_mask(rng, rows, cols) for _ in range(batch)])
        n_t, n_c = int(m.sum(1).min()), int((~m).sum(1).min())  # same count in every sample
        tgt_idx = torch.as_tensor(np.stack([np.flatnonzero(r)[:n_t] for r in m]))
        ctx_idx = torch.as_tensor(np.stack([np.flatnonzero(~r)[:n_c] for r in m]))
        pos = enc.pos(c)[None].expand(batch, -1, -1)
        p = pred(enc(x, c, ctx_idx), take(pos, ctx_idx), take(pos, tgt_idx))
        with torch.no_grad():
            h = target(x, c)
            if targets in ("position_centered", "double_centered"):
                h = h - h.mean(0, keepdim=True)  # every sample shares the grid
            if targets == "double_centered":
                h = h - h.mean(1, keepdim=True)  # exact after the above on a full grid
            h = F.layer_norm(h, (h.shape[-1],))
        loss = F.smooth_l1_loss(p, take(h, tgt_idx))
        update(opt, loss, params, target, enc, ema[0] + (ema[1] - ema[0]) * step / steps)
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"minimal_jepa: step {step} loss {loss.item():.4f} ({time.time() - t0:.0f} s)")
    return target


@torch.no_grad()
def features(enc: Encoder, tokens: np.ndarray, coords: np.ndarray) -> list[np.ndarray]:
    c = torch.as_tensor(coords)
    out = []
    for lo in range(0, len(tokens), 64):
        out.extend(enc(torch.as_tensor(tokens[lo : lo + 64]), c).numpy())
    return out


def save(enc: Encoder, path: str | Path, rows: int) -> None:
    meta = {"rows": str(rows), "patch": str(enc.proj.in_features)}
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(path), metadata=meta)


def load(path: str | Path) -> Encoder:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    enc = Encoder(int(meta["patch"]), int(meta["rows"]))
    enc.load_state_dict(load_file(str(path)), strict=True)
    return enc.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="safetensors file of the target encoder")
    p.add_argument(
        "--targets",
        choices=("position_centered", "double_centered", "layer_norm"),
        default="position_centered",
    )
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--option", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--probe", metavar="LABEL", help="probe the result and its random init")
    args = p.parse_args(argv)
    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--option expects KEY=VALUE, got {item!r}")
        options[key] = yaml.safe_load(value)  # numbers and lists as the run config reads them
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tokens, coords = load_tokens(args.data, options)
    enc = train(tokens, coords, args.targets, args.steps, args.seed)
    rows = int(coords[:, 0].max()) + 1
    save(enc, args.out, rows)
    out = {"saved": args.out, "records": len(tokens), "tokens": int(tokens.shape[1])}
    if args.probe:
        torch.manual_seed(args.seed)  # train() seeds, then builds: this is its starting encoder
        init = Encoder(tokens.shape[-1], rows).eval()
        out["probe"] = {
            name: probe(args.data, args.probe, e, tokens, coords)
            for name, e in (("pretrained", enc.eval()), ("random-init", init))
        }
    print(json.dumps(out))
    return 0


def probe(data: str, label: str, enc: Encoder, tokens: np.ndarray, coords: np.ndarray) -> dict:
    """Mean and spread over 10 draws of a linear probe of `label` on mean+std pooled features,
    8 labelled subjects per draw, tested on the other subjects."""
    from engine.probe import linear_probe, read_column

    ds = ShardDataset(data)
    pooled = np.stack(
        [np.concatenate([f.mean(0), f.std(0)]) for f in features(enc, tokens, coords)]
    )
    labels = read_column(ds, data, label)
    subjects = read_column(ds, data, "subject")
    r = linear_probe(pooled, labels, 10, 0, groups=subjects, train_groups=8)
    return {"mean": r["mean"], "std": r["std"]}


if __name__ == "__main__":
    sys.exit(main())
