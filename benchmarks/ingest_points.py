"""Benchmark: `pipelines.ingest points` (Ray Data, 2 CPUs) vs single-process loops, on PLY.

On one synthetic cohort of >= 500 MB of binary PLY (two thirds scans: clouds of 150-300 k points
with normals, sampled from modalities.points.demo's objects; one third meshes: the same objects
subdivided to 100-400 k triangles), measured in one run, each as its own process tree:

  (a)  ingest        `python -m pipelines.ingest points --num-cpus 2` (default options: 8192
                     points, farthest-point subsampling by QuickFPS, uniform mesh sampling),
                     including Ray's start-up and the dataset statistics
  (b)  same-code     one process running our reader, shard writer and statistics with no Ray
                     (ingest / same-code is what the two workers add)
  (c)  open3d-loop   the loop a user writes today, one process: Open3D reads each file
                     (read_point_cloud, or read_triangle_mesh and sample_points_uniformly for
                     meshes), farthest_point_down_sample to 8192, centre and scale to the unit
                     sphere, float32 points written as Arrow IPC (the same selection as the
                     ingest's QuickFPS but for the first point: exact farthest-point sampling)
  (d)  read-floor    Open3D reading alone (no sampling) in 2 processes: the least work any
                     ingest of these files does
  (e)  ingest-warm   (a) against a Ray instance already running (`ray start --head --num-cpus
                     2` before the clock starts, `--address auto`)

Reports wall seconds, MB/s of PLY input, the ratios and the peak RSS of each whole process
tree (sampled every 0.1 s). docs/benchmarks.md records them with the exact command.

    .venv/bin/python benchmarks/ingest_points.py --mb 500
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# benchmarks/kernels.py would shadow the `kernels` package: import measure, then drop this folder
sys.path.insert(0, str(HERE))
from measure import run_suite, same_code_command, speedups  # noqa: E402

sys.path.remove(str(HERE))


def make_cohort(root: Path, mb: float, seed: int) -> list[Path]:
    """Generate (or reuse) binary PLY scans and meshes adding up to at least `mb` MB."""
    sys.path.insert(0, str(REPO))
    import numpy as np
    import open3d as o3d

    from modalities.points.demo import ARRANGEMENTS, PARTS, build_mesh

    marker = root / f".complete-{mb}-{seed}"
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        total, n = 0, 0
        while total < mb * 1e6:
            rng = np.random.default_rng([seed, n])
            mesh, _ = build_mesh(rng, PARTS[n % 4], ARRANGEMENTS[n % 2])
            mesh.compute_vertex_normals()
            if n % 3 == 2:
                # 100-400 k triangles, whatever the part
                k = max(0, int(np.ceil(np.log(100_000 / len(mesh.triangles)) / np.log(4))))
                mesh = mesh.subdivide_midpoint(k)
                mesh.compute_vertex_normals()
                path = root / f"mesh-{n:04d}.ply"
                ok = o3d.io.write_triangle_mesh(str(path), mesh, write_ascii=False)
            else:
                o3d.utility.random.seed(n)
                cloud = mesh.sample_points_uniformly(int(rng.integers(150_000, 300_001)))
                path = root / f"scan-{n:04d}.ply"
                ok = o3d.io.write_point_cloud(str(path), cloud, write_ascii=False)
            if not ok:
                raise SystemExit(f"could not write {path}")
            total += path.stat().st_size
            n += 1
            if n % 10 == 0:
                print(f"  generated {total / 1e6:.0f} MB", file=sys.stderr, flush=True)
        marker.write_text("ok")
    return sorted(root.glob("*.ply"))


OPEN3D_LOOP = r"""
import sys, pathlib, numpy as np, pyarrow as pa, open3d as o3d
out, files = pathlib.Path(sys.argv[1]), sys.argv[2:]
out.mkdir(parents=True)
n = 8192
writer = None
for f in files:
    mesh = o3d.io.read_triangle_mesh(f)
    if len(mesh.triangles):
        pc = mesh.sample_points_uniformly(n)
    else:
        pc = o3d.io.read_point_cloud(f)
        if len(pc.points) > n:
            pc = pc.farthest_point_down_sample(n)
    x = np.asarray(pc.points)
    c = x.mean(axis=0)
    x = x - c
    s = np.sqrt((x * x).sum(axis=1).max())
    pts = (x / s).astype(np.float32)
    table = pa.table({"source": [f], "scale": [s],
                      "points": pa.FixedSizeListArray.from_arrays(pts.ravel(), pts.size)})
    if writer is None:
        writer = pa.ipc.new_file(str(out / "part-0.arrow"), table.schema)
    writer.write_table(table)
writer.close()
"""

READ_FLOOR = r"""
import sys
from multiprocessing import Pool
import open3d as o3d
def points(f):
    if f.split("/")[-1].startswith("mesh"):
        return len(o3d.io.read_triangle_mesh(f).vertices)
    return len(o3d.io.read_point_cloud(f).points)
if __name__ == "__main__":
    with Pool(2) as pool:
        print(sum(pool.map(points, sys.argv[2:], chunksize=1)))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mb", type=float, default=500.0, help="cohort size in MB of PLY")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cohort", type=Path, default=Path(tempfile.gettempdir()) / "jf-bench-points")
    ap.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="subset of: ingest same-code open3d-loop read-floor ingest-warm",
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    files = make_cohort(args.cohort, args.mb, args.seed)
    nbytes = sum(f.stat().st_size for f in files)
    meshes = sum(f.name.startswith("mesh") for f in files)
    print(f"cohort: {len(files)} PLY files ({meshes} meshes), {nbytes / 1e6:.0f} MB")
    print(f"load average before: {os.getloadavg()[0]:.2f} (1 min), cpus: {os.cpu_count()}")
    py = sys.executable
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = {
        "ingest": lambda out: [py, "-m", "pipelines.ingest", "points", "--input",
                               str(args.cohort), "--output", out, "--num-cpus", "2", "--quiet"],
        "same-code": lambda out: same_code_command(py, "points", out, files),
        "open3d-loop": lambda out: [py, "-c", OPEN3D_LOOP, out, *map(str, files)],
        "read-floor": lambda out: [py, "-c", READ_FLOOR, out, *map(str, files)],
        "ingest-warm": lambda out: [py, "-m", "pipelines.ingest", "points", "--input",
                                    str(args.cohort), "--output", out, "--address", "auto",
                                    "--quiet"],
    }  # fmt: skip
    results = run_suite(runs, env, nbytes, args.only)
    ratios = speedups(
        results, ("ingest", "ingest-warm"), ("same-code", "open3d-loop", "read-floor")
    )
    if "ingest" in results:
        print(f"ingest summary: {results['ingest']['stdout']}")
    if args.json:
        payload = {"files": len(files), "bytes": nbytes, "results": results, "speedups": ratios,
                   "cpus": os.cpu_count()}  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
