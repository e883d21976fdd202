"""The accuracy/speed frontier of recorded ``fastft compress`` runs, per configuration, median of seeds.

    python bench/frontier_runs.py bench/results/compress_seed4?_bucketed_teacher.json \\
        bench/results/compress_seed4?_h50_f50.json --result bench/results/frontier_runs_avx2.json

Reads result files written by ``bench/bench_compress_run.py`` (one full run each), groups them by
configuration (student depth, heads and FFN width kept, augment/transfer, recovery epochs, and
whether the graphs had their SkipLayerNormalization split) and, per configuration, reports every
seed's retained accuracy and speed-up at seq 512 (each run's own interleaved teacher-vs-final
figure) and their medians. It runs nothing: every number comes from the files named. Writes
``--result`` (.json, .csv) and a PNG of retained against speed-up with the 99% / 5x / 6x target
lines. Only runs on one CPU kind should be compared; the kinds found are listed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from fastft.bench.runner import write_result


def config_of(report: dict) -> dict:
    """What was compressed how, from a compress report (the final structure, not the flags)."""
    cfg = report.get("config") or {}
    prune = cfg.get("prune") or {}
    dist = report.get("distillation") or {}
    first = dist.get("pruned_first") or {}  # --prune-first: pruned before distillation
    pr = report.get("pruning") or {}
    after = first.get("after_structured") or pr.get("after_structured") or pr.get("before") or {}
    heads = after.get("heads") or []
    ffn = after.get("intermediate") or []
    return {
        "prune_first": bool(first),
        "layers": after.get("layers") or dist.get("layers"),
        # heads kept per layer; with --head-allocation global the layers differ: their mean
        "heads": (heads[0] if len(set(heads)) == 1 else round(sum(heads) / len(heads), 2)) if heads else None,
        "head_allocation": prune.get("head_allocation") or "layer",
        "prune_batches": prune.get("prune_batches") or 32,
        "ffn": max(ffn) if ffn else None,
        "distill_epochs": (cfg.get("distill") or {}).get("epochs"),
        "recovery_epochs": prune.get("recovery_epochs"),
        # after the last pruning step (runs before --last-recovery-epochs: as after every step)
        "last_recovery_epochs": prune.get("last_recovery_epochs", prune.get("recovery_epochs")),
        "prune_steps": prune.get("prune_steps") or 1,
        "augment": (cfg.get("distill") or {}).get("augment") or 0,
        # the copies' label term (files before --augment-labels: the original's)
        "augment_labels": (cfg.get("distill") or {}).get("augment_labels") or "original",
        "transfer": (cfg.get("distill") or {}).get("transfer") or None,
        # graphs saved with SkipLayerNormalization split (fastft.export.layernorm) are not the same runs
        "ln_split": bool(
            ((report.get("quantization") or {}).get("ort_offline") or {}).get("skip_layernorm", {}).get("split")
        ),
    }


def label(c: dict) -> str:
    heads = f"{c['heads']:g}" if isinstance(c["heads"], (int, float)) else c["heads"]
    s = f"{c['layers']}L h{heads} f{c['ffn']}"
    if c.get("prune_first"):  # no recovery epochs follow
        s += " prune-first"
    else:
        if c.get("prune_steps", 1) > 1:
            s += f" steps{c['prune_steps']}"
        if c["recovery_epochs"] not in (None, 1):
            s += f" r{c['recovery_epochs']:g}"
        if c.get("last_recovery_epochs") not in (None, c["recovery_epochs"]):
            s += f" last-r{c['last_recovery_epochs']:g}"
        if c.get("head_allocation", "layer") != "layer":
            s += f" {c['head_allocation']}"
        if c.get("prune_batches", 32) != 32:
            s += f" pb{c['prune_batches']}"
    if c["distill_epochs"] not in (None, 2):
        s += f" e{c['distill_epochs']:g}"
    if c["augment"]:
        s += f" aug{c['augment']}"
        if c.get("augment_labels", "original") != "original":
            s += f" labels:{c['augment_labels']}"
    if c["transfer"]:
        s += f" tr:{c['transfer']}"
    if c.get("ln_split"):
        s += " ln-split"
    return s


def load_runs(paths: list[str]) -> list[dict]:
    runs = []
    for p in paths:
        path = Path(p)
        try:
            d = json.loads(path.read_text())
            rep, summ = d["report"], d["summary"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"error: {p}: not a bench_compress_run.py result ({type(e).__name__}: {e})") from None
        c = config_of(rep)
        cpu = d.get("machine", {}).get("cpu", {})
        runs.append(
            {
                "file": path.name,
                "config": label(c),
                **c,
                "seed": (rep.get("config") or {}).get("seed"),
                "final_stage": summ.get("final_stage"),
                "retained": summ.get("retained"),
                "speedup_512": summ.get("speedup_512"),
                "retained_rare": summ.get("retained_rare"),
                "int8_agreement": summ.get("int8_label_agreement_fp32"),
                "int8_fp32_nodes": summ.get("int8_fp32_nodes"),
                "cpu_kind": "vnni" if cpu.get("vnni") else ("avx512" if "avx512f" in cpu.get("flags", []) else "avx2"),
            }
        )
    return runs


def summarize(runs: list[dict]) -> list[dict]:
    rows = []
    for name in dict.fromkeys(r["config"] for r in runs):
        sel = [r for r in runs if r["config"] == name]
        ret = [r["retained"] for r in sel if r["retained"] is not None]
        spd = [r["speedup_512"] for r in sel if r["speedup_512"] is not None]
        med_r = statistics.median(ret) if ret else None
        med_s = statistics.median(spd) if spd else None
        claim = med_r is not None and med_s is not None and len(sel) >= 3 and med_r >= 0.99  # 3 seeds at least
        rows.append(
            {
                "config": name,
                "seeds": [r["seed"] for r in sel],
                "retained": ret,
                "speedup_512": spd,
                "median_retained": med_r,
                "median_speedup_512": med_s,
                "median_retained_rare": statistics.median([r["retained_rare"] for r in sel if r["retained_rare"]])
                if any(r["retained_rare"] for r in sel)
                else None,
                "meets_99_at_5x": bool(claim and med_s >= 5),
                "meets_99_at_6x": bool(claim and med_s >= 6),
                "files": [r["file"] for r in sel],
            }
        )
    return rows


def plot(runs: list[dict], rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4.8), dpi=120)
    colors = plt.get_cmap("tab20").colors  # 20 distinct colours; the median's marker cycles too
    markers = "DsoP^vX*"
    for i, row in enumerate(rows):
        c = colors[(2 * i) % 20 + (i // 10) % 2]
        sel = [r for r in runs if r["config"] == row["config"] and None not in (r["retained"], r["speedup_512"])]
        ax.scatter([r["speedup_512"] for r in sel], [100 * r["retained"] for r in sel], color=c, alpha=0.45, s=22)
        if row["median_retained"] is not None and row["median_speedup_512"] is not None:
            ax.scatter(
                [row["median_speedup_512"]],
                [100 * row["median_retained"]],
                color=c,
                marker=markers[i % len(markers)],
                s=60,
                label=f"{row['config']} " + (f"(median of {len(sel)})" if len(sel) > 1 else "(1 run)"),
            )
    ax.axhline(99, color="k", ls="--", lw=0.8)
    for x in (5, 6):
        ax.axvline(x, color="k", ls=":", lw=0.8)
    ax.set_xlabel("speed-up vs the teacher's ORT fp32, p50 at seq 512 (x)")
    ax.set_ylabel("accuracy retained (%)")
    ax.grid(True, alpha=0.3)
    kinds = sorted({r["cpu_kind"] for r in runs})
    ax.set_title(f"fastft compress --int8: runs by configuration ({', '.join(kinds)})", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help="result files of bench/bench_compress_run.py")
    ap.add_argument("--result", required=True, help="JSON to write (a .csv and .png beside it)")
    args = ap.parse_args(argv)
    runs = load_runs(args.files)
    rows = summarize(runs)
    out = Path(args.result)
    write_result(
        out,
        {
            "what": "frontier of recorded fastft compress runs: per configuration, every seed and the medians",
            "cpu_kinds": sorted({r["cpu_kind"] for r in runs}),
            "rows": rows,
            "runs": runs,
        },
        csv_rows=runs,
    )
    plot(runs, rows, out.with_suffix(".png"))
    w = max(len(r["config"]) for r in rows)
    print(f"{'config':<{w}}  seeds  retained (median)        speed-up 512 (median)")
    for r in rows:
        rets = "/".join(f"{100 * x:.2f}" for x in r["retained"])
        spds = "/".join(f"{x:.2f}" for x in r["speedup_512"])
        mr = "-" if r["median_retained"] is None else f"{100 * r['median_retained']:.2f}%"
        ms = "-" if r["median_speedup_512"] is None else f"{r['median_speedup_512']:.2f}x"
        print(f"{r['config']:<{w}}  {len(r['seeds']):>5}  {rets} ({mr})  {spds} ({ms})")
    print(f"wrote {out}, {out.with_suffix('.csv')}, {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
