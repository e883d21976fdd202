"""argparse flags generated from config dataclasses (fields made with :func:`fastft.core.options.option`).

    add_config_flags(parser, CompressConfig)          # one flag per field, a group per stage config
    cfg = config_from_args(args, CompressConfig)      # the parsed flags back into the config

A field's type picks the flag's form: ``bool`` -> a switch (``--no-...`` when it defaults to True),
``bool | None`` -> ``--x/--no-x``, ``int``/``float``/``str`` (optionally ``| None``) -> a value.
Values are only parsed here; the config's own ``validate()`` checks them.
"""

from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, fields

from fastft.core.errors import FastftError
from fastft.core.options import field_default, flag_name, option_of, sub_configs

_SCALARS = (int, float, str)


def _kind(hint) -> tuple[type, bool]:
    """(base type, optional) of a field's type hint such as ``int | None``."""
    args = typing.get_args(hint)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


def _fmt(v) -> str:
    return "none" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def _flags(cls, only=None, skip=()):
    """(field, option, base type, optional, default) of the flag-carrying fields of ``cls``."""
    hints = typing.get_type_hints(cls)
    nested = dict(sub_configs(cls))
    for f in fields(cls):
        opt = option_of(f)
        if opt is None or f.name in nested or (only is not None and f.name not in only) or f.name in skip:
            continue
        base, optional = _kind(hints[f.name])
        yield f, opt, base, optional, field_default(f)


def add_config_flags(parser, cls, *, only=None, skip=(), title: str | None = None) -> None:
    """Add one flag per field of ``cls``; a composed config's stage configs get a group each."""
    target = parser.add_argument_group(title) if title else parser
    for f, opt, base, optional, default in _flags(cls, only, skip):
        if default is MISSING:
            raise TypeError(f"{cls.__name__}.{f.name} has no default: it cannot be a flag")
        if opt.switches:
            for value, (flag, text) in opt.switches.items():
                target.add_argument(flag, dest=_switch_dest(f.name, value), action="store_true", help=text)
            continue
        shown = opt.default_help if opt.default_help is not None else _fmt(default)
        names = [flag_name(f)] + ([opt.short] if opt.short else [])
        kw = dict(dest=f.name, default=default)
        if base is bool and optional:
            kw.update(action=argparse.BooleanOptionalAction, help=f"{opt.help} [{shown}]")
        elif base is bool:
            kw.update(action="store_false" if default else "store_true", help=opt.help)
        elif base in _SCALARS:
            kw.update(type=base, help=f"{opt.help} [{shown}]")
            if opt.choices:
                kw["choices"] = list(opt.choices)
            if opt.metavar:
                kw["metavar"] = opt.metavar
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no flag form for {base!r}")
        target.add_argument(*names, **kw)
    for name, sub in sub_configs(cls):
        if only is None or name in only:
            add_config_flags(parser, sub, skip=skip, title=getattr(sub, "TITLE", name))


def config_kwargs(args, cls, *, only=None, skip=()) -> dict:
    """{field: value} of ``cls``'s flags in the parsed ``args`` (stage configs built recursively)."""
    out = {}
    for f, opt, _base, _optional, _default in _flags(cls, only, skip):
        if opt.switches:
            given = [(v, s[0]) for v, s in opt.switches.items() if getattr(args, _switch_dest(f.name, v), False)]
            if len(given) > 1:
                raise FastftError(f"{' and '.join(flag for _, flag in given)} exclude each other: pick one")
            out[f.name] = given[0][0] if given else opt.absent
        else:
            out[f.name] = getattr(args, f.name)
    for name, sub in sub_configs(cls):
        if only is None or name in only:
            out[name] = sub(**config_kwargs(args, sub, skip=skip))
    return out


def config_from_args(args, cls, **changes):
    """``cls`` built from its flags in ``args``, ``changes`` on top (the API validates it)."""
    return cls(**{**config_kwargs(args, cls), **changes})


def _switch_dest(name: str, value) -> str:
    return f"{name}={value}"
