"""Triton kernels for JEPA's hot paths, each with a torch reference and an autograd wrapper.

- :func:`varlen_attention` (``attention.py``): attention within each packed, variable-length sample.
- :func:`ema_` and :class:`EMATarget` (``ema.py``): fused multi-tensor EMA of the target encoder.
- :func:`gather_tokens` (``gather.py``): packed per-sample token gather with positional add.
- :func:`layer_norm` (``layernorm.py``): fused LayerNorm forward and backward.

Dispatch: Triton on CUDA tensors; the torch reference on CPU; Triton on CPU when
``TRITON_INTERPRET=1`` was set before import. ``backend="torch"`` forces the reference and
``backend="triton"`` forces the kernels (on CPU that needs the interpreter). ``python -m
kernels.bench`` times the kernels against the baselines. This package imports only torch, triton
and the standard library, so it runs on a bare GPU box.
"""

from kernels.attention import attention_padded, varlen_attention, varlen_attention_reference
from kernels.ema import EMATarget, MomentumSchedule, ema_, ema_reference_
from kernels.gather import gather_tokens, gather_tokens_reference
from kernels.layernorm import layer_norm, layer_norm_reference

__all__ = [
    "EMATarget",
    "MomentumSchedule",
    "attention_padded",
    "ema_",
    "ema_reference_",
    "gather_tokens",
    "gather_tokens_reference",
    "layer_norm",
    "layer_norm_reference",
    "varlen_attention",
    "varlen_attention_reference",
]
