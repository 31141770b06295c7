"""The points modality: Open3D reading of every listed format, mesh sampling, subsampling,
normalisation, labels, bad input quarantined with its reason, the demo cohort and its oracle,
and the ingest CLI end to end."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import open3d as o3d  # a hard import: missing Open3D (or its libusb) fails the suite, no skip
import pyarrow as pa
import pytest

from modalities import get_modality
from modalities.base import ModalityError, ReadContext
from modalities.points import MODALITY, PointsOptions
from modalities.points.demo import (
    ARRANGEMENTS,
    ORIENTATIONS,
    PARTS,
    arrangement_score,
    generate_cohort,
    orientation_score,
)
from modalities.points.reader import _seed, farthest_points, normalise
from modalities.points.stats import fit_points_stats
from pipelines.shards import records_to_table
from pipelines.worker import full_schema

SMALL = PointsOptions(num_points=1024)


def read(path: Path, opts: PointsOptions = SMALL, **kw) -> dict:
    size = path.stat().st_size
    ctx = ReadContext(str(path), str(path), size, kw.get("max_file_bytes", 1 << 30))
    recs = list(MODALITY.read(ctx, opts))
    assert len(recs) == 1
    return recs[0]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("points_demo")
    generate_cohort(out, 24, seed=3)
    return out


def _cloud(n: int, seed: int = 0) -> np.ndarray:
    """n points on an ellipsoid, off the origin (so centre and scale matter)."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v * [3.0, 2.0, 1.0] + [10.0, -5.0, 2.0]


# -- reading -----------------------------------------------------------------------------------


def test_registry_schema_and_scan():
    assert get_modality("points") is MODALITY
    schema = full_schema(MODALITY.schema(SMALL))
    assert schema.field("points").type == pa.fixed_shape_tensor(pa.float32(), [1024, 3])
    for name in ("a.PLY", "b.pcd", "c.xyz", "d.xyzn", "e.xyzrgb", "f.pts", "g.obj", "h.off",
                 "i.stl"):  # fmt: skip
        assert MODALITY.matches(name), name
    assert not MODALITY.matches("labels.csv") and not MODALITY.matches("scan.las")


def _write_text(path: Path, rows: np.ndarray, header: str = "") -> Path:
    with open(path, "w") as f:
        f.write(header)
        for r in rows:
            f.write(" ".join(f"{v:.9g}" for v in r) + "\n")
    return path


CLOUD_FORMATS = ("ply-ascii", "ply-binary", "pcd", "xyz", "xyzn", "xyzrgb", "pts")


@pytest.mark.parametrize("fmt", CLOUD_FORMATS)
def test_every_cloud_format_round_trips(tmp_path, fmt):
    """A 500-point cloud (fewer than a record holds): kept whole and in order, in the unit
    sphere, `points * scale + center` gives the file's coordinates back; normals and colours
    kept where the format carries them."""
    xyz = _cloud(500)
    normals = (xyz - [10.0, -5.0, 2.0]) / np.linalg.norm(xyz - [10.0, -5.0, 2.0], axis=1)[:, None]
    colors = np.random.default_rng(1).integers(0, 256, (500, 3)) / 255.0
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
    if fmt in ("xyz", "xyzn", "xyzrgb", "pts"):
        extra = {"xyz": [], "xyzn": [normals], "xyzrgb": [colors], "pts": []}[fmt]
        header = "500\n" if fmt == "pts" else ""
        path = _write_text(tmp_path / f"c.{fmt}", np.hstack([xyz, *extra]), header)
    else:
        pc.normals = o3d.utility.Vector3dVector(normals)
        pc.colors = o3d.utility.Vector3dVector(colors)
        path = tmp_path / f"c.{fmt.split('-')[0]}"
        assert o3d.io.write_point_cloud(str(path), pc, write_ascii=fmt == "ply-ascii")
    rec = read(path)
    assert rec["kind"] == "cloud" and rec["valid_points"] == 500 == rec["source_points"]
    pts = rec["points"]
    assert pts.shape == (1024, 3) and pts.dtype == np.float32
    assert np.linalg.norm(pts, axis=1).max() == pytest.approx(1.0, abs=1e-6)
    assert np.abs(pts[:500].mean(axis=0)).max() < 1e-5
    back = pts[:500].astype(np.float64) * rec["scale"] + np.asarray(rec["center"])
    # shuffled, seeded by the file's name (every prefix a uniform subset of the object)
    perm = np.random.default_rng([_seed(str(path)), 1]).permutation(500)
    # (Open3D writes ASCII PLY coordinates to 4 decimals)
    atol = 1e-4 if fmt == "ply-ascii" else 1e-5 * rec["scale"]
    np.testing.assert_allclose(back, xyz[perm], atol=atol)
    np.testing.assert_array_equal(pts[500:1000], pts[:500])  # filled by repeating, in order
    want_normals = fmt in ("ply-ascii", "ply-binary", "pcd", "xyzn")
    want_colors = fmt in ("ply-ascii", "ply-binary", "pcd", "xyzrgb")
    assert rec["has_normals"] == want_normals and rec["has_colors"] == want_colors
    if want_normals:
        np.testing.assert_allclose(rec["normals"][:500], normals[perm], atol=2e-3)
    if want_colors:
        np.testing.assert_array_equal(rec["colors"][:500], np.rint(colors[perm] * 255))


@pytest.mark.parametrize("suffix", [".obj", ".off", ".stl", ".ply"])
@pytest.mark.parametrize("sampling", ["uniform", "poisson"])
def test_meshes_are_sampled_on_their_surface(tmp_path, suffix, sampling):
    mesh = o3d.geometry.TriangleMesh.create_sphere(radius=2.0, resolution=30)
    mesh.translate((4.0, 0.0, -1.0))
    mesh.compute_vertex_normals()
    path = tmp_path / f"ball{suffix}"
    assert o3d.io.write_triangle_mesh(str(path), mesh)
    opts = PointsOptions(num_points=2048, mesh_sampling=sampling)
    rec = read(path, opts)
    assert rec["kind"] == "mesh" and rec["valid_points"] == 2048 and rec["has_normals"]
    assert rec["source_faces"] == len(mesh.triangles)
    r = np.linalg.norm(rec["points"], axis=1)
    assert r.max() == pytest.approx(1.0, abs=1e-6)
    back = rec["points"].astype(np.float64) * rec["scale"] + np.asarray(rec["center"])
    on = np.linalg.norm(back - [4.0, 0.0, -1.0], axis=1)
    assert 1.99 < on.min() and on.max() < 2.001  # on the sphere (its facets a hair inside)
    np.testing.assert_allclose(rec["center"], [4.0, 0.0, -1.0], atol=0.1)
    # shuffled: the first 256 points already cover the sphere (mean near its centre)
    assert np.abs(rec["points"][:256].mean(axis=0)).max() < 0.15
    # outward normals: along the position on a sphere
    n = rec["normals"].astype(np.float64)
    assert np.mean(np.sum(n * rec["points"], axis=1) / r) > 0.98
    if sampling == "poisson":  # evenly spaced: no two points much closer than the spacing
        d = np.linalg.norm(rec["points"][:, None] - rec["points"][None], axis=-1)
        np.fill_diagonal(d, np.inf)
        nn = d.min(axis=1)
        assert nn.min() > 0.3 * np.median(nn)
    assert read(path, opts)["points"].tobytes() == rec["points"].tobytes()  # seeded by the name


@pytest.mark.parametrize("subsample", ["fps", "uniform"])
def test_subsampling_a_large_cloud(tmp_path, subsample):
    xyz = _cloud(20000, seed=2)
    path = tmp_path / "big.pcd"
    o3d.io.write_point_cloud(str(path), o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz)))
    opts = PointsOptions(num_points=512, subsample=subsample)
    rec = read(path, opts)
    assert rec["valid_points"] == 512 and rec["source_points"] == 20000
    back = rec["points"].astype(np.float64) * rec["scale"] + np.asarray(rec["center"])
    # a subset of the file's points
    d = np.linalg.norm(back[:, None] - xyz[None], axis=-1).min(axis=1)
    assert d.max() < 1e-4
    assert len(np.unique(back.round(5), axis=0)) == 512
    assert read(path, opts)["points"].tobytes() == rec["points"].tobytes()


def test_a_prefix_of_a_scan_line_cloud_covers_the_object(tmp_path):
    """A cloud stored in scan-line order (sorted along x), cut down by either subsampling: the
    record's first 64 points already span the object (the tokenizer reads a prefix)."""
    xyz = _cloud(20000, seed=3)
    xyz = xyz[np.argsort(xyz[:, 0])]
    path = tmp_path / "scan.xyz"
    _write_text(path, xyz)
    for mode in ("fps", "uniform"):
        rec = read(path, PointsOptions(num_points=1024, subsample=mode))
        head = rec["points"][:64, 0]
        full = rec["points"][:, 0]
        assert head.max() - head.min() > 0.8 * (full.max() - full.min()), mode


@pytest.mark.parametrize("n", [300, 5000, 40000])
def test_farthest_points_is_exact_farthest_point_sampling(n):
    """QuickFPS (the ingest's subsampling) picks what the plain O(N k) loop picks from the same
    first point: each new point the farthest from those chosen, ties aside (continuous data)."""
    xyz = np.random.default_rng(n).normal(size=(n, 3)) * [3.0, 1.0, 0.5]
    k = 128
    got = farthest_points(xyz, k)
    assert got.dtype == np.int64 and len(set(got.tolist())) == k
    picks, dist = [int(got[0])], np.full(n, np.inf)  # the plain loop from QuickFPS's first pick
    for _ in range(k - 1):
        dist = np.minimum(dist, ((xyz - xyz[picks[-1]]) ** 2).sum(axis=1))
        picks.append(int(dist.argmax()))
    assert picks == got.tolist()
    assert (farthest_points(xyz, k) == got).all()  # deterministic
    assert (np.sort(farthest_points(xyz[:100], 100)) == np.arange(100)).all()  # k >= N: all


def test_fps_covers_more_evenly_than_uniform(tmp_path):
    # a cloud ten times denser on one half: fps spreads its picks, a random subset does not
    rng = np.random.default_rng(0)
    dense = rng.uniform([0, 0, 0], [1, 1, 1], (18000, 3))
    sparse = rng.uniform([1, 0, 0], [2, 1, 1], (1800, 3))
    path = tmp_path / "halves.xyz"
    _write_text(path, np.vstack([dense, sparse]))
    gaps = {}
    for mode in ("fps", "uniform"):
        rec = read(path, PointsOptions(num_points=256, subsample=mode))
        back = rec["points"] * rec["scale"] + np.asarray(rec["center"])
        gaps[mode] = float((back[:, 0] > 1).mean())
    assert gaps["fps"] > 0.4 > 0.2 > gaps["uniform"]


def test_normalise_refuses_coincident_points():
    with pytest.raises(ModalityError, match="coincide"):
        normalise(np.ones((40, 3)))
    pts, center, scale = normalise(np.array([[0.0, 0, 0], [2.0, 0, 0]]))
    assert scale == 1.0 and center.tolist() == [1.0, 0, 0]


def test_labels_from_folders_and_csv(tmp_path):
    path = tmp_path / "chair" / "train" / "chair_0001.xyz"
    path.parent.mkdir(parents=True)
    _write_text(path, _cloud(100))
    assert read(path, PointsOptions(num_points=128, labels="folder"))["label"] == "train"
    table = tmp_path / "labels.csv"
    table.write_text("path,label\ntrain/chair_0001.xyz,chair\n")
    opts = PointsOptions(num_points=128, labels="csv", labels_csv=str(table))
    rec = read(path, opts)
    assert rec["label"] == "chair" and rec["subject"] == str(path)


def test_invalid_options_are_refused():
    for kw, reason in [
        ({"num_points": 0}, "num_points"),
        ({"min_points": 2048, "num_points": 1024}, "min_points"),
        ({"subsample": "grid"}, "subsample"),
        ({"mesh_sampling": "random"}, "mesh_sampling"),
        ({"labels": "csv"}, "labels"),
    ]:
        with pytest.raises(ValueError, match=reason):
            PointsOptions(**kw)


# -- bad input ---------------------------------------------------------------------------------


def _bad_file(tmp_path: Path, kind: str, demo: Path) -> Path:
    if kind == "empty":
        p = tmp_path / "empty.ply"
        p.write_bytes(b"")
    elif kind == "binary ply cut short":
        src = next(demo.rglob("*.ply"))
        p = tmp_path / "cut.ply"
        p.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    elif kind == "ascii ply cut short":
        p = tmp_path / "cut_ascii.ply"
        pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(_cloud(200)))
        o3d.io.write_point_cloud(str(p), pc, write_ascii=True)
        lines = p.read_text().splitlines(keepends=True)
        p.write_text("".join(lines[: len(lines) // 2]))
    elif kind in ("ascii pcd cut short", "binary pcd cut short", "pts cut short"):
        p = tmp_path / f"cut.{kind.split()[-3]}"
        if p.suffix == ".pts":
            _write_text(p, _cloud(200), "200\n")
        else:
            pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(_cloud(200)))
            o3d.io.write_point_cloud(str(p), pc, write_ascii=kind.startswith("ascii"))
        if kind.startswith("binary"):
            p.write_bytes(p.read_bytes()[:-100])
        else:  # the header and 99 points
            lines = p.read_text().splitlines(keepends=True)
            p.write_text("".join(lines[: len(lines) - 101]))
    elif kind == "nan coordinates":
        xyz = _cloud(100)
        xyz[7, 1] = np.nan
        p = _write_text(tmp_path / "nan.xyz", xyz)
    elif kind == "mesh with no faces":
        p = tmp_path / "nofaces.off"
        p.write_text("OFF\n40 0 0\n" + "".join(f"{x} {y} {z}\n" for x, y, z in _cloud(40)))
    elif kind == "not a ply":
        p = tmp_path / "fake.ply"
        p.write_bytes(b"solid cube\n" + bytes(range(256)) * 8)
    elif kind == "garbage pcd":
        p = tmp_path / "garbage.pcd"
        p.write_bytes(bytes(range(256)) * 8)
    elif kind == "pcd header sizes and counts differ":
        p = tmp_path / "bad_header.pcd"
        p.write_bytes(
            b"VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1\nWIDTH 2\nHEIGHT 1\n"
            b"POINTS 2\nDATA binary\n" + bytes(24)
        )
    elif kind == "garbage xyz":
        p = tmp_path / "garbage.xyz"
        p.write_text("this is not\na point cloud\n")
    elif kind == "unknown format":
        p = tmp_path / "scan.las"
        p.write_bytes(b"LASF" + bytes(200))
    elif kind == "too few points":
        p = _write_text(tmp_path / "few.xyz", _cloud(10))
    elif kind == "coincident points":
        p = _write_text(tmp_path / "same.xyz", np.ones((64, 3)))
    else:
        raise AssertionError(kind)
    return p


BAD = {
    "empty": "empty file",
    "binary ply cut short": "binary PLY cut short",
    "ascii ply cut short": "ASCII PLY cut short: its header declares 200 vertex",
    "ascii pcd cut short": "ASCII PCD cut short: its header declares 200 points, the body has 99",
    "binary pcd cut short": "binary PCD cut short",
    "pts cut short": "PTS cut short: its first line declares 200 points, the file has 99",
    "nan coordinates": "1 of 100 points have non-finite coordinates",
    "mesh with no faces": "no faces|no vertices",
    "not a ply": "not a PLY file",
    "garbage pcd": "not a PCD file",
    "garbage xyz": "Open3D read no points",
    "pcd header sizes and counts differ": "3 SIZE entries but 2 COUNT entries",
    "unknown format": "not a known point-cloud or mesh format",
    "too few points": "10 points, fewer than the 32",
    "coincident points": "coincide",
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_input_is_refused_with_its_reason(tmp_path, demo, kind):
    path = _bad_file(tmp_path, kind, demo)
    with pytest.raises(ModalityError, match=BAD[kind]):
        read(path)


def test_size_limit(demo):
    path = next(demo.rglob("*.pcd"))
    with pytest.raises(ModalityError, match="over --max-file-bytes"):
        read(path, max_file_bytes=1000)


# -- the demo cohort ---------------------------------------------------------------------------


def test_demo_cohort_formats_labels_and_oracle(demo):
    files = sorted(p for p in demo.rglob("*") if MODALITY.matches(str(p)))
    assert {p.suffix for p in files} == {".ply", ".pcd", ".off"}
    assert {p.parent.name for p in files} == set(PARTS)
    rows = list(csv.DictReader(open(demo / "labels.csv")))
    assert len(rows) == 24 and {r["arrangement"] for r in rows} == set(ARRANGEMENTS)
    assert {r["orientation"] for r in rows} == set(ORIENTATIONS)
    scores: dict[str, list[float]] = {a: [] for a in ARRANGEMENTS + ORIENTATIONS}
    for r in rows:
        rec = read(demo / r["path"], PointsOptions(num_points=1024, labels="folder"))
        assert rec["label"] == r["part"] and rec["kind"] == (
            "mesh" if r["path"].endswith(".off") else "cloud"
        )
        scores[r["arrangement"]].append(arrangement_score(rec["points"], rec["valid_points"]))
        scores[r["orientation"]].append(orientation_score(rec["points"], rec["valid_points"]))
    # a square's part distances are two lengths (cv ~0.17), a tetrahedron's one
    assert min(scores["square"]) > 0.12 > 0.06 > max(scores["tetrahedron"])
    # aligned parts share their second moments, independent ones do not
    assert min(scores["independent"]) > 0.25 > 0.2 > max(scores["aligned"])


def test_demo_generation_is_deterministic(tmp_path, demo):
    generate_cohort(tmp_path, 24, seed=3)
    for p in demo.rglob("*.*"):
        assert (tmp_path / p.relative_to(demo)).read_bytes() == p.read_bytes(), p


def test_stats(demo):
    recs = [read(p, SMALL) for p in sorted(demo.rglob("*.pcd"))]
    table = records_to_table(
        [{"id": str(i), "source": str(i), **r} for i, r in enumerate(recs)],
        full_schema(MODALITY.schema(SMALL)),
    )
    stats = fit_points_stats(table.to_batches(max_chunksize=3))
    assert stats["records"] == 8 and stats["kinds"] == {"cloud": 8}
    assert stats["num_points"] == 1024 and stats["fewer_points_than_num_points"] == 0
    assert stats["source_points"]["min"] >= 1800


def test_ingest_cli_end_to_end(tmp_path, demo):
    from pipelines import ingest
    from pipelines.shards import ShardDataset

    src = tmp_path / "in"
    shutil.copytree(demo, src)
    for kind in ("binary ply cut short", "mesh with no faces"):
        bad = _bad_file(tmp_path, kind, demo)
        shutil.copy(bad, src / "box" / bad.name)
    out = tmp_path / "ds"
    args = ["points", "--input", str(src), "--output", str(out), "--num-cpus", "1", "--quiet",
            "--num-points", "1024", "--labels", "folder"]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        code = ingest.main(args)
    assert code == 0, stdout.getvalue()
    assert "24 sources ok, 2 quarantined" in stdout.getvalue()
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    reasons = {Path(e["path"]).name: e["reason"] for e in errors}
    assert set(reasons) == {"cut.ply", "nofaces.off"}
    assert "binary PLY cut short" in reasons["cut.ply"]
    ds = ShardDataset(out)
    assert len(ds) == 24 and {ds[i]["label"] for i in range(24)} == set(PARTS)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["records"] == 24 and stats["kinds"] == {"cloud": 16, "mesh": 8}
    assert stats["labels"] == {p: 6 for p in PARTS}
    # the independent minimal JEPA (docs/results.md's cross-check) reads this dataset and probes
    # the cohort's three labels beside its random init
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "minimal_points_jepa.py"
    run = subprocess.run(
        [sys.executable, str(script), "--data", str(out), "--steps", "20", "--raw", str(src),
         "--labels", "8"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    probe = json.loads(run.stdout.strip().splitlines()[-1])["probe"]
    for arm in ("pretrained", "random-init"):
        assert set(probe[arm]) == {"orientation_8", "arrangement_8", "part_8"}
        assert all(0.0 <= v <= 1.0 for v in probe[arm].values())
