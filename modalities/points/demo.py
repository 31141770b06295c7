"""A synthetic cohort of labelled shapes for the points ingest and Point-JEPA's positive control.

Every object is four identical parts (Open3D primitives) placed around its centre. Three labels per
file, written to `labels.csv` (columns path, part, arrangement, orientation), the part also being
the file's folder (the ModelNet folder-per-class layout):

- `part`, the plain class: ellipsoid, box, cylinder or torus, the shape of every part (none of them
  round in every direction, so each shows its orientation). A patch of the surface (Point-JEPA's 32
  nearest neighbours) shows it.
- `arrangement`, the structural label: the four parts at the corners of a square (`square`) or of a
  regular tetrahedron (`tetrahedron`). In both, every part sits at the same distance from the
  object's centre and is the same shape, so no single part, and no patch with its position, tells
  them apart: only where the parts lie relative to one another does (a square's parts are two at one
  distance and one at sqrt(2) times it from each other; a tetrahedron's all at one), and a hidden
  part's place is predictable from the other three. Point-JEPA's predictor is given each target's
  position, though, so meeting its targets never needs the arrangement (docs/results.md).
- `orientation`, the structural label JEPA's targets depend on: the four parts turned one way
  (`aligned`) or each its own way (`independent`), every rotation uniform over SO(3). A part's
  orientation shows in its patches (an ellipsoid's or a box's long axis, a cylinder's axis, a
  torus's hole), every patch is distributed alike in both classes, and only in aligned objects is a
  hidden part's orientation, so its patches' content, predictable from the others.

Nuisances: each object's size (0.5-4 units), a random 3D rotation and offset, the point density
(2,000-20,000 points for clouds), Gaussian noise on the points (0-1% of the size), and partial
occlusion (a random share, up to 10%, of the points or faces beyond a random plane removed, never a
whole part). Files are written as binary PLY and PCD point clouds (with normals in half of them) and
OFF meshes, in turn, each format holding every class.

`arrangement_score` and `orientation_score` are the structural labels' one-number oracles, from a
record's points split into its four parts by k-means: the spread of the distances between the parts'
centres, and how much the parts' shapes (their second moments) differ.
`python -m modalities.points.demo OUT --files N` writes a cohort. Imports numpy and open3d.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

#: bump when the generated data change (the demo cache keys on it)
DEMO_VERSION = 2
PARTS = ("ellipsoid", "box", "cylinder", "torus")
ARRANGEMENTS = ("square", "tetrahedron")
ORIENTATIONS = ("aligned", "independent")
FORMATS = ("ply", "pcd", "off")


def corners(arrangement: str) -> np.ndarray:
    """[4, 3] part centres at distance 1 from the origin."""
    if arrangement == "square":
        c = np.array([[1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0]], dtype=np.float64)
    elif arrangement == "tetrahedron":
        c = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=np.float64)
        c /= np.sqrt(3)
    else:
        raise ValueError(f"unknown arrangement {arrangement!r}; known: {', '.join(ARRANGEMENTS)}")
    return c


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix uniform over SO(3) (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _part_mesh(part: str):
    """A unit-ish primitive centred at the origin (its largest extent ~0.7: parts 1.41 apart
    never touch)."""
    import open3d as o3d

    g = o3d.geometry.TriangleMesh
    if part == "ellipsoid":
        m = g.create_sphere(radius=1.0, resolution=16)
        m.vertices = o3d.utility.Vector3dVector(np.asarray(m.vertices) * [0.35, 0.22, 0.14])
    elif part == "box":
        m = g.create_box(0.6, 0.4, 0.25)
        m.translate((-0.3, -0.2, -0.125))
    elif part == "cylinder":
        m = g.create_cylinder(radius=0.22, height=0.6, resolution=24)
    elif part == "torus":
        m = g.create_torus(torus_radius=0.26, tube_radius=0.09, radial_resolution=24)
    else:
        raise ValueError(f"unknown part {part!r}; known: {', '.join(PARTS)}")
    return m


def build_mesh(
    rng: np.random.Generator, part: str, arrangement: str, orientation: str = "independent"
):
    """The object's mesh: four parts at the arrangement's corners, turned one way (aligned) or
    each its own way, then scaled, turned and moved as a whole."""
    import open3d as o3d

    if orientation not in ORIENTATIONS:
        raise ValueError(f"unknown orientation {orientation!r}; known: {', '.join(ORIENTATIONS)}")
    mesh = o3d.geometry.TriangleMesh()
    shared = random_rotation(rng)
    for c in corners(arrangement):
        m = _part_mesh(part)
        m.rotate(shared if orientation == "aligned" else random_rotation(rng), center=(0, 0, 0))
        m.translate(c)
        mesh += m
    size = rng.uniform(0.5, 4.0)
    mesh.scale(size, center=(0, 0, 0))
    mesh.rotate(random_rotation(rng), center=(0, 0, 0))
    mesh.translate(rng.uniform(-10, 10, 3))
    return mesh, size


def _occlusion(rng: np.random.Generator, xyz: np.ndarray, share: float) -> np.ndarray:
    """A mask keeping all but the `share` of points beyond a random plane."""
    d = random_rotation(rng)[:, 0]
    proj = (xyz - xyz.mean(axis=0)) @ d
    return proj <= np.quantile(proj, 1 - share)


def write_object(
    path: Path, rng: np.random.Generator, part: str, arrangement: str, orientation: str
) -> None:
    """One object in the format of `path`'s suffix (.ply / .pcd clouds, .off mesh)."""
    import open3d as o3d

    mesh, size = build_mesh(rng, part, arrangement, orientation)
    share = rng.uniform(0.0, 0.1)
    if path.suffix == ".off":
        tri = np.asarray(mesh.triangles)
        verts = np.asarray(mesh.vertices)
        keep = _occlusion(rng, verts[tri].mean(axis=1), share)
        mesh.triangles = o3d.utility.Vector3iVector(tri[keep])
        mesh.remove_unreferenced_vertices()
        noise = rng.uniform(0, 0.01) * size
        mesh.vertices = o3d.utility.Vector3dVector(
            np.asarray(mesh.vertices) + noise * rng.standard_normal((len(mesh.vertices), 3))
        )
        ok = o3d.io.write_triangle_mesh(str(path), mesh, write_ascii=True)
    else:
        mesh.compute_vertex_normals()
        o3d.utility.random.seed(int(rng.integers(1 << 31)))
        cloud = mesh.sample_points_uniformly(int(rng.integers(2000, 20001)))
        xyz = np.asarray(cloud.points)
        keep = _occlusion(rng, xyz, share)
        cloud = cloud.select_by_index(np.flatnonzero(keep).tolist())
        noise = rng.uniform(0, 0.01) * size
        cloud.points = o3d.utility.Vector3dVector(
            np.asarray(cloud.points) + noise * rng.standard_normal((len(cloud.points), 3))
        )
        if rng.random() < 0.5:
            cloud.normals = o3d.utility.Vector3dVector(np.zeros((0, 3)))
        ok = o3d.io.write_point_cloud(str(path), cloud, write_ascii=False)
    if not ok:
        raise OSError(f"Open3D could not write {path}")


def generate_cohort(out_dir: str | Path, n: int, seed: int = 0) -> list[str]:
    """Write `n` objects under `out_dir/<part>/`, labels.csv and demo.json; the files' paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, paths = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, i, 0x9017])
        # every (arrangement, orientation, part) in each run of 16 files, the formats in turn
        arrangement = ARRANGEMENTS[i % 2]
        part = PARTS[(i // 2) % len(PARTS)]
        orientation = ORIENTATIONS[(i // 8) % 2]
        fmt = FORMATS[i % len(FORMATS)]
        rel = f"{part}/{part}_{i:05d}.{fmt}"
        (out / part).mkdir(exist_ok=True)
        tmp = out / part / f".part-{i:05d}.{fmt}"  # Open3D picks the format by suffix
        write_object(tmp, rng, part, arrangement, orientation)
        tmp.replace(out / rel)
        rows.append(
            {"path": rel, "part": part, "arrangement": arrangement, "orientation": orientation}
        )
        paths.append(str(out / rel))
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["path", "part", "arrangement", "orientation"])
        w.writeheader()
        w.writerows(rows)
    meta = {"version": DEMO_VERSION, "files": n, "seed": seed, "control": "points"}
    (out / "demo.json").write_text(json.dumps(meta, indent=1) + "\n")
    return paths


def arrangement_score(points: np.ndarray, valid_points: int | None = None, seed: int = 0) -> float:
    """The structural label's oracle from a record's points [N, 3]: the coefficient of
    variation of the six distances between the four parts' centres (k-means, 4 clusters). A
    tetrahedron's are all equal (near 0); a square's are two lengths, 1 and sqrt(2) (about 0.16).
    """
    centres = np.stack([p.mean(axis=0) for p in _parts(points, valid_points, seed)])
    d = np.linalg.norm(centres[:, None] - centres[None], axis=-1)[np.triu_indices(4, 1)]
    return float(d.std() / (d.mean() + 1e-12))


def _parts(points: np.ndarray, valid_points: int | None, seed: int) -> list[np.ndarray]:
    from scipy.cluster.vq import kmeans2

    x = np.asarray(points, dtype=np.float64)[: valid_points or None]
    best, best_sse = None, np.inf
    for s in range(4):  # the tightest of a few k-means++ starts (one can split a part in two)
        centres, which = kmeans2(x, 4, minit="++", seed=seed * 4 + s)
        sse = float(((x - centres[which]) ** 2).sum())
        if sse < best_sse:
            best, best_sse = which, sse
    return [x[best == k] for k in range(4)]


def orientation_score(points: np.ndarray, valid_points: int | None = None, seed: int = 0) -> float:
    """The orientation label's oracle from a record's points [N, 3]: the mean difference between
    the four parts' second moments (each part's covariance over its trace, Frobenius distance
    of every pair). Aligned parts have the same (near 0), independent ones differ."""
    covs = []
    for p in _parts(points, valid_points, seed):
        c = np.cov((p - p.mean(axis=0)).T) if len(p) > 3 else np.eye(3)
        covs.append(c / (np.trace(c) + 1e-12))
    return float(np.mean([np.linalg.norm(covs[i] - covs[j]) for i in range(4) for j in range(i)]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m modalities.points.demo",
        description="Write labelled shapes (labels.csv: part, arrangement, orientation) as PLY, "
        "PCD and OFF.",
    )
    p.add_argument("out", help="output folder")
    p.add_argument("--files", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    paths = generate_cohort(args.out, args.files, args.seed)
    print(f"wrote {len(paths)} files and labels.csv to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
