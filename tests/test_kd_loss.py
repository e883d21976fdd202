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
    with pytest.raises(FastftError, match="kd_loss \\(--kd-loss\\) must be one of kl, mse"):
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


def test_soft_kl_is_t_squared_kl_from_the_teacher_by_hand():
    """The KL term's value, by hand: T^2 * mean over rows of sum_c p_t log(p_t / p_s) with both
    distributions softened by T (the teacher's the target). A KL taken the other way, or scaled by
    T instead of T^2, passed every other test."""
    import torch

    from fastft.compress.distill import soft_kl

    s = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    t = torch.tensor([[0.5, 1.5, -1.0], [1.0, -0.5, 2.5]])
    for T in (1.0, 2.0, 4.0):
        want = 0.0
        for row_s, row_t in zip(s.tolist(), t.tolist()):
            zs = sum(math.exp(x / T) for x in row_s)
            zt = sum(math.exp(x / T) for x in row_t)
            ps = [math.exp(x / T) / zs for x in row_s]
            pt = [math.exp(x / T) / zt for x in row_t]
            want += sum(b * math.log(b / a) for a, b in zip(ps, pt))
        want = T * T * want / len(s)
        assert soft_kl(s, t, T).item() == pytest.approx(want, rel=1e-5), T


def test_hidden_state_term_ignores_padded_positions():
    """The hidden-state MSE reads real tokens only: a padded position's states, student's or
    teacher's, do not move it (a mutant that dropped the mask passed every test)."""
    from types import SimpleNamespace

    import torch

    g = torch.Generator().manual_seed(0)
    b, s, k, h = 2, 5, 2, 4
    student = [torch.randn(b, s, h, generator=g) for _ in range(k + 1)]
    teacher = torch.randn(b, s, k, h, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])

    def hidden_mse(states, t_hidden):
        out = SimpleNamespace(logits=torch.zeros(b, 2), hidden_states=states)
        _, parts = distill_loss(out, torch.zeros(b, dtype=torch.long), torch.zeros(b, 2), t_hidden, mask, 2.0, 0.5, 1.0)
        return parts["hidden_mse"]

    base = hidden_mse(student, teacher)
    moved = [x.clone() for x in student]
    for x in moved[1:]:
        x[1, 3:] += 100.0  # padded positions of row 1
    t_moved = teacher.clone()
    t_moved[1, 3:] -= 100.0
    assert hidden_mse(moved, t_moved) == pytest.approx(base, rel=1e-6)
    real = ((0, 5), (1, 3))  # (row, real tokens)
    want = sum(((student[j + 1][r, :n] - teacher[r, :n, j]) ** 2).sum().item() for j in range(k) for r, n in real)
    assert base == pytest.approx(want / (8 * k * h), rel=1e-5)
