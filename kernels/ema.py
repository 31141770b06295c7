"""Fused EMA of the target encoder: ``target = m * target + (1 - m) * source`` over many tensors.

One launch covers every parameter of a model: a table of (target address, source address, size)
per tensor plus a table of fixed-size chunks, so each program finds its tensor and offset by one
lookup. Tables depend only on addresses, sizes and dtypes, so they are built once and cached; the
momentum is a kernel argument (a float, or a 0-d device tensor read in the kernel), so changing it
every step neither recompiles nor syncs.

Targets are fp32: an update of ``1 - m <= 0.004`` is below bf16 resolution, so a bf16 target would
stop moving. Sources may be fp32 or bf16 (or fp16).

:class:`EMATarget` owns the fp32 target tensors and the momentum schedule (I-JEPA's linear ramp
0.996 -> 1.0 by default) and checkpoints both.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

import torch
import triton
import triton.language as tl

from kernels._dispatch import Backend, use_triton

# Elements per chunk (one program) and per load step, and warps per program. Measured on an H200
# (benchmarks/ema_tune.py, CUDA-graph device time, ViT-L's 303M parameters, 2026-11-26): two
# steps of 2048 per program with 4 warps beat one step of 4096 with 8 (fp32 sources 0.855 vs
# 0.887 ms, bf16 sources 0.723 vs 0.840 ms); the table loads are amortised over twice the payload.
CHUNK = 8192
BLOCK = 2048
EMA_WARPS = 4
_SRC_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


@triton.jit
def _ema_kernel(
    TGT_ADDR,
    SRC_ADDR,
    NUMEL,
    CHUNK_TENSOR,
    CHUNK_START,
    momentum,
    MOMENTUM_PTR,
    SRC_CODE: tl.constexpr,
    HAS_MOMENTUM_PTR: tl.constexpr,
    ALIGNED: tl.constexpr,
    CHUNK_SIZE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    i = tl.load(CHUNK_TENSOR + pid)
    start = tl.load(CHUNK_START + pid)
    n = tl.load(NUMEL + i)
    tgt = tl.load(TGT_ADDR + i).to(tl.pointer_type(tl.float32))
    if SRC_CODE == 0:
        src = tl.load(SRC_ADDR + i).to(tl.pointer_type(tl.float32))
    elif SRC_CODE == 1:
        src = tl.load(SRC_ADDR + i).to(tl.pointer_type(tl.bfloat16))
    else:
        src = tl.load(SRC_ADDR + i).to(tl.pointer_type(tl.float16))
    if HAS_MOMENTUM_PTR:
        m = tl.load(MOMENTUM_PTR).to(tl.float32)
    else:
        m = momentum
    w = 1.0 - m
    if ALIGNED:
        # Addresses loaded from a table carry no alignment facts; the host checked 16 bytes, and
        # saying so lets the compiler emit vector loads and stores.
        tgt = tl.multiple_of(tgt, 16)
        src = tl.multiple_of(src, 16)
    if start + CHUNK_SIZE <= n:
        # Whole chunk in bounds: no mask, so accesses stay vectorised.
        for off in range(0, CHUNK_SIZE, BLOCK):
            offs = tl.max_contiguous(
                tl.multiple_of(start + off + tl.arange(0, BLOCK), BLOCK), BLOCK
            )
            t = tl.load(tgt + offs)
            s = tl.load(src + offs).to(tl.float32)
            # lerp form: exact when m == 1, and the same formula as torch.lerp_ / _foreach_lerp_.
            tl.store(tgt + offs, t + w * (s - t))
    else:
        for off in range(0, CHUNK_SIZE, BLOCK):
            offs = start + off + tl.arange(0, BLOCK)
            mask = offs < n
            t = tl.load(tgt + offs, mask=mask)
            s = tl.load(src + offs, mask=mask).to(tl.float32)
            tl.store(tgt + offs, t + w * (s - t), mask=mask)


class _Launch:
    """Device-side tables for the pairs of one source dtype."""

    def __init__(
        self,
        code: int,
        targets: Sequence[torch.Tensor],
        sources: Sequence[torch.Tensor],
        device: torch.device,
    ) -> None:
        chunk_tensor: list[int] = []
        chunk_start: list[int] = []
        for i, t in enumerate(targets):
            starts = range(0, t.numel(), CHUNK)
            chunk_tensor.extend([i] * len(starts))
            chunk_start.extend(starts)
        as_i64 = dict(dtype=torch.int64, device=device)
        self.code = code
        self.tgt_addr = torch.tensor([t.data_ptr() for t in targets], **as_i64)
        self.src_addr = torch.tensor([s.data_ptr() for s in sources], **as_i64)
        self.numel = torch.tensor([t.numel() for t in targets], **as_i64)
        self.chunk_tensor = torch.tensor(chunk_tensor, dtype=torch.int32, device=device)
        self.chunk_start = torch.tensor(chunk_start, **as_i64)
        self.num_chunks = len(chunk_tensor)
        self.aligned = all(t.data_ptr() % 16 == 0 for t in (*targets, *sources))


def _plan_key(targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor]) -> tuple:
    # Everything the tables encode (addresses, sizes, dtypes, layout), so a hit is always valid,
    # even for tensors freed and reallocated in the same places. Plain tuples of attribute reads
    # keep this cheap: it runs every step over hundreds of parameters.
    return (
        targets[0].device,
        tuple(t.data_ptr() for t in targets),
        tuple(s.data_ptr() for s in sources),
        tuple(t.numel() for t in targets),
        tuple(t.dtype for t in targets),
        tuple(s.dtype for s in sources),
        tuple(t.is_contiguous() for t in targets),
        tuple(s.is_contiguous() for s in sources),
    )


# Validated launch tables per parameter list; validation runs only when a plan is built.
_PLANS: OrderedDict[tuple, list[_Launch]] = OrderedDict()
_MAX_PLANS = 16


def _build_plan(
    targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor], backend: Backend
) -> list[_Launch]:
    _check(targets, sources)
    use_triton(backend, *targets, *sources)  # raises on tensors spread over devices
    for i, (t, s) in enumerate(zip(targets, sources, strict=True)):
        if not (t.is_contiguous() and s.is_contiguous()):
            raise ValueError(
                f"ema_ pair {i} is not contiguous; the fused kernel needs flat tensors"
            )
    launches = []
    # One launch per source dtype (the kernel specialises the source pointer type).
    for dtype, code in _SRC_CODES.items():
        pairs = [(t, s) for t, s in zip(targets, sources, strict=True) if s.dtype == dtype]
        pairs = [(t, s) for t, s in pairs if t.numel() > 0]
        if pairs:
            tg, sr = zip(*pairs, strict=True)
            launches.append(_Launch(code, tg, sr, targets[0].device))
    return launches


def _check(targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor]) -> None:
    if len(targets) != len(sources):
        raise ValueError(f"ema_ got {len(targets)} targets but {len(sources)} sources")
    for i, (t, s) in enumerate(zip(targets, sources, strict=True)):
        if t.dtype != torch.float32:
            raise ValueError(
                f"ema_ target {i} must be float32 (EMA updates underflow bf16), got {t.dtype}"
            )
        if s.dtype not in _SRC_CODES:
            raise ValueError(f"ema_ source {i} must be float32, bfloat16 or float16, got {s.dtype}")
        if t.shape != s.shape:
            raise ValueError(f"ema_ pair {i}: target {tuple(t.shape)} vs source {tuple(s.shape)}")
        if t.device != s.device:
            raise ValueError(f"ema_ pair {i}: target on {t.device}, source on {s.device}")


def ema_reference_(
    targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor], momentum: float | torch.Tensor
) -> None:
    """torch version of :func:`ema_` (``torch.lerp_`` per tensor, fp32 math)."""
    _check(targets, sources)
    with torch.no_grad():
        for t, s in zip(targets, sources, strict=True):
            t.lerp_(s.float(), 1.0 - momentum)


def ema_(
    targets: Sequence[torch.Tensor],
    sources: Sequence[torch.Tensor],
    momentum: float | torch.Tensor,
    backend: Backend = "auto",
) -> None:
    """In place: ``targets[i] = momentum * targets[i] + (1 - momentum) * sources[i]``.

    ``targets`` are contiguous fp32 tensors (e.g. ``list(target_encoder.parameters())``),
    ``sources`` matching tensors in fp32/bf16/fp16. ``momentum`` is a float or a 0-d tensor; a
    tensor on the targets' device is read by the kernel, so there is no host sync. Launch tables
    are cached per parameter list, so repeated calls cost one key build plus the launches.
    """
    if len(targets) != len(sources):
        raise ValueError(f"ema_ got {len(targets)} targets but {len(sources)} sources")
    if not targets:
        return
    if not use_triton(backend, targets[0], sources[0]):
        ema_reference_(targets, sources, momentum)
        return
    key = _plan_key(targets, sources)
    launches = _PLANS.get(key)
    if launches is None:
        launches = _build_plan(targets, sources, backend)
        _PLANS[key] = launches
        if len(_PLANS) > _MAX_PLANS:
            _PLANS.popitem(last=False)
    device = targets[0].device
    m_ptr = None
    m_value = 0.0
    if isinstance(momentum, torch.Tensor):
        if momentum.numel() != 1:
            raise ValueError(
                f"momentum tensor must have one element, got shape {tuple(momentum.shape)}"
            )
        if momentum.device == device:
            m_ptr = momentum.reshape(()).to(torch.float32)
        else:
            m_value = float(momentum)
    else:
        m_value = float(momentum)
    on_gpu = device.type == "cuda"
    for launch in launches:
        _ema_kernel[(launch.num_chunks,)](
            launch.tgt_addr,
            launch.src_addr,
            launch.numel,
            launch.chunk_tensor,
            launch.chunk_start,
            m_value,
            m_ptr if m_ptr is not None else launch.numel,  # unread without HAS_MOMENTUM_PTR
            SRC_CODE=launch.code,
            HAS_MOMENTUM_PTR=m_ptr is not None,
            ALIGNED=launch.aligned,
            CHUNK_SIZE=CHUNK,
            BLOCK=min(BLOCK, CHUNK),
            num_warps=EMA_WARPS if on_gpu else 1,
        )


class MomentumSchedule:
    """Linear momentum ramp ``start`` -> ``end`` over ``total_steps`` (I-JEPA: 0.996 -> 1.0)."""

    def __init__(self, total_steps: int, start: float = 0.996, end: float = 1.0) -> None:
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        if not (0.0 <= start <= 1.0 and 0.0 <= end <= 1.0):
            raise ValueError(f"momentum must lie in [0, 1], got start={start}, end={end}")
        self.total_steps = int(total_steps)
        self.start = float(start)
        self.end = float(end)

    def momentum_at(self, step: int) -> float:
        """Momentum for update number ``step`` (0-based); held at ``end`` past the last step."""
        frac = min(max(step, 0), self.total_steps) / self.total_steps
        return self.start + (self.end - self.start) * frac


class EMATarget:
    """The fp32 EMA target parameters plus their momentum schedule and step count.

    ``target`` is the target encoder (an ``nn.Module`` whose parameters are fp32, kept outside
    DeepSpeed) or a list of fp32 tensors; the tensors are updated in place, so a module given here
    always holds the current EMA weights. Call :meth:`update` once per optimizer step with the
    online encoder's parameters, in the same order.
    """

    def __init__(
        self,
        target: torch.nn.Module | Iterable[torch.Tensor],
        total_steps: int,
        start: float = 0.996,
        end: float = 1.0,
        backend: Backend = "auto",
    ) -> None:
        params = target.parameters() if isinstance(target, torch.nn.Module) else target
        self.params: list[torch.Tensor] = [p.detach() for p in params]
        for i, p in enumerate(self.params):
            if p.dtype != torch.float32:
                raise ValueError(f"EMA target tensor {i} must be float32, got {p.dtype}")
        self.schedule = MomentumSchedule(total_steps, start, end)
        self.step = 0
        self.backend: Backend = backend

    @classmethod
    def copy_of(
        cls,
        source: torch.nn.Module,
        total_steps: int,
        start: float = 0.996,
        end: float = 1.0,
        backend: Backend = "auto",
    ) -> tuple[torch.nn.Module, EMATarget]:
        """A frozen fp32 deep copy of ``source`` and the EMATarget that updates it."""
        import copy

        module = copy.deepcopy(source).float()
        for p in module.parameters():
            p.requires_grad_(False)
        return module, cls(module, total_steps, start, end, backend)

    def momentum_at(self, step: int) -> float:
        """Scheduled momentum for update number ``step``."""
        return self.schedule.momentum_at(step)

    @torch.no_grad()
    def update(self, source: torch.nn.Module | Iterable[torch.Tensor]) -> float:
        """One EMA step from ``source``; advances the schedule and returns the momentum used."""
        params = source.parameters() if isinstance(source, torch.nn.Module) else source
        m = self.momentum_at(self.step)
        ema_(self.params, list(params), m, backend=self.backend)
        self.step += 1
        return m

    def state_dict(self) -> dict:
        """Step, schedule and fp32 targets (loads with ``torch.load(weights_only=True)``)."""
        return {
            "step": self.step,
            "total_steps": self.schedule.total_steps,
            "start": self.schedule.start,
            "end": self.schedule.end,
            "params": [p.detach().clone() for p in self.params],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`; every tensor must match in count and shape."""
        missing = {"step", "total_steps", "start", "end", "params"} - set(state)
        if missing:
            raise KeyError(f"EMATarget state is missing {sorted(missing)}")
        saved = state["params"]
        if len(saved) != len(self.params):
            raise ValueError(
                f"EMATarget state has {len(saved)} tensors, this target has {len(self.params)}"
            )
        for i, (p, s) in enumerate(zip(self.params, saved, strict=True)):
            if p.shape != s.shape:
                raise ValueError(
                    f"EMATarget tensor {i}: saved {tuple(s.shape)} vs {tuple(p.shape)}"
                )
        with torch.no_grad():
            for p, s in zip(self.params, saved, strict=True):
                p.copy_(s)
        self.schedule = MomentumSchedule(
            int(state["total_steps"]), float(state["start"]), float(state["end"])
        )
        self.step = int(state["step"])
