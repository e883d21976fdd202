"""``fastft export``: a model directory to ONNX (fp32 optimised, optionally INT8)."""

from __future__ import annotations

import argparse

_DOC = """export a fine-tuned model directory to ONNX (optionally INT8)

examples:
  fastft export --model runs/teacher --output runs/teacher-onnx --int8
  fastft export --model runs/teacher --output runs/teacher-static --static --calib-size 256

Writes the model's Hugging Face files plus model.onnx (fp32, graph optimised for ONNX
Runtime; inputs input_ids, attention_mask[, token_type_ids], output logits) and, with
--int8/--static, model_int8.onnx. Parity is checked before anything is written: fp32
logits within 1e-4 of PyTorch at 6 shapes, INT8 labels agreeing with fp32 on >= 99% of
the validation split (--min-agreement; below it the most sensitive MatMuls are kept in
fp32). fastft.json's "onnx" section records what was done."""


def register(sub) -> None:
    from fastft.cli import add_command
    from fastft.cli.flags import add_config_flags
    from fastft.compress.config import QuantizeConfig

    p = add_command(sub, "export", "export a fine-tuned model to ONNX (fp32 + optional INT8)", _DOC)
    p.add_argument("--model", required=True, help="fine-tuned model directory")
    p.add_argument("--output", "-o", required=True, help="directory to write")
    p.add_argument("--int8", action="store_true", help="also write model_int8.onnx (dynamic INT8 by default)")
    p.add_argument(
        "--calib-data", default=None, help="data for calibration and the INT8 check [the training data in fastft.json]"
    )
    p.add_argument("--text-column", default=None, help="--calib-data's text column [text; a token JSONL file: tokens]")
    p.add_argument("--label-column", default=None, help="--calib-data's label column [label; a token JSONL file: tags]")
    p.add_argument("--encoding", default="utf-8", help="the INT8 check's data file encoding [utf-8]")
    # the INT8 options fastft compress has too, generated from the same config fields
    add_config_flags(p, QuantizeConfig, only=("static", "calib_size", "calib_method", "per_channel"))
    p.add_argument(
        "--min-agreement",
        type=float,
        default=None,
        metavar="SHARE",
        help="INT8 labels must agree with fp32 on at least this share of the validation texts; below it "
        "the most sensitive MatMuls stay fp32 until they do [0.99]",
    )
    p.add_argument(
        "--fused-attention",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write each attention as one com.microsoft Attention node from the exporter itself "
        "[on for BERT, RoBERTa, XLM-R, CamemBERT, ELECTRA, DistilBERT]",
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, at least 17 [17]")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing fastft output directory, with all it holds"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=_export)


def _export(args) -> int:

    from fastft.cli import json_guard
    from fastft.core.checks import check_float
    from fastft.core.errors import FastftError
    from fastft.core.io import dumps
    from fastft.export import export

    if args.min_agreement is not None:
        if not (args.int8 or args.static):  # (export() cannot tell a given 0.99 from its default)
            raise FastftError("--min-agreement sets the INT8 check's bar: it needs --int8")
        check_float("--min-agreement", args.min_agreement, lo=0, hi=1)
    with json_guard(args):  # stdout holds only the JSON
        info = export(
            args.model,
            args.output,
            int8=args.int8,
            static=args.static,
            calib_data=args.calib_data,
            text_column=args.text_column,
            label_column=args.label_column,
            encoding=args.encoding,
            calib_size=args.calib_size,
            calib_method=args.calib_method,
            per_channel=args.per_channel,
            opset=args.opset,
            overwrite=args.overwrite,
            fused_attention=args.fused_attention,
            **({} if args.min_agreement is None else {"min_agreement": args.min_agreement}),  # else export's default
            progress=not args.no_progress,
        )
    if args.json:
        print(dumps(info))
        return 0
    p = info.get("parity", {})
    fp = p.get("fp32")
    print(f"wrote {args.output}/model.onnx" + (f" and {args.output}/model_int8.onnx" if "int8" in info else ""))
    if fp:
        print(
            f"fp32 parity: max |logit diff| {fp['max_abs_diff']:.2e} at {len(fp['shapes'])} shapes (<= {fp['atol']:g})"
        )
    q = p.get("int8")
    if q:
        acc = (
            f", accuracy {q['fp32_accuracy']:.4f} -> {q['int8_accuracy']:.4f} ({q['accuracy_change']:+.4f})"
            if "accuracy_change" in q
            else ""
        )
        on = (
            f"{q['tokens']} tokens of {q['n']} {q['split']} sentences"
            if "tokens" in q
            else f"{q['n']} {q['split']} texts"
        )
        print(f"int8 ({info['int8']['recipe']}): label agreement {q['label_agreement']:.2%} on {on}{acc}")
    return 0
