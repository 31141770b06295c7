"""Tests of the Triton kernels themselves: on CUDA, or on CPU under TRITON_INTERPRET=1.

The interpreter is chosen when Triton kernels are defined, so these tests only run in a process
started with TRITON_INTERPRET=1 (tests/kernels/test_kernels_interpreter.py starts one) or on a
CUDA machine. In a plain CPU pytest run they are not collected, rather than skipped one by one:
the subprocess test is what runs them there.
"""

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
if not (INTERPRET or torch.cuda.is_available()):
    collect_ignore_glob = ["test_*.py"]

DEVICE = torch.device("cpu" if INTERPRET else "cuda")


@pytest.fixture
def device() -> torch.device:
    return DEVICE


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    """Every kernel output starts as NaN, so an element the kernel forgot to write fails.

    Integer buffers (the gather's inverse map, which is deliberately not pre-filled) start as
    random integers, many of them plausible row numbers, so a kernel that trusts an entry it
    did not write fails too.
    """
    from kernels import _dispatch

    def nan_empty(shape, dtype, device):
        if not dtype.is_floating_point:
            n = max(1, int(torch.tensor(tuple(shape)).prod()))
            return torch.randint(-3, 2 * n, tuple(shape), dtype=dtype, device=device)
        return torch.full(tuple(shape), float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(_dispatch, "empty", nan_empty)


@pytest.fixture(autouse=True)
def fresh_seed(request):
    # A different seed per test (stable across runs, so a failure reproduces).
    torch.manual_seed(hash(request.node.nodeid) % (2**31))
