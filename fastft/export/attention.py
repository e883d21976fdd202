"""Fused attention in the exported ONNX graph, written by the exporter itself.

    from fastft.export.attention import export_fused, export_fused_onnx
    export_fused("runs/teacher", "model.onnx")                   # -> Path (raw graph)
    export_fused(torch_model, "model.onnx", form="mha")
    info = export_fused_onnx(net, "plain.onnx", input_names=names, opset=17)   # drop-in for
        # fastft.export.onnx.export_onnx inside the export pipeline (then fuse_transformer,
        # ort_offline_optimize, quantize_onnx, parity exactly as for a plain export)

Each self-attention of a supported model (the families of :mod:`fastft.swap`) becomes ONE
ONNX Runtime contrib node, with the key padding mask as an int32 ``(batch, seq)`` input:

* ``form="attention"`` (default): com.microsoft ``Attention``, the packed form that
  includes the Q/K/V projection (one merged ``(hidden, 3*hidden)`` weight). ORT's dynamic
  INT8 quantisation turns it into ``QAttention``.
* ``form="mha"``: the Q/K/V projections stay MatMul+Add and the attention is a
  com.microsoft ``MultiHeadAttention`` on ``(batch, seq, hidden)`` tensors.

How: for the duration of the export the model is swapped (:func:`fastft.swap_attention`,
so the mask reaching attention is the bool ``(batch, seq)`` key padding mask) and the
forward of each self-attention module (found by the swap's architecture module,
``fastft.swap.bert`` / ``fastft.swap.distilbert``) calls one of two torch custom ops
defined in :mod:`fastft.ops.attention_onnx`, ``fastft::onnx_qkv_attention`` or ``fastft::onnx_mha``. Their torch
implementation is :func:`fastft.ops.fused_attention` (the traced model computes what the
swapped model computes); their ONNX symbolic (TorchScript exporter, ``dynamo=False``)
emits the contrib node. No pattern matching: the graph has no Softmax left. Module
forwards and the swap state are restored afterwards.

A plain TorchScript export of a swapped model (``fastft.export.onnx.export_onnx`` keeps a
swapped model's attention) also gets one node per attention: ``fastft::fused_attention``
itself has a symbolic in :mod:`fastft.ops.attention_onnx` (registered by :func:`fastft.swap_attention`) writing a
com.microsoft ``MultiHeadAttention`` between (B,H,S,D) <-> (B,S,H*D) reshapes.

The default form is measured (bench/bench_attention_e2e.py -> bench/results/attention_e2e.json):
packed ``Attention`` was the fastest of the three forms an exporter can write for one
minilm-l6 layer at seq 512 (and end to end), ahead of MatMul+``MultiHeadAttention`` and the
unfused MatMul-Softmax-MatMul graph.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch import Tensor

from fastft import swap
from fastft.core.errors import FastftError
from fastft.ops.attention_onnx import MS_DOMAIN, register_symbolics
from fastft.swap._interface import key_padding_mask

__all__ = [
    "export_fused",
    "export_fused_onnx",
    "try_export_fused_onnx",
    "DEFAULT_FORM",
    "FORMS",
    "ATTENTION_OPS",
    "count_attention_nodes",
    "patched_attention",
    "register_symbolics",
]

FORMS = ("attention", "mha")
DEFAULT_FORM = "attention"
ATTENTION_OPS = ("Attention", "MultiHeadAttention")  # com.microsoft op types written here


# ---------------------------------------------------------------------------------------
# routing the swapped model's attention modules through the export ops
# ---------------------------------------------------------------------------------------
def _export_forward(module: torch.nn.Module, proj: dict, form: str):
    q_lin, k_lin, v_lin, out_lin = proj["q"], proj["k"], proj["v"], proj["out"]
    num_heads, scale = int(proj["num_heads"]), float(proj["scale"])

    def forward(hidden_states: Tensor, attention_mask: Tensor | None = None, *args, **kwargs):
        ok, mask = key_padding_mask(attention_mask, hidden_states.shape[1])
        if not ok or (mask is not None and mask.dtype != torch.bool):
            raise FastftError(
                "fused-attention export needs a key padding mask (bool (batch, seq)); got "
                f"{None if attention_mask is None else (attention_mask.dtype, tuple(attention_mask.shape))}"
            )
        if form == "mha":
            out = torch.ops.fastft.onnx_mha(
                q_lin(hidden_states), k_lin(hidden_states), v_lin(hidden_states), mask, num_heads, scale
            )
        else:
            lins = (q_lin, k_lin, v_lin)
            weight = torch.cat([lin.weight for lin in lins], dim=0).t()
            bias = torch.cat(
                [lin.bias if lin.bias is not None else lin.weight.new_zeros(lin.out_features) for lin in lins]
            )
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
    if form not in FORMS:
        raise FastftError(f"fused attention form must be one of {', '.join(FORMS)}, got {form!r}")
    fam = swap.family(model)
    was_swapped = swap.is_swapped(model)
    swap.swap_attention(model)  # checks the architecture; the masks become bool (batch, seq)
    modules = fam.self_attention_modules(model)
    try:
        for m in modules:
            m.forward = _export_forward(m, fam.projections(m), form)
        yield modules
    finally:
        for m in modules:
            m.__dict__.pop("forward", None)
        if not was_swapped:
            swap.unswap_attention(model)


# ---------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------
def _load(model) -> torch.nn.Module:
    if isinstance(model, torch.nn.Module):
        return model
    from fastft.models import load_classifier

    return load_classifier(model)


def export_fused_onnx(
    net: torch.nn.Module,
    path: str | os.PathLike,
    *,
    input_names: list[str] | None = None,
    opset: int = 17,
    form: str = DEFAULT_FORM,
) -> dict:
    """Drop-in for :func:`fastft.export.onnx.export_onnx` on a torch classifier: the same
    inputs/outputs/dynamic axes, with each self-attention written as one com.microsoft node.
    Returns export_onnx's info dict plus ``attention``: {form, op, nodes}."""
    from fastft.export.onnx import export_onnx

    register_symbolics(opset)
    with patched_attention(net, form) as modules:
        info = export_onnx(
            net, path, input_names=input_names, opset=opset, custom_opsets={MS_DOMAIN: 1}, eager_attention=False
        )
    counts = count_attention_nodes(path)
    op = "Attention" if form == "attention" else "MultiHeadAttention"
    if counts.get(op, 0) != len(modules) or counts.get("Softmax", 0):
        raise FastftError(f"fused-attention export wrote {counts} for {len(modules)} attention layers")
    info["attention_implementation"] = "fastft (exported as com.microsoft." + op + ")"
    info["attention"] = {"form": form, "op": f"{MS_DOMAIN}.{op}", "nodes": len(modules)}
    return info


def try_export_fused_onnx(
    net: torch.nn.Module,
    path: str | os.PathLike,
    *,
    input_names: list[str] | None = None,
    opset: int = 17,
    form: str = DEFAULT_FORM,
) -> tuple[dict | None, str | None]:
    """:func:`export_fused_onnx`, or ``(None, why)`` when the installed libraries cannot write
    fused attention for ``net`` (e.g. a transformers whose attention is hard-coded): the caller
    then writes the plain graph. ``(info, None)`` on success; the model is left as it was."""
    try:
        ok, why = swap.check_dispatch(net)
    except FastftError as exc:
        return None, str(exc)
    if not ok:
        import transformers

        return None, f"transformers {transformers.__version__} hard-codes the attention of {why}"
    try:
        return export_fused_onnx(net, path, input_names=input_names, opset=opset, form=form), None
    except Exception as exc:  # noqa: BLE001 - any exporter failure here means: write the plain graph instead
        Path(path).unlink(missing_ok=True)
        msg = (str(exc).strip().splitlines() or [""])[0][:200]
        return None, f"the fused-attention export failed: {type(exc).__name__}: {msg}"


def export_fused(model, path: str | os.PathLike, opset: int = 17, *, form: str = DEFAULT_FORM) -> Path:
    """Export ``model`` (a model directory / alias, or a torch classifier of a supported
    family) to ONNX at ``path``, each self-attention as one com.microsoft node (``form``:
    "attention" = packed Attention including the QKV projection, "mha" =
    MultiHeadAttention). Inputs input_ids, attention_mask (int64 (batch, seq), 1 = token)
    and token_type_ids where the model has token types; output ``logits``; batch and
    sequence axes dynamic. The graph is not optimised further (run
    ``fastft.export.optimize`` on it as on a plain export). Returns ``path``; a torch model
    is left as it was.
    """
    from fastft.export.onnx import model_input_names

    net = _load(model)
    path = Path(path)
    export_fused_onnx(net, path, input_names=model_input_names(net), opset=opset, form=form)
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
