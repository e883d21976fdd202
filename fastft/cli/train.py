"""``fastft train``, ``fastft eval`` and ``fastft predict``."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys

from fastft.cli import json_guard


def register(sub) -> None:
    from fastft.cli import add_command

    p = add_command(sub, "train", "fine-tune a pretrained encoder for text or token classification", _TRAIN_DOC)
    p.add_argument(
        "--model",
        default="minilm-l6",
        help="built-in alias (minilm-l6, minilm-l3), local directory or hub name [minilm-l6]",
    )
    p.add_argument(
        "--data",
        default="movie-snippets",
        help="movie-snippets, sms-spam, conll2003, or a .csv/.tsv/.jsonl/.conll file [movie-snippets]",
    )
    p.add_argument("--output", "-o", required=True, help="directory to write the fine-tuned model to")
    p.add_argument("--epochs", type=float, default=3, help="passes over the training split [3]")
    p.add_argument(
        "--max-length", type=int, default=128, help="longest input in tokens, clamped to the model's positions [128]"
    )
    p.add_argument("--batch-size", type=int, default=32, help="training batch size [32]")
    p.add_argument("--eval-batch-size", type=int, default=64, help="batch size of the per-epoch evaluations [64]")
    p.add_argument("--lr", type=float, default=5e-5, help="peak learning rate of AdamW [5e-5]")
    p.add_argument(
        "--weight-decay", type=float, default=0.01, help="AdamW weight decay, not on biases/LayerNorm [0.01]"
    )
    p.add_argument("--warmup-ratio", type=float, default=0.1, help="fraction of steps of linear warm-up [0.1]")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm [1.0]")
    p.add_argument("--dropout", type=float, default=None, help="override the model's dropout probabilities")
    p.add_argument(
        "--metric",
        default=None,
        help="validation metric for model selection and early stopping [accuracy; entity f1 for token classification]",
    )
    p.add_argument("--patience", type=int, default=None, help="stop after this many epochs without improvement")
    p.add_argument("--limit", type=int, default=None, help="use at most N rows per split (quick runs)")
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="train for N optimisation steps, however many epochs that takes (it replaces --epochs, as in "
        "transformers' Trainer)",
    )
    p.add_argument("--seed", type=int, default=42, help="seed of the split, initialisation and shuffling [42]")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (peft), merged into the weights on save")
    p.add_argument("--lora-r", type=int, default=8, help="LoRA rank [8]")
    _data_options(p)
    p.add_argument("--threads", type=int, default=None, help="torch threads [physical cores]")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing fastft output directory, with all it holds"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    p = add_command(sub, "eval", "evaluate a fine-tuned model on a data split")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--data", default=None, help="dataset (default: the one the model was trained on)")
    p.add_argument(
        "--split", default="test", choices=["train", "validation", "test"], help="the data split to score [test]"
    )
    p.add_argument("--max-length", type=int, default=None, help="longest input in tokens [the model's]")
    p.add_argument("--batch-size", type=int, default=64, help="texts scored per batch [64]")
    p.add_argument("--limit", type=int, default=None, help="use at most N rows")
    p.add_argument(
        "--backend",
        choices=["auto", "onnxruntime", "torch"],
        default="auto",
        help="auto: what predict serves (ONNX Runtime when the directory has an ONNX model, else PyTorch) [auto]",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        default=None,
        help="score model_int8.onnx with ONNX Runtime [fastft.json's default file]",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _decode_option(p)
    _data_options(p, defaults=None)
    p.set_defaults(func=_eval)

    p = add_command(
        sub, "predict", "label texts with a fine-tuned model (a token-classification model prints the entities)"
    )
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("texts", nargs="*", help="texts to label (or '-' to read one per line from stdin)")
    p.add_argument(
        "--backend",
        choices=["auto", "onnxruntime", "torch"],
        default="auto",
        help="auto: ONNX Runtime when the directory has an ONNX model, else PyTorch [auto]",
    )
    p.add_argument(
        "--int8",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="--int8: model_int8.onnx, --no-int8: model.onnx, with ONNX Runtime [fastft.json's default file]",
    )
    p.add_argument("--batch-size", type=int, default=32, help="texts per call [32]")
    _decode_option(p)
    p.set_defaults(func=_predict)


_TRAIN_DOC = """fine-tune a pretrained encoder for text or token classification

examples:
  fastft train --model minilm-l6 --data movie-snippets --epochs 3 --max-length 64 --output runs/teacher
  fastft train --data conll2003 --epochs 4 --lr 1e-4 --output runs/ner       # NER (token classification)
  fastft train --data my.conll --columns 0,3 --output runs/my-ner             # word in column 0, tag in 3

Writes a Hugging Face directory (config.json, model.safetensors, tokenizer) plus
fastft.json (labels, data spec, metrics per split, training arguments, versions)."""


def _decode_option(p) -> None:
    p.add_argument(
        "--decode",
        choices=["viterbi", "argmax"],
        default="viterbi",
        help="token classification: viterbi, the most likely valid IOB2 tag sequence; argmax, each "
        "word's best tag on its own (the spans of transformers' pipeline) [viterbi]",
    )


def _data_options(p, defaults: str | None = "text") -> None:
    if defaults is None:  # eval: the model directory knows its task
        p.set_defaults(task=None)
    else:
        _task_option(p)
    p.add_argument(
        "--text-column", default=defaults and "text", help="text column of a data file [text; JSONL tokens: tokens]"
    )
    p.add_argument(
        "--label-column", default=defaults and "label", help="label column of a data file [label; JSONL tokens: tags]"
    )
    p.add_argument(
        "--columns", default=None, help="CoNLL files: word and tag column numbers, e.g. 0,3 [first and last]"
    )
    p.add_argument("--encoding", default="utf-8", help="encoding of a data file [utf-8]")


def _task_option(p) -> None:
    p.add_argument(
        "--task",
        choices=["sequence-classification", "token-classification"],
        default=None,
        help="what to predict: one label per text or one tag per word [detected from the data]",
    )


def _train(args) -> int:
    from fastft.core.io import dumps
    from fastft.train.trainer import TrainConfig, run_training

    cfg = TrainConfig(
        model=args.model,
        data=args.data,
        output=args.output,
        epochs=args.epochs,
        max_length=args.max_length,
        batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio,
        max_grad_norm=args.max_grad_norm,
        dropout=args.dropout,
        metric=args.metric,
        patience=args.patience,
        limit=args.limit,
        max_steps=args.max_steps,
        seed=args.seed,
        lora=args.lora,
        lora_r=args.lora_r,
        text_column=args.text_column,
        label_column=args.label_column,
        task=args.task,
        columns=args.columns,
        encoding=args.encoding,
        threads=args.threads,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    with json_guard(args):
        meta = run_training(cfg)
    if args.json:
        print(dumps(meta))
        return 0
    t = meta["training"]
    print(f"saved {meta['output']}")
    print(
        f"trained {t['steps']} steps in {t['train_time_s']:.0f} s ({t['train_samples_per_s']:.1f} samples/s), "
        f"best epoch {t['best_epoch']}"
    )
    print(_metrics_table(meta["metrics"]))
    return 0


def _metrics_table(metrics: dict) -> str:
    token = any("per_type" in m for m in metrics.values())
    if token:  # entity-level (seqeval), overall then per entity type
        plain = any("f1_argmax" in m for m in metrics.values())  # viterbi-decoded, argmax beside
        cols = ["f1", *(["f1_argmax"] if plain else []), "precision", "recall", "accuracy", "f1_strict", "loss", "n"]
        rows = [["split", *cols]]
        for split, m in metrics.items():
            rows.append([split] + [_fmt(m.get(c)) for c in cols])
            for typ, t in (m.get("per_type") or {}).items():
                per = [_fmt(t["f1"]), *(["-"] if plain else []), _fmt(t["precision"]), _fmt(t["recall"])]
                rows.append([f"  {typ}", *per, *["-"] * 3, str(t["support"])])
    else:
        cols = ["accuracy", "f1_macro", "precision_macro", "recall_macro", "roc_auc", "loss", "n"]
        rows = [["split", *cols]]
        for split, m in metrics.items():
            rows.append([split] + [_fmt(m.get(c)) for c in cols])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    return "\n".join(table + [note for split, m in metrics.items() for note in _token_notes(split, m)])


def _token_notes(split: str, m: dict) -> list[str]:
    """What an entity score leaves out: sentences cut at the max length (their words past it count
    as O) and words the tokenizer reads as nothing (left out of the score)."""
    notes = []
    cut = m.get("cut") or {}
    if cut.get("sentences"):
        notes.append(
            f"{split}: {cut['sentences']} of {m.get('n')} sentences are longer than the max length: their "
            f"{cut['words']} words past it count as O ({cut['entities']} true entities reach past it; "
            "a larger --max-length sees them)"
        )
    if m.get("tokenless_words"):
        notes.append(
            f"{split}: {m['tokenless_words']} words are no token for this tokenizer (zero-width or control "
            "characters standing as words): left out of the score, their tags with them"
        )
    return notes


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _eval(args) -> int:
    from fastft.core.io import dumps
    from fastft.train.evaluate import evaluate

    with json_guard(args):
        res = evaluate(
            args.model,
            args.data,
            args.split,
            batch_size=args.batch_size,
            max_length=args.max_length,
            text_column=args.text_column,
            label_column=args.label_column,
            encoding=args.encoding,
            limit=args.limit,
            backend=args.backend,
            int8=args.int8,
            columns=args.columns,
            decode=args.decode,
            progress=not args.no_progress,
        )
    if args.json:
        print(dumps(res))
    else:
        served = f"{res['file']}, ONNX Runtime" if res.get("file") else "PyTorch"
        print(f"{res['model']} ({served}) on {res['data']} ({res['split']}, max length {res['max_length']})")
        print(_metrics_table({res["split"]: res}))
    return 0


def _predict(args) -> int:
    from fastft.core.errors import FastftError
    from fastft.core.io import dumps

    texts, lines = args.texts, None
    if "-" in texts and texts != ["-"]:
        raise FastftError("'-' reads the texts from stdin and takes no other texts")
    if texts == ["-"]:
        texts, lines = _stdin_lines()
        if not texts:
            raise FastftError("stdin held no text (only blank lines, or nothing)")
    if not texts:
        raise FastftError("no texts given: pass them as arguments, or '-' to read lines from stdin")
    from fastft.data.text import unicode_problem

    for i, t in enumerate(texts):
        problem = unicode_problem(t)
        if problem:
            raise FastftError(f"text #{i} {problem}; fastft reads text as UTF-8: convert it first")
    if _is_token_model(args.model):
        with json_guard(args), _stdin_line_numbers(lines):
            pred = _predictor(args)
            with _truncation_noted(pred, texts, lines) as cut:
                rows = [{"text": t, "entities": e} for t, e in zip(texts, pred.predict(texts))]
        _mark_truncated(rows, cut)
        print(dumps(rows) if args.json else _entities_table(rows))
        return 0
    with json_guard(args), _stdin_line_numbers(lines):
        from fastft.train.evaluate import prediction_rows

        pred = _predictor(args)
        with _truncation_noted(pred, texts, lines) as cut:
            rows = prediction_rows(texts, pred.predict_proba(texts), pred.labels)
    _mark_truncated(rows, cut)
    if args.json:
        print(dumps(rows))
    else:
        width = max(len(r["label"]) for r in rows)
        for r in rows:
            print(f"{r['label']:<{width}}  {r['score']:.4f}  {_shown(r['text'])}")
    return 0


@contextlib.contextmanager
def _stdin_line_numbers(lines: list[int] | None):
    """An error about ``text #i`` of texts read from stdin names its line there instead (blank
    lines are skipped, so the index alone does not find it)."""
    from fastft.core.errors import FastftError

    try:
        yield
    except FastftError as exc:
        m = re.match(r"text #(\d+) ", str(exc))
        if lines is None or m is None or int(m.group(1)) >= len(lines):
            raise
        raise type(exc)(f"stdin line {lines[int(m.group(1))]} {str(exc)[m.end() :]}") from None


@contextlib.contextmanager
def _truncation_noted(pred, texts: list[str], lines: list[int] | None):
    """Yields a list that holds, after the block, which texts ``pred`` cut at the max length
    (empty when none was). The predictor's TruncationWarning names the Python API; here it becomes
    one warning line that names the texts (by their stdin lines when read from stdin)."""
    import warnings

    from fastft.runtime import TruncationWarning

    cut: list[bool] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TruncationWarning)
        yield cut
    for w in caught:  # the others as they would have shown
        if not issubclass(w.category, TruncationWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    if not any(issubclass(w.category, TruncationWarning) for w in caught):
        return
    cut.extend(pred.truncated(texts))
    where = [f"stdin line {lines[i]}" if lines else f"text #{i}" for i, c in enumerate(cut) if c]
    shown = ", ".join(where[:5]) + (f" and {len(where) - 5} more" if len(where) > 5 else "")
    warnings.warn(
        f"{len(where)} of {len(texts)} texts are longer than the model's max length of {pred.max_length} "
        f"tokens, so the model saw only their start: {shown}",
        stacklevel=1,  # shown as one "fastft: warning:" line, without a place
    )


def _mark_truncated(rows: list[dict], cut: list[bool]) -> None:
    for row, c in zip(rows, cut or [False] * len(rows)):
        row["truncated"] = c


def _stdin_lines() -> tuple[list[str], list[int]]:
    """Non-blank lines of stdin, decoded as UTF-8 without a byte-order mark, and their line
    numbers (an error names the first bad line). Lines end at \\n, \\r\\n or a lone \\r, as in
    data files (a file from an old Mac is three texts, not one)."""
    from fastft.core.errors import FastftError
    from fastft.data.datasets import split_byte_lines, split_lines
    from fastft.data.text import decode_line

    buffer = getattr(sys.stdin, "buffer", None)
    chunks = sys.stdin if buffer is None else buffer  # a text stream (replaced in-process): already decoded
    out, numbers, n = [], [], 0
    for chunk in chunks:  # each ends at \\n; a lone \\r inside it ends a line too
        for raw in split_lines(chunk) if buffer is None else split_byte_lines(chunk):
            n += 1
            try:
                line = raw if buffer is None else decode_line(raw, f"stdin line {n}")
            except ValueError as exc:
                raise FastftError(
                    f"{exc}; fastft reads text as UTF-8: convert it first, e.g. iconv -f latin1 -t utf-8"
                ) from None
            line = line.removeprefix("\ufeff") if n == 1 else line
            if line.strip():
                out.append(line)
                numbers.append(n)
    return out, numbers


def _is_token_model(model: str) -> bool:
    from pathlib import Path

    from fastft.core.schema import TOKEN_CLASSIFICATION
    from fastft.models.task import model_task

    return Path(model).expanduser().is_dir() and model_task(model) == TOKEN_CLASSIFICATION


def _predictor(args):
    """What ``fastft predict`` serves the texts with: ``fastft.load`` with the command's options
    (--int8 / --no-int8 choose an ONNX file, so ONNX Runtime)."""
    from fastft.runtime import load
    from fastft.runtime.load import served_backend

    backend = served_backend(args.model, args.backend, args.int8)
    return load(args.model, backend=backend, int8=args.int8, batch_size=args.batch_size, decode=args.decode)


def _shown(text: str, width: int = 70) -> str:
    """A text for a table row: control characters (newlines, terminal escapes) escaped, long
    texts cut (``--json`` gives them whole)."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= width else text[: width - 3] + "..."


def _entities_table(rows: list[dict]) -> str:
    """Each text, then its entities as a table: type, score, character span, the text it covers."""
    lines = []
    for r in rows:
        lines.append(_shown(r["text"]))
        if not r["entities"]:
            lines.append("  (no entities)")
            continue
        width = max(6, *(len(e["entity"]) for e in r["entities"]))
        lines.append(f"  {'entity':<{width}}  {'score':>6}  {'chars':>9}  text")
        for e in r["entities"]:
            span = f"{e['start']}-{e['end']}"
            lines.append(f"  {e['entity']:<{width}}  {e['score']:.4f}  {span:>9}  {r['text'][e['start'] : e['end']]}")
    return "\n".join(lines)
