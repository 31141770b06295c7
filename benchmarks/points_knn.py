"""Benchmark: the nearest-neighbour step of Point-JEPA's tokenizer, three ways, on the same
points: each of `--centres` farthest-point centres' `--neighbours` nearest of `--points` points
(a unit-sphere object from modalities.points.demo), per sample, median of `--repeat` runs.

  numpy    brute force: squared distances by one matrix product, argpartition, then the k
           sorted
  open3d   Open3D's KD-tree: built over the points, one search_knn_vector_3d per centre
           (what modalities/points/pointjepa.py does)
  torch    torch.cdist and topk (one thread)

    .venv/bin/python benchmarks/points_knn.py [--points 1024 --centres 64 --neighbours 32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p).resolve() != REPO / "benchmarks"]


def _median_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=int, default=1024)
    p.add_argument("--centres", type=int, default=64)
    p.add_argument("--neighbours", type=int, default=32)
    p.add_argument("--repeat", type=int, default=200)
    args = p.parse_args(argv)
    import open3d as o3d
    import torch

    from modalities.points.demo import ARRANGEMENTS, PARTS, build_mesh
    from modalities.points.pointjepa import farthest_points

    torch.set_num_threads(1)
    mesh, _ = build_mesh(np.random.default_rng(0), PARTS[0], ARRANGEMENTS[0])
    o3d.utility.random.seed(0)
    x = np.asarray(mesh.sample_points_uniformly(args.points).points)
    x = ((x - x.mean(0)) / np.linalg.norm(x - x.mean(0), axis=1).max()).astype(np.float32)
    c = x[farthest_points(x, args.centres)]
    k = args.neighbours

    def numpy_knn():
        d2 = (c * c).sum(1)[:, None] - 2 * c @ x.T + (x * x).sum(1)[None]
        idx = np.argpartition(d2, k - 1, axis=1)[:, :k]
        return np.take_along_axis(idx, np.argsort(np.take_along_axis(d2, idx, 1), 1), 1)

    x64, c64 = x.astype(np.float64), c.astype(np.float64)

    def open3d_knn():
        tree = o3d.geometry.KDTreeFlann(o3d.geometry.PointCloud(o3d.utility.Vector3dVector(x64)))
        return np.stack([np.asarray(tree.search_knn_vector_3d(q, k)[1]) for q in c64])

    xt, ct = torch.from_numpy(x), torch.from_numpy(c)

    def torch_knn():
        return torch.cdist(ct, xt).topk(k, largest=False).indices.numpy()

    same = np.mean([set(a) == set(b) for a, b in zip(numpy_knn(), open3d_knn(), strict=True)])
    print(f"{args.points} points, {args.centres} centres, {k} neighbours; numpy and Open3D "
          f"agree on {same:.1%} of the neighbour sets")  # fmt: skip
    for name, fn in (("numpy", numpy_knn), ("open3d", open3d_knn), ("torch", torch_knn)):
        print(f"{name:7s} {_median_ms(fn, args.repeat):7.3f} ms per sample")
    return 0


if __name__ == "__main__":
    sys.exit(main())
