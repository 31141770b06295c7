"""Measure CPU JEPA training on demo fMRI shards: step samples/s, loader-alone samples/s, peak RSS.

    python benchmarks/train_fmri.py [--data demo_data/fmri] [--steps 12] [--loader-batches 12]
        [--config engine/configs/fmri_demo.yaml] [section.key=value ...]

(1) the loader alone (`engine.data.JEPALoader`: read, tokenize, mask, collate in the workers) for
`--loader-batches` batches; (2) `python -m engine.train` for `--steps` steps in a subprocess,
its steady-state samples/s being the median per-step rate after two warm-up steps, and the peak
resident memory of its whole process tree (trainer + loader workers) sampled every 50 ms.
Prints one JSON line; docs/benchmarks.md ("## Engine") records the numbers. Never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(p.name))
    total, stack = 0, [pid]
    while stack:
        q = stack.pop()
        stack.extend(children.get(q, []))
        try:
            for line in Path(f"/proc/{q}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def bench_loader(cfg, modality, batches: int) -> float:
    from engine.data import JEPALoader

    it = iter(JEPALoader(cfg, modality))
    next(it)  # worker start-up and first shard open are not the steady state
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * cfg.data.batch_size / (time.perf_counter() - t0)


def bench_train(args, out: Path) -> tuple[float, int, list[float]]:
    cmd = [
        sys.executable,
        "-m",
        "engine.train",
        "--data",
        args.data,
        "--out",
        str(out),
        "--steps",
        str(args.steps),
        "--save-every",
        "0",
        "--config",
        args.config,
        "train.progress=false",
        *args.overrides,
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.05)
    if proc.returncode != 0:
        raise SystemExit(f"training failed ({proc.returncode}):\n{proc.stdout.read()}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in rows[2:]]
    return statistics.median(rates), peak, [r["loss"] for r in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO / "demo_data" / "fmri"))
    p.add_argument("--config", default=str(REPO / "engine" / "configs" / "fmri_demo.yaml"))
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--loader-batches", type=int, default=12)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    if not (Path(args.data) / "index.json").is_file():
        raise SystemExit(f"{args.data}: no dataset; run `python -m pipelines.ingest fmri` first")

    from engine.config import load_config
    from engine.data import resolve_modality

    cfg = load_config(args.config, args.overrides, {"data.path": args.data})
    modality = resolve_modality(cfg.data.modality, "fmri")
    loader_rate = bench_loader(cfg, modality, args.loader_batches)
    with tempfile.TemporaryDirectory() as tmp:
        train_rate, peak, losses = bench_train(args, Path(tmp) / "run")
    print(
        json.dumps(
            {
                "data": args.data,
                "config": args.config,
                "overrides": args.overrides,
                "batch_size": cfg.data.batch_size,
                "num_workers": cfg.data.num_workers,
                "threads": os.cpu_count(),
                "train_samples_per_s": round(train_rate, 2),
                "loader_samples_per_s": round(loader_rate, 2),
                "loader_over_train": round(loader_rate / train_rate, 2),
                "peak_rss_mib": round(peak / 2**20),
                "loss_first": losses[0],
                "loss_last": losses[-1],
            }
        )
    )


if __name__ == "__main__":
    main()
