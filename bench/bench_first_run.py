"""Time the README's main job as a new user meets it: a fresh clone, an empty fastft cache.

    python bench/bench_first_run.py --result bench/results/first_run.json
    python bench/bench_first_run.py --result r.json --rev HEAD~1 --pip-cache   # another commit, warm pip

Clones ``--rev`` of this repository into a temporary directory, reads the README's first command
(the same way ``.ci/run`` reads the test command), and runs it there with ``FASTFT_CACHE`` pointing
at an empty directory, so the default teacher is fine-tuned from scratch. pip's download cache is
off unless ``--pip-cache``. The install part (everything before ``fastft compress``) and the job
are timed apart. The result holds both wall times, the teacher's training time and test accuracy
(from the fastft.json it cached), the compress report's timings and verdict, the 1-minute load
average at the start and end, and the 25-minute target.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fastft.bench.runner import write_result  # first: notes the machine's load at the start

ROOT = Path(__file__).resolve().parent.parent
TARGET_MIN = 25.0


def readme_main_command(readme: str) -> str:
    """The first ```bash block of the README (the main job; the test command is the second)."""
    m = re.search(r"```bash\n(.+?)\n```", readme, flags=re.S)
    if m is None:
        raise SystemExit("bench_first_run: no ```bash block in README.md")
    return m.group(1).strip()


def split_job(cmd: str) -> tuple[str, str]:
    """(install part, job part): the job starts at the last ``&& fastft `` of the command."""
    i = cmd.rfind("&& fastft ")
    if i < 0:
        raise SystemExit(f"bench_first_run: the README's first command runs no fastft job: {cmd}")
    return cmd[:i].strip(), cmd[i + 3 :].strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--result", required=True, help="result JSON to write")
    ap.add_argument("--rev", default="HEAD", help="commit to clone [HEAD]")
    ap.add_argument("--pip-cache", action="store_true", help="let pip use its download cache")
    ap.add_argument("--keep", action="store_true", help="keep the clone (its runs/compressed) afterwards")
    ap.add_argument("--note", default=None)
    a = ap.parse_args()

    if Path(a.result).is_dir():  # checked now, not after half an hour of work
        print(f"bench_first_run: --result {a.result} is a directory; give a file name", file=sys.stderr)
        return 2
    verify = ["git", "rev-parse", "--verify", f"{a.rev}^{{commit}}"]
    rev = subprocess.run(verify, cwd=ROOT, capture_output=True, text=True)
    if rev.returncode != 0:
        print(f"bench_first_run: --rev {a.rev!r} is not a commit of this repository", file=sys.stderr)
        return 2
    commit = rev.stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix="fastft-first-run-"))
    clone, cache = tmp / "clone", tmp / "cache"
    subprocess.run(["git", "clone", "-q", "--no-local", str(ROOT), str(clone)], check=True)
    subprocess.run(["git", "checkout", "-q", commit], cwd=clone, check=True)
    command = readme_main_command((clone / "README.md").read_text())
    install, job = split_job(command)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "FASTFT_CACHE")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    env["FASTFT_CACHE"] = str(cache)
    if not a.pip_cache:
        env["PIP_NO_CACHE_DIR"] = "1"
    # the job's own timings: a marker between the two parts, the job's stderr kept in a log
    script = f'{{ {install}; }} >"{tmp}/install.log" 2>&1 && date +%s.%N >"{tmp}/t_job" && {job} 2>"{tmp}/job.log"'
    load_start = list(os.getloadavg())
    t0 = time.time()
    rc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=clone, env=env, stdout=subprocess.DEVNULL)
    t_end = time.time()
    if rc.returncode != 0:
        for log in ("install.log", "job.log"):
            if (tmp / log).exists():
                print(f"--- {log} (tail)\n" + (tmp / log).read_text(errors="replace")[-3000:], file=sys.stderr)
        print(f"bench_first_run: the README's command exited {rc.returncode} (clone kept: {tmp})", file=sys.stderr)
        return rc.returncode
    t_job = float((tmp / "t_job").read_text())
    teacher_dirs = [p for p in cache.iterdir() if p.name.startswith("teacher-")] if cache.is_dir() else []
    teacher = json.loads((teacher_dirs[0] / "fastft.json").read_text()) if teacher_dirs else {}
    report = json.loads((clone / "runs" / "compressed" / "report.json").read_text())
    training = teacher.get("training", {})
    total_min = (t_end - t0) / 60
    payload = {
        "what": "the README's main job on a fresh clone, empty fastft cache (the default teacher trained from scratch)",
        "commit": commit,
        "readme_command": command,
        "pip_download_cache": a.pip_cache,
        "loadavg_1_5_15_at_start": load_start,
        "wall_s": {
            "total": round(t_end - t0, 1),
            "install": round(t_job - t0, 1),
            "job": round(t_end - t_job, 1),
            "teacher_training": training.get("train_time_s"),
            "compress": report.get("timings", {}).get("total_s"),
        },
        "teacher": {
            "test_accuracy": teacher.get("metrics", {}).get("test", {}).get("accuracy"),
            "validation_accuracy": teacher.get("metrics", {}).get("validation", {}).get("accuracy"),
            "epochs": training.get("epochs"),
            "steps": training.get("steps"),
            "best_epoch": training.get("best_epoch"),
            "history": training.get("history"),
        },
        "compress_timings_s": report.get("timings"),
        "verdict": report.get("verdict"),
        "int8": {  # the served INT8 graph against its own fp32: agreement, nodes kept fp32, fallback
            k: report.get("quantization", {}).get(k)
            for k in ("label_agreement_fp32_test", "fp32_nodes", "fallback_fired")
        },
        "stages": [
            {k: r.get(k) for k in ("stage", "accuracy", "retained", "speedup_512", "p50_ms_512", "file_mb")}
            for r in report.get("stages", [])
        ],
        "target": {"total_min_le": TARGET_MIN, "total_min": round(total_min, 2), "met": total_min <= TARGET_MIN},
        "conditions": a.note or "2-core machine, nothing else running",
    }
    write_result(a.result, payload)
    print(
        f"first run {total_min:.1f} min (install {(t_job - t0) / 60:.1f}, job {(t_end - t_job) / 60:.1f}); "
        f"teacher test accuracy {payload['teacher']['test_accuracy']}; target <= {TARGET_MIN} min "
        f"{'met' if payload['target']['met'] else 'missed'} -> {a.result}"
    )
    if not a.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
