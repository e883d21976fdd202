"""The compress pipeline's former single module, kept as a re-export of its parts:
:mod:`fastft.compress.context` (teacher, data, checks), :mod:`fastft.compress.stages`
(distill / prune / quantize) and :mod:`fastft.compress.pipeline` (compress, run_stage).
"""

from fastft.compress.context import (
    DEFAULT_TEACHER,
    Context,
    check_teacher_dir,
    default_teacher,
    preflight,
    prepare,
    save_model_dir,
    torch_accuracy,
)
from fastft.compress.pipeline import compress, onnx_section, run_stage
from fastft.compress.stages import StageResult, do_distill, do_prune, do_quantize

__all__ = [
    "DEFAULT_TEACHER",
    "Context",
    "StageResult",
    "check_teacher_dir",
    "compress",
    "default_teacher",
    "do_distill",
    "do_prune",
    "do_quantize",
    "onnx_section",
    "preflight",
    "prepare",
    "run_stage",
    "save_model_dir",
    "torch_accuracy",
]
