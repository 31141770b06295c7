"""Tests of A-JEPA's model side (modalities/audio/ajepa.py): 16 x 16 patches of the log-mel,
the random-block and time-frequency masks over 1000 draws, the curriculum's schedule, the
options, the picture, and one JEPA step through the engine's model."""

from __future__ import annotations

import os

import numpy as np
import pytest

from engine.batch import Sample, pack
from engine.config import load_config
from engine.data import build_embedder, method_options
from engine.model import JEPA
from modalities.audio import MODALITY, AudioOptions
from modalities.audio.ajepa import CurriculumMasker, spectrogram_patches, tf_probability
from modalities.audio.fbank import LOG_FLOOR
from modalities.audio.options import AJepaMethod
from modalities.options import OptionError

ROWS, COLS = 8, 32  # 128 mel bins x 512 frames


def grid_coords(rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return np.stack([r.ravel(), c.ravel()], axis=1)


def test_patches_are_16x16_frequency_major_and_normalised():
    rng = np.random.default_rng(0)
    mel = rng.normal(-6.0, 3.0, (128, 512)).astype(np.float32)
    tokens, coords = spectrogram_patches(mel, 512, -6.0, 3.0, 16, 16)
    assert tokens.shape == (256, 256) and coords.shape == (256, 2)
    assert coords[:3].tolist() == [[0, 0], [0, 1], [0, 2]] and coords[-1].tolist() == [7, 31]
    k = 2 * COLS + 5
    patch = (mel[32:48, 80:96] + 6.0) / 6.0  # AudioMAE's (x - mean) / (2 std)
    np.testing.assert_allclose(tokens[k].reshape(16, 16), patch, rtol=1e-6, atol=1e-6)


def test_padding_only_time_patches_are_dropped():
    mel = np.full((128, 512), LOG_FLOOR, dtype=np.float32)
    tokens, coords = spectrogram_patches(mel, 100, -6.0, 3.0, 16, 16)  # 100 real frames
    assert coords[:, 1].max() == 6 and len(tokens) == 8 * 7  # ceil(100 / 16) time patches
    with pytest.raises(ValueError, match="does not split into 16 x 24 patches"):
        spectrogram_patches(mel, 512, 0.0, 1.0, 16, 24)


def test_tokenize_reads_the_dataset_stats():
    rec = {"mel": np.zeros((128, 256), dtype=np.float16), "valid_frames": 256}
    out = MODALITY.tokenize(rec, {"mean": -2.0, "std": 0.5}, AJepaMethod())
    assert out["tokens"].shape == (8 * 16, 256) and np.allclose(out["tokens"], 2.0)


@pytest.mark.parametrize("masking", ["block", "tf"])
def test_mask_invariants_over_1000_draws(masking):
    opts = AJepaMethod(masking=masking)
    masker = CurriculumMasker(opts)
    coords = grid_coords()
    for seed in range(1000):
        ctx, tgts = masker(np.random.default_rng(seed), coords, step=0)
        assert len(ctx) >= 0.1 * len(coords) and all(len(t) > 0 for t in tgts)
        union = np.unique(np.concatenate(tgts))
        assert not np.intersect1d(ctx, union).size, "context and targets are disjoint"
        assert np.all(np.diff(ctx) > 0)
        if masking == "block":
            assert len(tgts) == 4
            for t in tgts:  # each target a rectangle of 15-20% (rounded) of the grid
                rows, cols = np.unique(coords[t, 0]), np.unique(coords[t, 1])
                assert len(t) == len(rows) * len(cols)
                assert np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1)
                assert 0.1 * len(coords) <= len(t) <= 0.25 * len(coords)
        else:
            assert len(tgts) == opts.time_strips + opts.freq_bands
            for t in tgts[: opts.time_strips]:  # whole-height strips of 5-15% of the time
                cols = np.unique(coords[t, 1])
                assert len(t) == ROWS * len(cols) and np.all(np.diff(cols) == 1)
                assert round(0.05 * COLS) <= len(cols) <= round(0.15 * COLS)
            for t in tgts[opts.time_strips :]:  # whole-width bands of 1-2 of 8 rows
                rows = np.unique(coords[t, 0])
                assert len(t) == COLS * len(rows) and 1 <= len(rows) <= 2
            # the context is every token no target takes
            assert len(ctx) + len(union) == len(coords)


def test_curriculum_schedule_and_the_draw_it_makes():
    opts = AJepaMethod(curriculum=(0.1, 0.9), curriculum_steps=(100, 300))
    assert tf_probability(opts, 0) == tf_probability(opts, 100) == pytest.approx(0.1)
    assert tf_probability(opts, 200) == pytest.approx(0.5)
    assert tf_probability(opts, 300) == tf_probability(opts, 10**6) == pytest.approx(0.9)
    assert tf_probability(AJepaMethod(masking="block"), 10**6) == 0.0
    assert tf_probability(AJepaMethod(masking="tf"), 0) == 1.0
    masker = CurriculumMasker(opts)
    coords = grid_coords()
    for step, p in ((0, 0.1), (200, 0.5), (400, 0.9)):
        kinds = []
        for seed in range(1000):
            ctx, tgts = masker(np.random.default_rng(seed), coords, step=step)
            rng = np.random.default_rng(seed)
            tf = rng.random() < p  # the first draw decides, so a resumed run decides alike
            want = masker.tf_mask(rng, coords) if tf else masker.block(rng, coords)
            assert np.array_equal(ctx, want[0]) and all(map(np.array_equal, tgts, want[1]))
            kinds.append(tf)
        assert abs(np.mean(kinds) - p) < 4 * np.sqrt(p * (1 - p) / 1000)


@pytest.mark.parametrize(
    ("section", "reason"),
    [
        ({"masking": "spiral"}, "modality.masking: expected one of"),
        ({"curriculum": [0.5, 1.5]}, "modality.curriculum: probabilities"),
        ({"curriculum_steps": [10, 5]}, "modality.curriculum_steps"),
        ({"time_strips": 0, "freq_bands": 0}, "one target at least"),
        ({"strip_scale": [0.2, 0.1]}, "modality.strip_scale"),
        ({"patch_freq": 0}, "modality.patch_freq"),
    ],
)
def test_method_options_are_checked(section, reason):
    with pytest.raises(OptionError, match=reason):
        MODALITY.method_options(section)


def test_one_jepa_step_with_the_engine_model():
    """Tokenize, mask (both ends of the curriculum), collate and run the engine's JEPA."""
    cfg = load_config(
        values={"model.embed_dim": 32, "model.num_heads": 2, "model.depth": 1,
                "model.pred_dim": 16, "model.pred_heads": 2, "model.pred_depth": 1,
                "modality.curriculum_steps": [0, 10]}
    )  # fmt: skip
    opts = method_options(MODALITY, cfg)
    masker = MODALITY.masker(opts)
    assert masker.uses_step
    rng = np.random.default_rng(0)
    samples = []
    for i, (valid, step) in enumerate([(512, 0), (300, 10)]):
        rec = {"mel": rng.normal(-6, 3, (128, 512)).astype(np.float16), "valid_frames": valid}
        t = MODALITY.tokenize(rec, {"mean": -6.0, "std": 3.0}, opts)
        ctx, tgts = masker(np.random.default_rng(i), t["coords"], step=step)
        samples.append(Sample(i, t["tokens"], t["coords"], ctx, tgts))
    batch = pack(samples)
    model = JEPA(build_embedder(MODALITY, cfg), cfg.model)
    pred = model(batch)
    assert pred.shape == (len(batch.tgt_idx), 32)
    pred.square().mean().backward()
    assert model.encoder.embedder.proj.weight.grad is not None


def test_audio_picture(tmp_path):
    """A demo file read by the audio reader, drawn with both kinds of mask."""
    from modalities.audio.demo import generate_cohort
    from modalities.base import ReadContext
    from modalities.show import main
    from pipelines.shards import write_dataset
    from pipelines.worker import full_schema

    path = generate_cohort(tmp_path / "raw", 1, seed=4)[0]
    opts = AudioOptions(segment_frames=256)
    ctx = ReadContext(path, path, os.path.getsize(path), 1 << 34)
    records = [{"id": f"r{i}", "source": path, **r} for i, r in enumerate(MODALITY.read(ctx, opts))]
    root = tmp_path / "audio"
    write_dataset(root, "audio", full_schema(MODALITY.schema(opts)), records,
                  stats={"mean": -8.0, "std": 4.0})  # fmt: skip
    out = tmp_path / "audio.png"
    assert main(["audio", "--data", str(root), "--index", "1", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
