"""The points controls (modalities/points/demo.py): what pretrained record features carry,
beside the same encoder at its random init.

- The cohort's three labels (its `labels.csv`, matched to each record's source): `orientation`
  (aligned / independent parts) and `arrangement` (square / tetrahedron), the structural ones,
  and `part` (ellipsoid / box / cylinder / torus), the plain class, each from mean+std pooled
  target-encoder features by a logistic probe trained on `--labels` files per draw, `--folds`
  draws, tested on the rest (`engine.probe.linear_probe`, as `engine.probe --labels N --pool
  meanstd`).
- `--oracle`: `orientation_score` and `arrangement_score` (one number per file) through the same
  probe: that each structural label is readable at all.

    python benchmarks/points_probe.py --data DS --raw RAW --run RUN:SEED [...] \
        [--labels 4 8 32] [--folds 10] [--oracle] [--json FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# Run as a script, this folder is first on sys.path and its kernels.py would shadow the package.
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p).resolve() != REPO / "benchmarks"]

from engine.export import load_run_and_baseline  # noqa: E402
from engine.probe import extract_features, linear_probe, read_column  # noqa: E402
from modalities.points.demo import arrangement_score, orientation_score  # noqa: E402
from pipelines.shards import ShardDataset  # noqa: E402


def cohort_labels(ds: ShardDataset, data: str, raw: Path) -> dict[str, np.ndarray]:
    """{label: [record]} of the cohort's labels.csv, matched by each record's source path."""
    with open(raw / "labels.csv", newline="", encoding="utf-8") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    sources = [str(Path(s).relative_to(raw.resolve())) for s in read_column(ds, data, "source")]
    names = [k for k in ("orientation", "arrangement", "part") if k in next(iter(rows.values()))]
    return {k: np.array([rows[s][k] for s in sources]) for k in names}


def probe_all(x: np.ndarray, labels: dict[str, np.ndarray], ns: list[int], folds: int) -> dict:
    out = {}
    for name, y in labels.items():
        for n in ns:
            r = linear_probe(x, y, folds, 0, train_groups=n)
            out[f"{name}_{n}"] = [r["mean"], r["std"]]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the ingested control")
    p.add_argument("--raw", required=True, type=Path, help="the generated cohort (labels.csv)")
    p.add_argument("--run", nargs="*", default=[], metavar="RUN:SEED")
    p.add_argument("--labels", type=int, nargs="+", default=[8], help="labelled files per draw")
    p.add_argument("--folds", type=int, default=10, help="probe draws")
    p.add_argument("--oracle", action="store_true")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    ds = ShardDataset(args.data)
    labels = cohort_labels(ds, args.data, args.raw)
    results: dict[str, dict] = {}
    if args.oracle:
        for name, score in (("orientation", orientation_score), ("arrangement", arrangement_score)):
            if name not in labels:
                continue
            recs = (ds[i] for i in range(len(ds)))
            x = np.array([[score(r["points"], int(r["valid_points"]))] for r in recs])
            res = probe_all(x, {name: labels[name]}, args.labels, args.folds)
            results[f"oracle/{name}"] = res
            print(
                f"oracle {score.__name__}: " + "; ".join(f"{k} {v[0]:.3f}" for k, v in res.items())
            )
    for spec in args.run:
        try:
            run, encoder, random_init, cfg, modality = load_run_and_baseline(spec, ds.stats)
        except ValueError as e:
            p.error(str(e))
        for name, enc in (("pretrained", encoder), ("random-init", random_init)):
            feats = extract_features(enc, cfg, modality, ds, pool="meanstd")
            res = probe_all(feats, labels, args.labels, args.folds)
            results[f"{run}/{name}"] = res
            line = "; ".join(f"{k} {v[0]:.3f} +- {v[1]:.3f}" for k, v in res.items())
            print(f"{run} {name:>11}: {line}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"data": args.data, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
