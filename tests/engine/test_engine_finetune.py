"""engine.finetune: S-JEPA's three downstream heads on a trained run, beside random init; the
pre-local head's premise; one-line errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from grid_testing import grid_records, grid_schema

from engine.checkpoint import latest_checkpoint
from engine.finetune import HEADS, main
from modalities.grid import grid_patches
from pipelines.shards import write_dataset

pytestmark = pytest.mark.slow


def test_mixing_rows_before_tokenizing_equals_mixing_tokens_of_one_time():
    """The pre-local head applies its spatial filter to the token grid: the same as mixing the
    raw rows first and cutting the mixed rows into tokens (both linear, tokens are slices)."""
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(6, 64)).astype(np.float32)
    w = rng.normal(size=(3, 6)).astype(np.float32)
    mixed_then_cut, _ = grid_patches(w @ raw, 16)
    tokens, coords = grid_patches(raw, 16)
    grid = np.zeros((6, 4, 16), np.float32)
    grid[coords[:, 0], coords[:, 1]] = tokens
    cut_then_mixed = np.einsum("rtp,kr->ktp", grid, w).reshape(-1, 16)
    np.testing.assert_allclose(cut_then_mixed, mixed_then_cut, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("head", HEADS)
def test_each_head_fine_tunes_beside_random_init(trained_run, grid_data, head, tmp_path, capsys):
    out = tmp_path / f"{head}.json"
    # the heads that run the whole encoder fine-tune with A-JEPA's regularised masking here
    mask = ["--mask-ratio", "0.25"] if head in ("pooled", "contextual") else []
    rc = main(
        ["--checkpoint", str(trained_run), "--data", str(grid_data), "--label", "label"]
        + ["--head", head, "--folds", "2", "--epochs", "2", "--json", str(out), "--quiet"]
        + mask
    )
    assert rc == 0, capsys.readouterr().err
    rec = json.loads(out.read_text())
    assert rec["head"] == head and rec["folds"] == 2 and rec["grid"] == [8, 4]
    assert rec["mask_ratio"] == (0.25 if mask else 0.0) and rec["mask_shape"] == "strips"
    assert rec["group_by"] == "subject" and rec["records"] == 64
    for name in ("pretrained", "random-init"):
        res = rec["results"][name]
        assert res["metric"] == "accuracy" and len(res["scores"]) == 2
        assert all(0.0 <= s <= 1.0 for s in res["scores"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"finetune label ({head}, tune full): accuracy ")
    assert lines[0].endswith("pretrained)") and lines[1].endswith("random-init)")


def test_frozen_head_tuning_leaves_the_encoder_alone_and_json_lands_by_the_checkpoint(
    trained_run, grid_data, capsys
):
    rc = main(
        ["--checkpoint", str(trained_run), "--data", str(grid_data), "--label", "label"]
        + ["--head", "post-local", "--tune", "head", "--folds", "2", "--epochs", "1", "--quiet"]
    )
    assert rc == 0, capsys.readouterr().err
    path = latest_checkpoint(trained_run) / "finetune-label-post-local-head-target.json"
    assert json.loads(path.read_text())["tune"] == "head"
    from engine.export import load_encoder
    from engine.finetune import FinetuneModel

    enc, _, _ = load_encoder(trained_run)
    model = FinetuneModel(enc, "post-local", 8, 4, 2)
    assert {id(p) for p in model.pretrained()} == {id(p) for p in enc.embedder.parameters()}
    assert torch.is_tensor(model.spatial.weight) and model.out.in_features == 4 * 4 * 32
    # the pooled head: the whole encoder, mean and std of its features, one linear layer
    pooled = FinetuneModel(enc, "pooled", 8, 4, 2)
    assert pooled.spatial is None and pooled.out.in_features == 2 * 32
    assert {id(p) for p in pooled.pretrained()} == {id(p) for p in enc.parameters()}


def _other_modality(root):
    schema = pa.schema([("id", pa.string()), ("x", pa.float32())])
    write_dataset(root, "eeg", schema, [{"id": "a", "x": 1.0}])
    return root


def _constant_label(root):
    records = [dict(r, label=1) for r in grid_records(16, 8, 64, 0)]
    write_dataset(root, "grid", grid_schema(8, 64), records, stats={})
    return root


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        (
            "other modality",
            "its encoder was trained on 'grid' records, not 'eeg'",
        ),
        ("missing label", "no column 'nope'"),
        ("constant label", "single class"),
        ("not a run", "checkpoint"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(trained_run, grid_data, tmp_path, capsys, case, reason):
    data, ckpt, label = str(grid_data), str(trained_run), "label"
    if case == "other modality":
        data = str(_other_modality(tmp_path / "eeg"))
    elif case == "missing label":
        label = "nope"
    elif case == "constant label":
        data = str(_constant_label(tmp_path / "const"))
    else:
        (tmp_path / "empty").mkdir()
        ckpt = str(tmp_path / "empty")
    rc = main(["--checkpoint", ckpt, "--data", data, "--label", label, "--head", "contextual"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1
    assert err[0].startswith("engine.finetune: error: ") and reason in err[0]


def test_regression_targets_are_scored_as_r2(trained_run, grid_data, tmp_path, capsys):
    out = tmp_path / "reg.json"
    rc = main(
        ["--checkpoint", str(trained_run), "--data", str(grid_data), "--label", "label"]
        + ["--head", "pre-local", "--task", "regression", "--folds", "2", "--epochs", "2"]
        + ["--json", str(out), "--quiet"]
    )
    assert rc == 0, capsys.readouterr().err
    res = json.loads(out.read_text())["results"]
    assert res["pretrained"]["metric"] == "r2" and len(res["random-init"]["scores"]) == 2
    assert all(np.isfinite(s) and s <= 1.0 for s in res["pretrained"]["scores"])


def test_regularised_masks_take_whole_strips_or_a_share_of_tokens():
    """A-JEPA's fine-tuning masks over 1000 draws of an 8-row x 32-time grid: strips are whole
    time columns and whole rows, a fraction R of each; tokens are a fraction R; never all."""
    from engine.finetune import regularised_mask

    rows, times = np.meshgrid(np.arange(8), np.arange(32), indexing="ij")
    coords = np.stack([rows.ravel(), times.ravel()], 1)
    rng = np.random.default_rng(0)
    for _ in range(1000):
        m = regularised_mask(coords, 0.25, "strips", rng).reshape(8, 32)
        full_cols, full_rows = m.all(axis=0), m.all(axis=1)
        assert full_rows.sum() == 2 and full_cols.sum() == 8
        assert np.array_equal(m, full_rows[:, None] | full_cols[None, :])
        t = regularised_mask(coords, 0.3, "tokens", rng)
        assert t.sum() == round(0.3 * 256)
    assert not regularised_mask(coords[:1], 0.9, "tokens", rng).any()  # never every token


def test_regularised_masking_replaces_content_not_positions_and_only_in_training(trained_run):
    from engine.batch import pack_tokens
    from engine.export import load_encoder
    from engine.finetune import FinetuneModel, TokenGrids

    enc, _, _ = load_encoder(trained_run)
    rng = np.random.default_rng(1)
    coords = np.stack(np.meshgrid(np.arange(8), np.arange(4), indexing="ij"), -1).reshape(-1, 2)
    grids = TokenGrids([rng.normal(size=(32, 16)).astype(np.float32)] * 2, [coords] * 2, 8, 4)
    idx = np.array([0, 1])
    with pytest.raises(ValueError, match="runs none"):
        FinetuneModel(enc, "post-local", 8, 4, 2, mask_ratio=0.3)
    model = FinetuneModel(enc, "pooled", 8, 4, 2, mask_ratio=0.5, mask_shape="tokens", seed=3)
    batch = pack_tokens([grids.tokens[i] for i in idx], [grids.coords[i] for i in idx])
    plain = enc.forward_all(batch.tokens, batch.coords, batch.n_tokens, batch.packing)
    model.eval()
    assert torch.equal(model._encode(grids, idx), plain)  # evaluation: never masked
    model.train()
    seen = {}
    original = model.encoder.encode_padded

    def spy(x, *rest):
        seen["x"] = x
        return original(x, *rest)

    model.encoder.encode_padded = spy
    out = model._encode(grids, idx)
    x, clean = seen["x"], enc.embed(batch.tokens, batch.coords)
    blank = enc.embed(torch.zeros_like(batch.tokens), batch.coords) + model.mask_embed
    replaced = (x - clean).abs().amax(-1) > 0
    assert replaced.sum(1).tolist() == [16, 16]  # half of each record's 32 tokens
    torch.testing.assert_close(x[replaced], blank[replaced])
    assert not torch.equal(out, plain)
    out.sum().backward()
    assert model.mask_embed.grad is not None and model.mask_embed.grad.abs().sum() > 0


def test_a_learning_curve_leaves_the_final_score_as_it_was(trained_run):
    """finetune_fold's `report` evaluates every k epochs without drawing random numbers: the
    final score with the curve equals the one without (masking on, so the mask draws count)."""
    import argparse

    from engine.export import load_encoder
    from engine.finetune import TokenGrids, finetune_fold

    enc, _, _ = load_encoder(trained_run)
    rng = np.random.default_rng(2)
    coords = np.stack(np.meshgrid(np.arange(8), np.arange(4), indexing="ij"), -1).reshape(-1, 2)
    y = torch.tensor(rng.integers(0, 2, 24))
    tokens = [rng.normal(size=(32, 16)).astype(np.float32) + float(v) for v in y]
    grids = TokenGrids(tokens, [coords] * 24, 8, 4)
    train, test = np.arange(16), np.arange(16, 24)
    loop = argparse.Namespace(
        seed=0, head="pooled", filters=4, tune="full", lr=1e-3, weight_decay=0.01, epochs=5,
        batch_size=4, mask_ratio=0.3, mask_shape="tokens",
    )  # fmt: skip
    plain = finetune_fold(enc, grids, y, train, test, loop, True, 2)
    curve: list[tuple[int, float]] = []
    traced = finetune_fold(
        enc, grids, y, train, test, loop, True, 2, lambda e, s: curve.append((e, s)), 2
    )
    assert traced == plain
    assert [e for e, _ in curve] == [2, 4] and all(0 <= s <= 1 for _, s in curve)
