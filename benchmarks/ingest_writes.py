"""Benchmark: who writes the shards (`--write driver` vs `--write workers`), against the real floor.

For each cohort, measured in one run, each as its own process (outputs deleted in between):

  floor          the least work an fMRI ingest needs: inflate every .nii.gz with ISA-L in 2
                 processes (no NIfTI parsing, no ROI averaging, no writing)
  driver         `python -m pipelines.ingest MODALITY --num-cpus 2 --write driver`: a fresh local
                 Ray instance; records come back to the driver, which writes the shards
  workers        the same with `--write workers`: each group's task writes its own shards; the
                 driver receives metadata only
  driver-warm,   the same two joining a Ray instance already running on this machine (`ray start
  workers-warm   --head --num-cpus 2`, started before and stopped after, untimed): no Ray start-up
                 or shut-down in the job

Reports wall seconds, MB/s of input, each run's ratio to the floor, and the driver process's own
peak RSS (getrusage of the ingest process alone: Ray's workers are other processes), which must
not grow with the input when the workers write.

The larger fMRI cohort repeats the generated scans under new names (hard links: the same bytes
read again, no extra disk); every copy is a separate source to the ingest and the floor alike.

    .venv/bin/python benchmarks/ingest_writes.py --fmri-gb 1 8 --eeg-mb 500
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import ingest_eeg  # noqa: E402  (benchmarks/ is on sys.path)
import ingest_fmri  # noqa: E402
from measure import run_measured  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

FLOOR = r"""
import sys
from multiprocessing import Pool
from isal import igzip
def inflate(f):
    with open(f, "rb") as fh:
        return len(igzip.decompress(fh.read()))
with Pool(2) as pool:
    print(sum(pool.imap(inflate, sys.argv[1:], chunksize=1)))
"""

# The ingest CLI in this process, then the process's own peak RSS (children excluded).
DRIVER = r"""
import resource, sys
from pipelines.ingest import main
rc = main(sys.argv[1:])
print(f"driver_peak_rss_mb {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}")
sys.exit(rc)
"""


def scaled_fmri(base: Path, gb: float, root: Path) -> list[Path]:
    """The base cohort's scans repeated as hard links under `root` until `gb` GB."""
    files = sorted(base.rglob("*.nii.gz"))
    size = sum(f.stat().st_size for f in files)
    copies = max(1, -(-int(gb * 1e9) // size))
    marker = root / f".complete-{copies}"
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        for c in range(copies):
            for f in files:
                dest = root / f"copy-{c:03d}" / f.relative_to(base)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.link(f, dest)
        marker.write_text("ok")
    return sorted(root.rglob("*.nii.gz"))


def ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


def measure_cohort(modality: str, inputs: Path, files: list[Path], floor: bool) -> dict:
    py = sys.executable
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    nbytes = sum(f.stat().st_size for f in files)
    print(f"{modality}: {len(files)} files, {nbytes / 1e9:.2f} GB in {inputs}", flush=True)
    results: dict[str, dict] = {}
    tmp = Path(tempfile.mkdtemp(prefix="jf-bench-writes-"))

    def ingest(name: str, write: str, fresh: bool) -> None:
        out = tmp / name
        cmd = [py, "-c", DRIVER, modality, "--input", str(inputs), "--output", str(out)]
        cmd += ["--write", write, "--quiet"] + (["--num-cpus", "2"] if fresh else [])
        r = run_measured(cmd, env)
        lines = r["stdout"].splitlines()
        r["driver_peak_rss_mb"] = float(lines[-1].split()[-1])
        r["summary"] = lines[-2]
        r["output_mb"] = sum(p.stat().st_size for p in (out / "shards").glob("*")) / 1e6
        shutil.rmtree(out)
        results[name] = r

    try:
        if floor:
            results["floor"] = run_measured([py, "-c", FLOOR, *map(str, files)], env)
        ingest("driver", "driver", fresh=True)
        ingest("workers", "workers", fresh=True)
        subprocess.run(
            [ray_cli(), "start", "--head", "--num-cpus", "2", "--include-dashboard=false"],
            env=env,
            check=True,
            capture_output=True,
        )
        try:
            ingest("driver-warm", "driver", fresh=False)
            ingest("workers-warm", "workers", fresh=False)
        finally:
            subprocess.run([ray_cli(), "stop", "--force"], env=env, capture_output=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for name, r in results.items():
        r["mb_per_s"] = nbytes / 1e6 / r["seconds"]
        line = f"  {name:13s} {r['seconds']:7.1f} s {r['mb_per_s']:7.1f} MB/s"
        if "floor" in results:
            r["of_floor"] = results["floor"]["seconds"] / r["seconds"]
            line += f"  {r['of_floor']:5.2f}x the floor"
        if "driver_peak_rss_mb" in r:
            line += f"  driver peak RSS {r['driver_peak_rss_mb']:6.0f} MiB"
            line += f"  output {r['output_mb']:7.1f} MB"
        print(line, flush=True)
    for r in results.values():
        r.pop("stdout", None)
    return {"files": len(files), "input_bytes": nbytes, "runs": results}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--fmri-gb", type=float, nargs="*", default=[1.0, 8.0])
    ap.add_argument("--eeg-mb", type=float, nargs="*", default=[500.0])
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    report: dict[str, dict] = {}
    if args.fmri_gb:
        base = args.cache / "jf-bench-fmri"
        ingest_fmri.make_cohort(base, min(args.fmri_gb), 0)
        for gb in args.fmri_gb:
            if gb == min(args.fmri_gb):
                inputs, files = base, sorted(base.rglob("*.nii.gz"))
            else:
                inputs = args.cache / f"jf-bench-fmri-x{gb:g}"
                files = scaled_fmri(base, gb, inputs)
            report[f"fmri-{gb:g}GB"] = measure_cohort("fmri", inputs, files, floor=True)
    for mb in args.eeg_mb:
        root = args.cache / "jf-bench-eeg"
        files = ingest_eeg.make_cohort(root, mb, 0)
        report[f"eeg-{mb:g}MB"] = measure_cohort("eeg", root, files, floor=False)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
