"""fastft.swap_attention / unswap_attention on tiny random BERT, RoBERTa, XLM-R, CamemBERT, ELECTRA, DistilBERT."""

from __future__ import annotations

import pytest
import torch

import fastft
from fastft.core.errors import FastftError

ATOL = 1e-5
KW = dict(vocab_size=120, max_position_embeddings=80, initializer_range=0.2)


def _tiny(family: str, head: bool = True, **extra):
    import transformers as tf

    torch.manual_seed(0)
    if family == "distilbert":
        cfg = tf.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, **KW, **extra)
        cls = tf.DistilBertForSequenceClassification if head else tf.DistilBertModel
    else:
        common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, **KW, **extra)
        cfg, cls = {
            "bert": (lambda: tf.BertConfig(**common), tf.BertForSequenceClassification if head else tf.BertModel),
            "roberta": (
                lambda: tf.RobertaConfig(pad_token_id=1, **common),
                tf.RobertaForSequenceClassification if head else tf.RobertaModel,
            ),
            "xlm-roberta": (
                lambda: tf.XLMRobertaConfig(pad_token_id=1, **common),
                tf.XLMRobertaForSequenceClassification if head else tf.XLMRobertaModel,
            ),
            "camembert": (
                lambda: tf.CamembertConfig(pad_token_id=1, **common),
                tf.CamembertForSequenceClassification if head else tf.CamembertModel,
            ),
            "electra": (
                lambda: tf.ElectraConfig(embedding_size=24, **common),
                tf.ElectraForSequenceClassification if head else tf.ElectraModel,
            ),
        }[family]
        cfg = cfg()
    return cls(cfg).eval()


def _batch(seq: int = 13, batch: int = 3):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 120, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[1, seq // 2 :] = 0  # padding in the batch
    mask[2, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _out(model, batch):
    with torch.no_grad():
        out = model(**batch)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


class Spy:
    """Counts calls of fastft.ops.fused_attention and fused_attention_varlen (what the swapped
    models call): ``calls`` both, ``varlen`` the padding-free form (eval mode, right padding)."""

    def __init__(self, monkeypatch):
        import fastft.ops as ops

        self.calls, self.varlen, self.masks = 0, 0, []
        real, real_varlen = ops.fused_attention, ops.fused_attention_varlen

        def spy(*args, **kwargs):
            self.calls += 1
            self.masks.append(kwargs.get("key_padding_mask"))
            return real(*args, **kwargs)

        def spy_varlen(*args, **kwargs):
            self.calls += 1
            self.varlen += 1
            return real_varlen(*args, **kwargs)

        monkeypatch.setattr(ops, "fused_attention", spy)
        monkeypatch.setattr(ops, "fused_attention_varlen", spy_varlen)


FAMILIES = ["bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert"]


@pytest.mark.attention_interface
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head", [True, False], ids=["classifier", "base"])
def test_swap_matches_original_and_calls_the_op(family, head, monkeypatch):
    model = _tiny(family, head)
    batch = _batch()
    ref = _out(model, batch)
    spy = Spy(monkeypatch)
    assert fastft.swap_attention(model) is model
    got = _out(model, batch)
    assert spy.calls == 2, "one fused_attention call per layer"
    assert spy.varlen == 2, "eval mode with right padding: padded query rows skipped (varlen form)"
    if head:  # logits read position 0 (a real token): the whole output matches
        torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
    else:  # hidden states match at every real token; padded positions are not computed
        valid = batch["attention_mask"].bool()
        torch.testing.assert_close(got[valid], ref[valid], atol=ATOL, rtol=0)
    assert ref.abs().max() > 0.05  # the comparison is not trivially small


@pytest.mark.attention_interface
@pytest.mark.parametrize("family", FAMILIES)
def test_unswap_restores_exactly(family, monkeypatch):
    model = _tiny(family)
    original = model.config._attn_implementation
    batch = _batch()
    ref = _out(model, batch)
    fastft.swap_attention(model)
    assert model.config._attn_implementation == "fastft"
    assert fastft.swap.is_swapped(model)
    assert fastft.unswap_attention(model) is model
    assert model.config._attn_implementation == original
    assert not fastft.swap.is_swapped(model)
    spy = Spy(monkeypatch)
    assert torch.equal(_out(model, batch), ref)
    assert spy.calls == 0


@pytest.mark.attention_interface
@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_output_attentions_gives_the_eager_weights(family, monkeypatch):
    """The fused kernel never forms the attention weights: a call asking for them computes them
    the eager way (once an empty tuple, with no word), and the logits stay the same."""
    model = _tiny(family)
    model.set_attn_implementation("eager")
    batch = _batch()
    with torch.no_grad():
        ref = model(**batch, output_attentions=True)
    fastft.swap_attention(model)
    spy = Spy(monkeypatch)
    with torch.no_grad():
        got = model(**batch, output_attentions=True)
    assert spy.calls == 0, "the weights come from the eager computation"
    assert len(got.attentions) == len(ref.attentions) == 2
    for a, b in zip(got.attentions, ref.attentions):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.logits, ref.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(_out(model, batch), ref.logits, atol=ATOL, rtol=0)  # without: the op
    assert spy.calls == 2


@pytest.mark.attention_interface
def test_swapping_the_base_model_swaps_the_whole_model(monkeypatch):
    """The swap's state lives on the attention modules: swapping ``m.bert`` is seen from ``m``,
    and unswapping ``m`` restores it (it once stayed swapped, state kept on ``m.bert`` only)."""
    model = _tiny("bert")
    batch = _batch()
    ref = _out(model, batch)
    fastft.swap_attention(model.bert)
    assert fastft.swap.is_swapped(model) and fastft.swap.is_swapped(model.bert)
    fastft.unswap_attention(model)
    assert not fastft.swap.is_swapped(model) and not fastft.swap.is_swapped(model.bert)
    assert model.config._attn_implementation != "fastft"
    spy = Spy(monkeypatch)
    assert torch.equal(_out(model, batch), ref)
    assert spy.calls == 0
    assert not fastft.swap.is_swapped(torch.nn.Linear(2, 2))  # not a transformers model: never swapped


@pytest.mark.attention_interface
def test_unswap_restores_eager_and_swap_is_idempotent():
    model = _tiny("bert")
    model.set_attn_implementation("eager")
    fastft.swap_attention(model)
    fastft.swap_attention(model)  # no-op
    fastft.unswap_attention(model)
    assert model.config._attn_implementation == "eager"
    fastft.unswap_attention(model)  # not swapped: unchanged
    assert model.config._attn_implementation == "eager"


@pytest.mark.attention_interface
def test_no_mask_and_single_row(monkeypatch):
    model = _tiny("bert")
    ids = torch.randint(5, 120, (1, 7))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    fastft.swap_attention(model)
    spy = Spy(monkeypatch)
    with torch.no_grad():
        got = model(input_ids=ids).logits
    assert spy.calls == 2 and spy.masks == [None, None]
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


@pytest.mark.attention_interface
def test_training_with_dropout_falls_back_to_sdpa(monkeypatch):
    model = _tiny("bert", attention_probs_dropout_prob=0.1)
    fastft.swap_attention(model)
    spy = Spy(monkeypatch)
    model.train()
    out = model(**_batch()).logits
    out.sum().backward()
    assert spy.calls == 0, "training with attention dropout uses torch SDPA"
    model.eval()
    _out(model, _batch())
    assert spy.calls == 2


@pytest.mark.attention_interface
@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_eval_padding_skips_padded_query_rows(family, monkeypatch):
    """Eval mode, right padding: the padding-free form runs (padded keys never read, padded
    query rows not computed) and logits match the unswapped model within 1e-5. No padding,
    left padding or training mode keep the padded op."""
    model = _tiny(family)
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(5, 120, (4, 61), generator=g)
    mask = torch.ones_like(ids)
    for row, n in enumerate((61, 1, 30, 45)):
        mask[row, n:] = 0
    ref = _out(model, {"input_ids": ids, "attention_mask": mask})
    fastft.swap_attention(model)
    spy = Spy(monkeypatch)
    got = _out(model, {"input_ids": ids, "attention_mask": mask})
    assert spy.varlen == 2 and spy.calls == 2
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
    assert ref.abs().max() > 0.05

    spy.calls = spy.varlen = 0
    _out(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})  # nothing padded
    left = mask.flip(1)  # left padding: position 0 is padding, poolers read it
    _out(model, {"input_ids": ids, "attention_mask": left})
    trained = fastft.swap_attention(_tiny("bert", attention_probs_dropout_prob=0.0)).train()
    with torch.no_grad():
        trained(input_ids=ids, attention_mask=mask)  # training mode, no attention dropout: the op
    assert spy.calls == 6 and spy.varlen == 0, "only eval mode with right padding takes the varlen route"


def test_padded_rows_are_zeros_valid_rows_exact():
    """The attention function itself: right-padded bool mask in eval mode -> padded query rows
    zeros, valid rows equal to SDPA with the same mask."""
    from fastft.swap._interface import fastft_attention_forward

    torch.manual_seed(1)
    q, k, v = (torch.randn(3, 2, 9, 16) for _ in range(3))
    keep = torch.arange(9)[None, :] < torch.tensor([9, 4, 0])[:, None]
    module = torch.nn.Module().eval()
    out, _ = fastft_attention_forward(module, q, k, v, keep, scaling=0.25)
    assert out.shape == (3, 9, 2, 16) and out.is_contiguous()
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :], scale=0.25)
    rows = keep.clone()
    torch.testing.assert_close(out[rows], ref.transpose(1, 2)[rows], atol=ATOL, rtol=0)
    assert (out[~rows] == 0).all()


@pytest.mark.attention_interface
def test_training_without_dropout_uses_the_op_and_backprops(monkeypatch):
    model = _tiny("distilbert", attention_dropout=0.0, dropout=0.0)
    fastft.swap_attention(model)
    spy = Spy(monkeypatch)
    model.train()
    model(**_batch()).logits.sum().backward()
    assert spy.calls == 2
    assert model.distilbert.transformer.layer[0].attention.q_lin.weight.grad is not None


def test_attention_modules_in_layer_order():
    model = _tiny("roberta")
    mods = fastft.swap.attention_modules(model)
    assert mods == [layer.attention.self for layer in model.roberta.encoder.layer]


@pytest.mark.parametrize("name", ["gpt2", "t5"])
def test_unsupported_architecture(name):
    import transformers as tf

    model = {
        "gpt2": lambda: tf.GPT2Model(tf.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16)),
        "t5": lambda: tf.T5Model(tf.T5Config(num_layers=1, d_model=16, d_kv=8, num_heads=2, d_ff=32, vocab_size=50)),
    }[name]()
    with pytest.raises(FastftError, match="supported: bert, roberta, xlm-roberta, camembert, electra, distilbert"):
        fastft.swap_attention(model)
    assert not fastft.swap.is_swapped(model)


def test_not_a_model_and_decoder_refused():
    with pytest.raises(FastftError, match="transformers model"):
        fastft.swap_attention(torch.nn.Linear(2, 2))
    import transformers as tf

    decoder = tf.BertModel(
        tf.BertConfig(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            vocab_size=50,
            is_decoder=True,
        )
    )
    with pytest.raises(FastftError, match="encoders only"):
        fastft.swap_attention(decoder)


def test_additive_4d_key_padding_mask_and_per_query_fallback():
    from fastft.swap._interface import fastft_attention_forward

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8) for _ in range(3))
    keep = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    module = torch.nn.Module().eval()
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
    additive = torch.zeros(2, 1, 1, 5).masked_fill(~keep[:, None, None, :], torch.finfo(torch.float32).min)
    for mask in (keep, keep[:, None, None, :], additive):
        out, weights = fastft_attention_forward(module, q, k, v, mask, scaling=8**-0.5)
        assert weights is None and out.shape == (2, 5, 3, 8)
        # real query rows (bool masks in eval mode skip the padded ones)
        torch.testing.assert_close(out[keep], ref.transpose(1, 2)[keep], atol=ATOL, rtol=0)
    causal = torch.ones(5, 5, dtype=torch.bool).tril().expand(2, 1, 5, 5)  # varies per query: SDPA fallback
    out, _ = fastft_attention_forward(module, q, k, v, causal, scaling=8**-0.5)
    torch.testing.assert_close(
        out.transpose(1, 2),
        torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True),
        atol=ATOL,
        rtol=0,
    )


@pytest.mark.attention_interface
def test_torch_export_keeps_one_op_per_layer():
    """The swapped model traces with torch.export: the op is one graph node per layer."""
    model = _tiny("bert")
    batch = _batch()
    ref = _out(model, batch)
    fastft.swap_attention(model)
    ep = torch.export.export(model, (), dict(batch))
    ops = [n for n in ep.graph.nodes if "fastft.fused_attention" in str(n.target)]
    assert len(ops) == 2
    with torch.no_grad():
        got = ep.module()(**batch).logits
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


def _decorated(fn, keep_wrapped: bool):
    """A pass-through decorator like transformers' @deprecate_kwarg (with or without functools.wraps)."""
    import functools

    def wrapper(self, *args, **kwargs):
        return fn(self, *args, **kwargs)

    return functools.wraps(fn)(wrapper) if keep_wrapped else wrapper


@pytest.mark.attention_interface
@pytest.mark.parametrize("keep_wrapped", [True, False], ids=["functools.wraps", "bare"])
@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_decorated_forward_still_swaps(family, keep_wrapped, monkeypatch):
    """Detection is by behaviour: a decorator around forward (its code no longer names the
    attention interface) does not stop the swap."""
    model = _tiny(family)
    cls = type(fastft.swap.attention_modules(model)[0])
    monkeypatch.setattr(cls, "forward", _decorated(cls.forward, keep_wrapped))
    batch = _batch()
    ref = _out(model, batch)
    assert fastft.swap.check_dispatch(model) == (True, "")
    spy = Spy(monkeypatch)
    fastft.swap_attention(model)
    got = _out(model, batch)
    assert spy.calls == 2
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
    assert model.config._attn_implementation == "fastft"  # the probe restored the config it borrowed


def test_hard_coded_attention_is_refused_in_one_line(monkeypatch):
    """A self-attention whose forward computes attention itself (never calls the interface)
    gets the one-line error, and the model is left as it was."""

    def hard_coded(self, hidden_states, attention_mask=None, *args, **kwargs):
        b, s, _ = hidden_states.shape
        heads = [
            lin(hidden_states).view(b, s, self.num_attention_heads, -1).transpose(1, 2)
            for lin in (self.query, self.key, self.value)
        ]
        out = torch.nn.functional.scaled_dot_product_attention(*heads)
        return out.transpose(1, 2).reshape(b, s, -1), None

    model = _tiny("bert")
    cls = type(fastft.swap.attention_modules(model)[0])  # BertSelfAttention (BertSdpaSelfAttention on 4.x)
    monkeypatch.setattr(cls, "forward", _decorated(hard_coded, True))
    original = model.config._attn_implementation
    ok, why = fastft.swap.check_dispatch(model)
    assert not ok and why.startswith(cls.__name__)
    with pytest.raises(FastftError, match=rf"hard-codes the attention of {cls.__name__}") as err:
        fastft.swap_attention(model)
    assert "\n" not in str(err.value)
    assert not fastft.swap.is_swapped(model) and model.config._attn_implementation == original


@pytest.mark.attention_interface
def test_real_minilm_padded_batch_matches(monkeypatch):
    """Real weights (minilm-l6, 12 heads, head_dim 32): a right-padded batch through the swapped
    model in eval mode takes the padding-free route and matches the original at every real
    token (and at [CLS]) within 1e-5."""
    import copy

    import transformers as tf

    path = fastft.resolve_model("minilm-l6")
    tok = tf.AutoTokenizer.from_pretrained(path)
    model = tf.AutoModel.from_pretrained(path).eval()
    texts = ["a fine film", "the plot drags in the middle but the ending is worth the wait", "bad. " * 20]
    batch = tok(texts, padding="max_length", max_length=96, truncation=True, return_tensors="pt")
    ref = _out(model, batch)
    swapped = fastft.swap_attention(copy.deepcopy(model))
    spy = Spy(monkeypatch)
    got = _out(swapped, batch)
    assert spy.varlen == 6 and spy.calls == 6
    real = batch["attention_mask"].bool()
    assert int(real.sum()) < real.numel()  # the batch is padded
    torch.testing.assert_close(got[real], ref[real], atol=ATOL, rtol=0)
    torch.testing.assert_close(got[:, 0], ref[:, 0], atol=ATOL, rtol=0)


@pytest.mark.attention_interface
def test_a_swapped_model_loaded_in_a_fresh_process_runs_after_swap_attention(tmp_path):
    """A pickled swapped model names "fastft" as its attention; in a fresh process swap_attention
    saw it as swapped and returned before registering the implementation with transformers."""
    import subprocess
    import sys

    model = fastft.swap_attention(_tiny("bert"))
    torch.save(model, tmp_path / "m.pt")
    code = f"""
import torch, fastft
m = torch.load({str(tmp_path / "m.pt")!r}, weights_only=False)
fastft.swap_attention(m)
with torch.no_grad():
    print(tuple(m(input_ids=torch.tensor([[5, 6, 7]])).logits.shape))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "(1, 2)", out.stderr[-2000:]


def test_cross_attention_encoder_config_is_refused():
    """A model whose config adds cross-attention is refused even when not marked a decoder."""
    model = _tiny("bert")
    model.config.add_cross_attention = True
    with pytest.raises(FastftError, match="encoders only"):
        fastft.swap_attention(model)
    assert not fastft.swap.is_swapped(model)
