"""The compress stages on a prepared :class:`~fastft.compress.context.Context`: distill, prune, quantize.

Each returns a :class:`StageResult` (the model it produced and what was done); the pipeline
(:mod:`fastft.compress.pipeline`) exports, evaluates and reports them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from fastft.compress import distill as dis  # looked up at call time (patchable)
from fastft.compress import token_kd as tkd
from fastft.compress.config import DEFAULT_QAT_CONSISTENCY
from fastft.compress.context import Context, log, torch_accuracy
from fastft.compress.prune import (
    apply_structured,
    check_fractions,
    count_params,
    describe,
    importance,
    magnitude_prune,
)
from fastft.compress.quantize import accuracy_aware_int8, quant_source, quantize_fp16
from fastft.core.checks import arg
from fastft.core.errors import FastftError


@dataclass
class StageResult:
    """What a stage produced: the torch model (None after quantization), its directory, its facts."""

    name: str
    model: object | None
    dir: Path | None
    info: dict = field(default_factory=dict)


@dataclass
class QuantizeResult:
    """What quantization wrote: the graph ``path`` (INT8 or FP16) and its facts (recorded in
    report.json and in fastft.json's ``onnx`` section)."""

    path: Path
    mode: str  # "int8" or "fp16"
    info: dict = field(default_factory=dict)

    @property
    def excluded_nodes(self) -> list[str]:
        """The MatMuls the accuracy-aware INT8 pass kept in fp32."""
        return list(self.info.get("excluded_nodes", []))


def do_distill(ctx: Context) -> StageResult:
    cfg, pr = ctx.cfg.distill, ctx.cfg.prune
    student, match = dis.make_student(ctx.teacher, cfg.student, cfg.layers, ctx.labels, depth=cfg.depth)
    k_heads, k_ffn = check_fractions(student, pr.prune_heads, pr.prune_ffn) if pr.structured else (0, 0)
    log(
        ctx,
        f"distilling {ctx.teacher.config.num_hidden_layers}-layer teacher into a "
        f"{student.config.num_hidden_layers}-layer student ({cfg.student}); hidden states matched to "
        f"teacher layers {match}",
    )
    t0 = time.perf_counter()
    layers = match if cfg.hidden_weight > 0 else None
    ids, _ = train_rows(ctx)
    cache = ctx.cache
    if not _cache_fits(cache, layers, ids):  # once, reused by later stages
        cache = dis.cache_teacher(ctx.teacher, ids, ctx.pad_id, layers, progress=ctx.cfg.progress, per_token=ctx.token)
    cache_s = time.perf_counter() - t0
    ctx.cache = cache
    pruned_first = None
    if pr.prune_first:  # the student's shape is final before its first epoch
        pruned_first = {"before": describe(student), **_structured_prune(ctx, student, cache, k_heads, k_ffn)}
    # quantization-aware in the last epoch(s) when no pruning recovery follows (else recovery's last)
    last = pr.prune_first or not (pr.last_recovery_epochs > 0 and pr.structured)
    res = _train_on_teacher(
        ctx,
        student,
        cache,
        epochs=cfg.epochs,
        seed=ctx.cfg.seed,
        desc="distill",
        qat=qat_spec(ctx.cfg) if last else None,
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
        "kd_loss": cfg.kd_loss,
        "alpha": cfg.alpha,
        "hidden_weight": cfg.hidden_weight,
        **({"ema": cfg.ema} if cfg.ema else {}),
        **({"dropout_p": cfg.dropout} if cfg.dropout is not None else {}),
        **({"augment": augment_info(ctx)} if cfg.augment else {}),
        **({"transfer": dict(ctx.transfer["info"])} if ctx.transfer else {}),
        **({"pruned_first": pruned_first} if pruned_first else {}),
        **res,
    }
    return StageResult("distilled", student, None, info)


def _cache_fits(cache, layers, ids) -> bool:
    """``cache`` holds the teacher's outputs on the rows ``ids`` at ``layers``: rows counted by its
    offsets (a token classifier's logits have one row per token, not per text)."""
    return cache is not None and cache.layers == layers and len(cache.offsets) == len(ids) + 1


def _structured_prune(ctx: Context, net, cache, k_heads: int, k_ffn: int, seed_offset: int = 1) -> dict:
    """Remove ``k_heads`` heads and ``k_ffn`` FFN neurons from every layer of ``net`` by gradient
    importance on training batches, the loss being the distillation loss against the cached teacher
    outputs."""
    import torch

    d, cfg = ctx.cfg.distill, ctx.cfg.prune
    if not (k_heads or k_ffn):
        return {}
    before = count_params(net)
    g = torch.Generator().manual_seed(ctx.cfg.seed + seed_offset)
    batches = dis.length_bucketed_batches([len(x) for x in ctx.ids["train"]], d.batch_size, g)[: cfg.prune_batches]
    y = None if ctx.token else torch.tensor(ctx.y["train"])

    def loss_fn(model, rows):
        x, m = dis.pad_batch([ctx.ids["train"][r] for r in rows], ctx.pad_id)
        out = model(input_ids=x, attention_mask=m)
        if ctx.token:
            out, y_rows, t = tkd.loss_inputs(cache, ctx.y["train"])(out, rows, x.shape[1])
        else:
            y_rows, t = y[rows], cache.logits[rows]
        return dis.distill_loss(out, y_rows, t, None, m, d.temperature, d.alpha, 0.0, d.kd_loss)[0]

    scores = importance(net, batches, loss_fn, heads=k_heads > 0, ffn=k_ffn > 0)
    info = apply_structured(net, scores, k_heads, k_ffn, global_heads=cfg.head_allocation == "global")
    info["importance_batches"] = len(batches)
    info["after_structured"] = describe(net)
    log(
        ctx,
        f"pruned {k_heads} head(s) and {k_ffn} FFN neuron(s) per layer: "
        f"{before / 1e6:.2f}M -> {info['after_structured']['parameters'] / 1e6:.2f}M parameters",
    )
    return info


def do_prune(ctx: Context, net) -> StageResult:
    d, cfg = ctx.cfg.distill, ctx.cfg.prune
    before = describe(net)
    # the teacher's outputs on the layers matching the pruned model's are the targets (cached once)
    match = dis.layer_plan(ctx.teacher.config.num_hidden_layers, net.config.num_hidden_layers)[1]
    layers = match if d.hidden_weight > 0 and net.config.hidden_size == ctx.teacher.config.hidden_size else None
    ids, _ = train_rows(ctx)
    cache = ctx.cache
    if not _cache_fits(cache, layers, ids):
        cache = dis.cache_teacher(ctx.teacher, ids, ctx.pad_id, layers, progress=ctx.cfg.progress, per_token=ctx.token)
        ctx.cache = cache
    info = {"before": before}
    t0 = time.perf_counter()
    if not cfg.prune_first:  # (with --prune-first the distilled student is already pruned)
        k_heads, k_ffn = check_fractions(net, cfg.prune_heads, cfg.prune_ffn)
        steps, done = cfg.prune_steps, (0, 0)
        for step in range(1, steps + 1):
            # step i removes up to round(k * i / steps) in all; importance is measured again each time
            want = (round(k_heads * step / steps), round(k_ffn * step / steps))
            kh, kf = want[0] - done[0], want[1] - done[1]
            done = want
            step_info = _structured_prune(ctx, net, cache, kh, kf, seed_offset=1 + 10 * (step - 1))
            # recovery after every step that removed something, and always after the last (its QAT)
            epochs = cfg.last_recovery_epochs if step == steps else cfg.recovery_epochs
            if (step_info or step == steps) and (k_heads or k_ffn) and epochs > 0:
                step_info["recovery"] = _train_on_teacher(
                    ctx,
                    net,
                    cache,
                    epochs=epochs,
                    seed=ctx.cfg.seed + 2 + 10 * (step - 1),
                    desc="recovery" if steps == 1 else f"recovery {step}/{steps}",
                    qat=qat_spec(ctx.cfg) if step == steps else None,
                )
            if steps > 1:
                info.setdefault("steps", []).append(step_info)
            info.update(step_info)
        if steps > 1:  # in all; the heads in the original numbering, as config.json records them
            info["heads_removed_per_layer"], info["ffn_removed_per_layer"] = k_heads, k_ffn
            info["pruned_heads"] = dict(getattr(net.config, "pruned_heads", None) or {})
    if cfg.sparsity > 0:
        info["magnitude"] = magnitude_prune(net, cfg.sparsity)
    info["parameters"] = count_params(net)
    info["time_s"] = round(time.perf_counter() - t0, 2)
    return StageResult("pruned", net, None, info)


def do_quantize(ctx: Context, fp32: Path, work: Path, base_acc: float | None = None) -> QuantizeResult:
    """Quantize the fp32 model ``fp32`` (its fused graph, when kept) into ``work``."""
    cfg = ctx.cfg.quantize
    src = quant_source(fp32)
    if cfg.mode == "fp16":
        dst = work / "model_fp16.onnx"
        return QuantizeResult(dst, "fp16", {**quantize_fp16(src, dst), "file": dst.name})
    dst = work / "model_int8.onnx"
    token = tkd.int8_scoring(ctx) if ctx.token else {}
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
        calib_method=cfg.calib_method,
        per_channel=cfg.per_channel,
        embeddings=cfg.embeddings,
        threads=ctx.cfg.threads,
        progress=ctx.cfg.progress,
        **token,
    )
    return QuantizeResult(dst, "int8", {**info, "file": dst.name})


def train_rows(ctx: Context) -> tuple[list, list]:
    """(token ids, labels) distilled on: the training split, then ``cfg.augment`` perturbed copies of
    every training text (:mod:`fastft.compress.augment`, seeded, made and tokenized once), then the
    ``--transfer`` texts with the label :data:`fastft.compress.distill.NO_LABEL` (soft targets only;
    the copies too with ``--augment-labels teacher``).
    The originals come first, so row ``i < len(train)`` is training row ``i`` in every cache."""
    ids, y = _train_and_augmented(ctx)
    if ctx.transfer:
        t = ctx.transfer["ids"]
        ids, y = ids + t, y + [dis.NO_LABEL] * len(t)
    return ids, y


def _train_and_augmented(ctx: Context) -> tuple[list, list]:
    n, seed = ctx.cfg.distill.augment, ctx.cfg.seed
    if not n:
        return ctx.ids["train"], ctx.y["train"]
    aug = ctx.augmented
    if aug is None or aug["copies"] != n or aug["seed"] != seed:
        from collections import Counter

        from fastft.compress.augment import augment_texts

        if not (ctx.texts or {}).get("train"):
            raise FastftError(f"{arg('augment')} needs the training texts (none were loaded)")
        t0 = time.perf_counter()
        mask = getattr(ctx.tokenizer, "mask_token", None) or "[MASK]"
        texts, src, ops = augment_texts(ctx.texts["train"], n, seed, mask_token=mask)
        aug = {
            "copies": n,
            "seed": seed,
            "ids": dis.encode(ctx.tokenizer, texts, ctx.max_length),
            "y": [ctx.y["train"][i] for i in src],
            "ops": dict(Counter(ops)),
            "examples": [
                {"original": ctx.texts["train"][src[i]], "augmented": texts[i], "op": ops[i]}
                for i in range(min(3, len(texts)))
            ],
        }
        aug["time_s"] = round(time.perf_counter() - t0, 2)
        ctx.augmented = aug
        log(ctx, f"augmented distillation data: {len(texts)} perturbed copies ({n} per training text)")
    # --augment-labels teacher: the copies carry no label term, the teacher's soft targets alone
    y_aug = aug["y"] if ctx.cfg.distill.augment_labels == "original" else [dis.NO_LABEL] * len(aug["y"])
    return ctx.ids["train"] + aug["ids"], ctx.y["train"] + y_aug


def augment_info(ctx: Context) -> dict:
    aug = ctx.augmented or {}
    return {
        "copies": aug.get("copies"),
        "rows": len(aug.get("ids", [])),
        "operations": aug.get("ops"),
        "time_s": aug.get("time_s"),
        "examples": aug.get("examples"),
        "hard_labels": "the original text's"
        if ctx.cfg.distill.augment_labels == "original"
        else "none (soft targets only)",
    }


def qat_spec(config):
    """What quantization-aware training simulates for this CompressConfig (None: no QAT): the INT8
    recipe ``do_quantize`` will use (this CPU's default, the user's per-channel/embedding choices);
    dynamic INT8 only (static scales are calibrated after training)."""
    cfg = config.quantize
    if not cfg.simulated:
        return None
    from fastft.compress.qat import QatSpec
    from fastft.export.quantize import recipe_from_options

    recipe = recipe_from_options(per_channel=cfg.per_channel, embeddings=cfg.embeddings)
    weight = DEFAULT_QAT_CONSISTENCY if cfg.qat_consistency is None else cfg.qat_consistency
    return QatSpec.from_recipe(recipe, epochs=cfg.qat_epochs, consistency=weight)


def _train_on_teacher(ctx: Context, net, cache, *, epochs: float, seed: int, desc: str, qat=None) -> dict:
    """Distil ``net`` on the cached teacher outputs with the config's settings, keeping the epoch
    with the best validation accuracy (distillation and post-pruning recovery alike)."""
    cfg = ctx.cfg.distill
    ids, y = train_rows(ctx)
    if cfg.dropout is not None:
        dis.set_dropout(net, cfg.dropout)
    return dis.train_student(
        net,
        cache,
        ids,
        y,
        pad_id=ctx.pad_id,
        epochs=epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        temperature=cfg.temperature,
        alpha=cfg.alpha,
        kd_loss=cfg.kd_loss,
        hidden_weight=cfg.hidden_weight,
        weight_decay=cfg.weight_decay,
        warmup_ratio=cfg.warmup_ratio,
        ema=cfg.ema,
        seed=seed,
        progress=ctx.cfg.progress,
        desc=desc,
        evaluate=(
            (lambda m: tkd.torch_entity_f1(m, ctx))
            if ctx.token
            else (lambda m: torch_accuracy(m, ctx.ids["validation"], ctx.y["validation"], ctx.pad_id))
        ),
        loss_inputs=tkd.loss_inputs(cache, ctx.y["train"]) if ctx.token else None,
        qat=qat,
    )
