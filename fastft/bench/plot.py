"""PNG of p50 latency against sequence length, one line per backend (matplotlib, Agg)."""

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
