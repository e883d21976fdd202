"""The ``compress`` pipeline: distill -> prune -> quantize -> report.

    report = fastft.compress("runs/teacher", CompressConfig(layers=3, quantize="int8", output="runs/small"))

Every bad input (no task head, data labels unlike the teacher's, --layers out of range,
prune fractions, --int8 with --fp16) is a one-line FastftError raised before any training.
Each stage is exported to ONNX in a work directory, evaluated on the test split with ONNX
Runtime (the file that is served) and timed; the output is the last stage's model directory
(HF files, model.onnx, model_int8.onnx, fastft.json) plus report.json and report.md.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from fastft.compress.config import TEACHER_ALIAS, CompressConfig
from fastft.core.errors import DataError, FastftError, ModelError


@dataclass
class StageResult:
    """What a stage produced: the torch model (None after quantization), its directory, its facts."""

    name: str
    model: object | None
    dir: Path | None
    info: dict = field(default_factory=dict)


@dataclass
class Context:
    teacher_dir: Path
    teacher: object
    tokenizer: object
    meta: dict
    labels: list[str]
    max_length: int
    data_spec: dict
    ids: dict  # split -> list[list[int]]
    y: dict  # split -> list[int]
    pad_id: int
    cfg: CompressConfig
    cache: object = None  # the teacher's cached outputs (distill.TeacherCache), once computed


# -- the default teacher ----------------------------------------------------------------------
DEFAULT_TEACHER = {
    "model": "minilm-l6",
    "data": "movie-snippets",
    "epochs": 3,
    "max_length": 64,
    "batch_size": 32,
    "lr": 5e-5,
    "seed": 42,
}


def default_teacher(progress: bool = True) -> Path:
    """minilm-l6 fine-tuned on movie-snippets, trained once and cached (same settings as bench_teacher.py)."""
    from fastft.core.schema import read_meta
    from fastft.models import cache_dir

    path = cache_dir() / TEACHER_ALIAS
    if (path / "config.json").is_file() and read_meta(path).get("labels"):
        return path
    import fastft

    print(
        f"fastft: no --model given and the default teacher is not cached yet: fine-tuning minilm-l6 on "
        f"movie-snippets (3 epochs, max length 64; about 30 min on 2 cores) into {path}",
        file=sys.stderr,
    )
    # written atomically into the cache: a later failure (export, quantization) leaves it cached
    fastft.train(output=str(path), overwrite=True, progress=progress, **DEFAULT_TEACHER)
    return path


# -- cheap checks before any training -------------------------------------------------------------
def preflight(model, cfg: CompressConfig) -> dict:
    """Everything ``compress`` can check in seconds before it spends minutes: the output path, the
    data (for the default teacher, before it is trained), ONNX Runtime's providers and the export
    path (a one-layer copy of the teacher's architecture exported and run, or for the default
    teacher, of the model it will be fine-tuned from). FastftError on the first problem."""
    from transformers import AutoConfig

    from fastft.export.preflight import export_preflight
    from fastft.models import resolve_model

    if model is None:
        from fastft.core.schema import read_meta
        from fastft.models import cache_dir

        cached = cache_dir() / TEACHER_ALIAS
        if (cached / "config.json").is_file() and read_meta(cached).get("labels"):
            path = cached
        else:  # the default teacher is still to be trained: check its data and base model first
            from fastft.data import load_data

            labels = load_data(DEFAULT_TEACHER["data"], seed=42, limit=cfg.limit).labels
            if cfg.data is not None:
                mine = load_data(cfg.data, seed=cfg.seed, limit=cfg.limit).labels
                if set(mine) != set(labels):
                    raise DataError(
                        f"the labels of {cfg.data!r} ({', '.join(mine)}) differ from the default "
                        f"teacher's ({DEFAULT_TEACHER['data']}: {', '.join(labels)})"
                    )
            path = resolve_model(DEFAULT_TEACHER["model"])
    else:
        path = resolve_model(model)
        if not isinstance(path, Path):
            raise ModelError(f"--model must be a fine-tuned model directory (got {model!r})")
        check_teacher_dir(path)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot read the model config in {path}: {(str(exc).splitlines() or [''])[0][:200]}"
        ) from None
    info = export_preflight(config)
    if cfg.progress and info["fallback"]:
        print(
            f"fastft: fused attention unavailable ({info['fallback']}): the plain graph will be exported",
            file=sys.stderr,
        )
    return info


# -- validation and loading ---------------------------------------------------------------------
def _read_config(path: Path) -> dict:
    import json

    try:
        return json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def check_teacher_dir(path: Path) -> tuple[dict, list[str]]:
    """(fastft meta, labels) of a classifier directory, or a one-line ModelError."""
    from fastft.core.schema import read_meta

    meta = read_meta(path)
    cfg = _read_config(path)
    archs = cfg.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise ModelError(
            f"{path} has no classification head (architectures: {', '.join(archs) or 'none'}); "
            "fine-tune it first: fastft train --model ... --output DIR"
        )
    labels = meta.get("labels")
    if not labels:
        id2label = cfg.get("id2label") or {}
        labels = [str(id2label.get(str(i), "")) for i in range(len(id2label))]
        if not labels or all(x.startswith("LABEL_") or not x for x in labels):
            raise ModelError(f"{path} records no label names (no fastft.json labels, no config id2label)")
    return meta, [str(x) for x in labels]


def prepare(model, cfg: CompressConfig) -> Context:
    """Load the teacher and the data, checking everything that can be checked before training."""
    import torch

    from fastft.core.system import physical_cores
    from fastft.data import load_data
    from fastft.data.collate import clamp_max_length
    from fastft.models import load_classifier, load_tokenizer, resolve_model
    from fastft.train.evaluate import align_labels
    from fastft.train.trainer import set_seed

    cfg.validate()
    if cfg.student not in ("teacher-layers", "minilm-l3"):
        resolve_model(cfg.student)  # a directory that must exist
    torch.set_num_threads(cfg.threads or physical_cores())
    set_seed(cfg.seed)
    path = default_teacher(cfg.progress) if model is None else resolve_model(model)
    if not isinstance(path, Path):
        raise ModelError(f"--model must be a fine-tuned model directory (got {model!r})")
    meta, labels = check_teacher_dir(path)
    spec = meta.get("data") or {}
    data = cfg.data or spec.get("path") or spec.get("data")
    if data is None:
        raise DataError(f"{path} records no training data; pass --data")
    same = data in (spec.get("data"), spec.get("path"))
    splits = load_data(
        data,
        text_column=spec.get("text_column", "text") if same else "text",
        label_column=spec.get("label_column", "label") if same else "label",
        seed=spec.get("seed", 42) if same else cfg.seed,
        limit=cfg.limit,
    )
    if set(splits.labels) != set(labels):
        raise DataError(
            f"the labels of {data!r} ({', '.join(splits.labels)}) differ from the teacher's ({', '.join(labels)})"
        )
    if _read_config(path).get("pruned_heads"):
        from fastft.compress.prune import load_pruned

        teacher = load_pruned(path).eval()
    else:
        teacher = load_classifier(path).eval()
    n_layers = teacher.config.num_hidden_layers
    if cfg.student == "teacher-layers" and cfg.layers is not None and not 1 <= cfg.layers <= n_layers:
        raise FastftError(f"--layers must be between 1 and the teacher's {n_layers} layers (got {cfg.layers})")
    from fastft.compress.prune import check_fractions

    if cfg.prune_heads or cfg.prune_ffn:
        check_fractions(teacher, cfg.prune_heads, cfg.prune_ffn)
    tokenizer = load_tokenizer(path)
    max_length = clamp_max_length(cfg.max_length or meta.get("max_length") or 128, teacher.config)
    from fastft.compress.distill import encode

    ids, y = {}, {}
    for name in ("train", "validation", "test"):
        part = align_labels(splits.split(name), splits.labels, labels)
        ids[name], y[name] = encode(tokenizer, part.texts, max_length), list(part.labels)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return Context(
        path,
        teacher,
        tokenizer,
        meta,
        labels,
        max_length,
        {**splits.spec, "labels": splits.labels},
        ids,
        y,
        pad_id,
        cfg,
    )


# -- helpers ------------------------------------------------------------------------------------
def torch_accuracy(net, ids, labels, pad_id: int, batch_size: int = 64) -> float:
    import torch

    from fastft.compress.distill import pad_batch

    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    correct = 0
    net.eval()
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            rows = order[s : s + batch_size]
            x, m = pad_batch([ids[r] for r in rows], pad_id)
            pred = net(input_ids=x, attention_mask=m).logits.argmax(-1)
            correct += int((pred == torch.tensor([labels[r] for r in rows])).sum())
    return correct / max(1, len(ids))


def save_model_dir(ctx: Context, net, path: Path, stage: str, info: dict) -> Path:
    from fastft.core.schema import write_meta
    from fastft.core.system import versions

    path.mkdir(parents=True, exist_ok=True)
    net.save_pretrained(path, safe_serialization=True)
    ctx.tokenizer.save_pretrained(path)
    meta = {
        "format": 1,
        "task": "sequence-classification",
        "labels": ctx.labels,
        "base_model": str(ctx.teacher_dir),
        "max_length": ctx.max_length,
        "data": ctx.data_spec,
        "metrics": {},
        "compress": {"stage": stage, **info},
        "versions": versions(),
        "history": list(ctx.meta.get("history", []))
        + [{"stage": f"compress:{stage}", "time": time.strftime("%Y-%m-%dT%H:%M:%S")}],
    }
    write_meta(path, meta)
    return path


def _log(ctx: Context, msg: str) -> None:
    if ctx.cfg.progress:
        print(f"fastft: {msg}", file=sys.stderr)


# -- stages -------------------------------------------------------------------------------------
def do_distill(ctx: Context) -> StageResult:
    from fastft.compress.distill import cache_teacher, make_student, train_student

    cfg = ctx.cfg
    student, match = make_student(ctx.teacher, cfg.student, cfg.layers, ctx.labels)
    if cfg.prune_heads or cfg.prune_ffn:
        from fastft.compress.prune import check_fractions

        check_fractions(student, cfg.prune_heads, cfg.prune_ffn)
    _log(
        ctx,
        f"distilling {ctx.teacher.config.num_hidden_layers}-layer teacher into a "
        f"{student.config.num_hidden_layers}-layer student ({cfg.student}); hidden states matched to "
        f"teacher layers {match}",
    )
    t0 = time.perf_counter()
    layers = match if cfg.hidden_weight > 0 else None
    cache = ctx.cache
    if cache is None or cache.layers != layers:  # computed once per layer map, reused by later stages
        cache = cache_teacher(ctx.teacher, ctx.ids["train"], ctx.pad_id, layers, progress=cfg.progress)
    cache_s = time.perf_counter() - t0
    ctx.cache = cache
    res = train_student(
        student,
        cache,
        ctx.ids["train"],
        ctx.y["train"],
        pad_id=ctx.pad_id,
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        temperature=cfg.temperature,
        alpha=cfg.alpha,
        hidden_weight=cfg.hidden_weight,
        weight_decay=cfg.weight_decay,
        warmup_ratio=cfg.warmup_ratio,
        seed=cfg.seed,
        progress=cfg.progress,
        evaluate=lambda net: torch_accuracy(net, ctx.ids["validation"], ctx.y["validation"], ctx.pad_id),
    )
    info = {
        "student": cfg.student,
        "layers": student.config.num_hidden_layers,
        "layer_map": match,
        "teacher_cache_s": round(cache_s, 2),
        "teacher_cache_mb": round(cache.nbytes() / 2**20, 1),
        "epochs": cfg.epochs,
        "lr": cfg.lr,
        "temperature": cfg.temperature,
        "alpha": cfg.alpha,
        "hidden_weight": cfg.hidden_weight,
        **res,
    }
    return StageResult("distilled", student, None, info)


def do_prune(ctx: Context, net) -> StageResult:
    import torch

    from fastft.compress.distill import cache_teacher, distill_loss, length_bucketed_batches, pad_batch, train_student
    from fastft.compress.prune import (
        apply_structured,
        check_fractions,
        count_params,
        describe,
        importance,
        magnitude_prune,
    )

    cfg = ctx.cfg
    before = describe(net)
    from fastft.compress.distill import layer_plan

    # the teacher's outputs on the layers matching the pruned model's are the targets (cached once)
    match = layer_plan(ctx.teacher.config.num_hidden_layers, net.config.num_hidden_layers)[1]
    layers = match if cfg.hidden_weight > 0 and net.config.hidden_size == ctx.teacher.config.hidden_size else None
    cache = ctx.cache
    if cache is None or cache.layers != layers:
        cache = cache_teacher(ctx.teacher, ctx.ids["train"], ctx.pad_id, layers, progress=cfg.progress)
        ctx.cache = cache
    k_heads, k_ffn = check_fractions(net, cfg.prune_heads, cfg.prune_ffn)
    info = {"before": before}
    t0 = time.perf_counter()
    if k_heads or k_ffn:
        g = torch.Generator().manual_seed(cfg.seed + 1)
        batches = length_bucketed_batches([len(x) for x in ctx.ids["train"]], cfg.batch_size, g)[: cfg.prune_batches]
        y = torch.tensor(ctx.y["train"])

        def loss_fn(model, rows):
            x, m = pad_batch([ctx.ids["train"][r] for r in rows], ctx.pad_id)
            out = model(input_ids=x, attention_mask=m)
            return distill_loss(out, y[rows], cache.logits[rows], None, m, cfg.temperature, cfg.alpha, 0.0)[0]

        scores = importance(net, batches, loss_fn, heads=k_heads > 0, ffn=k_ffn > 0)
        info.update(apply_structured(net, scores, k_heads, k_ffn))
        info["importance_batches"] = len(batches)
        info["after_structured"] = describe(net)
        _log(
            ctx,
            f"pruned {k_heads} head(s) and {k_ffn} FFN neuron(s) per layer: "
            f"{before['parameters'] / 1e6:.2f}M -> {info['after_structured']['parameters'] / 1e6:.2f}M parameters",
        )
        if cfg.recovery_epochs > 0:
            info["recovery"] = train_student(
                net,
                cache,
                ctx.ids["train"],
                ctx.y["train"],
                pad_id=ctx.pad_id,
                epochs=cfg.recovery_epochs,
                lr=cfg.lr,
                batch_size=cfg.batch_size,
                temperature=cfg.temperature,
                alpha=cfg.alpha,
                hidden_weight=cfg.hidden_weight,
                weight_decay=cfg.weight_decay,
                warmup_ratio=cfg.warmup_ratio,
                seed=cfg.seed + 2,
                progress=cfg.progress,
                desc="recovery",
                evaluate=lambda m: torch_accuracy(m, ctx.ids["validation"], ctx.y["validation"], ctx.pad_id),
            )
    if cfg.sparsity > 0:
        info["magnitude"] = magnitude_prune(net, cfg.sparsity)
    info["parameters"] = count_params(net)
    info["time_s"] = round(time.perf_counter() - t0, 2)
    return StageResult("pruned", net, None, info)


def do_quantize(ctx: Context, fp32: Path, work: Path, base_acc: float | None = None) -> tuple[Path, dict]:
    """Quantize the fp32 model ``fp32`` (its fused graph, when kept) into ``work``."""
    from fastft.compress.quantize import accuracy_aware_int8, fused_path, quantize_fp16

    cfg = ctx.cfg
    src = fused_path(fp32) if fused_path(fp32).is_file() else fp32
    if cfg.quantize == "fp16":
        dst = work / "model_fp16.onnx"
        return dst, {**quantize_fp16(src, dst), "file": dst.name}
    dst = work / "model_int8.onnx"
    info = accuracy_aware_int8(
        src,
        dst,
        val_ids=ctx.ids["validation"],
        val_labels=ctx.y["validation"],
        pad_id=ctx.pad_id,
        budget=cfg.accuracy_budget,
        base_acc=base_acc,
        static=cfg.static,
        calib_ids=ctx.ids["train"][: cfg.calib_size],
        per_channel=cfg.per_channel,
        threads=cfg.threads,
        progress=cfg.progress,
    )
    return dst, {**info, "file": dst.name}


# -- the pipeline ---------------------------------------------------------------------------------
def compress(model=None, config: CompressConfig | None = None, **overrides) -> dict:
    """Run distill -> prune -> quantize on the teacher ``model`` (None: the built-in default teacher).

    Writes ``config.output`` (a normal fastft model directory plus report.json/report.md) and
    returns the report.
    """
    from fastft.core.io import check_output_dir

    cfg = replace(config or CompressConfig(), **overrides)
    cfg.validate()
    if not cfg.output:
        raise FastftError("an output directory is required (--output DIR)")
    inputs = (model, cfg.data, cfg.student)
    check_output_dir(cfg.output, cfg.overwrite, inputs=inputs)
    t_start = time.perf_counter()
    preflight(model, cfg)
    ctx = prepare(model, cfg)
    out_parent = Path(cfg.output).expanduser().resolve().parent
    out_parent.mkdir(parents=True, exist_ok=True)
    # the pid in the name lets the next run remove it if this one is killed (fastft.core.io.clean_stale)
    work = Path(tempfile.mkdtemp(prefix=f".compress-work-{os.getpid()}-", dir=out_parent))
    try:
        report = _pipeline(ctx, work, t_start)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _pipeline(ctx: Context, work: Path, t_start: float) -> dict:
    from fastft.compress import report as rep
    from fastft.compress.prune import count_params, flops
    from fastft.compress.quantize import export_onnx, ort_logits, session
    from fastft.core.io import atomic_output_dir
    from fastft.train.metrics import classification_metrics

    cfg = ctx.cfg
    stages, infos, timings = [], {}, {}

    def evaluate_onnx(path: Path) -> dict:
        import numpy as np

        out = {}
        for split in ("validation", "test"):
            logits = ort_logits(session(path, cfg.threads), ctx.ids[split], ctx.pad_id)
            p = np.exp(logits - logits.max(1, keepdims=True))
            out[split] = classification_metrics(ctx.y[split], p / p.sum(1, keepdims=True), logits.shape[1])
        return out

    def add_stage(name: str, net, model_dir: Path, onnx_file: Path, metrics: dict, extra: dict | None = None):
        stages.append(
            {
                "name": name,
                "parameters": count_params(net),
                "file": onnx_file,
                "flops_128": flops(net, 128),
                "accuracy": metrics["test"]["accuracy"],
                "validation_accuracy": metrics["validation"]["accuracy"],
                **(extra or {}),
            }
        )
        _log(ctx, f"{name}: test accuracy {metrics['test']['accuracy']:.4f}, {count_params(net) / 1e6:.2f}M parameters")

    # teacher
    t0 = time.perf_counter()
    tdir = work / "teacher"
    tdir.mkdir()
    t_onnx = tdir / "model.onnx"
    t_export = export_onnx(ctx.teacher, t_onnx)
    t_metrics = evaluate_onnx(t_onnx)
    add_stage("teacher", ctx.teacher, ctx.teacher_dir, t_onnx, t_metrics)
    timings["teacher_export_eval_s"] = round(time.perf_counter() - t0, 2)

    net, last_dir, last_onnx, last_metrics = ctx.teacher, ctx.teacher_dir, t_onnx, t_metrics
    for name, enabled in (("distilled", cfg.distill), ("pruned", cfg.pruning)):
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
        infos[name]["export"] = export_onnx(net, last_onnx)
        last_metrics = evaluate_onnx(last_onnx)
        add_stage(name, net, last_dir, last_onnx, last_metrics)
        timings[f"{name}_s"] = round(time.perf_counter() - t0, 2)

    final_file, final_metrics, qinfo = last_onnx, last_metrics, None
    if cfg.quantize:
        t0 = time.perf_counter()
        qdir = work / "quantized"
        qdir.mkdir()
        final_file, qinfo = do_quantize(ctx, last_onnx, qdir, base_acc=last_metrics["validation"]["accuracy"])
        final_metrics = evaluate_onnx(final_file)
        add_stage("quantized", net, last_dir, final_file, final_metrics, {"precision": cfg.quantize})
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
        )
        timings["latency_s"] = round(time.perf_counter() - t0, 2)
    rows = rep.build_rows(stages, latency)
    verdict = rep.verdict(rows, cfg.target_retained)
    from fastft.core.system import physical_cores

    notes = []
    if cfg.sparsity > 0:
        notes.append(
            f"unstructured magnitude pruning: {infos['pruned']['magnitude']['measured_sparsity']:.1%} of "
            "encoder Linear weights are zero, stored dense: no size, FLOP or latency gain on dense kernels"
        )
    if cfg.quantize == "fp16":
        notes.append("fp16 targets GPUs; its CPU latency here is not representative (ORT CPU casts to fp32)")
    if cfg.quantize:
        notes.append(
            "the quantized row has the pruned/distilled model's parameter count and FLOPs, run as INT8/FP16 ops"
        )
    report = {
        "teacher": str(ctx.teacher_dir),
        "data": ctx.data_spec.get("data"),
        "max_length": ctx.max_length,
        "test_rows": len(ctx.ids["test"]),
        "labels": ctx.labels,
        "stages": rows,
        "verdict": verdict,
        "quantization": qinfo,
        "distillation": infos.get("distilled"),
        "pruning": infos.get("pruned"),
        "config": cfg.to_dict(),
        "timings": timings,
        "latency_settings": {
            "runs": cfg.bench_runs,
            "threads": cfg.threads or physical_cores(),
            "batch": 1,
            "spinning": False,
            "interleaved": True,
        }
        if cfg.bench
        else None,
        "notes": notes,
    }

    # the output directory: the last stage's model directory + its ONNX files + the report
    with atomic_output_dir(cfg.output, cfg.overwrite, inputs=(ctx.teacher_dir, cfg.data, cfg.student)) as tmp:
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
        _write_meta(
            ctx,
            tmp,
            onnx_section(fp32_info, qinfo if final_file != last_onnx else None, cfg.quantize),
            final_metrics,
            report,
        )
        report["timings"]["total_s"] = round(time.perf_counter() - t_start, 2)
        report["output"] = str(Path(cfg.output).resolve())
        rep.write(tmp, report)
    return report


def onnx_section(fp32_info: dict, qinfo: dict | None, precision: str | None) -> dict:
    """fastft.json's ``onnx`` section, in fastft export's layout (the runtime reads it)."""
    level = fp32_info.get("runtime_graph_optimization_level", "all")
    sec = {
        "file": "model.onnx",
        "default": "model.onnx",
        "opset": 17,
        "export": fp32_info.get("export"),
        "optimization": {"fusions": fp32_info.get("fusions"), "runtime_graph_optimization_level": level},
    }
    if qinfo:
        keep = {k: v for k, v in qinfo.items() if k not in ("sensitivity", "rounds", "ort_offline")}
        key = "int8" if precision == "int8" else precision
        sec[key] = {**keep, "runtime_graph_optimization_level": qinfo.get("runtime_graph_optimization_level", "all")}
        sec["default"] = qinfo["file"]
    return sec


def _write_meta(ctx: Context, out: Path, onnx: dict, metrics: dict, report: dict) -> None:
    from fastft.core.schema import read_meta, write_meta
    from fastft.core.system import versions

    meta = read_meta(out)
    meta.update(
        {
            "labels": ctx.labels,
            "max_length": ctx.max_length,
            "data": ctx.data_spec,
            "metrics": metrics,
            "onnx": onnx,
            "compress": {
                "teacher": str(ctx.teacher_dir),
                "config": ctx.cfg.to_dict(),
                "verdict": report["verdict"],
                "stages": [
                    {
                        k: r.get(k)
                        for k in (
                            "stage",
                            "parameters",
                            "file_mb",
                            "gflops_128",
                            "p50_ms_128",
                            "p50_ms_512",
                            "accuracy",
                            "retained",
                        )
                    }
                    for r in report["stages"]
                ],
                "excluded_nodes": (report.get("quantization") or {}).get("excluded_nodes", []),
            },
            "versions": versions(),
        }
    )
    hist = [h for h in meta.get("history", []) if not str(h.get("stage", "")).startswith("compress:")]
    meta["history"] = hist + [{"stage": "compress", "time": time.strftime("%Y-%m-%dT%H:%M:%S")}]
    write_meta(out, meta)


# -- single stages, for the Python API --------------------------------------------------------------
def run_stage(
    stage: str, model, config: CompressConfig | None = None, *, output=None, teacher=None, **overrides
) -> StageResult:
    """``fastft.distill`` / ``fastft.prune`` / ``fastft.quantize``: one stage on a model directory.

    prune: ``teacher`` (default: ``model`` itself) supplies the recovery targets.
    """
    from fastft.core.io import atomic_output_dir, check_output_dir, scratch_dir

    cfg = replace(config or CompressConfig(), **overrides)
    if stage == "distill":
        cfg = replace(cfg, distill=True, prune_heads=0.0, prune_ffn=0.0, sparsity=0.0, quantize=None)
    elif stage == "prune":
        cfg = replace(cfg, distill=False, quantize=None)
        if not cfg.pruning:
            raise FastftError("prune: set prune_heads, prune_ffn or sparsity above 0")
    elif stage == "quantize":
        cfg = replace(cfg, distill=False, prune_heads=0.0, prune_ffn=0.0, sparsity=0.0, quantize=cfg.quantize or "int8")
    if output is not None:
        check_output_dir(output, cfg.overwrite, inputs=(model, teacher, cfg.data))
    elif stage == "quantize":
        raise FastftError("quantize: an output directory is required (output=DIR)")
    ctx = prepare(teacher if (stage == "prune" and teacher is not None) else model, cfg)
    if stage == "distill":
        res = do_distill(ctx)
    elif stage == "prune":
        from fastft.compress.prune import load_pruned

        net = copy.deepcopy(ctx.teacher) if teacher is None else load_pruned(model).eval()
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
            from fastft.compress.quantize import export_onnx

            fp32_info = export_onnx(net, tmp / "model.onnx")
            qinfo = None
            if stage == "quantize":
                _, qinfo = do_quantize(ctx, tmp / "model.onnx", tmp)
                res.info = qinfo
            from fastft.compress.quantize import fused_path
            from fastft.core.schema import read_meta, write_meta

            fused_path(tmp / "model.onnx").unlink(missing_ok=True)
            meta = read_meta(tmp)
            meta["onnx"] = onnx_section(fp32_info, qinfo, cfg.quantize)
            if qinfo:
                meta["compress"] = {"stage": "quantized", **qinfo}
            write_meta(tmp, meta)
        res.dir = Path(output).resolve() if output is not None else None
    finally:
        scratch.cleanup()
    return res
