"""The thin fine-tuning trainer for sequence and token classification.

AdamW (no weight decay on biases and LayerNorm), linear warm-up and decay, gradient
clipping, dynamic padding, validation every epoch, early stopping on a chosen metric
with the best weights restored, optional LoRA (merged on save), fixed seeds.
Token classification (``task="token-classification"``, detected from the data when None)
aligns word tags to word pieces, batches sentences of similar length together and selects
on entity F1 (seqeval); see :mod:`fastft.train.token_metrics`.
"""

from __future__ import annotations

import copy
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fastft.core.checks import arg, setting
from fastft.core.errors import FastftError
from fastft.core.system import physical_cores
from fastft.train.loop import EpochStats, linear_schedule, param_groups, run_loop
from fastft.train.metrics import METRIC_NAMES
from fastft.train.token_metrics import TOKEN_METRIC_NAMES

_LORA = setting(("lora=True", "--lora"))  # the setting LoRA needs, named to both callers

__all__ = ["TrainConfig", "linear_schedule", "param_groups", "run_training", "set_seed", "train"]


@dataclass
class TrainConfig:
    model: str = "minilm-l6"
    data: str = "movie-snippets"
    output: str | None = None
    epochs: float = 3
    max_length: int | None = 128
    batch_size: int = 32
    eval_batch_size: int = 64
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    dropout: float | None = None
    seed: int = 42
    limit: int | None = None
    max_steps: int | None = None
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    metric: str | None = None  # None: accuracy (sequence), entity f1 (token classification)
    patience: int | None = None
    text_column: str = "text"
    label_column: str = "label"
    task: str | None = None  # None: detected from the data
    columns: str | None = None  # CoNLL files: "TOKEN,TAG" column numbers
    encoding: str = "utf-8"
    threads: int | None = None
    overwrite: bool = False
    progress: bool = True

    def validate(self) -> None:
        from fastft.core.checks import (
            MAX_EPOCHS,
            MAX_SEED,
            MAX_STEPS,
            check_bool_fields,
            check_float,
            check_int,
            check_max_length,
            check_path,
            check_threads,
            given_fields,
        )

        check_bool_fields(self)
        check_float(arg("epochs"), self.epochs, lo=0, hi=MAX_EPOCHS, lo_open=True)
        check_float(arg("lr"), self.lr, lo=0, lo_open=True)
        check_float(arg("weight_decay"), self.weight_decay, lo=0)
        check_float(arg("warmup_ratio"), self.warmup_ratio, lo=0, hi=1, hi_open=True)
        check_float(arg("max_grad_norm"), self.max_grad_norm, lo=0, lo_open=True)
        check_float(arg("dropout"), self.dropout, lo=0, hi=1, hi_open=True, optional=True)
        check_float("lora_dropout", self.lora_dropout, lo=0, hi=1, hi_open=True)
        for name in ("batch_size", "eval_batch_size", "lora_r"):
            check_int(arg(name), getattr(self, name), lo=1)
        check_int("lora_alpha", self.lora_alpha, lo=1)
        check_path("model", self.model)
        check_path("data", self.data, "a dataset name or a data file")
        check_path("output", self.output, "a directory", optional=True)
        check_int(arg("seed"), self.seed, lo=0, hi=MAX_SEED)
        for name in ("limit", "patience"):
            check_int(arg(name), getattr(self, name), lo=1, optional=True)
        check_int(arg("max_steps"), self.max_steps, lo=1, hi=MAX_STEPS, optional=True)
        check_max_length(arg("max_length"), self.max_length)
        check_threads(arg("threads"), self.threads)
        for name in given_fields(self, "lora_r", "lora_alpha", "lora_dropout") if not self.lora else ():
            named = arg(name) if name == "lora_r" else name  # read by lora=True only (were ignored)
            raise FastftError(f"{named} sets the LoRA adapters: it needs {_LORA}")
        known = dict.fromkeys(METRIC_NAMES + TOKEN_METRIC_NAMES)
        if self.metric is not None and self.metric not in known:
            raise FastftError(f"unknown {arg('metric')} {self.metric!r}; choose one of {', '.join(known)}")
        from fastft.data.tokens import check_task, parse_columns

        check_task(self.task)
        parse_columns(self.columns)


def set_seed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _better(metric: str, new: float | None, best: float | None) -> bool:
    if new is None:
        return False
    if best is None:
        return True
    return new < best if metric == "loss" else new > best


class _Default(str):
    """A default argument's value, told apart from the same value given (``data="movie-snippets"``
    given with a TrainConfig replaces its data; left out, it does not)."""


_DATA = _Default("movie-snippets")


def train(model: str = "minilm-l6", data: str = _DATA, output: str | None = None, **kwargs) -> dict:
    """Fine-tune ``model`` on ``data`` and save a fastft model directory to ``output``.

    Returns the fastft.json metadata written (metrics per split, training arguments...).
    Keyword arguments are the fields of :class:`TrainConfig`; a TrainConfig may be given as
    ``model`` (``train(cfg)``), the keyword arguments then replacing its fields.
    """
    from dataclasses import fields, replace

    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise FastftError(
            f"train() has no argument {unknown[0]!r}; it takes TrainConfig's fields ({', '.join(sorted(names))})"
        )
    if isinstance(model, TrainConfig):
        given = {k: v for k, v in (("data", data), ("output", output)) if not isinstance(v, _Default | None)}
        return run_training(replace(model, **given, **kwargs))
    cfg = TrainConfig(model=model, data=str(data), output=output, **kwargs)
    return run_training(cfg)


def _onto_head(splits, head: list[str] | None, model):
    """The data's labels in the order of the head ``model`` already has, where that head knows every
    one of them (its tags in another order, or a label the data lacks: training goes on with the
    head, labels matched by name as eval does); a head for other labels is load_classifier's error."""
    if head is None or head == splits.labels or not set(splits.labels) <= set(head):
        return splits
    from fastft.data.labels import relabel_splits, warn_lacking

    warn_lacking(
        splits.labels, head, "the data", f"{model}'s head", "training goes on with that head, and does not teach them"
    )
    return relabel_splits(splits, head)


def run_training(cfg: TrainConfig) -> dict:
    cfg.validate()
    from fastft.core.io import check_output_dir, claim_output
    from fastft.core.system import torch_threads_kept

    check_output_dir(cfg.output, cfg.overwrite, inputs=(cfg.model, cfg.data))  # fail before any work
    with claim_output(cfg.output), torch_threads_kept():  # a second run for this output is refused from now on
        return _train(cfg)


def _train(cfg: TrainConfig) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from fastft.core.io import atomic_output_dir
    from fastft.core.schema import TOKEN_CLASSIFICATION, write_meta
    from fastft.core.system import versions
    from fastft.data import load_data
    from fastft.data.collate import (
        Collator,
        TokenCollator,
        clamp_max_length,
        length_buckets,
        require_fast,
        token_lengths,
    )
    from fastft.models import load_classifier, load_tokenizer
    from fastft.models.hf import quiet
    from fastft.models.resolve import existing_head_labels
    from fastft.train.evaluate import run_eval
    from fastft.train.token_metrics import run_token_eval

    if cfg.threads and cfg.threads > physical_cores():  # (200 threads on 2 cores trained 6.5x slower)
        import warnings

        warnings.warn(
            f"--threads {cfg.threads} is more than the {physical_cores()} physical cores: training will be slower",
            UserWarning,
            stacklevel=2,
        )
    torch.set_num_threads(cfg.threads or physical_cores())
    set_seed(cfg.seed)
    splits = load_data(
        cfg.data,
        text_column=cfg.text_column,
        label_column=cfg.label_column,
        seed=cfg.seed,
        encoding=cfg.encoding,
        limit=cfg.limit,
        task=cfg.task,
        columns=cfg.columns,
    )
    splits.check_trainable()
    # the labels as the model's head orders them, before any check reads them (roc_auc's two)
    splits = _onto_head(splits, existing_head_labels(cfg.model, splits.task), cfg.model)
    token = splits.task == TOKEN_CLASSIFICATION
    metric = cfg.metric or ("f1" if token else "accuracy")
    allowed = TOKEN_METRIC_NAMES if token else METRIC_NAMES
    if metric not in allowed:
        raise FastftError(
            f"{arg('metric')} {metric!r} does not apply to {splits.task}; choose one of {', '.join(allowed)}"
        )
    if metric == "roc_auc" and len(splits.labels) != 2:  # it is computed for two classes only
        raise FastftError(
            f"{arg('metric')} roc_auc needs two classes and this run has {len(splits.labels)} "
            f"({', '.join(splits.labels)[:80]}); choose another, e.g. f1_macro"
        )
    if metric == "roc_auc" and len(set(splits.validation.labels)) < 2:  # no epoch could ever be chosen
        raise FastftError(
            f"{arg('metric')} roc_auc is undefined on the validation split of {splits.name!r}: it holds one class; "
            "choose another metric (e.g. f1_macro), or give the validation split both classes"
        )
    tokenizer = load_tokenizer(cfg.model)
    if token:
        require_fast(tokenizer)
    net = load_classifier(cfg.model, labels=splits.labels, dropout=cfg.dropout, task=splits.task)
    max_length = clamp_max_length(cfg.max_length, net.config, tokenizer)

    if cfg.lora:
        net = _wrap_lora(net, cfg, token)

    g = torch.Generator().manual_seed(cfg.seed)
    if token:  # sentences of similar length batched together: CoNLL lengths vary from 1 to 100+ words
        train_rows = list(zip(splits.train.tokens, splits.train.tags))
        lengths = [len(w) for w in splits.train.tokens]
        n_batches = math.ceil(len(train_rows) / cfg.batch_size)

        def epoch_batches(epoch):
            return DataLoader(
                train_rows,
                batch_sampler=length_buckets(lengths, cfg.batch_size, g),
                collate_fn=TokenCollator(tokenizer, max_length),
            )

        def evaluate_split(split):
            return run_token_eval(net, tokenizer, split, splits.labels, max_length, cfg.eval_batch_size)
    else:  # batched by token length too: random batches of the default data are about half padding
        train_rows = list(zip(splits.train.texts, splits.train.labels))
        lengths = token_lengths(tokenizer, splits.train.texts, max_length)
        n_batches = math.ceil(len(train_rows) / cfg.batch_size)

        def epoch_batches(epoch):
            return DataLoader(
                train_rows,
                batch_sampler=length_buckets(lengths, cfg.batch_size, g),
                collate_fn=Collator(tokenizer, max_length),
            )

        def evaluate_split(split):
            return run_eval(net, tokenizer, split, max_length, cfg.eval_batch_size, progress=False)

    steps_per_epoch = n_batches
    total_steps = cfg.max_steps or max(1, math.ceil(steps_per_epoch * cfg.epochs))
    history = []
    best = {"value": None, "state": None, "epoch": None, "bad": 0}

    def step_loss(batch):
        return net(**batch).loss, batch["labels"].shape[0], None

    def end_epoch(stats: EpochStats) -> bool:
        val = evaluate_split(splits.validation)
        if not math.isfinite(val["loss"]):  # the steps' losses were finite, the weights they left are not usable
            best["diverged"] = stats.epoch
            kept = f"; keeping epoch {best['epoch']}" if best["state"] is not None else ""
            print(f"epoch {stats.epoch}: diverged (validation loss {val['loss']}): stopping{kept}", file=sys.stderr)
            return True
        val["epoch"], val["train_loss"] = stats.epoch, stats.running or 0.0
        history.append(val)
        scores = (
            f"entity f1 {val['f1']:.4f}, precision {val['precision']:.4f}, recall {val['recall']:.4f}"
            if token
            else f"accuracy {val['accuracy']:.4f}, f1 {val['f1_macro']:.4f}"
        )
        print(
            f"epoch {stats.epoch}: train loss {stats.running or 0.0:.4f}, validation {scores}, loss {val['loss']:.4f}",
            file=sys.stderr,
        )
        if _better(metric, val.get(metric), best["value"]):
            best.update(value=val.get(metric), epoch=stats.epoch, bad=0)
            best["state"] = copy.deepcopy({k: v.detach().clone() for k, v in net.state_dict().items()})
            return False
        best["bad"] += 1
        if cfg.patience is not None and best["bad"] >= cfg.patience:
            print(f"early stopping: no {metric} improvement for {best['bad']} epoch(s)", file=sys.stderr)
            return True
        return False

    res = run_loop(
        net,
        epoch_batches,
        step_loss,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_ratio=cfg.warmup_ratio,
        max_grad_norm=cfg.max_grad_norm,
        end_epoch=end_epoch,
        progress=cfg.progress,
        desc="epoch",
        what="training",
        postfix=lambda r, parts, elapsed: {"samples_s": f"{r.samples / elapsed:.1f}"},
    )
    step, samples, best_state, best_epoch = res.steps, res.samples, best["state"], best["epoch"]
    if best.get("diverged") is not None and best_state is None:  # no epoch before it to keep
        raise FastftError(
            f"training diverged: the validation loss is not a number after epoch {best['diverged']} "
            "(try a lower lr, --lr)"
        )
    train_time = res.time_s
    if best_state is not None:
        net.load_state_dict(best_state)
    if cfg.lora:
        net = net.merge_and_unload()
    net.eval()

    metrics = {"validation": evaluate_split(splits.validation), "test": evaluate_split(splits.test)}
    args = {k: v for k, v in asdict(cfg).items() if k not in ("overwrite", "progress")}
    args["max_length"], args["metric"], args["task"] = max_length, metric, splits.task
    meta = {
        "format": 1,
        "task": splits.task,
        "labels": splits.labels,
        "base_model": str(cfg.model),
        "max_length": max_length,
        "data": {**splits.spec, "sizes": splits.sizes(), "labels": splits.labels},
        "metrics": metrics,
        "training": {
            **args,
            "steps": step,
            "optimizer": res.optimizer_label,
            "dropout_implementation": res.dropout,  # (the --dropout given is the "dropout" above)
            "threads": torch.get_num_threads(),
            "best_epoch": best_epoch,
            "train_time_s": round(train_time, 2),
            "train_samples_per_s": round(samples / train_time, 2) if train_time else None,
            "history": history,
        },
        "versions": versions(),
        "history": [{"stage": "train", "time": time.strftime("%Y-%m-%dT%H:%M:%S")}],
    }
    with atomic_output_dir(cfg.output, cfg.overwrite, inputs=(cfg.model, cfg.data)) as tmp:
        with quiet():  # transformers' "Writing model shards" bar (progress=False too)
            net.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        write_meta(tmp, meta)
    meta["output"] = str(Path(cfg.output).resolve())
    return meta


def _wrap_lora(net, cfg: TrainConfig, token: bool = False):
    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError:
        raise FastftError(f"{_LORA} needs the peft library: pip install peft") from None
    lcfg = LoraConfig(
        task_type=TaskType.TOKEN_CLS if token else TaskType.SEQ_CLS,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=_lora_targets(net),
    )
    return get_peft_model(net, lcfg)


def _lora_targets(net) -> list[str]:
    names = {n.rsplit(".", 1)[-1] for n, _ in net.named_modules()}
    for group in (["query", "key", "value"], ["q_lin", "k_lin", "v_lin"], ["q_proj", "k_proj", "v_proj"]):
        if set(group) <= names:
            return group
    raise FastftError(f"{_LORA}: cannot find the attention projections of this architecture")
