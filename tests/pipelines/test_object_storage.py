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


@pytest.fixture
def s3_with_iam(tmp_path):
    """A second moto S3 server, in its own process, that enforces IAM after its first four
    requests (the set-up below): a bucket holding a dataset, and a user allowed to read it only."""
    import socket
    import subprocess
    import sys
    import time

    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"}
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.1)
        admin = {"endpoint_url": endpoint, "region_name": "us-east-1",
                 "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}  # fmt: skip
        boto3.client("s3", **admin).create_bucket(Bucket="readonly")
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="reader")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                  "Action": ["s3:GetObject", "s3:ListBucket", "s3:HeadBucket",
                             "s3:GetBucketLocation"], "Resource": "*"}]}  # fmt: skip
        iam.put_user_policy(UserName="reader", PolicyName="read", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        yield endpoint, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_no_write_permission_is_named_before_any_work(s3_with_iam, tmp_path, monkeypatch, capsys):
    """--output to a bucket the credentials may read but not write: the ingest stops before
    reading anything, naming the URL and the refusal, and writes nothing anywhere."""
    from pipelines import ingest

    endpoint, key_id, secret = s3_with_iam
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("JEPA_FORGE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "scan.nii.gz").write_bytes(b"never read")
    code = ingest.main(
        ["fmri", "--input", str(tmp_path / "in"), "--output", "s3://readonly/ds", "--quiet"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "s3://readonly/ds: cannot write there" in err and "Access Denied" in err
    assert not (tmp_path / "cache").exists()
