"""ONNX Runtime sessions tuned for low-latency serving of an encoder.

    opts = session_options(threads=2, spinning=False, level="all")
    sess = create_session("model.onnx", opts, device="cpu")

Choices (each measured by ``fastft bench``, see bench/results):

- intra-op threads default to the physical cores (hyper-threads slow GEMMs down);
  inter-op 1 and sequential execution: an encoder is one chain of ops.
- spinning off by default (``session.intra_op.allow_spinning = 0``): ORT's spinning worker
  threads otherwise keep cores busy between calls and steal them from the rest of the
  process (tokenizer, web server, other models); turn it on for a dedicated box.
- the graph optimisation level: ``all`` for a plain export; for a file optimised offline by
  ``fastft export``, the level fastft.json records for it (``basic``: the expensive fusions
  are already in the file, so session creation stays fast).
"""

from __future__ import annotations

from pathlib import Path

from fastft.core.checks import check_threads
from fastft.core.errors import FastftError, ModelError, first_line
from fastft.core.system import physical_cores

LEVELS = ("disable", "basic", "extended", "all")


class DeviceError(FastftError):
    """The requested device cannot be used (no GPU, no CUDA provider...)."""


def parse_device(device: str) -> tuple[str, int]:
    """ "cpu" | "cuda" | "cuda:N" -> (kind, index)."""
    d = str(device).strip().lower()
    if d == "cpu":
        return "cpu", 0
    if d == "cuda" or d == "gpu":
        return "cuda", 0
    if d.startswith("cuda:") and d[5:].isdigit():
        return "cuda", int(d[5:])
    raise FastftError(f"device must be 'cpu', 'cuda' or 'cuda:N' (got {device!r})")


def session_options(threads: int | None = None, spinning: bool = False, level: str = "all", sequential: bool = True):
    """An ``onnxruntime.SessionOptions`` with the serving defaults described above."""
    import onnxruntime as ort

    check_threads("threads", threads)
    if level not in LEVELS:
        raise FastftError(f"graph optimisation level must be one of {', '.join(LEVELS)} (got {level!r})")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or physical_cores()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL if sequential else ort.ExecutionMode.ORT_PARALLEL
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
    opts.log_severity_level = 3  # errors only
    return opts


def create_session(path: str | Path, options, device: str = "cpu"):
    """An InferenceSession on ``device``; one clear error for a missing/corrupt file or device."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path} does not exist")
    kind, index = parse_device(device)
    if kind == "cuda":
        check_cuda_provider()
        providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    try:
        sess = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - InvalidProtobuf, InvalidGraph, Fail, NoSuchFile...
        raise unloadable(path, exc) from None
    if kind == "cuda" and sess.get_providers()[0] != "CUDAExecutionProvider":
        raise DeviceError(
            f"ONNX Runtime could not start CUDA for {path.name} (providers: {sess.get_providers()}); "
            "check the CUDA/cuDNN libraries that onnxruntime-gpu needs"
        )
    return sess


def unloadable(path: Path, exc: BaseException) -> ModelError:
    """The one-line error for an ONNX file that ONNX Runtime or onnx could not load."""
    if not path.is_file():
        return ModelError(f"{path} does not exist")
    return ModelError(f"{path} is not a loadable ONNX model ({type(exc).__name__}: {first_line(exc)})")


def check_cuda_provider() -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise DeviceError(
            "device='cuda' needs a GPU build of ONNX Runtime with a visible GPU "
            f"(this onnxruntime offers {', '.join(ort.get_available_providers())}); "
            "install onnxruntime-gpu (pip install 'fastft[gpu]') or use device='cpu'"
        )


def runtime_level(meta: dict, filename: str) -> str | None:
    """The graph optimisation level fastft.json asks the runtime to use for ``filename``.

    ``fastft export`` optimises offline and records, per file, the (cheap) level left for the
    session: ``onnx.optimization.runtime_graph_optimization_level`` for model.onnx and
    ``onnx.int8.runtime_graph_optimization_level`` for model_int8.onnx. Older or foreign
    records that only say a level was baked in get ``basic``. None: nothing recorded.
    """
    onnx = meta.get("onnx") if isinstance(meta, dict) else None
    if not isinstance(onnx, dict):
        return None
    sections = []
    for key, sec in onnx.items():  # "int8", "fp16"...: a section per extra file, naming it
        if (
            isinstance(sec, dict)
            and key not in ("optimization", "export")
            and sec.get("file", "model_int8.onnx" if key == "int8" else None) == filename
        ):
            sections += [sec, sec.get("optimization")]
    if not sections and onnx.get("file", "model.onnx") == filename:
        sections += [onnx.get("optimization"), onnx]
    for sec in sections:
        if not isinstance(sec, dict):
            continue
        level = _level_name(sec.get("runtime_graph_optimization_level"))
        if level:
            return level
        for key in ("ort_optimization_level", "optimization_level", "offline_level", "level"):
            if _level_name(sec.get(key)) not in (None, "disable"):
                return "basic"
    return None


def _level_name(value) -> str | None:
    if isinstance(value, str) and value:
        v = value.lower().replace("ort_", "").replace("enable_", "").replace("disable_all", "disable")
        return v if v in LEVELS else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 99:
        return LEVELS[min(value, 3)]
    return None
