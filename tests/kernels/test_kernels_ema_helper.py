"""EMA reference path, the momentum schedule and EMATarget checkpointing."""

import io

import pytest
import torch

from kernels import EMATarget, MomentumSchedule, ema_


def test_schedule_is_ijepa_linear_ramp():
    s = MomentumSchedule(total_steps=100)
    assert s.momentum_at(0) == pytest.approx(0.996)
    assert s.momentum_at(50) == pytest.approx(0.998)
    assert s.momentum_at(100) == pytest.approx(1.0)
    assert s.momentum_at(1000) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        MomentumSchedule(total_steps=0)


@pytest.mark.parametrize("momentum", [0.9, torch.tensor(0.8)])
@pytest.mark.parametrize("src_dtype", [torch.float32, torch.bfloat16])
def test_reference_ema_matches_formula(momentum, src_dtype):
    targets = [torch.randn(7), torch.randn(3, 5)]
    sources = [torch.randn(7).to(src_dtype), torch.randn(3, 5).to(src_dtype)]
    m = float(momentum)
    want = [t.double() * m + (1 - m) * s.double() for t, s in zip(targets, sources, strict=True)]
    ema_(targets, sources, momentum)
    for t, w in zip(targets, want, strict=True):
        torch.testing.assert_close(t.double(), w, atol=1e-6, rtol=1e-6)


def test_ema_target_state_dict_round_trip_and_resume():
    online = torch.nn.Linear(6, 4)
    target, ema = EMATarget.copy_of(online, total_steps=10)
    assert all(not p.requires_grad and p.dtype == torch.float32 for p in target.parameters())
    for _ in range(3):
        with torch.no_grad():
            online.weight.add_(torch.randn_like(online.weight))
        ema.update(online)
    buf = io.BytesIO()
    torch.save(ema.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    target2, ema2 = EMATarget.copy_of(torch.nn.Linear(6, 4), total_steps=99)
    ema2.load_state_dict(state)
    assert ema2.step == 3 and ema2.momentum_at(ema2.step) == ema.momentum_at(ema.step)
    for a, b in zip(target.parameters(), target2.parameters(), strict=True):
        assert torch.equal(a, b)
    # The resumed helper takes the same next step as the original.
    ema.update(online)
    ema2.update(online)
    for a, b in zip(target.parameters(), target2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_ema_target_load_rejects_mismatch():
    _, ema = EMATarget.copy_of(torch.nn.Linear(6, 4), total_steps=10)
    _, other = EMATarget.copy_of(torch.nn.Linear(6, 5), total_steps=10)
    with pytest.raises(ValueError, match="saved"):
        ema.load_state_dict(other.state_dict())
    with pytest.raises(KeyError, match="missing"):
        ema.load_state_dict({"step": 1})
