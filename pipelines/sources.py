"""Listing ingest sources: local files, directories, globs, and URLs pyarrow's filesystems open.

Imports pyarrow only (plus the standard library). A source is described by its path as the
user will see it (absolute local path, or the URL), its size and modification time; the list is
sorted so the same inputs give the same plan wherever they are listed from.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs


class SourceError(Exception):
    """An input argument that names nothing readable."""


@dataclass(frozen=True)
class Source:
    path: str  # absolute local path, or a URL (scheme://...)
    size: int
    mtime_ns: int

    @property
    def is_local(self) -> bool:
        return "://" not in self.path

    def to_json(self) -> dict:
        return {"path": self.path, "size": self.size}


def _is_url(s: str) -> bool:
    # file:// URLs take the same pyarrow filesystem path as s3:// or gs:// ones (so that path is
    # exercised wherever the tests run); plain paths are listed with os.
    return "://" in s


def list_sources(
    inputs: Iterable[str], matches: Callable[[str], bool]
) -> tuple[list[Source], list[str]]:
    """Expand inputs into sources; returns (sources, problems).

    Directories are searched recursively for files `matches` accepts; files named directly are
    taken whatever their suffix (the user asked for them); globs are expanded. An input that
    names nothing becomes a problem message instead of an exception, so one typo does not hide
    the others.
    """
    found: dict[str, Source] = {}
    problems: list[str] = []
    for raw in inputs:
        if _is_url(raw):
            try:
                for s in _list_remote(raw, matches):
                    found[s.path] = s
            except (OSError, ValueError, SourceError) as e:
                problems.append(f"{raw}: {e}")
            continue
        item = raw
        if glob.has_magic(item):
            hits = sorted(glob.glob(item, recursive=True))
            if not hits:
                problems.append(f"{raw}: the pattern matches no file")
            for h in hits:
                if os.path.isdir(h):
                    _walk_local(h, matches, found)
                elif os.path.isfile(h) and matches(h):
                    _add_local(h, found)
            continue
        if os.path.isdir(item):
            before = len(found)
            _walk_local(item, matches, found)
            if len(found) == before:
                problems.append(f"{raw}: the directory holds no matching file")
        elif os.path.isfile(item):
            _add_local(item, found)
        elif os.path.lexists(item):
            problems.append(f"{raw}: not a regular file or directory")
        else:
            problems.append(f"{raw}: no such file or directory")
    return sorted(found.values(), key=lambda s: s.path), problems


def _add_local(path: str, found: dict[str, Source]) -> None:
    p = os.path.abspath(path)
    st = os.stat(p)
    found[p] = Source(p, st.st_size, st.st_mtime_ns)


def _walk_local(root: str, matches: Callable[[str], bool], found: dict[str, Source]) -> None:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            if matches(full) and os.path.isfile(full):
                _add_local(full, found)


def _list_remote(url: str, matches: Callable[[str], bool]) -> list[Source]:
    fs, path = pafs.FileSystem.from_uri(url)
    scheme = url.split("://", 1)[0]
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise SourceError("no such file or directory")
    if info.type == pafs.FileType.File:
        infos = [info]
    else:
        sel = pafs.FileSelector(path, recursive=True)
        infos = [i for i in fs.get_file_info(sel) if i.type == pafs.FileType.File]
        infos = [i for i in infos if matches(i.path)]
        if not infos:
            raise SourceError("the directory holds no matching file")
    out = []
    for i in infos:
        mtime = i.mtime_ns if i.mtime_ns is not None else 0
        out.append(Source(f"{scheme}://{i.path}", int(i.size or 0), int(mtime)))
    return out


@contextmanager
def local_copy(source: str):
    """A local path for `source`: the file itself, or a temp copy of a remote one."""
    if not _is_url(source):
        yield source
        return
    fs, path = pafs.FileSystem.from_uri(source)
    # compression=None: pyarrow would otherwise gunzip a .gz stream, and readers want the file
    # as it is.
    suffix = "".join(Path(path).suffixes[-2:])
    fd, tmp = tempfile.mkstemp(prefix="jepa-forge-src-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as out, fs.open_input_stream(path, compression=None) as inp:
            shutil.copyfileobj(inp, out, 8 * 1024 * 1024)
        yield tmp
    finally:
        Path(tmp).unlink(missing_ok=True)
