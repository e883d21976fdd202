"""Serving: load a model directory and predict, with ONNX Runtime (default) or PyTorch.

    pred = fastft.load("runs/teacher-onnx", int8=True, threads=2)
    pred.predict(["a fine film"])          # [("positive", 0.97)]

See :mod:`fastft.runtime.predictor` for the API and :mod:`fastft.runtime.session` for the
ONNX Runtime session choices.
"""

from fastft.core.system import physical_cores
from fastft.runtime.predictor import (
    InputError,
    OrtPredictor,
    Predictor,
    TorchPredictor,
    TruncationWarning,
    load,
    softmax,
)
from fastft.runtime.session import DeviceError, session_options

__all__ = [
    "DeviceError",
    "InputError",
    "OrtPredictor",
    "Predictor",
    "TorchPredictor",
    "TruncationWarning",
    "load",
    "physical_cores",
    "session_options",
    "softmax",
]
