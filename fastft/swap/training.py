"""Cheaper dropout while a model trains on CPU: :func:`fast_dropout_training`.

    with fast_dropout_training(model):
        ...  # train; every nn.Dropout draws its mask with fastft.ops.dropout.fast_dropout

Inside the block, every ``torch.nn.Dropout`` of the model is a :class:`~fastft.ops.dropout.FastDropout`
with the same probability, and the self-attention of a supported encoder (BERT, RoBERTa, XLM-R,
CamemBERT, ELECTRA, DistilBERT on transformers 5) dispatches through the ``"fastft_train"`` attention implementation:
with attention dropout in training mode on CPU it computes softmax(q k^T * scale + mask) v itself,
dropping attention probabilities with the same cheap mask; otherwise (eval mode, dropout 0, other
devices) it is transformers' own SDPA function. The mask function is SDPA's. On leaving, the
original modules and attention implementation are back, so nothing of it is saved with the model.

The training is the same computation with another random stream: the dropout probabilities,
scaling and attention are unchanged (probabilities quantised to 1/65536, see
:mod:`fastft.ops.dropout`). A model that already uses the fused "fastft" attention
(:func:`fastft.swap.swap_attention`), one set to an implementation other than SDPA (eager, for its
attention weights, or flash), a decoder, or an unsupported family keeps its attention
implementation and only gets the cheaper dropout modules.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from fastft.ops.dropout import FastDropout, fast_dropout

TRAIN_IMPL = "fastft_train"


def train_attention_forward(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[Tensor, None]:
    """transformers attention function: SDPA's, except with attention dropout on CPU in training.

    query: (batch, heads, seq_q, head_dim); key, value: (batch, heads, seq_k, head_dim);
    attention_mask: SDPA's (bool, True = attend, or additive float), broadcastable to
    (batch, heads, seq_q, seq_k), or None. Returns ((batch, seq_q, heads, head_dim), None).
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not (module.training and dropout > 0.0 and query.device.type == "cpu"):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask.to(scores.dtype)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = fast_dropout(probs, dropout, True)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def register() -> None:
    """Register ``"fastft_train"`` with transformers' attention and mask interfaces (idempotent);
    its mask function is SDPA's."""
    from transformers.masking_utils import sdpa_mask

    from fastft.swap._interface import register_impl

    register_impl(TRAIN_IMPL, train_attention_forward, sdpa_mask)


def _attention_switchable(model) -> bool:
    from fastft import swap
    from fastft.core.errors import FastftError
    from fastft.swap import _interface

    cfg = getattr(model, "config", None)
    if cfg is None or swap.is_swapped(model) or not _interface.has_interface():
        return False
    if getattr(cfg, "is_decoder", False) or getattr(cfg, "add_cross_attention", False):
        return False
    if getattr(cfg, "_attn_implementation", None) != "sdpa":  # eager (attention weights), flash...: theirs
        return False
    try:
        ok, _ = swap.check_dispatch(model)
    except FastftError:  # not a family the swap knows
        return False
    return ok


@contextmanager
def fast_dropout_training(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Within the block, ``model`` draws its dropout masks with :mod:`fastft.ops.dropout` (module
    docstring); the modules and attention implementation it had are restored on leaving."""
    from fastft.swap import _set_impl

    replaced = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Dropout:
                fast = FastDropout(child.p, child.inplace)
                fast.train(child.training)
                setattr(parent, name, fast)
                replaced.append((parent, name, child, fast))
    previous = None
    try:
        if _attention_switchable(model):
            register()
            previous = model.config._attn_implementation
            _set_impl(model, TRAIN_IMPL)
        yield model
    finally:
        if previous is not None:
            _set_impl(model, previous)
        for parent, name, original, fast in replaced:
            original.train(fast.training)
            setattr(parent, name, original)
