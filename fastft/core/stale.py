"""Hidden work directories left by killed fastft runs: each carries its pid, and the next run
that writes beside it removes those whose process is gone (and says so)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

# hidden work directories, each carrying the pid of the run that made it
_STALE_PATTERNS = (
    re.compile(r"^\..+\.(?:tmp|old)-(?P<pid>\d+)-"),  # atomic_output_dir
    re.compile(r"^\.compress-work-(?P<pid>\d+)-"),  # fastft compress
    re.compile(r"^\.fastft-probe-(?P<pid>\d+)-"),  # the writability probe
    re.compile(r"^fastft-(?:export|stage|quant)-(?P<pid>\d+)-"),  # scratch in the system temp directory
)


def scratch_dir(kind: str) -> tempfile.TemporaryDirectory:
    """A TemporaryDirectory ``fastft-KIND-<pid>-*`` in the system temp dir (stale ones are removed by later runs)."""
    return tempfile.TemporaryDirectory(prefix=f"fastft-{kind}-{os.getpid()}-")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` is running (a zombie counts as gone)."""
    if pid == os.getpid():
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except (OverflowError, ValueError):
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _tree_mb(path: Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total / 2**20


def clean_stale(directory: str | os.PathLike, log: bool = True) -> list[Path]:
    """Remove the hidden work directories in ``directory`` left by fastft runs that are gone.

    Only names fastft makes (``.NAME.tmp-<pid>-*``, ``.NAME.old-<pid>-*``, ``.compress-work-<pid>-*``,
    ``fastft-export-<pid>-*``) whose pid is no longer running are removed; each removal is said on
    stderr. Returns the removed paths.
    """
    d = Path(directory)
    removed: list[Path] = []
    try:
        entries = list(d.iterdir())
    except OSError:
        return removed
    for p in entries:
        for pat in _STALE_PATTERNS:
            m = pat.match(p.name)
            if m is None:
                continue
            pid = int(m.group("pid"))
            if pid_alive(pid) or not (p.is_dir() or p.is_file()) or p.is_symlink():
                break
            size = _tree_mb(p) if p.is_dir() else p.stat().st_size / 2**20
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
            if not p.exists():
                removed.append(p)
                if log:
                    print(
                        f"fastft: removed {p} ({size:.1f} MB), left by an interrupted fastft run (pid {pid})",
                        file=sys.stderr,
                    )
            break
    return removed


def live_writers(out: Path) -> list[int]:
    """Pids of other running fastft processes that are writing the directory ``out`` now."""
    pat = re.compile(rf"^\.{re.escape(out.name)}\.tmp-(\d+)-")
    pids = []
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return pids
    for p in entries:
        m = pat.match(p.name)
        if m and int(m.group(1)) != os.getpid() and pid_alive(int(m.group(1))):
            pids.append(int(m.group(1)))
    return pids
