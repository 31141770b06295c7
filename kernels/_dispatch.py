"""Backend choice and output allocation shared by the kernels in this package.

Every kernel output is allocated through :func:`empty`, one place, so tests can swap it for an
allocator that fills with NaN and prove that each kernel writes every element it returns.
"""

from __future__ import annotations

import os
from typing import Literal

import torch

Backend = Literal["auto", "triton", "torch"]

# Read once at import, like Triton itself: `triton.jit` picks the interpreter when a kernel is
# defined, so flipping the variable later would not change what a launch runs.
INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(backend: Backend, *tensors: torch.Tensor) -> bool:
    """True when the Triton kernels should run for these tensors.

    ``auto``: Triton on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``; the torch
    reference otherwise. ``torch``: always the reference. ``triton``: always Triton, which on CPU
    needs the interpreter.
    """
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    if backend == "torch":
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    on_cpu = all(t.device.type == "cpu" for t in tensors)
    if not (on_cuda or on_cpu):
        raise ValueError(
            "kernels need all tensors on one kind of device, got "
            + ", ".join(sorted({str(t.device) for t in tensors}))
        )
    if on_cuda:
        return True
    if backend == "triton" and not INTERPRET:
        raise RuntimeError(
            "backend='triton' on CPU tensors needs the Triton interpreter: set TRITON_INTERPRET=1 "
            "in the environment before `kernels` is imported"
        )
    return INTERPRET


def empty(
    shape: tuple[int, ...] | torch.Size, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Allocate a kernel output (tests replace this with a NaN-filling allocator)."""
    return torch.empty(shape, dtype=dtype, device=device)


# Host-side launch arithmetic. Newer Triton makes `triton.cdiv` / `triton.next_power_of_2`
# constexpr functions whose Python call costs several microseconds each (triton 3.9: ~8 us on
# this project's CPU box), paid on every launch; these plain versions cost next to nothing.
def cdiv(a: int, b: int) -> int:
    """Ceiling division of non-negative ints."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()
