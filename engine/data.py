"""Shard dataset, sample order, masking collation and a resumable loader for JEPA training.

- `epoch_order`: the global sample order, a pure function of (seed, epoch, manifest): shards in a
  shuffled order, then samples shuffled within windows of `shuffle_buffer`.
- `rank_batches`: the micro-batches of one rank, disjoint across ranks, equal in number (the
  remainder is dropped).
- `DataSources` / `epoch_batches`: a run over several datasets (`data.sources`: cohorts of one
  modality or several modalities): each epoch draws every source's weighted share of samples
  from that source's own endless seeded order, mixed per sample or in batches of one modality.
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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from engine.batch import PackedBatch, Sample, pack
from engine.config import Config, ConfigError, SourceConfig
from modalities import Modality, ModalityError, get_modality
from pipelines.shards import ShardDataset


def resolve_modality(spec: str, manifest_modality: str) -> Modality:
    """The modality object: `spec` "" -> the registry's entry for the dataset's modality;
    otherwise a registered name or a "package.module:ATTR" spec (`modalities.get_modality`);
    or, for a run of several modalities, "name=SPEC,name=SPEC": the entry of the dataset's
    modality (a modality it does not name: the registry's)."""
    if "=" in spec:
        pairs = [part.split("=", 1) for part in spec.split(",") if part.strip()]
        spec = {name.strip(): value.strip() for name, value in pairs}.get(manifest_modality, "")
    try:
        return get_modality(spec or manifest_modality)
    except KeyError as e:
        raise ValueError(f"data.modality: {e.args[0]}") from None


def is_keyed(section: dict[str, Any]) -> bool:
    """Whether a `modality:` section holds options per modality (`modality.fmri.patch_len`,
    as a run of several modalities needs) rather than one modality's options."""
    return any(isinstance(v, dict) for v in section.values())


def modality_section(section: dict[str, Any], name: str) -> dict[str, Any]:
    """The options of modality `name` in a `modality:` section: the section itself, or, when it
    is keyed by modality, its `name` entry (absent: the defaults). ConfigError for a keyed
    section with options outside any modality's entry."""
    if not is_keyed(section):
        return section
    loose = sorted(k for k, v in section.items() if not isinstance(v, dict))
    if loose:
        raise ConfigError(
            f"modality.{loose[0]}: with options per modality, each option sits under its "
            f"modality's name (modality.{name}.{loose[0]})"
        )
    return section.get(name, {})


def method_options(modality: Modality, cfg: Config) -> Any:
    """The modality's method options (`Modality.method_type`) from the config's `modality:`
    section (its `modality.<name>` entry when the run has several modalities; for a run saved
    before modality options, its `model.patch_len` / `mask.*`); ConfigError naming the bad key.
    The modality's hooks receive this, never `cfg`."""
    section = modality_section(cfg.modality, modality.name)
    try:
        return modality.method_options(section, cfg.legacy)
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
    shard_rows: Sequence[int], seed: int, epoch: int, shuffle_buffer: int, salt: Sequence[int] = ()
) -> np.ndarray:
    """Global record indices of one epoch.

    Shards are visited in a seeded random order (so consecutive reads stay inside one memory-map),
    then the stream is shuffled within consecutive windows of `shuffle_buffer` samples. `salt`
    tells apart the orders of a run's several sources.
    """
    rng = np.random.default_rng([seed, epoch, 0x6F72646572, *salt])
    starts = np.concatenate([[0], np.cumsum(shard_rows, dtype=np.int64)])
    parts = [np.arange(starts[s], starts[s + 1]) for s in rng.permutation(len(shard_rows))]
    order = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    for lo in range(0, len(order), shuffle_buffer):
        window = order[lo : lo + shuffle_buffer]
        order[lo : lo + shuffle_buffer] = window[rng.permutation(len(window))]
    return order


def global_batches(order: np.ndarray, global_batch: int) -> np.ndarray:
    """An epoch's order cut into [n_batches, global_batch]; the incomplete tail is dropped so
    every rank runs the same number of steps."""
    n = len(order) // global_batch
    return order[: n * global_batch].reshape(n, global_batch)


def rank_batches(batches: np.ndarray, rank: int, world: int, batch_size: int) -> np.ndarray:
    """[n_batches, batch_size] record indices of `rank`: global batch g holds world*batch_size
    samples, rank r the r-th slice. `batches`: the global batches (`epoch_batches`), or an
    epoch's order, cut here (`global_batches`)."""
    if batches.ndim == 1:
        order = batches
        batches = global_batches(order, world * batch_size)
        if len(batches) == 0:
            raise ValueError(
                f"the dataset has {len(order)} records, fewer than one global batch "
                f"({world} ranks x {batch_size}); lower data.batch_size"
            )
    return batches[:, rank * batch_size : (rank + 1) * batch_size]


@dataclass(frozen=True)
class DataSource:
    """One dataset of a run: its local directory, its weight, its manifest's modality, its
    shards' rows and, for the run's records, the first index (`offset`) of its records."""

    path: str
    weight: float
    modality: str
    shard_rows: tuple[int, ...]
    offset: int

    @property
    def rows(self) -> int:
        return sum(self.shard_rows)


class DataSources:
    """The datasets of a run (`data.path`, or `data.sources`) and their modalities.

    A record of the run is numbered globally: source s's record i is `offset_s + i`. The
    modality objects are keyed by the manifest's modality name; `modality` (one object, or a
    name -> object mapping) replaces the registry's (`data.modality` resolves it otherwise).
    ConfigError when the sources cannot share a run: an empty source, several modalities with
    `data.mix=sample` or with a `data.modality` naming one modality object.
    """

    def __init__(self, cfg: Config, modality: Modality | dict[str, Modality] | None = None):
        d = cfg.data
        specs = d.sources or [SourceConfig(d.path, 1.0)]
        self.sources: list[DataSource] = []
        offset = 0
        for i, spec in enumerate(specs):
            ds = ShardDataset(spec.path, verify="none")
            rows = tuple(s.rows for s in ds.shards)
            if d.sources and sum(rows) == 0:
                raise ConfigError(f"data.sources[{i}]: {spec.path} has no records")
            # the local directory (an object-store URL's verified cache): what loader workers
            # open, without going back to the network
            self.sources.append(DataSource(str(ds.root), spec.weight, ds.modality, rows, offset))
            offset += sum(rows)
        self._starts = np.asarray([s.offset for s in self.sources], dtype=np.int64)
        self.names: list[str] = list(dict.fromkeys(s.modality for s in self.sources))
        if len(self.names) > 1:
            if d.mix != "modality":
                raise ConfigError(
                    f"data.mix: the sources hold several modalities ({', '.join(self.names)}), "
                    "whose tokens cannot share a batch; set data.mix=modality"
                )
            if d.modality and "=" not in d.modality:
                raise ConfigError(
                    f"data.modality: {d.modality!r} names one modality; these sources hold "
                    f"{', '.join(self.names)} (give name=SPEC pairs, comma-separated)"
                )
        if isinstance(modality, dict):
            self.modalities = {n: modality[n] for n in self.names}
        elif modality is not None:
            self.modalities = {n: modality for n in self.names}
        else:
            self.modalities = {n: resolve_modality(d.modality, n) for n in self.names}

    @property
    def several(self) -> bool:
        """Whether the run has several modalities (a shared trunk, one embedder each)."""
        return len(self.names) > 1

    @property
    def mixed(self) -> bool:
        """Whether the run reads several datasets (`data.sources` of two or more)."""
        return len(self.sources) > 1

    def first(self, name: str) -> DataSource:
        """The first source of modality `name`: its statistics build that modality's
        embedder (list the reference cohort first)."""
        return next(s for s in self.sources if s.modality == name)

    def of_index(self, index: int) -> int:
        """The position in `sources` of the source holding global record `index`."""
        return int(np.searchsorted(self._starts, index, side="right")) - 1


def quotas(rows: Sequence[int], weights: Sequence[float]) -> list[int]:
    """Samples per epoch of each source: sum(rows) split in proportion to the weights, the
    remainder going to the largest fractions (ties to the earlier source)."""
    total = int(sum(rows))
    w = np.asarray(weights, dtype=np.float64)
    exact = total * w / w.sum()
    out = np.floor(exact).astype(np.int64)
    for j in np.argsort(-(exact - out), kind="stable")[: total - int(out.sum())]:
        out[j] += 1
    return [int(q) for q in out]


def _source_stream(src: DataSource, s: int, seed: int, buffer: int, lo: int, hi: int):
    """Positions [lo, hi) of source `s`'s endless stream: its own seeded epochs one after the
    other (a source drawn more often than it has records repeats, each pass reshuffled)."""
    n = src.rows
    out = []
    for pass_ in range(lo // n, (hi - 1) // n + 1):
        order = epoch_order(src.shard_rows, seed, pass_, buffer, salt=(s,))
        a, b = max(lo, pass_ * n) - pass_ * n, min(hi, (pass_ + 1) * n) - pass_ * n
        out.append(order[a:b] + src.offset)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def epoch_batches(
    sources: DataSources, seed: int, epoch: int, shuffle_buffer: int, global_batch: int, mix: str
) -> np.ndarray:
    """[n_batches, global_batch] global record indices of one epoch, a pure function of its
    arguments (and the sources' shard rows): rank r takes columns [r * b, (r + 1) * b).

    One source: `epoch_order` cut into global batches. Several: each source contributes its
    `quotas` share, read from its own stream at epoch * quota on; mix "sample" shuffles all of
    them together; "modality" shuffles each modality's samples, cuts them into global batches
    (each modality's remainder dropped) and shuffles the batches.
    """
    src = sources.sources
    if len(src) == 1:
        order = epoch_order(src[0].shard_rows, seed, epoch, shuffle_buffer)
    else:
        q = quotas([s.rows for s in src], [s.weight for s in src])
        picks = [
            _source_stream(s, i, seed, shuffle_buffer, epoch * q[i], (epoch + 1) * q[i])
            for i, s in enumerate(src)
        ]
        rng = np.random.default_rng([seed, epoch, 0x6D6978])
        if mix == "sample":
            order = np.concatenate(picks)
            order = order[rng.permutation(len(order))]
        else:
            groups = []
            for g, name in enumerate(sources.names):
                part = np.concatenate(
                    [p for p, s in zip(picks, src, strict=True) if s.modality == name]
                )
                shuffle = np.random.default_rng([seed, epoch, 0x6D6978, g])
                part = part[shuffle.permutation(len(part))]
                groups.append(global_batches(part, global_batch))
            batches = np.concatenate(groups)
            return batches[rng.permutation(len(batches))]
    return global_batches(order, global_batch)


class MaskedBatches(IterableDataset):
    """Yields the collated batches of one rank from (epoch, batch `start`) on, across epochs,
    without end.

    Each DataLoader worker opens its own `ShardDataset`s once (memory maps do not cross
    processes; with `data.verify=first_touch` each shard is hashed once per worker process, not
    once per epoch) and takes every `num_workers`-th batch of the stream; the DataLoader hands
    batches out round-robin over workers, so the sequence is the same for any worker count. One
    stream for the whole run keeps the workers alive across epochs. Every record is tokenized
    with its own dataset's statistics and masked by its modality's masker.
    """

    def __init__(
        self,
        cfg: Config,
        sources: DataSources,
        rank: int,
        world: int,
        epoch: int,
        start: int,
    ) -> None:
        self.cfg = cfg
        self.sources = sources
        self.rank, self.world = rank, world
        self.epoch = epoch
        self.start = start

    def batches(self, epoch: int) -> np.ndarray:
        """This rank's batches of `epoch`, [n_batches, batch_size] global record indices."""
        d = self.cfg.data
        gb = self.world * d.batch_size
        out = epoch_batches(self.sources, self.cfg.train.seed, epoch, d.shuffle_buffer, gb, d.mix)
        return rank_batches(out, self.rank, self.world, d.batch_size)

    def __iter__(self) -> Iterator[PackedBatch]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        src = self.sources.sources
        datasets = [ShardDataset(s.path, verify=self.cfg.data.verify) for s in src]
        stats = [ds.stats for ds in datasets]
        mods = self.sources.modalities
        opts = {n: method_options(m, self.cfg) for n, m in mods.items()}
        maskers = {n: mods[n].masker(opts[n]) for n in mods}
        # A masker with `uses_step` (A-JEPA's curriculum) also gets the batch's position in the
        # stream, a function of the data position that checkpoints restore.
        uses_step = {n: bool(getattr(m, "uses_step", False)) for n, m in maskers.items()}
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
            name = ""
            for idx in cached[1][j]:
                s = self.sources.of_index(int(idx)) if len(src) > 1 else 0
                name = src[s].modality
                modality, masker = mods[name], maskers[name]
                record = datasets[s][int(idx) - src[s].offset]
                t = modality.tokenize(record, stats[s], opts[name])
                rng = sample_rng(seed, epoch, int(idx))
                if uses_step[name]:
                    ctx, tgts = masker(rng, t["coords"], step=step)
                else:
                    ctx, tgts = masker(rng, t["coords"])
                samples.append(Sample(int(idx), t["tokens"], t["coords"], ctx, list(tgts)))
            key = name if self.sources.several else ""
            yield pack(samples, mods[name].position_columns, key)


class JEPALoader:
    """Endless, resumable stream of masked batches for one rank.

    `state_dict()` is {"epoch", "batch"}: the next batch this loader will hand out. Batches
    prefetched by workers but not handed out do not count, so a checkpoint taken between steps
    resumes at exactly the next unseen batch. `modality`: see `DataSources`.
    """

    def __init__(
        self,
        cfg: Config,
        modality: Modality | dict[str, Modality] | None = None,
        rank: int = 0,
        world: int = 1,
        sources: DataSources | None = None,
    ) -> None:
        self.cfg = cfg
        self.sources = sources if sources is not None else DataSources(cfg, modality)
        self.rank = rank
        self.world = world
        self.epoch = 0
        self.batch = 0
        src = self.sources
        if src.several:  # each modality must fill at least one global batch per epoch
            q = quotas([s.rows for s in src.sources], [s.weight for s in src.sources])
            for name in src.names:
                n = sum(qi for qi, s in zip(q, src.sources, strict=True) if s.modality == name)
                if n < world * cfg.data.batch_size:
                    raise ConfigError(
                        f"data.sources: {name} draws {n} samples per epoch at these weights, "
                        f"fewer than one global batch ({world} ranks x {cfg.data.batch_size}): "
                        "it would never be trained; raise its weight or lower data.batch_size"
                    )
        self.batches_per_epoch = len(self._stream().batches(0))
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"the data have {sum(s.rows for s in self.sources.sources)} records, fewer "
                f"than one global batch ({world} ranks x {cfg.data.batch_size}) per epoch"
                + (" of one modality" if self.sources.several else "")
                + "; lower data.batch_size"
            )

    def _stream(self) -> MaskedBatches:
        return MaskedBatches(self.cfg, self.sources, self.rank, self.world, self.epoch, self.batch)

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
