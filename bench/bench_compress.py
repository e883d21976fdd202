"""The compression frontier: accuracy against ONNX Runtime latency, every variant in one run.

    python bench/bench_compress.py                       # needs runs/teacher (bench/bench_teacher.py)
    python bench/bench_compress.py --latency-only        # speed side only: untrained heads, no teacher needed
    python bench/bench_compress.py --limit 200 --epochs 1 --result-prefix /tmp/cf   # smoke

Variants (minilm-l6 teacher fine-tuned on movie-snippets): the teacher in fp32 and INT8; a
3-layer student from the teacher's own layers (fp32, INT8); that student pruned (heads + FFN,
recovery distillation; fp32, INT8); the built-in minilm-l3 distilled (fp32, INT8). Every
file is evaluated on the test split with ONNX Runtime, then all are timed interleaved in one
run (batch 1, seq 128 and 512, physical-core threads, spinning off): speed-ups are ratios
against the teacher fp32 measured in the same run.

Writes bench/results/compress_frontier.json, .csv and .png (or compress_latency.* with
--latency-only).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fastft.bench.runner import write_result  # first: notes the machine's load at the start

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default=str(ROOT / "runs" / "teacher"))
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "compress-bench"))
    ap.add_argument("--epochs", type=float, default=2, help="distillation epochs [2, as fastft compress]")
    ap.add_argument("--recovery-epochs", type=float, default=1)
    ap.add_argument("--prune-heads", type=float, default=0.25)
    ap.add_argument("--prune-ffn", type=float, default=0.5)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--variants", default="teacher,3L,3L-pruned,minilm-l3")
    ap.add_argument("--runs", type=int, default=30, help="interleaved latency rounds [30]")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--latency-only", action="store_true")
    ap.add_argument("--result-prefix", default=None)
    ap.add_argument(
        "--deadline-min", type=float, default=None, help="skip variants that would start after this many minutes"
    )
    return ap.parse_args()


def build_trained(args, work: Path) -> tuple[list[dict], dict]:
    """Train every variant on one shared context (data tokenized once, teacher outputs cached once).

    Returns entries with fp32/int8 ONNX files, and timings. Variants that would start after
    ``--deadline-min`` minutes are skipped (and listed).
    """
    import copy
    from dataclasses import replace

    from fastft.compress import CompressConfig
    from fastft.compress.context import prepare, save_model_dir
    from fastft.compress.quantize import export_onnx
    from fastft.compress.stages import do_distill, do_prune, do_quantize

    cfg = CompressConfig(
        epochs=args.epochs,
        recovery_epochs=args.recovery_epochs,
        limit=args.limit,
        layers=args.layers,
        prune_heads=args.prune_heads,
        prune_ffn=args.prune_ffn,
        # the variants this script compares, as it measured them before the text recipe became the
        # default (no augmentation, one pruning step, the same heads removed in every layer)
        augment=0,
        prune_steps=1,
        head_allocation="layer",
        bench=False,
    )
    t_start = time.perf_counter()
    ctx = prepare(args.teacher, cfg)
    variants = args.variants.split(",")
    out, t, skipped = [], {}, []

    def finish(name: str, net, d: Path, t0: float) -> None:
        fp32 = d / "model.onnx"
        export_onnx(net, fp32)
        q = do_quantize(ctx, fp32, d)
        t[name] = round(time.perf_counter() - t0, 1)
        common = {"variant": name, "dir": d, "net": net, "train_s": t[name]}
        out.extend(
            [
                {**common, "precision": "fp32", "file": fp32},
                {
                    **common,
                    "precision": "int8",
                    "file": q.path,
                    "int8": {k: q.info.get(k) for k in ("recipe", "accuracy_fp32", "accuracy_int8", "excluded_nodes")},
                },
            ]
        )
        print(f"bench: {name} done in {t[name]:.0f} s", file=sys.stderr)

    def late() -> bool:
        return args.deadline_min is not None and time.perf_counter() - t_start > args.deadline_min * 60

    if "teacher" in variants:
        t0 = time.perf_counter()
        finish("teacher", ctx.teacher, work / "teacher", t0)
    student = None
    if "3L" in variants or "3L-pruned" in variants:
        t0 = time.perf_counter()
        res = do_distill(ctx)
        student = res.model
        d = save_model_dir(ctx, student, work / f"{args.layers}L", "distilled", {})
        finish(f"{args.layers}L", student, d, t0)
    if "3L-pruned" in variants and student is not None:
        name = f"{args.layers}L-pruned-h{args.prune_heads:g}-f{args.prune_ffn:g}"
        if late():
            skipped.append(name)
        else:
            t0 = time.perf_counter()
            res = do_prune(ctx, copy.deepcopy(student))
            d = save_model_dir(ctx, res.model, work / name, "pruned", {})
            finish(name, res.model, d, t0)
    if "minilm-l3" in variants:
        if late():
            skipped.append("minilm-l3")
        else:
            t0 = time.perf_counter()
            ctx.cfg = replace(cfg, distill=replace(cfg.distill, student="minilm-l3", layers=None))
            res = do_distill(ctx)
            d = save_model_dir(ctx, res.model, work / "minilm-l3", "distilled", {})
            finish("minilm-l3", res.model, d, t0)
    return out, {"ctx": ctx, "times_s": t, "skipped_for_time": skipped}


def build_untrained(args, work: Path) -> list[dict]:
    """The same architectures with untrained heads (latency does not depend on the weights)."""
    import copy

    from fastft.compress.distill import make_student
    from fastft.compress.prune import prune_at_random
    from fastft.compress.quantize import export_onnx, quant_source, quantize_int8
    from fastft.models import load_classifier

    labels = ["negative", "positive"]
    teacher = load_classifier("minilm-l6", labels=labels).eval()
    student, _ = make_student(teacher, "teacher-layers", args.layers, labels)
    pruned = copy.deepcopy(student)
    prune_at_random(pruned, args.prune_heads, args.prune_ffn, seed=0)
    l3 = load_classifier("minilm-l3", labels=labels).eval()
    nets = {
        "teacher": teacher,
        f"{args.layers}L": student,
        f"{args.layers}L-pruned-h{args.prune_heads:g}-f{args.prune_ffn:g}": pruned,
        "minilm-l3": l3,
    }
    out = []
    for name, net in nets.items():
        d = work / name
        d.mkdir(parents=True, exist_ok=True)
        export_onnx(net, d / "model.onnx")
        quantize_int8(quant_source(d / "model.onnx"), d / "model_int8.onnx")
        out += [
            {"variant": name, "precision": "fp32", "dir": d, "file": d / "model.onnx", "net": net},
            {"variant": name, "precision": "int8", "dir": d, "file": d / "model_int8.onnx", "net": net},
        ]
    return out


def main() -> int:
    args = parse()
    import shutil

    from fastft.compress.prune import count_params, flops
    from fastft.compress.quantize import ort_logits, session
    from fastft.compress.report import measure_latency

    work = Path(args.workdir)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    extra = {}
    if args.latency_only:
        entries = build_untrained(args, work)
    else:
        if not Path(args.teacher, "config.json").is_file():
            print(
                f"no teacher at {args.teacher}: run bench/bench_teacher.py first, or pass --latency-only",
                file=sys.stderr,
            )
            return 2
        entries, extra = build_trained(args, work)
        ctx = extra.pop("ctx")
        for e in entries:
            logits = ort_logits(session(e["file"]), ctx.ids["test"], ctx.pad_id)
            e["accuracy"] = float((logits.argmax(1) == __import__("numpy").asarray(ctx.y["test"])).mean())
    build_s = time.perf_counter() - t0
    names = {f"{e['variant']}/{e['precision']}": e["file"] for e in entries}
    lat = measure_latency(names, runs=args.runs)
    rows = []
    base = lat["teacher/fp32"]
    t_acc = next((e.get("accuracy") for e in entries if e["variant"] == "teacher" and e["precision"] == "fp32"), None)
    for e in entries:
        key = f"{e['variant']}/{e['precision']}"
        net = e["net"]
        row = {
            "variant": e["variant"],
            "precision": e["precision"],
            "layers": net.config.num_hidden_layers,
            "heads_per_layer": net.bert.encoder.layer[0].attention.self.query.out_features // 32,
            "ffn": net.bert.encoder.layer[0].intermediate.dense.out_features,
            "parameters": count_params(net),
            "file_mb": round(e["file"].stat().st_size / 2**20, 2),
            "gflops_128": round(flops(net, 128) / 1e9, 3),
            "p50_ms_128": round(lat[key][128]["p50_ms"], 2),
            "p50_ms_512": round(lat[key][512]["p50_ms"], 2),
            "speedup_128": round(base[128]["p50_ms"] / lat[key][128]["p50_ms"], 2),
            "speedup_512": round(base[512]["p50_ms"] / lat[key][512]["p50_ms"], 2),
            "accuracy": e.get("accuracy"),
            "train_s": e.get("train_s"),
            "int8": e.get("int8"),
            "retained": round(e["accuracy"] / t_acc, 4) if e.get("accuracy") is not None and t_acc else None,
            "latency": {str(k): v for k, v in lat[key].items()},
        }
        rows.append(row)
    goal = [r for r in rows if r["retained"] is not None and r["retained"] >= 0.99 and r["speedup_512"] >= 4]
    floor = [r for r in rows if r["retained"] is not None and r["retained"] >= 0.97 and r["speedup_512"] >= 3]
    prefix = (
        Path(args.result_prefix)
        if args.result_prefix
        else RESULTS / ("compress_latency" if args.latency_only else "compress_frontier")
    )
    payload = {
        "benchmark": "compression frontier: test accuracy vs ONNX Runtime latency (batch 1)",
        "mode": "latency-only (untrained heads)" if args.latency_only else "trained",
        "teacher": None if args.latency_only else args.teacher,
        "settings": {k: v for k, v in vars(args).items() if k not in ("workdir", "result_prefix")},
        "latency_settings": {"batch": 1, "seqs": [128, 512], "runs": args.runs, "interleaved": True, "spinning": False},
        "rows": rows,
        "targets": None
        if args.latency_only
        else {
            "goal_99pct_at_4x_seq512": [f"{r['variant']}/{r['precision']}" for r in goal],
            "floor_97pct_at_3x_seq512": [f"{r['variant']}/{r['precision']}" for r in floor],
        },
        "build_s": round(build_s, 1),
        **extra,
    }
    cols = [
        "variant",
        "precision",
        "layers",
        "heads_per_layer",
        "ffn",
        "parameters",
        "file_mb",
        "gflops_128",
        "p50_ms_128",
        "p50_ms_512",
        "speedup_128",
        "speedup_512",
        "accuracy",
        "retained",
    ]
    write_result(prefix.with_suffix(".json"), payload, csv_rows=rows, csv_columns=cols)
    plot(rows, prefix.with_suffix(".png"), args.latency_only)
    for r in rows:
        acc = f"{r['accuracy']:.4f} ({r['retained']:.2%})" if r["accuracy"] is not None else "-"
        print(
            f"{r['variant']:<26} {r['precision']:<5} {r['parameters'] / 1e6:6.2f}M  {r['p50_ms_128']:8.2f} ms@128 "
            f"{r['p50_ms_512']:8.2f} ms@512  x{r['speedup_512']:<5} acc {acc}"
        )
    print(f"-> {prefix.with_suffix('.json')}")
    return 0


def plot(rows: list[dict], path: Path, latency_only: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        y = r["accuracy"] if not latency_only else r["gflops_128"]
        if y is None:
            continue
        marker = "o" if r["precision"] == "fp32" else "s"
        ax.scatter(r["p50_ms_512"], y, marker=marker, s=40)
        ax.annotate(
            f"{r['variant']} {r['precision']}",
            (r["p50_ms_512"], y),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set_xlabel("ONNX Runtime p50 latency at seq 512, batch 1 (ms, log)")
    ax.set_ylabel("GFLOPs at seq 128" if latency_only else "test accuracy (movie-snippets)")
    if not latency_only:
        t = next(r for r in rows if r["variant"] == "teacher" and r["precision"] == "fp32")
        ax.axhline(0.99 * t["accuracy"], ls="--", lw=0.8, color="gray", label="99% of teacher")
        ax.axhline(0.97 * t["accuracy"], ls=":", lw=0.8, color="gray", label="97% of teacher")
        ax.axvline(t["p50_ms_512"] / 4, ls="--", lw=0.8, color="green", label="4x faster than teacher fp32")
        ax.legend(fontsize=7)
    ax.set_title("fastft compress frontier (o fp32, s int8)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
