"""Config fields that carry their command-line form: the CLI's flags are generated from them.

    @dataclass
    class PruneConfig:
        prune_ffn: float = option(0.5, "fraction of FFN neurons removed per layer")

:func:`option` is :func:`dataclasses.field` with an :class:`Option` (help text, choices, the
flag's name where it is not ``--field-name``) in its metadata; ``fastft.cli.flags`` turns the
fields of a config class into argparse flags and parsed flags back into the config. The
config keeps its own validation: the flags only carry values.
"""

from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass

KEY = "fastft.option"


@dataclass(frozen=True)
class Option:
    """How a config field appears on the command line.

    help: one line; the default is appended as ``[value]`` (or ``default_help`` when given).
    flag: the flag's name [``--field-name``]; a bool field that defaults to True is switched off
        by a ``--no-...`` flag (name it here).
    short: an extra short name such as ``-o``.
    choices: the allowed values.
    switches: {value: (flag, help)} for a field chosen by one of several flags (``--int8`` /
        ``--fp16``); giving none of them sets ``absent``, giving two is an error.
    """

    help: str
    flag: str | None = None
    short: str | None = None
    choices: tuple | None = None
    default_help: str | None = None
    switches: dict | None = None
    absent: object = None
    metavar: str | None = None


def option(default=MISSING, help: str = "", *, default_factory=MISSING, **kw) -> Field:
    """A dataclass field with its command-line form (see :class:`Option`)."""
    return field(default=default, default_factory=default_factory, metadata={KEY: Option(help=help, **kw)})


def option_of(f: Field) -> Option | None:
    return f.metadata.get(KEY)


def field_default(f: Field):
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def flag_name(f: Field) -> str:
    opt = option_of(f)
    return (opt.flag if opt and opt.flag else None) or "--" + f.name.replace("_", "-")


def sub_configs(cls) -> list[tuple[str, type]]:
    """(field name, config class) of the config-valued fields of ``cls`` (a composed config)."""
    out = []
    for f in fields(cls):
        d = field_default(f)
        if d is not MISSING and is_dataclass(d) and not isinstance(d, type):
            out.append((f.name, type(d)))
    return out
