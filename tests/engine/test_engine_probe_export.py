from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_cli, train_args
from safetensors.torch import load_file

from engine.checkpoint import latest_checkpoint
from engine.data import method_options
from engine.export import load_encoder, load_jepa, random_init_encoder
from engine.probe import extract_features, linear_probe
from pipelines.shards import ShardDataset

pytestmark = pytest.mark.slow


def test_linear_probe_scores_separable_and_random_labels():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 6))
    y = (x[:, 2] > 0).astype(int)
    sep = linear_probe(x, y, folds=5)
    assert sep["metric"] == "accuracy" and sep["mean"] > 0.95 and len(sep["scores"]) == 5
    rand = linear_probe(x, rng.integers(0, 2, 120), folds=5)
    assert rand["mean"] < 0.75
    reg = linear_probe(x, 3.0 * x[:, 0] + 0.01 * rng.standard_normal(120), folds=4)
    assert reg["metric"] == "r2" and reg["mean"] > 0.99


def _module_states(ckpt) -> dict:
    states = torch.load(ckpt / "ds" / "mp_rank_00_model_states.pt", weights_only=True)["module"]
    return {k[len("encoder.") :]: v for k, v in states.items() if k.startswith("encoder.")}


def test_context_encoder_export_through_deepspeeds_consolidation(trained_run, grid_data, tmp_path):
    """The trained (context) encoder under ZeRO-2 comes out of DeepSpeed's own fp32
    consolidation (zero_to_fp32); on this fp32 CPU run it equals the module weights DeepSpeed
    saved, and at stage 0 (no ZeRO partitions to merge) the module states are read directly."""
    ckpt = latest_checkpoint(trained_run)
    enc, cfg, _ = load_encoder(trained_run, "context")
    assert cfg.train.zero_stage == 2
    want = _module_states(ckpt)
    got = enc.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k].float()) for k in want)
    # and it is the trained encoder, not the EMA target
    target = load_file(ckpt / "target.safetensors")
    assert any(not torch.equal(got[k], target[k]) for k in target)

    run0 = tmp_path / "stage0"
    run_cli(train_args(grid_data, run0, 2, 2, "train.zero_stage=0"))
    enc0, cfg0, _ = load_encoder(run0, "context")
    assert cfg0.train.zero_stage == 0
    want0 = _module_states(latest_checkpoint(run0))
    assert all(torch.equal(enc0.state_dict()[k], v.float()) for k, v in want0.items())


def test_export_round_trip_and_probe_cli(trained_run, grid_data, tmp_path):
    out = tmp_path / "export"
    proc = run_cli(["engine.export", str(trained_run), str(out)])
    assert "exported target encoder" in proc.stdout
    meta = json.loads((out / "config.json").read_text())
    assert meta["step"] == 30 and meta["encoder"] == "target"
    # plain safetensors holds exactly the checkpoint's EMA target weights
    weights = load_file(out / "encoder.safetensors")
    target = load_file(trained_run / "checkpoints" / "step-00000030" / "target.safetensors")
    assert weights.keys() == target.keys()
    assert all(torch.equal(weights[k], target[k]) for k in weights)

    ds = ShardDataset(grid_data)
    enc_a, cfg, modality = load_encoder(out)
    enc_b, _, _ = load_encoder(trained_run)
    fa = extract_features(enc_a, cfg, modality, ds, batch_size=16)
    fb = extract_features(enc_b, cfg, modality, ds, batch_size=64)
    assert fa.shape == (64, cfg.model.embed_dim)
    np.testing.assert_allclose(fa, fb, rtol=1e-5, atol=1e-5)

    proc = run_cli(
        [
            "engine.probe",
            "--checkpoint",
            str(out),
            "--data",
            str(grid_data),
            "--label",
            "label",
            "--folds",
            "4",
        ]
    )
    assert (
        "probe label: accuracy" in proc.stdout and "+-" in proc.stdout and "4-fold" in proc.stdout
    )
    bad = run_cli(
        ["engine.probe", "--checkpoint", str(out), "--data", str(grid_data), "--label", "nope"],
        check=False,
    )
    assert bad.returncode == 1 and "no column 'nope'" in bad.stderr


def test_grouped_folds_do_not_score_subject_identity():
    """Features that only identify the subject, labels random per subject: leave-subject-out
    folds must score chance, while ungrouped folds (windows of a subject on both sides) look
    perfect. That gap is why the probe groups by subject by default."""
    rng = np.random.default_rng(0)
    n_subjects, per_subject = 20, 6
    subjects = np.repeat(np.arange(n_subjects), per_subject)
    identity = np.eye(n_subjects)[subjects] + 0.01 * rng.standard_normal((len(subjects), 20))
    subject_label = np.array(["a", "b"] * (n_subjects // 2))
    rng.shuffle(subject_label)
    labels = subject_label[subjects]
    leaky = linear_probe(identity, labels, folds=5)
    grouped = linear_probe(identity, labels, folds=5, groups=subjects)
    assert leaky["mean"] > 0.95 and leaky["groups"] is None
    assert grouped["mean"] < 0.75 and grouped["groups"] == n_subjects
    with pytest.raises(ValueError, match="only 3 groups"):
        linear_probe(identity[:18], labels[:18], folds=5, groups=subjects[:18] % 3)


def test_probe_cli_random_init_baseline(trained_run, grid_data, tmp_path):
    args = ["engine.probe", "--checkpoint", str(trained_run), "--data", str(grid_data)]
    trained = run_cli([*args, "--label", "label", "--folds", "4"])
    random = run_cli([*args, "--label", "label", "--folds", "4", "--random-init"])
    assert "random-init features" in random.stdout and "target features" in trained.stdout
    assert trained.stdout.split("accuracy")[1] != random.stdout.split("accuracy")[1]
    # --baseline: both in one run, and a JSON file next to the checkpoint holding both
    both = run_cli([*args, "--label", "label", "--folds", "4", "--baseline"])
    assert "random-init features" in both.stdout and "target features" in both.stdout
    ckpt = latest_checkpoint(trained_run)  # a run directory's results go in its latest checkpoint
    assert (ckpt / "probe-label-linear-mean-random-init.json").is_file()  # the --random-init run
    saved = json.loads((ckpt / "probe-label-linear-mean-target.json").read_text())
    assert set(saved["results"]) == {"target", "random-init"}
    for name in ("target", "random-init"):
        assert f"{saved['results'][name]['mean']:.4f}" in both.stdout
    # the baseline is the run's own init (its train.seed): the weights it trained from are
    # much nearer the trained ones than another seed's draw is
    encoder, cfg, modality = load_encoder(trained_run, "target")
    assert saved["init_seed"] == cfg.train.seed
    stats = ShardDataset(grid_data).stats
    trained = torch.cat([q.flatten() for q in encoder.parameters()])

    def distance(seed: int) -> float:
        init = random_init_encoder(modality, cfg, stats, seed).parameters()
        return float((torch.cat([q.detach().flatten() for q in init]) - trained).norm())

    assert distance(cfg.train.seed) < 0.5 * distance(cfg.train.seed + 1)
    run_cli([*args, "--label", "label", "--folds", "4", "--random-init", "--init-seed", "7",
             "--json", str(tmp_path / "r7.json")])  # fmt: skip
    assert json.loads((tmp_path / "r7.json").read_text())["init_seed"] == 7


def test_load_jepa_holds_the_trained_encoder_and_predictor(trained_run):
    """engine.export.load_jepa: the context encoder (the weights load_encoder's "context"
    reads) with the predictor that trained beside it, frozen, in eval mode."""
    jepa, cfg, _ = load_jepa(trained_run)
    context, _, _ = load_encoder(trained_run, "context")
    want = context.state_dict()
    assert list(jepa.encoder.state_dict()) == list(want)
    for k, a in jepa.encoder.state_dict().items():
        torch.testing.assert_close(a, want[k], msg=k)
    assert not jepa.training and not any(p.requires_grad for p in jepa.parameters())
    assert jepa.predictor.out.weight.shape == (cfg.model.embed_dim, cfg.model.pred_dim)


def test_export_carries_dataset_stats_and_loads_without_the_dataset(
    trained_run, grid_data, tmp_path
):
    """Embedders may be built from dataset statistics (Brain-JEPA's gradients): checkpoints and
    exports carry them, so an encoder loads after its dataset directory is gone."""
    from engine.config import config_from_dict

    out = tmp_path / "export"
    run_cli(["engine.export", str(trained_run), str(out)])
    meta = json.loads((out / "config.json").read_text())
    assert meta["stats"] and meta["stats"] == ShardDataset(grid_data).stats
    # point the export at a dataset path that does not exist: loading must not need it
    meta["config"]["data"]["path"] = str(tmp_path / "gone")
    (out / "config.json").write_text(json.dumps(meta))
    encoder, cfg, _ = load_encoder(out)
    assert cfg == config_from_dict(meta["config"])
    reference, _, _ = load_encoder(trained_run)
    assert encoder.state_dict().keys() == reference.state_dict().keys()


def test_pooling_options_agree_with_the_token_features(trained_run, grid_data):
    encoder, cfg, modality = load_encoder(trained_run)
    ds = ShardDataset(grid_data)
    mean = extract_features(encoder, cfg, modality, ds, batch_size=16)
    meanstd = extract_features(encoder, cfg, modality, ds, batch_size=16, pool="meanstd")
    per_pos = extract_features(encoder, cfg, modality, ds, batch_size=16, pool="position")
    d = cfg.model.embed_dim
    assert mean.shape == (len(ds), d) and meanstd.shape == (len(ds), 2 * d)
    np.testing.assert_allclose(meanstd[:, :d], mean, rtol=1e-5, atol=1e-6)
    # by hand for one record: all its token features, grouped by the first coordinate (the row)
    t = modality.tokenize(ds[5], ds.stats, method_options(modality, cfg))
    coords = torch.as_tensor(t["coords"])
    with torch.no_grad():
        h = encoder.forward_all(
            torch.as_tensor(t["tokens"])[None], coords[None], torch.tensor([len(coords)])
        )[0]
    rows = coords[:, 0].unique()
    want = torch.cat([h[coords[:, 0] == r].mean(0) for r in rows]).numpy()
    assert per_pos.shape == (len(ds), len(rows) * d)
    np.testing.assert_allclose(per_pos[5], want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        meanstd[5, d:], h.std(0, unbiased=False).numpy(), rtol=1e-4, atol=1e-5
    )
    with pytest.raises(ValueError, match="pool must be one of"):
        extract_features(encoder, cfg, modality, ds, pool="max")


def test_probe_cli_repeats_over_fold_seeds(trained_run, grid_data):
    args = ["engine.probe", "--checkpoint", str(trained_run), "--data", str(grid_data)]
    out = run_cli(
        [*args, "--label", "label", "--folds", "4", "--repeats", "3", "--pool", "meanstd"]
    )
    assert "std over 3 split seeds" in out.stdout and "meanstd-pooled target features" in out.stdout
    bad = run_cli([*args, "--label", "label", "--repeats", "0"], check=False)
    assert bad.returncode != 0 and "--repeats must be at least 1" in bad.stderr


class _Payload:
    """Unpickling this runs code (it touches a file): what a crafted checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_context_export_does_not_unpickle_arbitrary_objects(trained_run, tmp_path):
    """DeepSpeed's consolidation asks torch.load to unpickle; the export holds it to tensors and
    DeepSpeed's own types, so a checkpoint carrying any other object is refused, not run."""
    import shutil

    from engine.checkpoint import CHECKPOINTS, weights_only_loads

    run = tmp_path / "run"
    ckpt = latest_checkpoint(trained_run)
    shutil.copytree(ckpt, run / CHECKPOINTS / ckpt.name)
    marker = tmp_path / "ran"
    optim = next((run / CHECKPOINTS / ckpt.name / "ds").glob("*optim_states.pt"))
    with weights_only_loads():  # DeepSpeed's own types, nothing else unpickled
        state = torch.load(optim)
    state["payload"] = _Payload(str(marker))
    torch.save(state, optim)
    from engine.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="objects other than tensors"):
        load_encoder(run, "context")
    assert not marker.exists()
