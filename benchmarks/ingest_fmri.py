"""Benchmark: `pipelines.ingest fmri` vs a plain single-process loop vs the decode floor.

On one synthetic cohort of >= 1 GB of .nii.gz, measured in one run, each as its own process tree:

  (a)  ingest     `python -m pipelines.ingest fmri --num-cpus 2` (Ray Data, 2 CPUs)
  (b)  loop       the loop a user writes today, one process: nibabel.load, nilearn's
                  NiftiLabelsMasker (same atlas, linear detrend, z-scoring), cut 160-frame
                  windows, write Arrow IPC with pyarrow
  (b') same-code  one process running our reader code and shard writer with no Ray: isolates
                  what the parallel framework adds (its ceiling on 2 cores is 2x minus Ray's
                  fixed start-up)
  (c)  floor      two processes: nibabel.load + get_fdata() of every file, nothing else

Reports wall seconds, MB/s of .nii.gz input, the ratios, and the peak RSS of each whole process
tree (sampled every 0.1 s, summed over the tree). Results go to stdout and, with --json, to a
file; docs/benchmarks.md records them with the exact command.

    .venv/bin/python benchmarks/ingest_fmri.py --gb 1.0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from measure import run_measured  # noqa: E402  (benchmarks/ is on sys.path)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def make_cohort(root: Path, gb: float, seed: int) -> list[Path]:
    """Generate (or reuse) a cohort whose .nii.gz files add up to at least `gb` GB."""
    from modalities.fmri import generate_cohort

    marker = root / f".complete-{gb}-{seed}"
    if not marker.exists():
        root.mkdir(parents=True, exist_ok=True)
        total, n = 0, 0
        while total < gb * 1e9:
            sub = root / f"batch-{n:03d}"
            generate_cohort(sub, n_subjects=4, seed=seed * 1000 + n, n_frames=480, voxel_mm=3.0)
            total += sum(p.stat().st_size for p in sub.rglob("*.nii.gz"))
            n += 1
            print(f"  generated {total / 1e9:.2f} GB", file=sys.stderr, flush=True)
        marker.write_text("ok")
    return sorted(root.rglob("*.nii.gz"))


USER_LOOP = r"""
import sys, pathlib, numpy as np, nibabel as nib, pyarrow as pa
from nilearn.maskers import NiftiLabelsMasker
from modalities.fmri import DEFAULT_ATLAS_PATH
out, files = pathlib.Path(sys.argv[1]), sys.argv[2:]
masker = NiftiLabelsMasker(labels_img=str(DEFAULT_ATLAS_PATH), detrend=True,
                           standardize="zscore_sample", resampling_target="data")
window, batches = 160, []
for f in files:
    ts = masker.fit_transform(nib.load(f)).astype(np.float32)  # [time, rois]
    for start in range(0, ts.shape[0] - window + 1, window):
        x = np.ascontiguousarray(ts[start:start + window].T)
        batches.append({"source": f, "window_start": start, "bold": x.ravel().tolist()})
out.mkdir(parents=True)
table = pa.Table.from_pylist(batches)
with pa.ipc.new_file(str(out / "part-0.arrow"), table.schema) as w:
    w.write_table(table)
"""

LOOP = r"""
import sys, pathlib
from modalities import ReadContext, get_modality
from pipelines.shards import ShardWriter, records_to_table
from pipelines.worker import full_schema
files, out = sys.argv[2:], pathlib.Path(sys.argv[1])
m = get_modality("fmri"); opts = m.options_type()
schema = full_schema(m.schema(opts))
w = ShardWriter(out, schema)
for f in files:
    ctx = ReadContext(source=f, local_path=f, size=pathlib.Path(f).stat().st_size,
                      max_file_bytes=16 * 2**30)
    recs = [{"id": f"{f}#{i}", "source": f, **r} for i, r in enumerate(m.read(ctx, opts))]
    w.write(records_to_table(recs, schema))
w.close()
"""

FLOOR = r"""
import sys
from multiprocessing import Pool
import nibabel as nib
def decode(f):
    return nib.load(f).get_fdata().shape
with Pool(2) as pool:
    list(pool.imap(decode, sys.argv[1:], chunksize=1))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.0, help="cohort size in GB of .nii.gz")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cohort", type=Path, default=Path(tempfile.gettempdir()) / "jf-bench-fmri")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    files = make_cohort(args.cohort, args.gb, args.seed)
    nbytes = sum(f.stat().st_size for f in files)
    print(f"cohort: {len(files)} scans, {nbytes / 1e9:.2f} GB .nii.gz in {args.cohort}")
    py = sys.executable
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["ingest"] = run_measured(
            [
                py,
                "-m",
                "pipelines.ingest",
                "fmri",
                "--input",
                str(args.cohort),
                "--output",
                f"{tmp}/ingest",
                "--num-cpus",
                "2",
                "--quiet",
            ],
            env,
        )
        results["loop"] = run_measured([py, "-c", USER_LOOP, f"{tmp}/user", *map(str, files)], env)
        results["same-code"] = run_measured([py, "-c", LOOP, f"{tmp}/loop", *map(str, files)], env)
        results["floor"] = run_measured([py, "-c", FLOOR, *map(str, files)], env)
    for name, r in results.items():
        r["mb_per_s"] = nbytes / 1e6 / r["seconds"]
        print(
            f"{name:9s} {r['seconds']:8.1f} s {r['mb_per_s']:8.1f} MB/s "
            f"peak RSS {r['peak_rss_mb']:8.0f} MiB"
        )
    speedup = results["loop"]["seconds"] / results["ingest"]["seconds"]
    same = results["same-code"]["seconds"] / results["ingest"]["seconds"]
    of_floor = results["floor"]["seconds"] / results["ingest"]["seconds"]
    print(f"ingest vs loop (nilearn masker): {speedup:.2f}x faster (target >= 1.6x)")
    print(f"ingest vs same code in one process: {same:.2f}x faster")
    print(f"ingest vs decode floor: {of_floor:.2f}x the floor's speed (target >= 0.8x)")
    print(f"ingest summary: {results['ingest']['stdout']}")
    if args.json:
        payload = {
            "files": len(files),
            "bytes": nbytes,
            "results": results,
            "speedup_vs_loop": speedup,
            "speedup_vs_same_code": same,
            "fraction_of_floor": of_floor,
            "cpus": os.cpu_count(),
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
