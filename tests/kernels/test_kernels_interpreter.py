"""Runs the Triton kernel tests on CPU under TRITON_INTERPRET=1, in a child process.

Triton reads TRITON_INTERPRET when kernels are defined, so the interpreter cannot be switched on
inside this pytest process (which keeps the fast torch path for every other package's tests).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA the kernel tests run directly")
def test_triton_kernels_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "tests/kernels/interpret",
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"interpreter kernel tests failed:\n{output[-20000:]}"
    passed = re.search(r"(\d+) passed", output)
    # Guard against a run that collected nothing (e.g. the conftest ignoring every file).
    assert passed and int(passed.group(1)) >= 30, (
        f"too few interpreter tests ran:\n{output[-5000:]}"
    )
