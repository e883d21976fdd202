"""BERT-family self-attention: BERT, RoBERTa (XLM-R, CamemBERT) and ELECTRA (the same attention structure).

``layer.attention.self`` is a ``{Bert,Roberta,Electra}SelfAttention`` with ``query``,
``key``, ``value`` Linear layers; its output projection lives in ``layer.attention.output``
(not part of the self-attention module). On transformers 5.x the module dispatches through
``ALL_ATTENTION_FUNCTIONS`` with ``config._attn_implementation``, so the swap is a change of
attention implementation, not of modules.
"""

from __future__ import annotations

import torch

MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "electra")


def self_attention_classes() -> tuple[type, ...]:
    from transformers.models.bert.modeling_bert import BertSelfAttention
    from transformers.models.camembert.modeling_camembert import CamembertSelfAttention
    from transformers.models.electra.modeling_electra import ElectraSelfAttention
    from transformers.models.roberta.modeling_roberta import RobertaSelfAttention
    from transformers.models.xlm_roberta.modeling_xlm_roberta import XLMRobertaSelfAttention

    return (
        BertSelfAttention,
        RobertaSelfAttention,
        XLMRobertaSelfAttention,
        CamembertSelfAttention,
        ElectraSelfAttention,
    )


def self_attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The self-attention modules of ``model``, in layer order (cross-attention excluded)."""
    classes = self_attention_classes()
    return [m for m in model.modules() if isinstance(m, classes)]


def projections(module: torch.nn.Module) -> dict:
    """What an exporter needs to rebuild this attention: the q/k/v Linear layers, heads, scale.

    ``out``: None, the output projection is outside the self-attention module here.
    """
    return {
        "q": module.query,
        "k": module.key,
        "v": module.value,
        "out": None,
        "num_heads": module.num_attention_heads,
        "head_dim": module.attention_head_size,
        "scale": float(module.scaling),
    }


def run_once(module: torch.nn.Module) -> None:
    """One forward of the self-attention module on a tiny input (batch 1, 2 tokens, no mask)."""
    w = module.query.weight
    module(torch.zeros(1, 2, module.query.in_features, dtype=w.dtype, device=w.device))
