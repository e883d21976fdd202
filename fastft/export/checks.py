"""What ``fastft export`` checks before it loads a model (arguments, opset, the directory) and
the small file helpers of its output directory."""

from __future__ import annotations

import shutil
from pathlib import Path

from fastft.core.checks import arg, check_int
from fastft.core.errors import FastftError
from fastft.core.io import stdout_to_stderr
from fastft.export.onnx import MIN_OPSET
from fastft.export.quantize import CALIB_METHODS

CALIB_DEFAULTS = {"calib_size": 256, "calib_method": "minmax"}  # static calibration, where not given


def unused_calibration(static: bool, **given) -> list[str]:
    """The calibration settings given (``calib_size=``, ``calib_method=``) unlike their defaults
    where nothing is calibrated (no static INT8): dynamic INT8 ignored them. For compress and
    export alike."""
    return [] if static else [n for n, v in given.items() if v != CALIB_DEFAULTS[n]]


def check_calibration(calib_size: int, calib_method: str, static: bool = True) -> None:
    """Static calibration's settings, for export and compress alike (the method only where it is
    read: without ``static`` a method given is refused as unused, naming --static)."""
    check_int(arg("calib_size"), calib_size, lo=1)
    if static and calib_method not in CALIB_METHODS:
        raise FastftError(f"{arg('calib_method')} must be one of {', '.join(CALIB_METHODS)} (got {calib_method!r})")


def check_export_args(*, opset: int, calib_size: int, calib_method: str, static: bool) -> None:
    check_int(arg("opset"), opset, lo=MIN_OPSET)
    check_calibration(calib_size, calib_method, static)
    check_opset(opset)


_opset_ok: dict[int, str | None] = {}


def check_opset(opset: int) -> None:
    """Probe, in milliseconds, that torch's exporter writes ``opset`` and ONNX Runtime runs it.

    A tiny module is exported at ``opset`` (the TorchScript exporter fastft uses) and opened
    in an ORT session; a refusal is a one-line FastftError before the real model is loaded.
    """
    if opset not in _opset_ok:
        import io
        import warnings

        import torch

        try:
            buf = io.BytesIO()
            with _quiet_stdout(), warnings.catch_warnings():  # the exporter dumps its graph on stdout on failure
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    torch.nn.Linear(2, 2).eval(),
                    (torch.zeros(1, 2),),
                    buf,
                    opset_version=opset,
                    input_names=["x"],
                    dynamo=False,
                )
            import onnxruntime as ort

            ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
            _opset_ok[opset] = None
        except Exception as exc:  # noqa: BLE001 - each library words its refusal differently
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            _opset_ok[opset] = f"{type(exc).__name__}: {first[:160]}"
    if _opset_ok[opset]:
        raise FastftError(
            f"{arg('opset')} {opset} cannot be exported by torch {_version('torch')} and run by onnxruntime "
            f"{_version('onnxruntime')} ({_opset_ok[opset]}); use opset 17"
        )


def _version(pkg: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "?"


def _quiet_stdout():
    return stdout_to_stderr(discard=True)


def check_classifier_dir(path: Path, meta: dict) -> None:
    """A directory with a trained classification head whose labels can be served (one name per
    output, in the head's order): :func:`fastft.models.task.check_head`."""
    from fastft.core.io import read_json_object
    from fastft.models.task import check_head

    check_head(path, meta, read_json_object(path / "config.json"))


def data_for(
    meta: dict, data: str | None, text_column: str | None = None, label_column: str | None = None, encoding="utf-8"
):
    """(DataSplits, where from) for the recorded training data, or ``data`` if given (of the
    model's task: text or token classification), read with the columns given, else the recorded
    ones for the training data, else text / label."""
    from fastft.core.schema import task_of
    from fastft.data import load_data
    from fastft.data.loader import recorded_args

    spec = meta.get("data") or {}
    if not (data or spec.get("path") or spec.get("data")):
        return None, None
    source, args, _ = recorded_args(
        "the model", spec, data, task=task_of(meta), text_column=text_column, label_column=label_column
    )
    # calibration and the agreement check need texts, not classes: one class is data too
    return load_data(source, **args, encoding=encoding, min_classes=1), source


def _load_onnx(path):
    import onnx

    return onnx.load(str(path), load_external_data=False)


def copy_hf_files(src: Path, dst: Path) -> list[str]:
    copied = []
    for p in sorted(src.iterdir()):
        if (
            p.is_file()
            and not p.name.startswith(".")
            and not p.name.endswith((".onnx", ".onnx.data"))
            and p.name != "fastft.json"
        ):
            shutil.copy2(p, dst / p.name)
            copied.append(p.name)
    return copied
