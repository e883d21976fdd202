"""Speed of pruned student shapes against the teacher, before any training: which heads/FFN split buys 5x.

    python bench/bench_shapes.py --shapes 3:0.5:0.5,3:0.75:0.25,3:0.625:0.375 --rounds 200 \
        --result bench/results/shapes_vnni.json

Each shape ``LAYERS:HEADS:FFN`` is a student of the teacher's own layers (``fastft compress
--layers``) with that fraction of attention heads (chosen across layers, as ``--head-allocation
global`` removes them) and of FFN neurons removed, exported and quantised as ``fastft compress
--int8`` serves it (fused graph, this CPU's INT8 recipe; every MatMul INT8, as in the runs whose
accuracy check kept none fp32). Latency does not depend on the weights, so the heads to remove are
drawn at random (seeded, :func:`fastft.compress.prune.prune_at_random`): what moves the figures is
how many heads and neurons are left. A random choice across layers leaves uneven layouts (e.g. 8 / 6
/ 4 heads) where trained importance has often left them nearly even (6 / 6 / 6, 4 / 4 / 4); the
result records each layout, and ``--head-allocation layer`` times the even split. The teacher's ORT
fp32 graph and every student are timed in one process, interleaved
(:func:`fastft.compress.report.time_against_teacher`, the report's timer), at seq 128 and 512; the
result holds each shape's kept heads per layer, FFN width, parameters, FLOPs and p50 speed-up over
the teacher.

At seq 512 the attention scores (fp32, quadratic in the length) cost more per parameter than the
INT8 FFN matmuls, so removing heads buys more speed than removing the same parameters of FFN.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

# first: notes the machine's load at the start
from fastft.bench.runner import int_list, script_main, write_result

LABELS = ["negative", "positive"]


def parse_shapes(text: str) -> list[tuple[int, float, float]]:
    """``3:0.5:0.5,3:0.75:0.25`` -> [(3, 0.5, 0.5), (3, 0.75, 0.25)]; FastftError on a malformed or repeated item."""
    from fastft.core.errors import FastftError

    out = []
    for item in text.split(","):
        parts = item.strip().split(":")
        try:
            if len(parts) != 3:
                raise ValueError
            shape = (int(parts[0]), float(parts[1]), float(parts[2]))
        except ValueError:
            raise FastftError(f"--shapes: {item.strip()!r} is not LAYERS:HEADS:FFN (e.g. 3:0.5:0.5)") from None
        if shape in out:
            raise FastftError(f"--shapes: {item.strip()!r} is given twice")
        out.append(shape)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--shapes", default="3:0.5:0.5,3:0.75:0.25,3:0.625:0.375", help="LAYERS:HEADS:FFN,...")
    ap.add_argument("--teacher", default="minilm-l6", help="teacher model (its shape is what counts) [minilm-l6]")
    ap.add_argument("--rounds", type=int, default=100, help="interleaved rounds [100]")
    ap.add_argument("--seqs", default="128,512", help="sequence lengths [128,512]")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads [physical cores]")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random head/neuron choice [0]")
    ap.add_argument(
        "--head-allocation",
        default="global",
        choices=("global", "layer"),
        help="heads removed across layers (uneven layouts) or the same number per layer [global]",
    )
    ap.add_argument("--result", default=None, help="result JSON (a CSV beside it)")
    a = ap.parse_args(argv)

    from fastft.compress.distill import make_student
    from fastft.compress.prune import check_fractions, count_params, describe, flops, prune_at_random
    from fastft.compress.quantize import export_onnx, quant_source, quantize_int8
    from fastft.compress.report import time_against_teacher
    from fastft.core.errors import FastftError
    from fastft.models import load_classifier

    shapes = parse_shapes(a.shapes)
    seqs = int_list("--seqs", a.seqs, lo=2)
    if a.rounds < 1:
        raise FastftError("--rounds must be at least 1")
    teacher = load_classifier(a.teacher, labels=LABELS).eval()
    longest = teacher.config.max_position_embeddings
    if any(s > longest for s in seqs):
        raise FastftError(f"--seqs: the teacher has {longest} positions (got {a.seqs})")
    for layers, heads, ffn in shapes:  # every shape checked before anything is exported
        if not 1 <= layers <= teacher.config.num_hidden_layers:
            raise FastftError(f"--shapes: {layers} layers; the teacher has {teacher.config.num_hidden_layers}")
        check_fractions(teacher, heads, ffn)
    shape_info, files = {}, {}
    with tempfile.TemporaryDirectory(prefix="fastft-shapes-") as tmp:
        for layers, heads, ffn in shapes:
            name = f"L{layers}-h{heads:g}-f{ffn:g}"
            net, _ = make_student(teacher, "teacher-layers", layers, LABELS)
            prune_at_random(net, heads, ffn, seed=a.seed, global_heads=a.head_allocation == "global")
            net.eval()
            d = Path(tmp) / name
            d.mkdir()
            export_onnx(net, d / "model.onnx")
            q = quantize_int8(quant_source(d / "model.onnx"), d / "model_int8.onnx")
            files[name] = d / "model_int8.onnx"
            shape_info[name] = {
                "layers": layers,
                "prune_heads": heads,
                "prune_ffn": ffn,
                **{k: v for k, v in describe(net).items() if k != "layers"},
                "flops_512": flops(net, 512),
                "int8": {k: q[k] for k in ("recipe", "nodes_quantized")},
            }
            print(f"{name}: heads {shape_info[name]['heads']}, FFN {shape_info[name]['intermediate']}", file=sys.stderr)
        rows = time_against_teacher(teacher, files, seqs, a.rounds, a.threads)
    for row in rows:
        if row["model"] != "teacher":
            row["heads_kept"] = sum(shape_info[row["model"]]["heads"])
            row["ffn"] = shape_info[row["model"]]["intermediate"][0]
        print(
            f"{row['model']:>18} seq {row['seq']:>4}: p50 {row['p50_ms']:8.2f} ms  speed-up {row['speedup_p50']:.2f}x"
        )
    if a.result:
        write_result(
            a.result,
            {
                "what": "pruned student shapes (untrained weights, INT8 as fastft compress serves them) and the "
                "teacher's ORT fp32 graph timed together, interleaved; p50 speed-up over the teacher",
                "settings": {
                    "rounds": a.rounds,
                    "seqs": seqs,
                    "threads": a.threads,
                    "batch": 1,
                    "seed": a.seed,
                    "head_allocation": a.head_allocation,
                },
                "teacher": {"model": a.teacher, "parameters": count_params(teacher), "flops_512": flops(teacher, 512)},
                "shapes": shape_info,
                "rows": rows,
            },
            csv_rows=rows,
        )
    return 0


if __name__ == "__main__":
    sys.exit(script_main(main))
