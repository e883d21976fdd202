"""Which INT8 sensitivity policy does a measurement favour: a fixed heuristic order or KL sensitivity?

    python bench/bench_int8_policy.py --model ~/.cache/fastft/teacher-minilm-l6-movie-snippets \
        --model runs/student-l3

For each model: the fp32 graph of fastft.export's stages (exporter + ORT transformer fusions,
:func:`fastft.export.stages.write_fp32`), the validation split tokenized once, then
:func:`fastft.export.int8.accuracy_aware` with each policy under each caller's check:

* ``agreement``: INT8 labels agree with fp32's on >= 99% of the validation split (fastft export);
* ``budget``: validation accuracy drops by at most 0.005 (fastft compress).

Both policies get the same builds (this CPU's default dynamic recipe, then ORT's offline pass at
"extended", as ``int8_stage`` does) and the same checks. Builds and their validation logits are
cached by the set of nodes kept in fp32; a search's time is what its own attempts and ranking
cost when they were first measured (wall and process CPU), i.e. as if it ran alone.
Recorded per (model, policy, check): MatMuls kept fp32, passed, label agreement with fp32 and
accuracy on the validation split, search time; and ONNX Runtime latency (batch 1, seq 128 and
512, every distinct resulting graph plus fp32 and all-INT8 timed interleaved, quantiles).
Result: bench/results/int8_policy.json. It made :class:`fastft.export.int8.KLSensitivity` the one
policy of both callers; the heuristic order that ``fastft export`` used before is kept here
(:class:`HeuristicOrder`, :func:`heuristic_order`) as the baseline, so the comparison re-runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from fastft.bench.runner import interleave, quantiles, random_feeds, write_result  # first: notes the load at the start

ROOT = Path(__file__).resolve().parents[1]
CHECKS = {"agreement": 0.99, "budget": 0.005}  # fastft export's min agreement, fastft compress's budget


def log(msg: str) -> None:
    print(f"[bench_int8_policy] {msg}", file=sys.stderr, flush=True)


class Clock:
    """Wall and process-CPU seconds of a block (ORT's threads included in CPU)."""

    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c


class Cached:
    """A policy whose ranking is computed once per model (and timed) and reused by every check."""

    def __init__(self, policy):
        self.policy, self.ranked, self.cost = policy, None, {"wall_s": 0.0, "cpu_s": 0.0}

    def rank(self, build):
        if self.ranked is None:
            with Clock() as c:
                self.ranked = self.policy.rank(build)
            self.cost = {"wall_s": c.wall, "cpu_s": c.cpu}
        return self.ranked

    def steps(self, n):
        return self.policy.steps(n)


class HeuristicOrder:
    """The former ``fastft export`` policy: a fixed order kept fp32 at fixed steps, at most half the nodes."""

    STEPS = (0, 1, 2, 4, 6, 8, 10, 12)

    def __init__(self, order):
        self.order = list(order)

    def rank(self, build):
        return self.order, {}

    def steps(self, n):
        return [k for k in self.STEPS if 0 < k <= n // 2]


def heuristic_order(model) -> list[str]:
    """The former ``fallback_order``: the whole first layer (FFN output, FFN input, QKV, attention
    output), then the FFN output, then the FFN input MatMuls of the next layers (from per-group
    agreement on the movie-snippets teacher, bench/results/int8_accuracy_teacher.json)."""
    import re

    def layer(name: str) -> int:
        m = re.search(r"layer[._/]?(\d+)", name) or re.search(r"_(\d+)$", name)
        return int(m.group(1)) if m else 0

    def group(n) -> int:
        name = n.name.lower()
        if n.op_type == "Attention":
            return 2
        if "attention" in name:
            return 3
        return 1 if "intermediate" in name else 0  # 0: output.dense, the FFN's second MatMul

    picked = [n for n in model.graph.node if n.op_type in ("MatMul", "Attention")]
    first = min((layer(n.name) for n in picked), default=0)
    return [n.name for n in sorted(picked, key=lambda n: (layer(n.name) != first, group(n), layer(n.name)))]


def run_model(model_dir: Path, work: Path, args) -> dict:
    import onnx

    from fastft.compress.distill import encode
    from fastft.compress.quantize import ort_logits
    from fastft.data import load_data
    from fastft.data.labels import align_labels
    from fastft.export import int8 as fx_int8
    from fastft.export import quantize as fx_quant
    from fastft.export import stages as fx_stages
    from fastft.export.onnx import model_input_names
    from fastft.export.optimize import infer_shapes, ort_offline_optimize
    from fastft.models.model_dir import load_model_dir, model_labels
    from fastft.runtime.session import create_session, session_options

    def session(path):
        return create_session(path, session_options(threads=args.threads, spinning=False, level="basic"))

    net, tok, meta, max_len = load_model_dir(model_dir)
    spec = meta.get("data") or {}
    splits = load_data(spec.get("path") or spec.get("data"), seed=spec.get("seed", 42))
    val = align_labels(splits.validation, splits.labels, model_labels(net))
    ids, labels = encode(tok, val.texts, max_len), np.asarray(val.labels)
    pad = tok.pad_token_id or 0
    log(f"{model_dir.name}: {net.config.num_hidden_layers} layers, {len(ids)} validation texts, max length {max_len}")

    fp32, fused, plain = work / "fp32.onnx", work / "fused.onnx", work / "plain.onnx"
    fx_stages.write_fp32(net, fp32, fused, plain, input_names=model_input_names(net))
    shaped = work / "shaped.onnx"
    infer_shapes(fused, shaped)
    recipe = fx_quant.recipe_from_options()
    graph = onnx.load(str(shaped), load_external_data=False)
    nodes = fx_quant.select_nodes(graph, recipe.scope)[0]
    ref = ort_logits(session(fp32), ids, pad)
    base_acc = float((ref.argmax(1) == labels).mean())

    built: dict[frozenset, tuple[Path, dict]] = {}
    evaluated: dict[Path, tuple[np.ndarray, dict]] = {}

    def build(exclude, probe: bool = False) -> Path:
        key = frozenset(exclude)
        if key not in built:
            with Clock() as c:
                q = work / f"q{len(built)}.onnx"
                fx_quant.quantize_onnx(
                    fused, q, replace(recipe, exclude=tuple(exclude)), shaped=shaped, allow_empty=True
                )
                out = work / f"q{len(built)}-ext.onnx"
                ort_offline_optimize(q, out, fx_stages.INT8_ORT_LEVEL)
                q.unlink()
            built[key] = (out, {"wall_s": c.wall, "cpu_s": c.cpu})
        return built[key][0]

    def logits(path: Path) -> np.ndarray:
        if path not in evaluated:
            with Clock() as c:
                y = ort_logits(session(path), ids, pad)
            evaluated[path] = (y, {"wall_s": c.wall, "cpu_s": c.cpu})
        return evaluated[path][0]

    def facts(path: Path) -> dict:
        pred = logits(path).argmax(1)
        acc = float((pred == labels).mean())
        return {"agreement": float((pred == ref.argmax(1)).mean()), "accuracy": acc, "drop": base_acc - acc}

    def check_for(kind: str):
        def check(path, exclude):
            f = facts(path)
            ok = f["agreement"] >= CHECKS[kind] if kind == "agreement" else f["drop"] <= CHECKS[kind]
            return ok, f

        return check

    sub = ids[: args.sensitivity_rows]
    policies = {
        "heuristic": Cached(HeuristicOrder(heuristic_order(graph))),
        "kl": Cached(
            fx_int8.KLSensitivity(
                nodes,
                lambda: ort_logits(session(fp32), sub, pad),
                lambda path: ort_logits(session(path), sub, pad),
                progress=False,
            )
        ),
    }
    rows, finals = [], {"fp32": fp32, "int8-all": build([])}
    for check in CHECKS:
        for name, policy in policies.items():
            log(f"{model_dir.name}: {name} policy, {check} check")
            search = fx_int8.accuracy_aware(build, check_for(check), policy)
            ranked = len(search.attempts) > 1
            cost = {"wall_s": 0.0, "cpu_s": 0.0}
            for a in search.attempts:
                for part in (built[frozenset(a.excluded)][1], evaluated[a.path][1]):
                    for k in cost:
                        cost[k] += part[k]
            rank_cost = policy.cost if ranked else {"wall_s": 0.0, "cpu_s": 0.0}
            final = search.final
            key = f"{name}/{check}"
            finals.setdefault(f"fp32-nodes-{len(final.excluded)}-{name}", final.path)
            rows.append(
                {
                    "model": model_dir.name,
                    "policy": name,
                    "check": check,
                    "threshold": CHECKS[check],
                    "passed": final.passed,
                    "fp32_matmuls": len(final.excluded),
                    "quantizable_matmuls": len(nodes),
                    "kept_fp32": final.excluded,
                    **facts(final.path),
                    "attempts": [
                        {"fp32_matmuls": len(a.excluded), "passed": a.passed, **a.record} for a in search.attempts
                    ],
                    "search_wall_s": round(cost["wall_s"] + rank_cost["wall_s"], 2),
                    "search_cpu_s": round(cost["cpu_s"] + rank_cost["cpu_s"], 2),
                    "ranking_wall_s": round(rank_cost["wall_s"], 2),
                    "ranking_cpu_s": round(rank_cost["cpu_s"], 2),
                    "graph": next(k for k, v in finals.items() if v == final.path),
                }
            )
            log(
                f"  {key}: passed={final.passed} fp32 {len(final.excluded)}/{len(nodes)} "
                f"agree {rows[-1]['agreement']:.4f} acc {rows[-1]['accuracy']:.4f} (fp32 {base_acc:.4f}) "
                f"search {rows[-1]['search_cpu_s']:.0f} s CPU"
            )

    # latency of every distinct graph, interleaved, batch 1
    uniq = {}
    for k, p in finals.items():
        uniq.setdefault(p, k)
    sessions = {k: session(p) for p, k in uniq.items()}
    names = [i.name for i in sessions["fp32"].get_inputs()]
    rng = np.random.default_rng(0)
    latency = {k: {} for k in sessions}
    for seq, reps in zip(args.seqs, args.reps):
        feeds = random_feeds(names, 1, seq, rng)
        log(f"{model_dir.name}: timing seq {seq}, {len(sessions)} graphs x {reps} rounds, interleaved")
        t = interleave({k: (lambda s=s, f=feeds: s.run(None, f)) for k, s in sessions.items()}, reps, warmup=2)
        for k in sessions:
            latency[k][str(seq)] = {**quantiles(t.wall[k]), "cpu": quantiles(t.cpu[k])}
    for r in rows:
        r["latency"] = latency[r["graph"]]
        r["cpu_p50_speedup_vs_fp32"] = {
            s: round(latency["fp32"][s]["cpu"]["p50_ms"] / r["latency"][s]["cpu"]["p50_ms"], 3) for s in latency["fp32"]
        }
    return {
        "model": str(model_dir),
        "layers": net.config.num_hidden_layers,
        "intermediate_size": net.config.intermediate_size,
        "validation_texts": len(ids),
        "fp32_validation_accuracy": base_acc,
        "int8_all": facts(finals["int8-all"]),
        "recipe": recipe.to_dict(),
        "graphs": {k: latency[k] for k in latency},
        "rows": rows,
    }


def verdict(models: list[dict]) -> dict:
    """Which policy each (model, check) favours, by a rule fixed before the runs: a policy that
    passes the check beats one that does not (neither: the one closer to it); then fewer MatMuls kept
    fp32 (a faster graph); then less search time. When all-INT8 passes at once no policy is
    consulted: a tie."""
    cases = []
    for m in models:
        for check in CHECKS:
            h, k = (next(r for r in m["rows"] if r["check"] == check and r["policy"] == p) for p in ("heuristic", "kl"))
            if len(h["attempts"]) == 1 and len(k["attempts"]) == 1:
                win, why = None, "all-INT8 passes at once: no policy consulted"
            elif h["passed"] != k["passed"]:
                win, why = ("heuristic", "kl")[k["passed"]], "only it passes the check"
            elif not h["passed"]:  # neither passes: the one closer to the check
                score = {
                    p: r["agreement"] if check == "agreement" else -r["drop"] for p, r in (("heuristic", h), ("kl", k))
                }
                win = None if score["heuristic"] == score["kl"] else max(score, key=score.get)
                why = f"neither passes; {check} of the final graph: {score}"
            elif h["fp32_matmuls"] != k["fp32_matmuls"]:
                win = "heuristic" if h["fp32_matmuls"] < k["fp32_matmuls"] else "kl"
                why = f"fewer MatMuls kept fp32 ({h['fp32_matmuls']} heuristic vs {k['fp32_matmuls']} kl)"
            elif h["search_cpu_s"] != k["search_cpu_s"]:
                win = "heuristic" if h["search_cpu_s"] < k["search_cpu_s"] else "kl"
                why = f"same graph size, less search time ({h['search_cpu_s']} vs {k['search_cpu_s']} CPU s)"
            else:
                win, why = None, "identical"
            cases.append({"model": Path(m["model"]).name, "check": check, "favours": win, "why": why})
    wins = {p: [c for c in cases if c["favours"] == p] for p in ("heuristic", "kl")}
    decided = [c for c in cases if c["favours"]]
    single = next((p for p, w in wins.items() if decided and len(w) == len(decided)), None)
    # across the cases: whose served graph is never larger, and what its search costs beyond the other's
    rows = {(Path(m["model"]).name, r["check"], r["policy"]): r for m in models for r in m["rows"]}
    pairs = [(rows[(c["model"], c["check"], "heuristic")], rows[(c["model"], c["check"], "kl")]) for c in cases]
    never_larger = [
        p
        for p, mine, other in (("heuristic", 0, 1), ("kl", 1, 0))
        if all(
            pr[mine]["passed"] >= pr[other]["passed"] and pr[mine]["fp32_matmuls"] <= pr[other]["fp32_matmuls"]
            for pr in pairs
        )
    ]
    extra = {
        f"{c['model']}/{c['check']}": round(k["search_cpu_s"] - h["search_cpu_s"], 1) for c, (h, k) in zip(cases, pairs)
    }
    return {
        "cases": cases,
        "single_winner": single,
        "never_larger_graph": never_larger,
        "kl_search_cpu_s_minus_heuristic": extra,
    }


def merge(files: list[str], out: str) -> None:
    """One result file from per-model runs: each run's own command, date, machine and versions kept."""
    import json

    from fastft.models import read_meta

    runs = [json.loads(Path(f).read_text()) for f in files]
    models = [m for r in runs for m in r["models"]]
    for m in models:  # how a compressed model was made (its fastft.json), where the directory is here
        d = Path(m["model"]).expanduser()
        made = read_meta(d).get("compress") if (d / "fastft.json").is_file() else None
        if made:
            m["made_by_fastft_compress"] = {"config": made.get("config"), "stages": made.get("stages")}
    keep = ("command", "date", "machine", "versions", "checks", "threads", "seqs", "reps", "total_s")
    write_result(
        out,
        {
            "benchmark": runs[0]["benchmark"],
            "checks": runs[0]["checks"],
            "runs": [{k: r.get(k) for k in keep} for r in runs],
            "models": models,
            "verdict": verdict(models),
        },
        csv_rows=[_csv_row(r) for m in models for r in m["rows"]],
    )


def _csv_row(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in ("attempts", "kept_fp32", "latency")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", default=[], help="a fine-tuned model directory (repeatable)")
    ap.add_argument("--merge", nargs="+", default=None, help="combine these result files (per-model runs) into --out")
    ap.add_argument("--seqs", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--reps", type=int, nargs="+", default=[20, 10], help="interleaved rounds per --seqs entry")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-agreement", type=float, default=CHECKS["agreement"], help="the agreement check [0.99]")
    ap.add_argument("--budget", type=float, default=CHECKS["budget"], help="the budget check [0.005]")
    ap.add_argument("--sensitivity-rows", type=int, default=256, help="validation rows the KL policy ranks on")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "int8_policy.json"))
    args = ap.parse_args(argv)
    if len(args.reps) != len(args.seqs):
        ap.error("--reps needs one entry per --seqs entry")
    CHECKS.update(agreement=args.min_agreement, budget=args.budget)
    if args.merge:
        merge(args.merge, args.out)
        log(f"wrote {args.out}")
        return 0
    if not args.model:
        ap.error("give --model DIR (repeatable) or --merge FILES")

    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    models = []
    for m in args.model:
        with tempfile.TemporaryDirectory(prefix="bench-int8-policy-") as work:
            models.append(run_model(Path(m).expanduser(), Path(work), args))
    rows = [r for m in models for r in m["rows"]]
    write_result(
        args.out,
        {
            "benchmark": "INT8 sensitivity policy: the former fastft export heuristic order vs KLSensitivity",
            "checks": {
                "agreement": f"INT8 label agreement with fp32 >= {CHECKS['agreement']:g} on the validation split",
                "budget": f"validation accuracy drop <= {CHECKS['budget']:g}",
            },
            "batch": 1,
            "threads": args.threads,
            "spinning": False,
            "seqs": args.seqs,
            "reps": args.reps,
            "total_s": round(time.perf_counter() - t0, 1),
            "models": models,
            "verdict": verdict(models),
        },
        csv_rows=[_csv_row(r) for r in rows],
    )
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
