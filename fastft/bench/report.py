"""The report of ``fastft bench``: per-row statistics, ratios, the issue's targets, the table."""

from __future__ import annotations

import numpy as np

from fastft.bench.runner import quantiles

BASELINE = "hf-eager"
TARGET_SEQS = (128, 512)
P99_OVER_P50 = 1.2  # tail target at seq 512 on a quiet machine


def result_row(name: str, seq: int, batch: int, times_s: list[float], outs: dict[str, np.ndarray]) -> dict:
    """One result row: latency quantiles, throughput and (when hf-eager ran) logit agreement."""
    q = quantiles(times_s)
    row = {
        "backend": name,
        "seq": seq,
        "batch": batch,
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in q.items()},
    }
    row["p99_over_p50"] = round(q["p99_ms"] / q["p50_ms"], 3)
    row["seq_per_s"] = round(batch / (q["mean_ms"] / 1e3), 2)
    row["tokens_per_s"] = round(batch * seq / (q["mean_ms"] / 1e3), 1)
    if BASELINE in outs:
        row["max_abs_logit_diff_vs_hf_eager"] = float(np.abs(outs[name] - outs[BASELINE]).max())
        row["label_agreement_vs_hf_eager"] = float((outs[name].argmax(-1) == outs[BASELINE].argmax(-1)).mean())
    return row


def add_ratios(results: list[dict], seq: int) -> None:
    rows = {r["backend"]: r for r in results if r["seq"] == seq}
    base = rows.get(BASELINE)
    for r in rows.values():
        if base:
            r["speedup_vs_hf_eager"] = round(base["p50_ms"] / r["p50_ms"], 3)
    for ref, key in (("peer-int8", "speedup_vs_peer_int8"), ("fastft-fp32", "speedup_vs_fastft_fp32")):
        if "fastft-int8" in rows and ref in rows:
            rows["fastft-int8"][key] = round(rows[ref]["p50_ms"] / rows["fastft-int8"]["p50_ms"], 3)


def targets(results: list[dict], agreements: dict | None = None) -> list[dict]:
    """Where the issue's targets stand (met: None when not measured in this run); ``agreements``:
    each INT8 backend's label agreement with its fp32 (:func:`fastft.bench.agreement.int8_agreements`)."""

    def p50(backend, seq):
        for r in results:
            if r["backend"] == backend and r["seq"] == seq:
                return r["p50_ms"], r
        return None, None

    out = []

    def ratio_target(name, num_backend, den_backend, seq, threshold, strict=False):
        num, _ = p50(num_backend, seq)  # the slower reference
        den, _ = p50(den_backend, seq)
        value = round(num / den, 3) if num and den else None
        met = None if value is None else (value > threshold if strict else value >= threshold)
        out.append({"target": name, "seq": seq, "value": value, "threshold": threshold, "met": met})

    for seq in TARGET_SEQS:
        ratio_target("fastft-fp32 speed-up over hf-eager >= 1.15", "hf-eager", "fastft-fp32", seq, 1.15)
    for seq in TARGET_SEQS:
        ratio_target(
            "fastft-int8 faster than fastft-fp32 (speed-up > 1)", "fastft-fp32", "fastft-int8", seq, 1.0, strict=True
        )
    for seq in TARGET_SEQS:
        ratio_target("fastft-int8 speed-up over peer-int8 >= 1.3", "peer-int8", "fastft-int8", seq, 1.3)
    agree = {k: v["label_agreement"] for k, v in (agreements or {}).items()}
    if "fastft-int8" in agree and "peer-int8" in agree:
        # the INT8 speed target holds only with agreement at least the peer's
        out.append(
            {
                "target": "fastft-int8 label agreement with its fp32 >= peer-int8's",
                "seq": None,
                "value": agree["fastft-int8"],
                "threshold": agree["peer-int8"],
                "met": agree["fastft-int8"] >= agree["peer-int8"],
            }
        )
    ratio_target("fastft-fp32 speed-up over peer-fp32 >= 1.15", "peer-fp32", "fastft-fp32", 512, 1.15)
    for backend in ("fastft-fp32", "fastft-int8", "fastft-torch"):
        _, row = p50(backend, 512)
        value = row["p99_over_p50"] if row else None
        out.append(
            {
                "target": f"{backend} p99/p50 <= {P99_OVER_P50}",
                "seq": 512,
                "value": value,
                "threshold": P99_OVER_P50,
                "met": None if value is None else value <= P99_OVER_P50,
            }
        )
    return out


# -- text table ------------------------------------------------------------------------
def format_table(payload: dict) -> str:
    s = payload["settings"]
    served = f"; fastft-* serve {payload['served_model']}" if payload.get("served_model") else ""
    lines = [
        f"model {payload['model']} ({payload['model_note']}){served}",
        (
            f"batch {s['batch']}, threads {s['threads']}, {s['repeats']} interleaved repeats (random order) "
            f"after {s['warmup']} warm-up runs; ORT spinning off, sequential"
        ),
    ]
    cols = ["backend", "seq", "p50 ms", "p90 ms", "p99 ms", "p99/p50", "seq/s", "tok/s", "vs HF", "peak MB", "file MB"]
    rows = [cols]
    for r in payload["results"]:
        b = payload["backends"][r["backend"]]
        rows.append(
            [
                r["backend"],
                str(r["seq"]),
                f"{r['p50_ms']:.2f}",
                f"{r['p90_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['p99_over_p50']:.2f}",
                f"{r['seq_per_s']:.1f}",
                f"{r['tokens_per_s']:.0f}",
                f"{r['speedup_vs_hf_eager']:.2f}x" if "speedup_vs_hf_eager" in r else "-",
                f"{r['peak_rss_mb']:.0f}" if isinstance(r.get("peak_rss_mb"), (int, float)) else "-",
                f"{b['file_size_mb']:.1f}" if b.get("file_size_mb") is not None else "-",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    if "fastft-torch" in payload["backends"]:
        lines.append(f"fastft-torch attention: {payload['backends']['fastft-torch'].get('attention')}")
    agreements = payload.get("int8_agreement") or {}
    if agreements:
        first = next(iter(agreements.values()))
        lines.append(
            f"INT8 label agreement with its own fp32 on {first['n']} texts of {first['texts']}: "
            + ", ".join(f"{k} {v['label_agreement']:.2%}" for k, v in agreements.items())
        )
    for t in payload["targets"]:
        if t["met"] is None:
            continue
        at = f" at seq {t['seq']}" if t["seq"] is not None else ""
        lines.append(f"target {'MET ' if t['met'] else 'MISS'}  {t['target']}{at}: {t['value']}")
    return "\n".join(lines)
