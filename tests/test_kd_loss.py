"""--kd-loss: the soft-target term as T^2 * KL (the default) or the raw logits' squared error."""

from __future__ import annotations

import math

import pytest
from conftest import save_tiny_model

from fastft.compress.distill import distill_loss
from fastft.core.errors import FastftError


class Out:
    def __init__(self, logits):
        self.logits = logits


def _kd(s, t, kd_loss, temperature=2.0):
    import torch

    y = torch.zeros(len(s), dtype=torch.long)
    return distill_loss(Out(s), y, t, None, None, temperature, 1.0, 0.0, kd_loss)[1]["kd"]


def test_mse_matches_margins_where_kl_sees_probabilities_only():
    import torch

    g = torch.Generator().manual_seed(0)
    t = torch.randn(6, 3, generator=g)
    # the same logits shifted by a constant per row: the same softmax, so KL is 0; MSE is the shift squared
    shifted = t + 1.5
    assert _kd(shifted, t, "kl") == pytest.approx(0.0, abs=1e-6)
    assert _kd(shifted, t, "mse") == pytest.approx(1.5**2, rel=1e-6)
    # by hand: the mean over rows and classes, with no temperature in it
    s = torch.randn(6, 3, generator=g)
    by_hand = ((s - t) ** 2).mean().item()
    assert math.isclose(_kd(s, t, "mse"), by_hand, rel_tol=1e-6)
    assert math.isclose(_kd(s, t, "mse", temperature=7.0), by_hand, rel_tol=1e-6)
    assert _kd(s, t, "kl", temperature=7.0) != pytest.approx(_kd(s, t, "kl"), rel=1e-3)
    # its gradient pulls the student's logits onto the teacher's
    s.requires_grad_(True)
    y = torch.zeros(6, dtype=torch.long)
    loss, _ = distill_loss(Out(s), y, t, None, None, 2.0, 1.0, 0.0, "mse")
    loss.backward()
    assert torch.allclose(s.grad, 2 * (s - t).detach() / s.numel(), atol=1e-6)


def test_unknown_kd_loss_is_refused():
    import torch

    from fastft.compress import CompressConfig

    with pytest.raises(ValueError, match="unknown kd_loss"):
        _kd(torch.zeros(2, 2), torch.zeros(2, 2), "l1")
    with pytest.raises(FastftError, match="--kd-loss must be one of kl, mse"):
        CompressConfig(kd_loss="l1").validate()
    CompressConfig(kd_loss="mse").validate()


def test_compress_distils_with_the_chosen_kd_loss(tmp_path, tiny_data_file):
    import fastft
    from fastft.compress import CompressConfig

    teacher = save_tiny_model(tmp_path / "t", tiny_data_file, layers=2, seed=3)
    # the soft-target term alone, so that the loss each epoch logs is it
    base = dict(
        layers=1, prune_ffn=0.0, quantize=None, epochs=1, batch_size=8, bench=False, alpha=1.0, hidden_weight=0.0
    )
    reports = {
        k: fastft.compress(str(teacher), CompressConfig(output=str(tmp_path / k), kd_loss=k, **base), progress=False)
        for k in ("kl", "mse")
    }
    assert {k: r["distillation"]["kd_loss"] for k, r in reports.items()} == {"kl": "kl", "mse": "mse"}
    # the same rows and steps, another loss
    kl, mse = (r["distillation"] for r in reports.values())
    assert kl["steps"] == mse["steps"]
    assert kl["history"][0]["loss"] != pytest.approx(mse["history"][0]["loss"], rel=0.05)
