"""The names of the former single predictor module (now :mod:`fastft.runtime.base`, ``.ort``,
``.torch_predictor`` and ``.load``), kept for code that imports them from here."""

from fastft.core.numerics import softmax
from fastft.runtime.base import InputError, Predictor, TruncationWarning, check_texts
from fastft.runtime.load import _pick_onnx, load, read_meta_quiet, served_backend
from fastft.runtime.ort import OrtPredictor
from fastft.runtime.torch_predictor import TorchPredictor

__all__ = [
    "InputError",
    "OrtPredictor",
    "Predictor",
    "TorchPredictor",
    "TruncationWarning",
    "check_texts",
    "load",
    "read_meta_quiet",
    "served_backend",
    "softmax",
    "_pick_onnx",
]
