"""ONNX Runtime's SkipLayerNormalization against Add + LayerNormalization: one node, and whole models.

    python bench/bench_skip_layernorm.py --models runs/teacher/model.onnx,runs/compressed/model_int8.onnx \\
        --result bench/results/skip_layernorm_avx2.json

ORT's transformer fusions write one ``com.microsoft`` SkipLayerNormalization per residual; fastft's
export splits them back into Add (+ Add bias) + LayerNormalization where its probe finds that faster
(``fastft.export.layernorm``). This measures why and what it buys:

* **node**: the probe's two one-node graphs at (1, seq, hidden), 1 and 2 threads, many rounds;
* **model**: each ONNX file given (saved with SkipLayerNormalization, as fastft exported before the
  split or as the peer exports; ORT's own passes do not fuse a split file back) against its copy
  split by ``split_skip_layernorm``, timed interleaved at batch 1, seq 128 and 512, two intra-op
  threads, spinning off, sessions opened at ``basic`` as fastft serves them; p10/p50/p90, the
  ratio of p50s and the largest logit difference between the forms.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from fastft.bench.runner import interleave, random_feeds, write_result
from fastft.core.stats import quantiles


def split_copy(path: Path, work: Path) -> tuple[Path, int]:
    """(split file, nodes split) for a model file saved with SkipLayerNormalization."""
    import onnx

    from fastft.export.layernorm import split_skip_layernorm

    model = onnx.load(str(path))
    n = split_skip_layernorm(model)
    if n == 0:  # ORT's own passes do not fuse the split form back, so a split file cannot be compared
        raise SystemExit(
            f"error: {path}: no SkipLayerNormalization to split; give a file exported with them "
            "(an export from before the split, or the peer's graph)"
        )
    split = work / f"{path.stem}-split.onnx"
    onnx.save(model, str(split))
    return split, n


def bench_model(path: Path, seqs: list[int], threads: int, reps: int, work: Path, label: str = "") -> list[dict]:
    from fastft.runtime.session import create_session, session_options

    split, n = split_copy(path, work)
    opts = session_options(threads=threads, spinning=False, level="basic")  # as fastft serves them
    sessions = {"fused": create_session(path, opts), "split": create_session(split, opts)}
    names = [i.name for i in sessions["fused"].get_inputs()]
    rows = []
    rng = np.random.default_rng(0)
    for seq in seqs:
        feeds = random_feeds(names, 1, seq, rng)
        outs = {k: s.run(None, feeds)[0] for k, s in sessions.items()}
        timed = interleave({k: (lambda s=s, f=feeds: s.run(None, f)) for k, s in sessions.items()}, reps, warmup=3)
        q = {k: {m[:-3]: v for m, v in quantiles(timed.wall[k]).items() if m.endswith("_ms")} for k in sessions}
        rows.append(
            {
                "model": label or f"{path.parent.name}/{path.name}",
                "seq": seq,
                "threads": threads,
                "nodes_split": n,
                **{f"{k}_{m}_ms": round(q[k][m], 3) for k in ("fused", "split") for m in ("p10", "p50", "p90")},
                "speedup_p50": round(q["fused"]["p50"] / q["split"]["p50"], 3),
                "max_abs_logit_diff": float(np.abs(outs["fused"] - outs["split"]).max()),
            }
        )
        print(
            f"{rows[-1]['model']:<40} seq {seq:>4}: fused {q['fused']['p50']:.2f} ms, split {q['split']['p50']:.2f} ms"
            f" -> {rows[-1]['speedup_p50']:.3f}x ({n} nodes)",
            file=sys.stderr,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="", help="comma-separated ONNX files (model.onnx / model_int8.onnx)")
    ap.add_argument("--labels", default="", help="comma-separated names for the models' rows [DIR/FILE]")
    ap.add_argument("--hidden", type=int, default=384, help="hidden size of the one-node probe [384]")
    ap.add_argument("--seqs", default="128,512")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=60, help="interleaved rounds per model and length [60]")
    ap.add_argument("--node-rounds", type=int, default=300, help="rounds of the one-node probe [300]")
    ap.add_argument("--result", required=True)
    args = ap.parse_args(argv)
    seqs = [int(s) for s in args.seqs.split(",") if s]
    models = [Path(m) for m in args.models.split(",") if m]
    labels = [x for x in args.labels.split(",") if x]
    if labels and len(labels) != len(models):
        print(f"error: --labels names {len(labels)} models, --models gives {len(models)}", file=sys.stderr)
        return 2
    labels = labels or [""] * len(models)
    for m in models:
        if not m.is_file():
            print(f"error: {m}: no such ONNX file", file=sys.stderr)
            return 2

    from fastft.export.layernorm import probe

    nodes = []
    for seq in seqs:
        for t in sorted({1, args.threads}):
            p = probe.__wrapped__(args.hidden, t, seq=seq, rounds=args.node_rounds)
            nodes.append({"threads": t, **p})
            print(f"node (1, {seq}, {args.hidden}), {t} thread(s): {p}", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for m, name in zip(models, labels):
            rows += bench_model(m, seqs, args.threads, args.reps, Path(tmp), name)
    write_result(
        args.result,
        {
            "benchmark": "ORT SkipLayerNormalization vs Add + LayerNormalization (node and whole models)",
            "node": nodes,
            "rows": rows,
            "settings": {"threads": args.threads, "reps": args.reps, "batch": 1, "spinning": False},
        },
        csv_rows=rows,
    )
    print(f"wrote {args.result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
