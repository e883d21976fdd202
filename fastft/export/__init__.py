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

from fastft.core.checks import arg, check_bool, check_float, check_int, check_path
from fastft.core.errors import FastftError, ModelError
from fastft.core.io import atomic_output_dir, check_output_dir, scratch_dir
from fastft.core.schema import TOKEN_CLASSIFICATION, read_meta, task_of, write_meta
from fastft.core.system import cpu_info, versions
from fastft.data.collate import model_max_positions
from fastft.data.labels import align_labels, align_tag_ids
from fastft.export import validate as fx_validate  # its functions looked up at call time (patchable)
from fastft.export.checks import (
    CALIB_DEFAULTS,
    check_classifier_dir,
    check_export_args,
    check_opset,
    copy_hf_files,
    data_for,
    unused_calibration,
)
from fastft.export.int8 import KLSensitivity
from fastft.export.onnx import model_input_names
from fastft.export.optimize import op_counts
from fastft.export.quantize import Int8Recipe, TextCalibrationReader, recipe_from_options, select_nodes
from fastft.export.stages import int8_stage, write_fp32
from fastft.models import resolve_model
from fastft.models.model_dir import load_model_dir, model_labels
from fastft.models.task import model_task

ONNX_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
SENSITIVITY_TEXTS = 256  # validation texts the INT8 fallback ranks MatMuls on (as fastft compress)


def _log(msg: str, progress: bool) -> None:
    if progress:
        print(f"fastft export: {msg}", file=sys.stderr, flush=True)


def _int8(
    net,
    tokenizer,
    meta,
    splits,
    source,
    fp32_file,
    fused,
    scratch,
    names,
    serve_length,
    *,
    recipe,
    static,
    per_channel,
    calib_method,
    calib_size,
    validate,
    agreement_limit,
    min_agreement,
    fallback,
    progress,
) -> tuple[dict, dict | None]:
    """The INT8 stage of :func:`export`: recipe, calibration, quantisation and the agreement fallback.

    Returns (the ``int8`` section with ``path`` of the chosen graph, the agreement check or None).
    """
    import random
    from dataclasses import replace

    cpu = cpu_info()
    r = recipe or recipe_from_options(
        cpu, static=static, per_channel=per_channel, calib_method=calib_method, calib_size=calib_size
    )
    if recipe is None and static:
        r = replace(r, calib_size=calib_size, calib_method=calib_method)
    reader = None
    if r.mode == "static":
        train = splits.train
        rng = random.Random(meta.get("data", {}).get("seed", 42))
        idx = sorted(rng.sample(range(len(train)), min(r.calib_size, len(train))))
        reader = TextCalibrationReader(tokenizer, [train.texts[i] for i in idx], names, serve_length)
        _log(f"static INT8: calibrating ({r.calib_method}) on {len(idx)} training texts from {source}", progress)
    else:
        _log(f"dynamic INT8 ({r.name})", progress)
    check = None
    if validate:
        per_token = task_of(meta) == TOKEN_CLASSIFICATION
        if per_token:  # sentences as word lists, gold tags re-mapped to the model's label ids
            part = align_tag_ids(splits.validation, splits.labels, model_labels(net))
            texts, labels = part.tokens, part.tags
        else:
            part = align_labels(splits.validation, splits.labels, model_labels(net))
            texts, labels = part.texts, part.labels
        if agreement_limit:
            texts, labels = texts[:agreement_limit], labels[:agreement_limit]
        fp32_sess = fx_validate.session(fp32_file)

        def check(path, exclude):
            # label agreement with fp32 on the validation texts (the accuracy fallback's test)
            k = len(exclude)
            unit = "sentences, token by token" if per_token else "texts"
            _log(
                f"checking INT8 label agreement on {len(texts)} validation {unit}"
                + (f" ({k} MatMuls kept in fp32)" if k else ""),
                progress,
            )
            int8_sess = fx_validate.session(path)
            if per_token:
                agree = fx_validate.int8_token_agreement(fp32_sess, int8_sess, tokenizer, texts, labels, serve_length)
            else:
                agree = fx_validate.int8_agreement(fp32_sess, int8_sess, tokenizer, texts, labels, names, serve_length)
            agree["min_agreement"] = min_agreement
            agree["passed"] = agree["label_agreement"] >= min_agreement
            return agree["passed"], agree

    policy = None
    if validate and fallback:  # rank by the KL of each node's logits from fp32's on a subset
        import onnx

        sub = texts[:SENSITIVITY_TEXTS]

        def logits_of(path):
            sess = fx_validate.session(path)
            if per_token:  # every non-padding token's logits, one row each
                import numpy as np

                return np.concatenate(fx_validate.token_onnx_logits(sess, tokenizer, sub, serve_length)[0], axis=0)
            return fx_validate.onnx_logits(sess, tokenizer, sub, names, serve_length)

        nodes = select_nodes(onnx.load(str(fused), load_external_data=False), r.scope)[0]
        policy = KLSensitivity(nodes, lambda: logits_of(fp32_file), logits_of, progress=progress)
    res = int8_stage(fused, scratch, r, reader, check=check, policy=policy)
    agree = res.check
    if validate and not agree["passed"]:
        raise FastftError(
            f"INT8 parity failed: labels agree with fp32 on {agree['label_agreement']:.1%} of "
            + (
                f"{agree['tokens']} tokens of {len(texts)} validation sentences"
                if per_token
                else f"{len(texts)} validation texts"
            )
            + f" (< {min_agreement:.1%}) even with "
            f"{len(res.fp32_nodes)} MatMuls kept in fp32; try {arg('static')} or export without {arg('int8')}"
        )
    q = dict(res.info)
    q["path"] = res.path
    q["providers"] = q["ort_offline"]["providers"]
    q["runtime_graph_optimization_level"] = "basic"
    q["cpu"] = {
        "model": cpu.get("model"),
        "vnni": cpu.get("vnni"),
        "flags": [f for f in cpu.get("flags", []) if "avx" in f or "vnni" in f],
    }
    q["file"] = INT8_FILE
    if res.attempts:
        q["fallback"] = {
            "policy": f"KL sensitivity: each MatMul quantised alone, ranked by the mean KL of its logits "
            f"from fp32's on {min(len(texts), SENSITIVITY_TEXTS)} validation texts; 1, 2, 4, ... kept fp32",
            "attempts": [
                {
                    "fp32_nodes": a["fp32_nodes"],
                    "label_agreement": a["label_agreement"],
                    "accuracy_change": a.get("accuracy_change"),
                }
                for a in res.attempts
            ],
            "fp32_nodes": list(res.fp32_nodes),
            "sensitivity": res.ranking,
        }
    return q, agree


def _check_used(
    int8, static, validate, calib_data, text_column, label_column, encoding, calib_size, calib_method, int8_only: dict
):
    """Options this export would not read are refused (they were ignored, a calibration file that
    does not exist included): calib_data, its columns and the encoding are read by the INT8 check
    (validate) and by static calibration (the encoding for the recorded training data too, the
    columns only with calib_data: the recorded data's are its own); calibration settings by static
    calibration."""
    reads = int8 and (validate or static)
    if calib_data is not None and not reads:
        why = "no INT8 model is written" if not int8 else "validate=False, and dynamic INT8 calibrates nothing"
        raise FastftError(f"{arg('calib_data')} is read by the INT8 check and by static calibration: {why}")
    if encoding != "utf-8" and not reads:
        raise FastftError(f"{arg('encoding')} reads the INT8 check's or calibration's data: this export reads none")
    given = [n for n, v in (("text_column", text_column), ("label_column", label_column)) if v]
    if given and calib_data is None:
        raise FastftError(f"{arg(given[0])} is read with {arg('calib_data')}: give calib_data too")
    unused = unused_calibration(static, calib_size=calib_size, calib_method=calib_method)
    if unused:  # dynamic INT8 calibrates nothing
        raise FastftError(f"{arg(unused[0])} sets static calibration: it needs {arg('static')}")
    given = [name for name, set_ in int8_only.items() if set_]  # ``int8_only``: name -> given
    if not int8 and given:
        raise FastftError(f"{arg(given[0])} is for the INT8 model: it needs {arg('int8')}")


def export(
    model: str | os.PathLike,
    output: str | os.PathLike,
    *,
    int8: bool = False,
    static: bool = False,
    calib_data: str | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    encoding: str = "utf-8",
    calib_size: int = CALIB_DEFAULTS["calib_size"],
    calib_method: str = CALIB_DEFAULTS["calib_method"],
    per_channel: bool | None = None,
    opset: int = 17,
    overwrite: bool = False,
    validate: bool = True,
    recipe=None,
    agreement_limit: int | None = None,
    min_agreement: float = fx_validate.MIN_AGREEMENT,
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
        text_column, label_column, encoding: ``calib_data``'s columns (a token file: its words and
            tags) and encoding [text, label, utf-8; the recorded ones for the training data].
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
            (BERT, RoBERTa, XLM-R, CamemBERT, ELECTRA, DistilBERT), plain export otherwise.

    Returns the ``onnx`` section written to fastft.json (parity results included).
    """
    check_path("model", model, "a model directory")
    check_path("output", output, "a directory")
    check_path("calib_data", calib_data, "a dataset name or a data file", optional=True)
    check_float("min_agreement", min_agreement, lo=0, hi=1)
    check_int("agreement_limit", agreement_limit, lo=1, optional=True)
    flags = {"int8": int8, "static": static, "overwrite": overwrite, "validate": validate, "fallback": fallback}
    for name, value in {**flags, "progress": progress}.items():
        check_bool(name, value)
    check_bool("per_channel", per_channel, optional=True)
    check_bool("fused_attention", fused_attention, optional=True)
    int8 = int8 or static or recipe is not None
    if recipe is not None and not isinstance(recipe, Int8Recipe):
        raise FastftError("recipe must be a fastft.export.quantize.Int8Recipe")
    static = static or (recipe is not None and recipe.mode == "static")
    check_export_args(opset=opset, calib_size=calib_size, calib_method=calib_method, static=static)
    int8_only = {
        "per_channel": per_channel is not None,
        "min_agreement": min_agreement != fx_validate.MIN_AGREEMENT,
        "agreement_limit": agreement_limit is not None,
        "fallback": fallback is not True,
    }
    _check_used(
        int8, static, validate, calib_data, text_column, label_column, encoding, calib_size, calib_method, int8_only
    )
    src = resolve_model(model)
    if not isinstance(src, Path):
        raise ModelError(f"model {model!r} is not a local directory; export needs a fine-tuned model directory")
    meta = read_meta(src)
    meta.setdefault("task", model_task(src))  # a transformers/Optimum directory: by its config's head
    check_classifier_dir(src, meta)
    out = check_output_dir(output, overwrite, inputs=(src, calib_data))

    splits = source = None
    if int8 and (validate or static):
        try:
            splits, source = data_for(meta, calib_data, text_column, label_column, encoding)
        except FastftError as exc:
            raise FastftError(
                f"cannot load the data for INT8 {'calibration' if static else 'validation'}: {exc}"
            ) from None
        if splits is None and static:
            raise FastftError(
                f"{arg('static')} needs calibration data: {src} records no training data; pass {arg('calib_data')}"
            )
        if splits is None:
            raise FastftError(f"cannot check INT8 parity: {src} records no training data; pass {arg('calib_data')}")

    t0 = time.perf_counter()
    _log(f"loading {src}", progress)
    net, tokenizer, _, _ = load_model_dir(src)
    names = model_input_names(net)
    max_positions = model_max_positions(net.config) or 512
    serve_length = int(meta.get("max_length") or max_positions)
    info: dict = {"file": ONNX_FILE}

    with scratch_dir("export") as scratch, atomic_output_dir(out, overwrite, inputs=(src, calib_data)) as tmp:
        scratch = Path(scratch)
        copy_hf_files(src, tmp)
        _log(f"exporting to ONNX (opset {opset}), then optimising the graph for ONNX Runtime", progress)
        if fused_attention is None:
            from fastft.swap import SUPPORTED_MODEL_TYPES  # swap imports export.attention: not at the top

            fused_attention = getattr(net.config, "model_type", None) in SUPPORTED_MODEL_TYPES
        fused = scratch / "fused.onnx"
        fp32 = write_fp32(
            net,
            tmp / ONNX_FILE,
            fused,
            scratch / "plain.onnx",
            input_names=names,
            opset=opset,
            fused_attention=fused_attention,
        )
        info["export"] = fp32.pop("export")
        info["optimization"] = {**fp32, "ops": op_counts(tmp / ONNX_FILE)}
        info["parity"] = {}
        if validate:
            _log(f"checking fp32 parity at {len(names)} inputs, shapes up to {max_positions}", progress)
            info["parity"]["fp32"] = fx_validate.fp32_parity(net, tmp / ONNX_FILE, names, max_positions)
        if int8:
            q, agree = _int8(
                net,
                tokenizer,
                meta,
                splits,
                source,
                tmp / ONNX_FILE,
                fused,
                scratch,
                names,
                serve_length,
                recipe=recipe,
                static=static,
                per_channel=per_channel,
                calib_method=calib_method,
                calib_size=calib_size,
                validate=validate,
                agreement_limit=agreement_limit,
                min_agreement=min_agreement,
                fallback=fallback,
                progress=progress,
            )
            shutil.copy2(q.pop("path"), tmp / INT8_FILE)
            q["ops"] = op_counts(tmp / INT8_FILE)
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


__all__ = ["INT8_FILE", "ONNX_FILE", "check_classifier_dir", "check_export_args", "check_opset", "export"]

from fastft import callable_package  # noqa: E402

callable_package(__name__, "fastft.export:export")
