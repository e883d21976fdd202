"""``fastft compress``: distill -> prune -> quantize a fine-tuned teacher, with a report."""

from __future__ import annotations

_DOC = """make a fine-tuned model small and fast: distill -> prune -> quantize, with a report

examples:
  fastft compress --int8                      # built-in teacher (trained and cached on first use),
                                              # 4-layer student distilled on the training texts and a
                                              # perturbed copy of each (soft targets weigh 0.8), half its
                                              # heads and FFN neurons pruned in two steps, INT8
  fastft compress --int8 --depth 0.5          # the default before: a 3-layer student (faster, less accurate)
  fastft compress --int8 --depth 0.5 --alpha 0.5 --augment 0 --prune-heads 0 --prune-steps 1 --recovery-epochs 1
                                              # earlier: every head kept (~3x, half the time)
  fastft compress --model runs/teacher --layers 3 --prune-heads 0.25 --int8 --output runs/small
  fastft compress --model runs/teacher --student minilm-l3 --int8 --static
  fastft compress --model runs/teacher --no-distill --prune-ffn 0 --int8      # quantize only

The output is a normal fastft model directory (HF files, model.onnx, model_int8.onnx,
fastft.json) plus report.json and report.md: one row per stage with parameters, file size,
FLOPs at sequence length 128, ONNX Runtime p50 latency at 128 and 512 (batch 1, measured
interleaved), test accuracy and accuracy retained vs the teacher."""


def register(sub) -> None:
    from fastft.cli import add_command
    from fastft.cli.flags import add_config_flags
    from fastft.compress.config import CompressConfig

    p = add_command(sub, "compress", "distill, prune and quantize a fine-tuned model, with a report", _DOC)
    p.add_argument(
        "--model",
        default=None,
        help="fine-tuned teacher directory [built-in: minilm-l6 fine-tuned on movie-snippets, "
        "trained and cached on first use]",
    )
    add_config_flags(p, CompressConfig)  # one flag per config field, a group per stage
    p.set_defaults(func=_compress)


def config_from_args(args):
    from fastft.cli import flags
    from fastft.compress.config import CompressConfig

    kw = flags.config_kwargs(args, CompressConfig)
    q = kw["quantize"]
    if q.static and q.mode is None:  # --static implies --int8
        q.mode = "int8"
    return CompressConfig(**kw)


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
    if q.get("label_agreement_fp32_test") is not None:
        print(
            f"{'FP16' if q.get('mode') == 'fp16' else 'INT8'} label agreement with fp32 (test): "
            f"{q['label_agreement_fp32_test']:.2%}; "
            f"nodes kept fp32 by the fallback: {q.get('fp32_nodes', 0)}"
        )
    if q.get("excluded_nodes"):
        print(f"kept in fp32 by the accuracy-aware INT8 pass: {', '.join(q['excluded_nodes'])}")
    print(f"saved {report['output']} (report.json, report.md); total {report['timings']['total_s']:.0f} s")
    return 0
