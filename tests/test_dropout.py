"""fastft.ops.dropout (the cheap CPU dropout mask) and fastft.swap.training (a model trains with it)."""

from __future__ import annotations

import math

import pytest
import torch

from fastft.ops.dropout import FastDropout, fast_dropout, keep_mask
from fastft.swap.training import TRAIN_IMPL, fast_dropout_training, train_attention_forward


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 1e-3])
def test_keep_rate_and_scale_match_the_probability(p):
    n = 1 << 20
    torch.manual_seed(0)
    keep = keep_mask((n,), p)
    q = 1 - round(p * 65536) / 65536  # the quantised keep probability
    sigma = math.sqrt(q * (1 - q) / n)
    assert abs(keep.float().mean().item() - q) < 5 * sigma
    assert abs(q - (1 - p)) < 1e-5
    torch.manual_seed(0)
    y = fast_dropout(torch.ones(n), p)
    kept = y[y != 0]
    assert torch.all(kept == kept[0]) and kept[0].item() == pytest.approx(1 / q, rel=1e-6)
    assert y.mean().item() == pytest.approx(1.0, abs=6 * sigma / q)  # expectation unchanged


def test_masks_are_independent_across_positions_and_calls():
    torch.manual_seed(1)
    a = keep_mask((4096, 64), 0.5).float()
    b = keep_mask((4096, 64), 0.5).float()
    # neighbours (the four 16-bit words of one 64-bit draw) and two calls are uncorrelated
    for u, v in ((a[:, :-1], a[:, 1:]), (a, b), (a[:-1], a[1:])):
        c = torch.corrcoef(torch.stack([u.flatten(), v.flatten()]))[0, 1].item()
        assert abs(c) < 0.01
    assert not torch.equal(a, b)


def test_reproducible_under_manual_seed_and_generator():
    torch.manual_seed(7)
    a = keep_mask((33, 17), 0.3)
    torch.manual_seed(7)
    b = keep_mask((33, 17), 0.3)
    assert torch.equal(a, b)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x = torch.randn(5, 7, 11)
    assert torch.equal(fast_dropout(x, 0.2, generator=g1), fast_dropout(x, 0.2, generator=g2))


@pytest.mark.parametrize("shape", [(1,), (3,), (5, 7), (2, 3, 5, 7), (0, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_output_is_zero_or_scaled_input_and_gradient_is_the_mask(shape, dtype):
    torch.manual_seed(2)
    x = (torch.randn(shape) + 3).to(dtype).requires_grad_()
    y = fast_dropout(x, 0.25)
    assert y.dtype == dtype and y.shape == x.shape
    scale = 65536 / (65536 - 16384)
    kept = y != 0
    torch.testing.assert_close(y[kept], (x * scale)[kept])
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept)
    torch.testing.assert_close(x.grad[kept], torch.full_like(x.grad[kept], scale))


def test_identity_and_torch_cases():
    x = torch.randn(4, 6)
    assert fast_dropout(x, 0.5, training=False) is x
    assert fast_dropout(x, 0.0) is x
    assert torch.equal(fast_dropout(x, 1.0), torch.zeros_like(x))  # torch's own dropout at p = 1
    assert torch.equal(fast_dropout(x, 1 - 1e-6), torch.zeros_like(x))  # rounds to 1: torch's too
    m = FastDropout(0.4)
    assert isinstance(m, torch.nn.Dropout) and m.p == 0.4
    assert m.eval()(x) is x
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="dropout probability"):
            fast_dropout(x, bad)


def _qkv(b=2, h=3, s=9, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, s, d, generator=g) for _ in range(3)]


class _Module(torch.nn.Module):
    is_causal = False


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
def test_train_attention_matches_the_reference_with_the_same_mask(mask_kind):
    q, k, v = _qkv()
    b, h, s, d = q.shape
    lengths = torch.tensor([9, 5])
    valid = torch.arange(s)[None, :] < lengths[:, None]  # (b, s)
    mask = {
        "none": None,
        "bool": valid[:, None, None, :].expand(b, 1, s, s),
        "additive": torch.where(valid, 0.0, torch.finfo(torch.float32).min)[:, None, None, :],
    }[mask_kind]
    module = _Module().train()
    torch.manual_seed(11)
    out, weights = train_attention_forward(module, q, k, v, mask, dropout=0.2, scaling=0.3)
    assert weights is None and out.shape == (b, s, h, d)
    torch.manual_seed(11)
    keep = keep_mask((b, h, s, s), 0.2)
    scores = q @ k.transpose(-1, -2) * 0.3
    if mask is not None:
        scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, -1) * keep * (65536 / (65536 - round(0.2 * 65536)))
    torch.testing.assert_close(out, (probs @ v).transpose(1, 2), rtol=1e-5, atol=1e-6)
    # dropout 0 (what transformers passes in eval mode): transformers' SDPA function, no randomness
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3).transpose(1, 2)
    for m, p in ((module.eval(), 0.0), (module.train(), 0.0)):
        got, _ = train_attention_forward(m, q, k, v, mask, dropout=p, scaling=0.3)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def _tiny(family):
    import transformers as tf

    torch.manual_seed(0)
    if family == "distilbert":
        cfg = tf.DistilBertConfig(vocab_size=120, dim=32, n_layers=2, n_heads=4, hidden_dim=64)
        return tf.DistilBertForSequenceClassification(cfg)
    cfg = tf.BertConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    return tf.BertForSequenceClassification(cfg)


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 120, (3, 10), generator=g)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1])}


@pytest.mark.attention_interface
@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_model_trains_with_fast_dropout_and_is_restored(family, tmp_path):
    model = _tiny(family)
    batch = _batch()
    n_dropout = sum(type(m) is torch.nn.Dropout for m in model.modules())
    before = model.config._attn_implementation
    eval_logits = model.eval()(**batch).logits.detach()
    calls = []
    import fastft.swap.training as training

    real = training.fast_dropout

    def spy(x, p, training_=True, *a, **kw):
        calls.append(tuple(x.shape))
        return real(x, p, training_, *a, **kw)

    training.fast_dropout = spy
    try:
        with fast_dropout_training(model.train()) as m:
            assert m is model
            assert model.config._attn_implementation == TRAIN_IMPL
            assert sum(isinstance(x, FastDropout) for x in model.modules()) == n_dropout
            torch.manual_seed(5)
            a = model(**batch)
            torch.manual_seed(5)
            b = model(**batch).logits
            torch.manual_seed(6)
            c = model(**batch).logits
            a.loss.backward()
            assert calls  # the attention probabilities were dropped by the cheap mask
            assert torch.equal(a.logits, b) and not torch.equal(a.logits, c)
            assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
            torch.testing.assert_close(model.eval()(**batch).logits, eval_logits)  # eval: unchanged
            model.train()
    finally:
        training.fast_dropout = real
    assert model.config._attn_implementation == before
    assert sum(type(x) is torch.nn.Dropout for x in model.modules()) == n_dropout
    assert not any(isinstance(x, FastDropout) for x in model.modules())
    assert all(x.training for x in model.modules())  # the restored modules keep the mode
    model.save_pretrained(tmp_path)
    assert TRAIN_IMPL not in (tmp_path / "config.json").read_text()


@pytest.mark.attention_interface
def test_swapped_model_keeps_its_attention_and_errors_restore():
    import fastft

    model = fastft.swap_attention(_tiny("bert"))
    with fast_dropout_training(model.train()):
        assert model.config._attn_implementation == "fastft"
        assert isinstance(model.bert.embeddings.dropout, FastDropout)
    eager = _tiny("bert")
    eager.set_attn_implementation("eager")
    with fast_dropout_training(eager.train()):
        assert eager.config._attn_implementation == "eager"  # its choice (attention weights) stays
    plain = _tiny("bert")
    with pytest.raises(RuntimeError, match="boom"):
        with fast_dropout_training(plain):
            raise RuntimeError("boom")
    assert plain.config._attn_implementation == "sdpa" and type(plain.bert.embeddings.dropout) is torch.nn.Dropout


def test_run_loop_uses_it_unless_asked_not_to():
    from fastft.train.loop import run_loop

    model = _tiny("bert")
    batch = _batch()
    seen = []

    def step_loss(b):
        seen.append(type(model.bert.embeddings.dropout))
        return model(**b).loss, 3, None

    for fast, expected in ((True, FastDropout), (False, torch.nn.Dropout)):
        seen.clear()
        kw = dict(steps_per_epoch=2, total_steps=2, lr=1e-4, weight_decay=0.0, warmup_ratio=0.0, progress=False)
        res = run_loop(model, lambda e: [batch, batch], step_loss, fast_dropout=fast, **kw)
        assert seen == [expected, expected] and res.dropout == ("fastft masks" if fast else "torch")
        assert type(model.bert.embeddings.dropout) is torch.nn.Dropout


def test_keep_mask_accepts_both_ends_of_the_probability_range():
    """keep_mask takes p in [0, 1] inclusive (p=1 is not refused); p=0 keeps every element."""
    assert keep_mask((4096,), 1.0).shape == (4096,)
    torch.manual_seed(0)
    assert keep_mask((1 << 20,), 0.0).all()  # the lowest 16-bit word (-32768) is kept too


def test_keep_mask_of_probability_one_keeps_nothing():
    """keep_mask(p=1), and any p that rounds to 65536 / 65536, keeps no element (-32768 + 65536
    wrapped round in int16 and it kept every one)."""
    assert not keep_mask((4096,), 1.0).any() and not keep_mask((4096,), 1 - 2**-18).any()
    assert keep_mask((1 << 16,), 1 - 2**-15).sum() < 64  # 2 of 65536 words kept, on average


def test_fast_dropout_training_restores_the_mode_set_inside_the_block():
    """Dropout modules restored on leaving take the train/eval mode set within the block."""
    model = _tiny("bert").train()
    with fast_dropout_training(model):
        model.eval()
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(type(m) is torch.nn.Dropout and not m.training for m in drops)
