"""The "fastft" attention implementation for transformers' AttentionInterface (5.x).

Two functions are registered under the name ``"fastft"``:

* an attention function, ``fastft_attention_forward(module, query, key, value,
  attention_mask, scaling, dropout, **kwargs)``: query/key/value ``(batch, heads, seq,
  head_dim)``; returns ``(attn_output (batch, seq_q, heads, head_dim), None)`` like every
  transformers attention function. It calls :func:`fastft.ops.fused_attention`.
* a mask function for ``AttentionMaskInterface``: for a plain bidirectional (encoder) mask
  it returns the 2-D key padding mask itself, bool ``(batch, seq_k)``, True = attend, which
  is what the op takes (no ``(batch, 1, seq_q, seq_k)`` mask is ever materialised). Any
  other mask pattern gets transformers' SDPA boolean 4-D mask.

Masks the attention function accepts: ``None``; bool or float ``(batch, seq_k)``; a 4-D
mask whose query dimension is 1, ``(batch, 1, 1, seq_k)`` (bool, or additive float such as
``eager_mask``'s 0 / finfo.min). A mask that varies per query row (causal, a user-given
4-D mask) is not a key padding mask: that call falls back to torch SDPA.

Eval mode with right padding: the padded query rows are skipped (``fastft.swap._varlen``,
through ``fastft.ops.fused_attention_varlen``); their attention output is zeros, every
position with mask 1 is unchanged.

Training: the op is an inference kernel without attention dropout. A module in training
mode with attention dropout > 0 falls back to torch SDPA with that dropout, so a swapped
model still trains exactly like the original; with dropout 0 the op is used (its backward
is the reference's).
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

from fastft.models.hf import transformers_names
from fastft.swap._varlen import padded_rows_skipped

IMPL_NAME = "fastft"

_registered: set[str] = set()  # implementation names registered in this process


def _as_4d(mask: Tensor | None, query: Tensor) -> Tensor | None:
    if mask is not None:
        if mask.dim() == 2:
            mask = mask[:, None, None, :]
        if mask.dtype != torch.bool:
            mask = mask.to(query.dtype)
    return mask


def _sdpa_fallback(
    query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scaling: float, dropout: float
) -> Tensor:
    return torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=_as_4d(mask, query), dropout_p=dropout, scale=scaling
    )


def _with_weights(
    query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scaling: float, dropout: float
) -> tuple[Tensor, Tensor]:
    """``output_attentions=True``: the fused kernel never forms the weights, so this call computes
    them as the eager implementation does (a row whose every key is masked weighs nothing, as the
    op gives). Returns (out (batch, heads, seq_q, head_dim), weights (batch, heads, seq_q, seq_k))."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    mask = _as_4d(mask, query)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    none = (scores == float("-inf")).all(dim=-1, keepdim=True)  # NaN elsewhere stays NaN
    weights = torch.softmax(scores, dim=-1).masked_fill(none, 0.0)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=dropout > 0.0)
    return torch.matmul(weights, value), weights


def key_padding_mask(mask: Tensor | None, seq_k: int) -> tuple[bool, Tensor | None]:
    """``(ok, kpm)``: the op's key_padding_mask for a transformers attention mask, and whether
    the mask is a pure key padding mask at all (shape-based, never data-dependent)."""
    if mask is None:
        return True, None
    if mask.dim() == 2:
        return True, mask
    if mask.dim() == 4 and mask.shape[1] == 1 and mask.shape[2] == 1:
        return True, mask[:, 0, 0, :]
    return False, None


def fastft_attention_forward(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[Tensor, None]:
    """transformers attention function: softmax(q k^T * scaling + mask) v through the fused op.

    query: (batch, heads, seq_q, head_dim); key, value: (batch, heads, seq_k, head_dim).
    Returns ((batch, seq_q, heads, head_dim), None): no attention weights, unless the model is
    called with ``output_attentions=True``: then that call computes them the eager way and
    returns them too (the fused kernel never forms them).
    """
    from fastft import ops  # looked up per call, so a test can spy on ops.fused_attention

    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if kwargs.get("output_attentions"):
        out, weights = _with_weights(query, key, value, attention_mask, scaling, dropout if module.training else 0.0)
        return out.transpose(1, 2), weights
    ok, kpm = key_padding_mask(attention_mask, key.shape[2])
    if (module.training and dropout > 0.0) or not ok:
        out = _sdpa_fallback(query, key, value, attention_mask, scaling, dropout if module.training else 0.0)
    else:
        packed = padded_rows_skipped(module, query, key, value, kpm, scaling)  # eval, right padding
        if packed is not None:
            return packed, None
        out = ops.fused_attention(query, key, value, key_padding_mask=kpm, causal=False, scale=float(scaling))
    return out.transpose(1, 2), None


def fastft_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function=None,
    attention_mask: Tensor | None = None,
    **kwargs,
) -> Tensor | None:
    """transformers mask function: the 2-D bool key padding mask for a bidirectional mask."""
    from transformers import masking_utils as mu

    if mask_function is None:
        mask_function = mu.causal_mask_function
    if mask_function is mu.bidirectional_mask_function and q_offset == 0 and kv_offset == 0:
        if attention_mask is None:
            return None
        return attention_mask[:, -kv_length:].to(torch.bool)
    return mu.sdpa_mask(
        batch_size=batch_size,
        q_length=q_length,
        kv_length=kv_length,
        q_offset=q_offset,
        kv_offset=kv_offset,
        mask_function=mask_function,
        attention_mask=attention_mask,
        **{k: v for k, v in kwargs.items() if k not in ("dtype", "config")},
    )


def has_interface() -> bool:
    """True when the installed transformers has the attention + mask interfaces (5.x)."""
    try:
        transformers_names("AttentionInterface")
        from transformers.masking_utils import AttentionMaskInterface  # noqa: F401
    except (ImportError, AttributeError):
        return False
    return True


def register_impl(name: str, attention, mask) -> None:
    """Register an attention function and its mask function under ``name`` with transformers'
    AttentionInterface and AttentionMaskInterface (idempotent per name)."""
    if name in _registered:
        return
    from transformers.masking_utils import AttentionMaskInterface

    (AttentionInterface,) = transformers_names("AttentionInterface")
    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, mask)
    _registered.add(name)


def register() -> None:
    """Register the "fastft" attention and mask functions (idempotent)."""
    register_impl(IMPL_NAME, fastft_attention_forward, fastft_mask)


PROBE_NAME = "fastft_probe"


class _Probe:
    """An attention function that records that it was called and returns zeros of the right shape."""

    def __init__(self):
        self.calls = 0

    def __call__(self, module, query: Tensor, key: Tensor, value: Tensor, attention_mask=None, *args, **kwargs):
        self.calls += 1
        b, h, s, _ = query.shape
        return query.new_zeros(b, s, h, value.shape[-1]), None


_probe = _Probe()
_probe_lock = threading.Lock()


def uses_interface(module: torch.nn.Module, run_once) -> tuple[bool, str]:
    """Does ``module`` dispatch its attention through transformers' AttentionInterface?

    Found by behaviour, never by reading code: a spy attention function is registered
    under ``"fastft_probe"``, the module's config is pointed at it for one call of
    ``run_once(module)`` (a forward of the real module on a tiny input, through whatever
    decorators wrap its ``forward``), and the spy must have been called. Returns
    ``(True, "")`` or ``(False, why)``; the module's config is restored either way. Like the
    swap itself, it changes the config for a moment: not while the model runs in another thread.
    """
    import inspect

    cfg = getattr(module, "config", None)
    fwd = inspect.unwrap(type(module).forward)
    where = f"its forward, defined in {getattr(fwd, '__module__', '?')},"  # unwrapped: where the code lives
    if cfg is None:
        return False, "it has no config to choose its attention implementation"
    (AttentionInterface,) = transformers_names("AttentionInterface")
    AttentionInterface.register(PROBE_NAME, _probe)
    with _probe_lock:
        previous = cfg._attn_implementation
        before = _probe.calls
        try:
            cfg._attn_implementation = PROBE_NAME
            with torch.no_grad():
                run_once(module)
        except Exception as exc:  # noqa: BLE001 - a module that cannot run this way does not dispatch this way
            if _probe.calls == before:
                msg = (str(exc).splitlines() or [""])[0][:120]
                return False, (
                    f"{where} failed on a probe input before any attention call ({type(exc).__name__}: {msg})"
                )
        finally:
            cfg._attn_implementation = previous
        called = _probe.calls != before
    if not called:
        return False, f"{where} never called the attention interface on a probe run"
    return True, ""
