"""The packed batch: one typed layout of a training batch, built here and read everywhere else.

- `TokenBatch`: every token of every sample, zero-padded to the longest sample ([B, N, ...]),
  with the host-side packing that encodes them without a device sync (`TokenPacking`) and the
  batch's position groups (targets are centred per position). What the target encoder, MAE,
  the diagnostics and the probe read.
- `PackedBatch`: a `TokenBatch` plus one masking draw per sample, packed for variable-length
  attention: context rows, target rows and the predictor's sequences (one per target block),
  each delimited by `cu_*` offsets. What the context encoder and predictor read; the CUDA-graph
  step pads it to a size bucket (`engine.graphs.pad_batch`, which fills `cu_ctx_seq`).
- `pack_tokens` / `pack`: the one place these are built (the loader's collate, the probe, the
  step benchmark and the tests all call them).

Both move with `.to(device)` and pin with `.pin_memory()` (the DataLoader calls it), so they
cross the loader's worker processes and the host-device copy as one object.

Imports numpy and torch only (the step benchmark loads it on a GPU box without the project's
other dependencies).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch


def _move(value: Any, fn: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(
            value, **{f.name: _move(getattr(value, f.name), fn) for f in dataclasses.fields(value)}
        )
    return value


class _Movable:
    """`.to(device)` and `.pin_memory()` over a dataclass's tensors (nested ones included)."""

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Any:
        return _move(self, lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Any:
        return _move(self, lambda t: t.pin_memory())


@dataclass
class TokenPacking(_Movable):
    """Host-side packing of the samples' valid tokens out of a [B, N] padded layout.

    max_tokens: the longest sample. cu_all [B+1] int32: cumulative lengths. valid_idx [T]
    int64: flat indices of the valid positions in row-major [B * N] order, or None when every
    sample is full (images, fMRI and EEG grids), so the encoder reads the batch as it is.
    """

    max_tokens: int
    cu_all: torch.Tensor
    valid_idx: torch.Tensor | None


def token_packing(lengths: Sequence[int], padded_len: int) -> TokenPacking:
    """`TokenPacking` of samples with `lengths` tokens in a [B, padded_len] layout."""
    cu = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int32)
    valid = None
    if any(k != padded_len for k in lengths):
        valid = torch.from_numpy(
            np.concatenate(
                [b * padded_len + np.arange(k, dtype=np.int64) for b, k in enumerate(lengths)]
            )
        )
    return TokenPacking(int(max(lengths)) if len(lengths) else 0, torch.from_numpy(cu), valid)


def position_groups(coords: Sequence[np.ndarray], padded_len: int) -> tuple[np.ndarray, int]:
    """Number the distinct token positions (equal coords rows) of a batch.

    Returns (group [B * padded_len] int64 in row-major padded order, n_groups): tokens of
    any samples with the same coords share a group; padding tokens form one extra group (the
    last), so their zeros never enter a real position's mean. `engine.model.center_by_position`
    reads it; it is built here, on the host, so a GPU step needs no sync for it.
    """
    lengths = [len(c) for c in coords]
    rows = np.concatenate([np.asarray(c, dtype=np.int64) for c in coords])
    if rows.ndim == 1:
        rows = rows[:, None]
    # One int64 key per row (mixed radix over the columns' ranges) sorts far faster than
    # np.unique over rows; wide-ranging coords fall back to the row-wise unique.
    lo = rows.min(axis=0) if len(rows) else np.zeros(rows.shape[1], np.int64)
    span = (rows.max(axis=0) - lo + 1) if len(rows) else np.ones(rows.shape[1], np.int64)
    if np.prod(span.astype(np.float64)) < 2**62:
        radix = np.concatenate([np.cumprod(span[::-1])[::-1][1:], [1]]).astype(np.int64)
        _, inverse = np.unique((rows - lo) @ radix, return_inverse=True)
    else:
        _, inverse = np.unique(rows, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    n_real = int(inverse.max()) + 1 if len(inverse) else 0
    group = np.full(len(coords) * padded_len, n_real, dtype=np.int64)
    flat = np.concatenate(
        [b * padded_len + np.arange(k, dtype=np.int64) for b, k in enumerate(lengths)]
    )
    group[flat] = inverse
    return group, n_real + 1


@dataclass
class TokenBatch(_Movable):
    """Every token of B samples. tokens [B, N, patch_dim] float32 and coords [B, N, c] int64,
    zero-padded past each sample's n_tokens [B] int32; packing: see `TokenPacking`; pos_group
    [B * N] / n_pos_groups: see `position_groups`."""

    tokens: torch.Tensor
    coords: torch.Tensor
    n_tokens: torch.Tensor
    packing: TokenPacking
    pos_group: torch.Tensor
    n_pos_groups: int

    @property
    def n_samples(self) -> int:
        return int(self.tokens.shape[0])


@dataclass
class PackedBatch(TokenBatch):
    """A `TokenBatch` plus each sample's context and target blocks, packed.

    index [B]: the samples' record indices. ctx_idx [Tc] / cu_ctx [B+1]: each sample's context
    tokens (indices into its row of `tokens`), max_ctx the longest. tgt_idx [Tt] / cu_tgt [B+1]:
    each sample's target tokens, its blocks concatenated. The predictor runs one sequence per
    target block, its sample's encoded context then the block's mask tokens: pred_src [Tp]
    indexes rows of cat([context features, mask tokens]), cu_pred [S+1] delimits the S
    sequences (max_pred the longest) and pred_out [Tt] picks the mask-token rows, in tgt order.
    cu_ctx_seq: None, or (in a batch padded to a size bucket) the context's attention sequences,
    the real samples' followed by the padding rows' own. modality: see the field. A padded
    batch (`engine.graphs.pad_batch`) has None for what only the unpadded one carries:
    n_tokens, packing, pos_group, index.
    """

    index: torch.Tensor
    ctx_idx: torch.Tensor
    cu_ctx: torch.Tensor
    max_ctx: int
    tgt_idx: torch.Tensor
    cu_tgt: torch.Tensor
    pred_src: torch.Tensor
    cu_pred: torch.Tensor
    max_pred: int
    pred_out: torch.Tensor
    cu_ctx_seq: torch.Tensor | None = None
    # the samples' modality in a run of several (which embedder reads them); "" in a run of one
    modality: str = ""

    #: the tensors `engine.graphs.pad_batch` pads (and a captured step graph reads)
    PADDED: ClassVar[tuple[str, ...]] = (
        "tokens",
        "coords",
        "ctx_idx",
        "cu_ctx",
        "cu_ctx_seq",
        "tgt_idx",
        "cu_tgt",
        "pred_src",
        "cu_pred",
        "pred_out",
    )

    @property
    def context_seqs(self) -> torch.Tensor:
        """The context's attention sequence offsets (`cu_ctx_seq` when padded, else `cu_ctx`)."""
        return self.cu_ctx if self.cu_ctx_seq is None else self.cu_ctx_seq


@dataclass
class Sample:
    """One tokenized, masked sample: what `pack` takes."""

    index: int
    tokens: np.ndarray  # [N, patch_dim] float32
    coords: np.ndarray  # [N, c] int
    context: np.ndarray  # [Lc] int64
    targets: list[np.ndarray]  # per block [Lt] int64


def _cu(lengths: Sequence[int]) -> torch.Tensor:
    return torch.from_numpy(
        np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int32)
    )


def pack_tokens(
    tokens: Sequence[np.ndarray],
    coords: Sequence[np.ndarray],
    position_columns: Sequence[int] | None = None,
) -> TokenBatch:
    """The `TokenBatch` of samples' tokens [N_b, patch_dim] and coords [N_b, c]; positions are
    grouped by the coords columns `position_columns` (the modality's; None: all of them)."""
    n = [len(t) for t in tokens]
    nmax = max(n)
    out_t = np.zeros((len(n), nmax, tokens[0].shape[1]), dtype=np.float32)
    out_c = np.zeros((len(n), nmax, coords[0].shape[1]), dtype=np.int64)
    for b, (t, c) in enumerate(zip(tokens, coords, strict=True)):
        out_t[b, : n[b]] = t
        out_c[b, : n[b]] = c
    keys = coords if position_columns is None else [c[:, list(position_columns)] for c in coords]
    group, n_groups = position_groups(keys, nmax)
    return TokenBatch(
        tokens=torch.from_numpy(out_t),
        coords=torch.from_numpy(out_c),
        n_tokens=torch.tensor(n, dtype=torch.int32),
        packing=token_packing(n, nmax),
        pos_group=torch.from_numpy(group),
        n_pos_groups=n_groups,
    )


def pack(
    samples: Sequence[Sample], position_columns: Sequence[int] | None = None, modality: str = ""
) -> PackedBatch:
    """Pack masked samples into one variable-length `PackedBatch` (nothing truncated);
    `position_columns`: see `pack_tokens`; `modality`: the samples' (a run of several)."""
    base = pack_tokens([s.tokens for s in samples], [s.coords for s in samples], position_columns)
    lc = [len(s.context) for s in samples]
    blocks = [(b, t) for b, s in enumerate(samples) for t in s.targets]
    lt = [len(t) for _, t in blocks]
    tc = sum(lc)
    cu_ctx = np.concatenate([[0], np.cumsum(lc)])
    cu_blk = np.concatenate([[0], np.cumsum(lt)])
    pred_src, pred_out, lp = [], [], []
    pos = 0
    for s, (b, t) in enumerate(blocks):
        pred_src.append(np.arange(cu_ctx[b], cu_ctx[b + 1]))
        pred_src.append(tc + np.arange(cu_blk[s], cu_blk[s + 1]))
        pred_out.append(pos + lc[b] + np.arange(len(t)))
        lp.append(lc[b] + len(t))
        pos += lp[-1]

    def cat(parts: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.concatenate(parts).astype(np.int64))

    return PackedBatch(
        **{f.name: getattr(base, f.name) for f in dataclasses.fields(TokenBatch)},
        index=torch.tensor([s.index for s in samples], dtype=torch.int64),
        ctx_idx=cat([s.context for s in samples]),
        cu_ctx=_cu(lc),
        max_ctx=max(lc),
        tgt_idx=cat([t for _, t in blocks]),
        cu_tgt=_cu([sum(len(t) for t in s.targets) for s in samples]),
        pred_src=cat(pred_src),
        cu_pred=_cu(lp),
        max_pred=max(lp),
        pred_out=cat(pred_out),
        modality=modality,
    )
