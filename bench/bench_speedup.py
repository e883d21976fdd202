"""Speed-up of compressed students over their teacher, timed again together with more rounds.

    python bench/bench_speedup.py --models /path/to/compressed-a /path/to/compressed-b /path/to/compressed-c \
        --rounds 100 --result bench/results/speedup_students.json

``fastft compress`` times its stages in the report with ``--bench-runs`` interleaved rounds (100 by
default, 20 before), so a speed-up near a target moves by a few tenths from one run to the next.
Here the teacher's ONNX Runtime fp32 graph (exported by the same path as the report's teacher
row) and every student's served graph (what ``fastft.load`` serves: ``model_int8.onnx`` after
``--int8``) are timed in one process, interleaved round-robin
(:func:`fastft.compress.report.time_against_teacher`, the report's own timer:
batch 1, the same random full-length inputs, ORT without spinning), at seq 128 and 512. The result
holds each model's quantiles, each student's p50 speed-up over the teacher, and their median.
The students run as served, with fastft's attention kernel inside ONNX Runtime where the install
built it; ``--ort-attention-too`` times each a second time on ORT's own attention in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys

# first: notes the machine's load at the start
from fastft.bench.runner import add_model_dirs, int_list, model_dirs, reports_teacher, script_main, write_result

ORT_SUFFIX = " (ORT attention)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_dirs(ap)
    ap.add_argument("--teacher", default=None, help="teacher directory [each report's teacher; they must agree]")
    ap.add_argument("--rounds", type=int, default=100, help="interleaved rounds [100]")
    ap.add_argument("--seqs", default="128,512", help="sequence lengths [128,512]")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads [physical cores]")
    ap.add_argument(
        "--ort-attention-too",
        action="store_true",
        help="also time each student on ONNX Runtime's own attention, in the same run ('NAME (ORT attention)')",
    )
    ap.add_argument("--result", default=None, help="result JSON (a CSV beside it)")
    a = ap.parse_args(argv)

    from fastft.compress.report import load as load_report
    from fastft.compress.report import time_against_teacher
    from fastft.core.errors import FastftError
    from fastft.models import load_classifier
    from fastft.runtime.load import served_onnx

    dirs, names = model_dirs(a.models, a.names)
    if a.rounds < 1:
        raise FastftError("--rounds must be at least 1")
    seqs = int_list("--seqs", a.seqs, lo=2)  # [CLS] and [SEP] at least
    # what fastft.load serves from each directory (model_int8.onnx after --int8)
    files = {name: served_onnx(d)[0] for name, d in zip(names, dirs)}
    reports = {name: load_report(d) for name, d in zip(names, dirs)}
    teacher = reports_teacher(list(reports.values()), a.teacher)
    net = load_classifier(teacher).eval()
    longest = net.config.max_position_embeddings
    seqs = [s for s in seqs if s <= longest]  # (the report skips lengths past the position table too)
    if not seqs:
        raise FastftError(f"--seqs: every length is longer than the teacher's {longest} positions")
    plain = {f"{n}{ORT_SUFFIX}": f for n, f in files.items()} if a.ort_attention_too else {}
    rows = time_against_teacher(net, {**files, **plain}, seqs, a.rounds, a.threads, plain=plain)
    for row in rows:
        row["student"] = row["model"].removesuffix(ORT_SUFFIX) if row["model"] != "teacher" else None
        if row["student"]:
            s = reports[row["student"]]["stages"][-1]
            row["report_speedup"] = s.get(f"speedup_{row['seq']}")
            row["retained"] = s.get("retained")

    def median_of(names):
        return {
            seq: round(statistics.median(r["speedup_p50"] for r in rows if r["model"] in names and r["seq"] == seq), 3)
            for seq in seqs
        }

    median = median_of(set(files))
    for r in rows:
        print(
            f"{r['model']:>28} seq {r['seq']:>4}: p50 {r['p50_ms']:8.2f} ms  speed-up {r['speedup_p50']:.2f}x"
            + (f"  (its report: {r['report_speedup']}x)" if "report_speedup" in r else "")
        )
    print("median speed-up of the students: " + ", ".join(f"{v:.2f}x at seq {k}" for k, v in median.items()))
    median_plain = median_of(set(plain)) if plain else None
    if median_plain:
        print("on ORT's own attention: " + ", ".join(f"{v:.2f}x at seq {k}" for k, v in median_plain.items()))
    if a.result:
        write_result(
            a.result,
            {
                "what": "the teacher's ORT fp32 graph and compressed students' served graphs timed together, "
                "interleaved; p50 speed-up over the teacher per student and their median",
                "settings": {"rounds": a.rounds, "seqs": seqs, "threads": a.threads, "batch": 1},
                "models": {
                    n: {"file": str(f), "directory": str(d), "config": reports[n].get("config")}
                    for (n, f), d in zip(files.items(), dirs)
                },
                "teacher": str(teacher),
                "median_speedup_p50": {str(k): v for k, v in median.items()},
                **(
                    {"median_speedup_p50_ort_attention": {str(k): v for k, v in median_plain.items()}}
                    if median_plain
                    else {}
                ),
                "rows": rows,
            },
            csv_rows=rows,
        )
    return 0


if __name__ == "__main__":
    sys.exit(script_main(main))
