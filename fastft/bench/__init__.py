"""Benchmarks: ``fastft bench`` (:mod:`fastft.bench.harness`) and the shared runner of the
scripts under bench/ (:mod:`fastft.bench.runner`: machine, versions, interleaving, result files).

Every result file under bench/results/ carries ``machine`` (CPU model, cores, SIMD flags,
GPU, load at start and end), ``versions`` and the exact ``command`` that produced it.
"""

from __future__ import annotations

from fastft.bench.runner import command_line, interleave, machine_info, quantiles, versions, write_result

__all__ = ["command_line", "interleave", "machine_info", "quantiles", "versions", "write_result"]
