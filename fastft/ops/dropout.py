"""Dropout whose random mask is cheap on CPU: the same operation as ``torch.nn.functional.dropout``
(keep each element with probability 1 - p, scale the kept ones so the expectation is unchanged),
with the mask drawn as 16-bit words, four from each 64-bit draw of torch's generator.

Why: on CPU, torch draws one Bernoulli sample per element (``bernoulli_``). BERT runs 20
dropouts a training step (embeddings, 3 per layer, the classifier), the attention-probability ones
``(batch, heads, seq, seq)``; on 2 cores they took 17% of a step of the default teacher and 13% of
its 3-layer student's (``bench/bench_dropout.py``: bench/results/dropout_steps_vnni.json, steps
with every dropout probability at 0 as the floor). Four 16-bit words per 64-bit draw cut the random
numbers drawn by four, and the rest is one fused pass.

The probability is quantised to 1/65536: an element is dropped when its word falls among the
``round(p * 65536)`` lowest values, and the kept ones are scaled by ``65536 / (65536 - that
count)``, so the expectation is exactly unchanged (torch scales by ``1 / (1 - p)``; the two
differ by less than 1e-5 relative). Reproducible under ``torch.manual_seed`` like torch's own.
On other devices (CUDA has its own fused dropout), for p = 0, and for p so near 1 that every
word would be dropped it is ``torch.nn.functional.dropout`` itself.
"""

from __future__ import annotations

import torch
from torch import Tensor

_LEVELS = 1 << 16


def _dropped_words(p: float) -> int:
    return round(p * _LEVELS)


def keep_mask(shape, p: float, device=None, generator: torch.Generator | None = None) -> Tensor:
    """Bool tensor of ``shape``: True with probability 1 - round(p * 65536) / 65536."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1] (got {p})")
    shape = tuple(shape)
    if _dropped_words(p) >= _LEVELS:  # every word dropped (-32768 + 65536 wraps round in int16: it kept all)
        return torch.zeros(shape, dtype=torch.bool, device=device)
    n = 1
    for s in shape:
        n *= int(s)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(1 << 63), None, generator=generator)  # all 64 bits uniform
    halves = words.view(torch.int16)[:n]  # int16 words, uniform over [-32768, 32767]
    return (halves >= -32768 + _dropped_words(p)).view(shape)


class _MaskedScale(torch.autograd.Function):
    """x * keep * scale, and the same of the gradient: one fused pass each way (ATen's
    ``native_dropout_backward`` computes exactly ``grad * mask * scale``), the bool mask saved."""

    @staticmethod
    def forward(ctx, x: Tensor, keep: Tensor, scale: float) -> Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.ops.aten.native_dropout_backward(x, keep, scale)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (keep,) = ctx.saved_tensors
        return torch.ops.aten.native_dropout_backward(grad, keep, ctx.scale), None, None


def fast_dropout(x: Tensor, p: float = 0.5, training: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """``torch.nn.functional.dropout(x, p, training)`` with the cheap CPU mask (module docstring)."""
    if not training or p == 0.0:
        return x
    dropped = _dropped_words(p)
    if x.device.type != "cpu" or not x.is_floating_point() or not 0 <= p < 1 or dropped >= _LEVELS:
        return torch.nn.functional.dropout(x, p, training)  # torch's (and its refusal of a bad p)
    if dropped == 0:
        return x
    keep = keep_mask(x.shape, p, x.device, generator)
    return _MaskedScale.apply(x, keep, _LEVELS / (_LEVELS - dropped))


class FastDropout(torch.nn.Dropout):
    """``torch.nn.Dropout`` (same ``p``, same module type for isinstance checks) drawing its mask
    with :func:`fast_dropout`. ``inplace`` is accepted and ignored: the result is a new tensor."""

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 - the name torch.nn.Dropout uses
        return fast_dropout(input, self.p, self.training)
