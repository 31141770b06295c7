"""End-to-end runs of `python -m engine.train` in subprocesses: loss falls, exact resume after
SIGKILL (one process and 2-process ZeRO-2), non-finite losses, a corrupt shard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, command, engine_env, free_port, run_cli, train_args
from grid_testing import write_grid_dataset
from safetensors.torch import load_file

from engine.checkpoint import complete_checkpoints
from engine.data import epoch_order, rank_batches
from engine.metrics import read_metrics

pytestmark = pytest.mark.slow


def losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run)]


def _load_pt(path: Path):
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):
        return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tree(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            if k in ("ds_config", "ds_version", "global_samples"):
                continue
            assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tree(x, y, f"{where}[{i}]")


def assert_same_final_state(run_a: Path, run_b: Path, step: int) -> None:
    ca = run_a / "checkpoints" / f"step-{step:08d}"
    cb = run_b / "checkpoints" / f"step-{step:08d}"
    ta, tb = load_file(ca / "target.safetensors"), load_file(cb / "target.safetensors")
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), f"EMA target {k} differs"
    files = sorted(p.name for p in (ca / "ds").iterdir())
    assert files == sorted(p.name for p in (cb / "ds").iterdir())
    for name in files:
        assert_same_tree(_load_pt(ca / "ds" / name), _load_pt(cb / "ds" / name), name)
    sa, sb = (json.loads((c / "state.json").read_text()) for c in (ca, cb))
    assert sa["data"] == sb["data"] and sa["run"] == sb["run"]


def run_and_kill_after(args: list[str], run: Path, kill_after: int, total: int) -> None:
    """Start a training run, SIGKILL its whole process group once checkpoint `kill_after` is
    complete on disk, and check that the kill landed before the run finished."""
    proc = subprocess.Popen(
        command(args),
        cwd=REPO,
        env=engine_env(),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    marker = run / "checkpoints" / f"step-{kill_after:08d}" / "state.json"
    deadline = time.monotonic() + 180
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before checkpoint {kill_after}:\n{proc.stdout.read()}")
        assert time.monotonic() < deadline, "no checkpoint within 180 s"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    steps = [s for s, _ in complete_checkpoints(run)]
    assert total not in steps, "the kill came after the run finished; the test proved nothing"


def test_training_loss_falls_and_run_dir_is_complete(trained_run):
    curve = [loss for _, loss in losses(trained_run)]
    assert len(curve) == 30 and all(np.isfinite(curve))
    assert np.mean(curve[-5:]) < 0.85 * np.mean(curve[:5]), curve
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "summary.json"):
        assert (trained_run / name).is_file(), name
    assert list((trained_run / "tensorboard").glob("events.out.tfevents.*"))
    rec = read_metrics(trained_run)[-1]
    for key in ("lr", "wd", "momentum", "target_std", "pred_std", "samples_per_s"):
        assert key in rec
    assert rec["momentum"] > 0.996 and rec["wd"] > 0.3  # the ramps moved
    # The diagnostics (first step, then train.diag_every 25): position share, effective rank,
    # attention entropy per layer.
    diag = [r for r in read_metrics(trained_run) if "pos_share" in r]
    assert [r["step"] for r in diag] == [1, 25]
    for r in diag:
        assert 0.0 <= r["pos_share"] <= 1.0 and r["target_rank"] >= 1.0, r
        entropies = [r[f"attn_entropy_{i}"] for i in range(2)]  # model.depth=2
        assert all(0.0 < e <= 1.0 + 1e-6 for e in entropies), entropies
    assert [s for s, _ in complete_checkpoints(trained_run)] == [15, 30]


def test_kill_and_resume_is_exact_one_process(grid_data, tmp_path):
    # checkpoints every n steps to 3n: the kill after the first leaves two to go, so it lands
    # before the run ends even when a loaded machine wakes this process late
    n = 4
    twin, killed = tmp_path / "twin", tmp_path / "killed"
    run_cli(train_args(grid_data, twin, 3 * n, n))
    run_and_kill_after(train_args(grid_data, killed, 3 * n, n), killed, n, 3 * n)
    run_cli(train_args(grid_data, killed, 3 * n, n, "--resume", "auto"))
    assert losses(killed) == losses(twin)
    assert [s for s, _ in losses(twin)] == list(range(1, 3 * n + 1))
    assert_same_final_state(twin, killed, 3 * n)


def test_kill_and_resume_is_exact_two_processes_zero2(grid_data, tmp_path):
    n = 3
    twin, killed = tmp_path / "twin", tmp_path / "killed"

    def args(out, *extra):
        return [
            "torchrun",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            "-m",
            *train_args(
                grid_data, out, 3 * n, n, "data.batch_size=4", "train.zero_stage=2", *extra
            ),
        ]

    run_cli(args(twin))
    run_and_kill_after(args(killed), killed, n, 3 * n)
    run_cli(args(killed, "--resume", "auto"))
    assert losses(killed) == losses(twin)
    assert_same_final_state(twin, killed, 3 * n)
    assert (
        len(list((twin / "checkpoints" / f"step-{3 * n:08d}" / "ds").glob("zero_pp_rank_*"))) == 2
    )


def _nan_step(n: int, nan_at: int, batch: int) -> int:
    order = epoch_order([n], seed=0, epoch=0, shuffle_buffer=1024)
    batches = rank_batches(order, 0, 1, batch)
    return next(i for i, b in enumerate(batches) if nan_at in b) + 1


def test_nonfinite_loss_stops_naming_the_step_or_is_skipped(tmp_path):
    data = write_grid_dataset(tmp_path / "nan", n=32, nan_at=5, shard_bytes=1 << 20)
    bad_step = _nan_step(32, 5, 8)
    stop = tmp_path / "stop"
    proc = run_cli(train_args(data, stop, 4, 1), check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"non-finite loss at step {bad_step}" in proc.stderr
    assert [s for s, _ in complete_checkpoints(stop)] == list(range(1, bad_step))[-2:]

    skip = tmp_path / "skip"
    proc = run_cli(train_args(data, skip, 4, 0, "train.nonfinite=skip"))
    rows = read_metrics(skip)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["skips"] == 1 and all(np.isfinite(r["loss"]) for r in rows)
    assert "1 skipped" in proc.stdout


def test_corrupt_shard_stops_the_run_naming_it(tmp_path):
    data = write_grid_dataset(tmp_path / "ds", n=64)
    shard = sorted((data / "shards").glob("part-*.arrow"))[-1]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    proc = run_cli(train_args(data, tmp_path / "run", 20, 0), check=False)
    assert proc.returncode != 0
    assert shard.name in proc.stderr and "checksum mismatch" in proc.stderr


def test_spread_penalty_trains_and_is_logged(grid_data, trained_run, tmp_path):
    """loss.spread > 0: the step adds the context-spread penalty, logged unweighted as
    `spread` (finite); at step 1, where a run without it (the shared `trained_run`, same
    settings) starts from the same weights and batch, the logged loss is that run's plus the
    weighted penalty."""
    run_cli(train_args(grid_data, tmp_path / "spread", 3, 0, "optim.lr=2e-3", "loss.spread=0.5"))
    rows, plain = read_metrics(tmp_path / "spread"), read_metrics(trained_run)
    assert "spread" not in plain[0]
    pen = [r["spread"] for r in rows]
    assert len(pen) == 3 and all(np.isfinite(pen)) and pen[0] > 0
    assert rows[0]["loss"] == pytest.approx(plain[0]["loss"] + 0.5 * pen[0], rel=1e-4)
