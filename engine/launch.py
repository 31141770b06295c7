"""Process-group set-up for `engine.train`: one plain process, or many under torchrun/deepspeed.

`setup_distributed()` is called from the CLI path only (no import-time side effects anywhere in
the engine): without CUDA it sets DS_ACCELERATOR=cpu before DeepSpeed is imported; without a
launcher it makes this process rank 0 of a world of 1 on a free local port, so the same command
runs with or without `torchrun`.
Imports the standard library and torch (DeepSpeed is imported by the caller, afterwards).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_distributed() -> DistInfo:
    """Initialise torch.distributed (gloo on CPU, nccl on CUDA) and return this process's place."""
    cuda = torch.cuda.is_available()
    if not cuda:
        # DeepSpeed picks its accelerator when first imported; on a CPU box it must be told.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:
        os.environ.update(
            RANK="0",
            WORLD_SIZE="1",
            LOCAL_RANK="0",
            LOCAL_WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(_free_port()),
        )
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local_rank, device)


def teardown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
