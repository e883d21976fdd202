"""Targets, table and plot of bench/bench_serve.py's result file."""

from __future__ import annotations

from pathlib import Path


# -- the run --------------------------------------------------------------------------------------
def target_rows(rows: list[dict], inproc: list[dict], soak: dict | None) -> list[dict]:
    def get(server, mode, key, value):
        for r in rows:
            if r["server"] == server and r["mode"] == mode and r.get(key) == value:
                return r
        return None

    out = []
    best_in = max(inproc, key=lambda r: r["texts_per_s"]) if inproc else None
    f64, c64, b64 = (
        get("fastft", "closed", "concurrency", 64),
        get("ort", "closed", "concurrency", 64),
        get("pipeline", "closed", "concurrency", 64),
    )
    if f64 and best_in:
        v = f64["throughput_rps"] / best_in["texts_per_s"]
        out.append(
            {
                "target": "HTTP throughput at concurrency 64 >= 90% of the best in-process rate",
                "value": round(v, 3),
                "fastft_rps": f64["throughput_rps"],
                "best_in_process": best_in["texts_per_s"],
                "best_in_process_config": best_in["config"],
                "met": v >= 0.9,
            }
        )
    if f64 and c64 and c64["throughput_rps"] > 0:
        v = f64["throughput_rps"] / c64["throughput_rps"]
        out.append({"target": "throughput >= 1.2x (c) at concurrency 64", "value": round(v, 3), "met": v >= 1.2})
        if f64["p99_ms"] and c64["p99_ms"]:
            v = f64["p99_ms"] / c64["p99_ms"]
            out.append(
                {
                    "target": "p99 <= 1/3 of (c)'s p99 at concurrency 64",
                    "value": round(v, 3),
                    "fastft_p99_ms": f64["p99_ms"],
                    "ort_p99_ms": c64["p99_ms"],
                    "met": v <= 1 / 3,
                }
            )
    if f64 and b64 and b64["throughput_rps"] > 0:
        v = f64["throughput_rps"] / b64["throughput_rps"]
        out.append({"target": "throughput >= 5x (b) at concurrency 64", "value": round(v, 3), "met": v >= 5})
    f1 = get("fastft", "closed", "concurrency", 1)
    o70 = next((r for r in rows if r["server"] == "fastft" and r["mode"] == "open" and r.get("fraction") == 0.7), None)
    if f1 and o70 and f1["p50_ms"] and o70["p99_ms"]:
        v = o70["p99_ms"] / f1["p50_ms"]
        out.append(
            {
                "target": "open loop at 70% of peak: p99 <= 3x the unloaded p50",
                "value": round(v, 3),
                "p99_ms": o70["p99_ms"],
                "unloaded_p50_ms": f1["p50_ms"],
                "met": v <= 3,
            }
        )
    if soak:
        growth = soak["rss_growth"]
        out.append(
            {
                "target": "soak at 70%: 0 errors, 0 lost, RSS growth < 5%",
                "value": {
                    "errors": soak["errors"],
                    "lost": soak["lost"],
                    "rss_growth": growth,
                    "seconds": soak["seconds"],
                },
                "met": soak["errors"] == 0 and soak["lost"] == 0 and growth < 0.05,
                "note": None
                if soak["seconds"] >= 600
                else f"a {soak['seconds']:.0f} s soak, not the 10 minutes the target names",
            }
        )
    return out


def format_table(payload: dict) -> str:
    """Markdown: per server, closed loop at concurrency 1 and 64, open loop at 70% of its own peak."""

    def row(server, mode, **kw):
        for r in payload["runs"]:
            if r["server"] == server and r["mode"] == mode and all(r.get(k) == v for k, v in kw.items()):
                return r
        return None

    lines = [
        "| server | c=1 p50 / p99 ms | c=64 req/s | c=64 p50 / p90 / p99 ms | open 70%: req/s, p99 ms | "
        "errors | RSS MB | padding eff. |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in payload["servers"]:
        c1, c64, o70 = (
            row(name, "closed", concurrency=1),
            row(name, "closed", concurrency=64),
            row(name, "open", fraction=0.7),
        )
        errors = sum(r["errors"] + r.get("lost", 0) for r in payload["runs"] if r["server"] == name)
        eff = [r["padding_efficiency"] for r in payload["runs"] if r["server"] == name and "padding_efficiency" in r]
        lines.append(
            f"| {name} | {c1['p50_ms'] if c1 else '-'} / {c1['p99_ms'] if c1 else '-'} "
            f"| {c64['throughput_rps'] if c64 else '-'} "
            f"| {c64['p50_ms'] if c64 else '-'} / {c64['p90_ms'] if c64 else '-'} / {c64['p99_ms'] if c64 else '-'} "
            f"| {o70['throughput_rps'] if o70 else '-'}, {o70['p99_ms'] if o70 else '-'} | {errors} "
            f"| {max((r['server_rss_mb'] or 0) for r in payload['runs'] if r['server'] == name) or '-'} "
            f"| {min(eff) if eff else '-'}–{max(eff) if eff else '-'} |"
        )
    return "\n".join(lines)


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for i, name in enumerate(payload["servers"]):
        rows = sorted(
            (r for r in payload["runs"] if r["server"] == name and r["mode"] == "closed" and r["p50_ms"]),
            key=lambda r: r["concurrency"],
        )
        if not rows:
            continue
        x = [r["throughput_rps"] for r in rows]
        color = f"C{i}"
        ax.plot(x, [r["p50_ms"] for r in rows], "o-", color=color, label=f"{name} p50")
        ax.plot(x, [r["p99_ms"] for r in rows], "s--", color=color, alpha=0.6, label=f"{name} p99")
        for r in rows:
            ax.annotate(f"c{r['concurrency']}", (r["throughput_rps"], r["p99_ms"]), fontsize=7, color=color)
    ax.set_xlabel("throughput (requests/s, one text each)")
    ax.set_ylabel("client latency (ms)")
    ax.set_yscale("log")
    ax.set_title(
        f"fastft serve vs hand-written servers: {payload['model']['name']} "
        f"({payload['machine']['cpu']['physical_cores']} cores, closed loop)",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
