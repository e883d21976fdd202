"""Compression: distillation, structured pruning and quantization, alone or as one pipeline.

    import fastft
    from fastft import CompressConfig, DistillConfig, PruneConfig, QuantizeConfig

    report = fastft.compress("runs/teacher", CompressConfig(distill=DistillConfig(layers=3),
                                                            prune=PruneConfig(prune_ffn=0.5),
                                                            output="runs/compressed"))
    student = fastft.distill("runs/teacher", DistillConfig(layers=3), output="runs/student")
    pruned = fastft.prune("runs/student", PruneConfig(prune_heads=0.25), output="runs/pruned")
    q = fastft.quantize("runs/pruned", QuantizeConfig(static=True), output="runs/pruned-int8")

See :mod:`fastft.compress.pipeline` for the pipeline and :mod:`fastft.compress.config` for every
option (one config per stage; ``fastft compress``'s flags are generated from their fields).
"""

from fastft.compress.config import CompressConfig, DistillConfig, PruneConfig, QuantizeConfig
from fastft.compress.pipeline import compress, distill, prune, quantize
from fastft.compress.stages import StageResult
from fastft.models.pruned import load_pruned

__all__ = [
    "CompressConfig",
    "DistillConfig",
    "PruneConfig",
    "QuantizeConfig",
    "StageResult",
    "compress",
    "distill",
    "load_pruned",
    "prune",
    "quantize",
]


from fastft import callable_package  # noqa: E402

# ``fastft.compress`` is both this package and the pipeline: importing a submodule binds the
# package to ``fastft.compress``, so the package forwards calls to :func:`compress`.
callable_package(__name__, "fastft.compress.pipeline:compress")
