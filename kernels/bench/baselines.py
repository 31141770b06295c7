"""What JEPA users run today for the token gather, timed beside `kernels.gather_tokens`
(bench only: the runtime kernels never call these)."""

from __future__ import annotations

import torch


def apply_masks_baseline(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """I-JEPA-style gather: ``keep [B, K]`` (same K for every sample); returns ``[B, K, D]``.

    Materialises the index as int64 ``[B, K, D]`` before ``torch.gather``, as the reference code
    does, so the bench measures what that approach costs.
    """
    index = keep.long().unsqueeze(-1).repeat(1, 1, x.shape[-1])
    return torch.gather(x, dim=1, index=index)


def index_select_baseline(
    x: torch.Tensor, idx: torch.Tensor, cu_seqlens: torch.Tensor
) -> torch.Tensor:
    """Packed gather via one ``index_select`` on the flattened ``[B * N, D]`` view."""
    batch, n_tokens, dim = x.shape
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    sample = torch.repeat_interleave(
        torch.arange(batch, device=x.device), lengths, output_size=idx.numel()
    )
    return x.reshape(batch * n_tokens, dim).index_select(0, sample * n_tokens + idx.long())
