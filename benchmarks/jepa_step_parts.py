"""The pieces of benchmarks/jepa_step.py: model shapes, the engine's modules loaded for a bare GPU
box (torch + triton + numpy), mask draws and packed batches, token counts and model FLOPs, and the
step runner that times one way of running a JEPA step. See jepa_step.py for what is measured."""

from __future__ import annotations

import copy
import importlib.util
import itertools
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.objective import jepa_loss  # noqa: E402
from engine.ops import EMATarget  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from jepa_reference import (  # noqa: E402
    Mask,
    RefBatch,
    ref_forward,
    ref_loss,
    ref_target,
)


@dataclass
class ModelShape:
    """The fields of `engine.config.ModelConfig` that `engine.model` reads, plus the data shape."""

    patch_len: int = 768  # patch dim: 16 x 16 x 3 pixels
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    pred_dim: int = 384
    pred_depth: int = 12  # I-JEPA's configs use a 12-deep, 384-wide predictor
    pred_heads: int = 12
    init: str = "ijepa"  # I-JEPA's trunc-normal std 0.02, as the reference step initialises
    pred_context: str = "once"  # the I-JEPA predictor (engine.config.ModelConfig.pred_context)
    grid: int = 14  # 224 px / 16 px patches -> 14 x 14 = 196 tokens
    batch: int = 64
    num_targets: int = 4

    @property
    def tokens(self) -> int:
        return self.grid * self.grid


TINY = dict(
    patch_len=48,
    embed_dim=64,
    depth=2,
    num_heads=4,
    pred_dim=32,
    pred_depth=2,
    pred_heads=4,
    batch=4,
)


def _load_file(name: str, path: Path, stubs: dict[str, types.ModuleType]) -> types.ModuleType:
    """Execute `path` as module `name`, with `stubs` in sys.modules only while it imports."""
    saved = {k: sys.modules.get(k) for k in stubs}
    sys.modules.update(stubs)
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # under its own name (dataclasses look their module up)
        spec.loader.exec_module(mod)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return mod


def load_engine_model() -> types.ModuleType:
    """`engine.model`, without importing `engine.config` (yaml) when it is not loaded already.

    model.py takes `ModelConfig` only for attribute reads (annotations are strings), so a
    stand-in module holding `ModelShape` serves while it imports; sys.modules is left as found.
    """
    if "engine.model" in sys.modules:
        return sys.modules["engine.model"]
    if "engine.config" in sys.modules:
        import engine.model

        return engine.model
    stub = types.ModuleType("engine.config")
    stub.ModelConfig = ModelShape
    return _load_file(
        "_jepa_step_engine_model", REPO / "engine" / "model.py", {"engine.config": stub}
    )


def load_engine_graphs(model_mod: types.ModuleType) -> types.ModuleType:
    """`engine.graphs` (torch + `engine.model`), on `model_mod` as its `engine.model`."""
    if "engine.graphs" in sys.modules:
        return sys.modules["engine.graphs"]
    if "engine.config" in sys.modules:
        import engine.graphs

        return engine.graphs
    return _load_file(
        "_jepa_step_engine_graphs", REPO / "engine" / "graphs.py", {"engine.model": model_mod}
    )


def load_grid() -> types.ModuleType:
    """`modalities/grid.py` (numpy + torch) without the `modalities` package (pyarrow); its one
    import of ours, `modalities.options` (standard library only), is loaded by file as well."""
    if "modalities.grid" in sys.modules:
        return sys.modules["modalities.grid"]
    options = _load_file("_jepa_step_options", REPO / "modalities" / "options.py", {})
    return _load_file(
        "_jepa_step_grid", REPO / "modalities" / "grid.py", {"modalities.options": options}
    )


em = load_engine_model()
eb = sys.modules["engine.batch"]  # imported by engine.model (numpy + torch only)
eg = load_engine_graphs(em)
grid_mod = load_grid()

# ----------------------------------------------------------------------------- masks and batches


def draw_masks(shape: ModelShape, rng: np.random.Generator) -> list[Mask]:
    """I-JEPA multi-block masks (4 x 15-20% targets, 85-100% context minus targets) per sample."""
    masker = grid_mod.MultiBlockMasker(num_targets=shape.num_targets)
    r, c = np.meshgrid(np.arange(shape.grid), np.arange(shape.grid), indexing="ij")
    coords = np.stack([r.reshape(-1), c.reshape(-1)], axis=1)
    return [masker(rng, coords) for _ in range(shape.batch)]


def pack(tokens: torch.Tensor, coords: torch.Tensor, masks: list[Mask]) -> Any:
    """The engine's packed batch (`engine.batch.pack`, what the loader builds) of these masks."""
    return eb.pack(
        [
            eb.Sample(i, tokens[i].numpy(), coords[i].numpy(), c, list(ts))
            for i, (c, ts) in enumerate(masks)
        ]
    )


def to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, (torch.Tensor, eb.PackedBatch)):
        return x.to(device)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, list):
        return [to_device(v, device) for v in x]
    if isinstance(x, RefBatch):
        return RefBatch(**{k: to_device(v, device) for k, v in vars(x).items()})
    return x


def counts(shape: ModelShape, masks: list[Mask]) -> dict[str, Any]:
    """Token counts and per-sequence lengths a path processes for `masks`."""
    lc = [len(c) for c, _ in masks]
    lp = [len(c) + len(t) for c, ts in masks for t in ts]
    return {
        "ctx": sum(lc),
        "tgt": sum(len(t) for _, ts in masks for t in ts),
        "pred": sum(lp),
        "target_encoder": shape.batch * shape.tokens,
        "sum_lc2": sum(x * x for x in lc),
        "sum_lp2": sum(x * x for x in lp),
    }


def padded_counts(shape: ModelShape, masks: list[Mask]) -> dict[str, int]:
    """Tokens the padded reference computes, padding included."""
    b, n = shape.batch, shape.num_targets
    kc = max(len(c) for c, _ in masks)
    kt = max(len(t) for _, ts in masks for t in ts)
    return {"ctx": b * kc, "tgt": n * b * kt, "pred": n * b * (kc + kt)}


def step_flops(shape: ModelShape, c: dict[str, Any]) -> float:
    """Model FLOPs of one step (formula in the module docstring)."""
    d, dp, p = shape.embed_dim, shape.pred_dim, shape.patch_len
    w = 4 * d * d + 2 * d * int(d * shape.mlp_ratio)
    wp = 4 * dp * dp + 2 * dp * int(dp * shape.mlp_ratio)
    bn = shape.batch * shape.tokens
    trained = (
        p * d * bn
        + shape.depth * w * c["ctx"]
        + d * dp * (2 * c["ctx"] + c["tgt"])
        + shape.pred_depth * wp * c["pred"]
        + dp * d * c["tgt"]
    )
    attn = 4 * d * shape.depth * c["sum_lc2"] + 4 * dp * shape.pred_depth * c["sum_lp2"]
    target = (
        2 * (p * d + shape.depth * w) * bn + 4 * d * shape.depth * shape.batch * shape.tokens**2
    )
    return 6 * trained + 3.5 * attn + target


# ----------------------------------------------------------------------------- one training step

MOMENTUM = 0.996  # I-JEPA's starting EMA momentum


def param_groups(model: torch.nn.Module, wd: float = 0.04) -> list[dict]:
    """I-JEPA: biases and other 1-D parameters excluded from weight decay."""
    params = list(model.parameters())
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": wd},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


class StepRunner:
    """One way of running the step: its own model copy, target, optimizer and batches."""

    PHASES = ("fwd", "bwd", "opt", "ema")

    def __init__(
        self,
        name: str,
        model,
        batches: list,
        ours: bool,
        autocast: bool,
        graph_target: bool = False,
        graph_step: bool = False,
    ) -> None:
        self.name, self.model, self.batches, self.ours = name, model, batches, ours
        self.target = copy.deepcopy(model.encoder).float().requires_grad_(False)
        # The engine's CUDA graphs (engine.graphs; eager on CPU): the target encoder's forward,
        # and the trained part's forward + backward per padded size bucket.
        self.target_features = eg.GraphedTargetFeatures(self.target, enabled=graph_target)
        model.cuda_graphs = eg.GraphedJEPA(model, enabled=graph_step)
        self.opt = torch.optim.AdamW(param_groups(model), lr=1e-4)
        self.autocast = autocast
        self.ema = EMATarget(self.target, total_steps=1, start=MOMENTUM, end=MOMENTUM)
        self.t_params = list(self.target.parameters())
        self.s_params = list(model.encoder.parameters())
        self.i = 0

    def _ctx(self):
        device = next(self.model.parameters()).device.type
        return torch.autocast(device, dtype=torch.bfloat16, enabled=self.autocast)

    def loss(self, batch) -> torch.Tensor:
        with self._ctx():
            if self.ours:
                pred = self.model(batch)
                tgt = self.target_features(batch)
                return jepa_loss(pred, tgt.float(), "smooth_l1")
            pred = ref_forward(self.model, batch)
            tgt = ref_target(self.target, batch)
            return ref_loss(pred, tgt, batch)

    def update_target(self) -> None:
        if self.ours:
            self.ema.update(self.s_params)  # fused multi-tensor ema_
        else:
            with torch.no_grad():  # I-JEPA's loop
                for pt, ps in zip(self.t_params, self.s_params, strict=True):
                    pt.mul_(MOMENTUM).add_((1.0 - MOMENTUM) * ps.detach())

    def step(self, mark: Callable[[], None] = lambda: None) -> torch.Tensor:
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        mark()
        loss = self.loss(batch)
        mark()
        loss.backward()
        mark()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        mark()
        self.update_target()
        mark()
        return loss.detach()


def _phase_ms(path: StepRunner, cuda: bool) -> list[float]:
    """One step; milliseconds of each phase (CUDA events on GPU, host clock on CPU)."""
    marks: list[Any] = []
    if cuda:

        def mark() -> None:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            marks.append(ev)

        path.step(mark)
        marks[-1].synchronize()
        return [a.elapsed_time(b) for a, b in itertools.pairwise(marks)]
    path.step(lambda: marks.append(time.perf_counter()))
    return [(b - a) * 1e3 for a, b in itertools.pairwise(marks)]


def time_steps(
    path: StepRunner, device: torch.device, steps: int, warmup: int
) -> dict[str, list[float]]:
    """Step and phase times (ms) of `steps` steps after `warmup`."""
    cuda = device.type == "cuda"
    for _ in range(warmup):
        path.step()
    if cuda:
        torch.cuda.synchronize(device)
    per: dict[str, list[float]] = {k: [] for k in ("step", *StepRunner.PHASES)}
    for _ in range(steps):
        ms = _phase_ms(path, cuda)
        per["step"].append(sum(ms))
        for k, v in zip(StepRunner.PHASES, ms, strict=True):
            per[k].append(v)
    return per


# ----------------------------------------------------------------------------- setup


def build(shape: ModelShape, device: torch.device, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    embedder = grid_mod.GridEmbedder(shape.patch_len, shape.embed_dim)
    return em.JEPA(embedder, shape).to(device)


def make_data(shape: ModelShape, n_batches: int, seed: int):
    """`n_batches` (tokens, coords, masks) draws; tokens random normal (never zeros)."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    r, c = torch.meshgrid(torch.arange(shape.grid), torch.arange(shape.grid), indexing="ij")
    coords = torch.stack([r.reshape(-1), c.reshape(-1)], 1).expand(shape.batch, -1, -1)
    out = []
    for _ in range(n_batches):
        tokens = torch.randn(shape.batch, shape.tokens, shape.patch_len, generator=gen)
        out.append((tokens, coords.contiguous(), draw_masks(shape, rng)))
    return out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))
