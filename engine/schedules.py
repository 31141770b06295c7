"""Training schedules as pure functions of the optimizer step, so resuming is just the step.

I-JEPA: learning rate linear warmup then cosine decay; weight decay cosine 0.04 -> 0.4; EMA
momentum linear 0.996 -> 1.0 (the last lives in `kernels.ema.MomentumSchedule`).
Imports the standard library only.
"""

from __future__ import annotations

import math


def warmup_cosine(step: int, total: int, peak: float, floor: float, warmup: int) -> float:
    """Value for update `step` (0-based): linear 0 -> peak over `warmup`, cosine peak -> floor."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_ramp(step: int, total: int, start: float, end: float) -> float:
    """Cosine interpolation start -> end over `total` updates (held at `end` afterwards)."""
    progress = min(1.0, step / max(1, total))
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
