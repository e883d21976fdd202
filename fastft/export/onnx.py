"""torch.onnx export of a classifier: ``input_ids, attention_mask[, token_type_ids] -> logits``.

``logits`` is (batch, labels) for a sequence classifier and (batch, sequence, labels) for a token
classifier, with the batch (and sequence) axes dynamic.

No Optimum: a small wrapper returns only the logits, and ``torch.onnx.export`` writes it
with dynamic batch and sequence axes. Defaults chosen by measurement (transformers 5.x,
torch 2.13): the TorchScript exporter (``dynamo=False``) on the *eager* attention
implementation. It exports minilm-l6 in ~2 s with logits within 1e-7 of PyTorch, and its
graph is the pattern ONNX Runtime's BERT fusions recognise (Attention, EmbedLayerNorm,
SkipLayerNorm, BiasGelu); the SDPA and dynamo graphs are exact too but stay unfused.

A caller with its own prepared model (e.g. attention swapped to a custom op) passes the
``torch.nn.Module`` and export options straight to :func:`export_onnx`.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

from fastft.core.errors import FastftError

MIN_OPSET = 17
# onnx 1.23 writes IR version 11+; onnxruntime 1.2x-1.3x reads IR <= 10/11. 10 is read by all of them.
DEFAULT_IR_VERSION = 10
INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")


def model_input_names(net) -> list[str]:
    """The inputs the ONNX graph takes: input_ids, attention_mask and token_type_ids if the model uses them."""
    params = inspect.signature(net.forward).parameters
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in params and getattr(net.config, "type_vocab_size", 0):
        names.append("token_type_ids")
    return names


class LogitsOnly:
    """Factory of a ``torch.nn.Module`` wrapper whose forward returns only ``logits``."""

    def __new__(cls, net, input_names):
        import torch

        class _Wrapper(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = net
                self.names = list(input_names)

            def forward(self, input_ids, attention_mask, token_type_ids=None):
                kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
                if token_type_ids is not None:
                    kwargs["token_type_ids"] = token_type_ids
                return self.model(**kwargs).logits

        return _Wrapper().eval()


# built-in implementations swapped for eager at export; anything else (e.g. fastft's swapped
# attention registered through AttentionInterface) is the caller's choice and is kept
_BUILTIN_ATTENTION = ("sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


def use_eager_attention(net) -> str | None:
    """Route a Hugging Face model's built-in attention through the eager implementation; returns the previous one."""
    cfg = getattr(net, "config", None)
    previous = getattr(cfg, "_attn_implementation", None)
    if cfg is None or previous not in _BUILTIN_ATTENTION:
        return previous
    try:
        net.set_attn_implementation("eager")
    except (AttributeError, ValueError, ImportError):
        cfg._attn_implementation = "eager"
    return previous


def sample_inputs(input_names, batch: int = 2, seq: int = 16, vocab: int = 1000):
    """Dummy tensors for tracing; the second row is padded so the mask path is traced."""
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, max(6, min(vocab, 1000)), (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    if batch > 1:
        mask[-1, seq // 2 :] = 0
    tensors = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return tuple(tensors[n] for n in input_names)


def _per_token(wrapper, args) -> bool:
    """Does the model return one row of logits per token, (batch, seq, labels)? Probed on ``args``."""
    import torch

    with torch.inference_mode(False), torch.no_grad():
        out = wrapper(*args)
    return getattr(out, "dim", lambda: 2)() == 3


def export_onnx(
    model,
    path: str | os.PathLike,
    *,
    input_names: list[str] | None = None,
    opset: int = MIN_OPSET,
    dynamo: bool = False,
    custom_opsets: dict | None = None,
    ir_version: int | None = DEFAULT_IR_VERSION,
    eager_attention: bool = True,
    export_kwargs: dict | None = None,
) -> dict:
    """Export a classifier to ``path`` (one self-contained .onnx file). Returns what was done.

    Args:
        model: a Hugging Face ``*ForSequenceClassification`` (anything returning ``.logits``)
            or an ``nn.Module`` already taking ``input_names`` and returning logits.
        input_names: graph inputs, in order; default :func:`model_input_names`.
        opset: ONNX opset (>= 17).
        dynamo: use the torch.export based exporter instead of TorchScript tracing.
        custom_opsets: extra opset domains, e.g. ``{"com.microsoft": 1}`` for contrib ops.
        ir_version: rewrite the file's IR version to this (None: keep what onnx wrote).
        eager_attention: switch HF models from SDPA/flash attention to eager for the export (and back
            after); a custom attention implementation (fastft's swapped op) is left in place.
        export_kwargs: passed on to ``torch.onnx.export`` (override anything above).
    """
    import torch

    if opset < MIN_OPSET:
        raise FastftError(f"--opset must be at least {MIN_OPSET} (got {opset})")
    path = Path(path)
    config = getattr(model, "config", None)
    names = list(input_names or (model_input_names(model) if config is not None else INPUT_ORDER[:2]))
    bad = [n for n in names if n not in INPUT_ORDER]
    if bad:
        raise FastftError(f"input_names: unknown input {bad[0]!r} (expected some of {', '.join(INPUT_ORDER)})")
    previous_attn = use_eager_attention(model) if eager_attention and config is not None else None
    used_attn = getattr(config, "_attn_implementation", None)
    was_training = model.training
    model.eval()
    wrapper = LogitsOnly(model, names) if config is not None else model
    vocab = getattr(config, "vocab_size", 1000) or 1000
    args = sample_inputs(names, vocab=vocab)
    kwargs = {
        "input_names": names,
        "output_names": ["logits"],
        "opset_version": opset,
        "do_constant_folding": True,
        "dynamo": dynamo,
    }
    if dynamo:
        batch, seq = torch.export.Dim("batch_size"), torch.export.Dim("sequence_length", min=2)
        kwargs["dynamic_shapes"] = {n: {0: batch, 1: seq} for n in names}
    else:
        axes = {n: {0: "batch_size", 1: "sequence_length"} for n in names}
        # per-token logits (token classification) keep the sequence axis: probed on the sample
        axes["logits"] = {0: "batch_size", 1: "sequence_length"} if _per_token(wrapper, args) else {0: "batch_size"}
        kwargs["dynamic_axes"] = axes
    if custom_opsets:
        kwargs["custom_opsets"] = dict(custom_opsets)
    kwargs.update(export_kwargs or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import warnings

        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, args, str(path), **kwargs)
    except FastftError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise FastftError(f"ONNX export failed ({type(exc).__name__}: {first})") from exc
    finally:
        # torch.onnx.export restores the *wrapper's* training flag, which would switch the model to
        # train mode (dropout on); put the model back exactly as it was.
        model.train(was_training)
        if previous_attn in _BUILTIN_ATTENTION:
            try:
                model.set_attn_implementation(previous_attn)
            except (AttributeError, ValueError, ImportError):
                model.config._attn_implementation = previous_attn
    written_ir = set_ir_version(path, ir_version) if ir_version else None
    return {
        "exporter": "torch.onnx (dynamo)" if dynamo else "torch.onnx (torchscript)",
        "opset": opset,
        "ir_version": written_ir,
        "inputs": names,
        "outputs": ["logits"],
        "dynamic_axes": {"batch_size": 0, "sequence_length": 1},
        "attention_implementation": used_attn,
    }


def set_ir_version(path: str | os.PathLike, ir_version: int = DEFAULT_IR_VERSION) -> int:
    """Lower the file's IR version to one onnxruntime reads (the graph itself is unchanged)."""
    import onnx

    model = onnx.load(str(path))
    if model.ir_version > ir_version:
        model.ir_version = ir_version
        save_model(model, path)
    return int(model.ir_version)


def save_model(model, path: str | os.PathLike) -> None:
    """Save an ONNX model as one file, or with external data beyond protobuf's 2 GB limit."""
    import onnx

    big = model.ByteSize() > 1_800_000_000
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=big,
        all_tensors_to_one_file=True,
        location=Path(path).name + ".data" if big else None,
    )
