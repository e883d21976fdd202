"""CompressConfig: every knob of ``fastft compress``, validated before any work starts.

One config object drives all three stages (torchao-style): ``fastft.distill``,
``fastft.prune`` and ``fastft.quantize`` read the fields they need, and
``fastft.compress(model, CompressConfig(...))`` runs them in order. The CLI only builds it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from fastft.core.checks import check_float, check_int
from fastft.core.errors import FastftError

DEFAULT_OUTPUT = "runs/compressed"
TEACHER_ALIAS = "teacher-minilm-l6-movie-snippets"  # the built-in default teacher, cached on first use
STUDENT_KINDS = ("teacher-layers", "minilm-l3")


@dataclass
class CompressConfig:
    """What to do to a fine-tuned teacher, stage by stage.

    Distillation (``distill=False`` skips it, the teacher itself is then pruned/quantized):
        student: ``teacher-layers`` (a copy of the teacher's own layers, DistilBERT-style),
            ``minilm-l3`` (the built-in 3-layer MiniLM), or a model directory.
        layers: depth of a ``teacher-layers`` student, spread evenly [half the teacher's].
        epochs, lr, batch_size, max_length: the distillation run [2, 1e-4, 32, the teacher's].
        augment: N perturbed copies of every training text (fastft.compress.augment), labelled by
            the teacher (soft targets, cached once) and distilled on with the originals, in
            distillation and recovery; an epoch then covers (N + 1) times the rows.
        temperature, alpha: loss = alpha * T^2 * KL(teacher_T || student_T)
            + (1 - alpha) * CE(labels) + hidden_weight * MSE(mapped hidden states).
    Pruning (off when every fraction is 0; by default half the FFN neurons go, which keeps the
    directory plain-transformers loadable and, with one recovery epoch, measured 98.8% of the
    teacher's accuracy at 3.7x at seq 512 in INT8 — bench/results/compress_frontier_3L_ffn.json):
        prune_heads: fraction of attention heads removed, the same count in every layer.
        prune_ffn: fraction of FFN neurons removed, the same count in every layer
            (intermediate_size stays uniform, so the directory reloads with plain transformers).
        prune_batches: training batches used to measure importance.
        recovery_epochs: distillation fine-tune after pruning.
        sparsity: optional unstructured magnitude pruning of the encoder's Linear weights
            (reported; dense kernels do not get faster from it).
    Quantization:
        quantize: ``int8`` (ONNX Runtime, dynamic unless ``static``), ``fp16`` or None.
        int8_embeddings: INT8 also stores the embedding tables in 8 bits (ORT QEmbedLayerNormalization):
            model_int8.onnx shrinks by about 3/4 of the word table, at no measured accuracy cost.
        qat: quantization-aware training in the last distillation/recovery epoch: the INT8 that
            ONNX Runtime will run (this CPU's recipe) simulated with a straight-through estimator,
            so the whole graph quantises with no fp32 fallback (dynamic INT8 only).
        accuracy_budget: largest accuracy drop (absolute, validation split) quantization may
            cost; beyond it the most sensitive MatMuls stay fp32 until the drop fits.
    """

    data: str | None = None
    output: str | None = DEFAULT_OUTPUT
    # distillation
    distill: bool = True
    student: str = "teacher-layers"
    layers: int | None = None
    epochs: float = 2
    lr: float = 1e-4
    batch_size: int = 32
    max_length: int | None = None
    temperature: float = 2.0
    alpha: float = 0.5
    hidden_weight: float = 1.0
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    augment: int = 0
    # pruning
    prune_heads: float = 0.0
    prune_ffn: float = 0.5
    prune_batches: int = 32
    recovery_epochs: float = 1
    sparsity: float = 0.0
    # quantization
    quantize: str | None = "int8"
    static: bool = False
    calib_size: int = 256
    per_channel: bool | None = None
    int8_embeddings: bool = True
    qat: bool = True
    accuracy_budget: float = 0.005
    # report
    target_retained: float = 0.99
    bench: bool = True
    bench_runs: int = 20
    # run
    seed: int = 42
    limit: int | None = None
    threads: int | None = None
    overwrite: bool = False
    progress: bool = True

    @property
    def pruning(self) -> bool:
        return self.prune_heads > 0 or self.prune_ffn > 0 or self.sparsity > 0

    def validate(self) -> None:
        """Raise FastftError (one line, naming the option) for anything unusable."""
        for opt in (
            "epochs",
            "lr",
            "temperature",
            "alpha",
            "hidden_weight",
            "weight_decay",
            "warmup_ratio",
            "prune_heads",
            "prune_ffn",
            "recovery_epochs",
            "sparsity",
            "accuracy_budget",
            "target_retained",
        ):
            name = (
                opt
                if opt in ("alpha", "hidden_weight", "weight_decay", "warmup_ratio")
                else f"--{opt.replace('_', '-')}"
            )  # API-only fields keep their Python names
            check_float(name, getattr(self, opt))
        check_float("hidden_weight", self.hidden_weight, lo=0)
        check_float("weight_decay", self.weight_decay, lo=0)
        check_float("warmup_ratio", self.warmup_ratio, lo=0, hi=1, hi_open=True)
        for opt in ("batch_size", "prune_batches", "calib_size", "seed", "augment"):
            check_int(f"--{opt.replace('_', '-')}", getattr(self, opt), lo=0 if opt in ("seed", "augment") else 1)
        for opt in ("layers", "max_length", "limit", "threads"):
            check_int(f"--{opt.replace('_', '-')}", getattr(self, opt), lo=1, optional=True)
        if self.bench:
            check_int("--bench-runs", self.bench_runs, lo=1)
        if self.quantize not in (None, "int8", "fp16"):
            raise FastftError(f"quantize must be 'int8', 'fp16' or None (got {self.quantize!r})")
        if self.static and self.quantize != "int8":
            raise FastftError("--static needs --int8 (static calibration is for INT8)")
        if self.layers is not None and self.layers < 1:
            raise FastftError(f"--layers must be at least 1 (got {self.layers})")
        if self.layers is not None and self.student != "teacher-layers":
            raise FastftError("--layers applies to --student teacher-layers only")
        for name in ("prune_heads", "prune_ffn", "sparsity"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise FastftError(f"--{name.replace('_', '-')} must be in [0, 1) (got {v})")
        if self.distill and self.epochs <= 0:
            raise FastftError(f"--epochs must be positive (got {self.epochs})")
        if self.recovery_epochs < 0:
            raise FastftError(f"--recovery-epochs must be >= 0 (got {self.recovery_epochs})")
        if not 0 < self.target_retained <= 1.5:
            raise FastftError(f"--target-retained must be a fraction such as 0.99 (got {self.target_retained})")
        if not 0 <= self.alpha <= 1:
            raise FastftError(f"alpha must be in [0, 1] (got {self.alpha})")
        if self.temperature <= 0:
            raise FastftError(f"temperature must be positive (got {self.temperature})")
        if self.batch_size < 1:
            raise FastftError(f"--batch-size must be at least 1 (got {self.batch_size})")
        if not self.lr > 0:
            raise FastftError(f"--lr must be positive (got {self.lr})")
        if self.max_length is not None and self.max_length < 2:
            raise FastftError(f"--max-length must be at least 2 (got {self.max_length})")
        if self.limit is not None and self.limit < 1:
            raise FastftError(f"--limit must be at least 1 (got {self.limit})")
        if self.accuracy_budget < 0:
            raise FastftError(f"--accuracy-budget must be >= 0 (got {self.accuracy_budget})")
        if self.prune_batches < 1:
            raise FastftError(f"--prune-batches must be at least 1 (got {self.prune_batches})")
        if not self.distill and not self.pruning and self.quantize is None:
            raise FastftError("every stage is switched off: nothing to do")

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("overwrite", "progress"):
            d.pop(k, None)
        return d
