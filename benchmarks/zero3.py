"""ZeRO-2 vs ZeRO-3 (partition-local EMA target) per rank: peak memory, step time, EMA cost.

    python benchmarks/zero3.py [--ranks 2] [--steps 6] [--embed-dim 768] [--depth 12]
        [--heads 12] [--ema-repeats 5] [section.key=value ...]

For each stage, `torchrun --nproc_per_node RANKS` runs this file as a worker: the real
`engine.trainer.Trainer` (DeepSpeed, fp32 on CPU, bf16 on CUDA) on a synthetic grid dataset (the
engine tests' modality, 64 tokens a record), a ViT-B sized encoder by default. Each rank reports
its peak resident memory after set-up and after the steps (`ru_maxrss`, this process only: the
loader worker is another), the bytes of model state it holds (parameters as stored on the rank,
optimizer state, EMA target), and the median step time after one warm-up step. Under ZeRO-3 it
then times one EMA update two ways on the same weights: the partition-local update the trainer
runs (`PartitionedTarget.update`) and the usual recipe, every parameter gathered with
`deepspeed.zero.GatheredParameters` and a whole fp32 target updated on rank 0. Prints one JSON
line; docs/benchmarks.md ("## ZeRO-3") records the numbers. Never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = str(Path(__file__).resolve().parent)
# `python benchmarks/zero3.py` puts benchmarks/ first on sys.path, where benchmarks/kernels.py
# would shadow the kernels package.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "engine"))  # grid_testing: the synthetic grid modality

MIB = 2**20


def _status_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since start or the last `_reset_peak`) of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM)."""
    Path("/proc/self/clear_refs").write_text("5")


def _state_bytes(trainer) -> dict[str, int]:
    """Bytes of model state this rank holds: parameters as stored here (ZeRO-3: the local
    partitions), the optimizer's state and fp32 partitions, the EMA target."""
    import torch

    from engine.zero3 import PartitionedTarget

    seen: set[int] = set()

    def nbytes(t: torch.Tensor) -> int:
        key = t.untyped_storage().data_ptr()
        if key in seen or key == 0:
            return 0
        seen.add(key)
        return t.untyped_storage().nbytes()

    params = 0
    for p in trainer.engine.module.parameters():
        params += nbytes(p.ds_tensor) if hasattr(p, "ds_tensor") else nbytes(p.data)
    optim = 0
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    for state in inner.state.values():
        optim += sum(nbytes(v) for v in state.values() if isinstance(v, torch.Tensor))
    for group in inner.param_groups:  # the fp32 partitions DeepSpeed steps on
        optim += sum(nbytes(p) for p in group["params"])
    if isinstance(trainer.target, PartitionedTarget):
        target = nbytes(trainer.target.flat)
    else:
        target = sum(nbytes(p) for p in trainer.target.parameters())
    return {"params": params, "optimizer": optim, "ema_target": target}


def _ema_recipe_seconds(trainer, repeats: int) -> float:
    """The usual ZeRO-3 EMA: gather each context parameter, rank 0 updates a whole fp32 copy."""
    import deepspeed
    import torch
    import torch.distributed as dist

    from engine.ops import ema_

    params = list(trainer.engine.module.encoder.parameters())
    rank = dist.get_rank()
    whole = (
        [torch.zeros(tuple(p.ds_shape), dtype=torch.float32) for p in params] if rank == 0 else []
    )
    times = []
    for _ in range(repeats):
        dist.barrier()
        t0 = time.perf_counter()
        for i, p in enumerate(params):
            with deepspeed.zero.GatheredParameters([p]), torch.no_grad():
                if rank == 0:
                    ema_([whole[i]], [p.data], 0.996)
        dist.barrier()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _ema_local_seconds(trainer, repeats: int) -> float:
    import torch.distributed as dist

    times = []
    step = trainer.target.step
    for _ in range(repeats):
        dist.barrier()
        t0 = time.perf_counter()
        trainer.target.update()
        dist.barrier()
        times.append(time.perf_counter() - t0)
    trainer.target.step = step
    return statistics.median(times)


def worker(args: argparse.Namespace) -> None:
    from engine.config import load_config
    from engine.launch import setup_distributed, teardown_distributed

    info = setup_distributed()
    import torch

    from engine.trainer import Trainer
    from engine.zero3 import PartitionedTarget

    overrides = [
        "data.modality=grid_testing:MODALITY",
        "data.batch_size=2",
        "data.num_workers=1",
        f"model.embed_dim={args.embed_dim}",
        f"model.depth={args.depth}",
        f"model.num_heads={args.heads}",
        f"model.pred_dim={args.embed_dim // 2}",
        "model.pred_depth=4",
        f"model.pred_heads={args.heads // 2}",
        "train.progress=false",
        "train.diag_every=0",
        f"train.zero_stage={args.stage}",
        *args.overrides,
    ]
    cfg = load_config(None, overrides, {"data.path": args.data, "train.steps": args.steps + 1})
    Path(args.out).mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, Path(args.out), info, None)
    setup_peak_mib = _status_mib("VmHWM")  # building the full model first, then partitioning
    setup_mib = _status_mib("VmRSS")
    _reset_peak()
    cuda = info.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    batches = iter(trainer.loader)
    times = []
    for _ in range(args.steps + 1):
        t0 = time.perf_counter()
        trainer.train_step(batches)
        times.append(time.perf_counter() - t0)
    state = _state_bytes(trainer)  # after a step: the optimizer's state exists
    train_peak_mib = _status_mib("VmHWM")
    out = {
        "rank": info.rank,
        "stage": args.stage,
        "peak_rss_setup_mib": round(setup_peak_mib),
        "rss_after_setup_mib": round(setup_mib),
        "peak_rss_train_mib": round(train_peak_mib),
        "state_mib": {k: round(v / MIB, 1) for k, v in state.items()},
        "step_s": round(statistics.median(times[1:]), 3),
        "encoder_params": sum(
            int(p.ds_numel) if hasattr(p, "ds_numel") else p.numel()
            for p in trainer.engine.module.encoder.parameters()
        ),
    }
    if cuda:
        out["peak_cuda_allocated_mib"] = round(torch.cuda.max_memory_allocated() / MIB)
    if isinstance(trainer.target, PartitionedTarget):
        out["ema_share"] = round(trainer.target.parameter_share(), 4)
        out["ema_local_s"] = _ema_local_seconds(trainer, args.ema_repeats)
        out["ema_gather_rank0_s"] = _ema_recipe_seconds(trainer, args.ema_repeats)
    trainer.metrics.close()
    teardown_distributed()
    Path(args.report).with_suffix(f".{info.rank}.json").write_text(json.dumps(out))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--embed-dim", type=int, default=768)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--ema-repeats", type=int, default=5)
    p.add_argument(
        "--mmap-threshold",
        type=int,
        default=0,
        help="set glibc's MALLOC_MMAP_THRESHOLD_ for the workers (bytes; 0: glibc's dynamic "
        "default): allocations above it are mapped and returned on free, so RSS follows the "
        "live tensors instead of what the heap kept",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--stage", type=int, default=3, help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--report", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    from grid_testing import write_grid_dataset

    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_grid_dataset(Path(tmp) / "data", n=256, rows=8, frames=128)
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        if args.mmap_threshold:
            env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
        for stage in (2, 3):
            report = Path(tmp) / f"stage{stage}"
            cmd = [
                sys.executable, "-m", "torch.distributed.run",
                "--nproc_per_node", str(args.ranks), "--master_port", str(_free_port()),
                str(Path(__file__).resolve()), "--worker", "--stage", str(stage),
                "--data", str(data), "--out", str(Path(tmp) / f"run{stage}"),
                "--report", str(report), "--steps", str(args.steps),
                "--embed-dim", str(args.embed_dim), "--depth", str(args.depth),
                "--heads", str(args.heads), "--ema-repeats", str(args.ema_repeats),
                *args.overrides,
            ]  # fmt: skip
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"stage {stage} failed:\n{proc.stderr[-4000:]}")
            results[f"zero{stage}"] = [
                json.loads(report.with_suffix(f".{r}.json").read_text()) for r in range(args.ranks)
            ]
    z2, z3 = results["zero2"], results["zero3"]
    summary = {
        "ranks": args.ranks,
        "mmap_threshold": args.mmap_threshold or "glibc default",
        "overrides": args.overrides,
        "model": f"embed {args.embed_dim}, depth {args.depth}, heads {args.heads}",
        "encoder_params": z2[0]["encoder_params"],
        "peak_rss_train_mib": {k: [r["peak_rss_train_mib"] for r in v] for k, v in results.items()},
        "state_mib": {k: v[0]["state_mib"] for k, v in results.items()},
        "zero3_over_zero2_peak_rss": round(
            max(r["peak_rss_train_mib"] for r in z3) / max(r["peak_rss_train_mib"] for r in z2), 3
        ),
        "step_s": {k: max(r["step_s"] for r in v) for k, v in results.items()},
        "ema_share": [r["ema_share"] for r in z3],
        "ema_local_s": max(r["ema_local_s"] for r in z3),
        "ema_gather_rank0_s": max(r["ema_gather_rank0_s"] for r in z3),
        "per_rank": results,
    }
    summary["ema_gather_over_local"] = round(
        summary["ema_gather_rank0_s"] / max(summary["ema_local_s"], 1e-9), 1
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
