"""Compression: distillation, structured pruning and quantization, alone or as one pipeline.

    import fastft
    from fastft import CompressConfig

    report = fastft.compress("runs/teacher", CompressConfig(layers=3, prune_ffn=0.5, quantize="int8",
                                                            output="runs/compressed"))
    student = fastft.distill("runs/teacher", CompressConfig(layers=3), output="runs/student")
    pruned = fastft.prune("runs/student", CompressConfig(prune_heads=0.25), output="runs/pruned")
    q = fastft.quantize("runs/pruned", CompressConfig(quantize="int8"), output="runs/pruned-int8")

See :mod:`fastft.compress.pipeline` for the pipeline and :class:`CompressConfig` for every option.
"""

from fastft.compress.config import CompressConfig
from fastft.compress.pipeline import compress, distill, prune, quantize
from fastft.compress.stages import StageResult
from fastft.models.pruned import load_pruned

__all__ = ["CompressConfig", "StageResult", "compress", "distill", "load_pruned", "prune", "quantize"]


from fastft import callable_package  # noqa: E402

# ``fastft.compress`` is both this package and the pipeline: importing a submodule binds the
# package to ``fastft.compress``, so the package forwards calls to :func:`compress`.
callable_package(__name__, "fastft.compress.pipeline:compress")
