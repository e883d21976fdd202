"""Padding-free attention for swapped models in eval mode (the torch serving path).

A batch of right-padded sequences ``(batch, seq)`` with a key padding mask wastes the padded
query rows: their outputs are never read (an encoder's padded positions only act as keys,
and those are masked). :func:`padded_rows_skipped` runs such a batch through
:func:`fastft.ops.fused_attention_varlen` in place: the ``(batch, heads, seq, head_dim)``
projections are viewed as ``batch * seq`` packed tokens, ``cu_seqlens = [0, seq, 2*seq, ...]``
and ``seqused`` = the lengths, so padded keys are never read and padded query rows never
computed (their attention output is zeros; every position with mask 1 is unchanged).

Used only where it is exact and cheap to decide: eval mode, CPU tensors, self-attention
(seq_q == seq_k), a bool ``(batch, seq)`` mask that is a prefix per row (right padding, so
position 0, which poolers read, is a real token), at least one padded position, and not
while tracing / compiling / exporting (the mask test reads values). Anything else returns
None and the caller runs the padded op.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _tracing() -> bool:
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return True
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting and is_exporting())


def right_padding_lengths(kpm: Tensor) -> Tensor | None:
    """int32 lengths of a bool (batch, seq) mask that is a prefix in every row and pads at
    least one position; else None."""
    lengths = kpm.sum(dim=1, dtype=torch.int32)
    seq = kpm.shape[1]
    if int(lengths.min()) == seq:  # nothing padded: the padded op does the same work
        return None
    prefix = torch.arange(seq, device=kpm.device)[None, :] < lengths[:, None]
    return lengths if torch.equal(prefix, kpm) else None


def padded_rows_skipped(
    module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor, kpm: Tensor | None, scaling: float
) -> Tensor | None:
    """Attention output ``(batch, seq, heads, head_dim)`` with padded query rows skipped, or
    None where the varlen route does not apply (see the module docstring)."""
    if module.training or kpm is None or kpm.dtype != torch.bool or kpm.dim() != 2:
        return None
    if _tracing() or query.device.type != "cpu" or query.shape[2] != key.shape[2]:
        return None
    batch, heads, seq, head_dim = query.shape
    if kpm.shape != (batch, seq):
        return None
    lengths = right_padding_lengths(kpm)
    if lengths is None:
        return None
    from fastft import ops

    # (batch, heads, seq, d) -> (batch*seq, heads, d): a view for the usual (batch, seq, hidden)
    # projections; reshape copies otherwise
    q, k, v = (t.transpose(1, 2).reshape(batch * seq, heads, head_dim) for t in (query, key, value))
    slots = torch.arange(0, (batch + 1) * seq, seq, dtype=torch.int32)
    longest = int(lengths.max())
    out = ops.fused_attention_varlen(
        q,
        k,
        v,
        slots,
        slots,
        longest,
        longest,
        causal=False,
        scale=float(scaling),
        seqused_q=lengths,
        seqused_k=lengths,
    )
    return out.view(batch, seq, heads, head_dim)
