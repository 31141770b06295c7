"""The I-JEPA way of running a JEPA step, for benchmarks/jepa_step.py to time ours against.

The same `engine.model` modules run as the I-JEPA reference code runs them: masks cut to the
batch minimum (`truncate`, its collator) or padded to the batch maximum with validity masks
(`ref_batch(pad=True)`), dense [B, N, D] tensors, `apply_masks` (an int64 [B, K, D] index per
mask + `torch.gather`), `F.scaled_dot_product_attention` on the dense batch (with a key-padding
mask when padded), torch's own LayerNorm. Imports torch, numpy and `kernels.gather` only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from kernels.bench.baselines import apply_masks_baseline

Mask = tuple[np.ndarray, list[np.ndarray]]  # (context idx, [target idx per block]) of one sample


def truncate(masks: list[Mask]) -> list[Mask]:
    """I-JEPA's collator: every context to the batch-minimum context length, every target block
    to the minimum block length over the batch (keeping the first, i.e. lowest, indices)."""
    kc = min(len(c) for c, _ in masks)
    kt = min(len(t) for _, ts in masks for t in ts)
    return [(c[:kc], [t[:kt] for t in ts]) for c, ts in masks]


@dataclass
class RefBatch:
    """Dense I-JEPA-style batch: index tensors [B, K] and, when padded, validity masks."""

    tokens: torch.Tensor
    coords: torch.Tensor
    ctx: torch.Tensor  # [B, Kc] int64
    tgts: list[torch.Tensor]  # num_targets x [B, Kt] int64
    ctx_keep: torch.Tensor | None  # [B, 1, 1, Kc] bool attention mask (padded mode)
    pred_keep: torch.Tensor | None  # [n*B, 1, 1, Kc + Kt] bool attention mask (padded mode)
    tgt_valid: torch.Tensor | None  # [n*B, Kt] bool (padded mode)


def ref_batch(tokens: torch.Tensor, coords: torch.Tensor, masks: list[Mask], pad: bool) -> RefBatch:
    """Truncated (I-JEPA) or padded dense masks; padded slots index token 0 and are masked."""
    if not pad:
        masks = truncate(masks)
    kc = max(len(c) for c, _ in masks)
    kt = max(len(t) for _, ts in masks for t in ts)
    n = len(masks[0][1])

    def dense(rows: list[np.ndarray], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.zeros((len(rows), k), dtype=np.int64)
        valid = np.zeros((len(rows), k), dtype=bool)
        for i, r in enumerate(rows):
            idx[i, : len(r)] = r
            valid[i, : len(r)] = True
        return torch.from_numpy(idx), torch.from_numpy(valid)

    ctx, ctx_valid = dense([c for c, _ in masks], kc)
    tgts, tgt_valid = zip(*(dense([ts[j] for _, ts in masks], kt) for j in range(n)), strict=True)
    tgt_valid = torch.cat(tgt_valid)  # block-major, as apply_masks concatenates
    if not pad:
        return RefBatch(tokens, coords, ctx, list(tgts), None, None, None)
    pred_keep = torch.cat([ctx_valid.repeat(n, 1), tgt_valid], dim=1)
    return RefBatch(
        tokens,
        coords,
        ctx,
        list(tgts),
        ctx_valid[:, None, None, :],
        pred_keep[:, None, None, :],
        tgt_valid,
    )


# ----------------------------------------------------------------------------- the I-JEPA way


def apply_masks(x: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
    """I-JEPA's `apply_masks`: one int64 [B, K, D] gather per mask, concatenated on the batch."""
    return torch.cat([apply_masks_baseline(x, m) for m in masks], dim=0)


def ref_norm(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The module's LayerNorm weights through torch's `F.layer_norm` (nn.LayerNorm's forward),
    so the references run torch's kernels, not the engine's fused one."""
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def ref_attention(attn: torch.nn.Module, x: torch.Tensor, keep: torch.Tensor | None):
    b, n, d = x.shape
    qkv = attn.qkv(x).view(b, n, 3, attn.heads, d // attn.heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(*qkv.unbind(0), attn_mask=keep)
    return attn.proj(out.transpose(1, 2).reshape(b, n, d))


def ref_block(blk: torch.nn.Module, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """`engine.model.Block`'s weights run on a dense [B, N, D] batch (timm / I-JEPA Block)."""
    x = x + ref_attention(blk.attn, ref_norm(blk.norm1, x), keep)
    return x + blk.fc2(F.gelu(blk.fc1(ref_norm(blk.norm2, x))))


def ref_forward(model: torch.nn.Module, rb: RefBatch) -> torch.Tensor:
    """Predictions [n*B, Kt, D] (block-major), as I-JEPA's encoder + predictor compute them."""
    enc, pred = model.encoder, model.predictor
    x = apply_masks(enc.embed(rb.tokens, rb.coords), [rb.ctx])
    for blk in enc.blocks:
        x = ref_block(blk, x, rb.ctx_keep)
    z = ref_norm(enc.norm, x)
    positions = enc.embedder.position(rb.coords).to(z.dtype)
    z = pred.embed(z) + pred.pos_proj(apply_masks(positions, [rb.ctx]))
    kc = z.shape[1]
    m = pred.mask_token + pred.pos_proj(apply_masks(positions, rb.tgts))
    x = torch.cat([z.repeat(len(rb.tgts), 1, 1), m], dim=1)
    for blk in pred.blocks:
        x = ref_block(blk, x, rb.pred_keep)
    return pred.out(ref_norm(pred.norm, x)[:, kc:])


@torch.no_grad()
def ref_target(target: torch.nn.Module, rb: RefBatch) -> torch.Tensor:
    h = target.embed(rb.tokens, rb.coords)
    for blk in target.blocks:
        h = ref_block(blk, h, None)
    h = ref_norm(target.norm, h)
    h = F.layer_norm(h.float(), (h.shape[-1],))
    return apply_masks(h, rb.tgts)


def ref_loss(pred: torch.Tensor, tgt: torch.Tensor, rb: RefBatch) -> torch.Tensor:
    if rb.tgt_valid is None:
        return F.smooth_l1_loss(pred.float(), tgt)
    err = F.smooth_l1_loss(pred.float(), tgt, reduction="none") * rb.tgt_valid[..., None]
    return err.sum() / (rb.tgt_valid.sum() * tgt.shape[-1])
