"""Atomic, exactly-resumable training checkpoints.

A checkpoint is a directory `RUN_DIR/checkpoints/step-NNNNNNNN/` holding
  ds/                 DeepSpeed's checkpoint (module, optimizer partitions per rank)
  target.safetensors  the fp32 EMA target encoder (ZeRO 0-2), or under ZeRO-3 its partitions:
  target-rank-R.safetensors + target-layout.json (+ target-buffers.safetensors, the encoder's
  persistent buffers) (see engine.zero3; `consolidate_target`)
  state.json          step, skips, data position, EMA step, world size, the resolved config
  rng-rank-R.json     torch / numpy / python (and CUDA) RNG states of rank R
It is written under `.tmp-step-NNNNNNNN` and renamed once every rank has finished, so a checkpoint
is complete or absent; `latest_checkpoint` only sees complete ones.

DeepSpeed's own loader unpickles with `weights_only=False`; `install_safe_loader` swaps in one
that loads with `weights_only=True`, allowing only the few DeepSpeed classes its files contain.
Imports torch, safetensors, deepspeed (lazily: only the functions that touch the engine).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d{8})$")
DS_TAG = "ds"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not fit the current run."""


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def complete_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    ckpts = complete_checkpoints(run_dir)
    return ckpts[-1][1] if ckpts else None


# ----------------------------------------------------------------------------------------------
# RNG


def capture_rng() -> dict[str, Any]:
    """Every RNG this process draws from, as JSON-serialisable values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state().tolist(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


# ----------------------------------------------------------------------------------------------
# DeepSpeed's loader, without unpickling arbitrary objects


def _deepspeed_globals() -> list[Any]:
    """The only non-tensor objects DeepSpeed (0.19) writes into ZeRO-0/1/2 checkpoints."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def install_safe_loader(engine: Any) -> None:
    """Make `engine.load_checkpoint` read files with `torch.load(weights_only=True)`."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    allowed = _deepspeed_globals()

    class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location: Any = None) -> Any:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location=map_location, weights_only=True)

    engine.checkpoint_engine = WeightsOnlyCheckpointEngine(engine._config)


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Within the block, every `torch.load` reads with `weights_only=True` (DeepSpeed's own
    objects allowed), whatever its caller asked: DeepSpeed's `zero_to_fp32` consolidation asks
    for full unpickling, which would run code from a crafted checkpoint."""
    original = torch.load
    allowed = _deepspeed_globals()

    def safe_load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        with torch.serialization.safe_globals(allowed):
            return original(*args, **kwargs)

    torch.load = safe_load
    try:
        yield
    finally:
        torch.load = original


# ----------------------------------------------------------------------------------------------
# save / load


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")) + [path]:
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    for d in [path, path.parent]:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj))


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    engine: Any,
    target: Any,
    state: dict[str, Any],
    rank: int,
    keep: int = 0,
) -> Path:
    """Write checkpoint `step` collectively (every rank calls this); returns its final path.

    `target`: the EMA target encoder (an nn.Module, saved by rank 0) or a ZeRO-3
    `engine.zero3.PartitionedTarget` (every rank saves its partitions).
    `state` is the trainer state (JSON-serialisable) saved by rank 0. Every rank saves its RNG.
    After the rename, all but the `keep` newest complete checkpoints are deleted (0 keeps all).
    """
    root = Path(run_dir) / CHECKPOINTS
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{step_dir_name(step)}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a run killed while saving
        tmp.mkdir(parents=True)
    dist.barrier()
    engine.save_checkpoint(str(tmp), tag=DS_TAG, save_latest=False)
    _write_json(tmp / f"rng-rank-{rank}.json", capture_rng())
    if not isinstance(target, torch.nn.Module):
        target.save(tmp, rank)
    if rank == 0:
        if isinstance(target, torch.nn.Module):
            tensors = {k: v.detach().float().contiguous() for k, v in target.state_dict().items()}
            save_file(tensors, str(tmp / "target.safetensors"))
        # state.json marks completeness inside the directory as well; written last.
        _write_json(tmp / "state.json", state)
    dist.barrier()
    if rank == 0:
        _fsync_tree(tmp)
        if final.exists():  # same step saved again (e.g. a resumed run's final save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        if keep > 0:
            for _, old in complete_checkpoints(run_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def read_state(path: str | Path) -> dict[str, Any]:
    p = Path(path) / "state.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{p}: unreadable checkpoint state ({e})") from e


def load_target(path: str | Path, target: torch.nn.Module) -> None:
    """Load the EMA target weights of a checkpoint into `target` (all keys must match)."""
    p = Path(path) / "target.safetensors"
    if not p.is_file():
        raise CheckpointError(f"{p}: missing")
    target.load_state_dict(read_tensors(p), strict=True)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; CheckpointError naming the file when it is unreadable."""
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from e


# A ZeRO-3 target on disk (engine.zero3 writes it): each rank's flat fp32 buffer, rank 0's layout
# (name, shape, partition size per parameter; the world size) and the encoder's buffers.
TARGET_LAYOUT = "target-layout.json"
TARGET_BUFFERS = "target-buffers.safetensors"


def target_part_name(rank: int) -> str:
    return f"target-rank-{rank}.safetensors"


def read_target_partition(path: Path) -> torch.Tensor:
    """One rank's flat EMA target buffer; CheckpointError naming the file when it is not one."""
    flat = read_tensors(path).get("flat")
    if flat is None:
        raise CheckpointError(f"{path}: holds no 'flat' tensor (not a ZeRO-3 target partition)")
    return flat


def consolidate_target(path: str | Path) -> dict[str, torch.Tensor]:
    """The full fp32 EMA target of checkpoint `path`: `target.safetensors`, or under ZeRO-3 its
    per-rank partitions joined (rank r holds elements [r s, (r + 1) s) of every flattened
    parameter, s = ceil(numel / world); the last rank's tail is padding)."""
    path = Path(path)
    whole = path / "target.safetensors"
    layout_path = path / TARGET_LAYOUT
    if whole.is_file():
        return read_tensors(whole)
    if not layout_path.is_file():
        parts = sorted(p.name for p in path.glob(target_part_name("*")))
        if parts:
            raise CheckpointError(
                f"{layout_path}: missing, so the ZeRO-3 target partitions ({', '.join(parts)}) "
                "cannot be joined"
            )
        raise CheckpointError(f"{whole}: missing (and no ZeRO-3 target partitions)")
    try:
        layout = json.loads(layout_path.read_text())
        world, params = int(layout["world"]), layout["params"]
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{layout_path}: unreadable ZeRO-3 target layout ({e})") from e
    parts = []
    for r in range(world):
        p = path / target_part_name(r)
        if not p.is_file():
            raise CheckpointError(f"{p}: missing (the target was saved by {world} ranks)")
        parts.append(read_target_partition(p))
    expected = sum(int(e["partition"]) for e in params)
    for r, flat in enumerate(parts):
        if flat.numel() != expected:
            raise CheckpointError(
                f"{path}: {target_part_name(r)} holds {flat.numel()} values, the layout "
                f"says {expected}"
            )
    buffers = path / TARGET_BUFFERS  # the encoder's persistent buffers, whole
    out = read_tensors(buffers) if buffers.is_file() else {}
    offset = 0
    for e in params:
        n = int(e["partition"])
        shape = torch.Size(e["shape"])
        joined = torch.cat([flat[offset : offset + n] for flat in parts])
        out[e["name"]] = joined[: shape.numel()].reshape(shape).clone()
        offset += n
    return out


UNIVERSAL_TAG = "ds-universal"


def universal_tag(path: str | Path, rank: int) -> str:
    """Convert checkpoint `path`'s DeepSpeed ZeRO files (stages 1-3) into DeepSpeed's universal
    format (`path/ds-universal`: every parameter's fp32 weights and Adam moments whole, which
    any world size re-partitions), once: rank 0 converts while every rank waits for its word
    (one broadcast, so a failed conversion stops every rank, not rank 0 alone; the wait is
    bounded by the process group's timeout: 30 min on gloo, 10 on NCCL); returns the tag to load.
    DeepSpeed's converter unpickles; here it reads tensors and DeepSpeed's own types only."""
    path = Path(path)
    out = path / UNIVERSAL_TAG
    error: str | None = None
    if rank == 0 and not (out / "zero").is_dir():
        from deepspeed.checkpoint.ds_to_universal import main as convert

        tmp = path / f".{UNIVERSAL_TAG}-tmp"
        args = argparse.Namespace(
            input_folder=str(path / DS_TAG),
            output_folder=str(tmp),
            num_extract_workers=1,  # in this process: the weights-only loads hold
            num_merge_workers=1,
            keep_temp_folder=False,
            strict=True,
            inject_missing_state=True,  # checkpoints written without Megatron's extra state
        )
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            with weights_only_loads(), contextlib.redirect_stdout(sys.stderr):
                convert(args)
            os.replace(tmp, out)
        except Exception as e:  # every rank must hear of any failure, or the others hang
            shutil.rmtree(tmp, ignore_errors=True)
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            error = (
                f"{path / DS_TAG}: cannot convert to a universal checkpoint for another world "
                f"size ({reason})"
            )
    word = [error]
    dist.broadcast_object_list(word, src=0)
    if word[0] is not None:
        raise CheckpointError(word[0])
    return UNIVERSAL_TAG


def load_checkpoint(
    path: str | Path,
    engine: Any,
    target: Any,
    rank: int,
    world: int,
    elastic: bool = False,
    tag: str = DS_TAG,
) -> dict[str, Any]:
    """Restore module, optimizer, EMA target and this rank's RNG; return the trainer state.

    `elastic`: the checkpoint was saved at another world size (the caller checked that it can
    continue: engine.trainer); DeepSpeed re-partitions the optimizer state, and a rank the
    checkpoint has no RNG state for takes rank 0's (nothing in the step draws from these
    generators: masks are seeded per sample, engine.data.sample_rng)."""
    path = Path(path)
    state = read_state(path)
    if state.get("world") != world and not elastic:
        raise CheckpointError(
            f"{path}: saved by {state.get('world')} processes, this run has {world}; exact resume "
            "needs the same world size"
        )
    # DeepSpeed reads a universal checkpoint's parameter files with a plain torch.load.
    with weights_only_loads() if tag != DS_TAG else contextlib.nullcontext():
        loaded, _ = engine.load_checkpoint(
            str(path), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=False
        )
    if loaded is None:
        raise CheckpointError(f"{path}: DeepSpeed could not load {path / tag}")
    if isinstance(target, torch.nn.Module):
        load_target(path, target)
    else:
        try:
            target.load(path, rank)
        except RuntimeError as e:
            raise CheckpointError(str(e)) from e
    rng_path = path / f"rng-rank-{rank}.json"
    if elastic and not rng_path.is_file():
        rng_path = path / "rng-rank-0.json"
    try:
        restore_rng(json.loads(rng_path.read_text()))
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{rng_path}: unreadable RNG state ({e})") from e
    return state
