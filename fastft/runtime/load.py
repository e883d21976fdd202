"""Loading a model directory for serving: :func:`load` picks the backend and the ONNX file.

pred = fastft.load("runs/teacher-onnx", int8=True, threads=2)
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from fastft.core.checks import check_bool, check_int, check_max_length, check_path, check_threads
from fastft.core.errors import FastftError, ModelError
from fastft.core.io import read_json_object
from fastft.data.collate import clamp_max_length, tokenizer_max_length
from fastft.data.iob import check_decode
from fastft.models import load_tokenizer, read_meta
from fastft.models.resolve import check_vocab
from fastft.models.task import head_labels, model_task, task_from
from fastft.runtime.base import Predictor
from fastft.runtime.ort import OrtPredictor
from fastft.runtime.ort_attention import effective_mode
from fastft.runtime.session import LEVELS, parse_device
from fastft.runtime.torch_predictor import TorchPredictor

__all__ = ["load", "model_task", "served_backend", "served_onnx", "read_meta_quiet"]


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
    decode: str = "viterbi",
    ort_attention: str = "auto",
    batch_int8: bool = False,
) -> Predictor:
    """Load a model directory (``fastft export``, Optimum's exporter, or a trained fastft dir).

    backend: ``onnxruntime`` (model.onnx, or model_int8.onnx with ``int8=True``; ``int8=None``
    serves what fastft.json names as the default, else model.onnx) or ``torch``.
    threads: intra-op threads [physical cores]; with ``backend="torch"`` torch's, which are the
    whole process's: the last load that gives them sets them for every torch model. A child
    ``fork()``ed from a process with a torch Predictor runs torch on one thread (OpenMP's
    threads do not survive fork: torch would wait for them for ever).
    spinning: let ORT worker threads spin between calls (faster on a dedicated machine, steals
    CPU otherwise) [False].
    truncation: cut texts longer than the max length, with a TruncationWarning (shown as
    Python's warning filters say: by default once per calling line), or raise [True].
    fused_attention (torch): swap in fastft's fused attention; None = when available.
    ort_attention (onnxruntime): ``fastft`` runs each attention node of the file on fastft's C++
    kernel inside ONNX Runtime (libfastft_ort: padding-free), ``onnxruntime`` on ORT's own;
    ``auto``: fastft's when this install built the library and the device is the CPU [auto].
    decode (token classification): ``viterbi``, the most likely valid IOB2 tag sequence, the
    decoding fastft's entity F1 is measured with; ``argmax``, each token's own best tag, the
    spans transformers' pipeline gives [viterbi].
    batch_int8 (onnxruntime): a dynamically quantised graph (model_int8.onnx) computes each
    activation's INT8 scale over the whole call, so in a call of several texts a text's scores
    move with the texts beside it (and its label can flip). By default such a graph runs each
    text alone, so the same text always gets the same answer; True merges texts into calls of
    ``batch_size`` (about twice the throughput on short texts, answers no longer independent) [False].
    An option of the other backend (``fused_attention=True`` with ``onnxruntime``; ``spinning``,
    ``optimization_level``, ``ort_attention`` or ``batch_int8`` with ``torch``) is refused.
    """
    options = {k: v for k, v in locals().items() if k != "path"}  # pickling a Predictor loads it again with these
    check_path("path", path, "a model directory")
    if backend not in ("onnxruntime", "ort", "torch"):
        raise FastftError(f"backend must be 'onnxruntime' or 'torch' (got {backend!r})")
    check_int("batch_size", batch_size, lo=1)
    check_max_length("max_length", max_length)
    check_threads("threads", threads)
    check_bool("int8", int8, optional=True)
    check_bool("fused_attention", fused_attention, optional=True)
    for name in ("truncation", "spinning", "warm_up", "batch_int8"):
        check_bool(name, options[name])
    if optimization_level is not None and optimization_level not in LEVELS:
        raise FastftError(f"optimization_level must be one of {', '.join(LEVELS)} (got {optimization_level!r})")
    check_decode(decode)
    effective_mode(ort_attention)
    parse_device(device)
    _check_backend_options(backend, options)
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ModelError(f"model directory {p} does not exist" if not p.exists() else f"{p} is not a directory")
    meta = read_meta(p)
    config = _read_config(p)
    task = task_from(meta, config)
    labels = head_labels(p, meta, config)
    tokenizer = load_tokenizer(p)
    check_vocab(p, tokenizer, config.get("vocab_size"))
    length = _input_length(meta, config, tokenizer, max_length)
    common = {
        "device": device,
        "threads": threads,
        "batch_size": batch_size,
        "truncation": truncation,
        "warm_up": warm_up,
        "task": task,
    }
    if backend == "torch":
        if int8:
            raise FastftError("int8=True needs backend='onnxruntime' (the INT8 model is an ONNX file)")
        pred: Predictor = TorchPredictor(p, tokenizer, labels, length, fused_attention=fused_attention, **common)
    else:
        onnx_file = _pick_onnx(p, meta, int8)
        pred = OrtPredictor(
            p,
            onnx_file,
            tokenizer,
            labels,
            length,
            spinning=spinning,
            level=optimization_level,
            meta=meta,
            ort_attention=ort_attention,
            batch_int8=batch_int8,
            **common,
        )
    pred.decode = decode  # checked by the setter against the model's task
    pred._reload = functools.partial(load, p.resolve(), **options)  # absolute: another process, another cwd
    return pred


# options one backend reads: given to the other backend (not left at load's default) they were
# ignored (fused_attention=True served ORT's graph as it is), so they are refused
_ORT_ONLY = ("spinning", "optimization_level", "ort_attention", "batch_int8")
_TORCH_ONLY = ("fused_attention",)


def _check_backend_options(backend: str, options: dict) -> None:
    """FastftError naming the first option ``load`` was given that ``backend`` does not read
    (``fused_attention=None``, "where available", is not given anywhere it is unavailable)."""
    import inspect

    torch = backend == "torch"
    defaults = {n: p.default for n, p in inspect.signature(load).parameters.items()}
    for name in _ORT_ONLY if torch else _TORCH_ONLY:
        if options[name] not in (defaults[name], None if name == "fused_attention" else defaults[name]):
            other = "onnxruntime" if torch else "torch"
            raise FastftError(
                f"{name} is for backend='{other}': load(..., backend='{backend}') does not read it "
                f"(got {options[name]!r})"
            )


def served_onnx(
    path: str | os.PathLike, int8: bool | None = None, max_length: int | None = None
) -> tuple[Path, list[str], int]:
    """What ``load(path, int8=int8, max_length=max_length)`` serves on ONNX Runtime:
    (the ONNX file, the labels in output order, the input length in tokens)."""
    p = Path(path).expanduser()
    meta = read_meta(p)
    config = _read_config(p)
    return (
        _pick_onnx(p, meta, int8),
        head_labels(p, meta, config),
        _input_length(meta, config, load_tokenizer(p), max_length),
    )


def _input_length(meta: dict, config: dict, tokenizer, max_length: int | None) -> int:
    """The requested length, else fastft.json's, else the tokenizer's; clamped to the positions."""
    length = max_length if max_length is not None else meta.get("max_length")
    if length is None:
        length = tokenizer_max_length(tokenizer, _Config(config))
    return clamp_max_length(length, _Config(config))


def served_backend(path: str | os.PathLike, backend: str = "auto", int8: bool | None = None) -> str:
    """What ``load(path)`` / ``fastft predict`` / ``fastft eval`` serve with: ``onnxruntime`` or ``torch``.

    ``backend`` when it names one; for ``auto``, ONNX Runtime when the directory has the ONNX file
    ``load`` would pick (fastft.json's default, else model.onnx), PyTorch otherwise. ``int8``
    given (True / False) names an ONNX file, so ONNX Runtime (with ``backend="torch"``: an error).
    """
    if int8 is not None:
        if backend == "torch":
            raise FastftError(
                "int8 (--int8 / --no-int8) names an ONNX file: use it with backend='onnxruntime' or 'auto' "
                "(--backend onnxruntime)"
            )
        return "onnxruntime"
    if backend != "auto":
        return backend
    p = Path(path).expanduser()
    if not p.is_dir():
        return "torch"  # resolve_model reports what is wrong with it
    try:
        _pick_onnx(p, read_meta_quiet(p), None)
    except ModelError:
        return "torch"
    return "onnxruntime"


def read_meta_quiet(p: Path) -> dict:
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
    cfg = p / "config.json"
    if not cfg.is_file():
        raise ModelError(f"{p} is not a model directory (no config.json)")
    return read_json_object(cfg)


def _pick_onnx(p: Path, meta: dict, int8: bool | None) -> Path:
    onnx = meta.get("onnx") if isinstance(meta.get("onnx"), dict) else {}
    if int8 is None:
        default = onnx.get("default")
        if isinstance(default, str) and (p / default).is_file():
            return p / default
    name = "model_int8.onnx" if int8 else "model.onnx"
    f = p / name
    if f.is_file():
        return f
    if f.exists():
        raise ModelError(f"{f} is not a file")
    files = [x.name for x in sorted(p.glob("*.onnx")) if x.is_file()]
    if not int8 and len(files) == 1 and files[0] != "model_int8.onnx":
        return p / files[0]
    have = ", ".join(files) or "none"
    hint = f"run: fastft export --model {p} --output DIR" + (" --int8" if int8 else "")
    raise ModelError(
        f"{p} has no {name} (ONNX files: {have}); {hint} (from Python, load(..., backend='torch') needs none)"
    )
