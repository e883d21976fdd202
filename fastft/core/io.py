"""Atomic output directories, stale-file cleanup and small JSON helpers.

Every directory fastft writes goes through :func:`atomic_output_dir`: the work happens in a
hidden ``.NAME.fastft-tmp-<pid>-<ns>-*`` directory beside the target, which is moved into place
only on success with a rename that cannot replace another run's result (``--overwrite``: one
exchange of the two directories where the filesystem has it). ``--overwrite`` replaces only a
directory that fastft wrote (it holds ``fastft.json``) or an empty one, and never the input, a
directory holding the input, the current directory or ``$HOME``. Hidden work directories left
by a killed run carry its pid and namespace and are removed by the next run that writes beside
them (:mod:`fastft.core.stale`); a long run claims its output when it starts (:func:`claim_output`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from fastft.core.errors import FastftError
from fastft.core.stale import (  # noqa: F401 - part of io's API
    clean_stale,
    live_writers,
    pid_alive,
    scratch_dir,
    work_prefix,
)

META_NAME = "fastft.json"  # the marker of a directory fastft wrote (fastft.core.schema.META_FILE)
_NAME_MAX = 255  # bytes in one path component (Linux, macOS)


def _protected() -> list[tuple[Path, str]]:
    out = []
    with contextlib.suppress(OSError):
        out.append((Path.cwd().resolve(), "the current directory"))
    home = os.environ.get("HOME")
    if home:
        out.append((Path(home).resolve(), "your home directory ($HOME)"))
    return out


def _is_within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(directory: Path, flag: str = "--output") -> None:
    """Fail now, with one line, when files cannot be created in ``directory`` (or where it would be made).

    Probes by creating and removing a file, so read-only mounts, immutable directories and
    missing permissions are all caught, for root too.
    """
    anc = _nearest_existing(directory)
    if not anc.is_dir():
        raise FastftError(f"cannot write {directory}: {anc} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix="." + work_prefix("probe"), dir=anc)
    except OSError as exc:
        raise FastftError(
            f"cannot write to {anc} ({exc.strerror or type(exc).__name__}); choose {flag} where you can create files"
        ) from None
    os.close(fd)
    os.unlink(probe)


def is_fastft_dir(path: Path) -> bool:
    return (path / META_NAME).is_file()


def check_output_dir(
    path: str | os.PathLike, overwrite: bool = False, inputs: Iterable[str | os.PathLike | None] = ()
) -> Path:
    """Check that ``path`` may be written, before any work starts.

    Refused: a path that is a file; the input (any of ``inputs`` that exists locally), a
    directory holding an input, the current directory, ``$HOME`` or a directory holding them;
    an existing non-empty directory without ``overwrite``; with ``overwrite``, a non-empty
    directory fastft did not write (no ``fastft.json``); a directory another running fastft
    process is writing; a place where files cannot be created. Stale work directories of dead
    runs beside ``path`` are removed (and said).
    """
    if path is None or (isinstance(path, str) and not path.strip()):
        raise FastftError("an output directory is required (output=DIR, --output DIR)")
    if not isinstance(path, (str, os.PathLike)):
        raise FastftError(f"output must be a path (got {type(path).__name__})")
    out = Path(path).expanduser()
    try:
        str(out).encode("utf-8")  # the libraries writing it (ONNX Runtime, safetensors...) take UTF-8 paths only
    except UnicodeEncodeError:
        raise FastftError(f"output path {ascii(str(out))} is not valid UTF-8; name it in UTF-8") from None
    try:
        resolved = out.resolve()
        if resolved.parent.is_dir():  # first: an output an interrupted --overwrite set aside is put back
            clean_stale(resolved.parent)
        exists = out.exists()
    except (OSError, RuntimeError, ValueError) as exc:  # a symbolic link loop, a name past the limit, a NUL
        why = getattr(exc, "strerror", None) or str(exc)
        raise FastftError(f"output path {out} cannot be used ({why})") from None
    longest = max((len(os.fsencode(part)) for part in resolved.parts), default=0)
    extra = len(".." + work_prefix("claim") + "12345678") + 12  # a work name around NAME (room for a longer pid)
    if len(os.fsencode(resolved.name)) + extra > _NAME_MAX or longest > _NAME_MAX:
        raise FastftError(
            f"output name {resolved.name[:40]}... is {len(os.fsencode(resolved.name))} bytes long: fastft writes "
            f"beside it under a name {extra} bytes longer, and a name holds at most {_NAME_MAX}; "
            "choose a shorter one"
        )
    if out.is_symlink() and not exists:
        raise FastftError(f"output path {out} is a symbolic link to {os.readlink(out)}, which does not exist")
    if exists and not out.is_dir():
        raise FastftError(f"output path {out} exists and is not a directory")
    if exists and os.path.ismount(out):  # the finished result is renamed onto it: EBUSY after all the work
        raise FastftError(
            f"output directory {out} is a mount point: fastft writes its result beside the output and then "
            f"moves it into place, which a mount point refuses; write into a directory inside it ({out}/model)"
        )
    for inp in inputs:
        if inp is None or not isinstance(inp, (str, os.PathLike)):
            continue
        p = Path(inp).expanduser()
        if p.exists() and _is_within(p.resolve(), resolved):
            what = "is" if p.resolve() == resolved else "holds"
            raise FastftError(f"output {out} {what} the input {inp}; write the result to another directory")
    for prot, what in _protected():
        if _is_within(prot, resolved):
            holds = "is" if prot == resolved else "holds"
            raise FastftError(f"output {out} {holds} {what}; fastft never writes over it, choose a new directory")
    if exists and any(out.iterdir()):
        if not overwrite:
            raise FastftError(
                f"output directory {out} already exists (pass overwrite=True, --overwrite, to replace it)"
            )
        if not is_fastft_dir(out):
            raise FastftError(
                f"overwrite (--overwrite) replaces only a directory fastft wrote (with {META_NAME}) or an empty "
                f"one; {out} has no {META_NAME}: choose another directory"
            )
    clean_stale(tempfile.gettempdir())  # scratch of killed exports
    parent = resolved.parent
    if parent.is_dir():
        busy = live_writers(resolved)
        if busy:
            raise FastftError(
                f"another fastft run (pid {busy[0]}) is writing {out} now; wait for it or choose another directory"
            )
    check_writable(parent)
    return out


def umask() -> int:
    """The process umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def normalize_modes(root: str | os.PathLike) -> None:
    """Give every file under ``root`` mode 0666 and every directory 0777, less the umask.

    Libraries write some files through private temporary files (mode 0600); a model directory
    must be readable by whoever serves it, like any file the user creates.
    """
    mask = umask()
    fmode, dmode = 0o666 & ~mask, 0o777 & ~mask
    root = Path(root)
    os.chmod(root, dmode)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, dmode)
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, fmode)


def _publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move ``tmp`` to ``out`` atomically; never over another run's result unless ``overwrite``.
    Signals wait until the move is done: an interrupt between the two steps of a replacement
    left no output at all."""
    with _signals_deferred():
        _move_into_place(tmp, out, overwrite)


def _move_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    taken = FastftError(
        f"output directory {out} was written by another run while this one worked; "
        "this run's result was discarded (pass overwrite=True, --overwrite, to replace it)"
    )
    if overwrite and out.is_dir() and any(out.iterdir()):
        if not is_fastft_dir(out):
            raise FastftError(
                f"overwrite (--overwrite) replaces only a directory fastft wrote (with {META_NAME}); {out} "
                "changed while this run worked and has none now: nothing was replaced"
            )
        if _exchange(tmp, out):  # one step: out is the new result, tmp the old one
            shutil.rmtree(tmp, ignore_errors=True)
            return
        # two renames; a run killed between them leaves the old output in .NAME.fastft-old-*,
        # which the next run puts back (fastft.core.stale.clean_stale)
        old = Path(tempfile.mkdtemp(prefix=work_prefix("old", out.name), dir=out.parent))
        try:
            os.rename(out, old / out.name)
        except OSError as exc:
            shutil.rmtree(old, ignore_errors=True)
            raise FastftError(f"cannot replace {out} ({exc.strerror or type(exc).__name__})") from None
        try:
            os.rename(tmp, out)
        except OSError as exc:
            if not out.exists():
                os.rename(old / out.name, out)  # put the previous result back
            shutil.rmtree(old, ignore_errors=True)
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise taken from None
            raise FastftError(f"cannot move the result into {out} ({exc.strerror or type(exc).__name__})") from None
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        # rename(2) replaces an empty directory but fails on a non-empty one: no lost result
        os.rename(tmp, out)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise taken from None
        if exc.errno == errno.ENOTDIR:
            raise FastftError(f"output path {out} became a file while this run worked; nothing was written") from None
        raise FastftError(f"cannot move the result into {out} ({exc.strerror or type(exc).__name__})") from None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system or the
    filesystem has no such call (the caller renames twice)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # a libc before glibc 2.28
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP recorded while the block runs and raised again when it ends.
    Handlers, not a signal mask: a mask holds only the calling thread, and the kernel gives a
    process's signal to any thread that does not block it (torch's, ONNX Runtime's); Python runs
    every handler in the main thread, so it is the main thread's handlers that wait."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is None:  # a handler set outside Python: left as it is
            continue
        with contextlib.suppress(OSError, ValueError):
            previous[sig] = signal.signal(sig, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(caught):  # each once, in the order they came
            signal.raise_signal(sig)


@contextlib.contextmanager
def claim_output(path: str | os.PathLike) -> Iterator[None]:
    """Say, beside ``path``, that this run will write it (``.NAME.fastft-claim-<pid>-<ns>-*``), from
    the start of a long run to its end: a second run for the same output is refused when it starts
    (:func:`check_output_dir`), not after both have worked. A claim of a killed run is stale
    (removed by the next run)."""
    out = Path(path).expanduser().resolve()
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]  # deepest first
    claim = None
    with contextlib.suppress(OSError):  # where it cannot be made, the run's own checks say why
        out.parent.mkdir(parents=True, exist_ok=True)
        claim = Path(tempfile.mkdtemp(prefix=work_prefix("claim", out.name), dir=out.parent))
    try:
        yield
    finally:
        if claim is not None:
            with contextlib.suppress(OSError):
                claim.rmdir()
        for p in made:  # the parents made for the claim, where the run left nothing in them
            with contextlib.suppress(OSError):
                p.rmdir()


@contextlib.contextmanager
def atomic_output_dir(
    path: str | os.PathLike, overwrite: bool = False, inputs: Iterable[str | os.PathLike | None] = ()
) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; move it into place only on success.

    On any exception the temporary directory is removed and ``path`` is left untouched,
    so a failed or interrupted run never leaves a half-written model directory. The move
    fails (FastftError) when another run wrote ``path`` meanwhile, unless ``overwrite``.
    File modes are normalised (:func:`normalize_modes`).
    """
    inputs = list(inputs)
    out = check_output_dir(path, overwrite, inputs).resolve()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=work_prefix("tmp", out.name), dir=out.parent))
    except OSError as exc:
        raise FastftError(f"cannot write to {out.parent} ({exc.strerror or type(exc).__name__})") from None
    try:
        yield tmp
        normalize_modes(tmp)
        _sync_tree(tmp)  # on disk before the name points at it: a crash never leaves empty files in place
        _publish(tmp, out, overwrite)
        _sync_dir(out.parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno in _WRITE_ERRNOS:  # the disk filled up, or permissions changed while the run worked
            raise FastftError(f"cannot write {out} ({exc.strerror}); nothing was written") from None
        raise
    except FastftError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as exc:
        # measured before the partial files are removed; or said so in the library's own message
        full = _disk_full(tmp) or os.strerror(errno.ENOSPC) in str(exc)
        shutil.rmtree(tmp, ignore_errors=True)
        if full:  # a library's own error for a write the full disk cut short (safetensors, a corrupt ONNX)
            raise FastftError(
                f"cannot write {out}: the disk holding it is full ({type(exc).__name__}: {str(exc)[:160]}); "
                "nothing was written"
            ) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _sync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (the directories last)."""
    for d, _, files in os.walk(root, topdown=False):
        for name in files:
            p = os.path.join(d, name)
            if not os.path.islink(p):
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        _sync_dir(Path(d))


def _sync_dir(d: Path) -> None:
    """fsync a directory (its entries), where the system allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _disk_full(path: Path) -> bool:
    """Whether the filesystem holding ``path`` has (nearly) no space left for this user."""
    try:
        return shutil.disk_usage(path).free < 1 << 20
    except OSError:
        return False


_WRITE_ERRNOS = {errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, getattr(errno, "EDQUOT", errno.ENOSPC)}


@contextlib.contextmanager
def stdout_to_stderr(discard: bool = False) -> Iterator[None]:
    """Send everything written to stdout, by Python or by native code (fd 1), to stderr.

    ``--json`` promises JSON on stdout; libraries print progress or, on failure, whole graphs
    there. Commands run their work inside this and print their JSON after it. ``discard``:
    drop it instead (a probe's noise).
    """
    import io

    with contextlib.suppress(Exception):
        sys.stdout.flush()
    saved = sink = None
    try:
        saved = os.dup(1)
        if discard:
            sink = os.open(os.devnull, os.O_WRONLY)
        os.dup2(sink if discard else 2, 1)
    except OSError:
        saved = None
    try:
        with contextlib.redirect_stdout(io.StringIO() if discard else sys.stderr):
            yield
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)
        if sink is not None:
            os.close(sink)


def replace_file(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` a file beside ``path``, then move it into place: a reader (or a run killed
    meanwhile) sees the old file or the new one whole, never half of one. A symbolic link is
    followed: the file it names is replaced and the link kept, as a plain write does. The
    temporary name is this process's and thread's own (two runs writing one file each had theirs),
    removed when ``write`` fails or is interrupted."""
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.{threading.get_ident()}.partial{target.suffix}")
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_json_object(path: str | os.PathLike) -> dict:
    """A JSON object from ``path``; ModelError naming the file when it is corrupt."""
    from fastft.core.errors import ModelError

    try:
        obj = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path} is corrupt ({exc})") from None
    if not isinstance(obj, dict):
        raise ModelError(f"{path} is corrupt (not a JSON object)")
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    Path(path).write_text(dumps(obj) + "\n")


def _standard(obj: Any) -> Any:
    """``obj`` with every float that is not finite as None: JSON has no NaN or Infinity, and a
    strict parser refuses Python's ``NaN`` token (a metric of nothing, a diverged loss)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _standard(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_standard(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 0) == 0:  # a numpy / torch scalar, or 0-d array
        return _standard(obj.item())
    return obj


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def dumps(obj: Any) -> str:
    """Standard JSON (no NaN or Infinity: those are null), indented."""
    return json.dumps(_standard(obj), indent=2, default=_json_default, allow_nan=False)
