"""ONNX export of a fastft model directory: export -> optimise -> quantise -> validate.

    from fastft.export import export
    info = export("runs/teacher", "runs/teacher-onnx", int8=True)
    info["parity"]["fp32"]["max_abs_diff"], info["parity"]["int8"]["label_agreement"]

The output directory keeps the Hugging Face files (config.json, model.safetensors,
tokenizer, fastft.json) and adds ``model.onnx`` (the optimised fp32 graph, inputs
``input_ids``/``attention_mask``/``token_type_ids``, output ``logits`` — Optimum's
conventions) and, with ``int8``, ``model_int8.onnx``. What was done is recorded in
fastft.json's ``onnx`` section. The stages are composable functions:
:func:`fastft.export.onnx.export_onnx`, :func:`fastft.export.optimize.fuse_transformer`,
:func:`fastft.export.quantize.quantize_onnx`, :mod:`fastft.export.validate`.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from fastft.core.errors import FastftError, ModelError

ONNX_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
DEFAULT_CALIB_SIZE = 256
# where the graph optimisation happens: python transformer fusions, then ORT offline at this level
FP32_ORT_LEVEL = "basic"
INT8_ORT_LEVEL = "extended"
# how many of the most sensitive MatMuls to keep in fp32, tried in turn until INT8 agreement passes
FALLBACK_STEPS = (0, 1, 2, 4, 6, 8, 10, 12)


def _log(msg: str, progress: bool) -> None:
    if progress:
        print(f"fastft export: {msg}", file=sys.stderr, flush=True)


def check_export_args(*, opset: int, calib_size: int, calib_method: str, static: bool) -> None:
    from fastft.core.checks import check_int
    from fastft.export.onnx import MIN_OPSET
    from fastft.export.quantize import CALIB_METHODS

    check_int("--opset", opset)
    check_int("--calib-size", calib_size)
    if opset < MIN_OPSET:
        raise FastftError(f"--opset must be at least {MIN_OPSET} (got {opset})")
    check_opset(opset)
    if calib_size < 1:
        raise FastftError(f"--calib-size must be at least 1 (got {calib_size})")
    if static and calib_method not in CALIB_METHODS:
        raise FastftError(f"--calib-method must be one of {', '.join(CALIB_METHODS)} (got {calib_method!r})")


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
            f"--opset {opset} cannot be exported by torch {_version('torch')} and run by onnxruntime "
            f"{_version('onnxruntime')} ({_opset_ok[opset]}); use --opset 17"
        )


def _version(pkg: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "?"


def _quiet_stdout():
    from fastft.core.io import stdout_to_stderr

    return stdout_to_stderr(discard=True)


def check_classifier_dir(path: Path, meta: dict) -> None:
    """A directory with a trained classification head: fastft labels or a *ForSequenceClassification config."""
    import json

    config = json.loads((path / "config.json").read_text())
    archs = config.get("architectures") or []
    has_head = any(a.endswith("ForSequenceClassification") for a in archs)
    if not meta.get("labels") and not has_head:
        raise ModelError(
            f"{path} has no classification head or labels (a base encoder?); "
            f"fine-tune it first: fastft train --model {path} --output DIR"
        )


def _data_for(meta: dict, data: str | None):
    """(DataSplits, where from) for the recorded training data, or ``data`` if given."""
    from fastft.data import load_data

    spec = meta.get("data") or {}
    recorded = spec.get("path") or spec.get("data")
    source = data or recorded
    if not source:
        return None, None
    same = data is None or data in (spec.get("data"), spec.get("path"))
    kwargs = {"seed": spec.get("seed", 42) if same else 42}
    if same:
        kwargs.update(text_column=spec.get("text_column", "text"), label_column=spec.get("label_column", "label"))
    return load_data(source, **kwargs), source


def _load_onnx(path):
    import onnx

    return onnx.load(str(path), load_external_data=False)


def _copy_hf_files(src: Path, dst: Path) -> list[str]:
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


def export(
    model: str | os.PathLike,
    output: str | os.PathLike,
    *,
    int8: bool = False,
    static: bool = False,
    calib_data: str | None = None,
    calib_size: int = DEFAULT_CALIB_SIZE,
    calib_method: str = "minmax",
    per_channel: bool | None = None,
    opset: int = 17,
    overwrite: bool = False,
    validate: bool = True,
    recipe=None,
    agreement_limit: int | None = None,
    min_agreement: float = 0.99,
    fallback: bool = True,
    fused_attention: bool | None = None,
    progress: bool = True,
) -> dict:
    """Export a fine-tuned model directory to ONNX (optionally INT8) in ``output``.

    Args:
        model: fastft / Hugging Face classifier directory.
        output: directory to write (refused if non-empty unless ``overwrite``); written atomically.
        int8: also write ``model_int8.onnx`` (dynamic quantisation unless ``static``).
        static: calibrated static INT8 (implies ``int8``) on ``calib_size`` sampled training texts
            (``calib_data``, default the training data recorded in fastft.json).
        calib_method: minmax, entropy or percentile (static only).
        per_channel: per-channel weight scales (None: the CPU's default recipe).
        opset: ONNX opset, >= 17.
        validate: run the parity checks (fp32 logits <= 1e-4 at 6 shapes; INT8 label agreement >= 99%).
        recipe: an explicit :class:`fastft.export.quantize.Int8Recipe` (overrides the options above).
        agreement_limit: check INT8 agreement on at most this many validation texts (None: all).
        min_agreement: the INT8 label agreement required (0.99).
        fallback: below ``min_agreement``, keep the most sensitive MatMuls in fp32 and retry (recorded
            under ``int8.fallback``) instead of failing at once.
        fused_attention: write each self-attention as one com.microsoft Attention node from the
            exporter itself (:mod:`fastft.export.attention`) instead of relying on ONNX Runtime's
            pattern matching to find it. None (default): do so for the families fastft can swap
            (BERT, RoBERTa, ELECTRA, DistilBERT), plain export otherwise.

    Returns the ``onnx`` section written to fastft.json (parity results included).
    """
    from dataclasses import replace

    from fastft.core.checks import check_float, check_int
    from fastft.core.io import atomic_output_dir, check_output_dir, scratch_dir
    from fastft.core.system import versions
    from fastft.data.collate import model_max_positions
    from fastft.export.onnx import export_onnx, model_input_names
    from fastft.export.optimize import fuse_transformer, op_counts, ort_offline_optimize
    from fastft.export.quantize import (
        Int8Recipe,
        TextCalibrationReader,
        recipe_from_options,
    )
    from fastft.export.validate import fp32_parity, int8_agreement, session
    from fastft.models import read_meta, resolve_model, write_meta
    from fastft.train.evaluate import align_labels, load_model_dir, model_labels

    check_float("min_agreement", min_agreement, lo=0, hi=1)
    check_int("agreement_limit", agreement_limit, lo=1, optional=True)
    int8 = int8 or static or recipe is not None
    if recipe is not None and not isinstance(recipe, Int8Recipe):
        raise FastftError("recipe must be a fastft.export.quantize.Int8Recipe")
    static = static or (recipe is not None and recipe.mode == "static")
    check_export_args(opset=opset, calib_size=calib_size, calib_method=calib_method, static=static)
    src = resolve_model(model)
    if not isinstance(src, Path):
        raise ModelError(f"model {model!r} is not a local directory; export needs a fine-tuned model directory")
    meta = read_meta(src)
    check_classifier_dir(src, meta)
    out = check_output_dir(output, overwrite, inputs=(src, calib_data))

    splits = source = None
    if int8 and (validate or static):
        try:
            splits, source = _data_for(meta, calib_data)
        except FastftError as exc:
            raise FastftError(
                f"cannot load the data for INT8 {'calibration' if static else 'validation'}: {exc}"
            ) from None
        if splits is None and static:
            raise FastftError(f"--static needs calibration data: {src} records no training data; pass --calib-data")
        if splits is None:
            raise FastftError(f"cannot check INT8 parity: {src} records no training data; pass --calib-data DATA")

    t0 = time.perf_counter()
    _log(f"loading {src}", progress)
    net, tokenizer, _, _ = load_model_dir(src)
    names = model_input_names(net)
    max_positions = model_max_positions(net.config) or 512
    serve_length = int(meta.get("max_length") or max_positions)
    info: dict = {"file": ONNX_FILE}

    with scratch_dir("export") as scratch, atomic_output_dir(out, overwrite, inputs=(src, calib_data)) as tmp:
        scratch = Path(scratch)
        _copy_hf_files(src, tmp)
        _log(f"exporting to ONNX (opset {opset})", progress)
        plain = scratch / "plain.onnx"
        if fused_attention is None:
            from fastft.swap import SUPPORTED_MODEL_TYPES

            fused_attention = getattr(net.config, "model_type", None) in SUPPORTED_MODEL_TYPES
        fallback_reason = None
        if fused_attention:
            from fastft.export.attention import try_export_fused_onnx

            info["export"], fallback_reason = try_export_fused_onnx(net, plain, input_names=names, opset=opset)
            if fallback_reason:
                _log(f"fused attention unavailable ({fallback_reason}): writing the plain graph", True)
        if info.get("export") is None:
            info["export"] = export_onnx(net, plain, input_names=names, opset=opset)
            if fallback_reason:
                info["export"]["fused_attention_fallback"] = fallback_reason

        _log("optimising the graph for ONNX Runtime", progress)
        fused = scratch / "fused.onnx"
        opt = {
            "fusions": fuse_transformer(plain, fused, net.config),
            "ort_offline": ort_offline_optimize(fused, tmp / ONNX_FILE, FP32_ORT_LEVEL),
            # the graph is saved optimised: opening it at "basic" redoes nothing expensive
            "runtime_graph_optimization_level": "basic",
            "ops": op_counts(tmp / ONNX_FILE),
        }
        info["optimization"] = opt
        info["parity"] = {}
        if validate:
            _log(f"checking fp32 parity at {len(names)} inputs, shapes up to {max_positions}", progress)
            info["parity"]["fp32"] = fp32_parity(net, tmp / ONNX_FILE, names, max_positions)

        if int8:
            from fastft.core.system import cpu_info

            cpu = cpu_info()
            r = recipe or recipe_from_options(
                cpu, static=static, per_channel=per_channel, calib_method=calib_method, calib_size=calib_size
            )
            if recipe is None and static:
                r = replace(r, calib_size=calib_size, calib_method=calib_method)
            reader = None
            if r.mode == "static":
                import random

                train = splits.train
                rng = random.Random(meta.get("data", {}).get("seed", 42))
                idx = sorted(rng.sample(range(len(train)), min(r.calib_size, len(train))))
                reader = TextCalibrationReader(tokenizer, [train.texts[i] for i in idx], names, serve_length)
                _log(
                    f"static INT8: calibrating ({r.calib_method}) on {len(idx)} training texts from {source}", progress
                )
            else:
                _log(f"dynamic INT8 ({r.name})", progress)
            from fastft.export.quantize import fallback_order, quantize_onnx

            part = texts = labels = fp32_sess = None
            if validate:
                part = align_labels(splits.validation, splits.labels, model_labels(net))
                texts, labels = part.texts, part.labels
                if agreement_limit:
                    texts, labels = texts[:agreement_limit], labels[:agreement_limit]
                fp32_sess = session(tmp / ONNX_FILE)
            # Accuracy fallback: when INT8 labels agree with fp32 on fewer than min_agreement of the
            # validation texts, keep the most sensitive MatMuls in fp32 (fallback_order) and retry.
            order = fallback_order(_load_onnx(fused)) if validate and fallback else []
            steps = [k for k in FALLBACK_STEPS if k <= len(order) // 2] if order else [0]
            attempts = []
            for k in steps:
                rk = replace(r, exclude=tuple(order[:k])) if k else r
                qtmp = scratch / f"int8-{k}.onnx"
                q = quantize_onnx(fused, qtmp, rk, reader)
                qfinal = scratch / f"int8-{k}-ext.onnx"
                q["ort_offline"] = ort_offline_optimize(qtmp, qfinal, INT8_ORT_LEVEL)
                if not validate:
                    break
                _log(
                    f"checking INT8 label agreement on {len(texts)} validation texts"
                    + (f" ({k} MatMuls kept in fp32)" if k else ""),
                    progress,
                )
                agree = int8_agreement(
                    fp32_sess, session(qfinal), tokenizer, texts, labels, names, serve_length, min_agreement=0.0
                )
                agree["min_agreement"] = min_agreement
                agree["passed"] = agree["label_agreement"] >= min_agreement
                attempts.append(
                    {
                        "fp32_nodes": k,
                        "label_agreement": agree["label_agreement"],
                        "accuracy_change": agree.get("accuracy_change"),
                    }
                )
                if agree["passed"]:
                    break
            if validate and not agree["passed"]:
                raise FastftError(
                    f"INT8 parity failed: labels agree with fp32 on {agree['label_agreement']:.1%} of "
                    f"{len(texts)} validation texts (< {min_agreement:.0%}) even with "
                    f"{steps[-1]} MatMuls kept in fp32; try --static or export without --int8"
                )
            shutil.copy2(qfinal, tmp / INT8_FILE)
            q["providers"] = q["ort_offline"]["providers"]
            q["runtime_graph_optimization_level"] = "basic"
            q["ops"] = op_counts(tmp / INT8_FILE)
            q["cpu"] = {
                "model": cpu.get("model"),
                "vnni": cpu.get("vnni"),
                "flags": [f for f in cpu.get("flags", []) if "avx" in f or "vnni" in f],
            }
            q["file"] = INT8_FILE
            if attempts:
                q["fallback"] = {
                    "order": "the first layer's MatMuls, then FFN output, then FFN input MatMuls of the next layers",
                    "attempts": attempts,
                    "fp32_nodes": list(rk.exclude),
                }
            info["int8"] = q
            if validate:
                info["parity"]["int8"] = agree
        info["export_time_s"] = round(time.perf_counter() - t0, 2)
        info["versions"] = versions()
        new_meta = dict(meta)
        new_meta.setdefault("labels", model_labels(net))
        new_meta.setdefault("task", "sequence-classification")
        new_meta.setdefault("max_length", serve_length)
        new_meta["onnx"] = info
        new_meta["history"] = [
            *meta.get("history", []),
            {
                "stage": "export",
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "source": str(src),
                "int8": info.get("int8", {}).get("recipe"),
            },
        ]
        write_meta(tmp, new_meta)
    _log(f"wrote {out} in {info['export_time_s']} s", progress)
    return info


from fastft import callable_package  # noqa: E402

callable_package(__name__, "fastft.export:export")
