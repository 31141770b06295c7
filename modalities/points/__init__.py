"""Points: point clouds and meshes Open3D reads -> N x 3 points in the unit sphere (Point-JEPA,
3D-JEPA input).

- options.py: `PointsOptions` (points per record, subsampling, mesh sampling, labels) and
  `PointJepaMethod` (tokenizer sizes, masks, PointNet widths), pure Python.
- reader.py: one file -> one record (Open3D reading, checks, mesh sampling, subsampling,
  normalisation, labels).
- stats.py: counts and classes of the written records.
- demo.py: labelled objects of four identical parts (square or tetrahedron, turned one way or
  each its own) as PLY, PCD, OFF.
- pointjepa.py: Point-JEPA's tokenizer, sequencer and masks, 3D-JEPA's multi-block masks, the
  mini-PointNet embedder (imports torch; loaded only by the model-side hooks).

docs/points.md is the user guide. Imports numpy and pyarrow at top level, open3d inside
functions. Never imports `engine` or `pipelines`.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from modalities.base import Modality, ReadContext
from modalities.labels import add_label_arguments, label_arguments
from modalities.points.options import (
    MESH_SAMPLINGS,
    SUBSAMPLINGS,
    PointJepaMethod,
    PointsOptions,
)
from modalities.points.reader import EXTENSIONS, is_points, read_points, record_schema
from modalities.points.stats import fit_points_stats


class PointsModality(Modality):
    """Point-cloud and mesh files -> one record of points each (module docstring)."""

    name = "points"
    extensions = EXTENSIONS
    options_type = PointsOptions
    method_type = PointJepaMethod
    demo_size = 24
    # coords are (x, y, z, sequence rank): positions are grouped by the rank (a centre's xyz is
    # each object's own)
    position_columns = (3,)

    def matches(self, path: str) -> bool:
        return is_points(path)

    def add_cli_options(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("points options")
        d = PointsOptions()
        g.add_argument(
            "--num-points",
            dest="points_num_points",
            type=int,
            default=d.num_points,
            metavar="N",
            help=f"points per record (default {d.num_points})",
        )
        g.add_argument(
            "--subsample",
            dest="points_subsample",
            choices=SUBSAMPLINGS,
            default=d.subsample,
            help="how a cloud with more points is cut down: fps (farthest-point, even "
            "coverage) or uniform (a random subset; keeps the density); default fps",
        )
        g.add_argument(
            "--mesh-sampling",
            dest="points_mesh_sampling",
            choices=MESH_SAMPLINGS,
            default=d.mesh_sampling,
            help="how a mesh becomes points: uniform (area-weighted) or poisson (Poisson "
            "disk, evenly spaced; slower); default uniform",
        )
        g.add_argument(
            "--min-points",
            dest="points_min_points",
            type=int,
            default=d.min_points,
            metavar="N",
            help=f"refuse a file with fewer points (default {d.min_points}, one patch)",
        )
        add_label_arguments(g, "points", "ModelNet: the class folders, --labels folder")

    def options_from_args(self, args: argparse.Namespace) -> PointsOptions:
        d = PointsOptions()
        get = lambda name, default: getattr(args, f"points_{name}", default)  # noqa: E731
        labels, csv_path, column = label_arguments(args, "points")
        return PointsOptions(
            num_points=get("num_points", d.num_points),
            subsample=get("subsample", d.subsample),
            mesh_sampling=get("mesh_sampling", d.mesh_sampling),
            min_points=get("min_points", d.min_points),
            labels=labels,
            labels_csv=csv_path,
            label_column=column,
        )

    def schema(self, opts: PointsOptions) -> pa.Schema:
        return record_schema(opts)

    def read(self, ctx: ReadContext, opts: PointsOptions) -> Iterator[dict[str, Any]]:
        return read_points(ctx, opts)

    def fit_stats(self, batches: Iterable[pa.RecordBatch], opts: PointsOptions) -> dict[str, Any]:
        return fit_points_stats(batches)

    def demo(self, out_dir: str | Path, n: int, seed: int) -> list[str]:
        from modalities.points.demo import generate_cohort

        return generate_cohort(out_dir, n, seed)

    def warm_up(self) -> None:
        import open3d  # noqa: F401

    def library_versions(self) -> dict[str, str]:
        import numpy
        import open3d

        return {"open3d": open3d.__version__, "numpy": numpy.__version__}

    # -- model side: Point-JEPA / 3D-JEPA

    def tokenize(
        self, record: dict[str, Any], stats: dict[str, Any], opts: PointJepaMethod
    ) -> dict:
        from modalities.points.pointjepa import point_patches

        tokens, coords = point_patches(record["points"], record["valid_points"], opts)
        return {"tokens": tokens, "coords": coords}

    def masker(self, opts: PointJepaMethod) -> Any:
        from modalities.points.pointjepa import PointMasker

        return PointMasker(opts)

    def embedder(self, opts: PointJepaMethod, dim: int, stats: dict[str, Any] | None = None) -> Any:
        from modalities.points.pointjepa import PointEmbedder

        return PointEmbedder(opts.neighbours, dim, tuple(opts.pointnet))

    def draw(self, ds, index, rng, opts):
        from modalities.show import draw_points

        return draw_points(ds, index, rng, opts)


MODALITY = PointsModality()

__all__ = ["MODALITY", "PointsModality", "PointsOptions"]
