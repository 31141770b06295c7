"""The fMRI positive control (modalities/fmri/control.py): its files, its latent, and the
property that makes it a control: both classes give every token the same distribution, and
only the structure across tokens differs."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import stats

from modalities.base import ReadContext
from modalities.fmri import MODALITY, FmriOptions
from modalities.fmri.control import (
    FrequencyControl,
    generate_frequency_control,
    latent_field,
    main,
    parcellate_ellipsoid,
    read_latent,
    roi_signals,
    token_latents,
    token_oracle,
)
from modalities.fmri.jepa import tokenize_record

SMALL = FrequencyControl(n_frames=128)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("control")
    generate_frequency_control(out, 4, seed=3, cfg=SMALL)
    return out


def test_files_labels_and_atlas(cohort):
    scans = sorted((cohort / "bids").glob("sub-*/func/*_bold.nii.gz"))
    assert len(scans) == 4
    rows = (cohort / "bids" / "participants.tsv").read_text().split()
    assert rows[:2] == ["participant_id", "field"]
    assert rows[2:] == [
        *("sub-01", "independent", "sub-02", "smooth"),
        *("sub-03", "independent", "sub-04", "smooth"),
    ]
    atlas = np.asarray(nib.load(cohort / "atlas.nii.gz").dataobj)
    assert set(np.unique(atlas)) == set(range(SMALL.n_rois + 1))
    img = nib.load(scans[0])
    assert img.shape == (*SMALL.shape, SMALL.n_frames) and img.header.get_zooms()[3] == SMALL.tr
    latent = read_latent(scans[0])
    assert latent.shape == (SMALL.n_frames, SMALL.n_rois)
    assert SMALL.f_min <= latent.min() and latent.max() <= SMALL.f_max


def test_generation_is_deterministic(cohort, tmp_path):
    generate_frequency_control(tmp_path, 4, seed=3, cfg=SMALL)
    for rel in ("atlas.nii.gz", "bids/sub-02/func/sub-02_task-rest_bold.nii.gz"):
        a = np.asarray(nib.load(cohort / rel).dataobj)
        b = np.asarray(nib.load(tmp_path / rel).dataobj)
        assert np.array_equal(a, b), rel


def test_read_through_the_fmri_reader_recovers_each_tokens_frequency(cohort):
    """The scans read by the real reader with the control's atlas give tokens whose periodogram
    peak is the sidecar's latent: the files carry what the generator says."""
    opts = FmriOptions(atlas=str(cohort / "atlas.nii.gz"), window=128)
    scan = cohort / "bids" / "sub-02" / "func" / "sub-02_task-rest_bold.nii.gz"
    context = ReadContext(str(scan), str(scan), os.path.getsize(scan), 1 << 34)
    (record,) = list(MODALITY.read(context, opts))
    record["source"] = str(scan)  # the ingest framework adds it to every record
    stats_ = {"roi_median": [0.0] * SMALL.n_rois, "roi_iqr": [1.0] * SMALL.n_rois}
    tokens = tokenize_record(record, stats_, 16)["tokens"]
    truth = token_latents(record)
    assert tokens.shape == (SMALL.n_rois * 8, 16) and truth.shape == (SMALL.n_rois * 8,)
    assert np.corrcoef(token_oracle(tokens), truth)[0, 1] > 0.95
    # a linear readout of the samples carries nothing: the phases are random
    x = np.c_[tokens, np.ones(len(tokens))]
    coef, *_ = np.linalg.lstsq(x, truth, rcond=None)
    r2 = 1 - ((x @ coef - truth) ** 2).sum() / ((truth - truth.mean()) ** 2).sum()
    assert r2 < 0.1


def test_both_classes_give_every_token_the_same_distribution():
    """Per token: frequency uniform on the band in both classes (two-sample KS test), same
    signal variance; across tokens: neighbours agree in the smooth class only."""
    cfg = SMALL
    _, centroids = parcellate_ellipsoid(cfg, 0)
    rng = np.random.default_rng(0)
    smooth = np.stack([latent_field(cfg, centroids, True, rng) for _ in range(60)])
    indep = np.stack([latent_field(cfg, centroids, False, rng) for _ in range(60)])
    # one token position across records (tokens of a record are dependent in the smooth class)
    for roi, patch in ((0, 0), (17, 5)):
        p = stats.ks_2samp(smooth[:, roi, patch], indep[:, roi, patch]).pvalue
        assert p > 0.01, (roi, patch, p)
        assert (
            stats.kstest(
                (smooth[:, roi, patch] - cfg.f_min) / (cfg.f_max - cfg.f_min), "uniform"
            ).pvalue
            > 0.01
        )
    d = np.linalg.norm(centroids[:, None] - centroids[None], axis=2)
    nearest = np.argsort(d, axis=1)[:, 1]
    corr = lambda f: np.corrcoef(f.reshape(-1), f[:, nearest].reshape(-1))[0, 1]  # noqa: E731
    assert corr(smooth) > 0.5 and abs(corr(indep)) < 0.1
    sig = roi_signals(smooth[0], cfg.noise, rng), roi_signals(indep[0], cfg.noise, rng)
    assert abs(sig[0].var() - sig[1].var()) < 0.05


def test_cli(tmp_path, capsys):
    assert main([str(tmp_path / "c"), "--subjects", "2", "--frames", "64"]) == 0
    assert "wrote 2 scans" in capsys.readouterr().out
    assert main([str(tmp_path / "d"), "--frames", "60"]) == 1
    assert "multiple of 16" in capsys.readouterr().err
