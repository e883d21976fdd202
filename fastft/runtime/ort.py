"""The ONNX Runtime backend of :func:`fastft.load`: CPU, or CUDA with IO binding."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np

from fastft.core.errors import FastftError, ModelError, first_line
from fastft.core.schema import SEQUENCE_CLASSIFICATION
from fastft.runtime import ort_attention
from fastft.runtime.base import Predictor
from fastft.runtime.ort_attention import (
    Swaps,
    describe,
    effective_mode,
    resolve,
    swap_attention,
    swap_gelu,
    swap_layernorm,
)
from fastft.runtime.session import create_session, parse_device, runtime_level, session_options, unloadable

__all__ = ["OrtPredictor", "served_session"]


def served_session(onnx_file: Path, opts, device: str = "cpu", ort_attention: str = "auto"):
    """(session, :class:`~fastft.runtime.ort_attention.Swaps`): ``onnx_file`` as fastft serves it,
    with each attention node on fastft's C++ kernel inside ONNX Runtime, and each residual
    LayerNorm and GELU on fastft's ops, where ``ort_attention`` resolves to them
    (:func:`fastft.runtime.ort_attention.resolve`) and the file has such nodes, else as it is.

    Where the swap cannot be made (this ONNX Runtime refuses the library, no room for the
    rewritten graph...), ``auto`` serves ORT's own attention with a warning; ``fastft`` raises."""
    onnx_file = Path(onnx_file)
    mode = effective_mode(ort_attention)
    if resolve(mode, parse_device(device)[0]):
        proto = _load_proto(onnx_file)
        try:
            session, swaps = _swapped_session(onnx_file, proto, opts)
        except Exception as exc:  # noqa: BLE001 - ORT's Fail/InvalidGraph, OSError, ModelError...
            why = f"{type(exc).__name__}: {first_line(exc)}"
            if mode == "fastft":
                raise FastftError(f"ort_attention='fastft' cannot serve {onnx_file.name}: {why}") from None
            warnings.warn(f"fastft: ONNX Runtime's own attention serves {onnx_file.name} ({why})", stacklevel=3)
        else:
            if session is not None:
                return session, swaps
    return create_session(onnx_file, opts, device=device), Swaps()


# what fastft feeds a text classifier's graph (Encoder.batch)
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

# ops whose INT8 scale is computed from the activations of the whole call (all texts, padding included)
PER_CALL_QUANT_OPS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"})


def quantises_per_call(onnx_file: Path) -> bool:
    """Does the graph quantise activations dynamically (scales from the call's own data)? Then
    the texts batched together in one call change each other's scores."""
    import onnx

    try:
        proto = onnx.load(str(onnx_file), load_external_data=False)
    except Exception:  # noqa: BLE001 - the session already loaded it; unreadable here means no answer
        return False
    return any(n.op_type in PER_CALL_QUANT_OPS for n in proto.graph.node)


def _load_proto(onnx_file: Path):
    import onnx

    try:
        return onnx.load(str(onnx_file))
    except Exception as exc:  # noqa: BLE001 - protobuf DecodeError, OSError...
        raise unloadable(onnx_file, exc) from None


def _swapped_session(onnx_file: Path, proto, opts):
    """(session, Swaps) on ``proto`` (the file's graph, changed in place) with its attention
    nodes, residual LayerNorms and GELUs on fastft's kernels (the swaps of
    :mod:`fastft.runtime.ort_attention`), registering the library on ``opts``; (None, Swaps())
    when it has no node any of them takes.

    The rewritten graph goes through a temporary file whose weights sit in one external-data
    file beside it, which ONNX Runtime reads as it reads the original (serialising it in memory
    would hold the whole graph twice more while the session loads). ORT maps that file: deleted
    once the session exists, its space in the temporary directory is given back when the session
    goes.
    """
    import onnx

    threads = {"num_threads": opts.intra_op_num_threads}
    proto, n = swap_attention(proto, extra_attrs=threads, copy=False)
    proto, n_ln = swap_layernorm(proto, extra_attrs=threads, copy=False)
    proto, n_gelu = swap_gelu(proto, extra_attrs=threads, copy=False)
    swaps = Swaps(n, n_ln, n_gelu)
    if not any(swaps):
        return None, swaps
    opts.register_custom_ops_library(str(ort_attention.library()))
    with tempfile.TemporaryDirectory(prefix="fastft-ort-") as tmp:
        path = Path(tmp) / onnx_file.name
        onnx.save(proto, str(path), save_as_external_data=True, location=path.name + ".data", size_threshold=1024)
        del proto
        return create_session(path, opts), swaps


class OrtPredictor(Predictor):
    """ONNX Runtime on CPU, or CUDA with IO binding."""

    backend = "onnxruntime"
    _settable = (*Predictor._settable, "batch_int8")

    def __init__(
        self,
        path: Path,
        onnx_file: Path,
        tokenizer,
        labels,
        max_length,
        *,
        device="cpu",
        threads=None,
        spinning=False,
        level=None,
        batch_size=32,
        truncation=True,
        warm_up=True,
        meta=None,
        task=SEQUENCE_CLASSIFICATION,
        ort_attention="auto",
        batch_int8=False,
    ):
        super().__init__(
            path, tokenizer, labels, max_length, device=device, batch_size=batch_size, truncation=truncation, task=task
        )
        self.onnx_file = Path(onnx_file)
        self.level = level or runtime_level(meta or {}, self.onnx_file.name) or "all"
        self.threads = threads
        self.spinning = spinning
        opts = session_options(threads=threads, spinning=spinning, level=self.level)
        self._kind, self._device_id = parse_device(device)
        # swaps: nodes on fastft's kernels (libfastft_ort); attention_swapped: the attention ones
        self.session, self.swaps = served_session(self.onnx_file, opts, device, ort_attention)
        self.attention_swapped = self.swaps.attention
        self.batch_dependent = quantises_per_call(self.onnx_file)
        self.batch_int8 = batch_int8
        inputs = {i.name: i for i in self.session.get_inputs()}
        if "input_ids" not in inputs:
            raise ModelError(
                f"{self.onnx_file} has no 'input_ids' input (inputs: {', '.join(inputs)}); "
                "is it a text classifier export?"
            )
        unknown = [n for n in inputs if n not in TEXT_INPUTS]
        if unknown:
            raise ModelError(
                f"{self.onnx_file} has input(s) {', '.join(map(repr, unknown))} that fastft does not feed "
                f"(it feeds {', '.join(TEXT_INPUTS)}); export it with fastft export --model DIR"
            )
        fixed = {n: i.shape for n, i in inputs.items() if any(isinstance(d, int) for d in i.shape[:2])}
        if fixed:
            name, shape = next(iter(fixed.items()))
            raise ModelError(
                f"{self.onnx_file}: input {name!r} has the fixed shape {shape}; fastft runs batches of any "
                "size padded to their longest text, so batch and sequence must be dynamic axes "
                "(fastft export --model DIR makes them so)"
            )
        self._inputs = list(inputs)
        ints = {"tensor(int32)": np.int32, "tensor(int64)": np.int64}
        odd = [(n, i.type) for n, i in inputs.items() if i.type not in ints]
        if odd:
            raise ModelError(
                f"{self.onnx_file}: input {odd[0][0]!r} is a {odd[0][1]}; fastft feeds token ids and masks "
                "as int32 or int64 (fastft export --model DIR writes int64)"
            )
        self._dtypes = {n: ints[i.type] for n, i in inputs.items()}  # each input its own (int64 ids, int32 mask...)
        self._int_dtype = self._dtypes["input_ids"]
        outputs = [o.name for o in self.session.get_outputs()]
        self._output = "logits" if "logits" in outputs else outputs[0]
        shape = self.session.get_outputs()[outputs.index(self._output)].shape
        rank = 3 if self.per_token else 2
        if len(shape) != rank or (isinstance(shape[-1], int) and shape[-1] != len(self.labels)):
            want = f"(batch, sequence, {len(self.labels)})" if self.per_token else f"(batch, {len(self.labels)})"
            raise ModelError(
                f"{self.onnx_file}: output {self._output!r} has shape {shape}, "
                f"expected {want} for the {self.task} labels {self.labels}"
            )
        if warm_up:
            self._warm_up()

    def logits_from_ids(self, input_ids, attention_mask=None, token_type_ids=None) -> np.ndarray:
        feeds = {"input_ids": np.ascontiguousarray(input_ids, dtype=self._int_dtype)}
        if "attention_mask" in self._inputs:
            dtype = self._dtypes["attention_mask"]
            feeds["attention_mask"] = (
                np.ones(feeds["input_ids"].shape, dtype=dtype)
                if attention_mask is None
                else np.ascontiguousarray(attention_mask, dtype=dtype)
            )
        if "token_type_ids" in self._inputs:
            dtype = self._dtypes["token_type_ids"]
            feeds["token_type_ids"] = (
                np.zeros(feeds["input_ids"].shape, dtype=dtype)
                if token_type_ids is None
                else np.ascontiguousarray(token_type_ids, dtype=dtype)
            )
        if self._kind == "cuda":
            return self._run_cuda(feeds)
        return self.session.run([self._output], feeds)[0].astype(np.float32, copy=False)

    def _run_cuda(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """IO binding: inputs copied to the GPU once, logits left there and copied back once."""
        import onnxruntime as ort

        binding = self.session.io_binding()  # one binding per call: safe across threads
        for name, arr in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr, "cuda", self._device_id))
        binding.bind_output(self._output, "cuda", self._device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0].astype(np.float32, copy=False)

    def info(self) -> dict:
        return {
            **super().info(),
            "file": self.onnx_file.name,
            "providers": self.session.get_providers(),
            "threads": self.session.get_session_options().intra_op_num_threads,
            "spinning": self.spinning,
            "graph_optimization": self.level,
            "attention": describe(self.swaps),
            "fastft_ops": self.swaps._asdict(),
        }
