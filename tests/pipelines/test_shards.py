"""Shard format v1: round trip, checksums, path safety, determinism, plain-pyarrow readability."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from pipelines.shards import (
    INDEX_FILE,
    ShardDataset,
    ShardError,
    ShardWriter,
    records_to_table,
    tensor_column_to_numpy,
    write_dataset,
)

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("subject", pa.string()),
        ("start", pa.int32()),
        ("x", pa.fixed_shape_tensor(pa.float32(), [3, 5])),
    ]
)


def make_records(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "id": f"r{i}",
            "subject": f"sub-{i % 4:02d}",
            "start": i * 7,
            "x": rng.standard_normal((3, 5)).astype(np.float32),
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("compression", [None, "lz4", "zstd"])
def test_round_trip_every_record(tmp_path, compression):
    recs = make_records(57)
    # ~1 KiB shards force several shards and several batches per shard.
    write_dataset(tmp_path, "test", SCHEMA, recs, shard_bytes=1024, compression=compression)
    ds = ShardDataset(tmp_path, verify="all")
    assert len(ds) == 57 and len(ds.shards) > 2
    for i in (0, 1, 13, 29, 56, -1):
        got, want = ds[i], recs[i]
        assert got["id"] == want["id"] and got["start"] == want["start"]
        np.testing.assert_array_equal(got["x"], want["x"])
    stacked = np.concatenate(
        [tensor_column_to_numpy(b.column("x")) for b in ds.iter_batches(columns=["x"])]
    )
    np.testing.assert_array_equal(stacked, np.stack([r["x"] for r in recs]))
    taken = ds.take([5, 0, 56])
    assert taken.column("id").to_pylist() == ["r5", "r0", "r56"]
    with pytest.raises(IndexError):
        ds[57]


def test_manifest_contents(tmp_path):
    manifest = write_dataset(
        tmp_path, "test", SCHEMA, make_records(10), options={"a": 1}, stats={"median": [1.0]}
    )
    on_disk = json.loads((tmp_path / INDEX_FILE).read_text())
    assert on_disk == manifest
    assert manifest["format_version"] == 1 and manifest["modality"] == "test"
    assert manifest["totals"]["records"] == 10
    x = [f for f in manifest["schema"]["fields"] if f["name"] == "x"][0]
    assert x["type"] == "arrow.fixed_shape_tensor" and x["shape"] == [3, 5]
    for s in manifest["shards"]:
        assert set(s) == {"file", "rows", "bytes", "sha256", "batch_rows", "compression"}
    assert ShardDataset(tmp_path).stats == {"median": [1.0]}


def test_deterministic_bytes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_dataset(a, "test", SCHEMA, make_records(40), shard_bytes=2048)
    write_dataset(b, "test", SCHEMA, make_records(40), shard_bytes=2048, chunk_records=7)
    files_a = sorted(p.relative_to(a) for p in (a / "shards").iterdir())
    assert files_a == sorted(p.relative_to(b) for p in (b / "shards").iterdir())
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes()


def test_shard_boundaries_do_not_depend_on_write_chunking(tmp_path):
    table = records_to_table(make_records(100), SCHEMA)
    w1 = ShardWriter(tmp_path / "one", SCHEMA, target_bytes=1000)
    w1.write(table)
    w2 = ShardWriter(tmp_path / "many", SCHEMA, target_bytes=1000)
    for off in range(0, 100, 9):
        w2.write(table.slice(off, 9))
    rows1 = [s.rows for s in w1.close()]
    assert rows1 == [s.rows for s in w2.close()]
    assert len(rows1) > 3


def test_corrupt_shard_is_named(tmp_path):
    write_dataset(tmp_path, "test", SCHEMA, make_records(30), shard_bytes=1024)
    ds = ShardDataset(tmp_path)
    victim = tmp_path / ds.shards[1].file
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    ds = ShardDataset(tmp_path)  # first_touch: shard 0 is fine
    assert ds[0]["id"] == "r0"
    with pytest.raises(ShardError, match=r"part-00001\.arrow: checksum mismatch"):
        ds[ds.shards[1].first_row]
    with pytest.raises(ShardError, match="part-00001"):
        ShardDataset(tmp_path, verify="all")


def test_missing_and_truncated_shard(tmp_path):
    write_dataset(tmp_path, "test", SCHEMA, make_records(30), shard_bytes=1024)
    ds = ShardDataset(tmp_path)
    (tmp_path / ds.shards[0].file).unlink()
    with pytest.raises(ShardError, match=r"part-00000\.arrow: shard is missing"):
        ShardDataset(tmp_path)[0]
    p = tmp_path / ds.shards[1].file
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(ShardError, match=r"part-00001\.arrow: shard is 100 bytes"):
        ShardDataset(tmp_path, verify="none")[ds.shards[1].first_row]


@pytest.mark.parametrize("bad", ["../outside.arrow", "/etc/passwd", "shards/../../x.arrow"])
def test_manifest_paths_must_stay_inside(tmp_path, bad):
    write_dataset(tmp_path, "test", SCHEMA, make_records(5))
    m = json.loads((tmp_path / INDEX_FILE).read_text())
    m["shards"][0]["file"] = bad
    (tmp_path / INDEX_FILE).write_text(json.dumps(m))
    with pytest.raises(ShardError, match="leaves the dataset directory"):
        ShardDataset(tmp_path)


def test_not_a_dataset_and_uncommitted(tmp_path):
    with pytest.raises(ShardError, match="not a jepa-forge dataset"):
        ShardDataset(tmp_path)
    (tmp_path / "shards").mkdir()
    with pytest.raises(ShardError, match="never committed"):
        ShardDataset(tmp_path)


def test_wrong_tensor_shape_is_refused():
    recs = make_records(2)
    recs[1]["x"] = np.zeros((5, 3), np.float32)
    with pytest.raises(ValueError, match=r"field 'x': tensor of shape \(5, 3\)"):
        records_to_table(recs, SCHEMA)


def test_uncompressed_shards_are_memory_mapped(tmp_path):
    write_dataset(tmp_path, "test", SCHEMA, make_records(200))
    ds = ShardDataset(tmp_path)
    before = pa.total_allocated_bytes()
    table = ds.read_shard(0)
    # A memory-mapped read allocates nothing from Arrow's pool for the data buffers.
    assert pa.total_allocated_bytes() - before < table.nbytes / 10


def test_plain_pyarrow_reads_a_shard_without_our_code(tmp_path):
    recs = make_records(6)
    write_dataset(tmp_path, "test", SCHEMA, recs, compression="zstd")
    code = (
        "import sys, pyarrow as pa, pyarrow.ipc as ipc\n"
        "t = ipc.open_file(pa.OSFile(sys.argv[1])).read_all()\n"
        "assert isinstance(t.schema.field('x').type, pa.FixedShapeTensorType)\n"
        "print(t.column('x').combine_chunks().to_numpy_ndarray()[2].sum())\n"
        "assert 'pipelines' not in sys.modules and 'ray' not in sys.modules\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code, str(tmp_path / "shards/part-00000.arrow")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert float(out.stdout) == pytest.approx(float(recs[2]["x"].sum()), rel=1e-5)


def test_reader_imports_without_ray():
    code = "import pipelines.shards, sys; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
