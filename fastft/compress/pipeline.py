"""The ``compress`` pipeline: distill -> prune -> quantize -> report.

    report = fastft.compress("runs/teacher", CompressConfig(layers=3, quantize="int8", output="runs/small"))

Every bad input (no task head, data labels unlike the teacher's, --layers out of range,
prune fractions, --int8 with --fp16) is a one-line FastftError raised before any training.
Each stage is exported to ONNX in a work directory, evaluated on the test split with ONNX
Runtime (the file that is served) and timed; the output is the last stage's model directory
(HF files, model.onnx, model_int8.onnx, fastft.json) plus report.json and report.md.
The single stages (``fastft.distill`` / ``prune`` / ``quantize``) are :func:`run_stage`.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from fastft.compress import quantize as cq
from fastft.compress import report as rep
from fastft.compress import token_kd as tkd
from fastft.compress.config import DEFAULT_OUTPUT, CompressConfig, as_compress_config
from fastft.compress.context import Context, log, preflight, prepare, save_model_dir
from fastft.compress.output import onnx_section, write_compress_meta
from fastft.compress.prune import count_params, flops
from fastft.compress.stages import StageResult, do_distill, do_prune, do_quantize
from fastft.core.checks import check_path, given_fields
from fastft.core.errors import FastftError, ModelError
from fastft.core.io import atomic_output_dir, check_output_dir, claim_output, scratch_dir, work_prefix
from fastft.core.schema import read_meta, write_meta
from fastft.core.system import physical_cores, torch_threads_kept
from fastft.models import load_classifier
from fastft.models.task import model_task
from fastft.train.metrics import classification_metrics


def compress(model=None, config: CompressConfig | None = None, **overrides) -> dict:
    """Run distill -> prune -> quantize on the teacher ``model`` (None: the built-in default teacher).

    Writes ``config.output`` (a normal fastft model directory plus report.json/report.md) and
    returns the report.
    """
    cfg = as_compress_config(config).updated(**overrides)
    cfg.validate()
    cfg.check_unused()
    inputs = (model, cfg.data, cfg.distill.student)
    check_output_dir(cfg.output, cfg.overwrite, inputs=inputs)
    with claim_output(cfg.output), torch_threads_kept():  # a second run for this output is refused from now on
        return _compress(model, cfg)


def _compress(model, cfg: CompressConfig) -> dict:
    t_start = time.perf_counter()
    preflight(model, cfg)
    ctx = prepare(model, cfg)
    out_parent = Path(cfg.output).expanduser().resolve().parent
    out_parent.mkdir(parents=True, exist_ok=True)
    # the pid in the name lets the next run remove it if this one is killed (fastft.core.io.clean_stale)
    work = Path(tempfile.mkdtemp(prefix="." + work_prefix("compress"), dir=out_parent))
    try:
        report = _pipeline(ctx, work, t_start)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _pipeline(ctx: Context, work: Path, t_start: float) -> dict:
    cfg = ctx.cfg
    stages, infos, timings = [], {}, {}

    test_logits = {}  # onnx file -> test-split logits (label agreement, shifted splits)
    evaluated_on = {}  # onnx file -> what ran its attention while it was scored
    shift = rep.shift_subsets(ctx)

    def evaluate_onnx(path: Path, served: bool = True) -> dict:
        """The stage's scores on the validation and test splits, its file run as ``fastft.load``
        serves it (the teacher, ``served=False``: on ORT's own attention, as it is timed)."""
        import numpy as np

        from fastft.runtime.ort_attention import describe

        sess, swapped = cq.served(path, cfg.threads, ort_attention="auto" if served else "onnxruntime")
        evaluated_on[path] = describe(swapped)
        if ctx.token:  # entity metrics (seqeval); the stage's score is the entity F1
            return {split: tkd.ort_entity_metrics(sess, ctx, split) for split in ("validation", "test")}
        out = {}
        for split in ("validation", "test"):
            logits = cq.ort_logits(sess, ctx.ids[split], ctx.pad_id, cq.scoring_batch(path))
            p = np.exp(logits - logits.max(1, keepdims=True))
            out[split] = classification_metrics(ctx.y[split], p / p.sum(1, keepdims=True), logits.shape[1])
            if split == "test":
                test_logits[path] = logits
        return out

    score = "f1" if ctx.token else "accuracy"  # the stage's score: entity F1 for token classification

    def add_stage(name: str, net, model_dir: Path, onnx_file: Path, metrics: dict, extra: dict | None = None):
        token = {"entity": {s: metrics[s] for s in ("validation", "test")}} if ctx.token else {}
        stages.append(
            {
                "name": name,
                "parameters": count_params(net),
                "file": onnx_file,
                "flops_128": flops(net, 128),
                "accuracy": metrics["test"][score],
                "validation_accuracy": metrics["validation"][score],
                **token,
                **(
                    rep.shift_accuracy(shift, test_logits[onnx_file], ctx.y["test"]) if onnx_file in test_logits else {}
                ),
                **(extra or {}),
            }
        )
        log(
            ctx,
            f"{name}: test {rep.metric_name(ctx.task)} {metrics['test'][score]:.4f}, "
            f"{count_params(net) / 1e6:.2f}M parameters",
        )

    # teacher
    t0 = time.perf_counter()
    tdir = work / "teacher"
    tdir.mkdir()
    t_onnx = tdir / "model.onnx"
    t_export = cq.export_onnx(ctx.teacher, t_onnx)
    t_metrics = evaluate_onnx(t_onnx, served=False)
    if not t_metrics["test"][score]:  # nothing to retain: every stage's share would be undefined
        raise FastftError(
            f"the teacher {ctx.teacher_dir} scores 0 on the test split ({rep.metric_name(ctx.task)}): there is "
            "nothing for a student to keep; train a teacher that learns the task first"
        )
    add_stage("teacher", ctx.teacher, ctx.teacher_dir, t_onnx, t_metrics)
    timings["teacher_export_eval_s"] = round(time.perf_counter() - t0, 2)

    net, last_dir, last_onnx, last_metrics = ctx.teacher, ctx.teacher_dir, t_onnx, t_metrics
    # with --prune-first the distilled stage is already pruned: a pruned stage only for sparsity
    prune_stage = cfg.pruning and not (cfg.prune.prune_first and cfg.prune.sparsity == 0)
    for name, enabled in (("distilled", cfg.distill.enabled), ("pruned", prune_stage)):
        if not enabled:
            continue
        t0 = time.perf_counter()
        res = (
            do_distill(ctx)
            if name == "distilled"
            else do_prune(ctx, net if net is not ctx.teacher else copy.deepcopy(ctx.teacher))
        )
        infos[name] = res.info
        net = res.model
        last_dir = save_model_dir(ctx, net, work / name, name, {})
        last_onnx = last_dir / "model.onnx"
        infos[name]["export"] = cq.export_onnx(net, last_onnx)
        last_metrics = evaluate_onnx(last_onnx)
        add_stage(name, net, last_dir, last_onnx, last_metrics)
        timings[f"{name}_s"] = round(time.perf_counter() - t0, 2)

    final_file, final_metrics, qinfo = last_onnx, last_metrics, None
    if cfg.quantize.mode:
        t0 = time.perf_counter()
        qdir = work / "quantized"
        qdir.mkdir()
        q = do_quantize(ctx, last_onnx, qdir, base_acc=last_metrics["validation"][score])
        final_file, qinfo = q.path, q.info
        final_metrics = evaluate_onnx(final_file)
        # per-row label agreement with the fp32 stage (sequence classification; token tasks report entity F1)
        both = final_file in test_logits and last_onnx in test_logits
        agree = rep.agreement(test_logits[final_file], test_logits[last_onnx]) if both else None
        qinfo.update(label_agreement_fp32_test=agree, fp32_nodes=len(qinfo.get("excluded_nodes") or []))
        qinfo["fallback_fired"] = qinfo["fp32_nodes"] > 0
        add_stage(
            "quantized",
            net,
            last_dir,
            final_file,
            final_metrics,
            {"precision": cfg.quantize.mode, "agreement_fp32": agree},
        )
        timings["quantized_s"] = round(time.perf_counter() - t0, 2)

    latency = None
    if cfg.bench:
        t0 = time.perf_counter()
        latency = rep.measure_latency(
            {s["name"]: s["file"] for s in stages},
            runs=cfg.bench_runs,
            threads=cfg.threads,
            progress=cfg.progress,
            max_positions=ctx.teacher.config.max_position_embeddings,
            served=[s["name"] for s in stages[1:]],  # every stage as served; the teacher is the baseline
        )
        timings["latency_s"] = round(time.perf_counter() - t0, 2)
    rows = rep.build_rows(stages, latency)
    verdict = rep.verdict(rows, cfg.target_retained, rep.metric_name(ctx.task))
    notes = []
    if cfg.prune.sparsity > 0:
        notes.append(
            f"unstructured magnitude pruning: {infos['pruned']['magnitude']['measured_sparsity']:.1%} of "
            "encoder Linear weights are zero, stored dense: no size, FLOP or latency gain on dense kernels"
        )
    if cfg.quantize.mode == "fp16":
        notes.append("fp16 targets GPUs; its CPU latency here is not representative (ORT CPU casts to fp32)")
    if cfg.quantize.mode:
        notes.append(
            "the quantized row has the pruned/distilled model's parameter count and FLOPs, run as INT8/FP16 ops"
        )
    report = {
        "task": ctx.task,
        "metric": rep.metric_name(ctx.task),
        "teacher": str(ctx.teacher_dir),
        "data": ctx.data_spec.get("data"),
        "max_length": ctx.max_length,
        "test_rows": len(ctx.ids["test"]),
        "labels": ctx.labels,
        "stages": rows,
        "verdict": verdict,
        "quantization": qinfo,
        "shift": {k: {"rows": len(v), "definition": rep.SHIFT_DEFINITIONS[k]} for k, v in shift.items()},
        "distillation": infos.get("distilled"),
        "pruning": infos.get("pruned"),
        "config": cfg.to_dict(),
        "timings": timings,
        # scores as served: every stage after the teacher with fastft's attention in ORT where built
        "accuracy_settings": {"attention": {s["name"]: evaluated_on.get(s["file"]) for s in stages}},
        "latency_settings": {
            "runs": cfg.bench_runs,
            "threads": cfg.threads or physical_cores(),
            "batch": 1,
            "spinning": False,
            "interleaved": True,
            "attention": {name: rep.attention_of(lat) for name, lat in (latency or {}).items()},
        }
        if cfg.bench
        else None,
        "notes": notes,
    }

    # the output directory: the last stage's model directory + its ONNX files + the report
    with atomic_output_dir(cfg.output, cfg.overwrite, inputs=(ctx.teacher_dir, cfg.data, cfg.distill.student)) as tmp:
        if last_dir == ctx.teacher_dir:
            save_model_dir(ctx, net, tmp, "quantized", {})
        else:
            for f in last_dir.iterdir():
                if not f.name.endswith(".fused.onnx"):
                    shutil.copy2(f, tmp / f.name)
        shutil.copy2(last_onnx, tmp / "model.onnx")
        fp32_info = (infos.get("pruned") or infos.get("distilled") or {}).get("export") or t_export
        if final_file != last_onnx:
            shutil.copy2(final_file, tmp / final_file.name)
        write_compress_meta(
            ctx,
            tmp,
            onnx_section(fp32_info, qinfo if final_file != last_onnx else None, cfg.quantize.mode),
            final_metrics,
            report,
        )
        report["timings"]["total_s"] = round(time.perf_counter() - t_start, 2)
        report["output"] = str(Path(cfg.output).resolve())
        rep.write(tmp, report)
    return report


def _check_pruned_source(model, teacher) -> None:
    """prune(model, teacher=...): ``model`` must be a local model directory of the teacher's task."""
    from fastft.models import resolve_model

    path = resolve_model(model)
    if not isinstance(path, Path) or not (path / "config.json").is_file():
        raise ModelError(f"prune: model {model!r} is not a local model directory (config.json)")
    theirs = resolve_model(teacher)
    if isinstance(theirs, Path) and model_task(path) != model_task(theirs):
        raise ModelError(
            f"prune: {model} is a {model_task(path)} model and its teacher {teacher} a {model_task(theirs)} one"
        )


# the fields one stage reads beyond its own config (recovery trains with distillation's settings
# on the same rows: training texts, their perturbed copies, --transfer texts; quantization scores
# and calibrates at the max length)
_STAGE_READS = {
    "distill": {"distill": None},
    "prune": {
        "prune": None,
        "distill": {"lr", "batch_size", "max_length", "temperature", "kd_loss", "alpha", "hidden_weight",
                    "weight_decay", "dropout", "ema", "warmup_ratio", "augment", "transfer", "transfer_size"},
    },
    "quantize": {
        "quantize": {"mode", "static", "calib_size", "calib_method", "per_channel", "accuracy_budget", "embeddings"},
        "distill": {"max_length"},
    },
}  # fmt: skip


def _check_stage_fields(stage: str, cfg: CompressConfig) -> None:
    """FastftError for settings one stage does not read (another stage's, or benchmarking's): they
    were accepted, ignored and recorded as given (fastft.compress refuses its own unused ones)."""
    reads = _STAGE_READS[stage]
    for part in ("distill", "prune", "quantize"):
        for name in given_fields(getattr(cfg, part)):
            if name == "enabled" or (part in reads and (reads[part] is None or name in reads[part])):
                continue
            raise FastftError(
                f"{part}.{name} is not used by fastft.{stage}: it runs one stage (fastft.compress runs them all)"
            )
    for name in given_fields(cfg, "target_retained", "bench", "bench_runs"):
        raise FastftError(f"{name} is not used by fastft.{stage}: a single stage times nothing")
    if stage == "quantize" and cfg.quantize.mode is None:
        raise FastftError("fastft.quantize needs quantize mode 'int8' or 'fp16' (mode=None quantizes nothing)")
    unused = cfg.quantize.unused_fields() if stage == "quantize" else []
    if unused:
        raise FastftError(f"quantize.{unused[0][0]} is not used by fastft.quantize: {unused[0][1]}")


def run_stage(
    stage: str, model, config: CompressConfig | None = None, *, output=None, teacher=None, **overrides
) -> StageResult:
    """``fastft.distill`` / ``fastft.prune`` / ``fastft.quantize``: one stage on a model directory.

    prune: ``teacher`` (default: ``model`` itself) supplies the recovery targets.
    """
    if model is None:  # compress trains the default teacher for None; a single stage needs its model
        raise FastftError(f"fastft.{stage} needs a model directory (model=None)")
    check_path("model", model, "a model directory")
    check_path("output", output, "a directory", optional=True)
    cfg = as_compress_config(config).updated(**overrides)
    cfg.validate()  # types and ranges named by their flags, before any comparison below uses them
    _check_stage_fields(stage, cfg)
    if output is None and cfg.output not in (None, DEFAULT_OUTPUT):
        output = cfg.output  # CompressConfig(output=DIR) names it as well as output=DIR (not the CLI's default)
    no_pruning = replace(cfg.prune, prune_heads=0.0, prune_ffn=0.0, sparsity=0.0)
    if stage == "distill":
        cfg = cfg.updated(distill=True, prune=no_pruning, quantize=None)
    elif stage == "prune":
        cfg = cfg.updated(distill=False, quantize=None)
        if not cfg.pruning:
            raise FastftError("prune: set prune_heads, prune_ffn or sparsity above 0")
    elif stage == "quantize":
        cfg = cfg.updated(distill=False, prune=no_pruning, quantize=cfg.quantize.mode or "int8")
    if output is not None:
        check_output_dir(output, cfg.overwrite, inputs=(model, teacher, cfg.data))
    elif stage == "quantize":
        raise FastftError("quantize: an output directory is required (output=DIR)")
    with claim_output(output) if output is not None else contextlib.nullcontext(), torch_threads_kept():
        return _run_stage(stage, model, cfg, output, teacher)


def _run_stage(stage: str, model, cfg: CompressConfig, output, teacher) -> StageResult:
    if stage == "prune" and teacher is not None:  # the model pruned is not the one prepare() checks
        _check_pruned_source(model, teacher)
    ctx = prepare(teacher if (stage == "prune" and teacher is not None) else model, cfg)
    if stage == "distill":
        res = do_distill(ctx)
    elif stage == "prune":
        net = copy.deepcopy(ctx.teacher) if teacher is None else load_classifier(model, task=model_task(model)).eval()
        res = do_prune(ctx, net)
    else:
        res = StageResult("quantized", None, None, {})
    if output is None and stage != "quantize":
        return res
    scratch = scratch_dir("stage")
    work = Path(scratch.name)
    try:
        with atomic_output_dir(output or work / "out", cfg.overwrite, inputs=(model, teacher, cfg.data)) as tmp:
            net = res.model if res.model is not None else ctx.teacher
            save_model_dir(ctx, net, tmp, res.name, {k: v for k, v in res.info.items() if k != "history"})
            fp32_info = cq.export_onnx(net, tmp / "model.onnx")
            qinfo = None
            if stage == "quantize":
                qinfo = do_quantize(ctx, tmp / "model.onnx", tmp).info
                res.info = qinfo
            cq.fused_path(tmp / "model.onnx").unlink(missing_ok=True)
            meta = read_meta(tmp)
            meta["onnx"] = onnx_section(fp32_info, qinfo, cfg.quantize.mode)
            if qinfo:
                meta["compress"] = {"stage": "quantized", **qinfo}
            write_meta(tmp, meta)
        res.dir = Path(output).resolve() if output is not None else None
    finally:
        scratch.cleanup()
    return res


def distill(model, config=None, **overrides) -> StageResult:
    """Distil the teacher ``model`` (directory or alias) into a student; see :class:`DistillConfig`.

        res = fastft.distill("runs/teacher", DistillConfig(layers=3, epochs=2), output="runs/student")
        res.model, res.info        # the student classifier, what was done

    Returns a :class:`StageResult`; saved to ``output`` when given.
    """
    return run_stage("distill", model, config, **overrides)


def prune(model, config=None, **overrides) -> StageResult:
    """Prune ``model`` (directory or alias) with recovery distillation from it; see :class:`PruneConfig`.

        res = fastft.prune("runs/student", PruneConfig(prune_ffn=0.5, prune_heads=0.25))

    Returns a :class:`StageResult`; saved to ``output`` when given.
    """
    return run_stage("prune", model, config, **overrides)


def quantize(model, config=None, **overrides) -> StageResult:
    """Quantize the model directory ``model`` (INT8 or FP16 ONNX); see :class:`QuantizeConfig`.

        res = fastft.quantize("runs/student", QuantizeConfig(static=True), output="runs/student-int8")

    Returns a :class:`StageResult`; the output directory holds model.onnx (fp32) and
    model_int8.onnx (or model_fp16.onnx).
    """
    return run_stage("quantize", model, config, **overrides)
