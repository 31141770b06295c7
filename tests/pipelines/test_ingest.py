"""The ingest framework end to end on real fMRI files: Ray Data plan, quarantine, determinism,
resume after kill -9, rerun/overwrite rules, source listing."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ingest_testing import (
    WINDOW,
    driver_plan_in_this_process,
    plan_in_this_process,
    records,
    shard_bytes,
)

from pipelines import ingest
from pipelines.distributed import plan_groups
from pipelines.shards import INDEX_FILE, ShardDataset, ShardError
from pipelines.sources import list_sources

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local():
    import logging

    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    from modalities.fmri import generate_cohort

    root = tmp_path_factory.mktemp("cohort")
    generate_cohort(root, n_subjects=4, seed=3, n_frames=130, voxel_mm=8.0)
    return root


def run_cli(*args: str) -> tuple[int, str, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = ingest.main(["fmri", "--window", str(WINDOW), "--quiet", *args])
    return code, out.getvalue(), err.getvalue()


def without_timing(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k != "timing"}


def test_cohort_end_to_end(ray_local, cohort, tmp_path):
    out = tmp_path / "ds"
    code, stdout, _ = run_cli("--input", str(cohort), "--output", str(out))
    assert code == 0
    summary = stdout.strip().splitlines()[-1]
    assert summary.startswith("ingest fmri: 4 sources ok, 0 quarantined, 12 records")
    assert "MB/s raw input" in summary
    ds = ShardDataset(out, verify="all")
    m = ds.manifest
    assert m["modality"] == "fmri" and len(ds) == 12  # 130 frames -> 3 windows of 40, 4 scans
    assert [s["status"] for s in m["sources"]] == ["ok"] * 4
    assert all(s["records"] == 3 for s in m["sources"])
    assert m["options"]["window"] == WINDOW and "nibabel" in m["library_versions"]
    rec = ds[5]
    assert rec["bold"].shape == (rec["n_rois"], WINDOW) and rec["bold"].dtype == np.float32
    assert rec["id"] == f"{rec['source']}#2" and "sub-02" in rec["source"]
    assert np.isfinite(rec["bold"]).all() and rec["bold"].std() > 0
    assert {"roi_median", "roi_iqr", "gradients"} <= set(ds.stats)
    assert ds.errors() == [] and not (out / ingest.JOURNAL_FILE).exists()


def test_ingest_to_s3_stages_uploads_and_resumes(ray_local, s3, cohort, tmp_path, monkeypatch):
    """--write driver --output s3://...: staged locally, uploaded with the manifest last; a
    rerun uploads nothing; an upload cut short (a shard and the manifest missing) is finished by
    the rerun."""
    monkeypatch.setenv("JEPA_FORGE_CACHE", str(tmp_path / "cache"))
    s3.make_bucket("ingest")
    url = "s3://ingest/fmri/ds"
    code, stdout, err = run_cli("--input", str(cohort), "--output", url, "--write", "driver")
    assert code == 0, err
    assert stdout.strip().splitlines()[-1].endswith(f"-> {url}")
    from pipelines.remote import cache_dir, staging_dir

    remote = ShardDataset(url, verify="all")  # read back through the verified cache
    staged = staging_dir(url)  # the local ingest the upload came from
    assert len(remote) == 12 and remote.root == cache_dir(url)
    for name in ["index.json", "stats.json", *(s.file for s in remote.shards)]:
        assert (remote.root / name).read_bytes() == (staged / name).read_bytes(), name

    code, stdout, err = run_cli("--input", str(cohort), "--output", url, "--write", "driver")
    assert code == 0 and "(already complete)" in stdout and "uploaded 0 shard(s)" in err

    shard = remote.shards[0].file
    s3.delete(f"ingest/fmri/ds/{shard}")
    s3.delete("ingest/fmri/ds/index.json")
    with pytest.raises(ShardError, match="no index.json"):  # no manifest: not a dataset yet
        ShardDataset(url)
    code, _, err = run_cli("--input", str(cohort), "--output", url, "--write", "driver")
    assert code == 0 and "uploaded 1 shard(s)" in err
    assert len(ShardDataset(url, verify="all")) == 12


def write_bad_files(d: Path, cohort: Path) -> dict[str, str]:
    """Bad inputs with a NIfTI name; returns file name -> a word its reason must contain."""
    import nibabel as nib

    d.mkdir(parents=True, exist_ok=True)
    (d / "empty.nii.gz").write_bytes(b"")
    (d / "notes.nii").write_text("these are my notes, not a scan\n" * 20)
    good = next(cohort.glob("sub-*/func/*.nii.gz")).read_bytes()
    (d / "truncated.nii.gz").write_bytes(good[: len(good) // 2])
    img3d = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4))
    nib.save(img3d, d / "anat3d.nii.gz")
    (d / "garbage.nii.gz").write_bytes(gzip.compress(os.urandom(600)))
    return {
        "empty": "empty",
        "notes": "nifti",
        "truncated": "truncated",
        "anat3d": "3d",
        "garbage": "nifti",
    }


def test_bad_files_are_quarantined_and_good_ones_land(ray_local, cohort, tmp_path):
    bad = write_bad_files(tmp_path / "bad", cohort)
    out = tmp_path / "ds"
    code, stdout, _ = run_cli(
        "--input", str(cohort), "--input", str(tmp_path / "bad"), "--output", str(out)
    )
    assert code == 0, "quarantine alone must not fail the run"
    assert "4 sources ok, 5 quarantined, 12 records" in stdout
    errors = {Path(e["path"]).name.split(".")[0]: e for e in ShardDataset(out).errors()}
    assert set(errors) == set(bad)
    for name, word in bad.items():
        assert word in errors[name]["reason"].lower(), errors[name]
    assert len(ShardDataset(out, verify="all")) == 12
    # --strict turns quarantine into failure, without redoing the work
    code, stdout, err = run_cli(
        "--input", str(cohort), "--input", str(tmp_path / "bad"), "--output", str(out), "--strict"
    )
    assert code == 1 and "already complete" in stdout and "--strict" in err


def test_no_good_source_fails(ray_local, cohort, tmp_path):
    write_bad_files(tmp_path / "bad", cohort)
    code, _, err = run_cli("--input", str(tmp_path / "bad"), "--output", str(tmp_path / "ds"))
    assert code == 1 and "no source was ingested" in err
    code, _, err = run_cli("--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "x"))
    assert code == 2 and "no such file or directory" in err


def test_deterministic_and_rerun_rules(ray_local, cohort, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert run_cli("--input", str(cohort), "--output", str(out), "--shard-size", "0.05")[0] == 0
    assert len(shard_bytes(a)) > 1 and shard_bytes(a) == shard_bytes(b)
    ma, mb = (json.loads((d / INDEX_FILE).read_text()) for d in (a, b))
    assert without_timing(ma) == without_timing(mb)
    assert (a / "stats.json").read_bytes() == (b / "stats.json").read_bytes()
    # same job again: nothing to do; other options: refused unless --overwrite
    code, stdout, _ = run_cli("--input", str(cohort), "--output", str(a), "--shard-size", "0.05")
    assert code == 0 and "already complete" in stdout
    code, _, err = run_cli("--input", str(cohort), "--output", str(a))
    assert code == 2 and "--overwrite" in err
    assert shard_bytes(a) == shard_bytes(b), "a refused run must not touch the dataset"
    code, _, _ = run_cli("--input", str(cohort), "--output", str(a), "--overwrite")
    assert code == 0 and len(shard_bytes(a)) == 1


def test_refuses_foreign_directory(ray_local, cohort, tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    code, _, err = run_cli("--input", str(cohort), "--output", str(tmp_path))
    assert code == 2 and "not a jepa-forge dataset" in err
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_url_and_glob_sources(ray_local, cohort, tmp_path):
    scans = sorted(cohort.glob("sub-*/func/*.nii.gz"))
    url = "file://" + str(scans[0])
    pattern = str(cohort / "sub-0[23]" / "func" / "*.nii.gz")
    out = tmp_path / "ds"
    code, stdout, _ = run_cli("--input", url, "--input", pattern, "--output", str(out))
    assert code == 0 and "3 sources ok" in stdout
    paths = [s["path"] for s in ShardDataset(out).manifest["sources"]]
    assert url in paths and str(scans[1]) in paths and str(scans[2]) in paths


def test_list_sources_filters_and_reports(cohort, tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / "scan.nii").write_bytes(b"")
    sources, problems = list_sources(
        [
            str(tmp_path),
            str(cohort / "sub-01"),
            str(tmp_path / "missing.nii"),
            str(tmp_path / "*.nii.gz"),
        ],
        lambda p: p.endswith((".nii", ".nii.gz")),
    )
    assert [s.path for s in sources] == sorted(s.path for s in sources)
    assert {Path(s.path).name for s in sources} == {"scan.nii", "sub-01_task-rest_bold.nii.gz"}
    assert any("missing.nii: no such file" in p for p in problems)
    assert any("matches no file" in p for p in problems)


def test_plan_groups_are_contiguous_runs_of_the_input():
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = rng.integers(0, 100, rng.integers(1, 40)).tolist()
        limit = int(rng.integers(1, 300))
        groups = plan_groups(sizes, limit)
        assert groups[0][0] == 0 and groups[-1][1] == len(sizes)
        assert all(a < b for a, b in groups) and all(
            groups[k][1] == groups[k + 1][0] for k in range(len(groups) - 1)
        )
        for a, b in groups[:-1]:  # each closed group reached the limit, and only at its end
            assert sum(sizes[a:b]) >= limit and sum(sizes[a : b - 1]) < limit
    with pytest.raises(ValueError):
        plan_groups([1], 0)


def test_workers_write_the_records_the_driver_writes(ray_local, cohort, tmp_path):
    """--write workers: groups of sources, each written by a task; the same records in the same
    order as the driver writes them, the same statistics and quarantine, shards byte-identical
    to the plan run in one process without Ray; a rerun is a no-op."""
    bad = write_bad_files(tmp_path / "bad", cohort)
    inputs = ["--input", str(cohort), "--input", str(tmp_path / "bad")]
    workers, driver = tmp_path / "workers", tmp_path / "driver"
    opts = ["--write", "workers", "--group-size", "1.5", "--shard-size", "0.05"]
    code, stdout, _ = run_cli(*inputs, "--output", str(workers), *opts)
    assert code == 0 and "4 sources ok, 5 quarantined, 12 records" in stdout
    names = sorted(shard_bytes(workers))
    assert len({n.split("-")[1] for n in names}) > 1, names  # several groups wrote shards
    assert run_cli(*inputs, "--output", str(driver), "--write", "driver")[0] == 0
    assert records(workers) == records(driver)
    assert (workers / "stats.json").read_bytes() == (driver / "stats.json").read_bytes()
    errors = {Path(e["path"]).name.split(".")[0] for e in ShardDataset(workers).errors()}
    assert errors == set(bad)
    one = tmp_path / "one-process"
    plan_in_this_process([str(cohort), str(tmp_path / "bad")], one, *opts)
    assert shard_bytes(one) == shard_bytes(workers)
    code, stdout, _ = run_cli(*inputs, "--output", str(workers), *opts)
    assert code == 0 and "already complete" in stdout
    # who wrote the shards is not the dataset's identity (the same records): up to date
    code, stdout, _ = run_cli(*inputs, "--output", str(workers), "--shard-size", "0.05")
    assert code == 0 and "already complete" in stdout, "another group size: the same records"
    code, _, err = run_cli(*inputs, "--output", str(workers), "--group-size", "1.5")
    assert code == 2 and "--overwrite" in err, "another shard size is another dataset"
    code, stdout, _ = run_cli(*inputs, "--output", str(driver), "--write", "workers")
    assert code == 0 and "already complete" in stdout


def test_workers_write_straight_to_s3(ray_local, s3, cohort, tmp_path, monkeypatch):
    """--write workers with an s3:// output: the shards go from the workers to the bucket,
    never through the driver's staging directory, which uploads the manifest last."""
    from pipelines.remote import staging_dir

    monkeypatch.setenv("JEPA_FORGE_CACHE", str(tmp_path / "cache"))
    s3.make_bucket("direct")
    url = "s3://direct/fmri"
    opts = ["--write", "workers", "--group-size", "1.5"]
    code, stdout, err = run_cli("--input", str(cohort), "--output", url, *opts)
    assert code == 0, err
    assert "uploaded 0 shard(s)" in err  # the workers put every shard there already
    assert not list(staging_dir(url).rglob("*.arrow"))
    local = tmp_path / "local"
    plan_in_this_process([str(cohort)], local, *opts)
    remote = ShardDataset(url, verify="all")  # through the verified cache
    assert len(remote) == 12 and shard_bytes(remote.root) == shard_bytes(local)
    code, stdout, _ = run_cli("--input", str(cohort), "--output", url, *opts)
    assert code == 0 and "already complete" in stdout
    # a shard lost from the bucket: the rerun writes the dataset again
    s3.delete(f"direct/fmri/{remote.shards[0].file}")
    code, stdout, err = run_cli("--input", str(cohort), "--output", url, *opts)
    assert code == 0 and "already complete" not in stdout, err
    again = ShardDataset(url, verify="all")
    assert len(again) == 12 and shard_bytes(again.root) == shard_bytes(local)


def _ingest_cmd(cohort: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipelines.ingest",
        "fmri",
        "--input",
        str(cohort),
        "--window",
        str(WINDOW),
        "--num-cpus",
        "2",
        "--quiet",
        *extra,
    ]


ENV = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}


def kill_when_journalled(cmd: list[str], out: Path, key: str) -> dict:
    """Run `cmd` writing to `out`; kill -9 its whole process group as soon as its journal's
    `key` is non-empty (a shard or a group committed); return that journal."""
    proc = subprocess.Popen(
        [*cmd, "--output", str(out)],
        env=ENV,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    journal = out / ingest.JOURNAL_FILE
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.exists() and json.loads(journal.read_text() or "{}").get(key):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not (out / INDEX_FILE).exists(), "killed before completion: no manifest yet"
    return json.loads(journal.read_text())


def resume(cmd: list[str], out: Path, records: int = 12) -> None:
    done = subprocess.run(
        [*cmd, "--output", str(out)], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "(resumed)" in done.stdout
    ds = ShardDataset(out, verify="all")
    ids = [r for b in ds.iter_batches(columns=["id"]) for r in b.column("id").to_pylist()]
    assert len(ids) == len(set(ids)) == records


def test_resume_after_kill_is_byte_identical(cohort, tmp_path):
    """kill -9 the whole job after its first shard is committed; rerun; the shards equal what
    the driver writes from every source read in order (no Ray)."""
    cmd = _ingest_cmd(cohort, "--shard-size", "0.02", "--write", "driver")
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    assert kill_when_journalled(cmd, killed, "shards")["shards"]
    # the default (--write workers) does not take over a driver's unfinished job: it says how
    code, _, err = run_cli("--input", str(cohort), "--output", str(killed), "--shard-size", "0.02")
    assert code == 2 and "--write driver" in err
    resume(cmd, killed)
    driver_plan_in_this_process([str(cohort)], clean, "--shard-size", "0.02")
    assert shard_bytes(killed) == shard_bytes(clean)
    listed = [s["file"] for s in json.loads((killed / INDEX_FILE).read_text())["shards"]]
    assert [Path(f).name for f in listed] == list(shard_bytes(clean))


def test_workers_write_resume_after_kill_is_byte_identical(cohort, tmp_path):
    """--write workers, one source per group: kill -9 once a group is journalled, rerun: the
    journalled groups are kept, the rest redone, partial groups' shards replaced; the shards
    equal the plan run in one process."""
    import shutil

    # the cohort three times over (12 sources, 12 groups of one): the kill lands long before the
    # last group even when this process polls late (with 4 groups a loaded machine once saw all
    # four journalled between two polls)
    inputs = tmp_path / "in"
    for copy in ("a", "b", "c"):
        shutil.copytree(cohort, inputs / copy)
    opts = ("--write", "workers", "--group-size", "0.001", "--shard-size", "0.02")
    # one CPU: groups finish one at a time
    cmd = [*_ingest_cmd(inputs, *opts), "--num-cpus", "1"]
    killed = tmp_path / "killed"
    groups = kill_when_journalled(cmd, killed, "groups")["groups"]
    assert 0 < len(groups) < 12
    resume(cmd, killed, records=36)
    one = tmp_path / "one-process"
    plan_in_this_process([str(inputs)], one, *opts)
    assert shard_bytes(killed) == shard_bytes(one)


NICENESS_PROBE = """
import os, sys
from pathlib import Path
import ray
from pipelines.ingest import NICENESS_ENV, IngestConfig, _init_ray
if len(sys.argv) > 1:
    os.environ[NICENESS_ENV] = sys.argv[1]
_init_ray(IngestConfig(modality="fmri", inputs=[], output=Path("."), options=None, num_cpus=1))
nice = ray.get(ray.remote(lambda: os.nice(0)).remote())
print(nice, os.environ.get(NICENESS_ENV))
ray.shutdown()
"""


@pytest.mark.parametrize("given", [None, "7"])
def test_a_local_instance_runs_its_workers_at_the_drivers_priority(given):
    """Ray's own default runs workers at nice 15 (starved beside any busy process: 8x slower in
    docs/cluster.md); an instance the ingest starts uses 0, unless RAY_worker_niceness says."""
    argv = [sys.executable, "-c", NICENESS_PROBE] + ([given] if given else [])
    env = {k: v for k, v in ENV.items() if k != ingest.NICENESS_ENV}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    nice, left = done.stdout.split()[-2:]
    base = os.nice(0)  # the driver's own
    assert int(nice) == (base + 7 if given else base)
    assert left == (given or "None")  # the driver's environment is left as it was
