"""A test modality on the generic grid pieces, and a writer of small synthetic grid datasets.

Subprocess runs reach the modality as `data.modality=grid_testing:MODALITY` with this directory
on PYTHONPATH. Datasets are written with the real shard writer (pipelines.shards).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from modalities.base import Modality
from modalities.grid import GridPieces
from pipelines.shards import write_dataset

MODALITY_SPEC = "grid_testing:MODALITY"


class GridTestModality(GridPieces, Modality):
    name = "grid"
    extensions = ()
    options_type = dict
    grid_column = "bold"
    row_center_stat = "roi_median"
    row_scale_stat = "roi_iqr"


MODALITY = GridTestModality()


class OtherGridModality(GridTestModality):
    """A second modality (its own manifest name, embedder and masker) for runs that mix
    modalities on one trunk."""

    name = "grid2"


MODALITY2 = OtherGridModality()
#: `data.modality` of a run over both test modalities
BOTH_SPEC = "grid=grid_testing:MODALITY,grid2=grid_testing:MODALITY2"


def grid_schema(rows: int, frames: int) -> pa.Schema:
    return pa.schema(
        [
            ("id", pa.string()),
            ("subject", pa.string()),
            ("label", pa.int32()),
            ("bold", pa.fixed_shape_tensor(pa.float32(), [rows, frames])),
        ]
    )


def grid_records(n: int, rows: int, frames: int, seed: int, nan_at: int | None = None):
    """Two classes of structured signals: class c has ROI frequencies shifted by c, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames, dtype=np.float32)
    base_freq = rng.uniform(0.05, 0.3, size=rows).astype(np.float32)
    for i in range(n):
        label = i % 2
        phase = rng.uniform(0, 2 * np.pi, size=(rows, 1)).astype(np.float32)
        freq = base_freq[:, None] * (1.0 + 0.5 * label)
        bold = np.sin(freq * t[None, :] + phase) + 0.3 * rng.standard_normal((rows, frames))
        if nan_at is not None and i == nan_at:
            bold[:] = np.nan
        yield {
            "id": f"rec-{i:05d}",
            "subject": f"sub-{i % 7:02d}",
            "label": label,
            "bold": bold.astype(np.float32),
        }


def write_grid_dataset(
    root: str | Path,
    n: int = 64,
    rows: int = 8,
    frames: int = 64,
    seed: int = 0,
    shard_bytes: int = 32 * 1024,
    nan_at: int | None = None,
    modality: str = "grid",
) -> Path:
    stats = {"roi_median": [0.0] * rows, "roi_iqr": [1.0] * rows}
    write_dataset(
        root,
        modality,
        grid_schema(rows, frames),
        grid_records(n, rows, frames, seed, nan_at),
        stats=stats,
        shard_bytes=shard_bytes,
        chunk_records=16,
    )
    return Path(root)
