"""PNGs of benchmark results (matplotlib, Agg): latency against sequence length, one line per backend."""

from __future__ import annotations

from pathlib import Path

from fastft.core.io import replace_file

STYLE = {  # baselines dashed, fastft solid
    "hf-eager": ("tab:gray", "--", "o"),
    "ort-plain": ("tab:brown", "--", "s"),
    "peer-fp32": ("tab:purple", "--", "^"),
    "peer-int8": ("tab:red", "--", "v"),
    "fastft-torch": ("tab:olive", "-", "D"),
    "fastft-fp32": ("tab:blue", "-", "o"),
    "fastft-int8": ("tab:green", "-", "s"),
}


def plot_latency(payload: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    s = payload["settings"]
    served = payload.get("served_model")  # --served: the fastft-* curves are that model, not --model
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name in payload["backends"]:
        rows = sorted((r for r in payload["results"] if r["backend"] == name), key=lambda r: r["seq"])
        if not rows:
            continue
        color, ls, marker = STYLE.get(name, (None, "-", "o"))
        label = f"{name} ({Path(served).name})" if served and name.startswith("fastft-") else name
        ax.plot([r["seq"] for r in rows], [r["p50_ms"] for r in rows], ls, marker=marker, color=color, label=label)
        ax.fill_between(
            [r["seq"] for r in rows],
            [r["p10_ms"] for r in rows],
            [r["p90_ms"] for r in rows],
            color=color,
            alpha=0.08,
            linewidth=0,
        )
    ax.set_yscale("log")
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("p50 latency (ms, log scale; band p10-p90)")
    seqs = sorted({r["seq"] for r in payload["results"]})
    ax.set_xticks(seqs)
    ax.grid(True, which="both", alpha=0.3)
    title = Path(payload["model"]).name + (f", fastft-* serving {Path(served).name}" if served else "")
    ax.set_title(f"{title}: batch {s['batch']}, {s['threads']} threads", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        replace_file(path, lambda tmp: fig.savefig(tmp, format="png"))  # whole or not at all
    finally:
        plt.close(fig)
    return path


def plot_attention(rows: list[dict], path: str | Path) -> Path | None:
    """bench/bench_attention.py: median (p10-p90 bars) per backend, one panel per head_dim x mask,
    the first thread count's rows; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    t0 = rows[0].get("threads")
    rows = [r for r in rows if r.get("threads") == t0]
    dims = sorted({r["head_dim"] for r in rows})
    masks = sorted({r["mask"] for r in rows})
    fig, axes = plt.subplots(len(dims), len(masks), figsize=(5 * len(masks), 3.6 * len(dims)), squeeze=False)
    for i, d in enumerate(dims):
        for j, m in enumerate(masks):
            ax = axes[i][j]
            for be in dict.fromkeys(r["backend"] for r in rows):
                sel = [r for r in rows if r["backend"] == be and r["head_dim"] == d and r["mask"] == m]
                ax.errorbar(
                    [r["seq"] for r in sel],
                    [r["median_ms"] for r in sel],
                    yerr=[[r["median_ms"] - r["p10_ms"] for r in sel], [r["p90_ms"] - r["median_ms"] for r in sel]],
                    marker="o",
                    capsize=3,
                    label=be,
                )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"head_dim {d}, mask {m}")
            ax.set_xlabel("seq")
            ax.set_ylabel("ms (median, p10-p90)")
            ax.legend(fontsize=8)
    fig.suptitle(f"fused attention, CPU, batch 1, 12 heads, {t0} threads (wall time)")
    fig.tight_layout()
    try:
        replace_file(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    finally:
        plt.close(fig)
    return Path(path)
