"""Hidden work directories left by killed fastft runs: each carries its pid and namespace, and
the next run that writes beside it removes those whose process is gone (and says so)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path

# Every hidden work directory or file fastft makes is named ``[.NAME.]fastft-KIND-<pid>-<ns>-*``:
# the process that made it and its machine and pid namespace (``ns``, :func:`namespace`). A later
# run removes the ones of its own namespace whose process is gone; a name a person would pick
# (``.photos.old-2024-summer``) never matches, and a live run in another container or on another
# host sharing the directory is never taken for a dead one.
WORK_KINDS = ("tmp", "old", "claim", "compress", "probe", "export", "stage", "quant")
_WORK_NAME = re.compile(
    r"^(?:\.(?:(?P<name>.+)\.)?)?fastft-(?P<kind>" + "|".join(WORK_KINDS) + r")-(?P<pid>\d+)-(?P<ns>[0-9a-f]{8})-"
)


@functools.lru_cache(maxsize=1)
def namespace() -> str:
    """This machine (host name, boot) and pid namespace, hashed to 8 hex digits: a pid means a
    process only within one of them."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        with open("/proc/sys/kernel/random/boot_id") as f:
            parts.append(f.read().strip())
    with contextlib.suppress(OSError):
        parts.append(os.readlink("/proc/self/ns/pid"))
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:8]


def work_prefix(kind: str, name: str | None = None) -> str:
    """The start of a work name of this process: ``fastft-KIND-<pid>-<ns>-``, hidden and tied to
    the output ``name`` (``.NAME.fastft-KIND-...``) where given."""
    if kind not in WORK_KINDS:
        raise ValueError(f"unknown work kind {kind!r}")
    prefix = f"fastft-{kind}-{os.getpid()}-{namespace()}-"
    return f".{name}.{prefix}" if name is not None else prefix


def parse_work_name(name: str):
    """(output name or None, kind, pid, ns) of a fastft work name, else None."""
    m = _WORK_NAME.match(name)
    return None if m is None else (m.group("name"), m.group("kind"), int(m.group("pid")), m.group("ns"))


def scratch_dir(kind: str) -> tempfile.TemporaryDirectory:
    """A TemporaryDirectory ``fastft-KIND-<pid>-<ns>-*`` in the system temp dir (later runs remove stale ones)."""
    return tempfile.TemporaryDirectory(prefix=work_prefix(kind))


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
    """Remove the work directories in ``directory`` left by fastft runs that are gone.

    Only fastft's work names (:data:`WORK_KINDS`, :func:`work_prefix`) of this machine and pid
    namespace whose process no longer runs are touched, each said on stderr. An ``old`` one (an
    output ``--overwrite`` moved aside, a run killed before the new one took its place) is put
    back where the output is missing, not removed. Returns the removed paths.
    """
    d = Path(directory)
    removed: list[Path] = []
    try:
        entries = list(d.iterdir())
    except OSError:
        return removed
    for p in entries:
        parsed = parse_work_name(p.name)
        if parsed is None:
            continue
        name, kind, pid, ns = parsed
        if ns != namespace() or pid_alive(pid) or p.is_symlink() or not (p.is_dir() or p.is_file()):
            continue
        if kind == "old" and name and _put_back(p, d / name, pid, log):
            continue
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
    return removed


def _put_back(old: Path, out: Path, pid: int, log: bool) -> bool:
    """Move the output an interrupted ``--overwrite`` set aside (``old/NAME``) back to ``out`` when
    nothing took its place; True when it did (``old`` is then empty and removed)."""
    kept = old / out.name
    if out.exists() or out.is_symlink() or not kept.is_dir():
        return False
    try:
        os.rename(kept, out)
    except OSError:
        return False
    with contextlib.suppress(OSError):
        old.rmdir()
    if log:
        print(f"fastft: put back {out}, which an interrupted --overwrite (pid {pid}) had moved aside", file=sys.stderr)
    return True


def live_writers(out: Path) -> list[int]:
    """Pids of other running fastft processes writing (or set to write) the directory ``out`` now:
    their ``tmp`` and ``claim`` names beside it, in this machine and pid namespace."""
    pids = []
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return pids
    for p in entries:
        parsed = parse_work_name(p.name)
        if parsed is None:
            continue
        name, kind, pid, ns = parsed
        if name == out.name and kind in ("tmp", "claim") and ns == namespace() and pid != os.getpid():
            if pid_alive(pid):
                pids.append(pid)
    return pids
