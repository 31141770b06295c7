"""Point-cloud ingest options (pure Python: the schema follows from these alone, before any file
is opened and without importing Open3D)."""

from __future__ import annotations

from dataclasses import dataclass

from modalities.labels import LABEL_SOURCES
from modalities.options import check_range

#: Point-JEPA / Point-MAE read 1024 points a sample; the shards keep more for resampling.
DEFAULT_POINTS = 8192
#: how a cloud with more points than `num_points` is cut down
SUBSAMPLINGS = ("fps", "uniform")
#: how a mesh becomes points
MESH_SAMPLINGS = ("uniform", "poisson")
#: Point-JEPA's sequence blocks, 3D-JEPA's spatial ones
MASKINGS = ("sequence", "multiblock")
#: the least points a file needs: one tokenizer patch (32 nearest neighbours)
DEFAULT_MIN_POINTS = 32


@dataclass(frozen=True)
class PointsOptions:
    """Preprocessing options of the points reader (JSON-serialisable; in the manifest).

    num_points: points per record. A cloud with more is cut down by `subsample`: "fps"
        (farthest-point sampling by QuickFPS: even coverage, the PointNet++ / Point-MAE choice)
        or "uniform" (a random subset, seeded by the file's name: keeps the scan's density). A
        cloud with fewer keeps all its points, repeated in order to fill the record, and
        `valid_points` says how many are distinct.
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


@dataclass(frozen=True)
class PointJepaMethod:
    """Method options of Point-JEPA and 3D-JEPA (module docstring).

    points / centres / neighbours: points a sample reads, patch centres (FPS), points per patch.
    masking: "sequence" (Point-JEPA) or "multiblock" (3D-JEPA).
    target_blocks / target_scale: target blocks and each one's share of the tokens.
    context_scale: the context's share of the tokens not in a target.
    pointnet: the mini-PointNet's widths [first hidden, first out, second hidden] (Point-MAE's
        128, 256, 512; narrower ones cost less on a CPU).
    """

    points: int = 1024
    centres: int = 64
    neighbours: int = 32
    masking: str = "sequence"
    target_blocks: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    context_scale: tuple[float, float] = (0.4, 0.75)
    pointnet: tuple[int, int, int] = (128, 256, 512)

    def __post_init__(self) -> None:
        if len(self.pointnet) != 3 or min(self.pointnet) < 1:
            raise ValueError(f"pointnet: expected three widths >= 1, got {list(self.pointnet)}")
        if not 2 <= self.centres <= self.points:
            raise ValueError(f"centres: need 2 <= centres <= points, got {self.centres}")
        if not 1 <= self.neighbours <= self.points:
            raise ValueError(f"neighbours: need 1 <= neighbours <= points, got {self.neighbours}")
        if self.masking not in MASKINGS:
            raise ValueError(
                f"masking: expected one of {', '.join(MASKINGS)}, got {self.masking!r}"
            )
        if self.target_blocks < 1:
            raise ValueError(f"target_blocks: need >= 1, got {self.target_blocks}")
        check_range("target_scale", self.target_scale)
        check_range("context_scale", self.context_scale)
