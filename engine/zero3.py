"""ZeRO-3 with a partition-local EMA target.

Under `train.zero_stage=3` DeepSpeed partitions the context encoder's parameters: each rank holds
1/world of every parameter (`p.ds_tensor`, flat, padded to a multiple of world) and gathers a
module's parameters just before its forward. The EMA target is partitioned the same way, so its
update needs no communication at all:

- `PartitionedTarget` wraps a copy of the encoder in a second DeepSpeed ZeRO-3 engine without an
  optimizer (fp32, no parameter persistence: every forward gathers the current EMA partitions
  layer by layer, with DeepSpeed's prefetch), and moves every partition into one flat fp32 buffer
  per rank. Its `forward_all` is the encoder's, so `engine.model.encode_targets` and
  `engine.graphs.GraphedTargetFeatures` (eager) run it unchanged.
- The EMA is `kernels.EMATarget` over views of that buffer, fed with the context encoder's own
  partitions (`p.ds_tensor`, fp32 or bf16): rank r's slice of parameter p only ever meets rank r's
  slice of the same parameter, because both engines partition a parameter of the same shape over
  the same group identically (checked at set-up).
- Checkpoints: every rank writes its buffer (`target-rank-R.safetensors`) and rank 0 the layout
  (`target-layout.json`: name, shape and partition size per parameter, and the world size);
  `engine.checkpoint.consolidate_target` joins them into full tensors for export and probes.

Imports torch, deepspeed (the caller has set DS_ACCELERATOR), engine.checkpoint (the on-disk
names), engine.model and kernels.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from engine.checkpoint import (
    TARGET_BUFFERS,
    TARGET_LAYOUT,
    consolidate_target,
    read_target_partition,
    target_part_name,
)
from engine.model import Encoder
from engine.ops import EMATarget


def target_deepspeed_config(micro_batch: int, prefetch: int = 50_000_000) -> dict[str, Any]:
    """The target engine's config: ZeRO-3, fp32 partitions, nothing kept gathered between
    forwards (a persistent parameter would keep a full copy that the EMA, which writes the
    partitions, never updates; a no-grad forward uses each parameter once, so none is kept for
    reuse either), `prefetch` parameters fetched ahead."""
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {
            "stage": 3,
            "stage3_param_persistence_threshold": 0,
            "stage3_model_persistence_threshold": 0,
            "stage3_prefetch_bucket_size": prefetch,
        },
        "bf16": {"enabled": False},
        "steps_per_print": 2**62,
    }


class _TargetModule(nn.Module):
    """The target encoder behind one forward, so DeepSpeed's start-of-forward hook resets its
    prefetch trace once per call (`Encoder.forward_all` is a plain method, no hook sees it)."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(
        self,
        tokens: torch.Tensor,
        coords: torch.Tensor,
        n_tokens: Any,
        packing: Any = None,
        modality: str = "",
    ) -> torch.Tensor:
        return self.encoder.forward_all(tokens, coords, n_tokens, packing, modality)


class PartitionedTarget:
    """The fp32 EMA target encoder partitioned like the context encoder under ZeRO-3.

    Build it from an encoder of the same shape (built under `deepspeed.zero.Init` with
    `target_deepspeed_config`, so it is never whole on any rank, or a whole one, which DeepSpeed
    partitions here), then call `bind(context_encoder)` once the trainer's engine exists: the
    target starts as the context encoder's weights. `update()` is one EMA step on this rank's
    partitions; `forward_all` runs the target.
    """

    def __init__(
        self,
        target: Encoder,
        micro_batch: int,
        total_steps: int,
        start: float,
        end: float,
        prefetch: int = 50_000_000,
    ) -> None:
        import deepspeed

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        module = _TargetModule(target.float().requires_grad_(False))
        self.engine, _, _, _ = deepspeed.initialize(
            model=module, config=target_deepspeed_config(micro_batch, prefetch)
        )
        self.module: _TargetModule = self.engine.module
        self.encoder: Encoder = self.module.encoder
        self.names = [n for n, _ in self.encoder.named_parameters()]
        params = list(self.encoder.parameters())
        self._params = params
        sizes = [int(p.ds_tensor.numel()) for p in params]
        device = params[0].ds_tensor.device
        # One flat fp32 buffer holds every partition of this rank; each parameter's ds_tensor
        # becomes a view of it (DeepSpeed gathers from ds_tensor, so forwards read the EMA).
        self.flat = torch.zeros(sum(sizes), dtype=torch.float32, device=device)
        views = []
        offset = 0
        for p, n in zip(params, sizes, strict=True):
            view = self.flat.narrow(0, offset, n)
            view.copy_(p.ds_tensor.detach().reshape(-1).float())
            p.ds_tensor.data = view
            views.append(view)
            offset += n
        self.layout = [
            {"name": name, "shape": list(p.ds_shape), "partition": n}
            for name, p, n in zip(self.names, params, sizes, strict=True)
        ]
        self.world = int(self.engine.world_size)
        self.ema = EMATarget(views, total_steps, start, end)
        self._sources: list[nn.Parameter] = []

    # -- set-up

    def bind(self, context: Encoder) -> None:
        """Pair every target partition with the same parameter's partition in `context` (the
        trainer's ZeRO-3 encoder); raise when the two are not partitioned alike."""
        names = [n for n, _ in context.named_parameters()]
        if names != self.names:
            raise RuntimeError("ZeRO-3 target: the context encoder's parameters differ in names")
        sources = list(context.parameters())
        for src, entry in zip(sources, self.layout, strict=True):
            if not hasattr(src, "ds_tensor"):
                raise RuntimeError(f"ZeRO-3 target: {entry['name']} is not partitioned")
            if list(src.ds_shape) != entry["shape"] or src.ds_tensor.numel() != entry["partition"]:
                raise RuntimeError(
                    f"ZeRO-3 target: {entry['name']} is partitioned as "
                    f"{src.ds_tensor.numel()} of {tuple(src.ds_shape)} on this rank, its target "
                    f"as {entry['partition']} of {tuple(entry['shape'])}"
                )
        self._sources = sources
        # The EMA starts from the context encoder's weights, partition by partition.
        with torch.no_grad():
            offset = 0
            for src, entry in zip(sources, self.layout, strict=True):
                n = entry["partition"]
                self.flat.narrow(0, offset, n).copy_(src.ds_tensor.detach().reshape(-1).float())
                offset += n

    # -- per step

    @property
    def step(self) -> int:
        return self.ema.step

    @step.setter
    def step(self, value: int) -> None:
        self.ema.step = value

    def momentum_at(self, step: int) -> float:
        return self.ema.momentum_at(step)

    @torch.no_grad()
    def update(self) -> float:
        """One EMA step on this rank's partitions (no communication); returns the momentum."""
        if not self._sources:
            raise RuntimeError("ZeRO-3 target: bind(context_encoder) before update()")
        # A target parameter still gathered (DeepSpeed keeps one when it expects reuse) would
        # give the next forward its old whole copy: release it, the partitions are the truth.
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

        held = [p for p in self._params if p.ds_status == ZeroParamStatus.AVAILABLE]
        if held:
            held[0].partition(held)
        # ds_tensor objects persist, but the optimizer may re-point their storage: read them
        # each step (the kernel's launch tables are cached by address).
        return self.ema.update([p.ds_tensor for p in self._sources])

    def forward_all(self, *args: Any) -> torch.Tensor:
        """`Encoder.forward_all(tokens, coords, n_tokens, packing, modality)` on the gathered
        EMA partitions (every rank calls it)."""
        return self.module(*args)

    def parameter_share(self) -> float:
        """This rank's buffer size over the target's parameter count (1/world plus padding)."""
        total = sum(int(torch.Size(e["shape"]).numel()) for e in self.layout)
        return self.flat.numel() / max(total, 1)

    # -- checkpoints

    def load_whole(self, tensors: dict[str, torch.Tensor], rank: int) -> None:
        """Set this rank's partitions from the whole target (`name -> tensor`), partitioned as
        DeepSpeed partitions: rank r holds elements [r s, (r + 1) s) of each flattened
        parameter, s = ceil(numel / world)."""
        missing = [e["name"] for e in self.layout if e["name"] not in tensors]
        if missing:
            raise RuntimeError(f"the saved EMA target lacks {', '.join(missing[:3])}")
        offset = 0
        with torch.no_grad():
            for e in self.layout:
                whole = tensors[e["name"]]
                if list(whole.shape) != e["shape"]:
                    raise RuntimeError(
                        f"the saved EMA target's {e['name']} is {tuple(whole.shape)}, this "
                        f"model's {tuple(e['shape'])}"
                    )
                n = e["partition"]
                part = _slice(whole.reshape(-1).float(), rank, n)
                self.flat.narrow(0, offset, n).copy_(part)
                offset += n

    def save(self, directory: Path, rank: int) -> None:
        """Write this rank's buffer; rank 0 also writes the layout and the encoder's persistent
        buffers (whole on every rank, not partitioned: fMRI's gradient positions), which the
        consolidated target carries like the whole one does."""
        save_file({"flat": self.flat.detach().cpu()}, str(directory / target_part_name(rank)))
        if rank == 0:
            layout = {"world": self.world, "params": self.layout}
            (directory / TARGET_LAYOUT).write_text(json.dumps(layout))
            buffers = {n for n, _ in self.encoder.named_buffers()}
            state = {
                k: v.detach().cpu().contiguous()
                for k, v in self.encoder.state_dict().items()
                if k in buffers
            }
            if state:
                save_file(state, str(directory / TARGET_BUFFERS))

    def load(self, directory: Path, rank: int) -> None:
        """Restore this rank's partitions: its own buffer from a checkpoint written at this world
        size, else the slices of the whole target that this rank holds (elastic resume)."""
        layout_path = directory / TARGET_LAYOUT
        saved_world = None
        if layout_path.is_file():
            saved_world = int(json.loads(layout_path.read_text()).get("world", 0))
        if saved_world != self.world:
            try:
                self.load_whole(consolidate_target(directory), rank)
            except RuntimeError as e:
                raise RuntimeError(f"{directory}: {e}") from e
            return
        path = directory / target_part_name(rank)
        saved = read_target_partition(path)
        if saved.shape != self.flat.shape:
            raise RuntimeError(
                f"{path}: holds {saved.numel()} values, this rank's EMA partitions "
                f"{self.flat.numel()}"
            )
        with torch.no_grad():
            self.flat.copy_(saved)


def gathered(module: nn.Module) -> Any:
    """A context in which `module`'s parameters are whole on every rank: for code that reads
    weights without calling the module (engine.diagnostics)."""
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(module.parameters()))


def _slice(flat: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    """Elements [rank * size, (rank + 1) * size) of `flat`, zero-padded past its end."""
    out = flat.new_zeros(size)
    part = flat[rank * size : (rank + 1) * size]
    out[: part.numel()] = part
    return out
