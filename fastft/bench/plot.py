"""PNGs of benchmark results (matplotlib, Agg): latency against sequence length, one line per backend."""

from __future__ import annotations

from pathlib import Path

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
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name in payload["backends"]:
        rows = sorted((r for r in payload["results"] if r["backend"] == name), key=lambda r: r["seq"])
        if not rows:
            continue
        color, ls, marker = STYLE.get(name, (None, "-", "o"))
        ax.plot([r["seq"] for r in rows], [r["p50_ms"] for r in rows], ls, marker=marker, color=color, label=name)
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
    ax.set_title(f"{Path(payload['model']).name}: batch {s['batch']}, {s['threads']} threads", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
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
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
