"""engine.config: defaults, YAML, overrides, validation; the modality section and older runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from engine.config import Config, ConfigError, config_from_dict, load_config, save_config


def test_defaults_validate_and_round_trip(tmp_path):
    cfg = load_config()
    assert cfg == Config()
    save_config(cfg, tmp_path / "config.yaml")
    again = config_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert again == cfg


def test_yaml_then_overrides_then_values(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 0.5\n  betas: [0.8, 0.9]\nmodel:\n  depth: 3\n")
    cfg = load_config(f, ["optim.lr=2e-4", "modality.patch_len=8"], {"model.depth": 5})
    assert cfg.optim.lr == 2e-4
    assert cfg.optim.betas == [0.8, 0.9]
    assert cfg.modality == {"patch_len": 8}  # free-form here: the modality parses it
    assert cfg.model.depth == 5


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("optim.lrr=1", "optim.lrr"),
        ("optimizer.lr=1", "optimizer.lr"),
        ("lr=1", "lr"),
        ("model.depth=two", "model.depth"),
        ("model.depth=0", "model.depth"),
        ("train.progress=maybe", "train.progress"),
        ("loss.kind=huber", "loss.kind"),
        ("mask.target_scale=[0.1, 0.3]", "mask.target_scale"),  # the modality's now
        ("model.patch_len=16", "model.patch_len"),
        ("model.num_heads=5", "model.num_heads"),
        ("optim.betas=[0.9]", "optim.betas"),
        ("train.nonfinite=ignore", "train.nonfinite"),
    ],
)
def test_bad_override_names_the_key(override, named):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[override])
    assert str(e.value).startswith(named + ":")


def test_bad_yaml_key_is_named(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match=r"^train\.stepz:"):
        load_config(f)


def test_zero_stage_and_its_buckets_are_checked():
    assert load_config(overrides=["train.zero_stage=3"]).train.zero_stage == 3
    with pytest.raises(ConfigError, match=r"train\.zero_stage: must be 0, 1, 2 or 3"):
        load_config(overrides=["train.zero_stage=4"])
    with pytest.raises(ConfigError, match=r"train\.zero_bucket: must be > 0"):
        load_config(overrides=["train.zero_bucket=0"])
    with pytest.raises(ConfigError, match=r"train\.zero3_reuse_distance: must be >= 0"):
        load_config(overrides=["train.zero3_reuse_distance=-1"])


def test_zero3_note_says_the_cuda_graph_step_is_off():
    from engine.config import kernel_notes

    notes = kernel_notes(load_config(overrides=["train.zero_stage=3"]))
    assert any("train.zero_stage=3" in n and "eagerly" in n for n in notes)
    assert not any("zero_stage" in n for n in kernel_notes(load_config()))
    off = ["train.zero_stage=3", "train.cuda_graph_step=false", "train.cuda_graph_target=false"]
    assert not any("zero_stage" in n for n in kernel_notes(load_config(overrides=off)))


def test_kernel_notes_name_head_dims_the_attention_kernel_lacks():
    from pathlib import Path

    from engine.config import kernel_notes

    demo = Path(__file__).resolve().parents[2] / "engine" / "configs" / "fmri_demo.yaml"
    notes = kernel_notes(load_config(demo))  # 64 / 4 and 32 / 4 heads
    assert len(notes) == 2 and "head dim 16" in notes[0] and "head dim 8" in notes[1]
    fits = ["model.embed_dim=128", "model.num_heads=2", "model.pred_dim=64", "model.pred_heads=2"]
    assert kernel_notes(load_config(None, fits)) == []


def test_resumable_keys_are_declared_on_the_fields():
    from engine.config import resumable_keys

    keys = resumable_keys()
    assert {"data.path", "data.num_workers", "train.steps", "train.diag_every"} <= keys
    # what changes the model, the optimisation or the sample sequence must match on resume
    assert not keys & {"model.embed_dim", "data.batch_size", "train.seed", "loss.target_norm"}


def test_resume_check_names_the_changed_keys_and_allows_resumable_ones(tmp_path):
    from engine.checkpoint import CheckpointError
    from engine.trainer import check_resumable

    saved = Config().to_dict()
    check_resumable(saved, load_config(None, ["train.steps=5", "data.num_workers=3"]), tmp_path)
    changed = load_config(None, ["model.embed_dim=64", "model.num_heads=4", "train.steps=5"])
    with pytest.raises(CheckpointError, match=r"model.embed_dim: 192 -> 64.*model.num_heads"):
        check_resumable(saved, changed, tmp_path)
    # a checkpoint written before the ZeRO bucket and gather knobs existed resumes, and the
    # knobs may change on resume (memory and communication only)
    older = Config().to_dict()
    for key in ("zero_bucket", "zero3_max_live", "zero3_reuse_distance", "zero3_prefetch"):
        del older["train"][key]
    check_resumable(older, load_config(), tmp_path)
    check_resumable(saved, load_config(None, ["train.zero3_reuse_distance=0"]), tmp_path)


def test_masks_and_patch_geometry_are_the_modalitys_and_say_where_they_went():
    with pytest.raises(ConfigError, match=r"^mask\.num_targets: .*`modality:` section"):
        load_config(overrides=["mask.num_targets=2"])


def test_a_run_saved_before_modality_options_loads_with_its_old_keys_mapped():
    """A config.yaml written before the modality owned masks and patch geometry: its
    `model.patch_len` and `mask.*` go to `cfg.legacy`, which the modality maps; an exact resume
    of such a checkpoint is refused with the reason."""
    from grid_testing import MODALITY as GRID

    from engine.checkpoint import CheckpointError
    from engine.data import method_options
    from engine.trainer import check_resumable
    from modalities.eeg import MODALITY as EEG
    from modalities.fmri import MODALITY as FMRI
    from modalities.grid import BlockSpec

    old = Config().to_dict()
    old["model"]["patch_len"] = 8
    old["mask"] = {
        "num_targets": 3, "target_scale": [0.1, 0.2], "target_aspect": [0.75, 1.5],
        "context_scale": [0.85, 1.0], "min_context": 0.2,
    }  # fmt: skip
    cfg = config_from_dict(old)
    assert cfg.legacy["model.patch_len"] == 8 and cfg.legacy["mask.num_targets"] == 3
    assert "mask" not in cfg.to_dict() and "legacy" not in cfg.to_dict()
    grid = method_options(GRID, cfg)
    assert grid.patch_len == 8 and grid.masks == (BlockSpec(3, (0.1, 0.2), (0.75, 1.5)),)
    assert grid.min_context == 0.2
    fmri = method_options(FMRI, cfg)
    assert fmri.patch_len == 8 and fmri.min_context == 0.05  # fMRI never read mask.*
    eeg = method_options(EEG, cfg)
    assert eeg.masks[0].num == 3 and eeg.masks[0].channel_scale == (0.1, 0.2)
    with pytest.raises(CheckpointError, match=r"predates modality options \(mask\.context_scale"):
        check_resumable(old, load_config(), Path("ckpt"))
    check_resumable(Config().to_dict(), load_config(), Path("ckpt"))  # today's: resumes


def test_train_cli_takes_overrides_before_and_after_the_flags():
    """`engine.train ... train.seed=1 --steps 5 train.progress=false`: overrides may sit on
    both sides of the flags (argparse's plain parse refused the second group)."""
    from engine.train import parse_args

    args = parse_args(["--data", "d", "train.seed=1", "--steps", "5", "train.progress=false"])
    assert args.overrides == ["train.seed=1", "train.progress=false"] and args.steps == 5


def test_resume_compares_the_modality_options_as_parsed():
    """A default written out, or a pair spelled another way, is the same run; another value is
    not, and the message names the key."""
    from engine.checkpoint import CheckpointError
    from engine.trainer import check_resumable
    from modalities.fmri import MODALITY as FMRI
    from modalities.options import options_to_dict

    def resolve(section):
        return options_to_dict(FMRI.method_options(section))

    saved = Config().to_dict()  # modality: {}
    same = load_config(overrides=["modality.patch_len=16", "modality.obs_scale=0.84,1.0"])
    check_resumable(saved, same, Path("ckpt"), resolve)
    with pytest.raises(CheckpointError, match=r"modality\.patch_len: 16 -> 8"):
        check_resumable(saved, load_config(overrides=["modality.patch_len=8"]), Path("c"), resolve)
