"""Benchmark: `pipelines.ingest eeg` (Ray Data, 2 CPUs) vs single-process loops, on EDF.

On one synthetic cohort of >= 500 MB of EDF (hour-long 21-channel recordings at 256 Hz from
modalities.eeg.demo), measured in one run, each as its own process tree:

  (a)  ingest     `python -m pipelines.ingest eeg --num-cpus 2` (Ray Data, 2 CPUs; default
                  options: 10-20 channels, 128 Hz, 0.5 Hz high-pass, 16 s windows), including
                  Ray's start-up and the dataset statistics
  (b)  same-code  one process running our reader, shard writer and statistics with no Ray: what
                  the parallel framework adds (its ceiling on 2 cores is 2x minus Ray's fixed
                  start-up)
  (c)  mne-loop   the loop a user writes today, one process: mne.io.read_raw_edf(preload=True),
                  pick the 19 10-20 channels, raw.resample(128), raw.filter(0.5, None), cut 16 s
                  windows, write Arrow IPC with pyarrow

Reports wall seconds, MB/s of EDF input, the ratios, and the peak RSS of each whole process tree
(sampled every 0.1 s). Each output is deleted before the next run starts. Results go to stdout
and, with --json, to a file; docs/benchmarks.md records them with the exact command.

    .venv/bin/python benchmarks/ingest_eeg.py --mb 500
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from measure import run_suite, same_code_command, speedups  # noqa: E402  (benchmarks/ is on sys.path)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: One recording: an hour at 256 Hz, 19 EEG + EOG + ECG channels (~39 MB of EDF).
RECORDING_S = 3600.0


def make_cohort(root: Path, mb: float, seed: int) -> list[Path]:
    """Generate (or reuse) EDF recordings adding up to at least `mb` MB."""
    sys.path.insert(0, str(REPO))
    from modalities.eeg.demo import generate_cohort

    marker = root / f".complete-{mb}-{seed}"
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        total, n = 0, 0
        while total < mb * 1e6:
            sub = root / f"batch-{n:03d}"
            paths = generate_cohort(
                sub, 2, seed=seed * 1000 + n, duration_s=RECORDING_S, formats=("edf",)
            )
            total += sum(os.path.getsize(p) for p in paths)
            n += 1
            print(f"  generated {total / 1e6:.0f} MB", file=sys.stderr, flush=True)
        marker.write_text("ok")
    return sorted(root.rglob("*.edf"))


MNE_LOOP = r"""
import sys, pathlib, numpy as np, pyarrow as pa, mne
out, files = pathlib.Path(sys.argv[1]), sys.argv[2:]
names = ["Fp1", "Fp2", "F7", "F3", "Fz", "F4", "F8", "T3", "C3", "Cz", "C4", "T4", "T5", "P3",
         "Pz", "P4", "T6", "O1", "O2"]
out.mkdir(parents=True)
window = 16 * 128
writer = None
for f in files:
    raw = mne.io.read_raw_edf(f, preload=True, verbose="error")
    raw.pick([f"EEG {n.upper()}-REF" for n in names])
    raw.resample(128, verbose="error")
    raw.filter(0.5, None, verbose="error")
    x = (raw.get_data() * 1e6).astype(np.float32)
    rows = []
    for start in range(0, x.shape[1] - window + 1, window):
        rows.append({"source": f, "window_start": start,
                     "eeg": np.ascontiguousarray(x[:, start:start + window]).ravel()})
    table = pa.table({"source": [r["source"] for r in rows],
                      "window_start": [r["window_start"] for r in rows],
                      "eeg": pa.FixedSizeListArray.from_arrays(
                          np.concatenate([r["eeg"] for r in rows]), 19 * window)})
    if writer is None:
        writer = pa.ipc.new_file(str(out / "part-0.arrow"), table.schema)
    writer.write_table(table)
writer.close()
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mb", type=float, default=500.0, help="cohort size in MB of EDF")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cohort", type=Path, default=Path(tempfile.gettempdir()) / "jf-bench-eeg")
    ap.add_argument("--only", nargs="*", default=None, help="subset of: ingest same-code mne-loop")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    files = make_cohort(args.cohort, args.mb, args.seed)
    nbytes = sum(f.stat().st_size for f in files)
    print(f"cohort: {len(files)} EDF recordings, {nbytes / 1e6:.0f} MB in {args.cohort}")
    print(f"load average before: {os.getloadavg()[0]:.2f} (1 min), cpus: {os.cpu_count()}")
    py = sys.executable
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = {
        "ingest": lambda out: [py, "-m", "pipelines.ingest", "eeg", "--input", str(args.cohort),
                               "--output", out, "--num-cpus", "2", "--quiet"],
        "same-code": lambda out: same_code_command(py, "eeg", out, files),
        "mne-loop": lambda out: [py, "-c", MNE_LOOP, out, *map(str, files)],
    }  # fmt: skip
    results = run_suite(runs, env, nbytes, args.only)
    ratios = speedups(results, ("ingest",), ("same-code", "mne-loop"))
    if "ingest" in results:
        print(f"ingest summary: {results['ingest']['stdout']}")
    if args.json:
        payload = {"files": len(files), "bytes": nbytes, "results": results, "speedups": ratios,
                   "cpus": os.cpu_count()}  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
