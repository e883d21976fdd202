"""The ONNX side of the fused attention op: torch custom ops whose symbolic (TorchScript
exporter, ``torch.onnx.export(..., dynamo=False)``) is one ONNX Runtime contrib node.

* ``fastft::onnx_mha`` (projected (batch, seq, hidden) q/k/v) -> com.microsoft
  ``MultiHeadAttention``;
* ``fastft::onnx_qkv_attention`` (hidden states + merged QKV weight) -> com.microsoft
  ``Attention`` (the packed form, QKV projection included);
* ``fastft::fused_attention`` itself (the swap's op, (batch, heads, seq, head_dim)) -> one
  ``MultiHeadAttention`` between (B,H,S,D) <-> (B,S,H*D) reshapes.

The torch implementation of the export ops is :func:`fastft.ops.fused_attention`, so a traced
model computes what the swapped model computes. :func:`register_symbolics` registers the three
symbolics (:func:`fastft.swap_attention` calls it; :mod:`fastft.export.attention` routes a
model's attention modules through the export ops). This module knows nothing of the pipeline.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastft.core.errors import FastftError
from fastft.ops.attention import fused_attention

__all__ = ["MS_DOMAIN", "onnx_mha", "onnx_qkv_attention", "register_symbolics"]

MS_DOMAIN = "com.microsoft"


# ---------------------------------------------------------------------------------------
# the export-time ops: torch semantics = fastft.ops.fused_attention, ONNX = contrib node
# ---------------------------------------------------------------------------------------
def _heads(t: Tensor, num_heads: int) -> Tensor:
    b, s, e = t.shape
    return t.view(b, s, num_heads, e // num_heads).transpose(1, 2)


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, num_heads: int, scale: float) -> Tensor:
    out = fused_attention(
        _heads(q, num_heads), _heads(k, num_heads), _heads(v, num_heads), key_padding_mask=mask, scale=scale
    )
    b, _, s, _ = out.shape
    return out.transpose(1, 2).reshape(b, s, -1).contiguous()


@torch.library.custom_op("fastft::onnx_mha", mutates_args=())
def onnx_mha(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, num_heads: int, scale: float) -> Tensor:
    """Attention on projected tensors. q: (batch, seq_q, hidden); k, v: (batch, seq_k, hidden);
    key_padding_mask: bool (batch, seq_k), True = attend, or None. Returns (batch, seq_q, hidden)."""
    return _attend(q, k, v, key_padding_mask, num_heads, scale)


@onnx_mha.register_fake
def _onnx_mha_fake(q, k, v, key_padding_mask, num_heads, scale):
    return q.new_empty(q.shape[0], q.shape[1], v.shape[2])


@torch.library.custom_op("fastft::onnx_qkv_attention", mutates_args=())
def onnx_qkv_attention(
    x: Tensor, weight: Tensor, bias: Tensor, key_padding_mask: Tensor | None, num_heads: int, scale: float
) -> Tensor:
    """Packed attention. x: (batch, seq, in_hidden); weight: (in_hidden, 3*hidden) = [Wq^T | Wk^T
    | Wv^T]; bias: (3*hidden,); key_padding_mask: bool (batch, seq) or None. Returns
    (batch, seq, hidden)."""
    q, k, v = torch.matmul(x, weight).add(bias).chunk(3, dim=-1)
    return _attend(q.contiguous(), k.contiguous(), v.contiguous(), key_padding_mask, num_heads, scale)


@onnx_qkv_attention.register_fake
def _onnx_qkv_attention_fake(x, weight, bias, key_padding_mask, num_heads, scale):
    return x.new_empty(x.shape[0], x.shape[1], weight.shape[1] // 3)


def _mask_int32(g, mask):
    from torch.onnx import symbolic_helper as sh

    if mask is None or sh._is_none(mask):
        return sh._optional_input_placeholder_tensor(g)
    return g.op("Cast", mask, to_i=6)  # TensorProto.INT32


def _mha_symbolic(g, q, k, v, mask, num_heads, scale):
    from torch.onnx import symbolic_helper as sh

    num_heads = sh._get_const(num_heads, "i", "num_heads")
    scale = sh._get_const(scale, "f", "scale")
    out = g.op(
        f"{MS_DOMAIN}::MultiHeadAttention",
        q,
        k,
        v,
        sh._optional_input_placeholder_tensor(g),
        _mask_int32(g, mask),
        num_heads_i=num_heads,
        scale_f=scale,
    )
    return _typed_as_traced(g, out)


def _typed_as_traced(g, out):
    """``out`` typed as the traced op's output: its dtype, and its sizes with batch and sequence
    left dynamic (only the hidden size fixed). ONNX has no shape inference for the com.microsoft
    ops: without a type torch warned once per node."""
    try:
        traced = g.original_node.outputsAt(0).type()
        return out.setType(traced.with_sizes([None, None, traced.sizes()[-1]]))
    except (AttributeError, RuntimeError, TypeError, IndexError):
        return out


def _qkv_symbolic(g, x, weight, bias, mask, num_heads, scale):
    from torch.onnx import symbolic_helper as sh

    num_heads = sh._get_const(num_heads, "i", "num_heads")
    scale = sh._get_const(scale, "f", "scale")
    out = g.op(f"{MS_DOMAIN}::Attention", x, weight, bias, _mask_int32(g, mask), num_heads_i=num_heads, scale_f=scale)
    return _typed_as_traced(g, out)


def _traced_sizes(g, value, index: int) -> list:
    """Sizes of input ``index`` of the op being exported: the traced (example) sizes, which
    know the head count and head_dim even where ONNX shape inference lost them."""
    from torch.onnx import symbolic_helper as sh

    try:
        sizes = g.original_node.inputsAt(index).type().sizes()
    except (AttributeError, RuntimeError):
        sizes = None
    return list(sizes) if sizes else (sh._get_tensor_sizes(value) or [])


def _fused_attention_symbolic(g, q, k, v, mask, causal, scale):
    """``fastft::fused_attention`` (the swap's op, (batch, heads, seq, head_dim) tensors) as one
    com.microsoft MultiHeadAttention between (B,H,S,D) <-> (B,S,H*D) reshapes (the
    transposes cancel against the model's own in ORT's optimiser)."""
    from torch.onnx import symbolic_helper as sh

    if sh._get_const(causal, "b", "causal"):
        raise FastftError("exporting fastft::fused_attention with causal=True is not supported")
    scale = sh._get_const(scale, "f", "scale")
    sizes = _traced_sizes(g, q, 0)
    if len(sizes) != 4 or not isinstance(sizes[1], int) or not isinstance(sizes[3], int):
        raise FastftError(
            f"exporting fastft::fused_attention needs the head count and head_dim of q; got sizes {sizes}"
        )
    heads, head_dim = sizes[1], sizes[3]
    perm = [0, 2, 1, 3]
    flat = g.op("Constant", value_t=torch.tensor([0, 0, -1], dtype=torch.int64))

    def packed(t):
        return g.op("Reshape", g.op("Transpose", t, perm_i=perm), flat)

    inputs = [packed(q), packed(k), packed(v), sh._optional_input_placeholder_tensor(g)]
    if mask is not None and not sh._is_none(mask):
        try:
            dtype = g.original_node.inputsAt(3).type().scalarType()
        except (AttributeError, RuntimeError):
            dtype = mask.type().scalarType()
        if dtype == "Bool":
            inputs.append(g.op("Cast", mask, to_i=6))
        else:  # additive float (batch, seq_k) -> attention_bias (batch, 1, seq_q, seq_k): ORT
            # broadcasts its first two axes only ((batch, 1, 1, seq_k) fails at run time)
            axes = g.op("Constant", value_t=torch.tensor([1, 2], dtype=torch.int64))
            seq_q = g.op("Gather", g.op("Shape", q), g.op("Constant", value_t=torch.tensor([2], dtype=torch.int64)))
            ones = g.op("Constant", value_t=torch.tensor([1, 1], dtype=torch.int64))
            one = g.op("Constant", value_t=torch.tensor([1], dtype=torch.int64))
            rows = g.op("Concat", ones, seq_q, one, axis_i=0)
            inputs += [sh._optional_input_placeholder_tensor(g), g.op("Expand", g.op("Unsqueeze", mask, axes), rows)]
    out = g.op(f"{MS_DOMAIN}::MultiHeadAttention", *inputs, num_heads_i=heads, scale_f=scale)
    try:  # (batch, seq_q, heads * head_dim): no ONNX shape inference knows the com.microsoft op
        out.setType(q.type().with_sizes([None, None, heads * head_dim]))
    except (AttributeError, RuntimeError, TypeError):
        pass
    # -1, not head_dim: torch's shape inference asserts on a Reshape of 0s without a -1 (static shapes)
    split = g.op("Constant", value_t=torch.tensor([0, 0, heads, -1], dtype=torch.int64))
    out = g.op("Transpose", g.op("Reshape", out, split), perm_i=perm)
    return out.setType(q.type())


_registered_opsets: set = set()


def register_symbolics(opset: int = 17) -> None:
    """Register the contrib-node symbolics of the export ops and of ``fastft::fused_attention``
    itself with the TorchScript exporter (so any torch.onnx.export(dynamo=False) of a
    swapped model writes one MultiHeadAttention per attention)."""
    if opset in _registered_opsets:
        return
    torch.onnx.register_custom_op_symbolic("fastft::onnx_mha", _mha_symbolic, opset)
    torch.onnx.register_custom_op_symbolic("fastft::onnx_qkv_attention", _qkv_symbolic, opset)
    torch.onnx.register_custom_op_symbolic("fastft::fused_attention", _fused_attention_symbolic, opset)
    _registered_opsets.add(opset)
