"""The ``fastft`` command line: a thin argparse layer over the Python API.

Each command lives in its own module exposing ``register(subparsers)``; that module
imports nothing heavy at top level, so ``fastft --help`` is instant. A user mistake
(:class:`fastft.core.errors.FastftError`) prints one line and exits 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import logging
import os
import signal
import sys
import threading
import traceback
import warnings

from fastft import __version__
from fastft.core.errors import FastftError

# command modules, in the order --help lists them
COMMAND_MODULES = [
    "fastft.cli.train",  # train, eval, predict
    "fastft.cli.export",  # export
    "fastft.cli.compress",  # compress
    "fastft.cli.bench",  # bench
    "fastft.cli.serve",  # serve
    "fastft.cli.env",  # env
]


class Parser(argparse.ArgumentParser):
    """argparse with fastft's error format: one line on stderr, exit 2 (no usage block). Options
    are matched whole: argparse's default took a unique prefix, so ``compress --no-int8`` was read
    as ``--no-int8-embeddings`` (predict has a ``--no-int8`` of its own)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"fastft: error: {message} (see '{self.prog} --help')\n")


def add_command(subparsers, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """Add a sub-command with the options every command shares (``--json``)."""
    p = subparsers.add_parser(
        name,
        help=help,
        description=description or help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout (progress goes to stderr)")
    # after the command too (fastft env --json -v); not given here, fastft -v before it still counts
    p.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="show library warnings and tracebacks"
    )
    return p


def json_guard(args):
    """With --json, whatever the work prints on stdout goes to stderr: stdout holds only the JSON."""
    import contextlib

    from fastft.core.io import stdout_to_stderr

    return stdout_to_stderr() if args.json else contextlib.nullcontext()


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="fastft",
        description="Fine-tune Transformer encoders, then make them small and fast to serve.",
        epilog="Run 'fastft COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"fastft {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library warnings and tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for modname in COMMAND_MODULES:
        importlib.import_module(modname).register(sub)
    parser.commands = sub.choices  # name -> the command's parser (its errors point to its own --help)
    return parser


def _quiet_libraries(verbose: bool) -> None:
    if verbose:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # torch's C++ "[W...]" lines (read when torch loads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # its retry lines before our one-line error
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|transformers|onnx|onnxruntime)")


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """What a warning looks like on the command line without -v (e.g. texts truncated)."""
    return f"fastft: warning: {message}\n"


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (``timeout``, ``docker stop``, a CI cancel, a closed terminal), raised
    where the program is, as Ctrl-C's KeyboardInterrupt is: the same clean-up runs (half-written
    outputs and scratch directories are removed), then the exit status is 128 + the signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _terminated(signum, frame) -> None:
    raise Terminated(signum)


def _catch_termination() -> dict:
    """SIGTERM and SIGHUP raise :class:`Terminated` (main thread only); the previous handlers,
    to put back. ``fastft serve`` sets its own while it serves (SIGTERM drains)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:  # a caller's own handler is left alone
            previous[sig] = signal.signal(sig, _terminated)
    return previous


# errors of the system a command ran on, not of fastft: said in one line like any other
_SYSTEM_ERRNOS = {
    getattr(errno, name)
    for name in (
        "ENOSPC",
        "EDQUOT",
        "ENAMETOOLONG",
        "ELOOP",
        "EACCES",
        "EPERM",
        "EROFS",
        "ENOENT",
        "ENOTDIR",
        "EISDIR",
        "EIO",
        "EMFILE",
        "ENFILE",
        "EBUSY",
        "EXDEV",
        "ETXTBSY",
    )
    if hasattr(errno, name)
}


def _end_progress_bars() -> None:
    """Close the progress bars a stopped run left open (a bar's line has no line break until it
    closes), so the one-line message that follows starts a line of its own."""
    module = sys.modules.get("tqdm")
    if module is None:
        return
    for bar in list(getattr(module.tqdm, "_instances", ())):
        with contextlib.suppress(Exception):
            bar.close()


def one_line(message: str) -> str:
    """``message`` with its line breaks (from a path or a value it quotes) written as ``\\n``:
    an error is one line, however odd the input it names."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # "unrecognized arguments", said by the command's parser: its --help lists its options
        argv = sys.argv[1:] if argv is None else list(argv)
        at = argv.index(args.command) if args.command in argv else len(argv)
        if all(x in argv[:at] for x in extra):  # fastft --json env: an option of the command, before it
            parser.error(f"unrecognized arguments: {' '.join(extra)} (a command's options go after it)")
        command = parser.commands.get(args.command) if args.command else None
        (command or parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    _quiet_libraries(args.verbose)
    formatwarning = warnings.formatwarning
    if not args.verbose:  # one line per warning while the command runs; a caller's own format after it
        warnings.formatwarning = _one_line_warning
    handlers = _catch_termination()
    try:
        return int(args.func(args) or 0)
    except FastftError as exc:
        _end_progress_bars()
        if args.verbose:  # the traceback -v asks for, and the same exit code as without it
            traceback.print_exc()
        print(f"fastft: error: {one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except Terminated as exc:
        _end_progress_bars()
        print(f"fastft: terminated ({exc})", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        _end_progress_bars()
        print("fastft: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fastft env | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # what the system refused (a full disk, a path too long, no permission): one line
        if exc.errno not in _SYSTEM_ERRNOS:
            raise
        _end_progress_bars()
        if args.verbose:
            traceback.print_exc()
        where = f": {exc.filename}" if exc.filename else ""
        print(f"fastft: error: {one_line(f'{exc.strerror or exc}{where}')}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = formatwarning
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    raise SystemExit(main())
