"""Where the default teacher's fine-tuning time goes: tokenisation, padding, forward/backward, the
optimizer, evaluation; measured on a sample of steps and scaled to the full run.

    python bench/bench_teacher_profile.py                  # 24 timed steps of each batching
    python bench/bench_teacher_profile.py --steps 6 --result /tmp/p.json     # smoke

The default teacher (``fastft compress`` with no --model): minilm-l6 on movie-snippets, 3 epochs,
batch 32, max length 64, random batches padded to their longest text (fastft.train's DataLoader),
validation every epoch, then validation + test. Measured here, per part: tokenising one epoch of
batches (the Collator, every epoch), the padding share of the tokens the model runs (random
batches vs length-bucketed ones), forward+backward and the optimizer step per step for both
batchings, and one validation pass. The step counts of the full run scale them to an estimate.
Writes bench/results/teacher_profile.json.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from fastft.bench.runner import write_result  # first: notes the machine's load at the start

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = {"model": "minilm-l6", "data": "movie-snippets", "epochs": 3, "max_length": 64, "batch_size": 32, "lr": 5e-5}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=24, help="timed optimizer steps per batching [24]")
    ap.add_argument("--result", default=str(ROOT / "bench" / "results" / "teacher_profile.json"))
    args = ap.parse_args()

    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from fastft.compress.distill import length_bucketed_batches
    from fastft.core.system import physical_cores
    from fastft.data import load_data
    from fastft.data.collate import Collator
    from fastft.models import load_classifier, load_tokenizer
    from fastft.train.evaluate import run_eval
    from fastft.train.loop import param_groups
    from fastft.train.trainer import set_seed

    torch.set_num_threads(physical_cores())
    set_seed(42)
    splits = load_data(DEFAULT["data"], seed=42)
    tok = load_tokenizer(DEFAULT["model"])
    net = load_classifier(DEFAULT["model"], labels=splits.labels)
    bs, ml = DEFAULT["batch_size"], DEFAULT["max_length"]
    collate = Collator(tok, ml)
    rows = list(zip(splits.train.texts, splits.train.labels))
    steps_per_epoch = math.ceil(len(rows) / bs)
    total_steps = steps_per_epoch * DEFAULT["epochs"]

    # tokenisation: one epoch of the trainer's batches through its Collator
    loader = DataLoader(
        rows, batch_size=bs, shuffle=True, generator=torch.Generator().manual_seed(42), collate_fn=collate
    )
    t0 = time.perf_counter()
    random_batches = list(loader)
    tokenize_epoch_s = time.perf_counter() - t0

    # padding: tokens the model runs vs real tokens
    lengths = [len(x) for x in tok(splits.train.texts, truncation=True, max_length=ml)["input_ids"]]
    real = sum(lengths)
    padded_random = sum(b["input_ids"].numel() for b in random_batches)
    g = torch.Generator().manual_seed(42)
    bucketed = length_bucketed_batches(lengths, bs, g)
    padded_bucketed = sum(len(b) * max(lengths[i] for i in b) for b in bucketed)
    bucketed_batches = [collate([rows[i] for i in b]) for b in bucketed]

    opt = torch.optim.AdamW(param_groups(net, 0.01), lr=DEFAULT["lr"])

    def time_steps(batches) -> dict:
        fwd_bwd, step, n_tok = [], [], 0
        net.train()
        for b in batches[: args.steps]:
            t0 = time.perf_counter()
            loss = net(**b).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            t1 = time.perf_counter()
            opt.step()
            opt.zero_grad(set_to_none=True)
            t2 = time.perf_counter()
            fwd_bwd.append(t1 - t0)
            step.append(t2 - t1)
            n_tok += b["input_ids"].numel()
        return {
            "steps": len(fwd_bwd),
            "fwd_bwd_ms_p50": 1000 * float(np.median(fwd_bwd)),
            "fwd_bwd_ms_mean": 1000 * float(np.mean(fwd_bwd)),
            "optimizer_ms_mean": 1000 * float(np.mean(step)),
            "padded_tokens_per_step": n_tok / max(1, len(fwd_bwd)),
            "fwd_bwd_us_per_token": 1e6 * float(np.sum(fwd_bwd)) / max(1, n_tok),
        }

    time_steps(random_batches[:2])  # warm-up
    timed = {"random": time_steps(random_batches[2:]), "length_bucketed": time_steps(bucketed_batches)}
    t0 = time.perf_counter()
    run_eval(net, tok, splits.validation, ml, 64, progress=False)
    eval_s = time.perf_counter() - t0
    evals = DEFAULT["epochs"] + 2  # validation every epoch, then validation and test at the end

    def estimate(kind: str, padded: int) -> dict:
        t = timed[kind]
        fb = t["fwd_bwd_us_per_token"] * 1e-6 * padded * DEFAULT["epochs"]
        opt_s = t["optimizer_ms_mean"] * 1e-3 * total_steps
        tok_s = tokenize_epoch_s * DEFAULT["epochs"]
        ev = eval_s * evals
        total = fb + opt_s + tok_s + ev
        parts = {"forward_backward_s": fb, "optimizer_s": opt_s, "tokenization_s": tok_s, "evaluation_s": ev}
        return {
            "total_s": round(total, 1),
            **{k: round(v, 1) for k, v in parts.items()},
            "shares": {k: round(v / total, 3) for k, v in parts.items()},
        }

    payload = {
        "benchmark": "default teacher fine-tuning: where the time goes (sampled, scaled to the full run)",
        "settings": {**DEFAULT, "timed_steps": args.steps, "train_rows": len(rows), "total_steps": total_steps},
        "tokenize_one_epoch_s": round(tokenize_epoch_s, 2),
        "tokens": {
            "real": real,
            "padded_random_batches": padded_random,
            "padded_length_bucketed": padded_bucketed,
            "padding_share_random": round(1 - real / padded_random, 3),
            "padding_share_bucketed": round(1 - real / padded_bucketed, 3),
        },
        "per_step": timed,
        "validation_pass_s": round(eval_s, 2),
        "estimate_full_run": {
            "as_today_random_batches": estimate("random", padded_random),
            "length_bucketed_batches": estimate("length_bucketed", padded_bucketed),
        },
        "note": "sampled on a shared machine: the shares are what to read; absolute seconds scale with the load",
    }
    write_result(args.result, payload)
    e = payload["estimate_full_run"]
    print(
        f"padding share: random {payload['tokens']['padding_share_random']:.1%}, bucketed "
        f"{payload['tokens']['padding_share_bucketed']:.1%}"
    )
    for k, v in e.items():
        print(k, v)
    print(f"-> {args.result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
