"""Route a model's self-attention through :func:`fastft.ops.fused_attention`.

    import fastft
    model = fastft.swap_attention(model)     # in place; returns the model
    fastft.unswap_attention(model)           # back to the attention it had before

Supported: BERT, RoBERTa, XLM-R, CamemBERT, ELECTRA (``fastft.swap.bert``) and DistilBERT
(``fastft.swap.distilbert``) encoders, base models and task heads alike (sequence
classification, token classification...), with transformers 5.x. One small module per
architecture family says where its self-attention modules are and what they hold.

How: transformers 5.x modules call ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``;
the swap registers an implementation named ``"fastft"`` (``fastft.swap._interface``) and
switches the model to it, remembering the implementation it had ("sdpa", "eager"...) so
unswap restores exactly that. Nothing in the module tree is replaced. Whether a model's
attention dispatches that way is found by behaviour (:func:`check_dispatch`): one attention
module runs once with a spy implementation selected; a version whose modules never call it
(transformers 4.x for some families) gets a one-line FastftError.

Export: ``torch.onnx.export(..., dynamo=False)`` (e.g. ``fastft.export.onnx.export_onnx``) of
a swapped model writes each op as one com.microsoft ``MultiHeadAttention``;
``fastft.export.attention.export_fused`` writes the packed ``Attention`` (QKV projection
included), the measured faster form.

Training mode: the op has no attention dropout. A module in training mode with attention
dropout > 0 falls back to torch SDPA with dropout (same as the original model); in eval
mode, or with dropout 0, the op runs. Decoders (``is_decoder``) and cross-attention are
refused: the swap is for encoders.
"""

from __future__ import annotations

from types import ModuleType

from fastft.core.errors import FastftError
from fastft.ops.attention_onnx import register_symbolics
from fastft.swap import _interface, bert, distilbert
from fastft.swap._interface import IMPL_NAME

__all__ = [
    "swap_attention",
    "unswap_attention",
    "is_swapped",
    "attention_modules",
    "family",
    "check_dispatch",
    "SUPPORTED_MODEL_TYPES",
]

_FAMILIES: tuple[ModuleType, ...] = (bert, distilbert)
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for f in _FAMILIES for t in f.MODEL_TYPES)
_STATE = "_fastft_swap"


def family(model) -> ModuleType:
    """The swap module for ``model``'s architecture; FastftError naming the supported ones."""
    import torch

    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise FastftError(
            f"swap_attention needs a transformers model (torch.nn.Module with .config), got {type(model).__name__}"
        )
    model_type = getattr(model.config, "model_type", None)
    for fam in _FAMILIES:
        if model_type in fam.MODEL_TYPES:
            return fam
    raise FastftError(
        f"swap_attention does not support {type(model).__name__} (model_type {model_type!r}); "
        f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


def attention_modules(model) -> list:
    """The self-attention modules of a supported model, in layer order."""
    return family(model).self_attention_modules(model)


def _state(model) -> dict | None:
    """What swap_attention recorded, kept on each self-attention module (not on the object
    passed in: swapping ``m.bert`` swaps ``m`` too, and ``unswap_attention(m)`` undoes it)."""
    try:
        modules = attention_modules(model)
    except FastftError:  # not a model fastft swaps: never swapped
        modules = []
    for m in modules:
        state = getattr(m, _STATE, None)
        if state is not None:
            return state
    return getattr(model, _STATE, None)  # swapped by an earlier fastft (the state was kept here), unpickled


def is_swapped(model) -> bool:
    return _state(model) is not None


def _set_impl(model, impl: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(impl)
    else:
        model.config._attn_implementation = impl
    for m in attention_modules(model):  # a submodule with a config of its own
        if m.config._attn_implementation != impl:
            m.config._attn_implementation = impl


def check_dispatch(model) -> tuple[bool, str]:
    """``(True, "")`` when every self-attention class of ``model`` dispatches through transformers'
    AttentionInterface, else ``(False, "<Class>: why")``. Probed, not read: one module per class
    runs once with a spy implementation (``fastft.swap._interface.uses_interface``)."""
    fam = family(model)
    if not _interface.has_interface():
        return False, f"{type(model).__name__} (no AttentionInterface / AttentionMaskInterface in this version)"
    seen = set()
    for m in fam.self_attention_modules(model):
        if type(m) in seen:
            continue
        seen.add(type(m))
        ok, why = _interface.uses_interface(m, fam.run_once)
        if not ok:
            return False, f"{type(m).__name__} ({why})"
    return True, ""


def swap_attention(model):
    """Route ``model``'s self-attention through the fused op, in place; returns ``model``.

    Logits match the original within float32 rounding (1e-5 on the tests' models). Calling it
    on a swapped model does nothing. Raises FastftError for an unsupported architecture, a
    decoder / cross-attention model, or a transformers version without the attention
    interface.
    """
    fam = family(model)
    if is_swapped(model):
        # a swapped model unpickled in a fresh process: its config names "fastft", which this
        # process has not registered with transformers yet
        _interface.register()
        return model
    cfg = model.config
    if getattr(cfg, "is_decoder", False) or getattr(cfg, "add_cross_attention", False):
        raise FastftError(
            f"swap_attention supports encoders only; {type(model).__name__} has "
            f"is_decoder={cfg.is_decoder}, add_cross_attention={getattr(cfg, 'add_cross_attention', False)}"
        )
    modules = fam.self_attention_modules(model)
    if not modules:
        raise FastftError(f"{type(model).__name__} has no {model.config.model_type} self-attention module to swap")
    ok, why = check_dispatch(model)
    if not ok:
        import transformers

        raise FastftError(
            f"transformers {transformers.__version__} hard-codes the attention of "
            f"{why}; swap_attention needs attention that dispatches through "
            f"transformers' AttentionInterface (transformers >= 5)"
        )
    _interface.register()
    register_symbolics(17)  # torch.onnx.export(dynamo=False) writes each op as one MultiHeadAttention
    original = cfg._attn_implementation
    _set_impl(model, IMPL_NAME)
    for m in modules:
        setattr(m, _STATE, {"attn_implementation": original, "num_layers": len(modules)})
    return model


def unswap_attention(model):
    """Restore the attention implementation ``model`` had before :func:`swap_attention`;
    returns ``model``. A model that is not swapped is returned unchanged."""
    state = _state(model)
    if state is None:
        return model
    _set_impl(model, state["attn_implementation"])
    for m in (model, *attention_modules(model)):
        if _STATE in vars(m):
            delattr(m, _STATE)
    return model
