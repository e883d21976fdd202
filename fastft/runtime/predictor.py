"""The Predictor: a model directory behind ``predict`` / ``logits`` / ``predict_proba``.

    pred = fastft.load("runs/teacher-onnx")              # ONNX Runtime, CPU, model.onnx
    pred.predict(["a fine film", "a dull mess"])          # [("positive", 0.97), ("negative", 0.91)]
    pred.logits(texts)                                    # (n, num_labels) float32
    pred.predict_proba(texts)                             # (n, num_labels), rows sum to 1
    pred.labels                                           # ["negative", "positive"]

Texts are tokenized (truncated at the model's max length), sorted by length and run in
batches padded to their longest text; results come back in input order. One Predictor may
be shared by many threads: ORT's ``run`` and torch inference are thread-safe, and each
thread tokenizes with its own tokenizer copy.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import numpy as np

from fastft.core.checks import check_int
from fastft.core.errors import FastftError, ModelError
from fastft.core.numerics import softmax
from fastft.runtime.encode import Encoder, length_sorted_batches
from fastft.runtime.session import LEVELS, DeviceError, create_session, parse_device, runtime_level, session_options


class InputError(FastftError):
    """The texts given to a Predictor cannot be used (not a list, not strings, empty...)."""


class TruncationWarning(UserWarning):
    """A text was longer than the model's max length and was cut."""


def check_texts(texts) -> list[str]:
    """``texts`` as a list, or InputError naming the first unusable text (by index, from 0).

    Refused: a single string, a non-list, an empty list, a non-string, an empty text, and a
    text that is not valid Unicode (a lone surrogate such as ``"\\ud800"``): fastft never
    replaces characters silently (see :mod:`fastft.data.text`).
    """
    from fastft.data.text import unicode_problem

    if isinstance(texts, str):
        raise InputError("texts must be a list of strings, not a single string (wrap it: [text])")
    if not isinstance(texts, (list, tuple)):
        raise InputError(f"texts must be a list of strings (got {type(texts).__name__})")
    if len(texts) == 0:
        raise InputError("no texts to predict (the list is empty)")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"text #{i} is not a string ({type(t).__name__})")
        if not t.strip():
            raise InputError(f"text #{i} is empty")
        problem = unicode_problem(t)
        if problem:
            raise InputError(f"text #{i} {problem}")
    return list(texts)


class Predictor:
    """Shared logic: input checks, tokenization, length-sorted batching, labels.

    Subclasses implement :meth:`logits_from_ids` (one padded batch -> logits).
    """

    backend = "?"

    def __init__(
        self,
        path: Path,
        tokenizer,
        labels: list[str],
        max_length: int,
        *,
        device: str = "cpu",
        batch_size: int = 32,
        truncation: bool = True,
    ):
        self.path = Path(path)
        self.labels = list(labels)
        self.max_length = int(max_length)
        self.device = device
        self.batch_size = int(batch_size)
        self.truncation = truncation
        self.tokenizer = tokenizer
        self._encoder = Encoder(tokenizer, self.max_length)
        self._warned = False
        self._warn_lock = threading.Lock()

    # -- public API -------------------------------------------------------------------
    def logits(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """Raw scores, (n, num_labels) float32, in input order."""
        texts = check_texts(texts)
        try:
            check_int("batch_size", batch_size, lo=1, optional=True)
        except FastftError as exc:
            raise InputError(str(exc)) from None
        return self._logits(texts, batch_size or self.batch_size)

    def _logits(self, texts: list[str], bs: int) -> np.ndarray:
        """Logits of checked texts (evaluation data may hold empty texts: they are scored too)."""
        enc = self._encoder.encode(texts)
        self._check_truncation(enc.truncated)
        out = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        for idx in length_sorted_batches(enc.lengths(), bs):
            feeds = self._encoder.batch(enc, idx, self._int_dtype)
            out[idx] = self.logits_from_ids(**feeds)
        return out

    def predict_proba(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """Class probabilities, (n, num_labels), rows sum to 1."""
        return softmax(self.logits(texts, batch_size))

    def predict(self, texts: list[str], batch_size: int | None = None) -> list[tuple[str, float]]:
        """(label, probability) of the most likely label of each text."""
        probs = self.predict_proba(texts, batch_size)
        best = probs.argmax(axis=1)
        return [(self.labels[int(j)], float(p[j])) for j, p in zip(best, probs)]

    __call__ = predict

    def logits_from_ids(
        self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None, token_type_ids: np.ndarray | None = None
    ) -> np.ndarray:
        """Logits of one tokenized batch: input_ids (batch, seq) -> (batch, num_labels) float32."""
        raise NotImplementedError

    def info(self) -> dict:
        return {
            "backend": self.backend,
            "path": str(self.path),
            "device": self.device,
            "max_length": self.max_length,
            "labels": self.labels,
        }

    def __repr__(self) -> str:
        extra = ", ".join(f"{k}={v!r}" for k, v in self.info().items() if k not in ("labels",))
        return f"{type(self).__name__}({extra})"

    # -- helpers ----------------------------------------------------------------------
    _int_dtype = np.int64

    def _check_truncation(self, truncated: list[bool]) -> None:
        if not any(truncated):
            return
        i = truncated.index(True)
        if not self.truncation:
            raise InputError(
                f"text #{i} is longer than the model's max length of {self.max_length} tokens "
                "(truncation=False); shorten it or load with truncation=True"
            )
        with self._warn_lock:
            if self._warned:
                return
            self._warned = True
        import warnings

        warnings.warn(
            f"{sum(truncated)} text(s) longer than {self.max_length} tokens were truncated "
            f"(first: text #{i}); shown once per predictor",
            TruncationWarning,
            stacklevel=_caller_level(),
        )

    def _warm_up(self) -> None:
        enc = self._encoder.encode(["warm up the session with a short sentence"] * 2)
        for _ in range(2):
            self.logits_from_ids(**self._encoder.batch(enc, [0, 1], self._int_dtype))


def _caller_level() -> int:
    """warnings stacklevel pointing at the first frame outside fastft.runtime."""
    f, level = sys._getframe(1), 1
    here = os.path.dirname(__file__)
    while f is not None and os.path.dirname(f.f_code.co_filename) == here:
        f, level = f.f_back, level + 1
    return level


class OrtPredictor(Predictor):
    """ONNX Runtime on CPU, or CUDA with IO binding."""

    backend = "onnxruntime"

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
    ):
        super().__init__(
            path, tokenizer, labels, max_length, device=device, batch_size=batch_size, truncation=truncation
        )
        self.onnx_file = Path(onnx_file)
        self.level = level or runtime_level(meta or {}, self.onnx_file.name) or "all"
        self.threads = threads
        self.spinning = spinning
        opts = session_options(threads=threads, spinning=spinning, level=self.level)
        self.session = create_session(self.onnx_file, opts, device=device)
        self._kind, self._device_id = parse_device(device)
        inputs = {i.name: i for i in self.session.get_inputs()}
        if "input_ids" not in inputs:
            raise ModelError(
                f"{self.onnx_file} has no 'input_ids' input (inputs: {', '.join(inputs)}); "
                "is it a text classifier export?"
            )
        self._inputs = list(inputs)
        self._int_dtype = np.int32 if inputs["input_ids"].type == "tensor(int32)" else np.int64
        outputs = [o.name for o in self.session.get_outputs()]
        self._output = "logits" if "logits" in outputs else outputs[0]
        shape = self.session.get_outputs()[outputs.index(self._output)].shape
        if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != len(self.labels)):
            raise ModelError(
                f"{self.onnx_file}: output {self._output!r} has shape {shape}, "
                f"expected (batch, {len(self.labels)}) for labels {self.labels}"
            )
        if warm_up:
            self._warm_up()

    def logits_from_ids(self, input_ids, attention_mask=None, token_type_ids=None) -> np.ndarray:
        feeds = {"input_ids": np.ascontiguousarray(input_ids, dtype=self._int_dtype)}
        if "attention_mask" in self._inputs:
            feeds["attention_mask"] = (
                np.ones_like(feeds["input_ids"])
                if attention_mask is None
                else np.ascontiguousarray(attention_mask, dtype=self._int_dtype)
            )
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = (
                np.zeros_like(feeds["input_ids"])
                if token_type_ids is None
                else np.ascontiguousarray(token_type_ids, dtype=self._int_dtype)
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
        }


class TorchPredictor(Predictor):
    """PyTorch (eager, SDPA attention, or fastft's fused attention when swapped in)."""

    backend = "torch"

    def __init__(
        self,
        path: Path,
        tokenizer,
        labels,
        max_length,
        *,
        device="cpu",
        threads=None,
        fused_attention: bool | None = False,
        batch_size=32,
        truncation=True,
        warm_up=True,
    ):
        super().__init__(
            path, tokenizer, labels, max_length, device=device, batch_size=batch_size, truncation=truncation
        )
        import torch

        from fastft.models import load_classifier

        kind, index = parse_device(device)
        if kind == "cuda" and not torch.cuda.is_available():
            raise DeviceError(
                "device='cuda' needs a CUDA GPU, and torch sees none "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); use device='cpu'"
            )
        if threads is not None:
            if not isinstance(threads, int) or threads < 1:
                raise FastftError(f"threads must be a positive integer (got {threads!r})")
            torch.set_num_threads(threads)
        self._torch_device = torch.device(kind, index) if kind == "cuda" else torch.device("cpu")
        net = load_classifier(self.path).eval()
        self.attention = getattr(net.config, "_attn_implementation", None) or "sdpa"
        if fused_attention is not False:
            swapped = _swap_attention(net, required=fused_attention is True)
            if swapped is not None:
                net, self.attention = swapped, "fastft-fused"
        self.model = net.to(self._torch_device)
        if warm_up:
            self._warm_up()

    def logits_from_ids(self, input_ids, attention_mask=None, token_type_ids=None) -> np.ndarray:
        import torch

        dev = self._torch_device
        kwargs = {"input_ids": torch.as_tensor(np.asarray(input_ids, dtype=np.int64), device=dev)}
        if attention_mask is not None:
            kwargs["attention_mask"] = torch.as_tensor(np.asarray(attention_mask, dtype=np.int64), device=dev)
        if token_type_ids is not None:
            kwargs["token_type_ids"] = torch.as_tensor(np.asarray(token_type_ids, dtype=np.int64), device=dev)
        with torch.inference_mode():
            return self.model(**kwargs).logits.float().cpu().numpy()

    def info(self) -> dict:
        return {**super().info(), "attention": self.attention}


def _swap_attention(net, required: bool):
    """``fastft.swap_attention(net)`` when that stage is present; None (or an error if required)."""
    try:
        from fastft.swap import swap_attention
    except ImportError as exc:
        if required:
            raise FastftError(f"fused_attention=True needs fastft.swap, which is not available ({exc})") from None
        return None
    try:
        out = swap_attention(net)
    except FastftError:
        if required:
            raise
        return None
    return net if out is None else out


# -- loading ----------------------------------------------------------------------------
def load(
    path: str | os.PathLike,
    device: str = "cpu",
    backend: str = "onnxruntime",
    threads: int | None = None,
    int8: bool | None = None,
    *,
    spinning: bool = False,
    batch_size: int = 32,
    truncation: bool = True,
    max_length: int | None = None,
    fused_attention: bool | None = False,
    optimization_level: str | None = None,
    warm_up: bool = True,
) -> Predictor:
    """Load a model directory (``fastft export``, Optimum's exporter, or a trained fastft dir).

    backend: ``onnxruntime`` (model.onnx, or model_int8.onnx with ``int8=True``; ``int8=None``
    serves what fastft.json names as the default, else model.onnx) or ``torch``.
    threads: intra-op threads [physical cores]. spinning: let ORT worker threads spin
    between calls (faster on a dedicated machine, steals CPU otherwise) [False].
    truncation: cut texts longer than the max length (warning once) or raise [True].
    fused_attention (torch): swap in fastft's fused attention; None = when available.
    """
    from fastft.data.collate import clamp_max_length
    from fastft.models import load_tokenizer, read_meta

    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise FastftError(f"path must be a model directory, as a str or os.PathLike (got {path!r})")
    if backend not in ("onnxruntime", "ort", "torch"):
        raise FastftError(f"backend must be 'onnxruntime' or 'torch' (got {backend!r})")
    check_int("batch_size", batch_size, lo=1)
    check_int("max_length", max_length, lo=2, optional=True)
    check_int("threads", threads, lo=1, optional=True)
    for name, value in (("int8", int8), ("fused_attention", fused_attention)):
        if value not in (None, True, False):
            raise FastftError(f"{name} must be True, False or None (got {value!r})")
    for name, value in (("truncation", truncation), ("spinning", spinning), ("warm_up", warm_up)):
        if not isinstance(value, bool):
            raise FastftError(f"{name} must be True or False (got {value!r})")
    if optimization_level is not None and optimization_level not in LEVELS:
        raise FastftError(f"optimization_level must be one of {', '.join(LEVELS)} (got {optimization_level!r})")
    parse_device(device)
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ModelError(f"model directory {p} does not exist" if not p.exists() else f"{p} is not a directory")
    meta = read_meta(p)
    config = _read_config(p)
    labels = _labels(meta, config)
    tokenizer = load_tokenizer(p)
    length = max_length if max_length is not None else meta.get("max_length")
    if length is None:
        tok_max = getattr(tokenizer, "model_max_length", None)
        length = tok_max if tok_max and tok_max < 100_000 else None
    length = clamp_max_length(length, _Config(config))
    common = {
        "device": device,
        "threads": threads,
        "batch_size": batch_size,
        "truncation": truncation,
        "warm_up": warm_up,
    }
    if backend == "torch":
        if int8:
            raise FastftError("int8=True needs backend='onnxruntime' (the INT8 model is an ONNX file)")
        return TorchPredictor(p, tokenizer, labels, length, fused_attention=fused_attention, **common)
    onnx_file = _pick_onnx(p, meta, int8)
    return OrtPredictor(
        p, onnx_file, tokenizer, labels, length, spinning=spinning, level=optimization_level, meta=meta, **common
    )


def served_backend(path: str | os.PathLike) -> str:
    """What ``load(path)`` / ``fastft predict`` serve by default: ``onnxruntime`` or ``torch``.

    ONNX Runtime when the directory has the ONNX file ``load`` would pick (fastft.json's default,
    else model.onnx), PyTorch otherwise.
    """
    p = Path(path).expanduser()
    if not p.is_dir():
        return "torch"  # resolve_model reports what is wrong with it
    try:
        _pick_onnx(p, read_meta_quiet(p), None)
    except ModelError:
        return "torch"
    return "onnxruntime"


def read_meta_quiet(p: Path) -> dict:
    from fastft.models import read_meta

    try:
        return read_meta(p)
    except ModelError:
        return {}


class _Config:
    """Just enough of a transformers config for ``clamp_max_length``."""

    def __init__(self, d: dict):
        self.max_position_embeddings = d.get("max_position_embeddings")
        self.model_type = d.get("model_type", "")


def _read_config(p: Path) -> dict:
    from fastft.core.io import read_json_object

    cfg = p / "config.json"
    if not cfg.is_file():
        raise ModelError(f"{p} is not a model directory (no config.json)")
    return read_json_object(cfg)


def _labels(meta: dict, config: dict) -> list[str]:
    labels = meta.get("labels")
    if isinstance(labels, list) and labels:
        return [str(x) for x in labels]
    id2label = config.get("id2label") or {}
    n = config.get("num_labels") or len(id2label) or 2
    return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(int(n))]


def _pick_onnx(p: Path, meta: dict, int8: bool | None) -> Path:
    onnx = meta.get("onnx") if isinstance(meta.get("onnx"), dict) else {}
    if int8 is None:
        default = onnx.get("default") or onnx.get("serve") or onnx.get("default_file")
        if isinstance(default, str) and (p / default).is_file():
            return p / default
        if default in ("int8", "model_int8") and (p / "model_int8.onnx").is_file():
            return p / "model_int8.onnx"
    name = "model_int8.onnx" if int8 else "model.onnx"
    f = p / name
    if f.is_file():
        return f
    if not int8:
        alt = [x.name for x in sorted(p.glob("*.onnx"))]
        if len(alt) == 1 and alt[0] != "model_int8.onnx":
            return p / alt[0]
    have = ", ".join(x.name for x in sorted(p.glob("*.onnx"))) or "none"
    hint = f"run: fastft export --model {p} --output DIR" + (" --int8" if int8 else "")
    raise ModelError(f"{p} has no {name} (ONNX files: {have}); {hint}, or load with backend='torch'")
