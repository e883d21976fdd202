"""``fastft compress``: distill -> prune -> quantize a fine-tuned teacher, with a report."""

from __future__ import annotations

_DOC = """make a fine-tuned model small and fast: distill -> prune -> quantize, with a report

examples:
  fastft compress --int8                      # built-in teacher (trained and cached on first use),
                                              # 3-layer student, half the FFN pruned, INT8
  fastft compress --model runs/teacher --layers 3 --prune-heads 0.25 --int8 --output runs/small
  fastft compress --model runs/teacher --student minilm-l3 --int8 --static
  fastft compress --model runs/teacher --no-distill --prune-ffn 0 --int8      # quantize only

The output is a normal fastft model directory (HF files, model.onnx, model_int8.onnx,
fastft.json) plus report.json and report.md: one row per stage with parameters, file size,
FLOPs at sequence length 128, ONNX Runtime p50 latency at 128 and 512 (batch 1, measured
interleaved), test accuracy and accuracy retained vs the teacher."""


def register(sub) -> None:
    from fastft.cli import add_command
    from fastft.compress.config import DEFAULT_OUTPUT

    p = add_command(sub, "compress", "distill, prune and quantize a fine-tuned model, with a report", _DOC)
    p.add_argument(
        "--model",
        default=None,
        help="fine-tuned teacher directory [built-in: minilm-l6 fine-tuned on movie-snippets, "
        "trained and cached on first use]",
    )
    p.add_argument("--data", default=None, help="dataset [the one the teacher was trained on]")
    p.add_argument("--output", "-o", default=DEFAULT_OUTPUT, help=f"output model directory [{DEFAULT_OUTPUT}]")
    p.add_argument("--int8", action="store_true", help="INT8 ONNX Runtime quantization (dynamic by default)")
    p.add_argument("--fp16", action="store_true", help="FP16 ONNX (for GPUs)")
    p.add_argument("--static", action="store_true", help="static INT8 (implies --int8) calibrated on training rows")
    p.add_argument(
        "--student",
        default="teacher-layers",
        help="teacher-layers (copy of the teacher's layers), minilm-l3, or a model directory [teacher-layers]",
    )
    p.add_argument("--layers", type=int, default=None, help="student depth for teacher-layers [half the teacher's]")
    p.add_argument("--no-distill", action="store_true", help="skip distillation (prune/quantize the teacher itself)")
    p.add_argument("--prune-heads", type=float, default=0.0, help="fraction of attention heads removed per layer [0]")
    p.add_argument("--prune-ffn", type=float, default=0.5, help="fraction of FFN neurons removed per layer [0.5]")
    p.add_argument(
        "--sparsity",
        type=float,
        default=0.0,
        help="unstructured magnitude pruning of encoder weights (no speed-up on dense kernels) [0]",
    )
    p.add_argument("--recovery-epochs", type=float, default=1, help="distillation epochs after pruning [1]")
    p.add_argument(
        "--target-retained",
        type=float,
        default=0.99,
        help="accuracy the final model must keep, as a fraction of the teacher's [0.99]",
    )
    p.add_argument(
        "--accuracy-budget",
        type=float,
        default=0.005,
        help="largest validation accuracy drop INT8 may cost before sensitive MatMuls stay fp32 [0.005]",
    )
    p.add_argument("--epochs", type=float, default=2, help="distillation epochs [2]")
    p.add_argument("--lr", type=float, default=1e-4, help="distillation learning rate [1e-4]")
    p.add_argument("--batch-size", type=int, default=32, help="[32]")
    p.add_argument("--max-length", type=int, default=None, help="longest input in tokens [the teacher's]")
    p.add_argument("--temperature", type=float, default=2.0, help="distillation temperature [2]")
    p.add_argument("--limit", type=int, default=None, help="use at most N rows per split (quick runs)")
    p.add_argument("--seed", type=int, default=42, help="[42]")
    p.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads [physical cores]")
    p.add_argument("--no-bench", action="store_true", help="skip the latency measurement in the report")
    p.add_argument("--bench-runs", type=int, default=20, help="interleaved latency rounds per stage [20]")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_compress)


def config_from_args(args):
    from fastft.compress.config import CompressConfig
    from fastft.core.errors import FastftError

    if args.int8 and args.fp16:
        raise FastftError("--int8 and --fp16 exclude each other: pick one")
    return CompressConfig(
        data=args.data,
        output=args.output,
        distill=not args.no_distill,
        student=args.student,
        layers=args.layers,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        max_length=args.max_length,
        temperature=args.temperature,
        prune_heads=args.prune_heads,
        prune_ffn=args.prune_ffn,
        sparsity=args.sparsity,
        recovery_epochs=args.recovery_epochs,
        quantize="fp16" if args.fp16 else "int8" if args.int8 or args.static else None,
        static=args.static,
        accuracy_budget=args.accuracy_budget,
        target_retained=args.target_retained,
        bench=not args.no_bench,
        bench_runs=args.bench_runs,
        seed=args.seed,
        limit=args.limit,
        threads=args.threads,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )


def _compress(args) -> int:

    from fastft.cli import json_guard
    from fastft.compress.pipeline import compress
    from fastft.compress.report import table
    from fastft.core.io import dumps

    cfg = config_from_args(args)
    with json_guard(args):  # stdout holds only the JSON
        report = compress(args.model, cfg)
    if args.json:
        print(dumps(report))
        return 0
    print(table(report["stages"], report.get("metric", "accuracy")))
    v = report["verdict"]
    print(("" if v["met"] else "WARNING: ") + v["message"])
    q = report.get("quantization") or {}
    if q.get("excluded_nodes"):
        print(f"kept in fp32 by the accuracy-aware INT8 pass: {', '.join(q['excluded_nodes'])}")
    print(f"saved {report['output']} (report.json, report.md); total {report['timings']['total_s']:.0f} s")
    return 0
