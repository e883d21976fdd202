"""Fine-tune the minilm-l6 teacher on movie-snippets and record accuracy and training speed.

    python bench/bench_teacher.py                 # full run: 3 epochs, max length 64 (~30 min on 2 cores)
    python bench/bench_teacher.py --limit 200 --epochs 1 --output /tmp/t --result /tmp/r.json   # smoke

Writes bench/results/teacher_minilm-l6_movie-snippets.json; the trained model stays in --output
(runs/teacher by default) for the export, attention and compress benchmarks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastft.bench.runner import write_result  # first: it notes the machine's load at the start

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--data", default="movie-snippets")
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--output", default=str(ROOT / "runs" / "teacher"))
    ap.add_argument("--result", default=str(ROOT / "bench" / "results" / "teacher_minilm-l6_movie-snippets.json"))
    args = ap.parse_args()

    import fastft

    meta = fastft.train(
        model=args.model,
        data=args.data,
        output=args.output,
        epochs=args.epochs,
        max_length=args.max_length,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        limit=args.limit,
        overwrite=True,
    )
    t = meta["training"]
    payload = {
        "benchmark": "teacher fine-tuning",
        "model": args.model,
        "data": args.data,
        "split_sizes": meta["data"]["sizes"],
        "settings": {
            k: t[k] for k in ("epochs", "max_length", "batch_size", "lr", "weight_decay", "warmup_ratio", "seed")
        },
        "test_accuracy": meta["metrics"]["test"]["accuracy"],
        "test_metrics": meta["metrics"]["test"],
        "validation_metrics": meta["metrics"]["validation"],
        "train_time_s": t["train_time_s"],
        "train_samples_per_s": t["train_samples_per_s"],
        "steps": t["steps"],
        "best_epoch": t["best_epoch"],
        "history": t["history"],
        "target": {"test_accuracy_at_least": 0.83, "met": meta["metrics"]["test"]["accuracy"] >= 0.83},
        "output_dir": args.output,
    }
    path = write_result(args.result, payload)
    print(
        f"test accuracy {payload['test_accuracy']:.4f}, {t['train_time_s']:.0f} s, "
        f"{t['train_samples_per_s']:.1f} samples/s -> {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
