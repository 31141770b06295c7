"""Tests of `python -m modalities.show`: the fMRI drawer writes a real PNG, refusals exit 1."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from modalities import available
from modalities.show import drawer, main
from pipelines.shards import write_dataset

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def fmri_dataset(tmp_path_factory):
    rois, frames = 40, 160
    rng = np.random.default_rng(0)
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("subject", pa.string()),
            ("missing_rois", pa.list_(pa.int32())),
            ("bold", pa.fixed_shape_tensor(pa.float32(), [rois, frames])),
        ]
    )
    records = []
    for i in range(3):
        bold = rng.normal(size=(rois, frames)).astype(np.float32)
        bold[5] = 0  # a missing ROI, as the reader writes it
        records.append({"id": f"r{i}", "subject": f"{i:02d}", "missing_rois": [5], "bold": bold})
    g = rng.uniform(-1, 1, (rois, 4))
    stats = {
        "roi_median": [0.0] * rois,
        "roi_iqr": [1.3] * rois,
        "gradients": g.tolist(),
    }
    root = tmp_path_factory.mktemp("show") / "fmri"
    write_dataset(root, "fmri", schema, records, stats=stats)
    return root


def test_fmri_picture_is_a_png(fmri_dataset, tmp_path, capsys):
    import matplotlib.image

    out = tmp_path / "pics" / "one.png"
    rc = main(["fmri", "--data", str(fmri_dataset), "--index", "2", "--out", str(out)])
    assert rc == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    img = matplotlib.image.imread(out)
    assert img.ndim == 3 and img.shape[0] > 400 and img.shape[1] > 800
    assert img[..., :3].std() > 0.05  # not a blank canvas
    line = capsys.readouterr().out
    assert line.startswith(f"wrote {out}: fmri record 2, seed 0: context ")
    assert not list(out.parent.glob(".*tmp*"))  # the temp file was renamed away


def test_the_seed_changes_the_mask(fmri_dataset, tmp_path, capsys):
    summaries = []
    for seed in (0, 0, 1):
        main(["fmri", "--data", str(fmri_dataset), "--out", str(tmp_path / "a.png"), "--seed"]
             + [str(seed)])  # fmt: skip
        summaries.append(capsys.readouterr().out.split(": ", 2)[2])
    assert summaries[0] == summaries[1] != summaries[2]


def test_the_run_config_sets_what_is_drawn(fmri_dataset, tmp_path, capsys):
    """`--config` (a run directory or config YAML) draws with that run's modality options:
    32-frame patches give half the tokens of the default 16; a bad option is refused."""
    out = str(tmp_path / "c.png")

    def total(summary: str) -> int:
        return int(summary.rsplit(" of ", 1)[1].split()[0])

    main(["fmri", "--data", str(fmri_dataset), "--out", out])
    default = total(capsys.readouterr().out)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model:\n  depth: 2\nmodality:\n  patch_len: 32\n")
    assert main(["fmri", "--data", str(fmri_dataset), "--out", out, "--config", str(run)]) == 0
    assert total(capsys.readouterr().out) * 2 == default == 39 * 10
    # a run saved before modality options: its model.patch_len is read as the engine reads it
    (run / "config.yaml").write_text("model:\n  patch_len: 32\nmask:\n  num_targets: 4\n")
    assert main(["fmri", "--data", str(fmri_dataset), "--out", out, "--config", str(run)]) == 0
    assert total(capsys.readouterr().out) * 2 == default
    (run / "config.yaml").write_text("modality:\n  patch_len: 0\n")
    assert main(["fmri", "--data", str(fmri_dataset), "--out", out, "--config", str(run)]) == 1
    assert "config.yaml: modality.patch_len: must be >= 1" in capsys.readouterr().err


def test_refusals_exit_1_with_the_reason(fmri_dataset, tmp_path, capsys):
    out = str(tmp_path / "x.png")
    assert main(["fmri", "--data", str(fmri_dataset), "--index", "3", "--out", out]) == 1
    assert "--index 3 is outside the 3 records" in capsys.readouterr().err
    assert main(["fmri", "--data", str(tmp_path / "nothing"), "--out", out]) == 1
    assert "modalities.show: error:" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_every_registered_modality_has_a_drawer_and_unknown_ones_are_refused():
    assert {"fmri", "eeg"} <= set(available())
    for name in available():
        assert callable(drawer(name))
    with pytest.raises(KeyError, match="unknown modality 'nope'; known: .*fmri"):
        drawer("nope")


def test_eeg_drawer_writes_png_with_spatial_blocks(tmp_path):
    """A real demo EDF recording, read by the EEG reader, drawn with S-JEPA's spatial blocks."""
    import os

    from modalities.base import ReadContext
    from modalities.eeg import MODALITY as EEG
    from modalities.eeg.demo import generate_cohort
    from modalities.eeg.sjepa import CHANNEL, SpatialBlockMasker, tokenize_record
    from pipelines.worker import full_schema

    path = generate_cohort(tmp_path / "raw", 1, seed=2, duration_s=64.0)[0]
    opts = EEG.options_type()
    ctx = ReadContext(str(path), str(path), os.path.getsize(path), 1 << 34)
    records = [{"id": f"r{i}", "source": str(path), **r} for i, r in enumerate(EEG.read(ctx, opts))]
    root = tmp_path / "eeg"
    write_dataset(root, "eeg", full_schema(EEG.schema(opts)), records)
    out = tmp_path / "eeg.png"
    assert main(["eeg", "--data", str(root), "--index", "1", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 20_000
    # draw() returns the blocks __call__ used: the same masks for the same rng state
    coords = tokenize_record(records[1], {})["coords"]
    masker = SpatialBlockMasker(num_targets=2, channel_scale=(0.15, 0.25), min_context=0.3)
    ctx_a, tgts_a, blocks = masker.draw(np.random.default_rng(5), coords)
    ctx_b, tgts_b = masker(np.random.default_rng(5), coords)
    assert np.array_equal(ctx_a, ctx_b) and all(map(np.array_equal, tgts_a, tgts_b))
    for tgt, block in zip(tgts_a, blocks, strict=True):
        assert set(coords[tgt][:, CHANNEL]) == set(block.channels.tolist())
        assert block.centre in set(block.channels.tolist())
