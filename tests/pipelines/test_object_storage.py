"""Datasets read from object storage (a real S3-compatible endpoint on localhost, moto's server,
reached through the standard AWS variables): a local cache verified by the manifest's sha256,
and a clear error naming the URL for every way the remote side can be wrong."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipelines.remote import VERIFIED_FILE, cache_dir
from pipelines.shards import ShardDataset, ShardError, write_dataset

SCHEMA = pa.schema([("id", pa.string()), ("x", pa.list_(pa.float32()))])


def _records(n: int, seed: int):
    rng = np.random.default_rng(seed)
    for i in range(n):
        yield {"id": f"r{i:04d}", "x": rng.standard_normal(64).astype(np.float32).tolist()}


def _dataset(root: Path, n: int = 40, seed: int = 0) -> Path:
    write_dataset(root, "toy", SCHEMA, _records(n, seed), stats={"n": n}, shard_bytes=4096)
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JEPA_FORGE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _rows(ds: ShardDataset) -> list[dict]:
    return [ds[i] for i in range(len(ds))]


def test_a_dataset_reads_from_s3_through_a_verified_cache(s3, tmp_path, cache, capsys):
    local = _dataset(tmp_path / "ds")
    s3.make_bucket("data")
    s3.upload(local, "s3://data/cohort")
    url = "s3://data/cohort"

    ds = ShardDataset(url, verify="all")
    assert ds.location == url and ds.root == cache_dir(url)
    assert ds.root.is_relative_to(cache)
    want = ShardDataset(local)
    assert len(ds) == len(want) == 40 and len(ds.shards) > 2
    assert _rows(ds) == _rows(want) and ds.stats == {"n": 40}
    first = capsys.readouterr().err
    assert first.count("caching s3://data/cohort/shards/") == len(ds.shards)

    # opened again: nothing downloaded, nothing re-hashed (the verified record holds)
    stamps = {p.name: p.stat().st_mtime_ns for p in (ds.root / "shards").iterdir()}
    again = ShardDataset(url)
    assert "caching" not in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in (again.root / "shards").iterdir()} == stamps

    # a shard lost from the cache comes back; a re-ingest (new manifest) replaces the cache
    os.remove(ds.root / ds.shards[1].file)
    assert _rows(ShardDataset(url)) == _rows(want)
    assert capsys.readouterr().err.count("caching") == 1
    bigger = _dataset(tmp_path / "ds2", n=70, seed=1)
    s3.upload(bigger, url)
    fresh = ShardDataset(url)
    assert _rows(fresh) == _rows(ShardDataset(bigger))
    names = sorted(p.name for p in (fresh.root / "shards").iterdir())
    assert names == sorted(Path(s.file).name for s in fresh.shards)
    verified = json.loads((fresh.root / VERIFIED_FILE).read_text())
    assert sorted(verified) == sorted(s.file for s in fresh.shards)


def test_what_object_storage_can_get_wrong_is_named(s3, tmp_path, cache):
    local = _dataset(tmp_path / "ds")
    s3.make_bucket("broken")
    s3.upload(local, "s3://broken/a")
    s3.upload(local, "s3://broken/b")
    shard = json.loads((local / "index.json").read_text())["shards"][1]["file"]

    # a shard altered after ingest (same size, other bytes), and one deleted
    data = bytearray((local / shard).read_bytes())
    data[len(data) // 2] ^= 0xFF
    s3.write(f"broken/a/{shard}", bytes(data))
    with pytest.raises(ShardError, match=r"s3://broken/a: shard .* fails its sha256"):
        ShardDataset("s3://broken/a")
    assert not (cache_dir("s3://broken/a") / "index.json").exists()  # not a complete cache
    assert not (cache_dir("s3://broken/a") / shard).exists()
    s3.write(f"broken/a/{shard}", bytes(data[:100]))
    with pytest.raises(ShardError, match=r"is 100 bytes in object storage, the manifest says"):
        ShardDataset("s3://broken/a")
    s3.delete(f"broken/b/{shard}")
    with pytest.raises(ShardError, match=r"s3://broken/b: shard .* is missing in object storage"):
        ShardDataset("s3://broken/b")

    with pytest.raises(ShardError, match=r"s3://nobucket/ds: the bucket 'nobucket' does not"):
        ShardDataset("s3://nobucket/ds")
    with pytest.raises(ShardError, match=r"s3://broken/nothing: not a jepa-forge dataset"):
        ShardDataset("s3://broken/nothing")


def test_an_unreachable_endpoint_is_named(s3, tmp_path, cache, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    with pytest.raises(ShardError, match=r"s3://data/x: cannot read index.json \(.*connect"):
        ShardDataset("s3://data/x")
