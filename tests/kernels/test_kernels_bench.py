"""`python -m kernels.bench` on CPU: the table, the JSON report and the tile file it reads."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels import attention

REPO = Path(__file__).resolve().parents[2]


def test_bench_runs_on_cpu_and_reports_every_impl(tmp_path):
    tiles = tmp_path / "tiles.json"
    tiles.write_text(json.dumps({"fwd": {"64": [64, 32, 4, 3], "128/long": [128, 128, 8, 3]}}))
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "kernels.bench", "--kernels", "attention,gather,layernorm",
           "--presets", "predictor", "--reps", "1", "--warmup", "1",
           "--tiles", str(tiles), "--json", str(out)]  # fmt: skip
    # Hide any GPU: this is the CPU path's test (the device check runs this file on a GPU box).
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CPU run" in proc.stdout and "geometric-mean speedup" in proc.stdout
    report = json.loads(out.read_text())
    assert report["config"]["timing"] == "eager"  # no CUDA graphs without a GPU
    rows = report["rows"]
    impls = {(r["kernel"], r["impl"], r["phase"]) for r in rows}
    for phase in ("fwd", "bwd"):
        assert ("attention", "ours (torch reference)", phase) in impls
        assert ("attention", "sdpa padded + mask", phase) in impls
    for phase in ("fwd", "fwd+bwd"):
        assert ("gather", "apply_masks (I-JEPA)", phase) in impls
        assert ("layernorm", "ours (torch reference)", phase) in impls
        assert ("layernorm", "F.layer_norm + cast (autocast)", phase) in impls
    for r in rows:
        assert r["ms"] and r["ms"] > 0, r
        assert r["eager_ms"] == r["ms"], r
    ours = [r for r in rows if not r["baseline"]]
    assert ours and all(r["speedup"] > 0 for r in ours)


def test_load_tiles_fills_the_table_and_rejects_unknown_kernels(tmp_path, monkeypatch):
    monkeypatch.setattr(attention, "TILES", {})
    good = tmp_path / "good.json"
    tiles = {"dq": {"128/long": [128, 64, 8, 3]}, "fwd": {"32": [64, 32, 4, 2]}}
    good.write_text(json.dumps(tiles))
    attention.load_tiles(str(good))
    want = {("dq", 128, True): (128, 64, 8, 3), ("fwd", 32, False): (64, 32, 4, 2)}
    assert attention.TILES == want
    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    assert attention._block_sizes(32, cuda, "fwd", False, 196) == (64, 32, 4, 2)
    assert attention._block_sizes(128, cuda, "dq", False, 2048) == (128, 64, 8, 3)
    assert attention._block_sizes(128, cuda, "dq", False, 196) != (128, 64, 8, 3)  # short: built-in
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"bwd": {"64": [1, 2, 3, 4]}}))
    with pytest.raises(ValueError, match="unknown kernel 'bwd'"):
        attention.load_tiles(str(bad))


def test_gather_tile_file_sets_the_backward_launch(tmp_path, monkeypatch):
    from kernels import gather

    monkeypatch.setattr(gather, "BWD_TILE", dict(gather.BWD_TILE))
    good = tmp_path / "tile.json"
    tile = {"block_n": 8, "block_d": 64, "unroll": 4, "warps": 2, "chunks": 1}
    good.write_text(json.dumps(tile))
    assert gather.load_bwd_tile(str(good)) == tile
    assert gather.BWD_TILE["block_d"] == 64
    cuda = torch.device("cuda")
    grid, per_chunk, block_n, block_d, unroll, warps = gather._inverse_launch(
        64, 196, 384, True, cuda
    )
    # One chunk: every program sums all 64 samples, 4 per iteration; dpos stored directly.
    assert (block_n, block_d, unroll, warps) == (8, 64, 4, 2)
    assert grid == (25, 6, 1) and per_chunk == 64
    # Without dpos each program takes `unroll` samples.
    grid, per_chunk, *_ = gather._inverse_launch(64, 196, 384, False, cuda)
    assert grid == (25, 6, 16) and per_chunk == 4
    # A batch smaller than unroll: the loop masks the missing samples.
    grid, per_chunk, _, _, unroll, _ = gather._inverse_launch(3, 196, 384, True, cuda)
    assert grid == (25, 6, 1) and per_chunk == 3 and unroll == 4
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({**tile, "unroll": 3}))
    with pytest.raises(ValueError, match="power of two"):
        gather.load_bwd_tile(str(odd))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"block_n": 8}))
    with pytest.raises(ValueError, match="expected keys"):
        gather.load_bwd_tile(str(bad))
