"""Training-step time with torch's dropout against fastft's cheap-mask dropout, paired.

    python bench/bench_dropout.py                                   # 40 rounds, the default teacher's steps
    python bench/bench_dropout.py --rounds 4 --result /tmp/d.json   # smoke

What ``fastft compress`` and ``fastft train`` spend their minutes on: AdamW steps of a BERT
classifier on length-bucketed batches of the built-in movie-snippets data (batch 32, max length 64,
the default teacher's settings). Three copies of the same pretrained model train side by side,
interleaved step by step on the same batches in one process:

* ``torch``: torch's ``nn.Dropout`` and SDPA's attention dropout (fastft before ``fast_dropout``);
* ``fastft``: inside :func:`fastft.swap.training.fast_dropout_training` (what ``run_loop`` does);
* ``no-dropout``: every dropout probability 0, the floor no dropout implementation can go under.

Each step is timed in its parts (forward, backward, clipping + AdamW). Two models: the default
teacher's (minilm-l6, 6 layers) and a 3-layer copy of it (the default student's depth: what the
distillation and recovery epochs train). Writes quantiles per variant, the p50 ratios against
``torch``, and the share of a step that torch's dropout takes, to bench/results/dropout_steps.json.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from fastft.bench.runner import int_list, script_main, write_result  # first: notes the machine's load at the start

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("torch", "fastft", "no-dropout")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=40, help="interleaved rounds (one step of each variant) [40]")
    ap.add_argument("--warmup", type=int, default=3, help="untimed rounds first [3]")
    ap.add_argument("--layers", default="6,3", help="model depths to time, comma-separated [6,3]")
    ap.add_argument("--result", default=str(ROOT / "bench" / "results" / "dropout_steps.json"))
    a = ap.parse_args()
    # checked before minutes of training
    from fastft.core.checks import check_int
    from fastft.core.errors import FastftError

    check_int("--rounds", a.rounds, lo=1)
    check_int("--warmup", a.warmup, lo=0)
    depths = int_list("--layers", a.layers, 1)
    if max(depths) > 6:
        raise FastftError(f"--layers: minilm-l6 has 6 layers (got {a.layers})")
    if Path(a.result).is_dir():
        raise FastftError(f"--result {a.result} is a directory; give a file name for the result JSON")

    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from fastft.core.stats import quantiles
    from fastft.core.system import physical_cores
    from fastft.data import load_data
    from fastft.data.collate import Collator, length_buckets, token_lengths
    from fastft.models import load_classifier, load_tokenizer
    from fastft.swap.training import fast_dropout_training
    from fastft.train.loop import adamw, param_groups
    from fastft.train.trainer import set_seed

    torch.set_num_threads(physical_cores())
    set_seed(42)
    splits = load_data("movie-snippets", seed=42)
    tok = load_tokenizer("minilm-l6")
    rows = list(zip(splits.train.texts, splits.train.labels))
    lengths = token_lengths(tok, splits.train.texts, 64)
    g = torch.Generator().manual_seed(42)
    batches = list(DataLoader(rows, batch_sampler=length_buckets(lengths, 32, g), collate_fn=Collator(tok, 64)))
    need = a.warmup + a.rounds
    if need > len(batches):
        raise FastftError(f"--rounds + --warmup must be at most {len(batches)} (one epoch of batches)")

    def build(layers: int, variant: str, stack: contextlib.ExitStack):
        set_seed(42)
        net = load_classifier("minilm-l6", labels=splits.labels)
        net.bert.encoder.layer = net.bert.encoder.layer[:layers]
        net.config.num_hidden_layers = layers
        if variant == "no-dropout":
            for m in net.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = 0.0
        net.train()
        opt, _ = adamw(param_groups(net, 0.01), 5e-5)
        if variant == "fastft":
            stack.enter_context(fast_dropout_training(net))
        return net, opt

    out = {}
    for layers in depths:
        stack = contextlib.ExitStack()
        models = {v: build(layers, v, stack) for v in VARIANTS}
        parts = {v: {"step": [], "forward": [], "backward": [], "optimizer": []} for v in VARIANTS}
        for r in range(need):
            batch = batches[r]
            order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]  # alternate who goes first
            for v in order:
                net, opt = models[v]
                t0 = time.perf_counter()
                loss = net(**batch).loss
                t1 = time.perf_counter()
                loss.backward()
                t2 = time.perf_counter()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                t3 = time.perf_counter()
                if r >= a.warmup:
                    for k, dt in (
                        ("step", t3 - t0),
                        ("forward", t1 - t0),
                        ("backward", t2 - t1),
                        ("optimizer", t3 - t2),
                    ):
                        parts[v][k].append(dt)
            print(f"{layers} layers: round {r + 1}/{need}", end="\r", file=sys.stderr)
        print(file=sys.stderr)
        stack.close()
        q = {v: {k: quantiles(t) for k, t in parts[v].items()} for v in VARIANTS}
        p50 = {v: q[v]["step"]["p50_ms"] for v in VARIANTS}
        paired = {
            v: float(np.median(np.asarray(parts["torch"]["step"]) / np.asarray(parts[v]["step"]))) for v in VARIANTS[1:]
        }
        out[f"{layers}_layers"] = {
            "steps": q,
            "p50_step_ms": p50,
            "speedup_p50_vs_torch": {v: round(p50["torch"] / p50[v], 3) for v in VARIANTS[1:]},
            "speedup_median_of_paired_steps_vs_torch": {v: round(x, 3) for v, x in paired.items()},
            "torch_dropout_share_of_step": round(1 - p50["no-dropout"] / p50["torch"], 3),
            "fastft_dropout_share_of_step": round(1 - p50["no-dropout"] / p50["fastft"], 3),
        }
        s = out[f"{layers}_layers"]
        print(
            f"{layers} layers: step p50 torch {p50['torch']:.1f} ms, fastft {p50['fastft']:.1f} ms "
            f"({s['speedup_p50_vs_torch']['fastft']:.2f}x), no dropout {p50['no-dropout']:.1f} ms; "
            f"dropout share: torch {s['torch_dropout_share_of_step']:.1%}, "
            f"fastft {s['fastft_dropout_share_of_step']:.1%}"
        )
    payload = {
        "benchmark": "training step: torch dropout vs fastft cheap-mask dropout vs no dropout (interleaved)",
        "settings": {
            "model": "minilm-l6 (and its first layers)",
            "data": "movie-snippets train split, length-bucketed batches",
            "batch_size": 32,
            "max_length": 64,
            "rounds": a.rounds,
            "warmup_rounds": a.warmup,
            "optimizer": "AdamW (fastft.train.loop.adamw), clip 1.0",
            "threads": torch.get_num_threads(),
        },
        "results": out,
    }
    write_result(a.result, payload)
    print(f"-> {a.result}")
    return 0


if __name__ == "__main__":
    sys.exit(script_main(main))
