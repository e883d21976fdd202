"""Accuracy of served INT8 models by batch size: dynamic quantization scales each batch as a whole.

    python bench/bench_eval_batch.py --models /path/to/compressed-a /path/to/compressed-b \
        --batch-sizes 1,32,64 --result bench/results/eval_batch_students.json

ONNX Runtime's dynamic INT8 quantizes each activation with one scale per tensor, taken from the
whole batch (padding rows included), so the labels a model serves can differ by a few rows with
the batch it runs in. Batch 1 is what a request served alone gets (no padding, nothing shared);
``fastft compress`` reports its stages in length-sorted batches of 64. For each model directory and
batch size this scores the test split with :func:`fastft.train.evaluate.evaluate` (what
``fastft eval`` and ``fastft.load`` serve) and writes accuracy and retained (against the teacher in
the directory's report, scored the same way at the same batch size).
"""

from __future__ import annotations

import argparse
import statistics
import sys

# first: notes the machine's load at the start
from fastft.bench.runner import add_model_dirs, int_list, model_dirs, reports_teacher, script_main, write_result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_dirs(ap)
    ap.add_argument("--batch-sizes", default="1,32,64", help="comma-separated [1,32,64]")
    ap.add_argument("--teacher", default=None, help="teacher directory [each report's teacher; they must agree]")
    ap.add_argument("--split", default="test")
    ap.add_argument("--result", default=None, help="result JSON (a CSV beside it)")
    a = ap.parse_args(argv)

    from fastft.compress.report import load as load_report
    from fastft.train.evaluate import evaluate

    dirs, names = model_dirs(a.models, a.names)
    sizes = int_list("--batch-sizes", a.batch_sizes, lo=1)
    reports = {name: load_report(d) for name, d in zip(names, dirs)}
    teacher = reports_teacher(list(reports.values()), a.teacher)
    rows = []
    for b in sizes:
        t = evaluate(teacher, split=a.split, batch_size=b, progress=False)
        rows.append({"model": "teacher", "batch_size": b, "file": t.get("file"), "accuracy": t["accuracy"]})
        for name, d in zip(names, dirs):
            r = evaluate(d, split=a.split, batch_size=b, progress=False)
            rows.append(
                {
                    "model": name,
                    "batch_size": b,
                    "file": r.get("file"),
                    "accuracy": r["accuracy"],
                    "retained": round(r["accuracy"] / t["accuracy"], 4),
                    "report_retained": reports[name]["stages"][-1].get("retained"),
                }
            )
            print(f"batch {b:>3} {name:>24}: accuracy {r['accuracy']:.4f}, retained {rows[-1]['retained']:.2%}")
    median = {
        str(b): round(statistics.median(r["retained"] for r in rows if r["batch_size"] == b and "retained" in r), 4)
        for b in sizes
    }
    print("median retained: " + ", ".join(f"{v:.2%} at batch {k}" for k, v in median.items()))
    if a.result:
        write_result(
            a.result,
            {
                "what": "test accuracy of served models by batch size (dynamic INT8 scales each batch as a whole)",
                "split": a.split,
                "teacher": teacher,
                "models": {n: str(d) for n, d in zip(names, dirs)},
                "median_retained": median,
                "rows": rows,
            },
            csv_rows=rows,
        )
    return 0


if __name__ == "__main__":
    sys.exit(script_main(main))
