"""`python -m engine.train`: JEPA pretraining on a shard dataset directory.

    python -m engine.train --data DIR [--data DIR2 ... [--weights W1,W2,...]] [--out RUN_DIR]
                           [--steps N] [--save-every N] [--resume auto|PATH]
                           [--config FILE.yaml] [section.key=value ...]

Several --data mix datasets in one run (`data.sources`: cohorts of one modality, or several
modalities on one trunk with data.mix=modality; docs/engine.md).

One CPU process needs no launcher; the same command runs under `torchrun --nproc_per_node K` or
`deepspeed`. The run directory receives config.yaml, checkpoints/, metrics.jsonl, tensorboard/
and curves.png. Exits non-zero on failure with a message naming the cause.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from engine.config import ConfigError, load_config, save_config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m engine.train",
        description="JEPA pretraining with DeepSpeed on a jepa-forge shard dataset.",
        epilog="Any config key is reachable as section.key=value, e.g. optim.lr=5e-4 "
        "model.depth=4 train.zero_stage=1 (see docs/engine.md).",
    )
    p.add_argument(
        "--data",
        action="append",
        help="dataset directory (index.json + shards/); several mix datasets in one run "
        "(data.sources); or set data.path / data.sources in --config",
    )
    p.add_argument(
        "--weights",
        help="with several --data: each one's share of an epoch's samples, comma-separated "
        "(default: equal)",
    )
    p.add_argument("--out", help="run directory (default: runs/<dataset name>[+<name>...])")
    p.add_argument("--steps", type=int, help="optimizer steps (train.steps)")
    p.add_argument("--save-every", type=int, help="checkpoint interval (train.save_every)")
    p.add_argument(
        "--resume",
        help="'auto': continue from the run directory's latest complete checkpoint (or start "
        "fresh when it has none); or a checkpoint directory",
    )
    p.add_argument("--config", help="YAML file of config values")
    # The `deepspeed` launcher passes --local_rank=N unless told --no_local_rank; the process's
    # place comes from the environment it also sets (engine.launch), so the flag is accepted
    # and ignored.
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    return p


def resolve_resume(arg: str | None, run_dir: Path) -> Path | None:
    from engine.checkpoint import CheckpointError, complete_checkpoints, latest_checkpoint

    if arg is None:
        if complete_checkpoints(run_dir):
            raise CheckpointError(
                f"{run_dir} already holds checkpoints; pass --resume auto to continue it, "
                "or choose another --out"
            )
        return None
    if arg == "auto":
        return latest_checkpoint(run_dir)
    path = Path(arg)
    if not (path / "state.json").is_file():
        raise CheckpointError(f"{path}: not a complete checkpoint directory")
    return path


def data_values(data: list[str], weights: str | None) -> dict[str, object]:
    """Config values of --data (given once: data.path; several times: data.sources) and
    --weights; ConfigError for weights that do not fit."""
    if weights is not None and len(data) < 2:
        raise ConfigError("--weights: give it with two or more --data")
    if len(data) == 1:
        return {"data.path": data[0]}
    if not data:
        return {}
    try:
        w = [float(x) for x in weights.split(",")] if weights else [1.0] * len(data)
    except ValueError:
        raise ConfigError(f"--weights: expected numbers like 2,1, got {weights!r}") from None
    if len(w) != len(data):
        raise ConfigError(f"--weights: {len(w)} weights for {len(data)} --data")
    return {"data.sources": [{"path": d, "weight": x} for d, x in zip(data, w, strict=True)]}


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The CLI's arguments; `section.key=value` overrides may sit before and after the flags."""
    return build_parser().parse_intermixed_args(argv)


def dataset_name(location: str) -> str:
    """The last part of a dataset's path or URL (a default run directory's name)."""
    from pipelines.shards import is_remote, local_path

    if is_remote(location):
        return location.rstrip("/").rsplit("/", 1)[-1]
    return local_path(location).resolve().name


def run(argv: list[str]) -> int:
    from pipelines.shards import ShardDataset, local_path

    args = parse_args(argv)
    values: dict[str, object] = data_values(args.data or [], args.weights)
    if args.steps is not None:
        values["train.steps"] = args.steps
    if args.save_every is not None:
        values["train.save_every"] = args.save_every
    cfg = load_config(args.config, args.overrides, values)
    paths = [s.path for s in cfg.data.sources] or [cfg.data.path]
    if not paths[0]:
        raise ConfigError("data.path: name the dataset with --data DIR (or in --config)")
    names = [dataset_name(p) for p in paths]
    run_dir = local_path(args.out, "run") if args.out else Path("runs") / "+".join(names)
    # Open every dataset now: a bad location fails before the run directory exists, and an
    # object-store URL is cached (verified) before any process reads it.
    for p in paths:
        ShardDataset(p, verify="none")

    # Only now, on the CLI path: pick DeepSpeed's accelerator and join (or make) the group.
    from engine.launch import setup_distributed, teardown_distributed

    info = setup_distributed()
    # DeepSpeed's ZeRO-3 calls the collectives torch renamed; torch warns on every call.
    warnings.filterwarnings(
        "ignore",
        message=r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is "
        "deprecated",
        category=FutureWarning,
    )
    try:
        from engine.trainer import Trainer

        resume = resolve_resume(args.resume, run_dir)
        if info.rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")
        trainer = Trainer(cfg, run_dir, info, resume)
        summary = trainer.run()
    finally:
        teardown_distributed()
    if info.rank == 0:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        print(
            f"trained {summary['steps_run']} steps (to step {summary['steps']}) in "
            f"{summary['seconds']:.1f}s: loss {summary['first_loss']:.4f} -> "
            f"{summary['last_loss']:.4f}, {summary['samples_per_s']:.1f} samples/s, "
            f"{summary['skips']} skipped, checkpoint {summary['checkpoint']}",
            flush=True,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    from engine.checkpoint import CheckpointError
    from engine.trainer import NonFiniteLoss
    from pipelines.shards import ShardError

    try:
        return run(sys.argv[1:] if argv is None else argv)
    except (ConfigError, CheckpointError, NonFiniteLoss, ShardError, ValueError) as e:
        print(f"engine.train: error: {e}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
