"""Shard dataset, sample order, masking collation and a resumable loader for JEPA training.

- `epoch_order`: the global sample order, a pure function of (seed, epoch, manifest): shards in a
  shuffled order, then samples shuffled within windows of `shuffle_buffer`.
- `rank_batches`: the micro-batches of one rank, disjoint across ranks, equal in number (the
  remainder is dropped).
- `MaskedBatches`: tokenize + mask each sample and pack them (`engine.batch.pack`: context,
  targets and predictor sequences as variable-length batches, never truncated).
- `JEPALoader`: DataLoader workers each take every k-th batch; `state_dict()` is the position
  (epoch, next batch), and resuming starts there without reading the skipped samples.

May import numpy, pyarrow, torch, `modalities` and `pipelines.shards` (never Ray or the rest of
`pipelines`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from engine.batch import PackedBatch, Sample, pack
from engine.config import Config, ConfigError
from modalities import Modality, ModalityError, get_modality
from pipelines.shards import ShardDataset


def resolve_modality(spec: str, manifest_modality: str) -> Modality:
    """The modality object: `spec` "" -> the registry's entry for the dataset's modality;
    otherwise a registered name or a "package.module:ATTR" spec (`modalities.get_modality`)."""
    try:
        return get_modality(spec or manifest_modality)
    except KeyError as e:
        raise ValueError(f"data.modality: {e.args[0]}") from None


def method_options(modality: Modality, cfg: Config) -> Any:
    """The modality's method options (`Modality.method_type`) from the config's `modality:`
    section (and, for a run saved before modality options, its `model.patch_len` / `mask.*`);
    ConfigError naming the bad key. The modality's hooks receive this, never `cfg`."""
    try:
        return modality.method_options(cfg.modality, cfg.legacy)
    except (ValueError, ModalityError) as e:
        raise ConfigError(str(e)) from None


def build_embedder(modality: Modality, cfg: Config, stats: dict[str, Any] | None = None) -> Any:
    """The modality's embedder at the encoder's width (`model.embed_dim`)."""
    return modality.embedder(method_options(modality, cfg), cfg.model.embed_dim, stats)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The masking RNG of one sample: a function of (seed, epoch, index) alone, so masks do not
    depend on worker count, rank count or where a run resumed."""
    return np.random.default_rng([seed, epoch, index, 0x6D61736B])


def epoch_order(
    shard_rows: Sequence[int], seed: int, epoch: int, shuffle_buffer: int
) -> np.ndarray:
    """Global record indices of one epoch.

    Shards are visited in a seeded random order (so consecutive reads stay inside one memory-map),
    then the stream is shuffled within consecutive windows of `shuffle_buffer` samples.
    """
    rng = np.random.default_rng([seed, epoch, 0x6F72646572])
    starts = np.concatenate([[0], np.cumsum(shard_rows, dtype=np.int64)])
    parts = [np.arange(starts[s], starts[s + 1]) for s in rng.permutation(len(shard_rows))]
    order = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    for lo in range(0, len(order), shuffle_buffer):
        window = order[lo : lo + shuffle_buffer]
        order[lo : lo + shuffle_buffer] = window[rng.permutation(len(window))]
    return order


def rank_batches(order: np.ndarray, rank: int, world: int, batch_size: int) -> np.ndarray:
    """[n_batches, batch_size] record indices of `rank`: global batch g holds world*batch_size
    consecutive samples of the order, rank r the r-th slice; the incomplete tail is dropped so
    every rank runs the same number of steps."""
    per_global = world * batch_size
    n = len(order) // per_global
    if n == 0:
        raise ValueError(
            f"the dataset has {len(order)} records, fewer than one global batch "
            f"({world} ranks x {batch_size}); lower data.batch_size"
        )
    return order[: n * per_global].reshape(n, world, batch_size)[:, rank, :]


class MaskedBatches(IterableDataset):
    """Yields the collated batches of one rank from (epoch, batch `start`) on, across epochs,
    without end.

    Each DataLoader worker opens its own `ShardDataset` once (memory maps do not cross processes;
    with `data.verify=first_touch` each shard is hashed once per worker process, not once per
    epoch) and takes every `num_workers`-th batch of the stream; the DataLoader hands batches out
    round-robin over workers, so the sequence is the same for any worker count. One stream for
    the whole run keeps the workers alive across epochs.
    """

    def __init__(
        self,
        cfg: Config,
        modality: Modality,
        shard_rows: list[int],
        rank: int,
        world: int,
        epoch: int,
        start: int,
    ) -> None:
        self.cfg = cfg
        self.modality = modality
        self.shard_rows = shard_rows
        self.rank, self.world = rank, world
        self.epoch = epoch
        self.start = start

    def batches(self, epoch: int) -> np.ndarray:
        """This rank's batches of `epoch`, [n_batches, batch_size] record indices."""
        d = self.cfg.data
        order = epoch_order(self.shard_rows, self.cfg.train.seed, epoch, d.shuffle_buffer)
        return rank_batches(order, self.rank, self.world, d.batch_size)

    def __iter__(self) -> Iterator[PackedBatch]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        ds = ShardDataset(self.cfg.data.path, verify=self.cfg.data.verify)
        stats = ds.stats
        opts = method_options(self.modality, self.cfg)
        masker = self.modality.masker(opts)
        # A masker with `uses_step` (A-JEPA's curriculum) also gets the batch's position in the
        # stream, a function of the data position that checkpoints restore.
        uses_step = bool(getattr(masker, "uses_step", False))
        seed = self.cfg.train.seed
        cached = (self.epoch, self.batches(self.epoch))
        per_epoch = len(cached[1])
        if per_epoch == 0:
            return
        for k in itertools.count(wid, nw):  # position k of the stream, from (epoch, start)
            epoch, j = divmod(self.start + k, per_epoch)
            epoch += self.epoch
            if cached[0] != epoch:
                cached = (epoch, self.batches(epoch))
            samples = []
            step = epoch * per_epoch + j
            for idx in cached[1][j]:
                t = self.modality.tokenize(ds[int(idx)], stats, opts)
                rng = sample_rng(seed, epoch, int(idx))
                if uses_step:
                    ctx, tgts = masker(rng, t["coords"], step=step)
                else:
                    ctx, tgts = masker(rng, t["coords"])
                samples.append(Sample(int(idx), t["tokens"], t["coords"], ctx, list(tgts)))
            yield pack(samples, self.modality.position_columns)


class JEPALoader:
    """Endless, resumable stream of masked batches for one rank.

    `state_dict()` is {"epoch", "batch"}: the next batch this loader will hand out. Batches
    prefetched by workers but not handed out do not count, so a checkpoint taken between steps
    resumes at exactly the next unseen batch.
    """

    def __init__(self, cfg: Config, modality: Modality, rank: int = 0, world: int = 1) -> None:
        self.cfg = cfg
        self.modality = modality
        self.rank = rank
        self.world = world
        ds = ShardDataset(cfg.data.path, verify="none")
        self.shard_rows = [s.rows for s in ds.shards]
        self.epoch = 0
        self.batch = 0
        self.batches_per_epoch = len(self._stream().batches(0))

    def _stream(self) -> MaskedBatches:
        return MaskedBatches(
            self.cfg, self.modality, self.shard_rows, self.rank, self.world, self.epoch, self.batch
        )

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if not 0 <= batch <= self.batches_per_epoch:
            raise ValueError(
                f"data position batch {batch} is outside an epoch of {self.batches_per_epoch} "
                "batches: the dataset or data.batch_size changed since the checkpoint"
            )
        self.epoch, self.batch = epoch, batch

    def __iter__(self) -> Iterator[PackedBatch]:
        """One DataLoader (its workers live as long as this iterator) from the current
        position on; the position advances as batches are handed out."""
        if self.batches_per_epoch == 0:
            return
        if self.batch >= self.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        d = self.cfg.data
        kwargs: dict[str, Any] = {}
        if d.num_workers > 0:
            kwargs.update(prefetch_factor=d.prefetch_factor, num_workers=d.num_workers)
        loader = DataLoader(
            self._stream(), batch_size=None, pin_memory=torch.cuda.is_available(), **kwargs
        )
        for batch in loader:
            if self.batch >= self.batches_per_epoch:
                self.epoch, self.batch = self.epoch + 1, 0
            self.batch += 1
            yield batch
