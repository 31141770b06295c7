"""The kernels the engine runs on, in one place: varlen attention, token gather, fused EMA,
fused LayerNorm.

On CUDA these dispatch to the Triton kernels of `kernels/`; on CPU to their torch references.
Imports only `kernels` (torch + triton).
"""

from __future__ import annotations

from kernels import EMATarget, ema_, gather_tokens, layer_norm, varlen_attention

__all__ = ["EMATarget", "ema_", "gather_tokens", "layer_norm", "varlen_attention"]
