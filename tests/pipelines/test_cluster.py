"""The ingest CLI against a real multi-node Ray cluster on this machine (a head without CPUs and
two worker nodes: every read runs on a worker node, and both take some), byte-identical to a
local run; with the workers writing, a node removed mid-ingest costs nothing but time."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ingest_testing import driver_plan_in_this_process, plan_in_this_process, shard_bytes

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    # The head takes no tasks (num_cpus=0), so the reads must run on the worker nodes.
    c = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0})
    for _ in range(2):
        c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    c.shutdown()


def _ingest(cohort: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipelines.ingest", "fmri", "--input", str(cohort)]
    cmd += ["--window", "40", "--quiet", "--output", str(out), *extra]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return proc


def test_ingest_on_a_two_node_cluster_matches_a_local_run(cluster, tmp_path):
    """--write driver: the shards equal what the driver writes from every source read in
    order in one process (a local run; tests/pipelines/test_ingest.py checks local runs equal
    it and each other, manifests included)."""
    from modalities.fmri import generate_cohort

    c = cluster
    cohort = tmp_path / "cohort"
    generate_cohort(cohort, n_subjects=4, seed=5, n_frames=130, voxel_mm=8.0)
    on_cluster = _ingest(cohort, tmp_path / "cluster", "--address", c.address, "--write", "driver")
    assert "read on 2 Ray nodes" in on_cluster.stdout, on_cluster.stdout
    assert "4 sources ok, 0 quarantined, 12 records" in on_cluster.stdout
    driver_plan_in_this_process([str(cohort)], tmp_path / "local")
    got, want = shard_bytes(tmp_path / "cluster"), shard_bytes(tmp_path / "local")
    assert got and got == want
    listed = json.loads((tmp_path / "cluster" / "index.json").read_text())["shards"]
    assert [Path(s["file"]).name for s in listed] == list(want)


def test_workers_write_survives_a_node_removed_mid_ingest(cluster, tmp_path):
    """--write workers on the cluster plus a third node, removed (its raylet and workers
    killed) once the first group is journalled: Ray reruns the lost groups elsewhere, the job
    completes, and the shards equal the plan run in one process."""
    from modalities.fmri import generate_cohort

    c = cluster
    doomed = c.add_node(num_cpus=1)
    c.wait_for_nodes()
    cohort = tmp_path / "cohort"
    generate_cohort(cohort, n_subjects=8, seed=6, n_frames=130, voxel_mm=8.0)
    opts = ["--write", "workers", "--group-size", "0.001", "--shard-size", "0.02"]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipelines.ingest", "fmri", "--input", str(cohort)]
    cmd += ["--window", "40", "--output", str(out), "--address", c.address, *opts]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    journal = out / ".ingest-journal.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and json.loads(journal.read_text() or "{}").get("groups"):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before a node could be removed"
    done_before = len(json.loads(journal.read_text())["groups"])
    c.remove_node(doomed)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout + stderr[-3000:]
    assert done_before < 8 and "8 sources ok" in stdout
    one = tmp_path / "one-process"
    plan_in_this_process([str(cohort)], one, *opts)
    assert shard_bytes(out) == shard_bytes(one)
