"""Elastic resume: a checkpoint saved on N ranks continues on M (2 -> 1 and 1 -> 2, torchrun,
gloo) with the same global batch: the global sample sequence continues exactly, DeepSpeed's
optimizer state is re-partitioned (ZeRO-2 through DeepSpeed's universal checkpoint), the run
follows the uninterrupted one; a changed global batch is refused with the reason (ZeRO-3's
elastic resume: test_engine_zero3)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PAIR_SAVE, PAIR_STEPS, pair_args, run_cli, train_args
from grid_testing import MODALITY
from test_engine_train import losses

from engine.config import load_config
from engine.data import JEPALoader
from engine.export import load_encoder

pytestmark = pytest.mark.slow

N = PAIR_SAVE  # checkpoints every N steps, runs of 3N (64 records, global batch 8: 8 steps an
assert PAIR_STEPS == 3 * N  # epoch)
GLOBAL = 8


def _args(data: Path, out: Path, ranks: int, *extra: str) -> list[str]:
    """The shared 2-rank run's shape (conftest.pair_args) on `ranks` processes."""
    if ranks == 2:
        return pair_args(data, out, *extra)
    return train_args(data, out, 3 * N, N, f"data.batch_size={GLOBAL // ranks}", *extra)


def _flat(run: Path, step: int) -> torch.Tensor:
    enc, _, _ = load_encoder(run / "checkpoints" / f"step-{step:08d}", "context")
    return torch.cat([v.reshape(-1) for v in enc.state_dict().values()])


def _resume_elsewhere(twin: Path, out: Path, step: int) -> None:
    """`out`: a copy of run `twin` as it stood at checkpoint `step` (later ones removed)."""
    shutil.copytree(twin, out)
    for ckpt in (out / "checkpoints").iterdir():
        if int(ckpt.name.split("-")[1]) > step:
            shutil.rmtree(ckpt)


@pytest.mark.parametrize("ranks,then", [(2, 1), (1, 2)])
def test_resume_on_another_world_size_continues_the_run(grid_data, pair_run, tmp_path, ranks, then):
    moved = tmp_path / "moved"
    if ranks == 2:
        twin = pair_run  # read-only: the resumed run is a copy
    else:
        twin = tmp_path / "twin"
        run_cli(_args(grid_data, twin, ranks))
    _resume_elsewhere(twin, moved, 2 * N)
    if then == 1:  # 2 x 4 -> 1 x 4 would halve the global batch: refused, naming the fix
        bad = train_args(grid_data, moved, 3 * N, N, "data.batch_size=4", "--resume", "auto")
        proc = run_cli(bad, check=False)
        assert proc.returncode == 1
        assert "the global batch must stay 8 samples (2 x 4)" in proc.stderr
        assert "set data.batch_size=8" in proc.stderr
    proc = run_cli(_args(grid_data, moved, then, "--resume", "auto"))
    assert f"elastic resume: {ranks} -> {then} processes at step {2 * N}" in proc.stderr
    a, b = losses(twin), losses(moved)
    assert [s for s, _ in b] == list(range(1, 3 * N + 1))
    assert a[: 2 * N] == b[: 2 * N]
    # The same global batches from the same weights and optimizer state: only how the loss is
    # averaged differs (each rank's mean over its own target tokens, then over ranks), so the
    # runs agree closely but not bit for bit.
    np.testing.assert_allclose([v for _, v in b[2 * N :]], [v for _, v in a[2 * N :]], rtol=2e-2)
    drift = float((_flat(moved, 3 * N) - _flat(twin, 3 * N)).norm())
    travel = float((_flat(twin, 3 * N) - _flat(twin, 2 * N)).norm())
    assert travel > 0 and drift < 0.1 * travel, (drift, travel)
    if ranks == 2 and then == 1:  # ZeRO-2 at 2 ranks went through the universal format
        assert (moved / "checkpoints" / f"step-{2 * N:08d}" / "ds-universal" / "zero").is_dir()


def test_global_sample_sequence_is_the_same_at_any_world_size(grid_data):
    """The loader side of elastic resume: from a saved position, M ranks of GLOBAL / M samples
    hand out the same global batches as N ranks of GLOBAL / N."""

    def loader(rank: int, world: int) -> JEPALoader:
        cfg = load_config(
            None,
            [f"data.batch_size={GLOBAL // world}", "data.num_workers=0"],
            {"data.path": str(grid_data), "data.modality": "grid_testing:MODALITY"},
        )
        return JEPALoader(cfg, MODALITY, rank, world)

    def global_batches(world: int, state: dict | None, count: int) -> tuple[list, dict]:
        loaders = [loader(r, world) for r in range(world)]
        iters = []
        for ld in loaders:
            if state is not None:
                ld.load_state_dict(state)
            iters.append(iter(ld))
        out = []
        for _ in range(count):
            parts = [next(it).index.tolist() for it in iters]
            out.append([i for p in parts for i in p])
        return out, loaders[0].state_dict()

    # 5 global batches on 2 ranks, then 6 more (across the epoch's end) on 1 rank and on 2
    first, state = global_batches(2, None, 5)
    on_one, _ = global_batches(1, state, 6)
    on_two, _ = global_batches(2, state, 6)
    assert on_one == on_two
    straight, _ = global_batches(1, None, 11)
    assert first + on_one == straight
    assert len({i for b in straight[:8] for i in b}) == 64  # one epoch: every record once
