"""JEPA and MAE objectives and the representation-collapse monitor.

`jepa_loss(pred, target, kind, beta)`: mean over every target token and channel of smooth L1
(I-JEPA), L1 (V-JEPA) or squared error, against normalised target features (see
`engine.model.target_features`) or, for MAE, against `mae_targets`: the target tokens' own
values, each token standardised over its values (MAE's normalised-pixel targets).
`collapse_stats`: per-dimension standard deviation of target and predicted features across
tokens; a collapsed encoder drives it towards 0.

Imports torch, `engine.batch`, `engine.model` (position centring) and `engine.ops` (the token
gather).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.batch import PackedBatch
from engine.model import center_by_position
from engine.ops import gather_tokens


def mae_targets(batch: PackedBatch, eps: float = 1e-6) -> torch.Tensor:
    """The target tokens [Tt, patch_dim] in tgt order, each standardised over its own values
    (MAE's `norm_pix_loss`, which the MAE paper found to give better features)."""
    tokens = batch.tokens.float()
    t = gather_tokens(tokens, batch.tgt_idx, batch.cu_tgt, unique_indices=False)
    mean = t.mean(-1, keepdim=True)
    var = t.var(-1, keepdim=True, unbiased=False)
    return (t - mean) / (var + eps).sqrt()


def jepa_loss(
    pred: torch.Tensor, target: torch.Tensor, kind: str, beta: float = 1.0
) -> torch.Tensor:
    """Regression loss between predictions [T, D] and targets [T, D], averaged over all entries.

    Every target token weighs the same whichever block or sample it belongs to, so nothing is
    truncated or re-weighted by block length.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    pred = pred.float()
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, beta=beta)
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "l2":
        return F.mse_loss(pred, target)
    raise ValueError(f"loss.kind must be smooth_l1, l1 or l2, got {kind!r}")


@torch.no_grad()
def collapse_stats(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Mean and minimum over channels of the per-channel std across tokens, for both."""
    out: dict[str, float] = {}
    for name, x in (("target", target), ("pred", pred)):
        std = x.float().std(dim=0, unbiased=False) if len(x) > 1 else x.new_zeros(x.shape[-1])
        out[f"{name}_std"] = float(std.mean())
        out[f"{name}_std_min"] = float(std.min())
    return out


def spread_penalty(ctx: torch.Tensor, batch: PackedBatch, eps: float = 1e-4) -> torch.Tensor:
    """VICReg's variance and covariance terms on the context features ctx [Tc, D] (the packed
    context tokens, `batch.ctx_idx` order), each first centred by position over the batch (the
    mean of the batch's context tokens at the same position taken out, as the targets are), so
    a feature that only says where a token sits does not count as spread. Variance: the mean
    over channels of relu(1 - std); covariance: the off-diagonal squared covariances' sum / D.
    Padding rows past cu_ctx[-1] are left out (no host sync)."""
    t, d = ctx.shape
    n = batch.tokens.shape[1]
    rows = torch.arange(t, device=ctx.device)
    cu = batch.cu_ctx.to(ctx.device)
    valid = rows < cu[-1]
    sample = (torch.searchsorted(cu, rows, right=True) - 1).clamp(0, len(cu) - 2)
    group = batch.pos_group.to(ctx.device)[sample * n + batch.ctx_idx.to(ctx.device).long()]
    # padding rows join the batch's padding group (the last), so no real position's mean sees them
    group = torch.where(valid, group, batch.n_pos_groups - 1)
    x = center_by_position(ctx.float()[None], group, batch.n_pos_groups)[0]
    x = x * valid[:, None]
    m = valid.sum().clamp_min(2)
    cov = x.T @ x / (m - 1)
    std = torch.sqrt(torch.diagonal(cov) + eps)
    off = cov - torch.diag(torch.diagonal(cov))
    return F.relu(1 - std).mean() + off.pow(2).sum() / d
