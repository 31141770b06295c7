"""ZeRO-3 with a partition-local EMA target (engine.zero3), 2 ranks on CPU (gloo): the same losses
and EMA target as ZeRO-2 from the same seed, exact kill -9 and resume, each rank's EMA buffer
1/world of the target, export and probe from the partitions, clear errors for a damaged one."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PAIR_SAVE, PAIR_STEPS, pair_args, run_cli, train_args
from safetensors.torch import load_file, save_file
from test_engine_train import losses, run_and_kill_after

from engine.checkpoint import CheckpointError, consolidate_target
from engine.export import load_encoder

pytestmark = pytest.mark.slow

N = PAIR_SAVE  # checkpoints every N steps, runs of 3N
assert PAIR_STEPS == 3 * N


def _args(data: Path, out: Path, stage: int, *extra: str) -> list[str]:
    return pair_args(data, out, f"train.zero_stage={stage}", *extra)


@pytest.fixture(scope="module")
def runs(grid_data, pair_run, tmp_path_factory) -> dict[str, Path]:
    """The shared 2-rank ZeRO-2 run and the same run under ZeRO-3."""
    zero3 = tmp_path_factory.mktemp("zero3") / "zero3"
    run_cli(_args(grid_data, zero3, 3))
    return {"zero2": pair_run, "zero3": zero3}


def _ckpt(run: Path, step: int = 3 * N) -> Path:
    return run / "checkpoints" / f"step-{step:08d}"


def test_zero3_matches_zero2_losses_and_ema_target(runs):
    a, b = losses(runs["zero2"]), losses(runs["zero3"])
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 3 * N + 1))
    la, lb = np.array([v for _, v in a]), np.array([v for _, v in b])
    # The same sums in another order (reduce-scatter vs all-reduce): float rounding only.
    np.testing.assert_allclose(lb, la, rtol=1e-5, atol=1e-6)
    assert la[-1] < la[0]  # it trained
    ta, tb = consolidate_target(_ckpt(runs["zero2"])), consolidate_target(_ckpt(runs["zero3"]))
    assert ta.keys() == tb.keys()
    first = consolidate_target(_ckpt(runs["zero3"], 2 * N))
    for k in ta:
        torch.testing.assert_close(tb[k], ta[k], rtol=1e-5, atol=1e-6, msg=k)
    # ...and the target moved between checkpoints (a frozen target would also "match").
    assert any(not torch.equal(first[k], tb[k]) for k in tb)
    # ZeRO-3 leaves no whole target file; ZeRO-2 no partitions.
    assert not (_ckpt(runs["zero3"]) / "target.safetensors").exists()
    assert not list(_ckpt(runs["zero2"]).glob("target-rank-*"))


def test_each_rank_holds_its_share_of_the_ema_target(runs):
    ckpt = _ckpt(runs["zero3"])
    layout = json.loads((ckpt / "target-layout.json").read_text())
    assert layout["world"] == 2
    full = consolidate_target(ckpt)
    total = sum(v.numel() for v in full.values())
    sizes = [p["partition"] for p in layout["params"]]
    # DeepSpeed's partition of a parameter of n values over 2 ranks: ceil(n / 2) each.
    assert sizes == [math.ceil(full[p["name"]].numel() / 2) for p in layout["params"]]
    for r in range(2):
        flat = load_file(str(ckpt / f"target-rank-{r}.safetensors"))["flat"]
        assert flat.dtype == torch.float32
        assert flat.numel() == sum(sizes) <= total / 2 + len(sizes)
    # (that they partition the target as DeepSpeed does: the ZeRO-2 comparison above)


def test_zero3_kill_and_resume_is_exact(runs, grid_data, tmp_path):
    killed = tmp_path / "killed"
    run_and_kill_after(_args(grid_data, killed, 3), killed, N, 3 * N)
    run_cli(_args(grid_data, killed, 3, "--resume", "auto"))
    assert losses(killed) == losses(runs["zero3"])
    for r in range(2):
        name = f"target-rank-{r}.safetensors"
        a = load_file(str(_ckpt(runs["zero3"]) / name))["flat"]
        b = load_file(str(_ckpt(killed) / name))["flat"]
        assert torch.equal(a, b), name
    sa, sb = (json.loads((_ckpt(r) / "state.json").read_text()) for r in (runs["zero3"], killed))
    assert sa["data"] == sb["data"] and sa["run"] == sb["run"] and sa["ema_step"] == sb["ema_step"]


def test_zero3_export_and_probe_read_the_partitions(runs, grid_data, tmp_path):
    run = runs["zero3"]
    out = tmp_path / "export"
    proc = run_cli(["engine.export", str(run), str(out)])
    assert "exported target encoder" in proc.stdout
    exported = load_file(str(out / "encoder.safetensors"))
    full = consolidate_target(_ckpt(run))
    assert exported.keys() == full.keys()
    assert all(torch.equal(exported[k], full[k]) for k in full)
    context, _, _ = load_encoder(run, "context")  # DeepSpeed's ZeRO-3 consolidation
    target, _, _ = load_encoder(run, "target")
    assert any(
        not torch.equal(c, t)
        for c, t in zip(context.state_dict().values(), target.state_dict().values(), strict=True)
    )
    proc = run_cli(
        ["engine.probe", "--checkpoint", str(run), "--data", str(grid_data), "--label", "label"]
        + ["--folds", "2"]
    )
    assert "target features" in proc.stdout and "accuracy" in proc.stdout


def test_zero3_resumes_on_another_world_size(runs, grid_data, tmp_path):
    """2 ranks -> 1 (global batch 8 kept): DeepSpeed's universal checkpoint for the optimizer,
    the EMA partitions joined and re-sliced for the new world. The continued run follows the
    uninterrupted one up to how the loss is averaged over ranks (test_engine_elastic; a ZeRO-2
    run resumed the same way agreed with this one to 1e-4, by hand)."""
    twin, run = runs["zero3"], tmp_path / "zero3"
    shutil.copytree(twin, run)
    shutil.rmtree(_ckpt(run))  # continue from step 2N
    args = train_args(grid_data, run, 3 * N, N, "data.batch_size=8", "train.zero_stage=3")
    proc = run_cli([*args, "--resume", "auto"])
    assert f"elastic resume: 2 -> 1 processes at step {2 * N}" in proc.stderr
    a, b = losses(twin), losses(run)
    assert a[: 2 * N] == b[: 2 * N]
    np.testing.assert_allclose([v for _, v in b[2 * N :]], [v for _, v in a[2 * N :]], rtol=2e-2)
    layout = json.loads((_ckpt(run) / "target-layout.json").read_text())
    assert layout["world"] == 1 and not (_ckpt(run) / "target-rank-1.safetensors").exists()
    before, after = consolidate_target(_ckpt(twin, 2 * N)), consolidate_target(_ckpt(twin))
    moved = consolidate_target(_ckpt(run))
    travel = sum(float((after[k] - before[k]).norm() ** 2) for k in after) ** 0.5
    drift = sum(float((moved[k] - after[k]).norm() ** 2) for k in after) ** 0.5
    assert travel > 0 and drift < 0.1 * travel, (drift, travel)


def _copy_ckpt(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        if p.is_file():
            (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_damaged_partitions_are_named(runs, tmp_path):
    src = _ckpt(runs["zero3"])
    missing = _copy_ckpt(src, tmp_path / "missing")
    (missing / "target-rank-1.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"target-rank-1\.safetensors: missing"):
        consolidate_target(missing)
    short = _copy_ckpt(src, tmp_path / "short")
    flat = load_file(str(short / "target-rank-0.safetensors"))["flat"]
    save_file({"flat": flat[:-3].clone()}, str(short / "target-rank-0.safetensors"))
    with pytest.raises(CheckpointError, match=r"target-rank-0\.safetensors holds"):
        consolidate_target(short)
    bad = _copy_ckpt(src, tmp_path / "bad")
    (bad / "target-layout.json").write_text("{")
    with pytest.raises(CheckpointError, match="unreadable ZeRO-3 target layout"):
        consolidate_target(bad)
    garbled = _copy_ckpt(src, tmp_path / "garbled")
    (garbled / "target-rank-1.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match=r"target-rank-1\.safetensors: unreadable"):
        consolidate_target(garbled)
    no_layout = _copy_ckpt(src, tmp_path / "no-layout")
    (no_layout / "target-layout.json").unlink()
    with pytest.raises(CheckpointError, match=r"target-layout\.json: missing, so the ZeRO-3"):
        consolidate_target(no_layout)


def test_benchmark_script_reports_both_stages():
    # benchmarks/zero3.py at a tiny size: both stages run and the report holds what
    # docs/benchmarks.md quotes (never timings asserted, only that they were measured).
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "zero3.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--embed-dim", "32", "--depth", "2", "--heads", "2"]
        + ["--steps", "2", "--ema-repeats", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["ema_share"] == [0.5, 0.5]
    z2, z3 = report["state_mib"]["zero2"], report["state_mib"]["zero3"]
    assert z3["ema_target"] < z2["ema_target"] and z3["params"] < z2["params"]
    assert report["ema_local_s"] > 0 and report["ema_gather_rank0_s"] > 0
    for stage in ("zero2", "zero3"):
        assert all(r["peak_rss_train_mib"] > 0 for r in report["per_rank"][stage])


def test_slices_for_a_new_world_invert_the_consolidation():
    # What each rank takes on an elastic resume (PartitionedTarget.load_whole) joined back the
    # way consolidate_target joins saved partitions gives the whole tensor, for any world.
    from engine.zero3 import _slice

    gen = torch.Generator().manual_seed(0)
    for numel in (1, 5, 6, 97):
        flat = torch.randn(numel, generator=gen)
        for world in (1, 2, 3, 4):
            size = math.ceil(numel / world)
            parts = [_slice(flat, r, size) for r in range(world)]
            assert all(p.numel() == size for p in parts)
            assert torch.equal(torch.cat(parts)[:numel], flat)
            assert not torch.cat(parts)[numel:].any()  # the padding is zeros


def test_consolidation_carries_the_encoders_buffers(tmp_path):
    # Buffers (fMRI's gradient positions) are whole on every rank; rank 0 saves them beside the
    # partitions and the joined target holds them, as target.safetensors does under ZeRO-2.
    w = torch.arange(10, dtype=torch.float32).reshape(2, 5)
    layout = {"world": 2, "params": [{"name": "w", "shape": [2, 5], "partition": 5}]}
    (tmp_path / "target-layout.json").write_text(json.dumps(layout))
    save_file({"flat": w.reshape(-1)[:5].clone()}, str(tmp_path / "target-rank-0.safetensors"))
    save_file({"flat": w.reshape(-1)[5:].clone()}, str(tmp_path / "target-rank-1.safetensors"))
    grads = torch.randn(3, 4)
    save_file({"embedder.gradients": grads}, str(tmp_path / "target-buffers.safetensors"))
    out = consolidate_target(tmp_path)
    assert sorted(out) == ["embedder.gradients", "w"]
    assert torch.equal(out["w"], w) and torch.equal(out["embedder.gradients"], grads)
