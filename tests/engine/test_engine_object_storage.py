"""Training and probing a dataset in object storage (moto's S3 server on localhost, the standard
AWS variables): the same losses as from the local copy, an exact resume, a probe, a run directory
named after the URL's last part."""

from __future__ import annotations

import json
import shutil

from conftest import run_cli, train_args


def _losses(run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines)]


def test_train_resume_and_probe_from_s3(s3, grid_data, trained_run, tmp_path, monkeypatch):
    monkeypatch.setenv("JEPA_FORGE_CACHE", str(tmp_path / "cache"))
    s3.make_bucket("engine-data")
    url = "s3://engine-data/cohorts/grid"
    s3.upload(grid_data, url)

    # trained_run's arguments on the S3 copy: the same losses, step by step
    run = tmp_path / "from-s3"
    proc = run_cli(train_args(url, run, 30, 15, "optim.lr=2e-3"))
    assert "caching s3://engine-data/cohorts/grid/shards/" in proc.stderr
    assert _losses(run) == _losses(trained_run)
    saved = (run / "config.yaml").read_text()
    assert f"path: {url}" in saved  # the run records where its data lives, not the cache

    # killed after step 15 (its last checkpoint removed): resumes from S3, same losses
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-00000030")
    proc = run_cli(train_args(url, resumed, 30, 15, "optim.lr=2e-3", "--resume", "auto"))
    assert "caching" not in proc.stderr  # the verified cache serves it
    assert _losses(resumed) == _losses(trained_run)

    probe = ["engine.probe", "--checkpoint", str(run), "--data", url, "--label", "label"]
    out = run_cli([*probe, "--folds", "3"])
    assert "probe label: accuracy" in out.stdout


def test_a_run_directory_is_named_after_the_url():
    from engine.train import dataset_name

    assert dataset_name("s3://bucket/cohorts/hcp/") == "hcp"
    assert dataset_name("gs://bucket/eeg") == "eeg"
