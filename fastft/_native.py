"""Load the optional C++ extension ``fastft._C``.

A missing or broken native library never breaks ``import fastft``: the failure is
caught, the pure-Python/reference paths are used, and ``fastft env`` says why.
"""

from __future__ import annotations

import os
from pathlib import Path

_C = None
load_error: str | None = None

if os.environ.get("FASTFT_DISABLE_CPP"):
    load_error = "disabled by FASTFT_DISABLE_CPP"
else:
    try:
        from fastft import _C  # type: ignore[attr-defined,no-redef]
    except ImportError as exc:  # not built (FASTFT_SKIP_CPP, no compiler) or broken
        _C = None
        load_error = f"{type(exc).__name__}: {exc}"


def available() -> bool:
    return _C is not None


def build_info() -> dict:
    if _C is None:
        return {"built": False, "reason": load_error}
    info = dict(_C.build_info())
    forced = os.environ.get(ISA_ENV) or "auto"
    if forced != "auto":  # the copy in force, as the kernels read the variable (it said the default)
        info["attention_isa_default"], info["attention_isa_forced"] = info.get("attention_isa"), forced
        if forced in [str(x) for x in info.get("attention_isas", [])]:
            info["attention_isa"] = forced
        else:
            info["attention_isa_error"] = f"{ISA_ENV}={forced!r} is not a copy of the kernels this CPU runs"
    info["built"] = True
    info["path"] = getattr(_C, "__file__", None)
    lib = ort_library()
    info["ort_custom_op"] = str(lib) if lib else None
    return info


def ort_library() -> Path | None:
    """libfastft_ort (the attention kernel as an ONNX Runtime custom op, csrc/ort_op.cpp) when this
    install built it: it sits next to fastft._C. None when _C is not loaded (FASTFT_DISABLE_CPP)."""
    if _C is None:
        return None
    path = Path(_C.__file__).with_name("libfastft_ort.so")
    return path if path.is_file() else None


ISA_ENV = "FASTFT_ATTN_ISA"  # forces one instruction-set copy of the C++ kernels (avx2, avx512...)
_isas: list[str] | None = None


def forced_isa() -> str:
    """FASTFT_ATTN_ISA, ``auto`` when unset: checked against the copies of the kernels this CPU
    runs, so a typo is one clear error before any work, not a failure inside every call (or an
    ONNX Runtime session that silently falls back to its own attention)."""
    global _isas
    isa = os.environ.get(ISA_ENV) or "auto"  # as the C++ kernels read it: not stripped
    if isa == "auto" or _C is None:
        return isa
    if _isas is None:
        _isas = [str(x) for x in _C.build_info().get("attention_isas", [])]
    if isa not in _isas:
        from fastft.core.errors import FastftError

        raise FastftError(f"{ISA_ENV}={isa!r} is not a copy of the kernels this CPU runs ({', '.join(_isas)}, or auto)")
    return isa
