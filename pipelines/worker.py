"""The per-source step that Ray Data runs on workers: read one file, return its records.

Each call gets one source and returns one row: status, reason, and the source's records as an
Arrow IPC stream in a binary column. Packing records into one cell keeps the block schema the
same for good and bad sources, and the driver writes shards in plan order from it.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

import numpy as np
import pyarrow as pa

from modalities import ModalityError, ReadContext, get_modality
from pipelines.shards import records_to_table
from pipelines.sources import local_copy

RESULT_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("exception", pa.string()),
        ("records", pa.int64()),
        ("seconds", pa.float64()),
        ("payload", pa.large_binary()),
        ("node", pa.string()),  # the Ray node that read the source ("" outside Ray)
    ]
)

# How many records to convert to Arrow at a time (bounds peak memory for long sources).
_CHUNK = 64


def full_schema(modality_schema: pa.Schema) -> pa.Schema:
    """The shard schema: framework columns `id` and `source`, then the modality's."""
    return pa.schema([("id", pa.string()), ("source", pa.string()), *modality_schema])


def read_source(
    index: int,
    path: str,
    size: int,
    modality_name: str,
    options: dict[str, Any],
    max_file_bytes: int,
) -> dict[str, Any]:
    """Read one source into an IPC payload; every failure becomes a reasoned error row."""
    t0 = time.perf_counter()
    modality = get_modality(modality_name)
    opts = modality.options_type(**options)
    schema = full_schema(modality.schema(opts))
    try:
        with local_copy(path) as local:
            ctx = ReadContext(
                source=path, local_path=local, size=size, max_file_bytes=max_file_bytes
            )
            sink = pa.BufferOutputStream()
            n = 0
            with pa.ipc.new_stream(sink, schema) as writer:
                chunk: list[dict[str, Any]] = []
                for rec in modality.read(ctx, opts):
                    chunk.append({"id": f"{path}#{n}", "source": path, **rec})
                    n += 1
                    if len(chunk) >= _CHUNK:
                        writer.write_table(records_to_table(chunk, schema))
                        chunk = []
                if chunk:
                    writer.write_table(records_to_table(chunk, schema))
            if n == 0:
                raise ModalityError("the file yielded no records")
        return _row(index, "ok", "", "", n, t0, sink.getvalue().to_pybytes())
    except ModalityError as e:
        return _row(index, "quarantined", str(e), type(e).__name__, 0, t0, b"")
    except MemoryError:
        return _row(index, "quarantined", "out of memory while reading", "MemoryError", 0, t0, b"")
    except Exception as e:  # noqa: BLE001 - one bad file must never sink the run
        tb = traceback.extract_tb(e.__traceback__)
        where = f" at {tb[-1].filename}:{tb[-1].lineno}" if tb else ""
        reason = f"unexpected {type(e).__name__}: {e}{where}"
        return _row(index, "quarantined", reason, type(e).__name__, 0, t0, b"")


def _row(index, status, reason, exc, n, t0, payload) -> dict[str, Any]:
    return {
        "index": index,
        "status": status,
        "reason": reason,
        "exception": exc,
        "records": n,
        "seconds": time.perf_counter() - t0,
        "payload": payload,
    }


def read_batch(
    batch: dict[str, np.ndarray],
    modality_name: str,
    options: dict[str, Any],
    max_file_bytes: int,
) -> pa.Table:
    """Ray Data `map_batches` entry point: one result row per source in the batch, with the
    id of the Ray node that read it."""
    node = node_id()
    rows = [
        read_source(
            int(batch["index"][i]),
            str(batch["path"][i]),
            int(batch["size"][i]),
            modality_name,
            options,
            max_file_bytes,
        )
        for i in range(len(batch["index"]))
    ]
    return pa.Table.from_pylist([{**r, "node": node} for r in rows], schema=RESULT_SCHEMA)


def node_id() -> str:
    """This worker's Ray node id, "" when not running under Ray."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    except ImportError:
        return ""


def payload_table(payload: bytes) -> pa.Table:
    """The records a worker packed, as one table."""
    return pa.ipc.open_stream(pa.py_buffer(payload)).read_all()
