"""Per-stage configs (torchao's ``*Config`` style) and the :class:`CompressConfig` composed of them.

    from fastft.compress import CompressConfig, DistillConfig, PruneConfig, QuantizeConfig

    fastft.compress("runs/teacher", CompressConfig(distill=DistillConfig(layers=3),
                                                   prune=PruneConfig(prune_ffn=0.5),
                                                   quantize=QuantizeConfig(static=True)))
    fastft.compress("runs/teacher", CompressConfig(layers=3, static=True))   # the same, flat
    fastft.distill("runs/teacher", DistillConfig(layers=3), output="runs/student")

Each field carries its help text and flag (:func:`fastft.core.option`): ``fastft compress``'s
flags are generated from these fields, so a new field is a new flag. Each config validates
itself (one-line FastftError naming the flag) before any work starts.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields, replace

from fastft.core.checks import (
    MAX_AUGMENT,
    MAX_EPOCHS,
    MAX_PRUNE_STEPS,
    MAX_SEED,
    arg,
    check_bool_fields,
    check_float,
    check_int,
    check_max_length,
    check_threads,
    given_fields,
    setting,
)
from fastft.core.errors import FastftError
from fastft.core.options import option
from fastft.export.checks import CALIB_DEFAULTS, check_calibration, unused_calibration
from fastft.export.quantize import CALIB_METHODS

DEFAULT_OUTPUT = "runs/compressed"
_INT8 = setting(("quantize='int8'", "--int8"))  # how a message names INT8 quantization to both callers
NO_DISTILL = ("distill=False", "--no-distill")  # the setting that turns distillation off: Python's, the CLI's
_NO_DISTILL = setting(NO_DISTILL)
TEACHER_ALIAS = "teacher-minilm-l6-movie-snippets"  # the built-in default teacher, cached on first use
STUDENT_KINDS = ("teacher-layers", "minilm-l3")
HEAD_ALLOCATIONS = ("layer", "global")
AUGMENT_LABELS = ("original", "teacher")
KD_LOSSES = ("kl", "mse")
# the default recipe where a text classifier is distilled (fields left None are chosen by
# CompressConfig.resolved). With one recovery epoch after each step its median over seeds 42-44 kept
# 99.12% at 4.86x at seq 512 on an AVX2-only CPU (bench/results/compress_seed4{2,3,4}_h50_s2_global_aug1.json)
# but 98.25% on an AVX-512 + VNNI one (compress_seed4{2,3,4}_default_fused_vnni.json); a second epoch
# after the last step brings that to 99.12% at 5.01x (compress_seed4{2,3,4}_default_last2_vnni.json,
# speedup_default_last2_vnni.json), its pruning stage taking 409-424 s against 242-329 s. Against the
# stronger teacher (0.8693 against 0.8646) trained with fastft's dropout masks, the same recipe kept a
# median 98.04% at 4.96x (compress_seed4{2,3,4}_default_fastdrop_vnni.json, speedup_default_fastdrop_vnni.json);
# with alpha 0.8 (more weight on the teacher's soft targets) 98.37% at 5.04x
# (compress_seed4{2,3,4}_default_alpha08_vnni.json, speedup_default_alpha08_vnni.json; 0.5 kept 98.04% at 4.97x
# in that timing). A 4-layer student (depth 2/3 of the teacher's 6) with the same pruning kept
# 99.24 / 100.22 / 99.46% (seeds 42-44, median 99.46%; seed 45 98.91% where the 3-layer one kept
# 96.62%) and runs 5.31 / 5.37 / 5.37x faster than the teacher's ORT fp32 graph at seq 512 as
# fastft serves it, its attention on fastft's C++ kernel inside ORT (4.17-4.25x on ORT's own;
# the 3-layer students 7.06-7.08x: compress_seed4{2,3,4,5}_L4_vnni.json, speedup_L4_ab_vnni.json),
# so depth is 2/3 since.
TEXT_RECIPE = {
    "depth": 2 / 3,
    "alpha": 0.8,
    "augment": 1,
    "prune_heads": 0.5,
    "prune_steps": 2,
    "head_allocation": "global",
    "last_recovery_epochs": 2,
}
# what distillation's recipe-resolved fields are where TEXT_RECIPE does not apply
DISTILL_PLAIN = {"depth": 0.5, "alpha": 0.5, "augment": 0}
AUTO_HELP = "{on} when a text classifier is distilled, else {off}"


@dataclass
class DistillConfig:
    """Distillation into a smaller student; its loss and schedule also drive pruning's recovery.

    loss = alpha * KD + (1 - alpha) * CE(labels) + hidden_weight * MSE(mapped hidden states),
    KD = T^2 * KL(teacher_T || student_T) (--kd-loss kl) or MSE(student logits, teacher logits) (mse).
    """

    TITLE = "distillation"

    enabled: bool = option(True, "skip distillation (prune/quantize the teacher itself)", flag="--no-distill")
    student: str = option(
        "teacher-layers",
        "teacher-layers (copy of the teacher's layers), minilm-l3, or a model directory",
        metavar="KIND|DIR",
    )
    layers: int | None = option(None, "student depth for teacher-layers", default_help="--depth of the teacher's")
    depth: float | None = option(
        None,
        "student depth for teacher-layers where --layers is not given, as a fraction of the teacher's "
        "layers (rounded down, at least one)",
        metavar="FRACTION",
        default_help=AUTO_HELP.format(on=f"{TEXT_RECIPE['depth']:.3g}", off=DISTILL_PLAIN["depth"]),
    )
    epochs: float = option(2, "distillation epochs")
    lr: float = option(1e-4, "distillation learning rate")
    batch_size: int = option(32, "training batch size (distillation, pruning importance and recovery)")
    max_length: int | None = option(None, "longest input in tokens", default_help="the teacher's")
    temperature: float = option(
        2.0, "distillation temperature T (--kd-loss kl, and the INT8 consistency term of --qat)"
    )
    kd_loss: str = option(
        "kl",
        "the soft-target term: kl (T^2 * KL of the temperature-softened distributions) or mse (squared "
        "error of the raw logits: the student matches the teacher's margins, not only its probabilities)",
        choices=KD_LOSSES,
    )
    alpha: float | None = option(
        None,
        "weight of the soft-target term (--kd-loss; 1 - alpha weighs the label loss)",
        default_help=AUTO_HELP.format(on=TEXT_RECIPE["alpha"], off=DISTILL_PLAIN["alpha"]),
    )
    hidden_weight: float = option(1.0, "weight of the hidden-state MSE term (0 turns it off)")
    weight_decay: float = option(0.01, "AdamW weight decay")
    dropout: float | None = option(
        None,
        "the student's dropout probability while it is distilled and recovers (hidden states and attention alike)",
        metavar="P",
        default_help="the teacher's",
    )
    ema: float = option(
        0.0,
        "evaluate and keep an exponential moving average of the student's weights, this decay per step "
        "(e.g. 0.995; 0: the raw weights), in distillation and in pruning's recovery",
        metavar="DECAY",
    )
    warmup_ratio: float = option(0.1, "fraction of steps with linear learning-rate warm-up")
    augment: int | None = option(
        None,
        "distil also on N perturbed copies of every training text (insert, delete, replace, swap, span mask; "
        "fastft.compress.augment) with the teacher's soft targets (their label term: --augment-labels); an epoch "
        "then covers N + 1 times the rows",
        metavar="N",
        default_help=AUTO_HELP.format(on=TEXT_RECIPE["augment"], off=DISTILL_PLAIN["augment"]),
    )
    augment_labels: str = option(
        "original",
        "the label term on the --augment copies: the original text's label (original), or none, so the "
        "teacher's soft targets alone teach them (teacher; a perturbed text's sentiment may have moved; "
        "each original keeps its weight)",
        choices=AUGMENT_LABELS,
    )
    transfer: str | None = option(
        None,
        "distil also on unlabelled text from other domains, with the teacher's soft targets only: general "
        "(news, SMS, film dialogue, questions from the built-in data), a comma list of those, or a .txt file "
        "(fastft.compress.transfer)",
        metavar="SRC",
    )
    transfer_size: int = option(8000, "texts drawn for --transfer")

    def validate(self) -> None:
        check_bool_fields(self)
        check_float(arg("epochs"), self.epochs, hi=MAX_EPOCHS)  # 0 is for distill=False (below)
        check_float(arg("lr"), self.lr, lo=0, lo_open=True)
        check_float(arg("temperature"), self.temperature, lo=0, lo_open=True)
        check_float(arg("alpha"), self.alpha, lo=0, hi=1, optional=True)
        check_float(arg("depth"), self.depth, lo=0, hi=1, lo_open=True, optional=True)
        check_float(arg("hidden_weight"), self.hidden_weight, lo=0)
        check_float(arg("weight_decay"), self.weight_decay, lo=0)
        check_float(arg("ema"), self.ema, lo=0, hi=1, hi_open=True)
        check_float(arg("dropout"), self.dropout, lo=0, hi=1, hi_open=True, optional=True)
        check_float(arg("warmup_ratio"), self.warmup_ratio, lo=0, hi=1, hi_open=True)
        check_int(arg("batch_size"), self.batch_size, lo=1)
        check_int(arg("augment"), self.augment, lo=0, hi=MAX_AUGMENT, optional=True)
        check_int(arg("transfer_size"), self.transfer_size, lo=1)
        if self.kd_loss not in KD_LOSSES:
            raise FastftError(f"{arg('kd_loss')} must be one of {', '.join(KD_LOSSES)} (got {self.kd_loss!r})")
        if self.augment_labels not in AUGMENT_LABELS:
            raise FastftError(
                f"{arg('augment_labels')} must be one of {', '.join(AUGMENT_LABELS)} (got {self.augment_labels!r})"
            )
        if self.transfer is not None:
            from fastft.compress.transfer import parse_spec

            parse_spec(self.transfer)
        check_int(arg("layers"), self.layers, lo=1, optional=True)
        check_max_length(arg("max_length"), self.max_length)
        for name in ("layers", "depth"):
            if getattr(self, name) is not None and self.student != "teacher-layers":
                raise FastftError(f"{arg(name)} applies to student='teacher-layers' (--student teacher-layers) only")
        if self.enabled and self.epochs <= 0:
            raise FastftError(f"{arg('epochs')} must be positive (got {self.epochs})")


@dataclass
class PruneConfig:
    """Structured pruning with recovery distillation; off when every fraction is 0.

    By default half the FFN neurons go; where a text classifier is distilled, half the heads too,
    chosen across layers, in two steps, with one recovery epoch after the first and two after the
    last (:data:`TEXT_RECIPE`). FFN widths are the same in every layer; head counts too unless
    ``head_allocation="global"``. A head-pruned directory loads with :func:`fastft.load` /
    ``fastft.models.pruned.load_pruned`` (transformers 5 no longer applies ``config.pruned_heads``);
    FFN-only pruning stays plain-transformers loadable.
    """

    TITLE = "pruning"

    prune_heads: float | None = option(
        None,
        "fraction of attention heads removed (per layer, or of all heads with --head-allocation global)",
        default_help=AUTO_HELP.format(on=TEXT_RECIPE["prune_heads"], off=0),
    )
    prune_ffn: float = option(0.5, "fraction of FFN neurons removed per layer")
    prune_batches: int = option(32, "training batches used to measure importance")
    recovery_epochs: float | None = option(
        None, "distillation epochs after each pruning step (see --last-recovery-epochs)", default_help="1"
    )
    last_recovery_epochs: float | None = option(
        None,
        "distillation epochs after the last pruning step, the last of them (--qat-epochs) quantization-aware "
        "with --int8",
        default_help=f"{TEXT_RECIPE['last_recovery_epochs']} when a text classifier is distilled and --recovery-epochs "
        "is not given, else --recovery-epochs",
    )
    sparsity: float = option(0.0, "unstructured magnitude pruning of encoder weights (no speed-up on dense kernels)")
    prune_steps: int | None = option(
        None,
        "remove the heads and FFN neurons in this many equal steps, importance measured again before "
        "each, --recovery-epochs of distillation after each but the last and --last-recovery-epochs after "
        "the last (its last --qat-epochs quantization-aware)",
        default_help=AUTO_HELP.format(on=TEXT_RECIPE["prune_steps"], off=1),
    )
    head_allocation: str | None = option(
        None,
        "which heads --prune-heads removes: the same number in every layer (layer), or the least "
        "important across all layers, so layers keep different numbers of heads (global)",
        choices=HEAD_ALLOCATIONS,
        default_help=AUTO_HELP.format(on=TEXT_RECIPE["head_allocation"], off="layer"),
    )
    prune_first: bool = option(
        False,
        "remove the heads and FFN neurons from the student before distillation (importance measured "
        "against the teacher's outputs), so every distillation epoch trains the pruned shape; no recovery "
        "epochs follow",
    )

    @property
    def active(self) -> bool:
        return self.structured or self.sparsity > 0

    @property
    def structured(self) -> bool:
        """Heads or FFN neurons are removed (a ``prune_heads`` still None counts as 0 here)."""
        return (self.prune_heads or 0) > 0 or self.prune_ffn > 0

    def resolved(self, recipe: bool) -> PruneConfig:
        """A copy with the fields left None chosen: :data:`TEXT_RECIPE`'s where ``recipe``, else
        no heads, one step, per-layer allocation."""
        heads = self.prune_heads if self.prune_heads is not None else (TEXT_RECIPE["prune_heads"] if recipe else 0.0)
        out = replace(self, prune_heads=heads)
        if out.prune_steps is None:
            out.prune_steps = TEXT_RECIPE["prune_steps"] if recipe and out.structured else 1
        if out.head_allocation is None:
            out.head_allocation = TEXT_RECIPE["head_allocation"] if recipe and heads > 0 else "layer"
        if out.last_recovery_epochs is None:
            given = out.recovery_epochs is not None
            out.last_recovery_epochs = (
                out.recovery_epochs if given else (TEXT_RECIPE["last_recovery_epochs"] if recipe else 1)
            )
        if out.recovery_epochs is None:
            out.recovery_epochs = 1
        return out

    def validate(self) -> None:
        check_bool_fields(self)
        for name in ("prune_heads", "prune_ffn", "sparsity"):
            check_float(arg(name), getattr(self, name), lo=0, hi=1, hi_open=True, optional=name == "prune_heads")
        for name in ("recovery_epochs", "last_recovery_epochs"):
            check_float(arg(name), getattr(self, name), lo=0, hi=MAX_EPOCHS, optional=True)
        check_int(arg("prune_batches"), self.prune_batches, lo=1)
        check_int(arg("prune_steps"), self.prune_steps, lo=1, hi=MAX_PRUNE_STEPS, optional=True)
        steps = self.prune_steps or 1
        if steps > 1 and self.prune_first:
            raise FastftError(
                f"{arg('prune_steps')} prunes between recovery epochs after distillation: not with {arg('prune_first')}"
            )
        if steps > 1 and not self.structured and self.prune_heads is not None:
            raise FastftError(f"{arg('prune_steps')} needs {arg('prune_heads')} or {arg('prune_ffn')} above 0")
        if self.head_allocation is not None and self.head_allocation not in HEAD_ALLOCATIONS:
            raise FastftError(
                f"{arg('head_allocation')} must be one of {', '.join(HEAD_ALLOCATIONS)} (got {self.head_allocation!r})"
            )
        if self.head_allocation == "global" and self.prune_heads is not None and not self.prune_heads > 0:
            raise FastftError(f"{arg('head_allocation')} global needs {arg('prune_heads')} above 0")


# the quantization-aware term's weight when --qat-consistency is not given: seeds 42-44 of the
# default on the Zen 5 (bench/results/compress_seed4{2,3,4}_cons3_zen5.json)
DEFAULT_QAT_CONSISTENCY = 3.0


@dataclass
class QuantizeConfig:
    """ONNX Runtime quantization: INT8 (dynamic, or static calibrated on training rows) or FP16.

    Accuracy-aware INT8: beyond ``accuracy_budget`` (absolute validation accuracy drop) the most
    sensitive MatMuls stay fp32 until the drop fits. ``mode=None`` skips the stage.
    """

    TITLE = "quantization"

    mode: str | None = option(
        "int8",
        "int8 or fp16; on the command line one of the switches (neither: no quantization)",
        switches={
            "int8": ("--int8", "INT8 ONNX Runtime quantization (dynamic by default)"),
            "fp16": ("--fp16", "FP16 ONNX (for GPUs)"),
        },
        absent=None,
    )
    static: bool = option(False, "static INT8 (implies --int8) calibrated on training rows")
    calib_size: int = option(CALIB_DEFAULTS["calib_size"], "training rows used for static calibration")
    calib_method: str = option(CALIB_DEFAULTS["calib_method"], "static calibration method", choices=CALIB_METHODS)
    per_channel: bool | None = option(None, "per-channel weight scales", default_help="this CPU's recipe")
    accuracy_budget: float = option(
        0.005, "largest validation accuracy drop INT8 may cost before sensitive MatMuls stay fp32"
    )
    qat: bool | None = option(
        None,
        "quantization-aware last distillation/recovery epoch(s), --qat-epochs: ONNX Runtime's INT8 simulated "
        "while training "
        "(straight-through), so the whole graph quantises without fp32 fallback",
        default_help="on for dynamic INT8",
    )
    qat_epochs: int = option(
        1,
        "how many of the last distillation/recovery run's passes over the data run quantization-aware "
        "(a fractional epoch count ends in a partial pass); only they compete for the kept weights",
    )
    qat_consistency: float | None = option(
        None,
        "weight of a term pulling the quantization-aware epochs' simulated INT8 outputs toward the "
        "same weights' fp32 outputs (raises the INT8 graph's label agreement with its fp32; 0: off)",
        default_help=f"{DEFAULT_QAT_CONSISTENCY:g} with quantization-aware training",
    )
    embeddings: bool = option(
        True,
        "keep the embedding tables fp32 in dynamic INT8 (by default they are stored in 8 bits: "
        "QEmbedLayerNormalization, about 3/4 of model_int8.onnx's size; --static keeps them fp32)",
        flag="--no-int8-embeddings",
    )

    @property
    def simulated(self) -> bool:
        """Quantization-aware training runs where a training run is there to join it: dynamic INT8
        and QAT not turned off (static scales are calibrated after training)."""
        return self.qat is not False and self.mode == "int8" and not self.static

    def unused_fields(self) -> list[tuple[str, str]]:
        """(field, why) for the quantization settings given that this mode does not read: INT8's
        without INT8, static calibration's without --static. For compress and its stages."""
        out = []
        if self.mode != "int8":
            why = f"without {_INT8} nothing is quantized to INT8"
            out += [(n, why) for n in given_fields(self, "per_channel", "embeddings", "accuracy_budget")]
        elif self.static:
            why = f"{arg('static')} keeps the embedding tables fp32 already"
            out += [(n, why) for n in given_fields(self, "embeddings")]
        return out + [(n, f"calibration is for {arg('static')}") for n in self.unused_calibration()]

    def unused_calibration(self) -> list[str]:
        """The calibration fields given where nothing is calibrated (export.checks.unused_calibration)."""
        return unused_calibration(self.static, calib_size=self.calib_size, calib_method=self.calib_method)

    def validate(self) -> None:
        check_bool_fields(self)
        if self.mode not in (None, "int8", "fp16"):
            raise FastftError(f"quantize must be 'int8', 'fp16' or None (got {self.mode!r})")
        if self.static and self.mode != "int8":
            raise FastftError(f"{arg('static')} needs {_INT8} (static calibration is for INT8)")
        check_calibration(self.calib_size, self.calib_method)
        check_int(arg("qat_epochs"), self.qat_epochs, lo=1)
        if self.qat is True and (self.mode != "int8" or self.static):
            raise FastftError(f"{arg('qat')} trains for dynamic INT8: it needs {_INT8}, without {arg('static')}")
        if self.qat_epochs != 1 and not self.simulated:
            raise FastftError(
                f"{arg('qat_epochs')} sets quantization-aware training: it needs dynamic {_INT8} and {arg('qat')}"
            )
        check_float(arg("qat_consistency"), self.qat_consistency, lo=0, optional=True)
        if self.qat_consistency and not self.simulated:
            raise FastftError(
                f"{arg('qat_consistency')} weighs a quantization-aware term: it needs dynamic {_INT8} and {arg('qat')}"
            )
        check_float(arg("accuracy_budget"), self.accuracy_budget)
        if self.accuracy_budget < 0:
            raise FastftError(f"{arg('accuracy_budget')} must be >= 0 (got {self.accuracy_budget})")


# the flags of fields whose name is not the flag's ("--" + the name, "_" as "-")
_FLAGS = {"embeddings": "--no-int8-embeddings", "per_channel": "--per-channel / --no-per-channel"}

STAGE_CONFIGS = {"distill": DistillConfig, "prune": PruneConfig, "quantize": QuantizeConfig}
# a flat keyword (CompressConfig(layers=3)) -> the stage config holding that field
_OWNER = {f.name: stage for stage, cls in STAGE_CONFIGS.items() for f in fields(cls)}


@dataclass(init=False)
class CompressConfig:
    """What to do to a fine-tuned teacher: one config per stage plus the run's own settings.

    Built from stage configs (``distill=DistillConfig(...)``) or flat (``CompressConfig(layers=3,
    prune_ffn=0.5)``: any stage field by its name). The shortcuts ``distill=False`` and
    ``quantize="int8" | "fp16" | None`` switch those stages; pruning is off when every fraction is 0.
    """

    data: str | None = option(None, "dataset", default_help="the one the teacher was trained on")
    columns: str | None = option(
        None, "CoNLL-style data: word and tag column numbers, e.g. 0,3", default_help="the teacher's, or first and last"
    )
    output: str | None = option(DEFAULT_OUTPUT, "output model directory", short="-o")
    distill: DistillConfig = option(default_factory=DistillConfig)
    prune: PruneConfig = option(default_factory=PruneConfig)
    quantize: QuantizeConfig = option(default_factory=QuantizeConfig)
    # report
    target_retained: float = option(0.99, "accuracy the final model must keep, as a fraction of the teacher's")
    bench: bool = option(True, "skip the latency measurement in the report", flag="--no-bench")
    bench_runs: int = option(
        100,
        "interleaved latency rounds per stage (0.25-0.4 s a round for the default stages; near 5x, "
        "20 rounds moved the teacher/final ratio by up to 0.4 against 200)",
    )
    # run
    seed: int = option(42, "random seed")
    limit: int | None = option(None, "use at most N rows per split (quick runs)", default_help="all")
    threads: int | None = option(None, "torch and ONNX Runtime threads", default_help="physical cores")
    overwrite: bool = option(False, "replace an existing fastft output directory, with all it holds")
    progress: bool = option(True, "no progress bars", flag="--no-progress")

    def __init__(self, **kw):
        flat = {stage: {} for stage in STAGE_CONFIGS}
        own = {f.name: f for f in fields(self)}
        for k in [k for k in kw if k not in own]:
            if k not in _OWNER:
                raise TypeError(f"CompressConfig() got an unexpected keyword argument {k!r}")
            flat[_OWNER[k]][k] = kw.pop(k)
        for name, f in own.items():
            if name in STAGE_CONFIGS:
                value = _stage_value(name, kw[name]) if name in kw else STAGE_CONFIGS[name]()
                setattr(self, name, replace(value, **flat[name]) if flat[name] else value)
            elif name in kw:
                setattr(self, name, kw[name])
            else:
                setattr(self, name, f.default if f.default_factory is MISSING else f.default_factory())

    def updated(self, **changes) -> CompressConfig:
        """A copy with ``changes`` (fields, flat stage fields or shortcuts) applied; a shortcut such as
        ``distill=False`` keeps the rest of that stage's settings."""
        for stage in STAGE_CONFIGS:
            if stage in changes:
                changes[stage] = _stage_value(stage, changes[stage], base=getattr(self, stage))
        return replace(self, **changes)

    @property
    def pruning(self) -> bool:
        return self.prune.active

    def resolved(self, text: bool) -> CompressConfig:
        """A copy with the fields left None chosen for the teacher's task: :data:`TEXT_RECIPE` when a
        text (sequence) classifier is distilled and pruned after distillation (``text``: the teacher
        is one); otherwise no augmentation, every head kept, one pruning step. Fields set stay."""
        recipe = text and self.distill.enabled and not self.prune.prune_first
        d = self.distill
        for name, plain in DISTILL_PLAIN.items():
            if getattr(d, name) is None and (name != "depth" or d.student == "teacher-layers"):
                d = replace(d, **{name: TEXT_RECIPE[name] if recipe else plain})
        return replace(self, distill=d, prune=self.prune.resolved(recipe))

    def validate(self) -> None:
        """Raise FastftError (one line, naming the option) for anything unusable."""
        check_bool_fields(self)
        for stage in STAGE_CONFIGS:
            getattr(self, stage).validate()
        check_float(arg("target_retained"), self.target_retained)
        if self.columns is not None:
            from fastft.data.tokens import parse_columns

            parse_columns(self.columns)
        check_int(arg("seed"), self.seed, lo=0, hi=MAX_SEED)
        check_int(arg("limit"), self.limit, lo=1, optional=True)
        check_threads(arg("threads"), self.threads)
        if self.bench:
            check_int(arg("bench_runs"), self.bench_runs, lo=1)
        if not 0 < self.target_retained <= 1.5:
            raise FastftError(f"{arg('target_retained')} must be a fraction such as 0.99 (got {self.target_retained})")
        if not self.distill.enabled and not self.pruning and self.quantize.mode is None:
            raise FastftError("every stage is switched off: nothing to do")
        if self.prune.prune_first and not self.distill.enabled:
            raise FastftError(f"{arg('prune_first')} prunes the student before distillation: it needs distillation on")
        if self.prune.prune_first and not self.prune.structured:
            raise FastftError(f"{arg('prune_first')} needs {arg('prune_heads')} or {arg('prune_ffn')} above 0")
        self._check_qat_epochs()
        # (resolved, a token-classification teacher's --augment is 0: prepare validates after resolving)
        d = self.distill
        if d.augment_labels != "original" and (not d.enabled or d.augment == 0 or self.prune.prune_first):
            raise FastftError(
                f"{arg('augment_labels')} {d.augment_labels!r} sets the label term of the {arg('augment')} copies, "
                f"and this run makes none (augment=0, {_NO_DISTILL}, {arg('prune_first')} or a token-classification "
                "teacher)"
            )

    def check_unused(self) -> None:
        """FastftError for options given (unlike their defaults) that this run would not use: they
        were accepted, ignored, and recorded in report.json and fastft.json as if they had run.
        Called on the config as given, before the task's defaults are filled in."""
        d, p, q = self.distill, self.prune, self.quantize
        unused = []
        if not d.enabled:
            unused += [(n, f"{_NO_DISTILL} makes no student") for n in given_fields(d, "layers", "depth", "student")]
        if p.prune_first:
            why = f"{arg('prune_first')} prunes the student before distillation: no recovery runs"
            unused += [(n, why) for n in given_fields(p, "recovery_epochs", "last_recovery_epochs")]
        elif p.prune_heads == 0 and p.prune_ffn == 0:
            why = f"no head or FFN neuron is removed ({arg('prune_heads')} and {arg('prune_ffn')} 0): no recovery runs"
            unused += [(n, why) for n in given_fields(p, "recovery_epochs", "last_recovery_epochs", "prune_steps")]
        unused += q.unused_fields()
        if d.kd_loss == "mse" and (not q.simulated or q.qat_consistency == 0):
            why = f"{arg('kd_loss')} 'mse' compares raw logits, and no quantization-aware consistency term softens them"
            unused += [(n, why) for n in given_fields(d, "temperature")]
        if d.transfer is None:
            unused += [(n, f"no {arg('transfer')} source is drawn from") for n in given_fields(d, "transfer_size")]
        if not self.bench:
            unused += [
                (n, f"{setting(('bench=False', '--no-bench'))} times nothing") for n in given_fields(self, "bench_runs")
            ]
        if unused:
            name, why = unused[0]
            raise FastftError(f"{arg(name, _FLAGS.get(name))} is not used by this run: {why}")

    def _check_qat_epochs(self) -> None:
        """--qat-epochs (or --qat) that the run cannot honour: more quantization-aware passes than
        the last training run (the one QAT joins: the last recovery, else distillation) makes, or
        none at all; recorded as given, they ran as far as that run went. Once resolved only."""
        q, p, d = self.quantize, self.prune, self.distill
        if not q.simulated or (q.qat is None and q.qat_epochs == 1):
            return
        if p.structured and not p.prune_first and p.last_recovery_epochs is None:
            return  # not resolved yet
        if p.structured and not p.prune_first and p.last_recovery_epochs > 0:
            last, name = p.last_recovery_epochs, arg("last_recovery_epochs")
        elif d.enabled and d.epochs is not None:
            last, name = d.epochs, arg("epochs")
        else:
            raise FastftError(
                f"{arg('qat')} trains the last distillation or recovery epochs quantization-aware, and this run "
                "trains none (no distillation, no recovery after pruning)"
            )
        if q.qat_epochs > math.ceil(last):
            raise FastftError(
                f"{arg('qat_epochs')} {q.qat_epochs} is more than the {last:g} epoch(s) of the run it joins: {name}"
            )

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("overwrite", "progress"):
            d.pop(k, None)
        return d


def _stage_value(stage: str, value, base=None):
    """A stage config from what was passed: the config itself, or a shortcut applied to ``base``."""
    cls = STAGE_CONFIGS[stage]
    if isinstance(value, cls):
        return value
    base = base if base is not None else cls()
    if stage == "distill" and isinstance(value, bool):
        return replace(base, enabled=value)
    if stage == "quantize" and (value is None or isinstance(value, str)):
        return replace(base, mode=value)
    raise FastftError(f"{stage} must be a {cls.__name__} (got {value!r})")


def as_compress_config(config) -> CompressConfig:
    """A CompressConfig from None, a CompressConfig or one stage's config."""
    if config is None:
        return CompressConfig()
    if isinstance(config, CompressConfig):
        return config
    for stage, cls in STAGE_CONFIGS.items():
        if isinstance(config, cls):
            return CompressConfig(**{stage: config})
    raise FastftError(f"config must be a CompressConfig or a stage config (got {type(config).__name__})")
