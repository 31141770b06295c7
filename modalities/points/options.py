"""Point-cloud ingest options (pure Python: the schema follows from these alone, before any file
is opened and without importing Open3D)."""

from __future__ import annotations

from dataclasses import dataclass

from modalities.labels import LABEL_SOURCES

#: Point-JEPA / Point-MAE read 1024 points a sample; the shards keep more for resampling.
DEFAULT_POINTS = 8192
#: how a cloud with more points than `num_points` is cut down
SUBSAMPLINGS = ("fps", "uniform")
#: how a mesh becomes points
MESH_SAMPLINGS = ("uniform", "poisson")
#: the least points a file needs: one tokenizer patch (32 nearest neighbours)
DEFAULT_MIN_POINTS = 32


@dataclass(frozen=True)
class PointsOptions:
    """Preprocessing options of the points reader (JSON-serialisable; in the manifest).

    num_points: points per record. A cloud with more is cut down by `subsample`: "fps"
        (farthest-point sampling from the first point: even coverage, the PointNet++ / Point-MAE
        choice) or "uniform" (a random subset, seeded by the file's name: keeps the scan's
        density). A cloud with fewer keeps all its points, repeated in order to fill the record,
        and `valid_points` says how many are distinct.
    mesh_sampling: a mesh is sampled to `num_points` points on its surface, "uniform" (area
        weighted) or "poisson" (Poisson-disk, Yuksel's elimination: evenly spaced), seeded by
        the file's name.
    min_points: a file with fewer distinct points is refused (too few for one patch).
    labels / labels_csv / label_column: the class, from the folder (ModelNet / ShapeNet
        layout) or a CSV of path, label (modalities/labels.py).
    """

    num_points: int = DEFAULT_POINTS
    subsample: str = "fps"
    mesh_sampling: str = "uniform"
    min_points: int = DEFAULT_MIN_POINTS
    labels: str = "none"
    labels_csv: str | None = None
    label_column: str = "label"

    def __post_init__(self) -> None:
        for name, lo, hi in (("num_points", 1, 1 << 22), ("min_points", 1, 1 << 22)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise ValueError(f"{name}: expected an integer in [{lo}, {hi}], got {v!r}")
        if self.min_points > self.num_points:
            raise ValueError(
                f"min_points: {self.min_points} is more than num_points ({self.num_points})"
            )
        if self.subsample not in SUBSAMPLINGS:
            raise ValueError(f"subsample: expected one of {', '.join(SUBSAMPLINGS)}")
        if self.mesh_sampling not in MESH_SAMPLINGS:
            raise ValueError(f"mesh_sampling: expected one of {', '.join(MESH_SAMPLINGS)}")
        if self.labels not in LABEL_SOURCES:
            choices = ", ".join(LABEL_SOURCES)
            raise ValueError(f"labels: expected one of {choices}, got {self.labels!r}")
        if (self.labels == "csv") != (self.labels_csv is not None):
            raise ValueError("labels: 'csv' goes with a labels CSV (--labels-csv FILE), only it")
