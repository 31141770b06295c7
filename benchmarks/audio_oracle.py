"""The audio controls' one-number oracles on an ingested dataset (modalities/audio/demo.py).

- labels up / down (`--relation direction`): the sign of `direction_score` (the mean change of
  the spectral centroid one pair-lag later, over frames that hold notes). No fitting.
- labels coupled / independent (`--relation coupling`): `coupling_score` (the share of note
  frames whose fundamental lies `--interval` semitones from the one a pair-lag later) above
  its median over the dataset (the classes are balanced). No labels are used to set it.

    python benchmarks/audio_oracle.py --data DIR [--label label] [--interval 12]

Prints the accuracy and the score's mean per class.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p).resolve() != REPO / "benchmarks"]

from modalities.audio.demo import (  # noqa: E402
    COUPLINGS,
    INTERVAL_SEMITONES,
    coupling_score,
    direction_score,
)
from pipelines.shards import ShardDataset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--label", default="label")
    p.add_argument("--interval", type=float, default=INTERVAL_SEMITONES)
    args = p.parse_args(argv)
    ds = ShardDataset(args.data)
    labels = np.asarray([ds[i][args.label] for i in range(len(ds))])
    coupling = set(labels.tolist()) <= set(COUPLINGS)
    scores = []
    for i in range(len(ds)):
        rec = ds[i]
        if coupling:
            scores.append(coupling_score(rec["mel"], rec["valid_frames"], args.interval))
        else:
            scores.append(direction_score(rec["mel"], rec["valid_frames"]))
    scores = np.asarray(scores)
    if coupling:
        acc = float(np.mean((scores > np.median(scores)) == (labels == "coupled")))
    else:
        acc = float(np.mean((scores > 0) == (labels == "up")))
    means = {str(c): round(float(scores[labels == c].mean()), 3) for c in sorted(set(labels))}
    print(f"oracle {args.label}: accuracy {acc:.3f} over {len(ds)} records; mean score {means}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
