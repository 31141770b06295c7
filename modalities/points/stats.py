"""Point-cloud dataset statistics from the written records: counts, classes, what the files
carried. The points themselves need no normalisation statistics (each record is already in the
unit sphere). Imports numpy and pyarrow."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa


def fit_points_stats(batches: Iterable[pa.RecordBatch]) -> dict[str, Any]:
    """Statistics of a points dataset from its record batches (JSON-serialisable)."""
    labels: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    source_points: list[int] = []
    scales: list[float] = []
    normals = colors = short = 0
    num_points = None
    for batch in batches:
        if batch.num_rows == 0:
            continue
        cols = {name: batch.column(name).to_pylist() for name in (
            "label", "kind", "has_normals", "has_colors", "valid_points", "source_points", "scale"
        )}  # fmt: skip
        if num_points is None:
            num_points = int(batch.schema.field("points").type.shape[0])
        for i in range(batch.num_rows):
            if cols["label"][i] is not None:
                labels[cols["label"][i]] += 1
            kinds[cols["kind"][i]] += 1
            normals += bool(cols["has_normals"][i])
            colors += bool(cols["has_colors"][i])
            short += cols["valid_points"][i] < num_points
            source_points.append(int(cols["source_points"][i]))
            scales.append(float(cols["scale"][i]))
    if not source_points:
        return {"records": 0}
    sp = np.asarray(source_points)
    return {
        "records": len(sp),
        "num_points": num_points,
        "kinds": dict(sorted(kinds.items())),
        "labels": dict(sorted(labels.items())),
        "with_normals": normals,
        "with_colors": colors,
        "fewer_points_than_num_points": int(short),
        "source_points": {
            "min": int(sp.min()),
            "median": float(np.median(sp)),
            "max": int(sp.max()),
        },
        "scale": {
            "min": float(min(scales)),
            "median": float(np.median(scales)),
            "max": float(max(scales)),
        },
    }
