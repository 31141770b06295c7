"""Several datasets in one run (`data.sources`): the weighted, deterministic epoch mix, batches
of one modality, per-source tokenization, a shared trunk with one embedder per modality trained
end to end, resumed exactly, probed and exported per modality."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import TINY, run_cli
from grid_testing import BOTH_SPEC, MODALITY, MODALITY2, write_grid_dataset
from safetensors.torch import load_file

from engine.checkpoint import consolidate_target
from engine.config import ConfigError, load_config
from engine.data import (
    DataSources,
    JEPALoader,
    epoch_batches,
    epoch_order,
    global_batches,
    method_options,
    modality_section,
    quotas,
)
from engine.train import data_values
from engine.trainer import check_several, group_rates, param_groups
from pipelines.shards import ShardDataset

# TINY's data.modality names one modality object; these runs name one per modality
BASE = [o for o in TINY if not o.startswith("data.modality=")]


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    """Two datasets of one modality (40 and 24 records) and one of another (24 records of a
    different grid: 6 rows x 48 frames, 18 tokens)."""
    root = tmp_path_factory.mktemp("sources")
    a = write_grid_dataset(root / "a", n=40, seed=0)
    b = write_grid_dataset(root / "b", n=24, seed=1)
    c = write_grid_dataset(root / "c", n=24, rows=6, frames=48, seed=2, modality="grid2")
    return a, b, c


def _cfg(paths, weights=None, *extra):
    values = data_values([str(p) for p in paths], weights)
    return load_config(overrides=[*BASE, *extra], values=values)


def test_quotas_split_an_epoch_by_weight():
    assert quotas([40, 24], [1, 3]) == [16, 48]
    assert quotas([40, 24], [1, 1]) == [32, 32]
    q = quotas([10, 10, 10], [1, 1, 1])  # 30 / 3 exactly; then a remainder to place
    assert q == [10, 10, 10] and sum(quotas([7, 7, 7], [1, 1, 2])) == 21
    assert quotas([7, 7, 7], [1, 1, 2]) == [5, 5, 11]


def test_one_source_keeps_the_single_dataset_order(cohorts):
    a, _, _ = cohorts
    cfg = _cfg([a])
    rows = [s.rows for s in ShardDataset(a).shards]
    want = global_batches(epoch_order(rows, 3, 2, 1024), 8)
    got = epoch_batches(DataSources(cfg, MODALITY), 3, 2, 1024, 8, "sample")
    np.testing.assert_array_equal(got, want)


def test_mixed_epochs_draw_each_source_by_weight_from_its_own_stream(cohorts):
    a, b, _ = cohorts
    src = DataSources(_cfg([a, b], "1,3", "data.batch_size=4"), MODALITY)
    assert [(s.rows, s.offset) for s in src.sources] == [(40, 0), (24, 40)]
    epochs = [epoch_batches(src, 0, e, 1024, 8, "sample").reshape(-1) for e in range(3)]
    for flat in epochs:
        assert len(flat) == 64  # sum of rows; 16 + 48 drawn, cut into global batches of 8
        assert (flat < 40).sum() == 16 and (flat >= 40).sum() == 48
    np.testing.assert_array_equal(epochs[0], epoch_batches(src, 0, 0, 1024, 8, "sample").ravel())
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[0], epoch_batches(src, 1, 0, 1024, 8, "sample").ravel())
    # b's 48 draws per epoch walk its own stream: two full passes per epoch, every record twice
    counts = np.bincount(np.concatenate(epochs)[np.concatenate(epochs) >= 40] - 40)
    assert counts.tolist() == [6] * 24
    # a's 16 per epoch continue where the last epoch stopped: epochs 0 and 1 draw 32 distinct
    # records of its first pass, epoch 2 the pass's other 8 and 8 of the next
    a_draws = [e[e < 40] for e in epochs]
    assert len(np.unique(np.concatenate(a_draws[:2]))) == 32
    assert len(np.unique(np.concatenate(a_draws))) == 40


def test_modality_batches_hold_one_modality_and_its_own_tokens(cohorts):
    a, _, c = cohorts
    cfg = _cfg([a, c], None, "data.mix=modality", "data.num_workers=0", "data.batch_size=4")
    mods = {"grid": MODALITY, "grid2": MODALITY2}
    src = DataSources(cfg, mods)
    assert src.several and src.names == ["grid", "grid2"]
    batches = epoch_batches(src, 0, 0, 1024, 8, "modality")
    assert all((row < 40).all() or (row >= 40).all() for row in batches)
    kinds = {"grid": 0, "grid2": 0}
    datasets = {"grid": (ShardDataset(a), 0), "grid2": (ShardDataset(c), 40)}
    for rank in (0, 1):
        it = iter(JEPALoader(cfg, mods, rank, 2))
        for _ in range(len(batches)):
            batch = next(it)
            kinds[batch.modality] += 1
            ds, offset = datasets[batch.modality]
            mod = mods[batch.modality]
            first = int(batch.index[0]) - offset
            t = mod.tokenize(ds[first], ds.stats, method_options(mod, cfg))
            n = len(t["tokens"])
            assert n == (32 if batch.modality == "grid" else 18)
            np.testing.assert_array_equal(batch.tokens[0, :n].numpy(), t["tokens"])
    assert kinds["grid"] > 0 and kinds["grid2"] > 0


def test_a_mixed_loader_resumes_at_the_next_batch(cohorts):
    a, b, _ = cohorts
    cfg = _cfg([a, b], "2,1", "data.num_workers=0", "data.batch_size=4")
    full = iter(JEPALoader(cfg, MODALITY))
    seq = [next(full).index.tolist() for _ in range(20)]  # past the end of epoch 0 (16)
    loader = JEPALoader(cfg, MODALITY)
    it = iter(loader)
    for _ in range(13):
        next(it)
    resumed = JEPALoader(cfg, MODALITY)
    resumed.load_state_dict(loader.state_dict())
    it2 = iter(resumed)
    assert [next(it2).index.tolist() for _ in range(7)] == seq[13:]


@pytest.mark.parametrize(
    ("paths", "weights", "extra", "reason"),
    [
        ("ac", None, [], "data.mix: the sources hold several modalities"),
        ("ac", None, ["data.mix=modality", "data.modality=grid_testing:MODALITY"], "name=SPEC"),
        ("ab", "1,2,3", [], "--weights: 3 weights for 2 --data"),
        ("ab", "1,x", [], "--weights: expected numbers"),
        ("a", "1", [], "--weights: give it with two or more --data"),
        ("ab", "1,0", [], "data.sources[1].weight: must be > 0"),
        ("aa", None, [], "data.sources: lists a dataset twice"),
    ],
)
def test_sources_that_cannot_share_a_run_are_named(cohorts, paths, weights, extra, reason):
    by = dict(zip("abc", cohorts, strict=True))
    with pytest.raises(ConfigError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        cfg = _cfg([by[k] for k in paths], weights, *extra)
        DataSources(cfg, None if extra else {"grid": MODALITY, "grid2": MODALITY2})
    with pytest.raises(ConfigError, match="data.path: give data.path or data.sources"):
        load_config(values={"data.path": "x", "data.sources": [{"path": "y"}]})


def test_a_modality_too_light_to_fill_a_batch_is_refused(cohorts):
    starved = _cfg([cohorts[0], cohorts[2]], "40,1", "data.mix=modality", "data.batch_size=4")
    with pytest.raises(ConfigError, match=r"grid2 draws 2 samples per epoch .* never be trained"):
        JEPALoader(starved, {"grid": MODALITY, "grid2": MODALITY2}, 0, 2)


def test_options_per_modality_and_what_a_shared_trunk_refuses():
    cfg = load_config(
        overrides=["modality.grid.patch_len=8", "modality.grid2.patch_len=16"],
        values={"data.sources": [{"path": "a"}, {"path": "c"}]},
    )
    assert cfg.modality == {"grid": {"patch_len": 8}, "grid2": {"patch_len": 16}}
    assert method_options(MODALITY, cfg).patch_len == 8
    assert method_options(MODALITY2, cfg).patch_len == 16
    with pytest.raises(ConfigError, match=r"modality.masks: with options per modality"):
        modality_section({"grid": {}, "masks": []}, "grid")
    with pytest.raises(ConfigError, match="is a modality's section"):
        load_config(overrides=["modality.grid.patch_len=8", "modality.grid=3"])
    names = ["grid", "grid2"]
    for override, reason in (
        ("loss.objective=mae", "MAE's predictor regresses one modality's patches"),
        ("train.zero_stage=3", "not supported yet"),
        ("modality.patch_len=8", r"under its name \(modality.grid.patch_len\)"),
    ):
        with pytest.raises(ConfigError, match=reason):
            check_several(load_config(overrides=[override]), names)


def _run_args(cohorts, out, steps, *extra):
    a, _, c = cohorts
    return [
        "engine.train",
        *("--data", str(a), "--data", str(c), "--weights", "1,2"),
        *("--out", str(out), "--steps", str(steps), "--save-every", str(steps // 2)),
        *BASE,
        f"data.modality={BOTH_SPEC}",
        "data.mix=modality",
        "train.diag_every=3",
        *extra,
    ]


def test_a_shared_trunk_trains_resumes_exactly_and_probes_each_modality(cohorts, tmp_path):
    a, _, c = cohorts
    run = tmp_path / "both"
    run_cli(_run_args(cohorts, run, 12))
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 12 and all(np.isfinite(r["loss"]) for r in recs)
    # every step's batch is one modality's, its loss logged under that name too
    kinds = [next(k for k in r if k.startswith("loss_")) for r in recs]
    assert set(kinds) == {"loss_grid", "loss_grid2"}
    assert all(r[k] == r["loss"] for r, k in zip(recs, kinds, strict=True))
    assert any("attn_entropy_0" in r for r in recs)

    # both embedders and one trunk in the target; each embedder moved from its start
    late = consolidate_target(run / "checkpoints" / "step-00000012")
    early = consolidate_target(run / "checkpoints" / "step-00000006")
    for name in ("grid", "grid2"):
        key = f"embedder.{name}.proj.weight"
        assert key in late and not torch.equal(late[key], early[key]), key
    assert not any(k.startswith("embedder.proj") for k in late)

    # resume from the middle checkpoint: the same losses and the same target
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-00000012")
    run_cli(_run_args(cohorts, resumed, 12, "--resume", "auto"))
    again = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in again] == [r["loss"] for r in recs]
    final = consolidate_target(resumed / "checkpoints" / "step-00000012")
    assert all(torch.equal(final[k], late[k]) for k in late)

    # a probe reads the embedder of its dataset's modality; an export names one
    for data in (a, c):
        out = run_cli(
            [
                "engine.probe",
                "--checkpoint",
                str(run),
                "--data",
                str(data),
                "--label",
                "label",
                "--folds",
                "3",
            ]  # fmt: skip
        )
        assert "accuracy" in out.stdout
        probe_json = run / "checkpoints" / "step-00000012"
        assert (probe_json / f"probe-label-linear-mean-target-{data.name}.json").is_file()
    refused = run_cli(["engine.export", str(run), str(tmp_path / "x")], check=False)
    assert refused.returncode == 1 and "embeds grid, grid2; name the modality" in refused.stderr
    run_cli(["engine.export", str(run), str(tmp_path / "g2"), "--modality", "grid2"])
    exported = load_file(str(tmp_path / "g2" / "encoder.safetensors"))
    assert set(exported) == {
        k.replace("embedder.grid2.", "embedder.") for k in late if "embedder.grid." not in k
    }
    assert torch.equal(exported["embedder.proj.weight"], late["embedder.grid2.proj.weight"])
    assert torch.equal(exported["blocks.0.attn.qkv.weight"], late["blocks.0.attn.qkv.weight"])
    wrong = run_cli(
        [
            "engine.probe",
            "--checkpoint",
            str(tmp_path / "g2"),
            "--data",
            str(a),
            "--label",
            "label",
        ],  # fmt: skip
        check=False,
    )
    assert wrong.returncode == 1 and "trained on 'grid2' records, not 'grid'" in wrong.stderr


def test_a_mixed_run_keeps_its_global_sample_sequence_at_any_world_size(cohorts):
    """The global batch is the unit of the mix: 2 ranks of 4 read, together, what 1 rank of 8
    reads (what an elastic resume relies on)."""
    a, _, c = cohorts
    extra = ("data.mix=modality", "data.num_workers=0")
    mods = {"grid": MODALITY, "grid2": MODALITY2}
    one = iter(JEPALoader(_cfg([a, c], "1,2", *extra, "data.batch_size=8"), mods, 0, 1))
    two = [
        iter(JEPALoader(_cfg([a, c], "1,2", *extra, "data.batch_size=4"), mods, r, 2))
        for r in range(2)
    ]
    for _ in range(12):
        whole = next(one)
        halves = [next(it) for it in two]
        assert whole.index.tolist() == halves[0].index.tolist() + halves[1].index.tolist()
        assert whole.modality == halves[0].modality == halves[1].modality


def test_a_shared_trunk_gives_each_embedder_its_own_optimizer_groups():
    from engine.config import ModelConfig
    from engine.model import JEPA

    cfg = ModelConfig(embed_dim=32, depth=1, num_heads=2, pred_dim=16, pred_depth=1, pred_heads=2)
    opts = [m.method_options({}) for m in (MODALITY, MODALITY2)]
    embedders = {"grid": MODALITY.embedder(opts[0], 32), "grid2": MODALITY2.embedder(opts[1], 32)}
    model = JEPA(embedders, cfg)
    groups, roles = param_groups(model)
    assert roles == [(True, ""), (False, ""), (True, "grid"), (False, "grid"), (True, "grid2"),
                     (False, "grid2")]  # fmt: skip
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())  # each exactly once
    assert {id(p) for p in groups[4]["params"]} <= {id(p) for p in embedders["grid2"].parameters()}
    # momentum (no `active`): every group steps; still: only the step's modalities and the trunk
    assert group_rates(roles, 1e-3, 0.1) == [(1e-3, 0.1), (1e-3, 0.0)] * 3
    assert group_rates(roles, 1e-3, 0.1, {"grid"}) == [
        (1e-3, 0.1), (1e-3, 0.0), (1e-3, 0.1), (1e-3, 0.0), (0.0, 0.0), (0.0, 0.0)
    ]  # fmt: skip
    one = JEPA(MODALITY.embedder(opts[0], 32), cfg)  # one modality: the trunk's two groups
    assert param_groups(one)[1] == [(True, ""), (False, "")]
