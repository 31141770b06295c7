"""The contract every modality implements, and the error type for bad input.

A modality turns one source file into records (`read`), declares the Arrow schema of those
records (`schema`), computes dataset statistics from the written shards (`fit_stats`), and writes
realistic demo files in its real format (`demo`). For training it declares its method options
(`method_type`: patch geometry, masks, embedder) and turns records into tokens (`tokenize`),
draws masks (`masker`) and embeds tokens (`embedder`) from those options alone. The ingest
framework (pipelines/) owns listing sources, parallelism, shard writing, quarantine and the
manifest; the modality owns the science.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from modalities.options import parse_options


class ModalityError(Exception):
    """Bad input: the message is a reason a person understands (the file is named by the caller)."""


@dataclass(frozen=True)
class ReadContext:
    """What the ingest framework tells a reader besides the file itself.

    source: the source as the user named it (path or URL), for ids and messages.
    local_path: a local file to open (remote sources are copied to a temp file first).
    size: bytes of the source file.
    max_file_bytes: refuse inputs whose decoded payload would exceed this (checked from headers,
        before allocating).
    """

    source: str
    local_path: str
    size: int
    max_file_bytes: int


class Modality:
    """Base class: subclasses set `name`, `extensions`, `options_type` and implement the methods."""

    name: ClassVar[str]
    #: lower-case file-name suffixes a directory scan picks up, e.g. (".nii", ".nii.gz")
    extensions: ClassVar[tuple[str, ...]]
    #: a dataclass type holding this modality's preprocessing options (JSON-serialisable fields)
    options_type: ClassVar[type]
    #: how many demo files `python -m pipelines.ingest NAME` (no --input) generates
    demo_size: ClassVar[int] = 8

    def add_cli_options(self, parser: argparse.ArgumentParser) -> None:
        """Add this modality's options to the ingest CLI."""

    def options_from_args(self, args: argparse.Namespace) -> Any:
        """Build the options dataclass from parsed CLI arguments."""
        return self.options_type()

    def schema(self, opts: Any) -> pa.Schema:
        """Arrow schema of the records `read` yields (without the framework's `id`/`source`)."""
        raise NotImplementedError

    def read(self, ctx: ReadContext, opts: Any) -> Iterator[dict[str, Any]]:
        """Yield the records of one source; raise `ModalityError` for bad input."""
        raise NotImplementedError

    def fit_stats(self, batches: Iterable[pa.RecordBatch], opts: Any) -> dict[str, Any]:
        """Dataset statistics from the written records (JSON-serialisable). Default: none."""
        return {}

    def demo(self, out_dir: str | Path, n: int, seed: int) -> list[str]:
        """Write `n` realistic raw files in this modality's format; return their paths."""
        raise NotImplementedError

    def draw(self, ds: Any, index: int, rng: Any, opts: Any) -> Any:
        """One sample of dataset `ds` (a `pipelines.shards.ShardDataset`) with the context and
        target masks this modality's masker, set up by the method options `opts` (a run's, or
        the defaults), draws for it: a `modalities.show.Drawing` (`python -m modalities.show
        NAME`). Imports matplotlib inside."""
        raise ModalityError(f"modality {self.name!r} has no drawer")

    def warm_up(self) -> None:
        """Import the heavy readers `read` needs. The ingest runs this on every Ray worker while
        the plan starts up, so the first file of each worker does not also pay the imports."""

    def library_versions(self) -> dict[str, str]:
        """Versions of the libraries whose behaviour shapes the records (for the manifest)."""
        return {}

    def matches(self, path: str) -> bool:
        """Whether a directory scan should pick up `path`."""
        lower = path.lower()
        return any(lower.endswith(ext) for ext in self.extensions)

    # -- model side (used by the engine; see modalities/grid.py for generic grid pieces). The
    # hooks receive this modality's own method options (`method_type`, parsed from the run
    # config's `modality:` section by `method_options`), never the engine's config.

    #: a dataclass type of the method options: tokenizer (patch geometry), masks, embedder.
    #: Fields with defaults; `__post_init__` raises ValueError("field: why") for bad values.
    method_type: ClassVar[type | None] = None
    #: the `coords` columns that name a token's position on the modality's grid, the key the
    #: engine's position-centred targets and position diagnostics group tokens by
    #: (`engine.batch.position_groups`). None: every column. A modality whose coords also carry
    #: per-record values (EEG: each recording's digitised electrode xyz) names its grid columns,
    #: or tokens of such records would each be a position of their own and centre to zero.
    position_columns: ClassVar[tuple[int, ...] | None] = None

    def method_options(
        self, section: Mapping[str, Any] | None = None, legacy: Mapping[str, Any] | None = None
    ) -> Any:
        """The run config's `modality:` section as `method_type` (defaults for what it omits);
        `modalities.options.OptionError` names a bad key (`modality.patch_len: ...`). `legacy`:
        the `model.patch_len` / `mask.*` keys of a run saved before modality options, mapped by
        `legacy_options` (the section's own keys win)."""
        if self.method_type is None:
            raise ModalityError(f"modality {self.name!r} declares no method options")
        if legacy:
            section = {**self.legacy_options(legacy), **(section or {})}
        return parse_options(self.method_type, section or {}, "modality")

    def legacy_options(self, legacy: Mapping[str, Any]) -> dict[str, Any]:
        """A run saved before the modality owned its options kept `model.patch_len` and `mask.*`
        in the engine's config: map those ({dotted key: value}) to this modality's `modality:`
        keys, so the run's checkpoints still load. Default: refuse with the reason."""
        raise ModalityError(
            f"this run's config predates modality options ({', '.join(sorted(legacy))}) and "
            f"modality {self.name!r} cannot map them; retrain, or move them into `modality:`"
        )

    def tokenize(self, record: dict[str, Any], stats: dict[str, Any], opts: Any) -> dict[str, Any]:
        """Turn one record into tokens for the encoder.

        Returns at least ``tokens`` (float32 [N, patch_dim]) and ``coords`` (int [N, c], the
        token's position on this modality's grid, what the embedder and masker read). `stats` is
        the dataset's statistics (stats.json); `opts` the method options.
        """
        raise NotImplementedError(f"{self.name} has no tokenizer")

    def masker(self, opts: Any) -> Any:
        """A callable ``(rng: np.random.Generator, coords) -> (context_idx, [target_idx, ...])``.

        Index arrays point into the sample's tokens; lengths vary per sample (never truncated).
        A masker whose attribute `uses_step` is true is called ``(rng, coords, step=k)`` with k
        the batch's position in the data stream (batches before it, over all epochs; restored
        exactly on resume): masks that change over training (A-JEPA's curriculum) read it.
        """
        raise NotImplementedError(f"{self.name} has no masker")

    def embedder(self, opts: Any, dim: int, stats: dict[str, Any] | None = None) -> Any:
        """An ``nn.Module``: ``forward(tokens [B, N, patch_dim], coords [B, N, c]) -> [B, N, dim]``
        (patch embedding plus positions), ``position(coords) -> [B, N, dim]`` (positions
        alone) and, for `engine.finetune`'s local heads, ``local(tokens) -> [..., dim]`` (the
        patch embedding alone: S-JEPA's local encoder); `dim` is the encoder's width. `stats`
        are the dataset statistics the encoder was trained with (the engine passes them at
        training time and restores them from the checkpoint or export at load time, so a
        trained encoder loads without its dataset)."""
        raise NotImplementedError(f"{self.name} has no embedder")
