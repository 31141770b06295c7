"""EEG dataset statistics: per-channel robust scaling, the channel set with positions, notes.

`fit_eeg_stats` streams the written record batches once. Robust scaling (median / IQR per
channel, over the windows where the channel is present) is estimated from a deterministic
subsample: a fixed number of evenly spaced samples per channel per window, halved whenever the
kept sample grows past `MAX_KEPT` values per channel, so memory stays bounded on any dataset size
and the result depends only on the data. Imports numpy, pyarrow and pipelines.shards.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.shards import tensor_column_to_numpy

#: Evenly spaced samples kept per channel per window before any halving.
SAMPLES_PER_WINDOW = 64
#: At most this many values per channel are kept for the quantiles.
MAX_KEPT = 1 << 20


class _Subsample:
    """Per-channel values of windows whose index is a multiple of `step`; halves when too large."""

    def __init__(self, n_channels: int) -> None:
        self.values: list[list[np.ndarray]] = [[] for _ in range(n_channels)]  # [w, S] blocks
        self.windows: list[list[np.ndarray]] = [[] for _ in range(n_channels)]  # window indices
        self.counts = np.zeros(n_channels, dtype=np.int64)
        self.step = 1
        self.seen = 0  # windows seen, so what is kept does not depend on the batching

    def add(self, eeg: np.ndarray, mask: np.ndarray) -> None:
        n, _, t = eeg.shape
        cols = np.linspace(0, t - 1, SAMPLES_PER_WINDOW).round().astype(np.int64)
        index = np.arange(self.seen, self.seen + n)
        self.seen += n
        keep = index % self.step == 0
        picked = eeg[keep][:, :, cols]  # [w, C, SAMPLES_PER_WINDOW]
        present = mask[keep].astype(bool)
        for c in range(len(self.values)):
            rows = present[:, c]
            if rows.any():
                self.values[c].append(picked[rows, c].astype(np.float32))
                self.windows[c].append(index[keep][rows])
                self.counts[c] += int(rows.sum()) * SAMPLES_PER_WINDOW
        while self.counts.max() > MAX_KEPT:
            self._halve()

    def _halve(self) -> None:
        self.step *= 2
        for c in range(len(self.values)):
            if self.values[c]:
                v, w = np.concatenate(self.values[c]), np.concatenate(self.windows[c])
                keep = w % self.step == 0
                self.values[c], self.windows[c] = [v[keep]], [w[keep]]
                self.counts[c] = v[keep].size

    def quantiles(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        med = np.zeros(len(self.values))
        iqr = np.ones(len(self.values))
        for c, parts in enumerate(self.values):
            if parts:
                q = np.quantile(np.concatenate(parts).ravel(), [0.25, 0.5, 0.75])
                med[c] = q[1]
                # A channel with no spread gets IQR 1, so scaling leaves it unchanged.
                iqr[c] = q[2] - q[0] if q[2] > q[0] else 1.0
        return med, iqr, self.counts.copy()


def fit_eeg_stats(batches: Iterable[pa.RecordBatch]) -> dict[str, Any]:
    """Statistics of an EEG dataset from its record batches (JSON-serialisable)."""
    channels: list[str] | None = None
    sample: _Subsample | None = None
    pos_sum: np.ndarray | None = None
    pos_n: np.ndarray | None = None
    windows = 0
    present = None
    dropped_by_source: dict[str, list[str]] = {}
    bad: Counter[str] = Counter()
    labels: Counter[str] = Counter()
    subjects: set[str] = set()
    sfreq, n_samples = None, None
    for batch in batches:
        if batch.num_rows == 0:
            continue
        eeg = tensor_column_to_numpy(batch.column("eeg"))
        mask = tensor_column_to_numpy(batch.column("channel_mask"))
        pos = tensor_column_to_numpy(batch.column("positions")).astype(np.float64)
        if channels is None:
            channels = batch.column("channels")[0].as_py()
            sample = _Subsample(len(channels))
            pos_sum = np.zeros((len(channels), 3))
            pos_n = np.zeros(len(channels), dtype=np.int64)
            present = np.zeros(len(channels), dtype=np.int64)
            sfreq = float(batch.column("sfreq")[0].as_py())
            n_samples = int(eeg.shape[2])
        sample.add(eeg, mask)
        windows += batch.num_rows
        present += mask.astype(bool).sum(axis=0)
        finite = np.isfinite(pos).all(axis=2)
        for row in np.where(finite[..., None], pos, 0.0):  # record order, whatever the batches
            pos_sum += row
        pos_n += finite.sum(axis=0)
        for i, src in enumerate(batch.column("source").to_pylist()):
            labels_i = batch.column("label")[i].as_py()
            if labels_i is not None:
                labels[labels_i] += 1
            subjects.add(batch.column("subject")[i].as_py())
            bad.update(batch.column("bad_channels")[i].as_py())
            if src not in dropped_by_source:  # the same for every window of a source
                dropped_by_source[src] = batch.column("dropped_channels")[i].as_py()
    if channels is None:
        return {"n_windows": 0}
    median, iqr, kept = sample.quantiles()
    dropped = Counter(name for names in dropped_by_source.values() for name in names)
    mean_pos = [
        [float(v) for v in pos_sum[c] / pos_n[c]] if pos_n[c] else None
        for c in range(len(channels))
    ]
    return {
        "n_windows": windows,
        "n_subjects": len(subjects),
        "sfreq": sfreq,
        "window_samples": n_samples,
        "channels": channels,
        # Mean over windows of each channel's position (a recording's own montage or the
        # standard one); metres, MNE head frame; null where no window has a position.
        "positions": mean_pos,
        "channel_windows": [int(v) for v in present],
        "channel_median": [float(v) for v in median],
        "channel_iqr": [float(v) for v in iqr],
        "robust_sample_values": [int(v) for v in kept],
        "unpositioned_channels": [
            ch for ch, p in zip(channels, mean_pos, strict=True) if p is None
        ],
        # Channels of recordings outside the set: name -> number of sources that had it (what
        # the fixed channel set left out).
        "dropped_channels": dict(sorted(dropped.items())),
        "bad_channel_windows": dict(sorted(bad.items())),
        "labels": dict(sorted(labels.items())),
    }
