"""The one runner behind every benchmark: the machine, versions, interleaving and result files.

Each script under ``bench/`` says only what it measures; this module supplies the rest, the
way Liger-Kernel's benchmark scripts share ``utils.run_benchmarks``::

    from fastft.bench.runner import interleave, quantiles, write_result   # notes the load now

    times = interleave({"fastft": run_fastft, "sdpa": run_sdpa}, rounds=30, warmup=2)
    rows = [{"backend": k, **quantiles(v)} for k, v in times.wall.items()]
    write_result("bench/results/x.json", {"benchmark": "...", "rows": rows}, csv_rows=rows)

Every result file carries ``command`` (the exact command line), ``date``, ``machine`` (CPU
model, cores, SIMD flags, GPU, torch threads, load average at the start and at the end) and
``versions`` (fastft, Python, the libraries, the C++ extension's build), and no machine paths
(paths inside the working directory are relative, inside the home directory ``~/...``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastft.core.errors import FastftError
from fastft.core.io import replace_file
from fastft.core.stats import quantiles  # noqa: F401 - part of the runner's API
from fastft.core.system import ENV_PACKAGES, cpu_info, load_average

# the load average when the benchmark started: this module is imported at a script's start
LOAD_AT_START = load_average()


def machine_info() -> dict:
    """CPU (model, cores, SIMD flags), usable CPUs, GPU, torch threads, load at the start."""
    info = {"cpu": cpu_info(), "gpu": None}
    try:
        info["affinity_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        pass
    if "torch" in sys.modules:  # torch's state is only reported when the benchmark uses torch
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            info["gpu"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["torch_threads"] = torch.get_num_threads()
    if LOAD_AT_START is not None:
        info["loadavg_at_start"] = LOAD_AT_START
    return info


def versions() -> dict:
    """fastft, Python, every library of ``fastft env`` that is installed, the C++ extension's build."""
    from fastft import __version__, _native
    from fastft.core.system import versions as _versions

    out = {"fastft": __version__, **_versions(ENV_PACKAGES)}
    out = {"fastft": out.pop("fastft"), "python": out.pop("python"), **out}
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        out["cuda"] = sys.modules["torch"].version.cuda
    out["cpp_extension"] = {k: v for k, v in _native.build_info().items() if k != "path"}
    return scrub_paths(out, names_only=True)


_PATH = re.compile(r"(?<![\w.~])(?:[A-Za-z]:)?(?:[\\/][^\\/\s'\":;,()]+){2,}[\\/]?")


def portable_path(path: str) -> str:
    """A path as a result file may hold it: inside the Python environment its file name only, inside
    the working directory relative to it, inside the home directory ``~/...``; else unchanged."""
    for root, how in ((sys.prefix, "name"), (os.getcwd(), "relative"), (str(Path.home()), "home")):
        root = root.rstrip("/\\")
        if root and (path == root or path.startswith(root + os.sep)):
            rest = path[len(root) + 1 :]
            if how == "name":
                return re.split(r"[\\/]", path.rstrip("/\\"))[-1]
            return (rest or ".") if how == "relative" else "~/" + rest
    return path


def scrub_paths(obj, *, names_only: bool = False):
    """``obj`` with the absolute paths in its strings made portable (:func:`portable_path`), or cut
    to the file name with ``names_only``: result files hold no machine paths."""
    if isinstance(obj, str):
        if names_only:
            return _PATH.sub(lambda m: re.split(r"[\\/]", m.group(0).rstrip("/\\"))[-1], obj)
        return _PATH.sub(lambda m: portable_path(m.group(0)), obj)
    if isinstance(obj, Mapping):
        return {k: scrub_paths(v, names_only=names_only) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [scrub_paths(v, names_only=names_only) for v in obj]
    return obj


def command_line() -> str:
    """The exact command that runs this process (the interpreter by name only): ``python3 bench/x.py
    ...`` for a script, ``python3 -m fastft ...`` for a module, ``fastft ...`` for a console script
    (recorded as ``python3 fastft ...`` before, which runs only from the repository's root)."""
    first = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    if first.name == "__main__.py":
        head = [Path(sys.executable).name, "-m", first.parent.name]
    elif first.suffix == ".py" or first.name in ("-c", "-m"):
        head = [Path(sys.executable).name, sys.argv[0]]
    else:  # an entry point on PATH
        head = [first.name]
    return " ".join(shlex.quote(a) for a in [*head, *sys.argv[1:]])


@dataclass
class Timings:
    """Seconds per call of each function: wall clock, and process CPU time (all threads)."""

    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    rounds: int = 0


def interleave(
    fns: Mapping[str, Callable[[], object]],
    rounds: int,
    *,
    warmup: int = 1,
    order: str = "rotate",
    seed: int = 0,
    gap_s: float = 0.0,
    on_call: Callable[[str], None] | None = None,
) -> Timings:
    """Time every function once per round, ``rounds`` times, the order changing each round.

    ``order="rotate"`` starts each round one function later; ``"random"`` draws a new order
    (seeded) each round. Either way load from other processes hits every function alike and
    none always runs right after another. ``warmup`` untimed calls of each function come
    first; ``gap_s`` of idle time precedes each timed call (lets spinning threads settle).
    """
    if order not in ("rotate", "random"):
        raise ValueError(f"order must be 'rotate' or 'random', not {order!r}")
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    out = Timings({n: [] for n in names}, {n: [] for n in names}, rounds)
    rng = np.random.default_rng(seed)
    for r in range(rounds):
        if order == "rotate":
            now = names[r % len(names) :] + names[: r % len(names)]
        else:
            now = [names[i] for i in rng.permutation(len(names))]
        for name in now:
            if gap_s:
                time.sleep(gap_s)
            c0, t0 = time.process_time(), time.perf_counter()
            fns[name]()
            out.wall[name].append(time.perf_counter() - t0)
            out.cpu[name].append(time.process_time() - c0)
            if on_call is not None:
                on_call(name)
    return out


@contextlib.contextmanager
def own_op_pool():
    """Inside the block, sessions created with fastft's ONNX Runtime ops put them on fastft's own
    thread pool (FASTFT_OP_POOL=fastft, read as a session creates its kernels) instead of the
    session's intra-op threads; the variable is as it was after."""
    old = os.environ.get("FASTFT_OP_POOL")
    os.environ["FASTFT_OP_POOL"] = "fastft"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FASTFT_OP_POOL", None)
        else:
            os.environ["FASTFT_OP_POOL"] = old


def random_feeds(names: Sequence[str], batch: int, seq: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Timing inputs for an encoder graph: random token ids (1000-19999), a full attention mask,
    zero token types; only the inputs in ``names`` (the session's input names)."""
    ids = rng.integers(1000, 20000, size=(batch, seq), dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {n: feeds[n] for n in names if n in feeds}


def add_model_dirs(parser) -> None:
    """``--models DIR ...`` and ``--names NAME ...``: a bench script over compressed model directories."""
    parser.add_argument("--models", nargs="+", required=True, metavar="DIR", help="compressed model directories")
    parser.add_argument("--names", nargs="+", default=None, help="a short name per directory [the directory names]")


def model_dirs(models: Sequence[str], names: Sequence[str] | None = None) -> tuple[list[Path], list[str]]:
    """(directories, a distinct name for each): ``names``, else each directory's name (its parent's
    for the ``.../out`` of a ``bench_compress_run.py`` run). FastftError when they do not pair up or
    a directory has no ``report.json`` (a ``fastft compress`` output has one)."""
    dirs = [Path(m) for m in models]
    names = list(names) if names else [d.parent.name if d.name == "out" else d.name for d in dirs]
    if len(names) != len(dirs) or len(set(names)) != len(names):
        raise FastftError(f"--names: one distinct name per --models directory (got {len(names)} for {len(dirs)})")
    for d in dirs:
        if not (d / "report.json").is_file():
            raise FastftError(f"{str(d)[:200]} has no report.json: give fastft compress output directories")
    return dirs, names


def reports_teacher(reports: Sequence[dict], given: str | None = None) -> str:
    """``given``, else the one teacher the compress ``reports`` name; FastftError when they differ."""
    if given:
        return given
    teachers = {r.get("teacher") for r in reports}
    if len(teachers) != 1:
        raise FastftError(f"the reports name different teachers ({', '.join(map(str, teachers))}): pass --teacher")
    return str(teachers.pop())


def int_list(flag: str, text: str, lo: int) -> list[int]:
    """``text`` as comma-separated integers, each at least ``lo``; FastftError naming ``flag`` otherwise."""
    try:
        vals = [int(x) for x in text.split(",")]
    except ValueError:
        raise FastftError(f"{flag} must be comma-separated integers (got {text[:100]!r})") from None
    if min(vals) < lo:
        raise FastftError(f"{flag}: every value must be at least {lo} (got {text[:100]})")
    return vals


def script_main(main: Callable[[], int]) -> int:
    """Run a bench script's ``main``: a FastftError (bad input) is one line on stderr and exit 2."""
    try:
        return main()
    except FastftError as e:
        print(f"fastft: error: {e}", file=sys.stderr)
        return 2


def write_result(
    path: str | Path, payload: dict, *, csv_rows: Sequence[dict] | None = None, csv_columns: Sequence[str] | None = None
) -> Path:
    """Write a JSON result with command, date, machine and versions filled in (unless given).

    Absolute paths in it are made portable (:func:`portable_path`): no machine paths in results.
    With ``csv_rows`` the rows also go to ``path`` with the suffix ``.csv`` (``csv_columns``:
    those columns only, in that order). Both files are written atomically.
    """
    path = Path(path)
    if path.is_dir():
        raise FastftError(f"{path} is a directory; give a file name for the result JSON")
    path.parent.mkdir(parents=True, exist_ok=True)
    out = {"command": command_line(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **payload}
    out["machine"] = {**machine_info(), **payload.get("machine", {})}
    out["versions"] = {**versions(), **payload.get("versions", {})}
    end = load_average()
    if end is not None and "loadavg_at_end" not in payload.get("machine", {}):
        out["machine"]["loadavg_at_end"] = end
    out = scrub_paths(json.loads(json.dumps(out, default=_default)))
    text = json.dumps(out, indent=1) + "\n"
    replace_file(path, lambda tmp: tmp.write_text(text))
    if csv_rows is not None:
        write_csv(path.with_suffix(".csv"), scrub_paths(list(csv_rows)), csv_columns)
    return path


def write_csv(path: str | Path, rows: Sequence[dict], columns: Sequence[str] | None = None) -> Path:
    """Rows as CSV (every key of every row, first-seen order, unless ``columns``); lists as JSON."""
    path = Path(path)
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()})

    replace_file(path, write)
    return path


def _default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(type(o).__name__)
