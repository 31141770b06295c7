"""Shard format v1: writer, reader and manifest of a jepa-forge dataset directory.

This module is the floor every package may stand on: it imports only the standard library,
numpy, pyarrow and its two helpers (`pipelines.atomic`: atomic files and hashes;
`pipelines.arrow_records`: records <-> Arrow), never Ray or anything else of ours, so the engine
and the picture tools can read shards. The format is specified in docs/FORMAT.md; in short::

    DATASET/
      index.json            manifest, committed last (atomic rename)
      shards/part-NNNNN.arrow   Arrow IPC *file* format, optional lz4/zstd buffer compression
      errors.jsonl          one line per quarantined source
      stats.json            dataset statistics (modality specific)

Every file is written to a temporary name, fsynced and renamed into place, so a reader never
sees a half-written shard and a killed writer leaves either the old state or the new one.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

# The floor's API is this module: the helpers are re-exported under their names here.
from pipelines.arrow_records import is_tensor_type as is_tensor_type
from pipelines.arrow_records import records_to_table as records_to_table
from pipelines.arrow_records import row_sizes as row_sizes
from pipelines.arrow_records import row_to_record as row_to_record
from pipelines.arrow_records import schema_to_json as schema_to_json
from pipelines.arrow_records import tensor_column_to_numpy as tensor_column_to_numpy
from pipelines.atomic import atomic_target as atomic_target
from pipelines.atomic import atomic_write_bytes as atomic_write_bytes
from pipelines.atomic import atomic_write_json as atomic_write_json
from pipelines.atomic import atomic_write_text as atomic_write_text
from pipelines.atomic import fsync_dir as fsync_dir
from pipelines.atomic import json_dumps as json_dumps
from pipelines.atomic import sha256_file as sha256_file

FORMAT_NAME = "jepa-forge-shards"
FORMAT_VERSION = 1
INDEX_FILE = "index.json"
SHARDS_DIR = "shards"
ERRORS_FILE = "errors.jsonl"
STATS_FILE = "stats.json"
DEFAULT_SHARD_BYTES = 128 * 1024 * 1024
# Record batches inside a shard are kept to a few MiB so fetching one record from a compressed
# shard decompresses a little, not the whole shard.
DEFAULT_BATCH_BYTES = 4 * 1024 * 1024
COMPRESSIONS = (None, "lz4", "zstd")


class ShardError(Exception):
    """A dataset directory or one of its shards is missing, corrupt or malformed."""


def remove_stale_temp_files(root: str | Path) -> int:
    """Delete temp files a killed writer left behind (they are never referenced)."""
    n = 0
    root = Path(root)
    for d in (root, root / SHARDS_DIR):
        if d.is_dir():
            for p in d.glob(".*.tmp"):
                p.unlink(missing_ok=True)
                n += 1
    return n


# --------------------------------------------------------------------------------------------
# writer


@dataclass(frozen=True)
class ShardInfo:
    """One shard as the manifest records it."""

    file: str  # relative to the dataset directory, e.g. "shards/part-00000.arrow"
    rows: int
    bytes: int
    sha256: str
    batch_rows: int  # rows per record batch (the last batch may hold fewer)
    compression: str | None
    first_row: int = 0  # global index of the shard's first record (derived, not stored)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("first_row")
        return d


def shard_name(index: int, group: int | None = None) -> str:
    """shards/part-NNNNN.arrow; a shard written by a worker for group G of an ingest plan is
    shards/part-GGGGG-NNNN.arrow (its index within the group), so names sort in record order."""
    if group is None:
        return f"{SHARDS_DIR}/part-{index:05d}.arrow"
    return f"{SHARDS_DIR}/part-{group:05d}-{index:04d}.arrow"


class ShardWriter:
    """Buffers tables and cuts them into shards of about `target_bytes` (uncompressed).

    Shard boundaries depend only on the sequence of rows written and the options, so the same
    rows give byte-identical shards. Each shard is committed atomically when it is cut.
    """

    def __init__(
        self,
        root: str | Path,
        schema: pa.Schema,
        target_bytes: int = DEFAULT_SHARD_BYTES,
        compression: str | None = None,
        start_index: int = 0,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        group: int | None = None,
    ) -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
        if target_bytes <= 0:
            raise ValueError("target_bytes must be positive")
        self.root = Path(root)
        self.schema = schema
        self.target_bytes = int(target_bytes)
        self.compression = compression
        self.batch_bytes = int(batch_bytes)
        self.next_index = start_index
        self.group = group
        self.shards: list[ShardInfo] = []
        self._buffer: list[pa.Table] = []
        self._buffered_bytes = 0
        (self.root / SHARDS_DIR).mkdir(parents=True, exist_ok=True)

    @property
    def buffered_rows(self) -> int:
        return sum(t.num_rows for t in self._buffer)

    def write(self, table: pa.Table) -> list[ShardInfo]:
        """Add rows; returns the shards committed by this call (possibly none)."""
        if not table.schema.equals(self.schema):
            raise ValueError(f"table schema differs from the writer's:\n{table.schema}")
        committed = []
        # Boundaries come from exact per-row sizes, so they fall on the same rows however the
        # caller chunked its writes (a resumed ingest re-feeds a sliced source).
        cum = np.cumsum(row_sizes(table))
        offset, consumed = 0, 0
        while offset < table.num_rows:
            room = self.target_bytes - self._buffered_bytes
            # first row whose cumulative size reaches the room closes the shard
            end = int(np.searchsorted(cum, consumed + room, side="left")) + 1
            end = min(max(end, offset + 1), table.num_rows)
            part = table.slice(offset, end - offset)
            self._buffer.append(part)
            self._buffered_bytes += int(cum[end - 1] - consumed)
            consumed = int(cum[end - 1])
            offset = end
            if self._buffered_bytes >= self.target_bytes:
                committed.append(self.flush())
        return committed

    def flush(self) -> ShardInfo:
        """Commit the buffered rows as one shard (a no-op returning None when empty)."""
        table = pa.concat_tables(self._buffer) if self._buffer else None
        self._buffer, self._buffered_bytes = [], 0
        if table is None or table.num_rows == 0:
            return None  # type: ignore[return-value]
        info = write_shard(
            self.root, self.next_index, table, self.compression, self.batch_bytes, self.group
        )
        self.next_index += 1
        self.shards.append(info)
        return info

    def close(self) -> list[ShardInfo]:
        self.flush()
        return self.shards


def write_shard(
    root: str | Path,
    index: int,
    table: pa.Table,
    compression: str | None = None,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    group: int | None = None,
) -> ShardInfo:
    """Write `table` as shard_name(index, group) atomically and describe it."""
    root = Path(root)
    rel = shard_name(index, group)
    final = root / rel
    final.parent.mkdir(parents=True, exist_ok=True)
    # A compact copy: uniform record batches and no bytes of sliced-away rows, whatever the
    # input chunking, so equal rows give equal files.
    table = table.take(pa.array(np.arange(table.num_rows, dtype=np.int64)))
    row_bytes = max(1, -(-int(row_sizes(table).sum()) // max(1, table.num_rows)))
    batch_rows = max(1, batch_bytes // row_bytes)
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with atomic_target(final) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink:
            with pa.ipc.new_file(sink, table.schema, options=options) as writer:
                for batch in table.to_batches(max_chunksize=batch_rows):
                    writer.write_batch(batch)
        # The bytes are final now; hash them before the rename so the manifest never points
        # at content it did not see.
        digest = sha256_file(tmp)
    return ShardInfo(
        file=rel,
        rows=table.num_rows,
        bytes=final.stat().st_size,
        sha256=digest,
        batch_rows=batch_rows,
        compression=compression,
    )


def write_dataset(
    root: str | Path,
    modality: str,
    schema: pa.Schema,
    records: Iterable[Mapping[str, Any]],
    *,
    options: Mapping[str, Any] | None = None,
    stats: Mapping[str, Any] | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    compression: str | None = None,
    chunk_records: int = 256,
) -> dict[str, Any]:
    """Write records straight to a dataset directory (no Ray): for tests, tools and small data.

    The ingest CLI (pipelines.ingest) is the way to build datasets from raw files; this writes
    the same format from records already in memory. Returns the manifest.
    """
    root = Path(root)
    writer = ShardWriter(root, schema, shard_bytes, compression)
    chunk: list[Mapping[str, Any]] = []
    n = 0
    for rec in records:
        chunk.append(rec)
        if len(chunk) >= chunk_records:
            writer.write(records_to_table(chunk, schema))
            n += len(chunk)
            chunk = []
    if chunk:
        writer.write(records_to_table(chunk, schema))
        n += len(chunk)
    shards = writer.close()
    if stats is not None:
        atomic_write_json(root / STATS_FILE, dict(stats))
    manifest = build_manifest(
        modality=modality,
        schema=schema,
        shards=shards,
        sources=[],
        options=dict(options or {}),
        library_versions=library_versions(),
    )
    commit_manifest(root, manifest)
    return manifest


def library_versions() -> dict[str, str]:
    return {"pyarrow": pa.__version__, "numpy": np.__version__}


def build_manifest(
    *,
    modality: str,
    schema: pa.Schema,
    shards: Sequence[ShardInfo],
    sources: Sequence[Mapping[str, Any]],
    options: Mapping[str, Any],
    library_versions: Mapping[str, str],
    timing: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest dict. Everything but `timing` is a pure function of inputs and options."""
    ok = [s for s in sources if s.get("status") == "ok"]
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "modality": modality,
        "schema": schema_to_json(schema),
        "options": dict(options),
        "library_versions": dict(library_versions),
        "shards": [s.to_json() for s in shards],
        "sources": [dict(s) for s in sources],
        "totals": {
            "records": sum(s.rows for s in shards),
            "shards": len(shards),
            "bytes": sum(s.bytes for s in shards),
            "sources": len(sources),
            "sources_ok": len(ok),
            "sources_quarantined": len(sources) - len(ok),
            "source_bytes": sum(int(s.get("size", 0)) for s in sources),
        },
        "timing": dict(timing or {}),
    }


def commit_manifest(root: str | Path, manifest: Mapping[str, Any]) -> None:
    """Write index.json last: once it is there, the dataset is complete."""
    atomic_write_json(Path(root) / INDEX_FILE, manifest)


# --------------------------------------------------------------------------------------------
# reader


def _safe_shard_path(root: Path, rel: str) -> Path:
    """Resolve a manifest path, refusing anything that points outside the dataset directory."""
    if not isinstance(rel, str) or not rel:
        raise ShardError(f"{root / INDEX_FILE}: shard entry has no file name")
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or rel.startswith(("/", "\\")):
        raise ShardError(f"{root / INDEX_FILE}: shard path {rel!r} leaves the dataset directory")
    full = (root / p).resolve()
    if not full.is_relative_to(root.resolve()):
        raise ShardError(f"{root / INDEX_FILE}: shard path {rel!r} leaves the dataset directory")
    return full


def local_path(location: str | Path, what: str = "dataset") -> Path:
    """`location` as a local path. file:// URLs become their path; any other URL (s3://,
    gs://, hdfs://, http://) is refused with a ShardError: datasets and runs are read and
    written on local (or mounted) filesystems only, and a URL taken as a relative path would
    silently write a local folder named after its scheme."""
    if isinstance(location, Path):
        return location
    scheme, sep, _ = str(location).partition("://")
    if not sep:
        return Path(location)
    if scheme.lower() == "file":
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(str(location))
        if parts.netloc not in ("", "localhost"):
            raise ShardError(f"{location}: file:// URLs with a host ({parts.netloc}) are not local")
        return Path(unquote(parts.path))
    raise ShardError(
        f"{location}: {scheme}:// {what} locations are not supported (only local or mounted "
        "paths); copy the data to a local path first"
    )


def is_remote(location: str | Path) -> bool:
    """Whether `location` is a URL other than file:// (an object store, HDFS, http...)."""
    scheme, sep, _ = str(location).partition("://")
    return bool(sep) and scheme.lower() != "file"


def forge_cache() -> Path:
    """The project's cache directory: $JEPA_FORGE_CACHE, default ~/.cache/jepa-forge."""
    env = os.environ.get("JEPA_FORGE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "jepa-forge"


def _local_root(location: str | Path) -> Path:
    """A dataset location as a local directory: an object-store URL through its verified local
    cache (`pipelines.remote`, imported only then), anything else as `local_path` says."""
    if is_remote(location):
        from pipelines.remote import dataset_dir

        return dataset_dir(location)
    return local_path(location)


def load_manifest(root: str | Path) -> dict[str, Any]:
    root = local_path(root)
    path = root / INDEX_FILE
    if not path.is_file():
        if (root / SHARDS_DIR).is_dir():
            raise ShardError(f"{path}: no manifest; the dataset was never committed (rerun ingest)")
        raise ShardError(f"{root}: not a jepa-forge dataset directory (no {INDEX_FILE})")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ShardError(f"{path}: unreadable manifest ({e})") from e
    if manifest.get("format") != FORMAT_NAME:
        raise ShardError(f"{path}: not a {FORMAT_NAME} manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ShardError(
            f"{path}: format version {version} is not supported (this reader: {FORMAT_VERSION})"
        )
    return manifest


class ShardDataset:
    """Random and sequential access to a dataset directory.

    verify: "first_touch" checks a shard's sha256 the first time it is opened, "all" checks
    every shard now, "none" trusts the files (sizes are still checked).
    Uncompressed shards are memory-mapped; compressed ones are read batch by batch.
    """

    def __init__(self, root: str | Path, verify: str = "first_touch") -> None:
        if verify not in ("first_touch", "all", "none"):
            raise ValueError(f"verify must be 'first_touch', 'all' or 'none', got {verify!r}")
        self.location = str(root)  # as given: a path, or a URL whose local cache is `root`
        self.root = _local_root(root)
        self.manifest = load_manifest(self.root)
        self.verify_mode = verify
        self.shards: list[ShardInfo] = []
        first = 0
        for entry in self.manifest["shards"]:
            info = ShardInfo(
                file=entry["file"],
                rows=int(entry["rows"]),
                bytes=int(entry["bytes"]),
                sha256=entry["sha256"],
                batch_rows=int(entry["batch_rows"]),
                compression=entry.get("compression"),
                first_row=first,
            )
            _safe_shard_path(self.root, info.file)
            self.shards.append(info)
            first += info.rows
        self.num_records = first
        self._starts = [s.first_row for s in self.shards]
        self._verified: set[int] = set()
        self._readers: dict[int, pa.ipc.RecordBatchFileReader] = {}
        self._schema: pa.Schema | None = None
        if verify == "all":
            self.verify()

    # -- metadata
    @property
    def modality(self) -> str:
        return self.manifest["modality"]

    @property
    def schema(self) -> pa.Schema:
        if self._schema is None:
            if not self.shards:
                raise ShardError(f"{self.root}: dataset has no shards")
            self._schema = self._reader(0).schema
        return self._schema

    @property
    def stats(self) -> dict[str, Any]:
        path = self.root / STATS_FILE
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except ValueError as e:
            raise ShardError(f"{path}: unreadable statistics ({e})") from e

    def errors(self) -> list[dict[str, Any]]:
        path = self.root / ERRORS_FILE
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def __len__(self) -> int:
        return self.num_records

    def __repr__(self) -> str:
        return (
            f"ShardDataset({str(self.root)!r}, modality={self.modality!r}, "
            f"records={self.num_records}, shards={len(self.shards)})"
        )

    # -- integrity
    def verify_shard(self, i: int) -> None:
        """Check shard i's existence, size and sha256; raise ShardError naming it."""
        info = self.shards[i]
        path = _safe_shard_path(self.root, info.file)
        if not path.is_file():
            raise ShardError(f"{path}: shard is missing")
        size = path.stat().st_size
        if size != info.bytes:
            raise ShardError(f"{path}: shard is {size} bytes, the manifest says {info.bytes}")
        digest = sha256_file(path)
        if digest != info.sha256:
            raise ShardError(f"{path}: checksum mismatch (shard is corrupt)")
        self._verified.add(i)

    def verify(self) -> None:
        for i in range(len(self.shards)):
            if i not in self._verified:
                self.verify_shard(i)

    # -- access
    def _reader(self, i: int) -> pa.ipc.RecordBatchFileReader:
        r = self._readers.get(i)
        if r is not None:
            return r
        info = self.shards[i]
        path = _safe_shard_path(self.root, info.file)
        if self.verify_mode != "none" and i not in self._verified:
            self.verify_shard(i)
        elif not path.is_file():
            raise ShardError(f"{path}: shard is missing")
        elif path.stat().st_size != info.bytes:
            raise ShardError(
                f"{path}: shard is {path.stat().st_size} bytes, the manifest says {info.bytes}"
            )
        try:
            source = pa.memory_map(str(path)) if info.compression is None else pa.OSFile(str(path))
            r = pa.ipc.open_file(source)
        except (OSError, pa.ArrowInvalid) as e:
            raise ShardError(f"{path}: unreadable shard ({e})") from e
        n = (
            sum(r.get_batch(j).num_rows for j in range(r.num_record_batches))
            if (info.compression is None)
            else None
        )
        if n is not None and n != info.rows:
            raise ShardError(f"{path}: shard holds {n} rows, the manifest says {info.rows}")
        self._readers[i] = r
        return r

    def read_shard(self, i: int, columns: Sequence[str] | None = None) -> pa.Table:
        """Shard i as a table (zero-copy from the memory map when uncompressed)."""
        table = self._reader(i).read_all()
        return table.select(list(columns)) if columns is not None else table

    def iter_batches(
        self, columns: Sequence[str] | None = None, shards: Iterable[int] | None = None
    ) -> Iterator[pa.RecordBatch]:
        """Record batches in storage order (or of the given shards)."""
        for i in range(len(self.shards)) if shards is None else shards:
            r = self._reader(i)
            for j in range(r.num_record_batches):
                b = r.get_batch(j)
                yield b.select(list(columns)) if columns is not None else b

    def locate(self, index: int) -> tuple[int, int]:
        """(shard, row within shard) of global record `index`."""
        if index < 0:
            index += self.num_records
        if not 0 <= index < self.num_records:
            raise IndexError(f"record {index} out of range for {self.num_records} records")
        s = bisect.bisect_right(self._starts, index) - 1
        return s, index - self._starts[s]

    def _row_batch(self, index: int) -> tuple[pa.RecordBatch, int]:
        s, local = self.locate(index)
        info = self.shards[s]
        batch = self._reader(s).get_batch(local // info.batch_rows)
        return batch, local % info.batch_rows

    def __getitem__(self, index: int) -> dict[str, Any]:
        batch, row = self._row_batch(int(index))
        return row_to_record(batch, row)

    def take(self, indices: Sequence[int], columns: Sequence[str] | None = None) -> pa.Table:
        """The given records, in the given order, as one table."""
        pieces = []
        for idx in indices:
            batch, row = self._row_batch(int(idx))
            piece = batch.slice(row, 1)
            pieces.append(piece.select(list(columns)) if columns is not None else piece)
        if not pieces:
            schema = (
                self.schema
                if columns is None
                else pa.schema([self.schema.field(c) for c in columns])
            )
            return schema.empty_table()
        return pa.Table.from_batches(pieces)

    def close(self) -> None:
        self._readers.clear()
