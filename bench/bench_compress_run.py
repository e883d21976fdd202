"""Record one ``fastft compress`` run as a result file: its report plus machine, load and command.

    python bench/bench_compress_run.py --result bench/results/compress_qat_seed42.json -- --int8 --seed 42
    python bench/bench_compress_run.py --result r.json --from-output runs/c --command "fastft compress --int8" \\
        --load-start "4.1 3.9 3.2" --wall-s 1800 --log c.log          # a run started by hand

Runs ``fastft compress <args> --output <dir> --json`` (the README's main job, or with the options
given), then writes the report (every stage: parameters, file size, latency at seq 128/512
measured interleaved, test accuracy, retained, retained on the shifted splits; the INT8 label
agreement and fallback count), the exact command, wall time, the 1-minute load average at the start
and end, and the ratios the compression targets are judged on.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fastft.bench.runner import write_result  # first: notes the machine's load at the start


def summary(report: dict) -> dict:
    """The figures the targets are judged on, from a compress report."""
    rows = {r["stage"]: r for r in report["stages"]}
    t, f = rows["teacher"], report["stages"][-1]
    q = report.get("quantization") or {}
    out = {
        "final_stage": f["stage"],
        "retained": f.get("retained"),
        "speedup_512": f.get("speedup_512"),
        "retained_rare": f.get("retained_rare"),
        "retained_long": f.get("retained_long"),
        "teacher_accuracy": t.get("accuracy"),
        "final_accuracy": f.get("accuracy"),
        "teacher_p50_ms_512": t.get("p50_ms_512"),
        "final_p50_ms_512": f.get("p50_ms_512"),
        "teacher_file_mb": t.get("file_mb"),
        "final_file_mb": f.get("file_mb"),
        "file_vs_teacher_fp32": round(f["file_mb"] / t["file_mb"], 4) if t.get("file_mb") else None,
        "int8_label_agreement_fp32": q.get("label_agreement_fp32_test"),
        "int8_fp32_nodes": q.get("fp32_nodes"),
    }
    out["targets"] = {
        "retained_ge_99_at_5x": bool(
            (out["retained"] or 0) >= 0.99 and (out["speedup_512"] or 0) >= 5 and f["stage"] == "quantized"
        ),
        "full_int8_agreement_ge_99": bool(
            out["int8_fp32_nodes"] == 0 and (out["int8_label_agreement_fp32"] or 0) >= 0.99
        ),
        "int8_file_le_30pct": bool(out["file_vs_teacher_fp32"] is not None and out["file_vs_teacher_fp32"] <= 0.30),
    }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--result", required=True, help="result JSON to write")
    ap.add_argument("--from-output", default=None, help="record an existing run's output directory instead")
    ap.add_argument("--command", default=None, help="with --from-output: the command that produced it")
    ap.add_argument("--load-start", default=None, help="with --from-output: load average at its start")
    ap.add_argument("--wall-s", type=float, default=None, help="with --from-output: its wall time")
    ap.add_argument("--log", default=None, help="with --from-output: its log (the /usr/bin/time -v tail is kept)")
    ap.add_argument("--note", default=None)
    ap.add_argument("args", nargs=argparse.REMAINDER, help="-- then fastft compress options")
    a = ap.parse_args()
    extra = {}
    if a.from_output:
        out = Path(a.from_output)
        command, wall = a.command, a.wall_s
        load_start = [float(x) for x in a.load_start.split()[:3]] if a.load_start else None
        if a.log:
            lines = Path(a.log).read_text(errors="replace").splitlines()
            keep = ("Elapsed (wall clock)", "Maximum resident set size", "Exit status", "User time", "System time")
            extra["time_v"] = {
                ln.split(":")[0].strip(): ln.split(":", 1)[1].strip() for ln in lines if ln.strip().startswith(keep)
            }
    else:
        args = [x for x in a.args if x != "--"]
        tmp = tempfile.mkdtemp(prefix="fastft-compress-run-")
        out = Path(tmp) / "out"
        cmd = ["fastft", "compress", *args, "--output", str(out), "--no-progress"]
        command = shlex.join(["fastft", "compress", *args])
        load_start = list(os.getloadavg())
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode
        wall = round(time.perf_counter() - t0, 1)
        if rc != 0:
            print(f"fastft compress exited {rc}", file=sys.stderr)
            return rc
    report = json.loads((out / "report.json").read_text())
    payload = {
        "what": "one fastft compress run: its report, and the figures the compression targets are judged on",
        "command_run": command,
        "wall_s": wall,
        "loadavg_1_5_15_at_start": load_start,
        "conditions": a.note
        or "shared 2-core machine (other jobs running); latencies in one report are measured interleaved, "
        "so only ratios within this file compare",
        "summary": summary(report),
        **extra,
        "report": report,
    }
    write_result(a.result, payload)
    s = payload["summary"]
    print(
        f"retained {s['retained']:.2%} at {s['speedup_512']}x (seq 512), rare {s['retained_rare']}, "
        f"INT8 agreement {s['int8_label_agreement_fp32']}, fp32 nodes {s['int8_fp32_nodes']}, "
        f"file {s['file_vs_teacher_fp32']:.1%} of the teacher's -> {a.result}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
