"""Tests of modalities/eeg/sjepa.py: S-JEPA tokens, the spatial block masker's invariants over
1000 draws, and the embedder (conv features, xyz channel embedding, time encoding)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.batch import Sample, pack, pack_tokens
from engine.config import ConfigError, ModelConfig, load_config
from engine.data import build_embedder, method_options
from engine.model import JEPA, Encoder, normalize_targets
from modalities.eeg import MODALITY, EegOptions
from modalities.eeg.channels import resolve_channels
from modalities.eeg.options import SJEPA_CONV_LAYERS, SJepaMethod, SpatialSpec, conv_span
from modalities.eeg.sjepa import (
    CHANNEL,
    HAS_POSITION,
    SECOND,
    UM_PER_M,
    ContinuousConvEncoder,
    EegEmbedder,
    SpatialBlockMasker,
    SpectrumEncoder,
    X,
    Z,
    log_spectra,
    spectrum_tokens,
    token_overlap,
    tokenize_record,
    xyz_sincos,
)

CS = resolve_channels(EegOptions())


def record(n_sec: int = 16, absent=(), unpositioned=(), seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    mask = np.ones(19, dtype=np.uint8)
    mask[list(absent)] = 0
    pos = CS.positions.copy()
    pos[list(unpositioned)] = np.nan
    eeg = rng.normal(0, 10, (19, n_sec * 128)).astype(np.float32) * mask[:, None]
    return {
        "eeg": eeg,
        "channel_mask": mask,
        "positions": pos,
        "sfreq": 128.0,
        "channels": list(CS.names),
    }


def test_tokens_are_one_second_per_present_channel():
    rec = record(absent=(3, 7), unpositioned=(5,))
    out = tokenize_record(rec, {})
    tokens, coords = out["tokens"], out["coords"]
    assert tokens.shape == (17 * 16, 128) and coords.shape == (17 * 16, 6)
    assert coords.dtype == np.int64 and tokens.dtype == np.float32
    assert 3 not in coords[:, 0] and 7 not in coords[:, 0]
    # token (channel 9, second 4) is samples 512..640 of channel 9
    i = np.flatnonzero((coords[:, 0] == 9) & (coords[:, 1] == 4))[0]
    np.testing.assert_array_equal(tokens[i], rec["eeg"][9, 512:640])
    np.testing.assert_array_equal(coords[i, 2:5], np.round(CS.positions[9] * 1e6))
    assert coords[i, HAS_POSITION] == 1
    assert (coords[coords[:, 0] == 5, HAS_POSITION] == 0).all()


def test_robust_scaling_from_stats():
    rec = record()
    stats = {
        "channels": list(CS.names),
        "channel_median": list(np.arange(19.0)),
        "channel_iqr": [2.0] * 18 + [0.0],
    }
    out = tokenize_record(rec, stats)
    np.testing.assert_allclose(out["tokens"][:16].ravel(), rec["eeg"][0] / 2.0, rtol=1e-6)
    np.testing.assert_allclose(out["tokens"][-16:].ravel(), rec["eeg"][18] - 18.0, rtol=1e-6)
    with pytest.raises(ValueError, match="other channels"):
        tokenize_record(rec, {**stats, "channels": ["Cz"]})
    with pytest.raises(ValueError, match="whole number of seconds"):
        tokenize_record({**rec, "eeg": rec["eeg"][:, :200]}, {})


def _dist(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ch, first = np.unique(coords[:, 0], return_index=True)
    pos = coords[first, 2:5] / 1e6
    return ch, pos, coords[first, HAS_POSITION] > 0


@pytest.mark.parametrize("radius", [None, 0.06])
def test_spatial_block_invariants_over_1000_draws(radius):
    rec = record(absent=(2,), unpositioned=(11,))
    coords = tokenize_record(rec, {})["coords"]
    masker = SpatialBlockMasker(
        num_targets=2, channel_scale=(0.15, 0.3), time_scale=(0.25, 1.0), radius=radius,
        min_context=0.2,
    )  # fmt: skip
    ch, pos, has = _dist(coords)
    n_ch, n_sec = len(ch), 16
    rng = np.random.default_rng(0)
    for _ in range(1000):
        state = rng.bit_generator.state
        context, targets = masker(rng, coords)
        # the same draw, seen block by block
        probe = np.random.default_rng()
        probe.bit_generator.state = state
        blocks = masker.draw_blocks(probe, coords)
        assert len(targets) == 2
        union = np.concatenate(targets)
        assert len(np.intersect1d(context, union)) == 0  # no overlap with the context
        assert len(context) + len(np.unique(union)) == len(coords)  # the rest is context
        assert len(context) >= 0.2 * len(coords)
        assert np.all(np.diff(context) > 0)
        for t, b in zip(targets, blocks, strict=True):
            assert len(t) > 0
            masked_ch = np.unique(coords[t, 0])
            np.testing.assert_array_equal(masked_ch, b.channels)
            seconds = np.unique(coords[t, 1])
            np.testing.assert_array_equal(seconds, np.arange(b.start, b.stop))
            assert 0.25 * n_sec - 0.5 <= len(seconds) <= n_sec
            # spatially contiguous: every masked electrode is nearer the centre than every other
            c = np.flatnonzero(ch == b.centre)[0]
            assert has[c] and b.centre in masked_ch
            d = np.where(has, np.linalg.norm(pos - pos[c], axis=1), np.inf)
            inside = np.isin(ch, masked_ch)
            assert d[inside].max() <= d[~inside].min()
            assert 11 not in masked_ch  # no position: never in a spatial block
            if radius is None:
                assert round(0.15 * n_ch) <= len(masked_ch) <= round(0.3 * n_ch)
            else:
                assert d[inside].max() <= radius and (d[~inside] > radius).all()


def test_masker_without_positions_draws_channels_at_random():
    coords = tokenize_record(record(unpositioned=range(19)), {})["coords"]
    masker = SpatialBlockMasker(num_targets=1, channel_scale=(0.2, 0.2))
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(50):
        context, (target,) = masker(rng, coords)
        chans = np.unique(coords[target, 0])
        assert len(chans) == 4
        seen.update(chans.tolist())
    assert len(seen) > 10


def test_masker_from_the_modality_options_and_refusals():
    cfg = load_config(
        overrides=["modality.masks=[{num: 3, channel_scale: [0.1, 0.2]}, {radius: 0.05}]"]
    )
    masker = MODALITY.masker(method_options(MODALITY, cfg))
    assert masker.specs == (
        SpatialSpec(3, (0.1, 0.2)),
        SpatialSpec(1, (0.15, 0.3), (1.0, 1.0), 0.05),
    )
    coords = tokenize_record(record(), {})["coords"]
    _, targets, blocks = masker.draw(np.random.default_rng(0), coords)
    assert len(targets) == 4
    # the sphere block: every electrode within 5 cm of its centre, and none further
    chans = np.unique(coords[:, CHANNEL])
    pos = {int(c): coords[coords[:, CHANNEL] == c][0, X : Z + 1] / UM_PER_M for c in chans}
    near = [c for c in chans if np.linalg.norm(pos[c] - pos[blocks[3].centre]) <= 0.05]
    assert sorted(blocks[3].channels.tolist()) == sorted(near)
    with pytest.raises(ConfigError, match=r"^modality\.masks\[0\]\.radius: must be positive"):
        method_options(MODALITY, load_config(overrides=["modality.masks=[{radius: -1}]"]))
    with pytest.raises(ValueError, match="could not draw"):
        SpatialBlockMasker(channel_scale=(1.0, 1.0), min_context=0.5, max_tries=3)(
            np.random.default_rng(0), tokenize_record(record(), {})["coords"]
        )
    with pytest.raises(ValueError, match=r"\[N, 6\]"):
        masker(np.random.default_rng(0), np.zeros((4, 2), dtype=np.int64))


def test_conv_widths_set_the_segment_encoder_and_are_checked():
    opts = method_options(MODALITY, load_config(overrides=["modality.conv_widths=[8, 16, 32]"]))
    emb = MODALITY.embedder(opts, 32)
    widths = [m.out_channels for m in emb.features.convs if isinstance(m, torch.nn.Conv1d)]
    assert widths == [8, 16, 32] and emb.features.proj.in_features == 32 * 4
    coords = torch.as_tensor(tokenize_record(record(), {})["coords"][:5])
    assert emb(torch.randn(5, 128), coords).shape == (5, 32)
    for bad in ("[8, 16]", "[8, 0, 32]", "[12, 24, 48]"):
        with pytest.raises(ConfigError, match=r"^modality\.conv_widths: expected three positive"):
            method_options(MODALITY, load_config(overrides=[f"modality.conv_widths={bad}"]))


@pytest.mark.parametrize("inside_encoder", [False, True])
def test_embedder_channel_embedding_starts_as_xyz_sincos_and_learns(inside_encoder):
    torch.manual_seed(0)
    emb = EegEmbedder(48)
    if inside_encoder:
        # The encoder's generic init re-draws every linear layer; the embedder must still start
        # from the xyz encoding (S-JEPA), not from a random projection of it.
        emb = Encoder(emb, ModelConfig(embed_dim=48, depth=1, num_heads=4)).embedder
    coords = torch.from_numpy(tokenize_record(record(n_sec=2, unpositioned=(4,)), {})["coords"])
    ch = emb.channel_embedding(coords[None])[0]
    xyz = coords[:, 2:5].float() / 1e6
    known = coords[:, HAS_POSITION] == 1
    torch.testing.assert_close(ch[known], xyz_sincos(xyz[known], 48))
    torch.testing.assert_close(ch[~known], emb.unknown_channel.expand(int((~known).sum()), 48))
    # nearby electrodes get more similar embeddings than distant ones (Fp1~Fp2, Fp1 vs O1)
    per_ch = {int(c): ch[i] for i, c in enumerate(coords[:, 0].tolist())}
    cos = torch.nn.functional.cosine_similarity
    assert cos(per_ch[0], per_ch[1], dim=0) > cos(per_ch[0], per_ch[17], dim=0)
    # position = channel + time; forward adds token features
    pos = emb.position(coords[None])[0]
    assert not torch.allclose(pos[0], pos[1])  # same channel, seconds 0 and 1
    tokens = torch.randn(1, len(coords), 128, requires_grad=True)
    out = emb(tokens, coords[None])
    assert out.shape == (1, len(coords), 48)
    out.square().mean().backward()
    assert emb.channel_proj.weight.grad.abs().sum() > 0 and tokens.grad.abs().sum() > 0


def test_conv_features_are_per_token():
    torch.manual_seed(0)
    emb = EegEmbedder(32)
    tokens = torch.randn(2, 5, 128)
    a = emb.features(tokens)
    tokens2 = tokens.clone()
    tokens2[0, 3] += 1.0
    b = emb.features(tokens2)
    changed = (a - b).abs().sum(-1) > 1e-6
    assert changed.tolist() == [[False, False, False, True, False], [False] * 5]


def test_one_jepa_step_with_the_engine_model():
    """Tokenize, mask, collate and run the engine's JEPA forward/backward on EEG records."""
    cfg = load_config(
        values={"model.embed_dim": 32, "model.num_heads": 2, "model.depth": 1,
                "model.pred_dim": 16, "model.pred_heads": 2, "model.pred_depth": 1,
                "modality.masks": [{"num": 2}]}
    )  # fmt: skip
    opts = method_options(MODALITY, cfg)
    masker = MODALITY.masker(opts)
    samples = []
    for i, absent in enumerate([(), (4, 5)]):
        t = MODALITY.tokenize(record(n_sec=4, absent=absent, seed=i), {}, opts)
        ctx, tgts = masker(np.random.default_rng(i), t["coords"])
        samples.append(Sample(i, t["tokens"], t["coords"], ctx, tgts))
    batch = pack(samples)
    model = JEPA(build_embedder(MODALITY, cfg), cfg.model)
    pred = model(batch)
    assert pred.shape == (len(batch.tgt_idx), 32)
    pred.square().mean().backward()
    assert model.encoder.embedder.features.proj.weight.grad is not None


# --------------------------------------------------------------------------------------------
# S-JEPA's continuous feature encoder


def test_continuous_encoder_per_token_equals_the_stack_along_the_channel():
    """S-JEPA's conv stack (receptive field 1.1875 s, stride 1 s at 128 Hz) run on tokens that
    hold one receptive field each equals the stack run along the whole continuous channel."""
    assert conv_span(SJEPA_CONV_LAYERS) == (152, 128)
    rec = record(n_sec=6, absent=(2,))
    opts = SJepaMethod(features="continuous")
    assert token_overlap(opts, 128.0) == 24 and token_overlap(SJepaMethod(), 128.0) == 0
    out = MODALITY.tokenize(rec, {}, opts)
    tokens, coords = out["tokens"], out["coords"]
    assert tokens.shape == (18 * 5, 152)  # 6 s -> 5 tokens per channel (no padding)
    assert sorted(set(coords[:, SECOND].tolist())) == [0, 1, 2, 3, 4]
    i = np.flatnonzero((coords[:, CHANNEL] == 7) & (coords[:, SECOND] == 3))[0]
    np.testing.assert_array_equal(tokens[i], rec["eeg"][7, 3 * 128 : 3 * 128 + 152])
    torch.manual_seed(0)
    enc = ContinuousConvEncoder(32)
    per_token = enc(torch.from_numpy(tokens))  # [N, 32]
    along = enc.along_channel(torch.from_numpy(rec["eeg"]))  # [19, 5, 32]
    want = along[coords[:, CHANNEL], coords[:, SECOND]]
    torch.testing.assert_close(per_token, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="takes tokens of 152 samples"):
        enc(torch.zeros(3, 128))
    with pytest.raises(ValueError, match="for 128 Hz records.*256 Hz"):
        token_overlap(opts, 256.0)


def test_one_jepa_step_with_the_continuous_encoder():
    cfg = load_config(
        overrides=["model.embed_dim=32", "model.num_heads=2", "model.depth=1"]
        + ["model.pred_dim=16", "model.pred_heads=2", "model.pred_depth=1"]
        + ["modality.features=continuous", "modality.masks=[{num: 2}]"]
    )
    opts = method_options(MODALITY, cfg)
    masker = MODALITY.masker(opts)
    samples = []
    for i in range(2):
        t = MODALITY.tokenize(record(n_sec=4, seed=i), {}, opts)
        ctx, tgts = masker(np.random.default_rng(i), t["coords"])
        samples.append(Sample(i, t["tokens"], t["coords"], ctx, tgts))
    model = JEPA(build_embedder(MODALITY, cfg), cfg.model)
    assert isinstance(model.encoder.embedder.features, ContinuousConvEncoder)
    pred = model(pack(samples))
    pred.square().mean().backward()
    assert model.encoder.embedder.features.convs[0].weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------
# The log-spectrum feature encoder


def test_log_spectra_are_phase_invariant_and_peak_at_the_rhythm():
    t = np.arange(128) / 128.0
    waves = np.stack([np.sin(2 * np.pi * 20 * t + p) for p in (0.0, 1.0, 2.5)])
    spec = log_spectra(waves)
    assert spec.shape == (3, 65) and spec.dtype == np.float32
    assert (spec.argmax(-1) == 20).all()  # 1-Hz bins of a 1-s token
    np.testing.assert_allclose(spec[1], spec[0], atol=0.05)
    np.testing.assert_allclose(spec[2], spec[0], atol=0.05)
    # power: doubling the amplitude adds log(4) at the peak
    assert abs(float(log_spectra(2 * waves[:1])[0, 20] - spec[0, 20]) - np.log(4.0)) < 1e-3


def test_spectrum_tokens_centre_each_channel_over_the_window():
    rec = record(n_sec=6, absent=(2,))
    raw = tokenize_record(rec, {})
    tokens, coords = raw["tokens"], raw["coords"]
    plain = spectrum_tokens(tokens, coords, "none")
    np.testing.assert_array_equal(plain, log_spectra(tokens))
    centred = spectrum_tokens(tokens, coords, "channel")
    for c in np.unique(coords[:, CHANNEL]):
        rows = coords[:, CHANNEL] == c
        np.testing.assert_allclose(centred[rows].mean(0), 0.0, atol=1e-5)
        np.testing.assert_allclose(centred[rows], plain[rows] - plain[rows].mean(0), atol=1e-5)
    with pytest.raises(ValueError, match="centering must be"):
        spectrum_tokens(tokens, coords, "record")
    with pytest.raises(ValueError, match="needs features: spectrum"):
        SJepaMethod(spectrum_centering="channel")
    with pytest.raises(ValueError, match="spectrum_centering: expected one of"):
        SJepaMethod(features="spectrum", spectrum_centering="global")


def test_spectrum_encoder_is_a_per_token_map_of_the_bins():
    enc = SpectrumEncoder(16, 65)
    tokens = torch.randn(2, 5, 65)
    a = enc(tokens)
    tokens[1, 2] += torch.randn(65)
    changed = (a - enc(tokens)).abs().sum(-1) > 1e-6
    assert changed.tolist() == [[False] * 5, [False, False, True, False, False]]
    with pytest.raises(ValueError, match="takes tokens of 65 log power bins.*got 128"):
        enc(torch.zeros(3, 128))


def test_one_jepa_step_with_the_spectrum_encoder():
    cfg = load_config(
        overrides=["model.embed_dim=32", "model.num_heads=2", "model.depth=1"]
        + ["model.pred_dim=16", "model.pred_heads=2", "model.pred_depth=1"]
        + ["modality.features=spectrum", "modality.spectrum_centering=channel"]
        + ["modality.masks=[{num: 2}]"]
    )
    opts = method_options(MODALITY, cfg)
    assert token_overlap(opts, 128.0) == 0
    masker = MODALITY.masker(opts)
    samples = []
    for i in range(2):
        t = MODALITY.tokenize(record(n_sec=4, seed=i), {}, opts)
        assert t["tokens"].shape[1] == 65  # the log spectrum's bins, channel-centred
        assert abs(t["tokens"][t["coords"][:, CHANNEL] == 0].mean()) < 1e-5
        ctx, tgts = masker(np.random.default_rng(i), t["coords"])
        samples.append(Sample(i, t["tokens"], t["coords"], ctx, tgts))
    model = JEPA(build_embedder(MODALITY, cfg, {"sfreq": 128.0}), cfg.model)
    assert isinstance(model.encoder.embedder.features, SpectrumEncoder)
    pred = model(pack(samples))
    pred.square().mean().backward()
    assert model.encoder.embedder.features.proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="whole number of samples.*100.5 Hz"):
        build_embedder(MODALITY, cfg, {"sfreq": 100.5})


def test_default_masks_are_what_runs_without_mask_settings_drew_before():
    """No behaviour change for configs that set no masks: the defaults equal the old engine
    mask defaults as the EEG masker read them (4 blocks of 15-20% of the channels)."""
    old = {"mask.num_targets": 4, "mask.target_scale": [0.15, 0.2], "mask.min_context": 0.1}
    assert MODALITY.method_options({}, old) == method_options(MODALITY, load_config())
    from modalities.grid import GridMethod, GridPieces
    from modalities.options import parse_options

    grid_old = {"model.patch_len": 16, "mask.num_targets": 4, "mask.target_scale": [0.15, 0.2]}
    mapped = GridPieces.legacy_options(None, grid_old)  # the mixin's mapping reads no state
    assert parse_options(GridMethod, mapped, "modality") == GridMethod()


def test_targets_centre_by_channel_and_second_not_by_each_recordings_montage():
    """Recordings with their own digitised electrode positions (the demo's FIF files) share
    positions with the standard montage's by (channel, second): a batch mixing them groups their
    tokens together, so no token is a position of its own whose centred target is zero."""
    assert MODALITY.position_columns == (CHANNEL, SECOND)
    rng = np.random.default_rng(0)
    coords = []
    for jitter in (0.0, 0.003, 0.003):  # standard positions, then two digitised montages
        c = tokenize_record(record(), {})["coords"].copy()
        c[:, X : Z + 1] += (rng.normal(0, jitter, (1, 3)) * UM_PER_M).astype(np.int64)
        coords.append(c)
    tokens = [rng.standard_normal((len(c), 128)).astype(np.float32) for c in coords]
    for columns, expect in ((None, 1), (MODALITY.position_columns, 3)):
        batch = pack_tokens(tokens, coords, columns)
        n = len(coords[0])
        sizes = torch.bincount(batch.pos_group)[batch.pos_group[n : 2 * n]]
        assert torch.all(sizes == expect)  # per-recording positions: every group a singleton
        h = torch.randn(3, n, 8)
        centred = normalize_targets(h, batch, "position_centered")
        assert (centred[1].abs().sum(-1) == 0).all() == (expect == 1)


def test_the_eeg_control_config_uses_spectrum_tokens_and_position_centred_targets():
    """engine/configs/eeg_control.yaml (the EEG gain of docs/results.md) loads and builds."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "engine" / "configs" / "eeg_control.yaml"
    cfg = load_config(path)
    opts = method_options(MODALITY, cfg)
    assert opts.features == "spectrum" and cfg.loss.target_norm == "position_centered"
    emb = build_embedder(MODALITY, cfg, {"sfreq": 128.0})
    assert isinstance(emb.features, SpectrumEncoder) and emb.features.bins == 65
