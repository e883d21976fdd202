"""How closely can distillation make a student follow its teacher away from the training domain?

    python bench/bench_fidelity.py --steps 3000 --result bench/results/fidelity_zen5.json
    python bench/bench_fidelity.py --replot bench/results/fidelity_{train,transfer}_zen5.json \
        --plot bench/results/fidelity_zen5.png

Out-of-domain retention (student accuracy / teacher accuracy on Amazon, NYT and tweets; see
``bench_shift.py``) is decided by the texts where student and teacher disagree. This benchmark
measures the student's label agreement with the teacher, in domain and out of it, as
distillation goes on, without pruning or quantization, so it shows what distillation alone
reaches with the default's student shape (the teacher's layers at ``--depth`` 2/3, every head
and FFN unit kept):

- ``train``: the default's distillation data: the movie training split and one augmented copy
  of each text (``fastft.compress.augment``), labels on both;
- ``transfer``: the same plus every text of the built-in ``general`` transfer set
  (``fastft.compress.transfer``: news, SMS, film dialogue, questions; ~76k texts, no labels).

Each regime trains the same student from the same initial weights with the default loss
(``alpha`` 0.8 KL at T=2 + 0.2 label CE + hidden-state MSE, AdamW 1e-4, 10% warmup, linear
decay), batch 32, for ``--steps`` steps, and scores it ``--evals`` times on the movie test split
and on ``--eval-texts`` seeded texts of each other domain (agreement with the teacher, and
retained: student / teacher accuracy on the same texts). Accuracy only: the timings in the
result are the wall clock of a run, not a speed figure.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from fastft.bench.runner import write_result  # first: notes the machine's load at the start

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]
REGIMES = ("train", "transfer")


def _predict(model, tok, texts: list[str], max_length: int):
    import torch

    from fastft.compress.distill import encode, pad_batch

    model.eval()
    out = []
    with torch.inference_mode():
        ids = encode(tok, texts, max_length)
        for i in range(0, len(ids), 128):
            a, mask = pad_batch(ids[i : i + 128], tok.pad_token_id)
            out.append(model(input_ids=a, attention_mask=mask).logits.argmax(-1))
    return torch.cat(out).numpy()


def run_regime(regime, teacher, tok, splits, evals, args) -> list[dict]:
    """Distil one student under ``regime``; its scores at each evaluation point."""
    import torch

    from fastft.compress.augment import augment_texts
    from fastft.compress.distill import NO_LABEL, cache_teacher, distill_loss, encode, make_student, pad_batch
    from fastft.compress.transfer import transfer_texts

    texts, labels = list(splits.train.texts), list(splits.train.labels)
    aug, src, _ = augment_texts(texts, 1, args.seed, mask_token=tok.mask_token)
    X, Y = texts + aug, labels + [labels[i] for i in src]
    if regime == "transfer":
        extra, _ = transfer_texts("general", size=10**6, seed=args.seed, exclude=X)
        X, Y = X + extra, Y + [NO_LABEL] * len(extra)
    ids = encode(tok, X, args.max_length)
    torch.manual_seed(args.seed)
    student, match = make_student(teacher, "teacher-layers", None, splits.labels, depth=args.depth)
    t0 = time.time()
    cache = cache_teacher(teacher, ids, tok.pad_token_id, match, progress=False)
    print(f"{regime}: {len(X)} rows, teacher outputs in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=0.01)
    warm = max(1, int(0.1 * args.steps))

    def lr_at(k: int) -> float:
        return (k + 1) / warm if k < warm else max(0.0, (args.steps - k) / max(1, args.steps - warm))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    y_all = torch.tensor(Y)
    g = torch.Generator().manual_seed(args.seed)
    order, pos, rows_out = [], 0, []
    marks = {round(args.steps * (i + 1) / args.evals) for i in range(args.evals)}
    student.train()
    for k in range(1, args.steps + 1):
        if pos + 32 > len(order):
            order, pos = torch.randperm(len(X), generator=g).tolist(), 0
        rows = order[pos : pos + 32]
        pos += 32
        a, mask = pad_batch([ids[r] for r in rows], tok.pad_token_id)
        out = student(input_ids=a, attention_mask=mask, output_hidden_states=True)
        t_hidden = cache.hidden_batch(rows, a.shape[1])
        loss, _ = distill_loss(out, y_all[rows], cache.logits[rows], t_hidden, mask, 2.0, 0.8, 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if k in marks:
            row = {"regime": regime, "rows": len(X), "step": k, "epochs": round(k * 32 / len(X), 2)}
            for d, (xs, gold, t_pred) in evals.items():
                s_pred = _predict(student, tok, xs, args.max_length)
                t_acc = float((t_pred == gold).mean())
                row[f"{d}_agreement"] = round(float((s_pred == t_pred).mean()), 4)
                row[f"{d}_retained"] = round(float((s_pred == gold).mean()) / t_acc, 4)
            ood = [row[f"{d}_agreement"] for d in evals if d != "movie-test"]
            row["ood_agreement_min"] = min(ood) if ood else None
            row["wall_s"] = round(time.time() - t0, 1)
            rows_out.append(row)
            print({k_: v for k_, v in row.items() if k_ != "rows"}, file=sys.stderr, flush=True)
            student.train()
    return rows_out


def plot_fidelity(rows: list[dict], path: Path) -> None:
    """Agreement with the teacher (left) and retained (right) per evaluation set as training goes
    on: one colour per set, one line style per regime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [k[: -len("_agreement")] for k in rows[0] if k.endswith("_agreement")]
    styles = dict(zip(sorted({r["regime"] for r in rows}), ("-", "--", ":", "-.")))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for ax, what in zip(axes, ("agreement", "retained")):
        for i, name in enumerate(sets):
            for regime, style in styles.items():
                pts = [(r["step"], 100 * r[f"{name}_{what}"]) for r in rows if r["regime"] == regime]
                ax.plot(*zip(*pts), style, color=f"C{i}", marker="o", ms=3, label=f"{name} ({regime})")
        ax.axhline(98 if what == "retained" else 100, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("distillation steps (batch 32)")
        ax.set_ylabel(f"{what} (%)" if what == "retained" else "label agreement with the teacher (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle("Distillation alone (unpruned fp32 student): in domain (movie-test) and out of it", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def replot(results: list[str], plot: str | None) -> int:
    """--replot: the figure of result files already written, without training."""
    import json

    if not plot:
        print("fastft: error: --replot needs --plot PATH", file=sys.stderr)
        return 2
    rows = []
    for f in results:
        try:
            rows += json.loads(Path(f).read_text())["rows"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"fastft: error: {f} is not a bench_fidelity result ({e.__class__.__name__})", file=sys.stderr)
            return 2
    if not rows:
        print("fastft: error: --replot: the result files hold no rows", file=sys.stderr)
        return 2
    plot_fidelity(rows, Path(plot))
    print(f"wrote {plot}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--regimes", default=",".join(REGIMES), help="comma-separated: train, transfer [both]")
    ap.add_argument("--steps", type=int, default=3000, help="training steps per regime, batch 32 [3000]")
    ap.add_argument("--evals", type=int, default=6, help="evaluation points per regime [6]")
    ap.add_argument("--eval-texts", type=int, default=1500, help="seeded texts per out-of-domain set [1500]")
    ap.add_argument("--depth", type=float, default=2 / 3, help="student depth as a share of the teacher's [2/3]")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--teacher", default=None, help="teacher directory [the cached default teacher]")
    ap.add_argument("--result", default=str(ROOT / "bench" / "results" / "fidelity.json"))
    ap.add_argument("--plot", default=None, metavar="PNG", help="also draw agreement and retained against steps")
    ap.add_argument("--replot", nargs="+", metavar="RESULT", help="only draw --plot from result files already written")
    args = ap.parse_args(argv)
    if args.replot:
        return replot(args.replot, args.plot)

    def fail(msg: str) -> int:
        print(f"fastft: error: {msg}", file=sys.stderr)
        return 2

    regimes = [r.strip() for r in args.regimes.split(",") if r.strip()]
    if not regimes or any(r not in REGIMES for r in regimes):
        return fail(f"--regimes takes {', '.join(REGIMES)} (got {args.regimes!r})")
    for name, v, lo in (("--steps", args.steps, 1), ("--evals", args.evals, 1), ("--eval-texts", args.eval_texts, 1)):
        if v < lo:
            return fail(f"{name} must be at least {lo} (got {v})")
    if args.evals > args.steps:
        return fail(f"--evals ({args.evals}) cannot exceed --steps ({args.steps})")
    if not 0 < args.depth <= 1:
        return fail(f"--depth must be in (0, 1] (got {args.depth})")
    for flag, path in (("--result", args.result), ("--plot", args.plot)):
        if path is None:
            continue
        out = Path(path)
        if out.is_dir() or any(p.exists() and not p.is_dir() for p in out.parents):
            # checked now: the result is written after the hour of training, not before it
            return fail(f"{flag} {path} is not a file path in a directory")

    import warnings

    import numpy as np
    import torch
    from bench_shift import DOMAINS, read_domain
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from fastft.core.errors import FastftError
    from fastft.data import load_data

    warnings.filterwarnings("ignore", message=".*longer than .* tokens were truncated")
    torch.set_num_threads(args.threads)
    try:
        if args.teacher is None:
            from fastft.compress.context import default_teacher

            args.teacher = str(default_teacher())
        tok = AutoTokenizer.from_pretrained(args.teacher)
        teacher = AutoModelForSequenceClassification.from_pretrained(args.teacher).eval()
        splits = load_data("movie-snippets", seed=42)
        evals = {"movie-test": (list(splits.test.texts), np.asarray(splits.test.labels))}
        for d in DOMAINS:
            xs, gold = read_domain(d)
            pick = random.Random(0).sample(range(len(xs)), min(args.eval_texts, len(xs)))
            index = {name: i for i, name in enumerate(splits.labels)}
            evals[d] = ([xs[i] for i in pick], np.asarray([index[gold[i]] for i in pick]))
    except (FastftError, FileNotFoundError, OSError) as e:
        return fail(str(e))
    evals = {d: (xs, gold, _predict(teacher, tok, xs, args.max_length)) for d, (xs, gold) in evals.items()}
    t0 = time.time()
    rows = []
    for regime in regimes:
        rows += run_regime(regime, teacher, tok, splits, evals, args)
    write_result(
        args.result,
        {
            "benchmark": "student-teacher label agreement under distillation alone, in and out of domain",
            "teacher": args.teacher,
            "student": f"teacher-layers, depth {args.depth:.3g}, unpruned, fp32 (torch)",
            "loss": "0.8 * T^2 KL (T=2) + 0.2 * label CE + hidden-state MSE; AdamW lr 1e-4, wd 0.01, 10% warmup",
            "eval_texts": {d: len(v[0]) for d, v in evals.items()},
            "threads": args.threads,
            "wall_s": round(time.time() - t0, 1),
            "rows": rows,
        },
        csv_rows=rows,
    )
    print(f"wrote {args.result}")
    if args.plot:
        plot_fidelity(rows, Path(args.plot))
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
