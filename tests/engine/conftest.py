"""Shared fixtures of the engine tests: small synthetic grid datasets written with the real
shard writer, and a helper that runs the engine CLIs in subprocesses."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from grid_testing import MODALITY_SPEC, write_grid_dataset  # noqa: E402

# Tiny model: the tests check behaviour, not quality, and must run on 2 cores in minutes.
TINY = [
    f"data.modality={MODALITY_SPEC}",
    "data.batch_size=8",
    "data.num_workers=1",
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "model.pred_dim=16",
    "model.pred_depth=1",
    "model.pred_heads=2",
    "train.progress=false",
]


def engine_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(args: list[str]) -> list[str]:
    """`python -m ...args`, or torchrun's module when args[0] == 'torchrun'."""
    if args[0] == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", *args[1:]]
    return [sys.executable, "-m", *args]


# CLIs that only read a run and a dataset: run_cli calls their main() in this process, the same
# code without a fresh interpreter importing torch and DeepSpeed each time (~4 s a call).
IN_PROCESS = ("engine.probe", "engine.export", "engine.finetune")


def _run_in_process(args: list[str], check: bool) -> subprocess.CompletedProcess:
    import contextlib
    import importlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = importlib.import_module(args[0]).main(list(args[1:]))
        except SystemExit as e:  # argparse's usage errors
            code = e.code if isinstance(e.code, int) else 2
    result = subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"{' '.join(args)} exited {code}\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-5000:]}")  # fmt: skip
    return result


def run_cli(
    args: list[str], timeout: float = 180, check: bool = True
) -> subprocess.CompletedProcess:
    """Run an engine CLI in its own session; on timeout kill the whole group (torchrun's
    workers included) so nothing outlives the test. The read-only CLIs (`IN_PROCESS`) run in
    this process instead."""
    if args[0] in IN_PROCESS:
        return _run_in_process(args, check)
    cmd = command(args)
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=engine_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{' '.join(cmd)} timed out\n{out[-3000:]}\n{err[-5000:]}") from None
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n{out[-3000:]}\n{err[-5000:]}"
        )
    return result


def train_args(data: Path, out: Path, steps: int, save_every: int, *extra: str) -> list[str]:
    return [
        "engine.train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--save-every",
        str(save_every),
        *TINY,
        *extra,
    ]


PAIR_STEPS, PAIR_SAVE = 24, 8


def pair_args(data: Path, out: Path, *extra: str) -> list[str]:
    """torchrun, 2 processes of batch 4 (global batch 8), PAIR_STEPS steps, checkpoints every
    PAIR_SAVE: the shape of the 2-rank runs that several tests compare with one another."""
    train = train_args(data, out, PAIR_STEPS, PAIR_SAVE, "data.batch_size=4", *extra)
    return ["torchrun", "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", *train]


@pytest.fixture(scope="session")
def pair_run(grid_data, tmp_path_factory) -> Path:
    """One 2-rank ZeRO-2 run (`pair_args`) shared by the ZeRO-3, elastic and launcher tests:
    read-only, copy it before resuming it."""
    out = tmp_path_factory.mktemp("pair") / "zero2"
    run_cli(pair_args(data=grid_data, out=out))
    return out


@pytest.fixture(scope="session")
def trained_run(grid_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "trained"
    run_cli(train_args(grid_data, out, 30, 15, "optim.lr=2e-3"))
    return out


@pytest.fixture(scope="session")
def grid_data(tmp_path_factory) -> Path:
    """64 records of 8 rows x 64 frames (32 tokens each) in 4 shards."""
    return write_grid_dataset(tmp_path_factory.mktemp("grid") / "ds", n=64)
