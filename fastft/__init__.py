"""fastft: fine-tuned Transformer encoders, small and fast to serve.

    fastft.train(model="minilm-l6", data="movie-snippets", output="runs/teacher")
    fastft.evaluate("runs/teacher", data="movie-snippets", split="test")
    fastft.load("runs/teacher").predict(["a fine film"])

Heavy modules (torch, transformers, onnxruntime) are imported on first use, so
``import fastft`` and ``fastft --help`` stay fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> "module:attribute", or a callable package
_LAZY = {
    "train": "fastft.train",  # a callable package: fastft.train(...) trains
    "TrainConfig": "fastft.train.trainer:TrainConfig",
    "evaluate": "fastft.train.evaluate:evaluate",
    "predict": "fastft.train.evaluate:predict",
    "load_data": "fastft.data:load_data",
    "resolve_model": "fastft.models:resolve_model",
    "env_info": "fastft.env:env_info",
    "FastftError": "fastft.core.errors:FastftError",
    # later stages (present once their modules exist)
    "load": "fastft.runtime:load",
    "export": "fastft.export:export",
    "fused_attention": "fastft.ops:fused_attention",
    "attention_ref": "fastft.ops:attention_ref",
    "fused_attention_varlen": "fastft.ops:fused_attention_varlen",
    "swap_attention": "fastft.swap:swap_attention",
    "unswap_attention": "fastft.swap:unswap_attention",
    "compress": "fastft.compress:compress",
    "CompressConfig": "fastft.compress:CompressConfig",
    "DistillConfig": "fastft.compress:DistillConfig",
    "PruneConfig": "fastft.compress:PruneConfig",
    "QuantizeConfig": "fastft.compress:QuantizeConfig",
    "distill": "fastft.compress:distill",
    "prune": "fastft.compress:prune",
    "quantize": "fastft.compress:quantize",
}

__all__ = ["__version__", *_LAZY]


def callable_package(package: str, target: str) -> None:
    """Make the subpackage ``package`` callable as ``target`` ("module:function").

    ``fastft.train``, ``fastft.export`` and ``fastft.compress`` are both subpackages and the
    functions of the public API; Python binds the subpackage to the parent's attribute on
    import, so the package itself forwards calls: ``fastft.train(...)`` runs the trainer and
    ``fastft.train.trainer`` still names the module.
    """
    import sys
    import types

    module = sys.modules[package]
    mod_name, attr = target.split(":")

    class _CallablePackage(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(importlib.import_module(mod_name), attr)(*args, **kwargs)

    module.__class__ = _CallablePackage


def __getattr__(name: str):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'fastft' has no attribute {name!r}")
    module, _, attr = target.partition(":")
    value = importlib.import_module(module)
    if attr:
        value = getattr(value, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
