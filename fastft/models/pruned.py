"""Pruned BERT-style encoders: the layer structure, head/FFN slicing and reloading a pruned directory.

Transformers 5 dropped ``prune_heads``/``config.pruned_heads`` for BERT, so a head-pruned
directory records ``pruned_heads`` in config.json and loads with :func:`load_pruned` (which
rebuilds the shapes, then loads the weights). FFN pruning changes only ``intermediate_size``
and loads with plain ``transformers``. How heads and neurons are chosen lives in
``fastft.compress.prune``; this module only knows shapes, so model loading needs no compress.
"""

from __future__ import annotations

from pathlib import Path

from fastft.core.errors import ModelError
from fastft.models.hf import transformers_names

BERT_LAYER_LINEARS = (  # the Linear modules of a BERT-style layer (what pruning slices and QAT fake-quantises)
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)


def layer_linear(layer, path: str):
    """The module at ``path`` (one of :data:`BERT_LAYER_LINEARS`) of ``layer``, or None."""
    for part in path.split("."):
        layer = getattr(layer, part, None)
    return layer


def _has_layout(layer) -> bool:
    import torch

    return all(isinstance(layer_linear(layer, p), torch.nn.Linear) for p in BERT_LAYER_LINEARS) and hasattr(
        layer.attention.self, "attention_head_size"
    )


def encoder_layers(model):
    enc = getattr(getattr(model, model.base_model_prefix, model), "encoder", None)
    layers = getattr(enc, "layer", None)
    if not layers or not all(_has_layout(x) for x in layers):  # (DeBERTa, MPNet: encoder.layer of another shape)
        raise ModelError(
            f"{type(model).__name__}: structured pruning and quantization-aware training work on BERT-style "
            "encoders (encoder.layer[i] with attention.self.query / key / value, attention.output.dense, "
            "intermediate.dense, output.dense)"
        )
    return layers


def heads_of(layer) -> int:
    return layer.attention.self.query.out_features // layer.attention.self.attention_head_size


def slice_linear(lin, index, dim: int):
    """A new Linear keeping ``index`` along ``dim`` (0: outputs/rows, 1: inputs/columns)."""
    import torch

    index = index.to(lin.weight.device)
    w = lin.weight.index_select(dim, index).detach().clone()
    b = lin.bias
    if b is not None:
        b = (b.index_select(0, index) if dim == 0 else b).detach().clone()
    new = torch.nn.Linear(w.shape[1], w.shape[0], bias=b is not None).to(w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


def prune_layer_heads(layer, heads: list[int]) -> None:
    """Remove attention ``heads`` (indices among the layer's current heads) from one layer."""
    import torch

    if not heads:
        return
    att = layer.attention.self
    d = att.attention_head_size
    n = heads_of(layer)
    keep_heads = [h for h in range(n) if h not in set(heads)]
    index = torch.tensor([h * d + j for h in keep_heads for j in range(d)], dtype=torch.long)
    att.query = slice_linear(att.query, index, 0)
    att.key = slice_linear(att.key, index, 0)
    att.value = slice_linear(att.value, index, 0)
    layer.attention.output.dense = slice_linear(layer.attention.output.dense, index, 1)
    att.num_attention_heads = len(keep_heads)
    att.all_head_size = len(keep_heads) * d


def prune_layer_ffn(layer, keep) -> None:
    """Keep only the FFN neurons ``keep`` (sorted indices) of one layer."""
    layer.intermediate.dense = slice_linear(layer.intermediate.dense, keep, 0)
    layer.output.dense = slice_linear(layer.output.dense, keep, 1)


def load_pruned(path, **kwargs):
    """Load a (head-)pruned classifier directory: rebuild the pruned shapes, then load the weights.

    Plain ``AutoModelForSequenceClassification.from_pretrained`` works for FFN-only pruning; this
    also handles ``pruned_heads`` in config.json, which transformers 5 no longer applies.
    """
    import torch
    from safetensors.torch import load_file

    AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification = transformers_names(
        "AutoConfig", "AutoModelForSequenceClassification", "AutoModelForTokenClassification"
    )
    path = Path(path)
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    archs = getattr(config, "architectures", None) or []
    auto = (
        AutoModelForTokenClassification
        if any(a.endswith("ForTokenClassification") for a in archs)
        else AutoModelForSequenceClassification
    )
    pruned = {int(k): v for k, v in (getattr(config, "pruned_heads", None) or {}).items()}
    if not pruned:
        return auto.from_pretrained(str(path), trust_remote_code=False, **kwargs)
    model = auto.from_config(config)
    for i, layer in enumerate(encoder_layers(model)):
        # transformers 4.x applies config.pruned_heads itself when it builds the model, 5.x does not:
        # prune only a layer that still has all its heads
        if pruned.get(i) and heads_of(layer) == config.num_attention_heads:
            prune_layer_heads(layer, sorted(pruned[i]))
    state = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if "position_ids" not in m]
    if missing or unexpected:
        raise ModelError(f"{path}: weights do not match the pruned config ({missing[:2]}, {unexpected[:2]})")
    return model.to(torch.float32).eval()


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def flops(model, seq: int = 128) -> int | None:
    """Forward FLOPs (2 x multiply-adds) of the encoder for one sequence of ``seq`` tokens.

    Counts every Linear in the encoder (per token), the attention score and context matmuls
    (``2 * seq^2 * heads * head_dim`` each), the pooler and the classifier (one token).
    Embedding lookups, LayerNorm, softmax and GELU are left out (a few percent). None for an
    encoder of another layout than BERT's (DistilBERT, ALBERT...: it is not pruned either).
    """
    import torch

    try:
        layers = encoder_layers(model)
    except ModelError:
        return None
    total = 0
    for layer in layers:
        for m in layer.modules():
            if isinstance(m, torch.nn.Linear):
                total += 2 * m.in_features * m.out_features * seq
        inner = layer.attention.self.query.out_features
        total += 2 * 2 * seq * seq * inner
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and ("pooler" in name or "classifier" in name):
            total += 2 * m.in_features * m.out_features
    return int(total)


def describe(model) -> dict:
    layers = encoder_layers(model)
    return {
        "layers": len(layers),
        "heads": [heads_of(x) for x in layers],
        "intermediate": [x.intermediate.dense.out_features for x in layers],
        "parameters": count_params(model),
    }
