"""How much a dynamic INT8 graph's answers depend on the texts batched with them, and what
running each text alone costs.

    python bench/bench_int8_isolation.py runs/compressed --result bench/results/int8_isolation.json

``model_int8.onnx`` (ONNX Runtime's dynamic quantisation) computes each activation's INT8
scale over the whole call: every text of the batch and its padding. So a text's probabilities
move with the texts beside it. ``fastft.load`` therefore runs such a graph one text per call
unless ``batch_int8=True``. This benchmark scores the movie-snippets test split both ways with
the same session (batches of ``--batch`` texts in length order, as ``predict`` makes them,
against one text per call): the largest change of a text's probability, how many texts move by
more than 0.01, how many labels flip, and the throughput of each way (``--rounds`` interleaved
passes, median texts/s), with the fp32 ``model.onnx`` as the control (it should not move).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from fastft.bench.runner import write_result  # first: notes the machine's load at the start

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a model directory with model_int8.onnx (and model.onnx)")
    ap.add_argument("--batch", type=int, default=32, help="texts per call when merged [32]")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing passes [5]")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--result", default=str(ROOT / "bench" / "results" / "int8_isolation.json"))
    args = ap.parse_args(argv)
    out = Path(args.result)
    if out.is_dir() or any(p.exists() and not p.is_dir() for p in out.parents):
        print(f"fastft: error: --result {args.result} is not a file path in a directory", file=sys.stderr)
        return 2
    if args.batch < 2 or args.rounds < 1:
        print("fastft: error: --batch must be at least 2 and --rounds at least 1", file=sys.stderr)
        return 2

    import numpy as np

    import fastft
    from fastft.core.errors import FastftError
    from fastft.data import load_data

    try:
        texts = list(load_data("movie-snippets", seed=42).test.texts)
        models = {p: fastft.load(args.model, int8=p == "int8", threads=args.threads) for p in ("int8", "fp32")}
    except FastftError as e:
        print(f"fastft: error: {e}", file=sys.stderr)
        return 2
    rows = []
    sizes = {"alone": 1, "merged": args.batch}
    for precision, m in models.items():
        dependent = m.batch_dependent
        m.batch_int8 = True  # the batch sizes below as given: one text per call, or --batch
        alone = m.predict_proba(texts, batch_size=1)
        merged = m.predict_proba(texts, batch_size=args.batch)
        diff = np.abs(alone - merged).max(axis=1)
        rates = {"alone": [], "merged": []}
        for _ in range(args.rounds):
            for way, size in sizes.items():
                t = time.perf_counter()
                m.predict_proba(texts, batch_size=size)
                rates[way].append(len(texts) / (time.perf_counter() - t))
        row = {
            "precision": precision,
            "file": m.onnx_file.name,
            "batch_dependent": dependent,
            "texts": len(texts),
            "max_prob_change": round(float(diff.max()), 5),
            "texts_moved_over_0.01": int((diff > 0.01).sum()),
            "labels_flipped": int((alone.argmax(1) != merged.argmax(1)).sum()),
            "texts_per_s_alone": round(statistics.median(rates["alone"]), 1),
            "texts_per_s_merged": round(statistics.median(rates["merged"]), 1),
        }
        row["merged_speedup"] = round(row["texts_per_s_merged"] / row["texts_per_s_alone"], 3)
        rows.append(row)
        print(row)
    write_result(
        args.result,
        {
            "benchmark": "dynamic INT8: scores one text per call against batches of --batch texts, and throughput",
            "model": args.model,
            "batch": args.batch,
            "rounds": args.rounds,
            "threads": args.threads,
            "data": "movie-snippets test split (seed 42)",
            "rows": rows,
        },
        csv_rows=rows,
    )
    print(f"wrote {args.result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
