"""What every compress stage shares: the teacher, its data (tokenized once) and the checks made
before any training (:func:`preflight`, :func:`prepare`), plus saving a stage's model directory.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fastft.compress.config import NO_DISTILL, TEACHER_ALIAS, CompressConfig
from fastft.compress.distill import encode, encoder_prefix, layer_plan, pad_batch
from fastft.compress.prune import check_fractions
from fastft.core.checks import arg, setting
from fastft.core.errors import DataError, FastftError, ModelError
from fastft.core.schema import TOKEN_CLASSIFICATION, read_meta, task_of, write_meta
from fastft.core.system import physical_cores, versions
from fastft.data import load_data
from fastft.data.collate import clamp_max_length, sorted_batches
from fastft.data.datasets import check_unchanged
from fastft.data.labels import align_labels, warn_lacking
from fastft.data.loader import recorded_args
from fastft.export.preflight import export_preflight
from fastft.models import cache_dir, load_classifier, load_tokenizer, resolve_model
from fastft.models.hf import quiet
from fastft.models.task import check_head, task_from
from fastft.train.trainer import set_seed


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
    texts: dict | None = None  # split -> list[str] (augmentation, the shifted test splits)
    augmented: dict | None = None  # --augment's perturbed training copies (stages.train_rows), made once
    transfer: dict | None = None  # --transfer's unlabelled texts: {"ids", "info"} (stages.train_rows)
    task: str = "sequence-classification"
    rows: dict | None = None  # token classification: split -> token_kd.TokenRows (word ids, word tags)

    @property
    def token(self) -> bool:
        return self.task == "token-classification"


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
    path = cache_dir() / TEACHER_ALIAS
    if (path / "config.json").is_file() and read_meta(path).get("labels"):
        return path
    cache_dir(write=True)
    import fastft

    print(
        f"fastft: no --model given and the default teacher is not cached yet: fine-tuning minilm-l6 on "
        f"movie-snippets (3 epochs, max length 64; about 6 min on 2 cores) into {path}",
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

    check_student(cfg.distill.student)
    if model is not None and cfg.data is not None:  # a bad --data fails now, not after the export check
        load_data(cfg.data, seed=cfg.seed, limit=cfg.limit).check_trainable()
    if model is None:  # the default teacher classifies whole texts (checked before it is trained)
        check_task_options(f"the default teacher ({TEACHER_ALIAS})", {}, cfg)
        cached = cache_dir() / TEACHER_ALIAS
        if (cached / "config.json").is_file() and read_meta(cached).get("labels"):
            path = cached
        else:  # the default teacher is still to be trained: check the cache, its data and base model first
            cache_dir(write=True)
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
            raise ModelError(f"{arg('model')} must be a fine-tuned model directory (got {model!r})")
        meta = check_teacher_dir(path)[0]
        check_distillable(path, meta, cfg.distill.enabled)
        check_task_options(path, meta, cfg)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - transformers' strict config checks raise their own type
        raise ModelError(
            f"cannot read the model config in {path}: {(str(exc).splitlines() or [''])[0][:200]}"
        ) from None
    check_layers(cfg.distill, getattr(config, "num_hidden_layers", None))
    info = export_preflight(config)
    if cfg.progress and info["fallback"]:
        print(
            f"fastft: fused attention unavailable ({info['fallback']}): the plain graph will be exported",
            file=sys.stderr,
        )
    return info


# -- validation and loading ---------------------------------------------------------------------
def _read_config(path: Path) -> dict:
    try:
        return json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def check_teacher_dir(path: Path) -> tuple[dict, list[str]]:
    """(fastft meta, labels) of a classifier directory, or a one-line ModelError; the meta names
    the task, a Hugging Face directory's by its head (a token classifier was read as a text one)."""
    meta = read_meta(path)
    meta.setdefault("task", task_from(meta, _read_config(path)))
    labels = check_head(path, meta, _read_config(path))
    if not meta.get("labels") and all(x.startswith("LABEL_") for x in labels):
        raise ModelError(f"{path} records no label names (no fastft.json labels, no config id2label)")
    return meta, labels


def check_student(student: str) -> None:
    """--student: a built-in student shape, or a model directory that must exist."""
    if student not in ("teacher-layers", "minilm-l3"):
        resolve_model(student)


def check_student_fits(
    student: str,
    vocab: int,
    max_length: int,
    users: list[tuple[str, str]],
    teacher_task: str = "sequence-classification",
    teacher_labels: list[str] | None = None,
    fractions: tuple[float, float] = (0.0, 0.0),
) -> None:
    """A --student directory (or minilm-l3) that can read what the teacher's tokenizer makes:
    ``vocab`` ids and ``max_length`` positions, and that structured pruning can slice, checked
    before any teacher output is computed (a smaller vocabulary or fewer positions failed
    mid-distillation with a traceback; a DistilBERT student after the teacher's export)."""
    if student == "teacher-layers":
        return
    from types import SimpleNamespace

    from fastft.core.io import read_json_object
    from fastft.data.collate import model_max_positions

    config = read_json_object(Path(resolve_model(student)) / "config.json")
    n_vocab = config.get("vocab_size")
    if isinstance(n_vocab, int) and n_vocab < vocab:
        raise ModelError(
            f"{arg('student')} {student!r} has a vocabulary of {n_vocab} ids and the teacher's tokenizer makes "
            f"{vocab}: the student reads the teacher's token ids, so it needs the teacher's vocabulary"
        )
    positions = model_max_positions(SimpleNamespace(**config))
    if positions is not None and positions < max_length:
        raise ModelError(
            f"{arg('student')} {student!r} takes at most {positions} tokens and the texts are cut at {max_length}: "
            f"pass {setting((f'max_length={positions}', f'--max-length {positions}'))} or a student with more positions"
        )
    archs = [str(a) for a in config.get("architectures") or []]
    head = next((a for a in archs if a.endswith(("ForSequenceClassification", "ForTokenClassification"))), None)
    if head is not None and teacher_labels is not None:  # a fine-tuned student keeps its head: it must fit
        theirs = len(config.get("id2label") or {}) or config.get("num_labels")
        task = task_from({}, config)  # (what its head says, as for any directory without fastft.json)
        if task != teacher_task or (theirs and theirs != len(teacher_labels)):
            raise ModelError(
                f"{arg('student')} {student!r} is a {task} model with {theirs} labels and the teacher a {teacher_task} "
                f"one with {len(teacher_labels)} ({', '.join(teacher_labels)[:60]}): pass a base encoder or a "
                "student of the teacher's task and labels"
            )
    if users:  # what it needs of the student's layers, probed on an empty copy (meta device, no weights)
        import torch
        import transformers

        try:
            config = transformers.AutoConfig.from_pretrained(resolve_model(student))
            with torch.device("meta"):
                net = transformers.AutoModel.from_config(config)
        except Exception:  # noqa: BLE001 - a model transformers cannot build is named when it is loaded
            return
        check_layout(net, f"{arg('student')} {student!r}", users)
        if any(fractions):  # pruning slices the student: its layers must keep some of each
            check_fractions(net, *fractions)


def layout_users(cfg) -> list[tuple[str, str, str]]:
    """What this run does to the Linears of its model's layers (slices them, fake-quantises
    them), each with the settings that turn it off (Python's, then the CLI's)."""
    q, pr, d = cfg.quantize, cfg.prune, cfg.distill
    users = []
    if pr.structured:
        users.append(("structured pruning", "prune_heads=0, prune_ffn=0", "--prune-heads 0 --prune-ffn 0"))
    if pr.sparsity > 0:
        users.append(("magnitude pruning", "sparsity=0", "--sparsity 0"))
    if q.simulated and (d.enabled or pr.structured):
        users.append(("quantization-aware training", "qat=False", "--no-qat"))
    return users


def check_layout(net, name: str, users: list[tuple[str, str, str]], copied: bool = False) -> None:
    """``net`` has the layers ``users`` work on (:func:`encoder_layers`, the check they make
    themselves) and, ``copied`` (a teacher-layers student is made of them), an encoder.layer
    stack; else a one-line ModelError naming the options that turn them off (DeBERTa and MPNet
    failed with an AttributeError, DistilBERT with a pruning error under --prune-ffn 0)."""
    from fastft.models.pruned import encoder_layers

    kind = getattr(net.config, "model_type", type(net).__name__)
    if copied:
        try:
            encoder_prefix(net)
        except ModelError:  # (DistilBERT, ALBERT, ModernBERT): what is left is quantization
            off = setting(NO_DISTILL, *((py, cli) for _, py, cli in users))
            raise ModelError(
                f"{name} is a {kind} model: distillation into its own layers works on encoders with an "
                f"encoder.layer stack; pass {off} to quantize it only, or a BERT-style {arg('student')}"
            ) from None
    if not users:
        return
    try:
        encoder_layers(net)
    except ModelError:
        what = " and ".join(w for w, _, _ in users)
        raise ModelError(
            f"{name} is a {kind} model: {what} work on BERT-style encoders (encoder.layer[i] with "
            "attention.self.query / key / value, attention.output.dense, intermediate.dense, output.dense); "
            f"pass {setting(*((py, cli) for _, py, cli in users))}, or another model"
        ) from None


def check_layers(d, n_layers: int | None) -> None:
    """--layers of a teacher-layers student within the teacher's depth (the plan's own check)."""
    if d.student == "teacher-layers" and d.layers is not None and n_layers:
        layer_plan(n_layers, d.layers)


def check_task_options(path: Path | str, meta: dict, cfg: CompressConfig) -> None:
    """The options for one task only, against the teacher's (``path``, its fastft.json ``meta``):
    accepted for the other, they were ignored and recorded as used, or misaligned word tags."""
    token = task_of(meta) == TOKEN_CLASSIFICATION
    if cfg.columns is not None and not token:
        raise FastftError(
            f"{arg('columns')} picks the word and tag columns of CoNLL-style data; {path} classifies whole texts"
        )
    if token and cfg.distill.augment:
        raise FastftError(
            f"{arg('augment')} perturbs sentences and would misalign the word tags: it applies to sequence "
            "classification only (drop it for a token-classification teacher)"
        )
    if token and cfg.distill.transfer:
        raise FastftError(
            f"{arg('transfer')} distils on whole-text labels: it applies to sequence classification only "
            "(drop it for a token-classification teacher)"
        )


def check_distillable(path: Path, meta: dict, distill: bool) -> None:
    """A head-pruned teacher (what compress writes) has no student shape to distil into."""
    if distill and _read_config(path).get("pruned_heads"):
        base = meta.get("base_model")
        raise ModelError(
            f"{path} is head-pruned (a fastft compress output): a student cannot be distilled from it; "
            f"compress the teacher it came from{f' ({base})' if base else ''}, or pass {setting(NO_DISTILL)}"
        )


def prepare(model, cfg: CompressConfig) -> Context:
    """Load the teacher and the data, checking everything that can be checked before training."""
    import torch

    cfg.validate()
    check_student(cfg.distill.student)
    torch.set_num_threads(cfg.threads or physical_cores())
    if model is not None:
        path = resolve_model(model)
        if not isinstance(path, Path):
            raise ModelError(f"{arg('model')} must be a fine-tuned model directory (got {model!r})")
        meta, labels = check_teacher_dir(path)
    # the defaults that depend on the task (config.TEXT_RECIPE), checked before the default teacher
    # (a text classifier) is trained
    token = model is not None and task_of(meta) == TOKEN_CLASSIFICATION
    cfg = cfg.resolved(text=not token)
    cfg.validate()
    d, pr = cfg.distill, cfg.prune
    if model is None:
        path = default_teacher(cfg.progress)
        meta, labels = check_teacher_dir(path)
    check_distillable(path, meta, d.enabled)
    # seeded after the default teacher, whose training (on a first run) moves the global random state:
    # a first run and every later run with the same --seed distil and prune alike
    set_seed(cfg.seed)
    task = task_of(meta)
    check_task_options(path, meta, cfg)
    spec = meta.get("data") or {}
    data, args, same = recorded_args(path, spec, cfg.data, task=task, seed=cfg.seed, columns=cfg.columns)
    splits = load_data(data, **args, limit=cfg.limit)
    splits.check_trainable()
    if same:
        check_unchanged(splits, spec)
    if not set(splits.labels) <= set(labels):
        raise DataError(
            f"the labels of {data!r} ({', '.join(splits.labels)}) differ from the teacher's ({', '.join(labels)})"
        )
    # matched by name below; the student learns those from the teacher's soft targets alone
    warn_lacking(splits.labels, labels, repr(data), "the teacher", "the student follows the teacher's scores for them")
    teacher = load_classifier(path, task=task).eval()  # a head-pruned one rebuilt (load_pruned), load errors one line
    check_layers(d, teacher.config.num_hidden_layers)
    users = layout_users(cfg)
    if not d.enabled or d.student == "teacher-layers":  # the model pruned and trained is the teacher's shape
        check_layout(teacher, str(model or path), users, copied=d.enabled)
        if pr.prune_heads or pr.prune_ffn:
            check_fractions(teacher, pr.prune_heads, pr.prune_ffn)
    tokenizer = load_tokenizer(path)
    max_length = clamp_max_length(d.max_length or meta.get("max_length") or 128, teacher.config)
    if d.enabled:
        fractions = (pr.prune_heads or 0.0, pr.prune_ffn)
        check_student_fits(d.student, len(tokenizer), max_length, users, task, labels, fractions)
    ids, y, rows, texts = {}, {}, None, {}
    if token:
        from fastft.compress.token_kd import TokenRows
        from fastft.data.labels import align_tag_ids

        rows = {}
        for name in ("train", "validation", "test"):
            r = TokenRows(tokenizer, align_tag_ids(splits.split(name), splits.labels, labels), max_length)
            rows[name], ids[name], y[name] = r, r.ids, r.labels
    else:
        for name in ("train", "validation", "test"):
            part = align_labels(splits.split(name), splits.labels, labels)
            ids[name], y[name] = encode(tokenizer, part.texts, max_length), list(part.labels)
            texts[name] = list(part.texts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    transfer = None
    if d.transfer:  # read now: a missing source fails before minutes of teacher outputs
        from fastft.compress.transfer import transfer_texts

        t0 = time.perf_counter()
        ttexts, tinfo = transfer_texts(d.transfer, d.transfer_size, cfg.seed, exclude=texts.get("train"))
        transfer = {"ids": encode(tokenizer, ttexts, max_length), "info": tinfo}
        transfer["info"]["examples"] = ttexts[:3]
        transfer["info"]["time_s"] = round(time.perf_counter() - t0, 2)
    return Context(
        path.resolve(),  # recorded in report.json and fastft.json: absolute, as the data's path is
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
        texts=texts or None,
        transfer=transfer,
        task=task,
        rows=rows,
    )


# -- helpers ------------------------------------------------------------------------------------
def torch_accuracy(net, ids, labels, pad_id: int, batch_size: int = 64) -> float:
    import torch

    correct = 0
    net.eval()
    with torch.inference_mode():
        for rows in sorted_batches([len(x) for x in ids], batch_size):
            x, m = pad_batch([ids[r] for r in rows], pad_id)
            pred = net(input_ids=x, attention_mask=m).logits.argmax(-1)
            correct += int((pred == torch.tensor([labels[r] for r in rows])).sum())
    return correct / max(1, len(ids))


def save_model_dir(ctx: Context, net, path: Path, stage: str, info: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    with quiet():  # transformers' "Writing model shards" bar
        net.save_pretrained(path, safe_serialization=True)
        ctx.tokenizer.save_pretrained(path)
    meta = {
        "format": 1,
        "task": ctx.task,
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


def log(ctx: Context, msg: str) -> None:
    if ctx.cfg.progress:
        print(f"fastft: {msg}", file=sys.stderr)
