"""Shared benchmark plumbing: machine info, timing statistics and result files.

Every result file under bench/results/ carries ``machine`` (CPU model, cores, SIMD flags,
GPU, load), ``versions`` and the exact ``command`` that produced it.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

try:  # load when the benchmark started (this module is imported at its start)
    _LOAD_AT_START = os.getloadavg()
except OSError:
    _LOAD_AT_START = None


def machine_info() -> dict:
    from fastft.core.system import cpu_info

    info = {"cpu": cpu_info(), "gpu": None}
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    if _LOAD_AT_START is not None:
        info["loadavg_at_start"] = _LOAD_AT_START
    return info


def versions() -> dict:
    from fastft.env import env_info

    env = env_info()
    cpp = {k: v for k, v in env["cpp_extension"].items() if k != "path"}  # no machine paths in result files
    return {
        "fastft": env["fastft"],
        "python": env["python"],
        **{k: v for k, v in env["packages"].items() if v},
        "cpp_extension": cpp,
    }


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def quantiles(times_s: Sequence[float]) -> dict:
    """p10/p50/p90/p99 and mean of a list of durations, in milliseconds."""
    a = np.asarray(times_s, dtype=np.float64) * 1e3
    return {
        "n": int(a.size),
        "p10_ms": float(np.percentile(a, 10)),
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
    }


def write_result(path: str | Path, payload: dict) -> Path:
    """Write a JSON result with machine, versions and command filled in (unless given)."""
    path = Path(path)
    if path.is_dir():
        from fastft.core.errors import FastftError

        raise FastftError(f"{path} is a directory; give a file name for the result JSON")
    path.parent.mkdir(parents=True, exist_ok=True)
    out = {
        "command": command_line(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "versions": versions(),
        **payload,
    }
    try:
        out["machine"]["loadavg_at_end"] = os.getloadavg()
    except OSError:
        pass
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(out, indent=2, default=_default) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (Path,)):
        return str(o)
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(type(o).__name__)
