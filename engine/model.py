"""JEPA model: pre-norm transformer blocks on packed variable-length tokens.

- `Block`: pre-norm attention (`varlen_attention`, tokens attend within their own sequence) + MLP;
  its norms are `LayerNorm` (`nn.LayerNorm` on the fused `kernels.layer_norm`).
- `Encoder`: the modality's embedder, blocks, final norm. Used as the context encoder (trained)
  and, as an fp32 deep copy updated by EMA, as the target encoder.
- `Predictor`: narrow; context features plus one mask token per target token (carrying that
  token's position, gathered with `gather_tokens`), one sequence per target block.
- `JEPA`: context encoder + predictor, the part DeepSpeed trains.
- `target_features`: normalised target-encoder features at the target tokens (the encoder's
  forward replayed from CUDA graphs by `engine.graphs`); `normalize_targets` is the one place the
  normalisation lives (I-JEPA's layer norm, or position-centred first).

Imports torch, `engine.ops` (kernels) and `engine.config`; never DeepSpeed, so exported encoders
load with plain torch.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.batch import PackedBatch, TokenBatch, TokenPacking, token_packing
from engine.config import ModelConfig
from engine.ops import gather_tokens, layer_norm, varlen_attention


class LayerNorm(nn.LayerNorm):
    """`nn.LayerNorm` (same parameters and state-dict keys) running `kernels.layer_norm`: the
    fused Triton kernel on CUDA, `F.layer_norm` on CPU.

    `autocast_output`: under autocast, emit the autocast dtype (bf16) straight from the kernel
    instead of fp32. For a norm that feeds a linear layer, which autocast casts to bf16 anyway,
    the numbers are the same and the fp32 write, the cast kernel and the fp32 gradient are saved.
    """

    def __init__(self, dim: int, autocast_output: bool = False) -> None:
        super().__init__(dim)
        self.autocast_output = autocast_output
        self.fused = True  # False: torch's own kernels (see set_fused_layernorm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fused:
            return super().forward(x)
        out_dtype = None
        if self.autocast_output and torch.is_autocast_enabled(x.device.type):
            out_dtype = torch.get_autocast_dtype(x.device.type)
        return layer_norm(x, self.weight, self.bias, self.eps, out_dtype)


def set_fused_layernorm(module: nn.Module, fused: bool) -> None:
    """Run every `LayerNorm` under `module` on the fused kernel (True) or on torch's (False).

    The fused kernel cuts device time (about 2-3x per call on an H200); each call is a Triton
    launch from Python, though, which costs more host time than torch's C++ op, so on a machine
    whose step is host-bound torch's can be the better choice (`train.fused_layernorm`).
    """
    for m in module.modules():
        if isinstance(m, LayerNorm):
            m.fused = fused


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cu: torch.Tensor, max_len: int) -> torch.Tensor:
        t, d = x.shape
        q, k, v = self.qkv(x).view(t, 3, self.heads, d // self.heads).unbind(1)
        out = varlen_attention(q, k, v, cu, cu, max_len, max_len)
        return self.proj(out.reshape(t, d))


class Block(nn.Module):
    """Pre-norm transformer block over packed tokens [T, D] delimited by `cu` [S+1]."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = LayerNorm(dim, autocast_output=True)
        self.attn = Attention(dim, heads)
        self.norm2 = LayerNorm(dim, autocast_output=True)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, cu: torch.Tensor, max_len: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cu, max_len)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


def _init_weights(module: nn.Module, blocks: nn.ModuleList, scheme: str = "fan_in") -> None:
    # Truncated normal weights (std 1/sqrt(fan_in), or I-JEPA's 0.02 with scheme "ijepa"), zero
    # biases, and the residual projections of layer i scaled by 1/sqrt(2 i) so deep stacks
    # start near identity. At std 0.02 a small model's blocks start almost linear and a 16-value
    # patch reaches the stream at 1/30 of its position code: the targets are then positions plus
    # linear projections, and a JEPA finds nothing to predict but the positions (docs/results.md).
    if scheme not in ("fan_in", "ijepa"):
        raise ValueError(f"model.init must be fan_in or ijepa, got {scheme!r}")
    for m in module.modules():
        if isinstance(m, nn.Linear):
            std = 0.02 if scheme == "ijepa" else 1.0 / math.sqrt(m.in_features)
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for i, blk in enumerate(blocks, start=1):
        blk.attn.proj.weight.data.div_(math.sqrt(2.0 * i))
        blk.fc2.weight.data.div_(math.sqrt(2.0 * i))


def _writable(module: nn.Module) -> AbstractContextManager[Any]:
    """A context in which `module`'s parameters can be (re)initialised. A model built under
    DeepSpeed's `zero.Init` (ZeRO-3) has its submodules' parameters partitioned as soon as each
    is built, so a parent re-drawing its children's weights must gather them first (every rank
    draws the same values from the same seed; rank 0's are kept). Otherwise: nothing to do."""
    params = [p for p in module.parameters() if hasattr(p, "ds_id")]
    if not params:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0)


def _param_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


class Encoder(nn.Module):
    """Embedder (patch embedding + positions), transformer blocks and a final LayerNorm.

    `embedder`: the modality's; or, for a run of several modalities sharing the trunk, a
    {modality name: embedder} mapping (an `nn.ModuleDict`, state-dict keys
    `embedder.<name>.*`), one picked per call by the `modality` argument (`embedder_of`).
    """

    def __init__(self, embedder: nn.Module | dict[str, nn.Module], cfg: ModelConfig) -> None:
        super().__init__()
        self.embedder = nn.ModuleDict(embedder) if isinstance(embedder, dict) else embedder
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)
        )
        self.norm = LayerNorm(cfg.embed_dim)
        with _writable(self):
            _init_weights(self, self.blocks, cfg.init)
            # The generic init above also re-draws the embedder's layers; an embedder whose
            # start matters (S-JEPA's channel embedding starts as the electrodes' xyz encoding)
            # restores it.
            each = embedder.values() if isinstance(embedder, dict) else [embedder]
            for emb in each:
                if hasattr(emb, "init_weights"):
                    emb.init_weights()

    @property
    def modalities(self) -> list[str]:
        """The modality names of a shared trunk's embedders; [] for one modality's encoder."""
        return list(self.embedder.keys()) if isinstance(self.embedder, nn.ModuleDict) else []

    def embedder_of(self, modality: str = "") -> nn.Module:
        """The embedder of `modality` ("" for one modality's encoder)."""
        if not isinstance(self.embedder, nn.ModuleDict):
            return self.embedder
        if modality not in self.embedder:
            known = ", ".join(self.embedder.keys())
            raise KeyError(f"this encoder embeds {known}, not {modality or 'an unnamed one'!r}")
        return self.embedder[modality]

    def embed(self, tokens: torch.Tensor, coords: torch.Tensor, modality: str = "") -> torch.Tensor:
        """[B, N, P] tokens -> [B, N, D] embeddings with positions."""
        return self.embedder_of(modality)(tokens.to(_param_dtype(self)), coords)

    def encode(self, x: torch.Tensor, cu: torch.Tensor, max_len: int) -> torch.Tensor:
        """Packed embeddings [T, D] -> packed features [T, D]."""
        for blk in self.blocks:
            x = blk(x, cu, max_len)
        return self.norm(x)

    def forward_all(
        self,
        tokens: torch.Tensor,
        coords: torch.Tensor,
        n_tokens: torch.Tensor | None,
        packing: TokenPacking | None = None,
        modality: str = "",
    ) -> torch.Tensor:
        """Encode every token of every sample: [B, N, D] features (zeros at padding).
        `modality`: which embedder reads them (`embedder_of`).

        `packing` is built on the host with the batch (`engine.batch.token_packing`); with it this
        runs without a device-to-host sync (which would stall the GPU's launch queue). Without
        it, it is derived from `n_tokens` here (which is unread when `packing` is given).
        """
        return self.encode_padded(self.embed(tokens, coords, modality), n_tokens, packing)

    def encode_padded(
        self, x: torch.Tensor, n_tokens: torch.Tensor | None, packing: TokenPacking | None = None
    ) -> torch.Tensor:
        """`forward_all` from embeddings [B, N, D] (what fine-tuning's regularised masking
        alters before the transformer)."""
        b, n, d = x.shape
        if packing is None:
            packing = token_packing(n_tokens.cpu().tolist(), n)
        flat = x.reshape(b * n, d)
        valid = packing.valid_idx
        if valid is not None:
            valid = valid.to(x.device)
            flat = flat.index_select(0, valid)
        h = self.encode(flat, packing.cu_all.to(x.device), packing.max_tokens)
        if valid is None:  # every sample fills the padded length: nothing to scatter back
            return h.view(b, n, d)
        return h.new_zeros(b * n, d).index_copy_(0, valid, h).view(b, n, d)


class Predictor(nn.Module):
    """Narrow transformer predicting target features from context features.

    Each target block is one sequence: its sample's context (projected to the predictor width, plus
    positions) followed by one mask token per target token (a learned vector plus the token's
    position). Positions arrive at encoder width from the embedder and are projected here, so any
    modality's positional scheme feeds the predictor. `cfg.pred_context` "every_layer" resets the
    context rows to the projected encoder context before every layer (3D-JEPA's context-aware
    decoder): the mask tokens then read the encoder's context at each depth, not a copy the
    predictor has rewritten.
    """

    def __init__(self, cfg: ModelConfig, out_dim: int | None = None) -> None:
        super().__init__()
        self.embed = nn.Linear(cfg.embed_dim, cfg.pred_dim)
        self.pos_proj = nn.Linear(cfg.embed_dim, cfg.pred_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(cfg.pred_dim))
        self.context_every_layer = cfg.pred_context == "every_layer"
        self.blocks = nn.ModuleList(
            Block(cfg.pred_dim, cfg.pred_heads, cfg.mlp_ratio) for _ in range(cfg.pred_depth)
        )
        self.norm = LayerNorm(cfg.pred_dim, autocast_output=True)  # feeds self.out
        # JEPA predicts target features (encoder width); MAE predicts the target patches.
        self.out = nn.Linear(cfg.pred_dim, out_dim or cfg.embed_dim)
        with _writable(self):
            _init_weights(self, self.blocks, cfg.init)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(
        self, context: torch.Tensor, positions: torch.Tensor, batch: PackedBatch
    ) -> torch.Tensor:
        """context [Tc, D] features, positions [B, N, D] -> predictions [Tt, D] in tgt order."""
        ctx_pos = gather_tokens(positions, batch.ctx_idx, batch.cu_ctx, unique_indices=True)
        # Target blocks may overlap, so a sample's target indices can repeat.
        tgt_pos = gather_tokens(positions, batch.tgt_idx, batch.cu_tgt, unique_indices=False)
        z = self.embed(context) + self.pos_proj(ctx_pos)
        m = self.mask_token + self.pos_proj(tgt_pos)
        x = torch.cat([z, m]).index_select(0, batch.pred_src)
        if self.context_every_layer:
            is_ctx = (batch.pred_src < len(z)).unsqueeze(1)
            fed = x
        for i, blk in enumerate(self.blocks):
            if self.context_every_layer and i > 0:
                x = torch.where(is_ctx, fed, x)
            x = blk(x, batch.cu_pred, batch.max_pred)
        x = self.norm(x.index_select(0, batch.pred_out))
        return self.out(x)


class JEPA(nn.Module):
    """The trained part: context encoder + predictor. forward(batch) -> predictions [Tt, D].

    `cuda_graphs`: None, or an `engine.graphs.GraphedJEPA` of this model that forward hands
    the batch to (CUDA graphs of forward and backward; set by the trainer). Calling the module
    keeps wrappers such as DeepSpeed's engine in the loop. `forward_eager` always runs eagerly.
    """

    def __init__(self, embedder: nn.Module, cfg: ModelConfig, out_dim: int | None = None) -> None:
        super().__init__()
        self.encoder = Encoder(embedder, cfg)
        self.predictor = Predictor(cfg, out_dim)
        self.cuda_graphs: Any = None
        # loss.spread > 0: forward_eager keeps the context features for the trainer's penalty
        self.keep_context = False
        self.last_context: torch.Tensor | None = None

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        if self.cuda_graphs is not None:
            return self.cuda_graphs(batch)
        return self.forward_eager(batch)

    def forward_eager(self, batch: PackedBatch) -> torch.Tensor:
        enc = self.encoder
        x = enc.embed(batch.tokens, batch.coords, batch.modality)
        ctx = gather_tokens(x, batch.ctx_idx, batch.cu_ctx, unique_indices=True)
        # A batch padded to a fixed size (engine.graphs.pad_batch) runs its padding rows as
        # sequences of their own: "cu_ctx_seq" delimits the attention's sequences then.
        ctx = enc.encode(ctx, batch.context_seqs, batch.max_ctx)
        if self.keep_context:
            self.last_context = ctx
        positions = enc.embedder_of(batch.modality).position(batch.coords).to(ctx.dtype)
        return self.predictor(ctx, positions, batch)


def center_by_position(h: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """h [B, N, D] minus, for every token, the mean of h over the batch's tokens at the same
    position. `group` [B * N] numbers the positions (`engine.data.position_groups`; padding
    tokens share an extra group of their own), `n_groups` counts them, padding's included."""
    b, n, d = h.shape
    flat = h.reshape(b * n, d)
    group = group.to(h.device)
    sums = flat.new_zeros(n_groups, d).index_add_(0, group, flat)
    counts = torch.bincount(group, minlength=n_groups).clamp_min(1).to(flat.dtype)
    return (flat - (sums / counts[:, None]).index_select(0, group)).view(b, n, d)


def center_by_record(h: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """h [B, N, D] minus, for every real token, its own record's mean of h over the record's
    n_tokens [B] real tokens; padding rows are left as they are."""
    b, n, d = h.shape
    lengths = n_tokens.to(h.device)
    valid = (torch.arange(n, device=h.device)[None, :] < lengths[:, None]).unsqueeze(-1)
    mean = (
        torch.where(valid, h, 0).sum(1, keepdim=True)
        / lengths.clamp_min(1).to(h.dtype)[:, None, None]
    )
    return torch.where(valid, h - mean, h)


#: alternations of position and record centring in `double_center` (exact after one when every
#: record has a token at every position; ragged batches converge geometrically)
DOUBLE_CENTER_PASSES = 3


def double_center(h: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
    """h [B, N, D] less its additive position and record effects: position and record
    centring alternated `DOUBLE_CENTER_PASSES` times (a two-way design's backfitting)."""
    for _ in range(DOUBLE_CENTER_PASSES):
        h = center_by_record(
            center_by_position(h, batch.pos_group, batch.n_pos_groups), batch.n_tokens
        )
    return h


#: added to the eigenvalues (relative to their mean) before `whiten_tokens` divides by them
WHITEN_EPS = 1e-2


def whiten_tokens(h: torch.Tensor, n_tokens: torch.Tensor, eps: float = WHITEN_EPS) -> torch.Tensor:
    """h [B, N, D] ZCA-whitened over the batch's real tokens (the first n_tokens [B] of each
    record): every direction of feature space then has the same variance, so a few directions
    that vary a lot (a record-level trait) cannot drown the rest; padding rows are left as they
    are. The features are assumed centred (position-centred ones are, over the batch)."""
    b, n, d = h.shape
    valid = torch.arange(n, device=h.device)[None, :] < n_tokens.to(h.device)[:, None]
    x = h[valid].double()
    cov = x.T @ x / max(1, x.shape[0] - 1)
    evals, evecs = torch.linalg.eigh(cov)
    evals = evals.clamp_min(0) + eps * evals.clamp_min(0).mean().clamp_min(1e-12)
    w = (evecs * evals.rsqrt()) @ evecs.T
    out = h.clone()
    out[valid] = (x @ w).to(h.dtype)
    return out


def normalize_targets(h: torch.Tensor, batch: TokenBatch, norm: str) -> torch.Tensor:
    """Target-encoder features [B, N, D] -> the regression targets, fp32 [B, N, D]. The one
    place the targets' normalisation lives (eager and CUDA-graph paths both call it).

    layer_norm: I-JEPA's per-token layer norm (no affine). position_centered: first subtract
    the batch mean at each token position (`center_by_position`), so a feature that only says
    where a token sits is zero and the predictor cannot meet it from the mask tokens' positions.
    double_centered: position-centred, and each record's own mean over its tokens subtracted
    too (`double_center`; data2vec's instance normalisation of speech targets, without its
    scaling), so a feature that only says which record a token belongs to is zero as well and
    the predictor cannot meet the targets from any one context token's record-wide content.
    position_whitened: position-centred, then whitened over the batch (`whiten_tokens`).
    """
    h = h.float()
    if norm == "position_centered":
        h = center_by_position(h, batch.pos_group, batch.n_pos_groups)
    elif norm == "position_whitened":
        h = center_by_position(h, batch.pos_group, batch.n_pos_groups)
        h = whiten_tokens(h, batch.n_tokens)
    elif norm == "double_centered":
        h = double_center(h, batch)
    elif norm != "layer_norm":
        raise ValueError(
            "target norm must be position_centered, double_centered, layer_norm or "
            f"position_whitened, got {norm!r}"
        )
    return F.layer_norm(h, (h.shape[-1],))


def encode_targets(target: Encoder, batch: TokenBatch) -> torch.Tensor:
    """Every token's target-encoder features, [B, N, D] (zeros at padding), before normalising."""
    return target.forward_all(
        batch.tokens, batch.coords, batch.n_tokens, batch.packing, getattr(batch, "modality", "")
    )


@torch.no_grad()
def target_features(target: Encoder, batch: PackedBatch, norm: str = "layer_norm") -> torch.Tensor:
    """Normalised target-encoder features at the target tokens, [Tt, D] in tgt order (fp32)."""
    h = normalize_targets(encode_targets(target, batch), batch, norm)
    return gather_tokens(h, batch.tgt_idx, batch.cu_tgt, unique_indices=False)
