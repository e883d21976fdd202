"""Benchmarks: ``fastft bench`` (:mod:`fastft.bench.harness`) and the shared runner of the
scripts under bench/ (:mod:`fastft.bench.runner`: machine, versions, interleaving, result files).

Every result file under bench/results/ carries ``machine`` (CPU model, cores, SIMD flags,
GPU, load at start and end), ``versions`` and the exact ``command`` that produced it.
The runner's names are loaded on first use, so ``fastft --help`` does not import numpy.
"""

from __future__ import annotations

import importlib

__all__ = ["command_line", "interleave", "machine_info", "quantiles", "versions", "write_result"]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module 'fastft.bench' has no attribute {name!r}")
    return getattr(importlib.import_module("fastft.bench.runner"), name)
