"""Which INT8 choices pay off on this CPU? ONNX Runtime latency of INT8 recipes vs fp32 and the peer.

    python bench/bench_int8.py                       # runs/teacher if trained, else minilm-l6 + fresh head
    python bench/bench_int8.py --model runs/teacher --seqs 128 512 --reps 30

Every variant is built from the same fused fp32 graph (fastft's export + ORT transformer
fusions) and timed interleaved (round-robin, the order rotated each round, so background load hits all alike) at
batch 1, ORT at --threads intra-op threads with spinning off. For each variant: p50/p90
latency per sequence length, speed-up vs fastft fp32 and vs the peer's INT8 (Optimum's
recipe), and, when the model has a trained head, label agreement with fp32 and accuracy on
the validation split. Speed-ups compare process CPU time per call (p50) — on a shared
machine wall time swings with other processes; wall p50 is recorded beside it.
Result: bench/results/int8_choices.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from fastft.bench.runner import interleave, quantiles, random_feeds, write_result  # first: notes the load at the start

ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[bench_int8] {msg}", file=sys.stderr, flush=True)


def make_session(path, threads: int, level: str = "basic"):
    import onnxruntime as ort

    from fastft.export.optimize import ort_level

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort_level(level)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def recipes():
    from fastft.export.quantize import Int8Recipe

    base = Int8Recipe(mode="dynamic", scope="weights", weight_type="int8")
    out = [replace(base, scope=s) for s in ("all", "weights", "ffn", "no-attention")]
    out += [
        replace(base, weight_type="uint8"),
        replace(base, reduce_range=True),
        replace(base, per_channel=True),
        replace(base, per_channel=True, reduce_range=True),  # the default without VNNI
        replace(base, weight_type="uint8", per_channel=True),
        replace(base, scope="no-attention", weight_type="uint8"),
    ]
    out += [
        replace(base, mode="static", quant_format="QDQ", calib_size=64),
        replace(base, mode="static", quant_format="QOperator", calib_size=64),
        # S8S8 QDQ: ORT's recommended default for QDQ on x86 with VNNI; on AVX2 it may saturate
        replace(base, mode="static", quant_format="QDQ", activation_type="int8", calib_size=64),
        replace(base, mode="static", quant_format="QDQ", activation_type="int8", per_channel=True, calib_size=64),
    ]
    return out


def ensure_model(arg: str | None, work: Path) -> Path:
    if arg:
        return Path(arg)
    teacher = ROOT / "runs" / "teacher"
    if (teacher / "fastft.json").is_file():
        return teacher
    import torch

    from fastft.models import load_classifier, load_tokenizer, write_meta

    path = work / "minilm-l6-fresh-head"
    torch.manual_seed(0)
    net = load_classifier("minilm-l6", labels=["negative", "positive"])
    net.save_pretrained(path)
    load_tokenizer("minilm-l6").save_pretrained(path)
    write_meta(
        path,
        {
            "format": 1,
            "task": "sequence-classification",
            "labels": ["negative", "positive"],
            "max_length": 64,
            "data": {"data": "movie-snippets", "seed": 42},
        },
    )
    log("runs/teacher not trained yet: using minilm-l6 with a fresh (untrained) head — accuracy is meaningless")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--seqs", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--agreement-n", type=int, default=400, help="validation texts for agreement/accuracy")
    ap.add_argument("--only", nargs="*", default=None, help="recipe names to run (default all)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "int8_choices.json"))
    args = ap.parse_args(argv)
    unknown = sorted(set(args.only or ()) - {r.name for r in recipes()})
    if unknown:  # checked now, not after the export: a misspelt name would silently time nothing
        ap.error(f"--only: no recipe named {', '.join(unknown)} (recipes: {', '.join(r.name for r in recipes())})")

    import torch

    torch.set_num_threads(args.threads)
    from fastft.core.system import cpu_info
    from fastft.export.onnx import export_onnx, model_input_names
    from fastft.export.optimize import fuse_transformer, ort_offline_optimize
    from fastft.export.peer import peer_pipeline
    from fastft.export.quantize import (
        TextCalibrationReader,
        default_recipe,
        quantize_onnx,
    )
    from fastft.export.validate import onnx_logits
    from fastft.models import read_meta
    from fastft.models.model_dir import load_model_dir

    work = Path(tempfile.mkdtemp(prefix="bench-int8-"))
    model_dir = ensure_model(args.model, work)
    meta = read_meta(model_dir)
    trained = bool(meta.get("metrics"))
    net, tok, _, max_len = load_model_dir(model_dir)
    names = model_input_names(net)

    log("export + fusions")
    plain = work / "plain.onnx"
    export_onnx(net, plain)
    fused = work / "fused.onnx"
    fuse_transformer(plain, fused, net.config)
    fp32 = work / "fp32.onnx"
    ort_offline_optimize(fused, fp32, "basic")
    variants = {"fastft-fp32": (fp32, "basic", None)}
    fp32x = work / "fp32-extended.onnx"
    ort_offline_optimize(fused, fp32x, "extended")
    variants["fastft-fp32-extended"] = (fp32x, "basic", None)
    peer = peer_pipeline(model_dir, work / "peer")
    variants["peer-fp32"] = (peer["fp32_optimized"], "all", None)
    variants["peer-int8"] = (peer["int8"], "all", None)  # what Optimum's ORTModel runs: ORT default level

    splits = None
    try:
        from fastft.data import load_data

        spec = meta.get("data") or {}
        splits = load_data(
            spec.get("path") or spec.get("data") or "movie-snippets",
            seed=spec.get("seed", 42),
            text_column=spec.get("text_column", "text"),
            label_column=spec.get("label_column", "label"),
        )
    except Exception as exc:  # noqa: BLE001
        log(f"no data ({exc}); static recipes and accuracy skipped")
    for r in recipes():
        if args.only and r.name not in args.only:
            continue
        if r.mode == "static" and splits is None:
            continue
        reader = None
        if r.mode == "static":
            reader = TextCalibrationReader(tok, splits.train.texts[: r.calib_size], names, max_len)
        q = work / f"{r.name}.onnx"
        t = time.perf_counter()
        try:
            quantize_onnx(fused, q, r, reader)
        except Exception as exc:  # noqa: BLE001
            log(f"{r.name}: quantisation failed: {exc}")
            continue
        qx = work / f"{r.name}-extended.onnx"
        ort_offline_optimize(q, qx, "extended")
        variants[r.name] = (qx, "basic", r)
        log(f"built {r.name} in {time.perf_counter() - t:.1f}s")

    sessions = {k: make_session(p, args.threads, lvl) for k, (p, lvl, _) in variants.items()}
    rng = np.random.default_rng(0)
    rows = {k: {} for k in variants}
    for seq in args.seqs:
        feeds = random_feeds(names, 1, seq, rng)
        log(f"timing seq {seq}: {len(variants)} variants x {args.reps} reps, interleaved")
        timed = interleave(
            {k: (lambda s=s, f=feeds: s.run(["logits"], f)) for k, s in sessions.items()}, args.reps, warmup=args.warmup
        )
        for k in variants:
            rows[k][str(seq)] = {**quantiles(timed.wall[k]), "cpu": quantiles(timed.cpu[k])}

    acc = {}
    if splits is not None:
        from fastft.data.labels import align_labels
        from fastft.models.model_dir import model_labels

        part = align_labels(splits.validation, splits.labels, model_labels(net))
        texts, labels = part.texts[: args.agreement_n], np.asarray(part.labels[: args.agreement_n])
        ref = None
        for k, s in sessions.items():
            pred = onnx_logits(s, tok, texts, names, max_len).argmax(1)
            if ref is None:
                ref = pred
            acc[k] = {
                "accuracy": float((pred == labels).mean()),
                "agreement_with_fp32": float((pred == ref).mean()),
                "n": len(texts),
            }

    results = []
    for k, (_p, lvl, r) in variants.items():
        row = {"variant": k, "runtime_level": lvl, "latency": rows[k], **acc.get(k, {})}
        if r is not None:
            row["recipe"] = r.to_dict()
        for seq in map(str, args.seqs):
            for key, get in (("", lambda r: r["p50_ms"]), ("_cpu", lambda r: r["cpu"]["p50_ms"])):
                mine = get(rows[k][seq])
                row.setdefault(f"speedup_vs_fp32{key}", {})[seq] = get(rows["fastft-fp32"][seq]) / mine
                row.setdefault(f"speedup_vs_peer_int8{key}", {})[seq] = get(rows["peer-int8"][seq]) / mine
        results.append(row)
        log(
            f"{k:46s} "
            + "  ".join(
                f"seq {s}: wall {rows[k][s]['p50_ms']:6.1f} cpu {rows[k][s]['cpu']['p50_ms']:6.1f} ms "
                f"(x{row['speedup_vs_fp32_cpu'][s]:.2f} fp32, x{row['speedup_vs_peer_int8_cpu'][s]:.2f} peer)"
                for s in map(str, args.seqs)
            )
            + (f"  agree {acc[k]['agreement_with_fp32']:.3f} acc {acc[k]['accuracy']:.3f}" if k in acc else "")
        )
    cpu = cpu_info()
    write_result(
        args.out,
        {
            "model": str(model_dir),
            "model_trained": trained,
            "batch": 1,
            "threads": args.threads,
            "spinning": False,
            "reps": args.reps,
            "seqs": args.seqs,
            "default_recipe": default_recipe(cpu).to_dict(),
            "peer": peer["record"],
            "results": results,
        },
    )
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
