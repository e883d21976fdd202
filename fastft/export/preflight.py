"""Cheap checks of the export path before a long job (``fastft compress``, training) starts.

    from fastft.export.preflight import export_preflight
    info = export_preflight(teacher_config)     # a few seconds; FastftError if it cannot work
    info["fused_attention"], info["fallback"], info["providers"]

A one-layer copy of the architecture (random weights: the weights do not change whether a
graph exports) is exported the way ``fastft export`` would export the real model: fused
attention where fastft can swap the family, else (or when that fails) the plain graph, whose
export must work. The plain graph is then opened with ONNX Runtime's CPU provider and run
once. Whatever fails here would have failed after the training, minutes later.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

from fastft.core.errors import FastftError

CPU_PROVIDER = "CPUExecutionProvider"


def check_providers() -> list[str]:
    """ONNX Runtime's available providers; FastftError without the CPU provider."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise FastftError(f"onnxruntime cannot be imported ({exc}); install it: pip install onnxruntime") from None
    providers = list(ort.get_available_providers())
    if CPU_PROVIDER not in providers:
        raise FastftError(
            f"ONNX Runtime {ort.__version__} has no {CPU_PROVIDER} (available: "
            f"{', '.join(providers) or 'none'}); reinstall onnxruntime"
        )
    return providers


def one_layer_copy(config):
    """A randomly initialised one-layer ``*ForSequenceClassification`` of ``config``'s architecture."""
    import torch
    from transformers import AutoModelForSequenceClassification

    cfg = copy.deepcopy(config)
    cfg.num_hidden_layers = 1
    if getattr(cfg, "pruned_heads", None):
        cfg.pruned_heads = {}
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(cfg).eval()


def export_preflight(config, *, fused_attention: bool | None = None) -> dict:
    """Export a one-layer copy of ``config``'s classifier to ONNX and run it once in ONNX Runtime.

    fused_attention: also try the fused-attention export (None: for the families fastft can
    swap). Its failure is not an error, the plain graph is the fallback; it is reported as
    ``fallback`` (the one-line reason). Raises FastftError naming the step when the plain
    export or ONNX Runtime fails. Returns {fused_attention, fallback, providers, seconds}.
    """
    import numpy as np

    from fastft.export.onnx import export_onnx, model_input_names, sample_inputs

    t0 = time.perf_counter()
    providers = check_providers()
    try:
        net = one_layer_copy(config)
    except Exception as exc:  # noqa: BLE001 - an architecture transformers cannot build
        raise FastftError(
            f"cannot build the model's architecture ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]})"
        ) from None
    names = model_input_names(net)
    info = {"fused_attention": False, "fallback": None, "providers": providers}
    with tempfile.TemporaryDirectory(prefix="fastft-preflight-") as tmp:
        if fused_attention is None:
            from fastft.swap import SUPPORTED_MODEL_TYPES

            fused_attention = getattr(config, "model_type", None) in SUPPORTED_MODEL_TYPES
        if fused_attention:
            from fastft.export.attention import try_export_fused_onnx

            done, why = try_export_fused_onnx(net, Path(tmp) / "fused.onnx", input_names=names)
            info["fused_attention"], info["fallback"] = done is not None, why
        plain = Path(tmp) / "plain.onnx"
        try:
            export_onnx(net, plain, input_names=names)
        except FastftError as exc:
            raise FastftError(f"the model will not export to ONNX (checked on a one-layer copy): {exc}") from None
        try:
            from fastft.runtime.session import create_session, session_options

            sess = create_session(plain, session_options(threads=1, level="basic"))
            feeds = {n: t.numpy() for n, t in zip(names, sample_inputs(names, vocab=config.vocab_size))}
            out = sess.run(None, feeds)[0]
        except FastftError as exc:
            raise FastftError(
                f"ONNX Runtime cannot run the exported model (checked on a one-layer copy): {exc}"
            ) from None
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise FastftError(
                f"ONNX Runtime cannot run the exported model (checked on a one-layer copy): "
                f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
            ) from None
        if not np.isfinite(out).all():
            raise FastftError(
                "ONNX Runtime returned non-finite logits for the exported model (checked on a one-layer copy)"
            )
    info["seconds"] = round(time.perf_counter() - t0, 2)
    return info
