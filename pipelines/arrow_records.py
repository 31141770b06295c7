"""Records <-> Arrow: dict records with numpy tensors to tables with fixed-shape tensor columns,
and back; row sizes for deterministic shard cuts; the manifest's schema description.

Part of the shard format's floor (`pipelines.shards`): imports only numpy and pyarrow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa


def is_tensor_type(t: pa.DataType) -> bool:
    return isinstance(t, pa.FixedShapeTensorType)


def row_sizes(table: pa.Table) -> np.ndarray:
    """Bytes each row occupies in Arrow buffers (data + offsets), exact for flat columns.

    Used to cut shards at deterministic rows; nested columns fall back to their average.
    """
    import pyarrow.compute as pc

    sizes = np.zeros(table.num_rows, dtype=np.int64)
    for col in table.columns:
        t = col.type
        storage = t.storage_type if isinstance(t, pa.ExtensionType) else t
        if isinstance(storage, pa.FixedSizeListType) and pa.types.is_primitive(storage.value_type):
            sizes += storage.list_size * storage.value_type.bit_width // 8
        elif pa.types.is_primitive(storage) and storage.bit_width >= 8:
            sizes += storage.bit_width // 8
        elif pa.types.is_string(storage) or pa.types.is_binary(storage):
            sizes += 4 + pc.binary_length(col).fill_null(0).to_numpy(zero_copy_only=False)
        elif pa.types.is_large_string(storage) or pa.types.is_large_binary(storage):
            sizes += 8 + pc.binary_length(col).fill_null(0).to_numpy(zero_copy_only=False)
        else:
            sizes += max(1, col.nbytes // max(1, len(col)))
    return sizes


def records_to_table(records: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Build a table from record dicts; numpy arrays go into fixed-shape tensor columns.

    Raises ValueError naming the field when a record lacks it or a tensor has the wrong shape.
    """
    columns = []
    for field in schema:
        try:
            values = [r[field.name] for r in records]
        except KeyError:
            raise ValueError(f"record lacks field {field.name!r}") from None
        if is_tensor_type(field.type):
            shape = tuple(field.type.shape)
            dtype = field.type.value_type.to_pandas_dtype()
            if values:
                arrs = []
                for v in values:
                    a = np.asarray(v, dtype=dtype)
                    if a.shape != shape:
                        raise ValueError(
                            f"field {field.name!r}: tensor of shape {a.shape}, schema says {shape}"
                        )
                    arrs.append(a)
                stacked = np.ascontiguousarray(np.stack(arrs))
            else:
                stacked = np.empty((0, *shape), dtype=dtype)
            storage = pa.FixedSizeListArray.from_arrays(
                pa.array(stacked.reshape(-1), type=field.type.value_type), int(np.prod(shape))
            )
            columns.append(pa.ExtensionArray.from_storage(field.type, storage))
        else:
            columns.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def tensor_column_to_numpy(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A fixed-shape tensor column as one numpy array [rows, *shape] (zero-copy when possible)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if not is_tensor_type(column.type):
        raise TypeError(f"not a fixed-shape tensor column: {column.type}")
    return column.to_numpy_ndarray()


def row_to_record(batch: pa.RecordBatch | pa.Table, row: int) -> dict[str, Any]:
    """One row as a dict: tensor columns become numpy arrays, others Python values."""
    out: dict[str, Any] = {}
    for name, col in zip(batch.schema.names, batch.columns, strict=True):
        if is_tensor_type(col.type):
            cell = col.slice(row, 1)
            out[name] = tensor_column_to_numpy(cell)[0]
        else:
            out[name] = col[row].as_py()
    return out


def schema_to_json(schema: pa.Schema) -> dict[str, Any]:
    """A readable description of a schema for the manifest (the shards carry the exact one)."""
    fields = []
    for f in schema:
        d: dict[str, Any] = {"name": f.name, "type": str(f.type), "nullable": f.nullable}
        if is_tensor_type(f.type):
            d["type"] = "arrow.fixed_shape_tensor"
            d["value_type"] = str(f.type.value_type)
            d["shape"] = list(f.type.shape)
        fields.append(d)
    return {"fields": fields}
