"""DistilBERT self-attention.

``layer.attention`` is a ``DistilBertSelfAttention`` with ``q_lin``, ``k_lin``, ``v_lin``
and its output projection ``out_lin`` inside the same module. On transformers 5.x it
dispatches through ``ALL_ATTENTION_FUNCTIONS``; where a transformers version hard-codes its
attention, the probe (``fastft.swap.check_dispatch``) finds so and the swap refuses with a
clear error instead of patching modules.
"""

from __future__ import annotations

import torch

MODEL_TYPES = ("distilbert",)


def self_attention_classes() -> tuple[type, ...]:
    from transformers.models.distilbert import modeling_distilbert as md

    cls = getattr(md, "DistilBertSelfAttention", None) or md.MultiHeadSelfAttention
    return (cls,)


def self_attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The self-attention modules of ``model``, in layer order."""
    classes = self_attention_classes()
    return [m for m in model.modules() if isinstance(m, classes)]


def projections(module: torch.nn.Module) -> dict:
    """The q/k/v Linear layers, heads and scale; ``out``: the output projection, inside the
    module here (an exporter replacing the module's forward must apply it)."""
    return {
        "q": module.q_lin,
        "k": module.k_lin,
        "v": module.v_lin,
        "out": module.out_lin,
        "num_heads": module.n_heads,
        "head_dim": module.attention_head_size,
        "scale": float(module.scaling),
    }


def run_once(module: torch.nn.Module) -> None:
    """One forward of the self-attention module on a tiny input (batch 1, 2 tokens, no padding):
    ``(hidden_states, ...)`` on transformers 5.x, ``(query, key, value, mask, ...)`` before."""
    import inspect

    w = module.q_lin.weight
    x = torch.zeros(1, 2, module.q_lin.in_features, dtype=w.dtype, device=w.device)
    if "query" in inspect.signature(module.forward).parameters:  # transformers 4.x
        module(x, x, x, torch.ones(1, 2, dtype=torch.long, device=w.device))
    else:
        module(x)
