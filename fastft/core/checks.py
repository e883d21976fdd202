"""Argument checks that name the argument: finite floats in range, true integers.

    check_float(arg("lr"), lr, lo=0, lo_open=True)     # "lr (--lr) must be a finite number (got nan)"
    check_int("batch_size", 1.5, lo=1)                  # "batch_size must be an integer (got 1.5)"

NaN passes every comparison-based check (``nan <= 0`` is False), so each float is checked
for finiteness first; ``inf`` overflows step counts. Bools are not integers here.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

from fastft.core.errors import FastftError


def arg(name: str, flag: str | None = None) -> str:
    """An argument as a message names it to both its callers, Python's keyword and the CLI's flag:
    ``arg("batch_size")`` is ``"batch_size (--batch-size)"`` (``flag`` where the CLI spells it
    otherwise). Shared validation (configs, ``fastft.evaluate``) names its arguments so."""
    return f"{name} ({flag or '--' + name.replace('_', '-')})"


def setting(*pairs: tuple[str, str]) -> str:
    """Settings as a message names them to both callers, Python's then the CLI's: ``setting(("a=0",
    "--a 0"), ("b=False", "--no-b"))`` is ``"a=0, b=False (--a 0 --no-b)"`` (:func:`arg` names one
    argument; this names values to pass)."""
    return f"{', '.join(py for py, _ in pairs)} ({' '.join(cli for _, cli in pairs)})"


def _range(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if hi is None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if lo is None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def check_float(
    name: str,
    value,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    optional: bool = False,
):
    """``value`` as given, or FastftError naming ``name`` when it is not a finite number in range."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise FastftError(f"{name} must be a number (got {value!r})")
    v = float(value)
    if not math.isfinite(v):
        raise FastftError(f"{name} must be a finite number (got {value})")
    if (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and (v > hi or (hi_open and v == hi))):
        raise FastftError(f"{name} must be {_range(lo, hi, lo_open, hi_open)} (got {value:g})")
    return value


MAX_THREADS = 1024  # more is a typo, and would die in thread creation (or ORT's C int) with a traceback


def check_threads(name: str, value, optional: bool = True):
    """A thread count: an integer in [1, MAX_THREADS] (or None when ``optional``)."""
    return check_int(name, value, lo=1, hi=MAX_THREADS, optional=optional)


MAX_SEED = 2**32 - 1  # what numpy's and torch's seeding takes
MAX_EPOCHS = 10_000  # past this a run is a mistyped number, not a plan (1e308 overflowed the step count)
# the same for counts with no other bound: a typo ran for ever (max_steps 1e20) or filled memory (augment 1e9)
MAX_STEPS = 10_000_000
MAX_PRUNE_STEPS = 100
MAX_AUGMENT = 100  # perturbed copies of each training text
MAX_REPEATS = 1_000_000  # timed runs (and warm-up runs) of one benchmark cell


def check_int(name: str, value, *, lo: int | None = None, hi: int | None = None, optional: bool = False):
    """``value`` as given, or FastftError naming ``name`` when it is not an integer in [lo, hi]."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise FastftError(f"{name} must be an integer (got {value!r})")
    if lo is not None and value < lo:
        raise FastftError(f"{name} must be at least {lo} (got {value})")
    if hi is not None and value > hi:
        raise FastftError(f"{name} must be at most {hi} (got {value})")
    return value


MIN_MAX_LENGTH = 3  # two positions hold the special tokens ([CLS] and [SEP], <s> and </s>)


def check_max_length(name: str, value, *, optional: bool = True):
    """``value`` as given, or FastftError naming ``name`` unless it is an integer that leaves room
    for one token of text beside the two special tokens (None when ``optional``: the model's)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value < MIN_MAX_LENGTH:
        raise FastftError(
            f"{name} must be at least {MIN_MAX_LENGTH} (got {value}): two positions hold the special tokens, "
            "so the model would see no text"
        )
    return check_int(name, value, optional=optional)


def check_bool(name: str, value, *, optional: bool = False):
    """``value`` as given, or FastftError naming ``name`` unless it is True or False (or None when
    ``optional``). A string is refused: ``int8="no"`` would otherwise be truthy."""
    if value is None and optional:
        return None
    if not isinstance(value, bool):
        raise FastftError(f"{name} must be {'True, False or None' if optional else 'True or False'} (got {value!r})")
    return value


def check_bool_fields(config) -> None:
    """:func:`check_bool` on every field of the dataclass ``config`` annotated ``bool`` (or
    ``bool | None``), named as the field (the Python API's name: the CLI only passes bools)."""
    for f in dataclasses.fields(config):
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        if kind in ("bool", "bool | None", "Optional[bool]"):
            check_bool(f.name, getattr(config, f.name), optional=kind != "bool")


def given_fields(cfg, *names: str) -> list[str]:
    """The fields of the config dataclass ``cfg`` (``names``, or all of them) whose value is not the
    default: what the caller set, for the checks that refuse settings a run would not read."""
    base = type(cfg)()
    return [n for n in names or [f.name for f in dataclasses.fields(cfg)] if getattr(cfg, n) != getattr(base, n)]


def check_path(name: str, value, what: str = "a model directory or a name", optional: bool = False):
    """``value`` as given, or FastftError naming ``name`` unless it is a non-empty str or os.PathLike
    without a NUL byte (None passes where ``optional``): a wrong type failed deep in pathlib."""
    import os

    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, os.PathLike)):
        raise FastftError(f"{name} must be {what}, as a str or os.PathLike (got {value!r:.60})")
    if not str(value).strip():
        raise FastftError(f"{name} is empty: give {what}")
    if "\x00" in str(value):
        raise FastftError(f"{name} holds a NUL byte: {str(value)[:60]!r}")
    return value
