"""benchmarks/jepa_step.py on CPU: the equivalence check, and a tiny interleaved-rounds run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "jepa_step.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_check_ours_equals_the_references():
    proc = _run("--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "jepa_step --check: PASS" in proc.stdout


def test_tiny_run_with_rounds_reports_every_path(tmp_path):
    out = tmp_path / "step.json"
    proc = _run("--tiny", "--steps", "1", "--warmup", "1", "--rounds", "2", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["rounds"] == 2
    rows = {r["path"]: r for r in report["rows"]}
    assert set(rows) == {"ours", "ref-trunc", "ref-pad"}
    for r in rows.values():
        assert len(r["round_step_ms"]) == 2 and all(ms > 0 for ms in r["round_step_ms"])
    assert "per round, ours per token over ref-trunc" in proc.stdout
    bad = _run("--tiny", "--rounds", "0")
    assert bad.returncode == 2 and "--rounds must be at least 1" in bad.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device here: the run is not skipped")
def test_the_gpu_training_benchmark_skips_without_a_gpu(tmp_path):
    """benchmarks/gpu_train.py (issue 17's GPU run) says so and exits 0 where there is no CUDA
    device; its whole sequence runs on the CPU with --cpu-smoke (by hand: ~1 minute)."""
    script = REPO / "benchmarks" / "gpu_train.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gpu_train: skipped: no CUDA device here" in proc.stdout
    assert not any(tmp_path.iterdir())  # nothing run, nothing written
