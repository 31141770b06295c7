"""Datasets in object storage: a local cache of a remote dataset, verified by the manifest's sha256.

`dataset_dir(location)` is what a reader opens: a local (or file://) path as it is; a URL any
pyarrow filesystem opens (s3://, gs://, hdfs://, ...) as a local copy under
`$JEPA_FORGE_CACHE/datasets/` (default ~/.cache/jepa-forge), brought up to date with the remote
manifest first (MosaicML streaming's remote / local split, for whole shards):

- the remote `index.json` is read first; each shard it lists is downloaded unless the cache holds
  that file with the manifest's size and sha256 (recorded when it was verified, so a cached shard
  is not re-hashed on every open); each download is hashed as it streams and refused, naming the
  shard and the URL, when its size or sha256 differ from the manifest's (a shard altered or cut
  after ingest); `stats.json` and `errors.jsonl` follow, and the manifest is written last, so the
  cache is a complete dataset directory or says it is not;
- files the manifest no longer lists are removed (a re-ingest); one process at a time per cache
  directory (a file lock: the ranks and loaders of one machine share it);
- the endpoint and credentials come from pyarrow's usual sources (for S3 the standard AWS
  variables and files, `AWS_ENDPOINT_URL` included; for GCS Google's application default
  credentials, retried for `JEPA_FORGE_GCS_RETRY_SECONDS`, default 30, not pyarrow's 15 minutes);
  an unreachable endpoint, a missing bucket or dataset, a missing shard: ShardError naming the
  URL and the reason.

Imports pyarrow and the shard format only.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from pipelines.atomic import atomic_target, atomic_write_bytes, atomic_write_json
from pipelines.shards import (
    ERRORS_FILE,
    INDEX_FILE,
    SHARDS_DIR,
    STATS_FILE,
    ShardError,
    _safe_shard_path,
    forge_cache,
    is_remote,
    local_path,
)

#: the cache's record of verified shards: {relative file: sha256}
VERIFIED_FILE = ".verified.json"
_CHUNK = 8 * 1024 * 1024


def cache_root() -> Path:
    return forge_cache() / "datasets"


def cache_dir(url: str) -> Path:
    """Where the cache of `url` lives: its last path part and a hash of the whole URL."""
    name = url.rstrip("/").rsplit("/", 1)[-1] or "dataset"
    return cache_root() / f"{name}-{hashlib.sha256(url.encode()).hexdigest()[:16]}"


def dataset_dir(location: str | Path, quiet: bool = False) -> Path:
    """A local directory holding the dataset at `location` (see the module docstring)."""
    if not is_remote(location):
        return local_path(location)
    return cached_dataset(str(location), quiet=quiet)


def _filesystem(url: str) -> tuple[pafs.FileSystem, str]:
    try:
        scheme, _, rest = url.partition("://")
        if scheme.lower() in ("gs", "gcs"):
            # pyarrow's default keeps retrying an unreachable GCS for 15 minutes
            limit = float(os.environ.get("JEPA_FORGE_GCS_RETRY_SECONDS", "30"))
            fs = pafs.GcsFileSystem(retry_time_limit=timedelta(seconds=limit))
            return fs, rest.split("?", 1)[0].rstrip("/")
        fs, path = pafs.FileSystem.from_uri(url)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError) as e:
        raise ShardError(f"{url}: cannot open this URL ({e})") from None
    return fs, path.rstrip("/")


def _read_small(fs: pafs.FileSystem, path: str, url: str, required: bool) -> bytes | None:
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            if not required:
                return None
            bucket = path.split("/", 1)[0]
            if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                raise ShardError(f"{url}: the bucket {bucket!r} does not exist at this endpoint")
            raise ShardError(f"{url}: not a jepa-forge dataset (no {INDEX_FILE} there)")
        with fs.open_input_stream(path) as f:
            return f.read()
    except OSError as e:
        raise ShardError(f"{url}: cannot read {path.rsplit('/', 1)[-1]} ({_reason(e)})") from None


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) < 300 else text[:300] + "..."


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _download(fs: pafs.FileSystem, src: str, dest: Path, size: int, sha256: str, url: str) -> None:
    """Stream `src` to `dest` (atomically), checking the manifest's size and sha256."""
    digest, n = hashlib.sha256(), 0
    with atomic_target(dest) as tmp:
        try:
            with fs.open_input_stream(src) as f, open(tmp, "wb") as out:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    n += len(chunk)
        except FileNotFoundError:
            raise ShardError(f"{url}: shard {dest.name} is missing in object storage") from None
        except OSError as e:
            raise ShardError(f"{url}: cannot download {dest.name} ({_reason(e)})") from None
        if n != size:
            raise ShardError(
                f"{url}: shard {dest.name} is {n} bytes in object storage, the manifest says "
                f"{size} (altered or cut after ingest)"
            )
        if digest.hexdigest() != sha256:
            raise ShardError(
                f"{url}: shard {dest.name} fails its sha256 (altered after ingest); the cache "
                "keeps nothing of it"
            )


def cached_dataset(url: str, quiet: bool = False) -> Path:
    """The local cache of the dataset at `url`, brought up to date (module docstring)."""
    fs, root = _filesystem(url)
    raw = _read_small(fs, f"{root}/{INDEX_FILE}", url, required=True)
    assert raw is not None
    try:
        manifest: dict[str, Any] = json.loads(raw)
    except ValueError as e:
        raise ShardError(f"{url}/{INDEX_FILE}: unreadable manifest ({e})") from None
    local = cache_dir(url)
    with _locked(local):
        verified_path = local / VERIFIED_FILE
        verified: dict[str, str] = {}
        if verified_path.is_file():
            try:
                verified = json.loads(verified_path.read_text())
            except ValueError:
                verified = {}
        if (local / INDEX_FILE).is_file() and (local / INDEX_FILE).read_bytes() != raw:
            (local / INDEX_FILE).unlink()  # a new remote manifest: the cache is not complete
        wanted = {}
        for entry in manifest.get("shards", []):
            rel = str(entry["file"])
            _safe_shard_path(local, rel)
            wanted[rel] = entry
        fetched = 0
        for rel, entry in wanted.items():
            dest = local / rel
            size, sha = int(entry["bytes"]), str(entry["sha256"])
            if dest.is_file() and dest.stat().st_size == size and verified.get(rel) == sha:
                continue
            if not quiet:
                print(f"caching {url}/{rel} ({size / 1e6:.1f} MB)", file=sys.stderr, flush=True)
            _download(fs, f"{root}/{rel}", dest, size, sha, url)
            verified[rel] = sha
            atomic_write_json(verified_path, verified)
            fetched += 1
        shard_dir = local / SHARDS_DIR
        if shard_dir.is_dir():
            for p in shard_dir.iterdir():
                rel = f"{SHARDS_DIR}/{p.name}"
                if p.is_file() and rel not in wanted:
                    p.unlink()
                    verified.pop(rel, None)
        atomic_write_json(verified_path, verified)
        for name in (STATS_FILE, ERRORS_FILE):
            data = _read_small(fs, f"{root}/{name}", url, required=False)
            if data is None:
                (local / name).unlink(missing_ok=True)
            else:
                atomic_write_bytes(local / name, data)
        atomic_write_bytes(local / INDEX_FILE, raw)
        (local / "source.txt").write_text(url + "\n")
    if fetched and not quiet:
        print(f"cached {url}: {fetched} shard(s) -> {local}", file=sys.stderr, flush=True)
    return local


def staging_dir(url: str) -> Path:
    """The local directory an ingest to `url` writes (and resumes) before uploading."""
    return cache_root().parent / "staging" / cache_dir(url).name


def check_writable(url: str) -> None:
    """ShardError naming `url` unless an object can be written (and removed) under it: an
    unreachable endpoint, a missing bucket or no write permission fails before any work."""
    fs, root = _filesystem(url)
    bucket = root.split("/", 1)[0]
    try:
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise ShardError(f"{url}: the bucket {bucket!r} does not exist at this endpoint")
        probe = f"{root}/.jepa-forge-write-check"
        with fs.open_output_stream(probe) as f:
            f.write(b"ok")
        fs.delete_file(probe)
    except OSError as e:
        raise ShardError(f"{url}: cannot write there ({_reason(e)})") from None


def _upload(fs: pafs.FileSystem, src: Path, dest: str, url: str) -> None:
    try:
        with open(src, "rb") as f, fs.open_output_stream(dest) as out:
            while chunk := f.read(_CHUNK):
                out.write(chunk)
    except OSError as e:
        raise ShardError(f"{url}: cannot upload {src.name} ({_reason(e)})") from None


def upload_file(src: Path, url: str, rel: str) -> None:
    """Copy the local file `src` to `url`/`rel` (an object appears whole or not at all)."""
    fs, root = _filesystem(url)
    _upload(fs, src, f"{root}/{rel}", url)


def remote_files(url: str, rel_dir: str) -> dict[str, int]:
    """{relative path: size} of the files directly under `url`/`rel_dir` ({} when none)."""
    fs, root = _filesystem(url)
    try:
        infos = fs.get_file_info(pafs.FileSelector(f"{root}/{rel_dir}", allow_not_found=True))
    except OSError as e:
        raise ShardError(f"{url}: cannot list {rel_dir} ({_reason(e)})") from None
    return {
        f"{rel_dir}/{i.base_name}": int(i.size or 0) for i in infos if i.type == pafs.FileType.File
    }


def delete_file(url: str, rel: str) -> None:
    fs, root = _filesystem(url)
    try:
        fs.delete_file(f"{root}/{rel}")
    except FileNotFoundError:
        pass
    except OSError as e:
        raise ShardError(f"{url}: cannot remove {rel} ({_reason(e)})") from None


def open_remote_file(url: str, rel: str) -> Any:
    """A random-access file for `url`/`rel` (to stream a shard without caching it)."""
    fs, root = _filesystem(url)
    try:
        return fs.open_input_file(f"{root}/{rel}")
    except OSError as e:
        raise ShardError(f"{url}: cannot open {rel} ({_reason(e)})") from None


def upload_dataset(local: Path, url: str, quiet: bool = False) -> int:
    """Copy the committed dataset at `local` to `url`: shards first (a shard already there with
    its size is kept: an interrupted upload resumes), then stats and errors, the manifest last (a
    reader never sees a manifest whose shards are missing), then shards of an older manifest are
    removed. Returns the number of shards uploaded."""
    from pipelines.shards import load_manifest

    manifest = load_manifest(local)
    fs, root = _filesystem(url)
    present = remote_files(url, SHARDS_DIR)  # one listing, not a request per shard
    uploaded = 0
    wanted = set()
    for entry in manifest["shards"]:
        rel = str(entry["file"])
        wanted.add(rel)
        if present.get(rel) == int(entry["bytes"]):
            continue
        if not quiet:
            print(f"uploading {rel} -> {url}", file=sys.stderr, flush=True)
        _upload(fs, local / rel, f"{root}/{rel}", url)
        uploaded += 1
    for name in (STATS_FILE, ERRORS_FILE, INDEX_FILE):
        if (local / name).is_file():
            _upload(fs, local / name, f"{root}/{name}", url)
    for rel in present.keys() - wanted:  # shards of an older manifest
        delete_file(url, rel)
    return uploaded
