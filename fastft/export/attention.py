"""Fused attention in the exported ONNX graph, written by the exporter itself.

    from fastft.export.attention import export_fused
    export_fused("runs/teacher", "runs/teacher/model.onnx")          # -> Path
    export_fused(torch_model, "model.onnx", form="mha")

Each self-attention of a swapped model (:func:`fastft.swap_attention`) becomes ONE
ONNX Runtime contrib node, with the key padding mask as an int32 ``(batch, seq)`` input:

* ``form="attention"`` (default): com.microsoft ``Attention``, the packed form that
  includes the Q/K/V projection (one merged ``(hidden, 3*hidden)`` weight). ORT's dynamic
  INT8 quantisation turns it into ``QAttention``.
* ``form="mha"``: the Q/K/V projections stay MatMul+Add and the attention is a
  com.microsoft ``MultiHeadAttention`` on ``(batch, seq, hidden)`` tensors.

How: for the duration of the export, the forward of each self-attention module (found by
the swap's architecture module, ``fastft.swap.bert`` / ``fastft.swap.distilbert``) calls one
of two torch custom ops defined here, ``fastft::onnx_qkv_attention`` or ``fastft::onnx_mha``;
their torch implementation is :func:`fastft.ops.fused_attention` (so the traced model
computes what the swapped model computes) and their ONNX symbolic (TorchScript exporter,
``torch.onnx.export(..., dynamo=False)``) emits the contrib node. No pattern matching: the
graph has no Softmax left. The module forwards are restored afterwards, and a model that
was not swapped before is unswapped again.

Measured choice of the default (bench/bench_attention_e2e.py, bench/results/attention_e2e.json):
see ``DEFAULT_FORM``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from fastft.errors import FastftError

__all__ = ["export_fused", "fused_attention_forms", "DEFAULT_FORM", "ATTENTION_OPS", "count_attention_nodes",
           "patched_attention"]

FORMS = ("attention", "mha")
DEFAULT_FORM = "attention"
ATTENTION_OPS = ("Attention", "MultiHeadAttention")  # com.microsoft op types written here
MS_DOMAIN = "com.microsoft"


def fused_attention_forms() -> tuple[str, ...]:
    return FORMS


# ---------------------------------------------------------------------------------------
# the export-time ops: torch semantics = fastft.ops.fused_attention, ONNX = contrib node
# ---------------------------------------------------------------------------------------
def _heads(t: Tensor, num_heads: int) -> Tensor:
    b, s, e = t.shape
    return t.view(b, s, num_heads, e // num_heads).transpose(1, 2)


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], num_heads: int, scale: float) -> Tensor:
    from fastft.ops import fused_attention

    out = fused_attention(_heads(q, num_heads), _heads(k, num_heads), _heads(v, num_heads),
                          key_padding_mask=mask, scale=scale)
    b, _, s, _ = out.shape
    return out.transpose(1, 2).reshape(b, s, -1).contiguous()


@torch.library.custom_op("fastft::onnx_mha", mutates_args=())
def onnx_mha(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor], num_heads: int,
             scale: float) -> Tensor:
    """Attention on projected tensors. q: (batch, seq_q, hidden); k, v: (batch, seq_k, hidden);
    key_padding_mask: bool (batch, seq_k), True = attend, or None. Returns (batch, seq_q, hidden)."""
    return _attend(q, k, v, key_padding_mask, num_heads, scale)


@onnx_mha.register_fake
def _onnx_mha_fake(q, k, v, key_padding_mask, num_heads, scale):
    return q.new_empty(q.shape[0], q.shape[1], v.shape[2])


@torch.library.custom_op("fastft::onnx_qkv_attention", mutates_args=())
def onnx_qkv_attention(x: Tensor, weight: Tensor, bias: Tensor, key_padding_mask: Optional[Tensor],
                       num_heads: int, scale: float) -> Tensor:
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
    return g.op(f"{MS_DOMAIN}::MultiHeadAttention", q, k, v, sh._optional_input_placeholder_tensor(g),
                _mask_int32(g, mask), num_heads_i=num_heads, scale_f=scale)


def _qkv_symbolic(g, x, weight, bias, mask, num_heads, scale):
    from torch.onnx import symbolic_helper as sh

    num_heads = sh._get_const(num_heads, "i", "num_heads")
    scale = sh._get_const(scale, "f", "scale")
    return g.op(f"{MS_DOMAIN}::Attention", x, weight, bias, _mask_int32(g, mask),
                num_heads_i=num_heads, scale_f=scale)


def register_symbolics(opset: int = 17) -> None:
    """Register the contrib-node symbolics of both export ops with the TorchScript exporter."""
    torch.onnx.register_custom_op_symbolic("fastft::onnx_mha", _mha_symbolic, opset)
    torch.onnx.register_custom_op_symbolic("fastft::onnx_qkv_attention", _qkv_symbolic, opset)


# ---------------------------------------------------------------------------------------
# routing the swapped model's attention modules through the export ops
# ---------------------------------------------------------------------------------------
def _export_forward(module: torch.nn.Module, proj: dict, form: str):
    from fastft.swap._interface import key_padding_mask

    q_lin, k_lin, v_lin, out_lin = proj["q"], proj["k"], proj["v"], proj["out"]
    num_heads, scale = int(proj["num_heads"]), float(proj["scale"])

    def forward(hidden_states: Tensor, attention_mask: Optional[Tensor] = None, *args, **kwargs):
        ok, mask = key_padding_mask(attention_mask, hidden_states.shape[1])
        if not ok or (mask is not None and mask.dtype != torch.bool):
            raise FastftError("fused-attention export needs a key padding mask (bool (batch, seq)); got "
                              f"{None if attention_mask is None else (attention_mask.dtype, tuple(attention_mask.shape))}")
        if form == "mha":
            out = torch.ops.fastft.onnx_mha(q_lin(hidden_states), k_lin(hidden_states), v_lin(hidden_states), mask,
                                            num_heads, scale)
        else:
            lins = (q_lin, k_lin, v_lin)
            weight = torch.cat([lin.weight for lin in lins], dim=0).t()
            bias = torch.cat([lin.bias if lin.bias is not None else lin.weight.new_zeros(lin.out_features)
                              for lin in lins])
            out = torch.ops.fastft.onnx_qkv_attention(hidden_states, weight, bias, mask, num_heads, scale)
        if out_lin is not None:
            out = out_lin(out)
        return out, None

    return forward


@contextlib.contextmanager
def patched_attention(model: torch.nn.Module, form: str = DEFAULT_FORM):
    """Within the block, ``model`` (swapped to fastft attention here if it was not) runs its
    self-attention through the export op of ``form``; yields the patched modules. Restores
    the module forwards and the swap state on exit."""
    from fastft import swap

    if form not in FORMS:
        raise FastftError(f"fused attention form must be one of {', '.join(FORMS)}, got {form!r}")
    fam = swap.family(model)
    was_swapped = swap.is_swapped(model)
    swap.swap_attention(model)  # checks the architecture; the masks become bool (batch, seq)
    modules = fam.self_attention_modules(model)
    try:
        for m in modules:
            proj = fam.projections(m)
            if form == "attention" and proj["q"].in_features != proj["v"].out_features:
                pass  # Attention takes any input width; kept for clarity
            m.forward = _export_forward(m, proj, form)
        yield modules
    finally:
        for m in modules:
            m.__dict__.pop("forward", None)
        if not was_swapped:
            swap.unswap_attention(model)


# ---------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------
class _Logits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs):
        out = self.model(**dict(zip(self.names, inputs)))
        return out.logits if hasattr(out, "logits") else out[0]


def input_names(model: torch.nn.Module) -> tuple[str, ...]:
    """input_ids, attention_mask and token_type_ids where the model takes token types."""
    import inspect

    names = ["input_ids", "attention_mask"]
    params = inspect.signature(model.forward).parameters
    if "token_type_ids" in params and getattr(model.config, "type_vocab_size", 0):
        names.append("token_type_ids")
    return tuple(names)


def _load(model) -> torch.nn.Module:
    if isinstance(model, torch.nn.Module):
        return model
    from fastft.models import load_classifier

    return load_classifier(model)


def export_fused(model, path: str | os.PathLike, opset: int = 17, *, form: str = DEFAULT_FORM,
                 output_name: str = "logits") -> Path:
    """Export ``model`` (a model directory / alias, or a torch model of a supported family) to
    ONNX at ``path``, each self-attention as one com.microsoft node (``form``: "attention" =
    packed Attention with the QKV projection, "mha" = MultiHeadAttention). Inputs: input_ids,
    attention_mask (int64 (batch, seq), 1 = token), token_type_ids (when the model has token
    types); output ``logits`` (batch, num_labels) (or the model's first output). Batch and
    sequence axes are dynamic. Returns ``path``. The torch model is left as it was.
    """
    import onnx

    net = _load(model)
    was_training = net.training
    net.eval()
    names = input_names(net)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    register_symbolics(opset)
    seq = min(16, int(getattr(net.config, "max_position_embeddings", 16)))
    ids = torch.full((2, seq), 5, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, seq // 2:] = 0
    example = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    dynamic = {n: {0: "batch_size", 1: "sequence_length"} for n in names}
    dynamic[output_name] = {0: "batch_size"}
    tmp = path.with_name(path.name + ".tmp")
    try:
        with patched_attention(net, form), torch.no_grad():
            torch.onnx.export(_Logits(net, names), tuple(example[n] for n in names), str(tmp), dynamo=False,
                              input_names=list(names), output_names=[output_name], dynamic_axes=dynamic,
                              opset_version=opset, do_constant_folding=True, custom_opsets={MS_DOMAIN: 1})
        proto = onnx.load(str(tmp))
        proto.ir_version = min(proto.ir_version, 10)  # what onnxruntime reads
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
        net.train(was_training)
    return path


def count_attention_nodes(onnx_model) -> dict:
    """{op_type: count} of com.microsoft attention nodes, plus "Softmax" (any domain)."""
    import onnx

    if not isinstance(onnx_model, onnx.ModelProto):
        onnx_model = onnx.load(str(onnx_model))
    counts: dict = {}
    for n in onnx_model.graph.node:
        if (n.domain == MS_DOMAIN and n.op_type in ATTENTION_OPS + ("QAttention",)) or n.op_type == "Softmax":
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts
