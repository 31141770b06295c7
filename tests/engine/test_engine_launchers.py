"""Launchers: two nodes simulated on this machine (one process each, talking over localhost), by
torchrun (c10d rendezvous) and by the `deepspeed` launcher (hostfile, --no_ssh: each node runs
its own launcher, as on a cluster without ssh between nodes), train exactly as one node with two
processes does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PAIR_SAVE, PAIR_STEPS, REPO, command, engine_env, free_port, train_args
from test_engine_train import losses

pytestmark = pytest.mark.slow

STEPS = PAIR_STEPS


def _train(data: Path, out: Path) -> list[str]:
    """The shared one-node run's training arguments (conftest.pair_args), without torchrun."""
    return train_args(data, out, PAIR_STEPS, PAIR_SAVE, "data.batch_size=4")


def _two_nodes(cmds: list[list[str]], env: dict[str, str]) -> None:
    """Start one launcher per node (node 1 first), wait for both; each must exit 0."""
    procs = [
        subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for cmd in reversed(cmds)
    ]
    try:
        outs = [p.communicate(timeout=180)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
        raise AssertionError("a node's launcher timed out") from None
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-4000:]


def _check_two_ranks(run: Path) -> None:
    ckpt = run / "checkpoints" / f"step-{STEPS:08d}"
    assert json.loads((ckpt / "state.json").read_text())["world"] == 2
    assert (ckpt / "rng-rank-0.json").is_file() and (ckpt / "rng-rank-1.json").is_file()


def test_two_nodes_train_as_one_node_with_two_processes(grid_data, pair_run, tmp_path):
    reference = losses(pair_run)  # one node, two processes
    assert [s for s, _ in reference] == list(range(1, STEPS + 1))

    # torchrun on each node: the same rendezvous endpoint and id, its own node rank
    tr = tmp_path / "torchrun"
    rdzv = ["--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{free_port()}"]
    rdzv += ["--rdzv_id", "jf-test", "--nnodes", "2", "--nproc_per_node", "1"]
    _two_nodes(
        [
            command(["torchrun", *rdzv, "--node_rank", str(node), "-m", *_train(grid_data, tr)])
            for node in (0, 1)
        ],
        engine_env(),
    )
    assert losses(tr) == reference
    _check_two_ranks(tr)

    # the deepspeed launcher on each node: a hostfile naming both, --no_ssh, node rank, master
    launcher = Path(sys.executable).parent / "deepspeed"
    assert launcher.is_file(), "the deepspeed launcher is installed with deepspeed"
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    ds = tmp_path / "deepspeed"
    master = ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    env = engine_env()
    env.setdefault("DS_ACCELERATOR", "cpu")
    _two_nodes(
        [
            [str(launcher), "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(node)]
            + master
            + ["--module", *_train(grid_data, ds)]
            for node in (0, 1)
        ],
        env,
    )
    assert losses(ds) == reference
    _check_two_ranks(ds)
