from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY

from engine.config import load_config
from engine.data import JEPALoader, epoch_order, rank_batches, resolve_modality
from pipelines.shards import ShardDataset


def _cfg(path, *extra):
    return load_config(overrides=[*TINY, *extra], values={"data.path": str(path)})


def test_epoch_order_is_a_seeded_permutation():
    rows = [5, 7, 3, 9]
    a = epoch_order(rows, seed=1, epoch=0, shuffle_buffer=4)
    assert sorted(a.tolist()) == list(range(24))
    np.testing.assert_array_equal(a, epoch_order(rows, 1, 0, 4))
    assert not np.array_equal(a, epoch_order(rows, 1, 1, 4))
    assert not np.array_equal(a, epoch_order(rows, 2, 0, 4))
    # a buffer of 1 keeps whole shards together, in a shuffled shard order
    whole = epoch_order(rows, 1, 0, 1)
    starts = np.cumsum([0, *rows])
    shard_of = np.searchsorted(starts, whole, side="right") - 1
    assert (np.diff(shard_of) != 0).sum() == len(rows) - 1


@pytest.mark.parametrize("world", [1, 2, 3])
def test_rank_batches_are_disjoint_and_equal(world):
    order = np.random.default_rng(0).permutation(50)
    parts = [rank_batches(order, r, world, 4) for r in range(world)]
    assert len({p.shape for p in parts}) == 1  # same number of steps on every rank
    flat = np.concatenate([p.reshape(-1) for p in parts])
    assert len(np.unique(flat)) == len(flat) == (50 // (4 * world)) * 4 * world


def _indices(loader, n):
    it = iter(loader)
    return [next(it).index.tolist() for _ in range(n)]


def test_loader_same_batches_for_any_worker_count_and_disjoint_ranks(grid_data):
    seqs = {}
    for workers in (0, 2):
        cfg = _cfg(grid_data, f"data.num_workers={workers}", "data.shuffle_buffer=16")
        modality = resolve_modality(cfg.data.modality, "grid")
        seqs[workers] = [_indices(JEPALoader(cfg, modality, r, 2), 6) for r in range(2)]
    assert seqs[0] == seqs[2]
    r0, r1 = seqs[0]
    # 64 records / (2 ranks x 8) = 4 batches per epoch: batches 0-3 epoch 0, 4-5 epoch 1
    ep0 = np.concatenate(r0[:4] + r1[:4])
    assert sorted(ep0.tolist()) == list(range(64))
    assert r0[4:] != r0[:2], "epoch 1 reshuffles"


def test_loader_resumes_mid_epoch_without_reading_skipped_samples(grid_data, monkeypatch):
    cfg = _cfg(grid_data, "data.num_workers=0")
    modality = resolve_modality(cfg.data.modality, "grid")
    full = JEPALoader(cfg, modality)
    it = iter(full)
    batches = [next(it) for _ in range(11)]  # crosses into epoch 1 (8 batches per epoch)
    loader = JEPALoader(cfg, modality)
    it = iter(loader)
    for _ in range(6):
        next(it)
    state = loader.state_dict()
    assert state == {"epoch": 0, "batch": 6}

    read: list[int] = []
    original = ShardDataset.__getitem__
    monkeypatch.setattr(ShardDataset, "__getitem__", lambda s, i: read.append(i) or original(s, i))
    resumed = JEPALoader(cfg, modality)
    resumed.load_state_dict(state)
    it = iter(resumed)
    for want in batches[6:]:
        got = next(it)
        for key in ("index", "tokens", "ctx_idx", "cu_ctx", "tgt_idx", "cu_pred", "pred_src"):
            torch.testing.assert_close(getattr(got, key), getattr(want, key), rtol=0, atol=0)
    assert read[:8] == batches[6].index.tolist(), "the first reads are the next unseen batch"
    assert len(read) == 8 * len(batches[6:]), "only the records of the batches handed out"


def test_loader_opens_the_dataset_once_across_epochs(grid_data, monkeypatch):
    """One stream for the run: the dataset (and with data.verify=first_touch, each shard's hash)
    is opened once per worker process, not once per epoch."""
    import engine.data as ed

    cfg = _cfg(grid_data, "data.num_workers=0", "data.verify=first_touch")
    modality = resolve_modality(cfg.data.modality, "grid")
    loader = JEPALoader(cfg, modality)
    opened: list[str] = []

    class Counting(ShardDataset):
        def __init__(self, *a, **k):
            opened.append(k.get("verify", "?"))
            super().__init__(*a, **k)

    monkeypatch.setattr(ed, "ShardDataset", Counting)
    it = iter(loader)
    seen = [next(it).index.tolist() for _ in range(20)]  # 8 batches per epoch: 3 epochs
    assert loader.state_dict() == {"epoch": 2, "batch": 4}
    assert opened == ["first_touch"], opened
    assert sorted(sum(seen[:8], [])) == list(range(64)) == sorted(sum(seen[8:16], []))


def test_a_masker_with_uses_step_gets_the_stream_position_and_resume_keeps_it(grid_data):
    """A-JEPA's curriculum reads the batch's position in the stream: batches before it over all
    epochs, the same after a resume as in an uninterrupted run."""
    cfg = _cfg(grid_data, "data.num_workers=0")
    modality = resolve_modality(cfg.data.modality, "grid")
    seen: list[int] = []

    class StepMasker:
        uses_step = True

        def __init__(self, inner):
            self.inner = inner

        def __call__(self, rng, coords, step):
            seen.append(step)
            return self.inner(rng, coords)

    plain = type(modality).masker

    class Stepping(type(modality)):
        def masker(self, opts):
            return StepMasker(plain(self, opts))

    stepping = Stepping()
    loader = JEPALoader(cfg, stepping)
    it = iter(loader)
    for _ in range(11):  # 8 batches per epoch: crosses into epoch 1
        next(it)
    per_batch = cfg.data.batch_size
    assert seen == [k for k in range(11) for _ in range(per_batch)]
    seen.clear()
    resumed = JEPALoader(cfg, stepping)
    resumed.load_state_dict({"epoch": 1, "batch": 1})
    it = iter(resumed)
    next(it)
    next(it)
    assert seen == [k for k in (9, 10) for _ in range(per_batch)]
