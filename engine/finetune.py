"""`python -m engine.finetune --checkpoint RUN --data DIR --label COL --head HEAD`: supervised
fine-tuning of a pretrained encoder with one of S-JEPA's three downstream architectures, beside
the same architecture from random init, over grouped folds.

The heads (Guetschel et al. 2024, braindecode's SignalJEPA_Contextual / _PostLocal / _PreLocal)
read a record's tokens as a grid of rows (EEG channels, fMRI ROIs: `coords[:, 0]`) by time
(seconds, time patches: `coords[:, 1]`), with zeros where a row has no token (an absent channel,
a missing ROI):

- contextual: the whole pretrained encoder (local features, positions, transformer) on the
  record's tokens; its features scattered to the grid [R, T, D]; a spatial filter (a learned
  linear map from the R rows to K virtual rows); flattened; a linear layer.
- post-local: the pretrained local encoder alone (`embedder.local`: the per-token features
  before positions and transformer) on each token; the spatial filter; flattened; linear.
- pre-local: the spatial filter first, on the raw token grid (mixing rows before slicing into
  tokens equals mixing the tokens of one time step: both are linear), then the pretrained local
  encoder on each virtual row's tokens; flattened; linear.

Besides S-JEPA's three, `pooled`: the whole encoder; the mean and std of its token features
over the record; a linear layer: `engine.probe --pool meanstd`'s readout trained end to end with
the encoder, and the supervised check of the positive controls (docs/results.md). It takes no
grid, so it reads records of any token layout the same way.

A-JEPA's regularised masking (`--mask-ratio R`, heads that run the whole encoder: pooled and
contextual): while training, each record's tokens lose their content at random, kept in place
with their positions, and take a learned mask embedding instead (A-JEPA fine-tunes so, "instead
of input dropping or zero"): a masked token's embedding is the embedder's output for a zero
token at that position plus the learned vector. `--mask-shape strips` (default) masks whole
time columns and whole row bands (frequency bands of a spectrogram), a fraction R of each, A-JEPA's
time-frequency-aware shapes; `tokens` masks a fraction R of the tokens one by one. Never every
token of a record; never at evaluation.

`--tune full` (default, the paper's best) trains every weight; `--tune head` keeps the
pretrained parts frozen. Splits as `engine.probe` (stratified k-fold, grouped by subject when the
dataset has one); every fold trains the pretrained and the random-init model from the same seed.
Random init is the architecture's weights drawn with `--seed`: the weights a run trained with
`train.seed` = SEED started from (so a run barely trained gives both the same numbers). Results
print as one line per encoder and go to finetune-LABEL-HEAD-TUNE-ENCODER.json next to the
checkpoint.

Imports torch, numpy, sklearn (splits) and the engine's model, export and probe helpers.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.batch import pack_tokens
from engine.checkpoint import latest_checkpoint
from engine.config import Config
from engine.data import build_embedder, method_options
from engine.export import load_encoder
from engine.model import Encoder
from engine.probe import classifies, probe_splits, read_column
from modalities import Modality
from pipelines.shards import ShardDataset, ShardError

HEADS = ("contextual", "post-local", "pre-local", "pooled")
TUNES = ("full", "head")
MASK_SHAPES = ("strips", "tokens")


def regularised_mask(
    coords: np.ndarray, ratio: float, shape: str, rng: np.random.Generator
) -> np.ndarray:
    """Which of a record's tokens (coords [N, 2]: row, time) lose their content: bool [N].

    `strips`: round(ratio * T) of its time columns and round(ratio * R) of its rows, whole;
    `tokens`: round(ratio * N) tokens. Never all N (one is given back at random)."""
    n = len(coords)
    if shape == "strips":
        times, rows = np.unique(coords[:, 1]), np.unique(coords[:, 0])
        t = rng.choice(times, int(round(ratio * len(times))), replace=False)
        r = rng.choice(rows, int(round(ratio * len(rows))), replace=False)
        mask = np.isin(coords[:, 1], t) | np.isin(coords[:, 0], r)
    elif shape == "tokens":
        mask = np.zeros(n, bool)
        mask[rng.choice(n, int(round(ratio * n)), replace=False)] = True
    else:
        raise ValueError(f"--mask-shape must be one of {', '.join(MASK_SHAPES)}, got {shape!r}")
    if mask.all():
        mask[rng.integers(n)] = False
    return mask


#: the most cells (rows x times) a token grid may have: S-JEPA's EEG grids are channels x
#: seconds (a few thousand); beyond this the coords are not a grid
GRID_CELLS = 1 << 20


@dataclass
class TokenGrids:
    """Every record's tokens, and where each sits on the rows x times grid."""

    tokens: list[np.ndarray]  # [N_i, P]
    coords: list[np.ndarray]  # [N_i, c]
    rows: int
    times: int

    @classmethod
    def of(
        cls, modality: Modality, cfg: Config, ds: ShardDataset, records: np.ndarray
    ) -> TokenGrids:
        """The grids of `records` (indices into `ds`), in that order."""
        opts = method_options(modality, cfg)
        toks = [modality.tokenize(ds[int(i)], ds.stats, opts) for i in records]
        tokens = [np.asarray(t["tokens"], np.float32) for t in toks]
        coords = [np.asarray(t["coords"], np.int64) for t in toks]
        rows = 1 + max(int(c[:, 0].max()) for c in coords)
        times = 1 + max(int(c[:, 1].max()) for c in coords)
        return cls(tokens, coords, rows, times)

    def where(self, idx: np.ndarray) -> torch.Tensor:
        """The batch-local flat positions in [B * R * T] (row-major) of the records' tokens,
        concatenated in record order. ValueError when the tokens do not sit on a rows x times
        grid (coords columns 0 and 1 small non-negative integers), as point-cloud tokens
        (centre coordinates) do not: the local and contextual heads need one."""
        low = min(int(c[:, :2].min()) for c in self.coords)
        if low < 0 or self.rows * self.times > GRID_CELLS:
            raise ValueError(
                f"the local and contextual heads need tokens on a rows x times grid (coords "
                f"columns 0 and 1 in [0, {GRID_CELLS}) cells); these tokens' coords span "
                f"{self.rows} x {self.times} from {low}: use --head pooled"
            )
        return torch.cat(
            [
                torch.from_numpy((j * self.rows + self.coords[i][:, 0]) * self.times)
                + torch.from_numpy(self.coords[i][:, 1])
                for j, i in enumerate(idx)
            ]
        )

    def grid(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens [B, R, T, P] (zeros where no token) and `where(idx)`."""
        p = self.tokens[0].shape[1]
        out = torch.zeros(len(idx), self.rows, self.times, p)
        where = self.where(idx)
        out.view(-1, p)[where] = torch.from_numpy(np.concatenate([self.tokens[i] for i in idx]))
        return out, where


class FinetuneModel(nn.Module):
    """An encoder with one of S-JEPA's downstream heads (module docstring)."""

    def __init__(
        self,
        encoder: Encoder,
        head: str,
        rows: int,
        times: int,
        n_out: int,
        filters: int = 4,
        mask_ratio: float = 0.0,
        mask_shape: str = "strips",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"--head must be one of {', '.join(HEADS)}, got {head!r}")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"--mask-ratio must be in [0, 1), got {mask_ratio}")
        if mask_ratio and head not in ("contextual", "pooled"):
            raise ValueError(
                f"--mask-ratio masks tokens before the transformer: the {head} head runs none "
                "(use contextual or pooled)"
            )
        if head != "contextual" and not hasattr(encoder.embedder, "local"):
            raise ValueError(
                f"the {head} head needs the embedder's local encoder (`local(tokens)`), which "
                f"{type(encoder.embedder).__name__} does not have"
            )
        self.encoder, self.head, self.rows, self.times = encoder, head, rows, times
        # R rows -> K virtual rows (the pooled head has none)
        self.spatial = None if head == "pooled" else nn.Linear(rows, filters, bias=False)
        dim = encoder.norm.normalized_shape[0]
        width = 2 * dim if head == "pooled" else filters * times * dim
        self.out = nn.Linear(width, n_out)
        self.mask_ratio, self.mask_shape = mask_ratio, mask_shape
        self.mask_embed = nn.Parameter(torch.randn(dim) * 0.02) if mask_ratio else None
        self._mask_rng = np.random.default_rng([seed, 0x524D])

    def _encode(self, grids: TokenGrids, idx: np.ndarray) -> torch.Tensor:
        """The whole encoder on the records' tokens: [B, N, D]; while training with a mask
        ratio, A-JEPA's regularised masking first (module docstring)."""
        batch = pack_tokens([grids.tokens[i] for i in idx], [grids.coords[i] for i in idx])
        enc = self.encoder
        if not (self.training and self.mask_ratio):
            return enc.forward_all(batch.tokens, batch.coords, batch.n_tokens, batch.packing)
        masked = torch.zeros(batch.tokens.shape[:2], dtype=torch.bool)
        for j, i in enumerate(idx):
            m = regularised_mask(grids.coords[i], self.mask_ratio, self.mask_shape, self._mask_rng)
            masked[j, : len(m)] = torch.from_numpy(m)
        x = enc.embed(batch.tokens, batch.coords)
        blank = enc.embed(torch.zeros_like(batch.tokens), batch.coords) + self.mask_embed
        x = torch.where(masked[..., None], blank, x)
        return enc.encode_padded(x, batch.n_tokens, batch.packing)

    def pretrained(self) -> list[nn.Parameter]:
        """The parameters that came from pretraining (what `--tune head` freezes)."""
        if self.head in ("contextual", "pooled"):
            return list(self.encoder.parameters())
        return list(self.encoder.embedder.parameters())

    def _spatial(self, x: torch.Tensor) -> torch.Tensor:  # [B, R, T, ...] -> [B, K, T, ...]
        return torch.einsum("brt...,kr->bkt...", x, self.spatial.weight)

    def forward(self, grids: TokenGrids, idx: np.ndarray) -> torch.Tensor:
        b = len(idx)
        if self.head == "pooled":
            h = self._encode(grids, idx)
            pooled = [
                torch.cat([f.mean(0), f.std(0)])
                for f in (h[j, : len(grids.tokens[i])] for j, i in enumerate(idx))
            ]
            return self.out(torch.stack(pooled))
        if self.head != "contextual":
            tokens, where = grids.grid(idx)
            present = torch.zeros(b * self.rows * self.times, 1)
            present[where] = 1.0
            present = present.view(b, self.rows, self.times, 1)
        if self.head == "pre-local":
            # An empty cell's local feature is the encoder's response to zeros, not nothing:
            # keep only the times where the record has a token (a virtual row mixes every row).
            at_time = present.amax(dim=1, keepdim=True)  # [B, 1, T, 1]
            feats = self.encoder.embedder.local(self._spatial(tokens)) * at_time
        elif self.head == "post-local":
            local = self.encoder.embedder.local(tokens)
            feats = self._spatial(local * present)
        else:
            where = grids.where(idx)
            h = self._encode(grids, idx)
            valid = torch.cat([h[j, : len(grids.tokens[i])] for j, i in enumerate(idx)])
            grid = h.new_zeros(b * self.rows * self.times, h.shape[-1])
            grid[where] = valid
            feats = self._spatial(grid.view(b, self.rows, self.times, -1))
        return self.out(feats.flatten(1))


def _score(pred: torch.Tensor, y: torch.Tensor, classify: bool) -> float:
    if classify:
        return float((pred.argmax(1) == y).float().mean())
    resid = ((pred.squeeze(1) - y) ** 2).sum()
    total = ((y - y.mean()) ** 2).sum()
    return float(1 - resid / total) if total > 0 else 0.0


def finetune_fold(
    encoder: Encoder,
    grids: TokenGrids,
    y: torch.Tensor,
    train: np.ndarray,
    test: np.ndarray,
    args: argparse.Namespace,
    classify: bool,
    n_out: int,
    report: Callable[[int, float], None] | None = None,
    every: int = 0,
) -> float:
    """Train a fresh head (and, with --tune full, the encoder) on `train`; the test score.
    With `report` and `every`, the test score is also handed to `report(epoch, score)` after
    every `every`-th epoch before the last (a learning curve; evaluating draws no random numbers,
    so the final score is the same either way)."""
    torch.manual_seed(args.seed)
    if not classify:  # regress standardised targets (the train split's mean / std)
        mu, sd = y[train].mean(), y[train].std().clamp_min(1e-12)
        y = (y - mu) / sd
    enc = copy.deepcopy(encoder).requires_grad_(True).train()
    model = FinetuneModel(
        enc,
        args.head,
        grids.rows,
        grids.times,
        n_out,
        args.filters,
        args.mask_ratio,
        args.mask_shape,
        args.seed,
    )
    if args.tune == "head":
        for p in model.pretrained():
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    rng = np.random.default_rng([args.seed, 0x46544E])
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = rng.permutation(train)
        for lo in range(0, len(order), args.batch_size):
            idx = order[lo : lo + args.batch_size]
            pred = model(grids, idx)
            target = y[idx]
            loss = F.cross_entropy(pred, target) if classify else F.mse_loss(pred[:, 0], target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if report is not None and every > 0 and epoch % every == 0 and epoch < args.epochs:
            report(epoch, _evaluate(model, grids, y, test, args.batch_size, classify))
    return _evaluate(model, grids, y, test, args.batch_size, classify)


def _evaluate(
    model: FinetuneModel,
    grids: TokenGrids,
    y: torch.Tensor,
    test: np.ndarray,
    batch_size: int,
    classify: bool,
) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat(
            [model(grids, test[lo : lo + batch_size]) for lo in range(0, len(test), batch_size)]
        )
    return _score(pred, y[test], classify)


def _default_json(checkpoint: str, args: argparse.Namespace) -> Path:
    path = Path(checkpoint)
    if not (path / "state.json").is_file() and not (path / "config.json").is_file():
        path = latest_checkpoint(path) or path
    return path / f"finetune-{args.label}-{args.head}-{args.tune}-{args.encoder}.json"


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune the pretrained and the random-init encoder on every fold; the results."""
    ds = ShardDataset(args.data)
    # the dataset's modality: its embedder, when the run trained several on one trunk
    encoder, cfg, modality = load_encoder(args.checkpoint, args.encoder, ds.modality)
    labels = read_column(ds, args.data, args.label)
    keep = np.asarray([v is not None for v in labels])
    if not keep.any():
        raise ValueError(f"{args.data}: the label column {args.label!r} holds no values")
    y_raw = np.asarray(labels[keep].tolist())
    classify = classifies(y_raw, args.task)
    if not classify and float(np.std(y_raw.astype(np.float64))) == 0:
        raise ValueError(f"the label column {args.label!r} is constant; nothing to fine-tune")
    group_col = args.group_by
    if group_col == "auto":
        group_col = "subject" if "subject" in ds.schema.names else "none"
    groups = None if group_col == "none" else read_column(ds, args.data, group_col)[keep]
    if classify:
        classes = sorted(set(y_raw.tolist()), key=str)
        y = torch.tensor([classes.index(v) for v in y_raw.tolist()])
        n_out = len(classes)
    else:
        y = torch.tensor(y_raw.astype(np.float32))
        n_out = 1
    grids = TokenGrids.of(modality, cfg, ds, np.flatnonzero(keep))  # labelled records only
    splits = probe_splits(y_raw, classify, args.folds, args.seed, groups)
    torch.manual_seed(args.seed)
    random_init = Encoder(build_embedder(modality, cfg, ds.stats), cfg.model)
    results: dict[str, Any] = {}
    for name, enc in (("pretrained", encoder), ("random-init", random_init)):
        scores = []
        for k, (train, test) in enumerate(splits):
            scores.append(finetune_fold(enc, grids, y, train, test, args, classify, n_out))
            if not args.quiet:
                print(f"  {name} fold {k + 1}/{len(splits)}: {scores[-1]:.4f}", file=sys.stderr)
        arr = np.asarray(scores)
        results[name] = {
            "metric": "accuracy" if classify else "r2",
            "mean": float(arr.mean()),
            "std": float(arr.std()),
            "scores": [float(s) for s in arr],
        }
    return {
        "checkpoint": str(args.checkpoint),
        "data": str(args.data),
        "label": args.label,
        "head": args.head,
        "tune": args.tune,
        "encoder": args.encoder,
        "folds": len(splits),
        "group_by": group_col,
        "records": int(keep.sum()),
        "grid": [grids.rows, grids.times],
        "epochs": args.epochs,
        "seed": args.seed,
        "mask_ratio": args.mask_ratio,
        "mask_shape": args.mask_shape,
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m engine.finetune",
        description="Fine-tune a pretrained encoder with one of S-JEPA's downstream heads, "
        "beside the same model from random init (grouped k-fold CV).",
    )
    p.add_argument("--checkpoint", required=True, help="run directory, checkpoint or export")
    p.add_argument("--data", required=True, help="dataset directory")
    p.add_argument("--label", required=True, help="column holding the label")
    p.add_argument("--head", choices=HEADS, required=True)
    p.add_argument("--tune", choices=TUNES, default="full", help="full (default) or head only")
    p.add_argument(
        "--encoder",
        choices=("target", "context"),
        default="target",
        help="which pretrained encoder to start from (default the EMA target)",
    )
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--task", choices=("auto", "classification", "regression"), default="auto")
    p.add_argument(
        "--group-by",
        default="auto",
        metavar="COLUMN",
        help="keep each value of COLUMN within one fold (default `subject` when present)",
    )
    p.add_argument("--filters", type=int, default=4, help="virtual rows of the spatial filter")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--mask-ratio",
        type=float,
        default=0.0,
        help="A-JEPA's regularised masking while training (pooled and contextual heads): the "
        "fraction of time columns and row bands (--mask-shape strips) or of tokens whose content "
        "a learned mask embedding replaces (default 0: off)",
    )
    p.add_argument("--mask-shape", choices=MASK_SHAPES, default="strips")
    p.add_argument("--quiet", action="store_true", help="no per-fold lines")
    p.add_argument("--json", metavar="FILE", help="results file (default next to the checkpoint)")
    args = p.parse_args(argv)
    for name in ("folds", "filters", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0.0 <= args.mask_ratio < 1.0:
        p.error(f"--mask-ratio must be in [0, 1), got {args.mask_ratio}")
    try:
        record = run(args)
        out = Path(args.json) if args.json else _default_json(args.checkpoint, args)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(out)
    except (ValueError, ShardError, OSError, RuntimeError) as e:
        print(f"engine.finetune: error: {e}", file=sys.stderr)
        return 1
    for name, res in record["results"].items():
        print(
            f"finetune {args.label} ({args.head}, tune {args.tune}): {res['metric']} "
            f"{res['mean']:.4f} +- {res['std']:.4f} ({record['folds']}-fold CV, grouped by "
            f"{record['group_by']}, {record['records']} records, {name})"
        )
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
