"""The ingest CLI against a real multi-node Ray cluster on this machine (a head without CPUs and
two worker nodes: every read runs on a worker node, and both take some), byte-identical to a
local run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
    from modalities.fmri import generate_cohort

    c = cluster
    cohort = tmp_path / "cohort"
    generate_cohort(cohort, n_subjects=4, seed=5, n_frames=130, voxel_mm=8.0)
    on_cluster = _ingest(cohort, tmp_path / "cluster", "--address", c.address)
    assert "read on 2 Ray nodes" in on_cluster.stdout, on_cluster.stdout
    local = _ingest(cohort, tmp_path / "local", "--num-cpus", "2")
    assert "Ray nodes" not in local.stdout  # one node: nothing to say

    def shards(root: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted((root / "shards").glob("*.arrow"))}

    def manifest(root: Path) -> dict:
        m = json.loads((root / "index.json").read_text())
        return {k: v for k, v in m.items() if k != "timing"}

    got, want = shards(tmp_path / "cluster"), shards(tmp_path / "local")
    assert got and got == want
    assert manifest(tmp_path / "cluster") == manifest(tmp_path / "local")
