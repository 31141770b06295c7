"""BIDS names and `participants.tsv`, shared by every modality that reads BIDS-style datasets.

- `bids_entities(source)`: subject / session / task / run of a file, from its name first and
  then from the folders above it (BIDS puts `sub-XX/ses-YY/` there). The subject is the BIDS
  participant id, `sub-<label>`, the key of `participants.tsv`; a file outside BIDS is its own
  subject, named by its stem.
- `participant_values(source, subject, columns)`: the requested `participants.tsv` columns of
  one subject, from the nearest `participants.tsv` in a folder above a local file.
- `write_participants(path, columns, rows)`: a `participants.tsv` written atomically (demo and
  control generators).
- `add_participants_option(group, dest)`: the one CLI flag of a reader's
  `--participants-column` (fMRI, EEG; `modalities.options.participants_problems` checks it).

Imports the standard library and `pipelines.shards` (its atomic writer) only.
"""

from __future__ import annotations

import csv
import functools
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from modalities.base import ModalityError
from pipelines.shards import atomic_write_text

ENTITIES = ("sub", "ses", "task", "run")
_ENTITY = {key: re.compile(rf"(?:^|[_/\\]){key}-([A-Za-z0-9]+)") for key in ENTITIES}
#: file-name suffixes stripped to name a subject outside BIDS (longest first)
_SUFFIXES = re.compile(r"(\.nii\.gz|\.fif\.gz|\.[A-Za-z0-9]+)$", re.IGNORECASE)


def bids_entities(source: str) -> dict[str, str | None]:
    """{"subject": "sub-<label>" (or the file's stem), "session", "task", "run"} of a path or
    URL: each entity from the file name when it has one, else from the nearest folder above."""
    parts = [p for p in re.split(r"[/\\]", source.rstrip("/\\")) if p]
    name = parts[-1] if parts else source
    found: dict[str, str | None] = {}
    for key, pattern in _ENTITY.items():
        match = pattern.search(name)
        if match is None:
            folders = [m for p in parts[:-1] for m in pattern.findall("/" + p)]
            found[key] = folders[-1] if folders else None
        else:
            found[key] = match.group(1)
    subject = f"sub-{found['sub']}" if found["sub"] is not None else _SUFFIXES.sub("", name)
    return {"subject": subject, "session": found["ses"], "task": found["task"], "run": found["run"]}


def find_participants_tsv(source: str) -> Path | None:
    """The nearest participants.tsv in a folder above a local file (BIDS puts it at the root)."""
    if "://" in source:
        return None
    for folder in Path(source).resolve().parents:
        candidate = folder / "participants.tsv"
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=8)
def _participants_table(path: str, mtime_ns: int) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if rows and "participant_id" not in rows[0]:
        raise ModalityError(f"{path} has no participant_id column")
    return {r["participant_id"]: r for r in rows}


def participant_values(source: str, subject: str, columns: Sequence[str]) -> dict[str, Any]:
    """The requested participants.tsv columns for `subject` (None where absent or 'n/a')."""
    if not columns:
        return {}
    path = find_participants_tsv(source)
    row: dict[str, str] = {}
    if path is not None:
        table = _participants_table(str(path), path.stat().st_mtime_ns)
        row = table.get(subject) or table.get(f"sub-{subject}") or {}
    return {c: (None if row.get(c) in (None, "", "n/a") else row[c]) for c in columns}


def add_participants_option(group: Any, dest: str) -> None:
    """`--participants-column NAME` (repeatable) on an argparse group, stored in `dest`."""
    group.add_argument(
        "--participants-column",
        dest=dest,
        action="append",
        default=[],
        metavar="NAME",
        help="copy this column of the BIDS participants.tsv into every record (repeatable), "
        "e.g. a diagnosis or group label for probes",
    )


def write_participants(
    path: str | Path, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """participants.tsv with `participant_id` then `columns`, one line per row, atomically."""
    lines = ["\t".join(["participant_id", *columns])]
    lines += ["\t".join(str(v) for v in row) for row in rows]
    atomic_write_text(Path(path), "\n".join(lines) + "\n")
