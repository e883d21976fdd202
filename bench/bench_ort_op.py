"""fastft's attention inside ONNX Runtime (libfastft_ort) against ORT's own, as fastft serves them.

    python bench/bench_ort_op.py                                  # -> bench/results/ort_op.json/.csv
    python bench/bench_ort_op.py --model runs/teacher --seqs 128 --reps 10 --result /tmp/o.json

One ``fastft export --int8`` directory (``--export``, else the one ``fastft bench`` builds and
caches for ``--model``, the fine-tuned teacher by default), loaded twice per file with
``fastft.load``: ``ort_attention="onnxruntime"`` (each layer's com.microsoft Attention /
QAttention node, as exported) and ``ort_attention="fastft"`` (the same graph with those nodes
split into ORT's QKV projection and fastft's C++ kernel as the custom op
``ai.fastft.FusedAttention``: bias folded in, padding-free; and each residual Add + LayerNorm
as ``ai.fastft.SkipLayerNorm``, each GELU as ``ai.fastft.BiasGelu``), and ``fastft-attention``:
the same with the LayerNorm and GELU swaps turned off in this process (the attention op
alone), and ``fastft-own-pool``: all three ops on fastft's own thread pool
(``FASTFT_OP_POOL=fastft`` while its sessions load) instead of the session's ONNX Runtime
intra-op threads they share by default. All run the same feeds through
``Predictor.logits_from_ids``, interleaved (rotating order, ``--threads`` intra-op threads,
spinning off):

- ``batch 1``: real text filling ``--seqs`` tokens each (no padding), as ``fastft bench``;
- ``padded``: ``--batch`` rows of real text padded to the longest, ``--padded-seq`` tokens, each
  row's length drawn uniformly from a quarter of it to all of it (seeded; the lengths are in the
  result): the batches a server makes from requests of different lengths.

Each row: p10/p50/p90/p99 ms and ``speedup`` = ORT attention's p50 / fastft's. Before timing,
label agreement and the largest logit difference over ``--texts`` real texts (batch 1, each at
its own length) and on the padded batch's valid rows.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from fastft.bench.runner import (  # noqa: E402
    int_list,
    interleave,
    own_op_pool,
    quantiles,
    script_main,
    write_result,
)
from fastft.core.errors import FastftError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FILES = {"fp32": False, "int8": True}  # graph -> fastft.load(int8=...)
# fastft-attention: the attention swap alone; fastft-own-pool: the ops on fastft's own threads
MODES = ("onnxruntime", "fastft-attention", "fastft", "fastft-own-pool")


def load(d: Path, int8: bool, threads: int, mode: str):
    """``d`` served by fastft.load as ``mode`` says (fastft-attention: the other swaps patched out;
    fastft-own-pool: the ops' kernels read FASTFT_OP_POOL=fastft as the session creates them)."""
    import fastft
    from fastft.runtime import ort

    if mode == "fastft-own-pool":
        with own_op_pool():
            return fastft.load(d, int8=int8, threads=threads, ort_attention="fastft", warm_up=False)
    if mode != "fastft-attention":
        return fastft.load(d, int8=int8, threads=threads, ort_attention=mode, warm_up=False)
    keep = ort.swap_layernorm, ort.swap_gelu
    ort.swap_layernorm = ort.swap_gelu = lambda proto, **_: (proto, 0)
    try:
        return fastft.load(d, int8=int8, threads=threads, ort_attention="fastft", warm_up=False)
    finally:
        ort.swap_layernorm, ort.swap_gelu = keep


def padded_batch(tok, texts, batch: int, seq: int, seed: int) -> tuple[dict, list[int]]:
    from fastft.bench.runners import make_inputs

    lengths = [int(x) for x in np.random.default_rng(seed).integers(max(2, seq // 4), seq + 1, batch)]
    return make_inputs(tok, batch, max(lengths), texts, lengths), lengths


def check_parity(preds: dict, tok, texts, n: int, padded: dict) -> dict:
    out = {}
    for graph in FILES:
        plain, fused = preds[(graph, "onnxruntime")], preds[(graph, "fastft")]
        same, diff, lengths = 0, 0.0, []
        for text in texts[:n]:
            enc = tok(text, truncation=True, max_length=512, return_tensors="np")
            a = plain.logits_from_ids(enc["input_ids"], enc["attention_mask"])
            b = fused.logits_from_ids(enc["input_ids"], enc["attention_mask"])
            same += int((a.argmax(-1) == b.argmax(-1)).all())
            diff = max(diff, float(np.abs(a - b).max()))
            lengths.append(int(enc["input_ids"].shape[1]))
        a = plain.logits_from_ids(padded["input_ids"], padded["attention_mask"])
        b = fused.logits_from_ids(padded["input_ids"], padded["attention_mask"])
        out[graph] = {
            "texts": len(lengths),
            "tokens_min_median_max": [min(lengths), int(np.median(lengths)), max(lengths)],
            "label_agreement": round(same / len(lengths), 4),
            "max_abs_diff_logits": diff,
            "padded_batch_label_agreement": float((a.argmax(-1) == b.argmax(-1)).mean()),
            "padded_batch_max_abs_diff_logits": float(np.abs(a - b).max()),
        }
        print(f"parity {graph}: {out[graph]}", flush=True)
    return out


def time_workload(preds: dict, name: str, feeds: dict, reps: int, warmup: int, extra: dict) -> list[dict]:
    fns = {
        f"{graph}/{mode}": (
            lambda p=preds[(graph, mode)]: p.logits_from_ids(feeds["input_ids"], feeds["attention_mask"])
        )
        for graph in FILES
        for mode in MODES
    }
    t = interleave(fns, reps, warmup=warmup, gap_s=0.003)
    rows = []
    for graph in FILES:
        base = quantiles(t.wall[f"{graph}/onnxruntime"])["p50_ms"]
        for mode in MODES:
            q = quantiles(t.wall[f"{graph}/{mode}"])
            rows.append(
                {
                    "workload": name,
                    "graph": graph,
                    "attention": mode,
                    **extra,
                    **{k: round(q[k], 3) for k in ("p10_ms", "p50_ms", "p90_ms", "p99_ms")},
                    "speedup": round(base / q["p50_ms"], 3),
                }
            )
            r = rows[-1]
            print(
                f"{name:<12} {graph:<5} {mode:<12} p50 {r['p50_ms']:8.2f}  p90 {r['p90_ms']:8.2f}  "
                f"p99 {r['p99_ms']:8.2f} ms  x{r['speedup']:.3f}",
                flush=True,
            )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model directory [the fine-tuned teacher if one exists]")
    ap.add_argument("--export", default=None, help="a `fastft export --int8` directory to use as is")
    ap.add_argument("--seqs", default="128,512", help="batch-1 lengths, tokens [128,512]")
    ap.add_argument("--batch", type=int, default=8, help="rows of the padded batch [8]")
    ap.add_argument("--padded-seq", type=int, default=512, help="the padded batch's longest possible row [512]")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--padded-reps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--texts", type=int, default=200, help="real texts for the label check [200]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--result", default=str(ROOT / "bench" / "results" / "ort_op.json"))
    args = ap.parse_args()
    seqs = int_list("--seqs", args.seqs, lo=2)
    for flag in ("batch", "padded_seq", "threads", "reps", "padded_reps", "texts"):
        if getattr(args, flag) < (2 if flag == "padded_seq" else 1):
            raise FastftError(f"--{flag.replace('_', '-')} must be a positive integer (got {getattr(args, flag)})")
    if args.warmup < 0:
        raise FastftError(f"--warmup must be >= 0 (got {args.warmup})")

    from fastft.bench import artifacts
    from fastft.bench.runners import bench_texts, make_inputs
    from fastft.models import load_tokenizer
    from fastft.runtime.ort_attention import library

    if library() is None:
        raise FastftError(
            "this install did not build libfastft_ort (ONNX Runtime's headers were missing at build time)"
        )
    if args.export:
        d = Path(args.export)
        if not artifacts.is_export_dir(d):
            raise FastftError(f"--export {d} is not a `fastft export --int8` directory")
    else:
        model_dir, what = (Path(args.model), "--model") if args.model else artifacts.default_model()
        d = artifacts.prepare(
            Path(model_dir), ["fastft-fp32", "fastft-int8"], artifacts.work_dir(Path(model_dir)), log=print
        )["fastft"]
        print(f"model: {what}; export: {d}", flush=True)
    preds = {(graph, mode): load(d, int8, args.threads, mode) for graph, int8 in FILES.items() for mode in MODES}
    swapped = {graph: preds[(graph, "fastft")].attention_swapped for graph in FILES}
    tok, texts = load_tokenizer(d), bench_texts()
    padded, lengths = padded_batch(tok, texts, args.batch, args.padded_seq, args.seed)
    parity = check_parity(preds, tok, texts, args.texts, padded)
    rows = []
    for s in seqs:
        rows += time_workload(
            preds, "batch 1", make_inputs(tok, 1, s, texts), args.reps, args.warmup, {"batch": 1, "seq": s}
        )
    rows += time_workload(
        preds,
        "padded",
        padded,
        args.padded_reps,
        1,
        {"batch": args.batch, "seq": max(lengths), "valid_tokens": sum(lengths)},
    )
    summary = {
        f"{r['workload']} {r['graph']} seq {r['seq']} {r['attention']}": r["speedup"]
        for r in rows
        if r["attention"] != "onnxruntime"
    }
    write_result(
        args.result,
        {
            "benchmark": "fastft attention (and residual LayerNorm) in ONNX Runtime (libfastft_ort custom ops) "
            "vs ORT's own, served",
            "export": str(d),
            "attention_nodes_swapped": swapped,
            "threads": args.threads,
            "reps": args.reps,
            "padded_reps": args.padded_reps,
            "padded_lengths": lengths,
            "speedup_fastft_vs_ort_attention": summary,
            "parity": parity,
            "rows": rows,
        },
        csv_rows=rows,
    )
    print(f"wrote {args.result}")
    return 0


if __name__ == "__main__":
    sys.exit(script_main(main))
