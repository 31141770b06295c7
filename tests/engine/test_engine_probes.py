"""engine.probe's few-label splits, attentive probe and token probe on synthetic features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.probe import (
    AttentiveProbe,
    attentive_probe,
    linear_probe,
    probe_splits,
    token_probe,
)


def test_few_label_splits_take_n_groups_balanced_and_never_straddle():
    subjects = np.repeat(np.arange(30), 3)
    labels = np.where(subjects % 2, "a", "b")
    splits = probe_splits(labels, True, folds=6, seed=0, groups=subjects, train_groups=8)
    assert len(splits) == 6
    seen = set()
    for train, test in splits:
        tr = set(subjects[train])
        assert len(tr) == 8 and not tr & set(subjects[test])
        assert len(train) + len(test) == len(labels)
        assert (labels[train] == "a").sum() == (labels[train] == "b").sum()  # 4 + 4 subjects
        seen.add(frozenset(tr))
    assert len(seen) > 1  # draws differ
    assert splits[0][0].tolist() == probe_splits(labels, True, 6, 0, subjects, 8)[0][0].tolist()
    with pytest.raises(ValueError, match="between 1 and 29"):
        probe_splits(labels, True, 3, 0, subjects, 30)


def test_few_labels_need_features_where_the_label_is_prominent():
    """The label is one direction among noisy ones: with 6 labelled records per draw the linear
    probe finds it among few directions, not among many; with many labels it does either way."""
    rng = np.random.default_rng(0)
    n = 200
    y = np.arange(n) % 2
    signal = (2 * y - 1)[:, None] * 1.0
    # the probe standardises every feature, so what hurts is the number of noise directions
    clean = np.c_[signal + 0.3 * rng.standard_normal((n, 1)), rng.standard_normal((n, 1))]
    noisy = np.c_[signal + 0.3 * rng.standard_normal((n, 1)), rng.standard_normal((n, 60))]
    few_clean = linear_probe(clean, y, folds=10, train_groups=6)
    few_noisy = linear_probe(noisy, y, folds=10, train_groups=6)
    many_noisy = linear_probe(noisy, y, folds=5)
    assert few_clean["mean"] > 0.9 and few_noisy["mean"] < few_clean["mean"] - 0.15
    assert many_noisy["mean"] > 0.8 and few_clean["n_train"] == [6] * 10


def test_attentive_probe_learns_a_token_label_and_ignores_padding():
    rng = np.random.default_rng(1)
    n, d = 120, 8
    y = np.arange(n) % 2
    # records of 6-14 tokens; the label shifts channel 1 of every token
    x = [
        (rng.standard_normal((int(rng.integers(6, 15)), d)) + 1.5 * (2 * y[i] - 1) * np.eye(d)[1])
        for i in range(n)
    ]
    x = [t.astype(np.float32) for t in x]
    att = attentive_probe(x, y, folds=2, steps=100)
    assert att["metric"] == "accuracy" and att["mean"] > 0.9
    shift = np.array([t[:, 1].mean() for t in x])
    reg = attentive_probe(x, shift, folds=2, steps=100)
    assert reg["metric"] == "r2" and reg["mean"] > 0.5
    shuffled = attentive_probe(x, rng.permutation(y), folds=2, steps=100)
    assert shuffled["mean"] < 0.7
    # padding rows never reach the output, whatever they hold
    torch.manual_seed(0)
    probe = AttentiveProbe(d, 2).eval()
    tok = torch.randn(1, 5, d)
    padded = torch.cat([tok, 1e3 * torch.randn(1, 3, d)], 1)
    mask = torch.tensor([[False] * 5 + [True] * 3])
    with torch.no_grad():
        torch.testing.assert_close(
            probe(padded, mask), probe(tok, torch.zeros(1, 5, dtype=torch.bool))
        )


def test_token_probe_scores_a_linear_token_target_and_groups_records():
    rng = np.random.default_rng(2)
    feats = [rng.standard_normal((50, 6)) for _ in range(20)]
    w = rng.standard_normal(6)
    good = token_probe(feats, [f @ w for f in feats], groups=np.arange(20) // 2)
    bad = token_probe(feats, [rng.standard_normal(50) for _ in feats])
    assert good["mean"] > 0.99 and good["tokens"] == 1000 and abs(bad["mean"]) < 0.05
    capped = token_probe(feats, [f @ w for f in feats], max_tokens=10)
    assert capped["tokens"] == 200
    with pytest.raises(ValueError, match="token targets"):
        token_probe(feats, [np.zeros(3) for _ in feats])
