"""Training diagnostics: is the JEPA learning content, or meeting its targets another way?

A falling loss proves nothing. Two ways to meet the targets without learning content:
- the positional shortcut: the target encoder's features become (mostly) a function of where a
  token sits, which the predictor reads off the mask tokens' positions;
- the record shortcut: they become (mostly) a function of which record the token is in (its
  subject, session or file), which any one context token gives away;
- collapse: the targets lose their spread or their rank, or become mostly one constant vector
  (predicting the batch mean then meets most of the loss: how I-JEPA's layer-normed targets
  were met on the fMRI positive control, docs/results.md).

`target_diagnostics` measures both on a batch: the share of the target encoder's feature
variance that position explains (over the batch's tokens grouped by position, bias-corrected),
the share of what position leaves that the record explains (the same measure, grouped by record),
the per-dimension spread of the regression targets, their effective rank and the share of their
energy in their mean vector. `attention_entropy`
gives each encoder layer's mean attention entropy over log(sequence length): 1.0 is uniform
attention, the state at initialisation, which a trained encoder leaves. `check` turns the numbers
into warnings that name the number and its threshold.

Imports torch and `engine.model`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.batch import TokenBatch
from engine.model import Encoder, center_by_position

#: position explains at least this share of the target features' variance: the shortcut
SHORTCUT_SHARE = 0.9
#: the record explains at least this share of the position-centred target features' variance
RECORD_SHARE = 0.5
#: the targets' effective rank below this share of their width (and below 2): a collapse
COLLAPSE_RANK = 0.05
#: the targets' mean per-dimension std below this (layer-normed targets start near 1)
COLLAPSE_STD = 0.1
#: the batch-mean vector carries at least this share of the targets' mean square
CONSTANT_SHARE = 0.9


def group_share(h: torch.Tensor, group: torch.Tensor, n_groups: int, valid: torch.Tensor) -> float:
    """Share of the variance of features h [T, D] explained by the token grouping `group` [T]
    (token positions, or records), omega squared: between-group sum of squares minus what the
    within-group noise puts there by chance, over the total. Tokens whose group occurs once
    carry no within-group information and are left out; 0.0 when no group repeats."""
    h, group = h[valid].double(), group[valid]
    counts = torch.bincount(group, minlength=n_groups)
    keep = counts[group] > 1
    if keep.sum() < 2:
        return 0.0
    h, group = h[keep], group[keep]
    counts = torch.bincount(group, minlength=n_groups)
    present = counts > 0
    n, g = len(h), int(present.sum())
    sums = h.new_zeros(n_groups, h.shape[1]).index_add_(0, group, h)
    means = sums / counts.clamp_min(1)[:, None].to(h.dtype)
    total = ((h - h.mean(0)) ** 2).sum()
    within = ((h - means[group]) ** 2).sum()
    if total <= 0 or n <= g:
        return 0.0
    ms_within = within / (n - g)
    share = (total - within - (g - 1) * ms_within) / (total + ms_within)
    return float(share.clamp(0.0, 1.0))


def effective_rank(x: torch.Tensor) -> float:
    """exp(entropy) of the normalised eigenvalues of the covariance of x [T, D] (Roy & Vetterli
    2007): D for isotropic features, 1 for features on a line."""
    x = x.double()
    if len(x) < 2:
        return 0.0
    cov = torch.cov(x.T)
    eig = torch.linalg.eigvalsh(cov).clamp_min(0)
    if eig.sum() <= 0:
        return 0.0
    p = eig / eig.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def target_diagnostics(
    h: torch.Tensor, targets: torch.Tensor, batch: TokenBatch
) -> dict[str, float]:
    """h [B, N, D]: the target encoder's features of every token (before normalising);
    targets [Tt, D]: the regression targets of the step. Keys: pos_share, rec_share (the
    record's share of the position-centred features' variance), target_rank, target_const
    (|mean target|^2 over the mean |target|^2: 1 when every target is the same vector, about
    1/Tt for centred ones)."""
    b, n, d = h.shape
    lengths = batch.n_tokens.to(h.device)
    valid = (torch.arange(n, device=h.device)[None, :] < lengths[:, None]).reshape(-1)
    # Measured on I-JEPA's layer-normed features: what the predictor would face without centring.
    flat = F.layer_norm(h.float(), (d,)).reshape(b * n, d)
    group = batch.pos_group.to(h.device)
    n_groups = int(batch.n_pos_groups)
    records = torch.arange(b, device=h.device).repeat_interleave(n)
    centred = center_by_position(flat.view(b, n, d), group, n_groups).reshape(b * n, d)
    return {
        "pos_share": group_share(flat, group, n_groups, valid),
        "rec_share": group_share(centred, records, b, valid),
        "target_rank": effective_rank(targets.float()),
        "target_const": constant_share(targets.float()),
    }


def constant_share(x: torch.Tensor) -> float:
    """Share of the mean square of x [T, D] carried by its mean vector: |mean|^2 / mean |x|^2."""
    if len(x) == 0:
        return 0.0
    x = x.double()
    energy = (x * x).sum(1).mean()
    if energy <= 0:
        return 0.0
    return float((x.mean(0) ** 2).sum() / energy)


def _whole(module: nn.Module) -> AbstractContextManager[Any]:
    return nullcontext()


@torch.no_grad()
def attention_entropy(
    encoder: Encoder,
    tokens: torch.Tensor,
    coords: torch.Tensor,
    gathered: Callable[[nn.Module], AbstractContextManager[Any]] = _whole,
    max_queries: int = 256,
    modality: str = "",
) -> list[float]:
    """Per layer, the mean over heads and (up to `max_queries` evenly spaced) queries of the
    attention entropy over log(N), for one sample's N tokens [N, P] with coords [N, c].
    `gathered(block)`: a context in which a block's weights are whole (ZeRO-3 partitions them;
    `engine.zero3.gathered`), entered only around the weights read here. Under ZeRO-3 every
    gather is a collective, so every rank runs every layer whatever its sample's length (a
    sample of one token scores 0.0). `modality`: which embedder reads the tokens (a shared
    trunk's; `Encoder.embedder_of`)."""
    if len(tokens) == 0:
        return [0.0 for _ in encoder.blocks]
    x = encoder.embed(tokens[None], coords[None], modality)[0].float()
    n = len(x)
    cu = torch.tensor([0, n], dtype=torch.int32, device=x.device)
    rows = torch.linspace(0, n - 1, min(n, max_queries), device=x.device).round().long()
    out = []
    for blk in encoder.blocks:
        with gathered(blk.norm1), gathered(blk.attn.qkv):
            y = F.layer_norm(x, (x.shape[-1],), blk.norm1.weight.float(), blk.norm1.bias.float())
            qkv = F.linear(y, blk.attn.qkv.weight.float(), blk.attn.qkv.bias.float())
        if n < 2:
            out.append(0.0)
        else:
            heads = blk.attn.heads
            q, k, _ = qkv.view(n, 3, heads, -1).unbind(1)
            scores = torch.einsum("qhd,khd->hqk", q[rows], k) / math.sqrt(q.shape[-1])
            p = scores.softmax(-1)
            ent = -(p * p.clamp_min(1e-30).log()).sum(-1)
            out.append(float(ent.mean() / math.log(n)))
        x = blk(x, cu, n).float()
    return out


def check(diag: dict[str, float], width: int, target_norm: str) -> list[str]:
    """Warnings for a diagnostics record, each naming the number that tripped it."""
    out = []
    share = diag.get("pos_share")
    if share is not None and share >= SHORTCUT_SHARE:
        hint = (
            " (loss.target_norm=position_centered takes position out of the targets)"
            if target_norm == "layer_norm"
            else " (the centred targets are the small remainder; is there content to learn?)"
        )
        out.append(
            f"positional shortcut: position explains {share:.0%} of the target features' "
            f"variance (>= {SHORTCUT_SHARE:.0%}){hint}"
        )
    rec = diag.get("rec_share")
    if rec is not None and rec >= RECORD_SHARE and target_norm != "double_centered":
        out.append(
            f"record shortcut: the record explains {rec:.0%} of the position-centred target "
            f"features' variance (>= {RECORD_SHARE:.0%}), which any context token gives away "
            "(loss.target_norm=double_centered takes it out of the targets)"
        )
    rank = diag.get("target_rank")
    if rank is not None and rank < max(2.0, COLLAPSE_RANK * width):
        out.append(
            f"collapse: the targets' effective rank is {rank:.2f} of {width} dimensions "
            f"(< {max(2.0, COLLAPSE_RANK * width):.2f})"
        )
    std = diag.get("target_std")
    if std is not None and std < COLLAPSE_STD:
        out.append(f"collapse: the targets' mean per-dimension std is {std:.3f} (< {COLLAPSE_STD})")
    const = diag.get("target_const")
    if const is not None and const >= CONSTANT_SHARE:
        out.append(
            f"constant targets: their batch-mean vector carries {const:.0%} of their mean square "
            f"(>= {CONSTANT_SHARE:.0%}), so predicting a constant meets most of the loss"
            + (
                " (loss.target_norm=position_centered removes the mean)"
                if target_norm == "layer_norm"
                else ""
            )
        )
    return out
