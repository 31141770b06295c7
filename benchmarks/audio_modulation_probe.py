"""The audio comodulation control (modalities/audio/modulation.py): what pretrained token and
record features carry, beside the same encoder at its random init.

- token: each patch's modulation rate (the mean log-rate over its 16 frames, from the cohort's
  `rates.npy`), predicted from the patch's encoder features by a ridge regression (R^2, 5 folds
  grouped by file: `engine.probe.token_probe`).
- record: the `sync` label (comodulated / independent) from mean+std pooled features, a
  logistic probe trained on `--labels` files per draw, `--folds` draws, tested on the rest
  (`engine.probe.linear_probe`, as `engine.probe --labels N --pool meanstd`).
- record: the plain class `sound` (noise / tone / chirp / bursts, from the cohort's
  `labels.csv`), the same pooled features and probe: what one patch shows, which random
  features should read as well as pretrained ones.
- `--oracle`: `sync_score` (one number per file, no fitting beyond a threshold) through the same
  probe: that the label is readable at all.
- `--patches`: the tokens themselves (each record's 16 x 16 log-mel patches as the first
  `--run`'s tokenizer cuts them, mean+std pooled, no encoder) through the same probe: how much
  of `sync` a per-patch statistic reads (the control's claim is little; on the generator's
  peak-normalised version 2, pooled patch embeddings read it at 0.89 with 32 labels).

    python benchmarks/audio_modulation_probe.py --data DS --raw RAW --run RUN:SEED [...] \
        [--labels 8] [--folds 10] [--oracle] [--patches] [--json FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
# Run as a script, this folder is first on sys.path and its kernels.py would shadow the package.
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p).resolve() != REPO / "benchmarks"]

from engine.data import method_options  # noqa: E402
from engine.export import load_run_and_baseline  # noqa: E402
from engine.probe import encode_records, linear_probe, read_column, token_probe  # noqa: E402
from modalities.audio.modulation import file_index, sync_score  # noqa: E402
from pipelines.shards import ShardDataset  # noqa: E402


def token_rates(record: dict, rates: np.ndarray, coords: np.ndarray, patch_time: int) -> np.ndarray:
    """Each token's mean log-rate over its frames (coords[:, 1]: the time patch)."""
    r = np.log(rates[file_index(record["source"])])
    start = int(round(float(record["offset_s"]) * 100))  # 10-ms frames
    out = []
    for t in coords[:, 1].astype(int):
        lo = start + t * patch_time
        seg = r[lo : lo + patch_time]
        out.append(seg.mean() if len(seg) else np.nan)
    return np.asarray(out)


def features(encoder, cfg, modality, ds, rates, patch_time):
    tokens, targets, pooled = [], [], []
    for i, (coords, h) in enumerate(encode_records(encoder, cfg, modality, ds)):
        y = token_rates(ds[i], rates, coords, patch_time)
        keep = np.isfinite(y)
        tokens.append(h.numpy()[keep])
        targets.append(y[keep])
        pooled.append(torch.cat([h.mean(0), h.std(0, unbiased=False)]).numpy())
    return tokens, targets, np.stack(pooled)


def patch_pooled(cfg, modality, ds) -> np.ndarray:
    """Every record's tokens (the patches the encoder reads), mean+std pooled: [records, 2P]."""
    opts, out = method_options(modality, cfg), []
    for i in range(len(ds)):
        x = np.asarray(modality.tokenize(ds[i], ds.stats, opts)["tokens"], dtype=np.float64)
        out.append(np.concatenate([x.mean(0), x.std(0)]))
    return np.stack(out)


def plain_class(ds: ShardDataset, raw: Path) -> np.ndarray | None:
    """Each record's `sound` from the cohort's labels.csv (None for a version-1 cohort, or
    one of a single sound)."""
    with open(raw / "labels.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "sound" not in rows[0]:
        return None
    by_file = {file_index(r["path"]): r["sound"] for r in rows}
    out = np.array([by_file[file_index(ds[i]["source"])] for i in range(len(ds))])
    return out if len(set(out)) > 1 else None  # `--sounds noise`: nothing to tell apart


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the ingested control")
    p.add_argument("--raw", required=True, help="the generated cohort (holds rates.npy)")
    p.add_argument("--run", nargs="*", default=[], metavar="RUN:SEED")
    p.add_argument(
        "--labels", type=int, nargs="+", default=[8], help="labelled files per record-probe draw"
    )
    p.add_argument("--folds", type=int, default=10, help="record-probe draws")
    p.add_argument("--oracle", action="store_true")
    p.add_argument("--patches", action="store_true", help="probe the pooled patches too")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    ds = ShardDataset(args.data)
    rates = np.load(Path(args.raw) / "rates.npy")
    y = read_column(ds, args.data, "label")
    sound = plain_class(ds, Path(args.raw))
    results: dict[str, dict] = {}
    if args.oracle:
        recs = (ds[i] for i in range(len(ds)))
        x = np.array([[sync_score(r["mel"], valid_frames=int(r["valid_frames"]))] for r in recs])
        for n in args.labels:
            r = linear_probe(x, y, args.folds, 0, train_groups=n)
            results[f"oracle/{n}"] = {"accuracy": r["mean"], "std": r["std"]}
            print(f"oracle sync_score, {n} labels: {r['mean']:.3f} +- {r['std']:.3f}", flush=True)
    for spec in args.run:
        try:
            run, encoder, random_init, cfg, modality = load_run_and_baseline(spec, ds.stats)
        except ValueError as e:
            p.error(str(e))
        patch_time = int(method_options(modality, cfg).patch_time)
        if args.patches and "patches" not in results:
            pooled, res, line = patch_pooled(cfg, modality, ds), {}, "patches (no encoder):"
            for n in args.labels:
                r = linear_probe(pooled, y, args.folds, 0, train_groups=n)
                res[f"sync_{n}"] = [r["mean"], r["std"]]
                line += f" sync {n} labels {r['mean']:.3f} +- {r['std']:.3f};"
            results["patches"] = res
            print(line.rstrip(";"), flush=True)
        for name, enc in (("pretrained", encoder), ("random-init", random_init)):
            toks, targs, pooled = features(enc, cfg, modality, ds, rates, patch_time)
            t = token_probe(toks, targs, None)
            res = {"token_rate_r2": t["mean"], "token_rate_r2_std": t["std"]}
            line = f"{run} {name:>11}: token rate R2 {t['mean']:.3f} +- {t['std']:.3f}"
            for n in args.labels:
                r = linear_probe(pooled, y, args.folds, 0, train_groups=n)
                res[f"sync_{n}"] = [r["mean"], r["std"]]
                line += f"; sync {n} labels {r['mean']:.3f} +- {r['std']:.3f}"
            if sound is not None:
                for n in args.labels:
                    r = linear_probe(pooled, sound, args.folds, 0, train_groups=n)
                    res[f"sound_{n}"] = [r["mean"], r["std"]]
                    line += f"; sound {n} labels {r['mean']:.3f} +- {r['std']:.3f}"
            results[f"{run}/{name}"] = res
            print(line, flush=True)
    if args.json:
        args.json.write_text(json.dumps({"data": args.data, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
