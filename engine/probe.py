"""`python -m engine.probe --checkpoint RUN_DIR --data DIR --label COLUMN`: linear probe.

The frozen encoder (EMA target by default) encodes every token of every record; features are
pooled per record (`--pool`: mean, mean and std, or per-position means); a linear model (logistic
regression for class labels, ridge for numeric ones) is scored with k-fold cross-validation and
the mean and std over folds are printed (`--repeats R`: over R fold seeds).
Folds are grouped by subject when the dataset has a `subject` column: windows of one recording
are near-duplicates, and letting them straddle train and test would score identity, not the label.
`--random-init` probes the same architecture with fresh weights, the baseline pretraining must beat.
Imports torch, numpy, scikit-learn and engine (never DeepSpeed).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np
import torch

from engine.config import Config
from engine.data import pad_tokens
from engine.export import load_encoder
from engine.model import Encoder
from modalities import Modality
from pipelines.shards import ShardDataset, ShardError

POOLS = ("mean", "meanstd", "position")


@torch.no_grad()
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
    stats = ds.stats
    feats = []
    keys_seen: np.ndarray | None = None
    for lo in range(0, len(ds), batch_size):
        samples = []
        for i in range(lo, min(lo + batch_size, len(ds))):
            t = modality.tokenize(ds[i], stats, cfg)
            samples.append(argparse.Namespace(tokens=t["tokens"], coords=t["coords"]))
        b = pad_tokens(samples)
        h = encoder.forward_all(b["tokens"], b["coords"], b["n_tokens"], b["all_packing"]).float()
        for j, sample in enumerate(samples):
            hj = h[j, : len(sample.tokens)]
            if pool == "mean":
                feats.append(hj.mean(0).numpy())
            elif pool == "meanstd":
                feats.append(torch.cat([hj.mean(0), hj.std(0, unbiased=False)]).numpy())
            else:
                key = torch.as_tensor(np.asarray(sample.coords)[:, 0])
                keys, inverse = torch.unique(key, return_inverse=True)
                if keys_seen is None:
                    keys_seen = keys.numpy()
                elif not np.array_equal(keys_seen, keys.numpy()):
                    raise ValueError(
                        f"record {lo + j} has other positions ({len(keys)}) than record 0 "
                        f"({len(keys_seen)}); --pool position needs the same set in every record"
                    )
                sums = torch.zeros(len(keys), hj.shape[1]).index_add_(0, inverse, hj)
                counts = torch.bincount(inverse, minlength=len(keys)).clamp_min(1)
                feats.append((sums / counts[:, None]).reshape(-1).numpy())
    return np.stack(feats)


def is_classification(labels: np.ndarray) -> bool:
    """Strings, booleans and integers are classes; floats are regression targets."""
    return labels.dtype.kind in "OUSbiu"


def linear_probe(
    features: np.ndarray,
    labels: np.ndarray,
    folds: int = 5,
    seed: int = 0,
    task: str = "auto",
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """k-fold CV score of a standardised linear model: accuracy (logistic) or R^2 (ridge).

    With `groups`, no group is split across train and test (grouped, stratified folds).
    """
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.model_selection import (
        GroupKFold,
        KFold,
        StratifiedGroupKFold,
        StratifiedKFold,
        cross_val_score,
    )
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classify = is_classification(labels) if task == "auto" else task == "classification"
    if classify:
        _, counts = np.unique(labels, return_counts=True)
        if len(counts) < 2:
            raise ValueError("the label column has a single class; nothing to probe")
        if counts.min() < folds:
            raise ValueError(
                f"the rarest class has {counts.min()} records, fewer than {folds} folds"
            )
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        cv = (
            StratifiedKFold(folds, shuffle=True, random_state=seed)
            if groups is None
            else StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
        )
        metric = "accuracy"
    else:
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
        cv = KFold(folds, shuffle=True, random_state=seed) if groups is None else GroupKFold(folds)
        metric = "r2"
    if groups is not None and len(np.unique(groups)) < folds:
        raise ValueError(
            f"only {len(np.unique(groups))} groups (subjects) for {folds} folds; "
            "lower --folds or pass --group-by none"
        )
    scores = cross_val_score(model, features, labels, groups=groups, cv=cv, scoring=metric)
    return {
        "metric": metric,
        "mean": float(scores.mean()),
        "std": float(scores.std()),
        "scores": scores.tolist(),
        "folds": folds,
        "n": int(len(labels)),
        "groups": None if groups is None else int(len(np.unique(groups))),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m engine.probe",
        description="Linear probe of a frozen encoder with k-fold cross-validation.",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="run directory (latest checkpoint), checkpoint directory or export",
    )
    p.add_argument("--data", required=True, help="dataset directory")
    p.add_argument("--label", required=True, help="column holding the label")
    p.add_argument("--folds", type=int, default=5)
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
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--pool",
        choices=POOLS,
        default="mean",
        help="how token features become one vector per record (default mean; position: per "
        "ROI / channel means, concatenated)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="repeat the k-fold split with fold seeds SEED..SEED+R-1 and report the mean and "
        "std of the R fold-averaged scores (split noise is large with few subjects)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="fold seed, and the init seed of --random-init"
    )
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")
    try:
        encoder, cfg, modality = load_encoder(args.checkpoint, args.encoder)
        if args.random_init:
            torch.manual_seed(args.seed)
            encoder = Encoder(modality.embedder(cfg, ShardDataset(args.data).stats), cfg.model)
            encoder = encoder.eval()
        ds = ShardDataset(args.data)
        labels = _column(ds, args.data, args.label)
        group_col = args.group_by
        if group_col == "auto":
            group_col = "subject" if "subject" in ds.schema.names else "none"
        groups = None if group_col == "none" else _column(ds, args.data, group_col)
        keep = np.asarray([v is not None for v in labels])
        if not keep.all():
            print(
                f"engine.probe: {int((~keep).sum())} records without a label are left out",
                file=sys.stderr,
            )
        feats = extract_features(encoder, cfg, modality, ds, args.batch_size, args.pool)
        runs = [
            linear_probe(
                feats[keep],
                np.asarray(labels[keep].tolist()),
                args.folds,
                args.seed + r,
                args.task,
                None if groups is None else groups[keep],
            )
            for r in range(args.repeats)
        ]
    except (ValueError, ShardError, OSError, RuntimeError) as e:
        print(f"engine.probe: error: {e}", file=sys.stderr)
        return 1
    res = runs[0]
    grouping = "" if res["groups"] is None else f", grouped by {group_col} ({res['groups']})"
    init = "random-init" if args.random_init else args.encoder
    if args.repeats == 1:
        mean, std, spread = res["mean"], res["std"], "std over folds"
    else:
        means = np.array([r["mean"] for r in runs])
        mean, std, spread = means.mean(), means.std(), f"std over {args.repeats} fold seeds"
    print(
        f"probe {args.label}: {res['metric']} {mean:.4f} +- {std:.4f} "
        f"({res['folds']}-fold CV{grouping}, {spread}, {res['n']} records, "
        f"{feats.shape[1]}-d {args.pool}-pooled {init} features)"
    )
    return 0


def _column(ds: ShardDataset, data: str, name: str) -> np.ndarray:
    if name not in ds.schema.names:
        raise ValueError(f"{data}: no column {name!r}; columns: {ds.schema.names}")
    values = [v for b in ds.iter_batches([name]) for v in b.column(0).to_pylist()]
    return np.asarray(values, dtype=object if any(v is None for v in values) else None)


if __name__ == "__main__":
    sys.exit(main())
