"""`python -m engine.probe --checkpoint RUN_DIR --data DIR --label COLUMN`: probes of a frozen
encoder.

The frozen encoder (EMA target by default) encodes every token of every record. Two probes:
- linear (default): features pooled per record (`--pool`: mean, mean and std, or per-position
  means) and a linear model (logistic regression for class labels, ridge for numeric ones);
- attentive (V-JEPA's): a learned query cross-attends over the record's frozen tokens, an MLP,
  then a linear head, trained with AdamW.
Both are scored with k-fold cross-validation (mean and std over folds; `--repeats R` over R fold
seeds), or, with `--labels N`, trained on N labelled subjects and tested on all the others
(repeated over `--folds` draws): the label-efficiency setting, many unlabelled records for
pretraining and few labels for the probe. Folds are grouped by subject when the dataset has a
`subject` column: windows of one recording are near-duplicates, and letting them straddle train
and test would score identity, not the label. `--random-init` probes the same architecture with
fresh weights (by default the run's own init, from its train.seed; `--init-seed` another), the
baseline pretraining must beat; `--baseline` probes both in one run. Results are printed and
written as JSON next to the checkpoint (`--json` to choose the file).
`token_probe` (a library function) scores a ridge regression of a per-token target from each
token's features, folds grouped by subject.
Imports torch, numpy, scikit-learn and engine (never DeepSpeed).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.batch import pack_tokens
from engine.config import Config
from engine.data import method_options
from engine.export import load_encoder, random_init_encoder
from engine.model import Encoder
from modalities import Modality
from pipelines.shards import ShardDataset, ShardError

POOLS = ("mean", "meanstd", "position")
PROBES = ("linear", "attentive")


@torch.no_grad()
def encode_records(
    encoder: Encoder,
    cfg: Config,
    modality: Modality,
    ds: ShardDataset,
    batch_size: int = 64,
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(coords [N_i, c], features [N_i, D] fp32) of every record, in storage order."""
    stats, opts = ds.stats, method_options(modality, cfg)
    for lo in range(0, len(ds), batch_size):
        toks = [
            modality.tokenize(ds[i], stats, opts) for i in range(lo, min(lo + batch_size, len(ds)))
        ]
        b = pack_tokens(
            [t["tokens"] for t in toks], [t["coords"] for t in toks], modality.position_columns
        )
        h = encoder.forward_all(b.tokens, b.coords, b.n_tokens, b.packing).float()
        for j, t in enumerate(toks):
            yield np.asarray(t["coords"]), h[j, : len(t["tokens"])]


def token_features(
    encoder: Encoder, cfg: Config, modality: Modality, ds: ShardDataset, batch_size: int = 64
) -> list[np.ndarray]:
    """Every record's token features [N_i, D] (float32), records in storage order."""
    return [h.numpy() for _, h in encode_records(encoder, cfg, modality, ds, batch_size)]


def extract_features(
    encoder: Encoder,
    cfg: Config,
    modality: Modality,
    ds: ShardDataset,
    batch_size: int = 64,
    pool: str = "mean",
) -> np.ndarray:
    """Pooled encoder features per record, records in storage order.

    `pool`: "mean" over a record's tokens ([num_records, D]); "meanstd" mean and standard
    deviation over tokens ([num_records, 2D]); "position" the mean over the tokens that share
    their first coordinate (the ROI of an fMRI grid, the channel of an EEG record), concatenated
    in the order of that coordinate ([num_records, P * D]); every record must have the same set.
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    feats = []
    keys_seen: np.ndarray | None = None
    for j, (coords, hj) in enumerate(encode_records(encoder, cfg, modality, ds, batch_size)):
        if pool == "mean":
            feats.append(hj.mean(0).numpy())
        elif pool == "meanstd":
            feats.append(torch.cat([hj.mean(0), hj.std(0, unbiased=False)]).numpy())
        else:
            key = torch.as_tensor(coords[:, 0])
            keys, inverse = torch.unique(key, return_inverse=True)
            if keys_seen is None:
                keys_seen = keys.numpy()
            elif not np.array_equal(keys_seen, keys.numpy()):
                raise ValueError(
                    f"record {j} has other positions ({len(keys)}) than record 0 "
                    f"({len(keys_seen)}); --pool position needs the same set in every record"
                )
            sums = torch.zeros(len(keys), hj.shape[1]).index_add_(0, inverse, hj)
            counts = torch.bincount(inverse, minlength=len(keys)).clamp_min(1)
            feats.append((sums / counts[:, None]).reshape(-1).numpy())
    return np.stack(feats)


def is_classification(labels: np.ndarray) -> bool:
    """Strings, booleans and integers are classes; floats are regression targets."""
    return labels.dtype.kind in "OUSbiu"


def classifies(labels: np.ndarray, task: str) -> bool:
    """Whether `task` (auto|classification|regression) on `labels` is classification;
    ValueError for a single class."""
    classify = is_classification(labels) if task == "auto" else task == "classification"
    if classify and len(np.unique(labels)) < 2:
        raise ValueError("the label column has a single class; nothing to probe")
    return classify


def probe_splits(
    labels: np.ndarray,
    classify: bool,
    folds: int = 5,
    seed: int = 0,
    groups: np.ndarray | None = None,
    train_groups: int | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs.

    Without `train_groups`: k-fold cross-validation, stratified for classes, grouped when
    `groups` is given (no group on both sides). With `train_groups` = N: `folds` random draws of
    N groups (records when `groups` is None) to train on, as evenly over the classes as the
    groups allow, testing on every other group: the few-labels setting.
    """
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    n = len(labels)
    if groups is None:
        groups_arr = np.arange(n)
        grouped = False
    else:
        groups_arr = np.asarray(groups)
        grouped = True
    uniq = np.unique(groups_arr)
    if train_groups is not None:
        if not 1 <= train_groups < len(uniq):
            raise ValueError(
                f"--labels {train_groups}: need between 1 and {len(uniq) - 1} labelled "
                f"{'groups' if grouped else 'records'} (there are {len(uniq)})"
            )
        rng = np.random.default_rng([seed, 0x4C4142])
        # each group's class: the most common label among its records
        group_class = {}
        for g in uniq:
            vals, counts = np.unique(labels[groups_arr == g], return_counts=True)
            group_class[g] = vals[counts.argmax()] if classify else 0
        classes = sorted({group_class[g] for g in uniq}, key=str)
        out = []
        for _ in range(folds):
            pools = [rng.permutation([g for g in uniq if group_class[g] == c]) for c in classes]
            # round-robin over the classes (a class that runs out is skipped)
            none = object()
            order = [g for row in itertools.zip_longest(*pools, fillvalue=none) for g in row]
            picked = [g for g in order if g is not none][:train_groups]
            train = np.isin(groups_arr, picked)
            out.append((np.flatnonzero(train), np.flatnonzero(~train)))
        return out
    if grouped and len(uniq) < folds:
        raise ValueError(
            f"only {len(uniq)} groups (subjects) for {folds} folds; "
            "lower --folds or pass --group-by none"
        )
    if classify:
        _, counts = np.unique(labels, return_counts=True)
        if counts.min() < folds:
            raise ValueError(
                f"the rarest class has {counts.min()} records, fewer than {folds} folds"
            )
        cv = (
            StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
            if grouped
            else StratifiedKFold(folds, shuffle=True, random_state=seed)
        )
    else:
        cv = GroupKFold(folds) if grouped else KFold(folds, shuffle=True, random_state=seed)
    x = np.zeros((n, 1))
    return list(cv.split(x, labels, groups_arr if grouped else None))


def _summary(scores: list[float], metric: str, splits, labels, groups) -> dict[str, Any]:
    arr = np.asarray(scores)
    return {
        "metric": metric,
        "mean": float(arr.mean()),
        "std": float(arr.std()),
        "scores": arr.tolist(),
        "folds": len(splits),
        "n": int(len(labels)),
        "n_train": [int(len(tr)) for tr, _ in splits],
        "groups": None if groups is None else int(len(np.unique(groups))),
    }


def linear_probe(
    features: np.ndarray,
    labels: np.ndarray,
    folds: int = 5,
    seed: int = 0,
    task: str = "auto",
    groups: np.ndarray | None = None,
    train_groups: int | None = None,
) -> dict[str, Any]:
    """Score of a standardised linear model (accuracy of a logistic regression, or R^2 of a
    ridge) over `probe_splits`: k-fold CV, or `train_groups` labelled groups per draw."""
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classify = classifies(labels, task)
    splits = probe_splits(labels, classify, folds, seed, groups, train_groups)
    if classify:
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    else:
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
    scores = []
    for train, test in splits:
        m = clone(model).fit(features[train], labels[train])
        pred = m.predict(features[test])
        scores.append(
            accuracy_score(labels[test], pred) if classify else r2_score(labels[test], pred)
        )
    return _summary(scores, "accuracy" if classify else "r2", splits, labels, groups)


class AttentiveProbe(nn.Module):
    """V-JEPA's attentive probe: one learned query cross-attends over a record's frozen tokens
    (layer-normed), a residual MLP, then a linear head."""

    def __init__(self, dim: int, out: int, heads: int | None = None) -> None:
        super().__init__()
        heads = heads or next(h for h in (8, 4, 2, 1) if dim % h == 0)
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.head = nn.Linear(dim, out)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """x [B, N, D] tokens, pad [B, N] True at padding -> [B, out]."""
        kv = self.norm(x)
        a = self.attn(self.query.expand(len(x), -1, -1), kv, kv, key_padding_mask=pad)[0][:, 0]
        a = a + self.mlp(self.norm2(a))
        return self.head(a)


def _padded(tokens: Sequence[np.ndarray], idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(tokens[i]) for i in idx)
    d = tokens[idx[0]].shape[1]
    x = torch.zeros(len(idx), n, d)
    pad = torch.ones(len(idx), n, dtype=torch.bool)
    for j, i in enumerate(idx):
        x[j, : len(tokens[i])] = torch.as_tensor(tokens[i])
        pad[j, : len(tokens[i])] = False
    return x, pad


def attentive_probe(
    tokens: Sequence[np.ndarray],
    labels: np.ndarray,
    folds: int = 5,
    seed: int = 0,
    task: str = "auto",
    groups: np.ndarray | None = None,
    train_groups: int | None = None,
    steps: int = 300,
    lr: float = 3e-3,
    weight_decay: float = 0.05,
    batch_size: int = 32,
) -> dict[str, Any]:
    """`AttentiveProbe` on each record's token features [N_i, D], trained with AdamW (cross
    entropy, or squared error on standardised targets) for `steps` batches drawn from each
    split's training records (a step count, not epochs, so a few labelled records still get a
    trained probe); scored like `linear_probe` (accuracy or R^2 on the test records)."""
    from sklearn.metrics import accuracy_score, r2_score

    classify = classifies(labels, task)
    splits = probe_splits(labels, classify, folds, seed, groups, train_groups)
    if classify:
        classes, y_all = np.unique(labels, return_inverse=True)
        y = torch.as_tensor(y_all, dtype=torch.long)
    else:
        y = torch.as_tensor(np.asarray(labels, dtype=np.float64), dtype=torch.float32)
    dim = tokens[0].shape[1]
    scores = []
    for k, (train, test) in enumerate(splits):
        torch.manual_seed(seed * 1000 + k)
        model = AttentiveProbe(dim, len(classes) if classify else 1)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        mu, sd = (0.0, 1.0) if classify else (float(y[train].mean()), float(y[train].std()) or 1.0)
        rng = np.random.default_rng([seed, k])
        for _ in range(steps):
            idx = rng.choice(train, min(batch_size, len(train)), replace=False)
            x, pad = _padded(tokens, idx)
            out = model(x, pad)
            if classify:
                loss = nn.functional.cross_entropy(out, y[idx])
            else:
                loss = nn.functional.mse_loss(out[:, 0], (y[idx] - mu) / sd)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            preds = []
            for lo in range(0, len(test), 256):
                x, pad = _padded(tokens, test[lo : lo + 256])
                preds.append(model(x, pad))
            out = torch.cat(preds)
        if classify:
            scores.append(accuracy_score(y_all[test], out.argmax(1).numpy()))
        else:
            scores.append(r2_score(y[test].numpy(), out[:, 0].numpy() * sd + mu))
    return _summary(scores, "accuracy" if classify else "r2", splits, labels, groups)


def token_probe(
    tokens: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    groups: np.ndarray | None = None,
    folds: int = 5,
    max_tokens: int = 512,
) -> dict[str, Any]:
    """R^2 of a ridge regression (standardised features, alpha by inner CV) of a per-token
    target from each token's features, k folds over records grouped by `groups` (a record's
    tokens never straddle train and test). tokens[i] [N_i, D], targets[i] [N_i] or [N_i, k];
    at most `max_tokens` evenly spaced tokens of a record are used."""
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = len(tokens)
    rec_groups = np.arange(n) if groups is None else np.asarray(groups)
    if len(np.unique(rec_groups)) < folds:
        raise ValueError(f"only {len(np.unique(rec_groups))} groups for {folds} folds")
    xs, ys, gs = [], [], []
    for i in range(n):
        t, y = np.asarray(tokens[i]), np.asarray(targets[i], dtype=np.float64)
        if len(t) != len(y):
            raise ValueError(f"record {i}: {len(t)} token features but {len(y)} token targets")
        keep = np.unique(np.linspace(0, len(t) - 1, min(len(t), max_tokens)).round().astype(int))
        xs.append(t[keep])
        ys.append(y[keep].reshape(len(keep), -1))
        gs.append(np.full(len(keep), rec_groups[i]))
    x, y, g = np.concatenate(xs), np.concatenate(ys), np.concatenate(gs)
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
    scores = []
    for train, test in GroupKFold(folds).split(x, y, g):
        m = model.fit(x[train], y[train])
        scores.append(r2_score(y[test], m.predict(x[test])))
    return {
        "metric": "r2",
        "mean": float(np.mean(scores)),
        "std": float(np.std(scores)),
        "scores": [float(v) for v in scores],
        "folds": folds,
        "n": n,
        "tokens": int(len(x)),
    }


def _default_json(checkpoint: str, args: argparse.Namespace, mixed: bool = False) -> Path:
    """Next to the checkpoint probed: the export or checkpoint directory, or a run directory's
    latest checkpoint. `mixed`: the run read several datasets (`data.sources`), so the name
    says which one this probe read."""
    from engine.checkpoint import latest_checkpoint

    path = Path(checkpoint)
    if not (path / "state.json").is_file() and not (path / "config.json").is_file():
        path = latest_checkpoint(path) or path
    name = f"probe-{args.label}-{args.probe}"
    if args.probe == "linear":
        name += f"-{args.pool}"
    name += "-random-init" if args.random_init else f"-{args.encoder}"
    name += f"-labels{args.labels}" if args.labels else ""
    name += f"-{Path(args.data).name}" if mixed else ""
    return path / f"{name}.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m engine.probe",
        description="Linear or attentive probe of a frozen encoder (k-fold CV or few labels).",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="run directory (latest checkpoint), checkpoint directory or export",
    )
    p.add_argument("--data", required=True, help="dataset directory")
    p.add_argument("--label", required=True, help="column holding the label")
    p.add_argument("--probe", choices=PROBES, default="linear")
    p.add_argument(
        "--folds", type=int, default=5, help="CV folds, or draws with --labels (default 5)"
    )
    p.add_argument(
        "--labels",
        type=int,
        metavar="N",
        help="train the probe on N labelled subjects (records when ungrouped) per draw and "
        "test on all the others, instead of k-fold CV",
    )
    p.add_argument("--task", choices=("auto", "classification", "regression"), default="auto")
    p.add_argument("--encoder", choices=("target", "context"), default="target")
    p.add_argument(
        "--group-by",
        default="auto",
        metavar="COLUMN",
        help="keep each value of COLUMN within one fold (default: `subject` when the dataset "
        "has it; `none` turns grouping off)",
    )
    p.add_argument(
        "--random-init",
        action="store_true",
        help="probe the same architecture with fresh random weights (the baseline to beat)",
    )
    p.add_argument(
        "--baseline",
        action="store_true",
        help="also probe the random-init encoder in the same run and report both",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--pool",
        choices=POOLS,
        default="mean",
        help="linear probe: how token features become one vector per record (default mean; "
        "position: per ROI / channel means, concatenated)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="repeat the split with seeds SEED..SEED+R-1 and report the mean and std of the R "
        "averaged scores (split noise is large with few subjects)",
    )
    p.add_argument("--seed", type=int, default=0, help="split seed")
    p.add_argument(
        "--init-seed",
        type=int,
        help="the random init's seed (default: the run's train.seed, so the baseline is the "
        "very weights the run started from)",
    )
    p.add_argument(
        "--steps", type=int, default=300, help="attentive probe: training steps per split"
    )
    p.add_argument(
        "--json",
        metavar="FILE",
        help="where to write the results (default: next to the checkpoint, "
        "probe-LABEL-PROBE[-POOL]-ENCODER[-labelsN].json, ENCODER random-init with --random-init)",
    )
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.random_init and args.baseline:
        p.error("--random-init probes only the baseline; --baseline probes both")
    try:
        ds = ShardDataset(args.data)
        # the dataset's modality: its embedder, when the run trained several on one trunk
        encoder, cfg, modality = load_encoder(args.checkpoint, args.encoder, ds.modality)
        labels = read_column(ds, args.data, args.label)
        group_col = args.group_by
        if group_col == "auto":
            group_col = "subject" if "subject" in ds.schema.names else "none"
        groups = None if group_col == "none" else read_column(ds, args.data, group_col)
        keep = np.asarray([v is not None for v in labels])
        if not keep.all():
            print(
                f"engine.probe: {int((~keep).sum())} records without a label are left out",
                file=sys.stderr,
            )
        encoders: dict[str, Encoder] = {}
        if not args.random_init:
            encoders[args.encoder] = encoder
        if args.random_init or args.baseline:
            init_seed = cfg.train.seed if args.init_seed is None else args.init_seed
            encoders["random-init"] = random_init_encoder(modality, cfg, ds.stats, init_seed)
        results = {}
        for name, enc in encoders.items():
            results[name] = _probe_runs(args, enc, cfg, modality, ds, labels, groups, keep)
    except (ValueError, ShardError, OSError, RuntimeError) as e:
        print(f"engine.probe: error: {e}", file=sys.stderr)
        return 1
    for name, res in results.items():
        print(_describe(args, res, name, group_col))
    mixed = bool(cfg.data.sources)
    out = Path(args.json) if args.json else _default_json(args.checkpoint, args, mixed)
    record = {
        "checkpoint": str(args.checkpoint),
        "data": str(args.data),
        "label": args.label,
        "probe": args.probe,
        "pool": args.pool if args.probe == "linear" else None,
        "labels": args.labels,
        "group_by": group_col,
        "seed": args.seed,
        "init_seed": init_seed if "random-init" in encoders else None,
        "results": results,
    }
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(out)
    except OSError as e:
        print(f"engine.probe: error: cannot write {out} ({e})", file=sys.stderr)
        return 1
    print(f"results written to {out}")
    return 0


def _probe_runs(args, encoder, cfg, modality, ds, labels, groups, keep) -> dict[str, Any]:
    """The probe of one encoder over `--repeats` split seeds: the runs and their summary."""
    y = np.asarray(labels[keep].tolist())
    g = None if groups is None else groups[keep]
    if args.probe == "linear":
        feats = extract_features(encoder, cfg, modality, ds, args.batch_size, args.pool)[keep]
        width = feats.shape[1]
        runs = [
            linear_probe(feats, y, args.folds, args.seed + r, args.task, g, args.labels)
            for r in range(args.repeats)
        ]
    else:
        tokens = token_features(encoder, cfg, modality, ds, args.batch_size)
        tokens = [t for t, k in zip(tokens, keep, strict=True) if k]
        width = tokens[0].shape[1]
        runs = [
            attentive_probe(
                tokens, y, args.folds, args.seed + r, args.task, g, args.labels, args.steps
            )
            for r in range(args.repeats)
        ]
    means = np.array([r["mean"] for r in runs])
    return {
        "metric": runs[0]["metric"],
        "mean": float(means.mean()) if len(runs) > 1 else runs[0]["mean"],
        "std": float(means.std()) if len(runs) > 1 else runs[0]["std"],
        "spread": f"std over {len(runs)} split seeds" if len(runs) > 1 else "std over splits",
        "features": int(width),
        "runs": runs,
    }


def _describe(args, res: dict[str, Any], name: str, group_col: str) -> str:
    first = res["runs"][0]
    grouping = "" if first["groups"] is None else f", grouped by {group_col} ({first['groups']})"
    if args.labels:
        unit = f"{group_col}s" if first["groups"] else "records"
        split = f"{first['folds']} draws of {args.labels} labelled {unit}"
    else:
        split = f"{first['folds']}-fold CV"
    what = f"{args.pool}-pooled" if args.probe == "linear" else "attentive-probed"
    return (
        f"probe {args.label}: {res['metric']} {res['mean']:.4f} +- {res['std']:.4f} "
        f"({split}{grouping}, {res['spread']}, {first['n']} records, "
        f"{res['features']}-d {what} {name} features)"
    )


def read_column(ds: ShardDataset, data: str, name: str) -> np.ndarray:
    """Every record's `name` value (object dtype when some are null); ValueError naming the
    dataset and its columns when there is no such column."""
    if name not in ds.schema.names:
        raise ValueError(f"{data}: no column {name!r}; columns: {ds.schema.names}")
    values = [v for b in ds.iter_batches([name]) for v in b.column(0).to_pylist()]
    return np.asarray(values, dtype=object if any(v is None for v in values) else None)


if __name__ == "__main__":
    sys.exit(main())
