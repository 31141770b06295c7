"""Audio dataset statistics: the log-mel mean and standard deviation over real frames.

AudioMAE and A-JEPA normalise their inputs as (x - mean) / (2 std) with one mean and std over the
whole dataset; `fit_audio_stats` computes them (and per-mel-bin ones, for inspection) in one pass
over the written records, in float64 sums, counting only the `valid_frames` of each segment (the
padding of the last segment is not data). Imports numpy, pyarrow and pipelines.shards.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.shards import tensor_column_to_numpy


def fit_audio_stats(batches: Iterable[pa.RecordBatch]) -> dict[str, Any]:
    """Statistics of an audio dataset from its record batches (JSON-serialisable)."""
    s1 = s2 = None
    frames = 0
    segments = 0
    seconds = 0.0
    labels: Counter[str] = Counter()
    sources: set[str] = set()
    rates: Counter[int] = Counter()
    sample_rate = None
    for batch in batches:
        if batch.num_rows == 0:
            continue
        mel = tensor_column_to_numpy(batch.column("mel"))  # [B, M, F] float16, a view of the shard
        valid = np.asarray(batch.column("valid_frames").to_numpy(zero_copy_only=False))
        if s1 is None:
            s1 = np.zeros(mel.shape[1])
            s2 = np.zeros(mel.shape[1])
            sample_rate = int(batch.column("sample_rate")[0].as_py())
        for i in range(len(mel)):  # one segment at a time: no batch-sized float64 copies
            x = mel[i, :, : int(valid[i])].astype(np.float32)
            s1 += x.sum(axis=1, dtype=np.float64)
            s2 += np.einsum("mf,mf->m", x, x, dtype=np.float64)
        frames += int(valid.sum())
        segments += batch.num_rows
        seconds += float(valid.sum()) * 0.010
        for i, src in enumerate(batch.column("source").to_pylist()):
            lab = batch.column("label")[i].as_py()
            if lab is not None:
                labels[lab] += 1
            if src not in sources:
                sources.add(src)
                rates[int(batch.column("source_sample_rate")[i].as_py())] += 1
    if s1 is None or frames == 0:
        return {"segments": 0}
    bin_mean = s1 / frames
    bin_std = np.sqrt(np.maximum(s2 / frames - bin_mean**2, 0.0))
    mean = float(s1.sum() / (frames * len(s1)))
    std = float(np.sqrt(max(s2.sum() / (frames * len(s1)) - mean**2, 0.0)))
    return {
        "sample_rate": sample_rate,
        "n_mels": int(len(s1)),
        "segments": segments,
        "files": len(sources),
        "frames": frames,
        "hours": round(seconds / 3600.0, 4),
        "mean": mean,
        "std": std,
        "bin_mean": [round(float(v), 5) for v in bin_mean],
        "bin_std": [round(float(v), 5) for v in bin_std],
        "labels": dict(sorted(labels.items())),
        "source_sample_rates": {str(k): v for k, v in sorted(rates.items())},
    }
