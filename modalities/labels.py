"""Record labels from a file's folder (folder-per-class: Speech Commands, ModelNet) or from a CSV
of path, label (ESC-50, ShapeNet splits), shared by the modalities whose files carry one class.

A CSV row matches a file whose path ends with the row's path (bare file names and relative paths
both work; the longest match wins); files without a row, or with an empty / "n/a" label, get
none. Pure Python.
"""

from __future__ import annotations

import csv
import functools
import os

from modalities.base import ModalityError

#: where `label` comes from: nothing, the file's parent folder, or a CSV
LABEL_SOURCES = ("none", "folder", "csv")
#: columns of a labels CSV that may name the file, tried in this order (ESC-50: filename)
PATH_COLUMNS = ("path", "filename", "file", "fname", "slice_file_name")


def _split(path: str) -> list[str]:
    return [p for p in path.replace("\\", "/").split("/") if p and p != "."]


@functools.lru_cache(maxsize=4)
def _label_table(path: str, column: str, mtime_ns: int) -> dict[str, list[tuple[list[str], str]]]:
    """{file name: [(path parts, label), ...]} of a labels CSV."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise ModalityError(f"labels CSV {path}: {e.strerror or e}") from None
    header = list(rows[0]) if rows else []
    key = next((c for c in PATH_COLUMNS if c in header), None)
    if key is None or column not in header:
        raise ModalityError(
            f"labels CSV {path} needs a path column ({', '.join(PATH_COLUMNS)}) and the label "
            f"column {column!r}; its columns are {', '.join(header) or 'none'}"
        )
    table: dict[str, list[tuple[list[str], str]]] = {}
    for row in rows:
        parts = _split(row[key] or "")
        if parts and row[column] not in (None, "", "n/a"):
            table.setdefault(parts[-1], []).append((parts, row[column]))
    return table


def check_labels_csv(path: str, column: str) -> None:
    """Raise ValueError now (at the command line) when the labels CSV cannot be used."""
    try:
        _label_table(path, column, os.stat(path).st_mtime_ns)
    except (OSError, ModalityError) as e:
        raise ValueError(f"--labels-csv: {e}") from None


def file_label(source: str, labels: str, labels_csv: str | None, column: str) -> str | None:
    """The file's class from its folder (`labels="folder"`) or the labels CSV (`"csv"`); None
    when it has none."""
    if labels == "folder":
        parts = _split(source)
        return parts[-2] if len(parts) >= 2 else None
    if labels == "csv" and labels_csv:
        table = _label_table(labels_csv, column, os.stat(labels_csv).st_mtime_ns)
        parts = _split(source)
        matches = [(len(p), lab) for p, lab in table.get(parts[-1], []) if parts[-len(p) :] == p]
        return max(matches)[1] if matches else None
    return None


def add_label_arguments(group, prefix: str, example: str) -> None:
    """`--labels`, `--labels-csv` and `--label-column` on an ingest CLI argument group (dests
    `{prefix}_labels`, ...); `example` names a known dataset's label column for the help."""
    group.add_argument(
        "--labels",
        dest=f"{prefix}_labels",
        choices=LABEL_SOURCES,
        default=None,
        help="where `label` comes from: none, folder (the parent folder's name) or csv "
        "(--labels-csv); default: csv when --labels-csv is given, else none",
    )
    group.add_argument(
        "--labels-csv",
        dest=f"{prefix}_labels_csv",
        default=None,
        metavar="FILE",
        help="CSV with a header: a path column (" + ", ".join(PATH_COLUMNS) + "; a file "
        "matches a row whose path its own ends with) and the label column",
    )
    group.add_argument(
        "--label-column",
        dest=f"{prefix}_label_column",
        default="label",
        metavar="NAME",
        help=f"the labels CSV's label column (default label; {example})",
    )


def label_arguments(args, prefix: str) -> tuple[str, str | None, str]:
    """(labels, absolute labels CSV or None, label column) from parsed arguments; a CSV that
    cannot be used raises ValueError now, before any file is read."""
    csv_path = getattr(args, f"{prefix}_labels_csv", None)
    labels = getattr(args, f"{prefix}_labels", None) or ("csv" if csv_path else "none")
    column = getattr(args, f"{prefix}_label_column", "label")
    if csv_path is not None:
        csv_path = os.path.abspath(csv_path)
        check_labels_csv(csv_path, column)
    return labels, csv_path, column
