"""Dataset and run locations: local paths and file:// URLs are honoured; datasets are read from
object storage (tests/pipelines/test_object_storage.py), a URL no filesystem opens is an error
naming it; ingest outputs and run directories in object storage are refused, never written as a
local folder named after the scheme."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import ingest
from pipelines.shards import ShardDataset, ShardError, local_path


def test_local_path_forms(tmp_path: Path) -> None:
    assert local_path(tmp_path) == tmp_path
    assert local_path(str(tmp_path / "ds")) == tmp_path / "ds"
    assert local_path(f"file://{tmp_path}/a%20b") == tmp_path / "a b"
    assert local_path(f"file://localhost{tmp_path}") == tmp_path
    with pytest.raises(ShardError, match="not local"):
        local_path("file://otherhost/data")
    for url in ("s3://bucket/ds", "gs://b/d", "hdfs://nn:8020/d", "https://x.org/d"):
        with pytest.raises(ShardError, match=url.split("://")[0] + ":// dataset"):
            local_path(url)


def test_dataset_reader_names_a_url_it_cannot_open() -> None:
    with pytest.raises(ShardError, match=r"https://x.org/ds: cannot open this URL"):
        ShardDataset("https://x.org/ds")


def test_ingest_to_a_bucket_that_is_not_there_fails_first(
    s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JEPA_FORGE_CACHE", str(tmp_path / "cache"))
    code = ingest.main(["fmri", "--input", str(tmp_path), "--output", "s3://nobucket/ds"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--output s3://nobucket/ds: the bucket 'nobucket' does not exist" in err
    assert list(tmp_path.iterdir()) == []  # no folder named "s3:" (what it once wrote), no stage


def test_train_refuses_object_store_run_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from engine.train import main

    monkeypatch.chdir(tmp_path)
    assert main(["--data", "https://x.org/ds"]) == 1
    assert "engine.train: error: https://x.org/ds: cannot open this URL" in capsys.readouterr().err
    assert main(["--data", str(tmp_path), "--out", "gs://bucket/run"]) == 1
    assert "gs://bucket/run: gs:// run locations" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
