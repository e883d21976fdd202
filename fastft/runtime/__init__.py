"""Serving: load a model directory and predict, with ONNX Runtime (default) or PyTorch.

    pred = fastft.load("runs/teacher-onnx", int8=True, threads=2)
    pred.predict(["a fine film"])          # [("positive", 0.97)]

:mod:`fastft.runtime.load` picks the backend for a model directory; :mod:`fastft.runtime.base`
holds the Predictor API, :mod:`fastft.runtime.ort` and :mod:`fastft.runtime.torch_predictor` the
backends, :mod:`fastft.runtime.session` the ONNX Runtime session choices.
"""

from fastft.core.numerics import softmax
from fastft.core.system import physical_cores
from fastft.runtime.base import InputError, Predictor, TruncationWarning
from fastft.runtime.load import load, served_backend
from fastft.runtime.ort import OrtPredictor
from fastft.runtime.session import DeviceError, session_options
from fastft.runtime.torch_predictor import TorchPredictor

__all__ = [
    "DeviceError",
    "InputError",
    "OrtPredictor",
    "Predictor",
    "TorchPredictor",
    "TruncationWarning",
    "load",
    "physical_cores",
    "served_backend",
    "session_options",
    "softmax",
]
