"""Flags generated from the per-stage configs: every field has a flag with the field's default, the
flags round-trip into the config, and a bad value is one line and exit 2."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import MISSING, fields

import pytest

from fastft.cli import build_parser, main
from fastft.cli.flags import config_from_args
from fastft.compress.config import CompressConfig, DistillConfig, PruneConfig, QuantizeConfig
from fastft.core.options import field_default, flag_name, option_of, sub_configs


def _sub(cmd: str) -> argparse.ArgumentParser:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[cmd]


def _leaf_fields(cls):
    nested = dict(sub_configs(cls))
    for f in fields(cls):
        if f.name in nested:
            yield from _leaf_fields(nested[f.name])
        else:
            yield cls, f


def test_every_config_field_has_a_flag_with_its_default():
    by_flag = {s: a for a in _sub("compress")._actions for s in a.option_strings}
    seen = set()
    for cls, f in _leaf_fields(CompressConfig):
        opt = option_of(f)
        assert opt is not None and opt.help, f"{cls.__name__}.{f.name} has no option(help=...)"
        default = field_default(f)
        assert default is not MISSING
        if opt.switches:  # --int8 / --fp16: one switch per value, neither given = the stage is off
            assert set(opt.switches) == {"int8", "fp16"} and default in opt.switches
            for flag, _help in opt.switches.values():
                assert by_flag[flag].default is False
            continue
        action = by_flag.get(flag_name(f))
        assert action is not None, f"{cls.__name__}.{f.name}: no {flag_name(f)} flag"
        assert action.dest == f.name and action.dest not in seen, f"{flag_name(f)}: dest {action.dest}"
        seen.add(action.dest)
        assert action.default == default, f"{flag_name(f)} defaults to {action.default!r}, the field to {default!r}"


def test_flag_defaults_build_the_default_config():
    args = _sub("compress").parse_args([])
    # the command line quantizes only with --int8/--fp16/--static; everything else is the API default
    assert config_from_args(args, CompressConfig) == CompressConfig(quantize=None)


def test_help_lists_every_config_flag_in_stage_groups(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compress", "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    flags = [
        s for _, f in _leaf_fields(CompressConfig) for s in ([flag_name(f)] if not option_of(f).switches else [])
    ] + ["--int8", "--fp16", "--model", "-o"]
    missing = [x for x in flags if x not in out]
    assert not missing, f"fastft compress --help does not list {missing}"
    for title in ("distillation:", "pruning:", "quantization:"):
        assert title in out
    assert "--calib-method {minmax,entropy,percentile}" in out and "[--depth of the" in out


def test_flags_round_trip_into_the_stage_configs():
    from fastft.cli.compress import config_from_args as compress_config

    argv = "--layers 3 --alpha 0.3 --prune-heads 0.25 --prune-ffn 0 --static --calib-method entropy "
    argv += "--no-per-channel --no-distill --no-bench -o out --limit 7"
    cfg = compress_config(_sub("compress").parse_args(argv.split()))
    assert cfg.distill == DistillConfig(enabled=False, layers=3, alpha=0.3)
    assert cfg.prune == PruneConfig(prune_heads=0.25, prune_ffn=0.0)
    # --static implies --int8
    assert cfg.quantize == QuantizeConfig(mode="int8", static=True, calib_method="entropy", per_channel=False)
    assert (cfg.output, cfg.limit, cfg.bench, cfg.progress) == ("out", 7, False, True)
    fp16 = compress_config(_sub("compress").parse_args(["--fp16"]))
    assert fp16.quantize.mode == "fp16"


def test_flat_keywords_and_shortcuts_reach_the_stage_configs():
    flat = CompressConfig(layers=3, prune_ffn=0.25, static=True, seed=1)
    nested = CompressConfig(
        distill=DistillConfig(layers=3), prune=PruneConfig(prune_ffn=0.25), quantize=QuantizeConfig(static=True), seed=1
    )
    assert flat == nested
    assert CompressConfig(quantize=None).quantize.mode is None and not CompressConfig(distill=False).distill.enabled
    kept = flat.updated(distill=False, quantize="fp16", lr=1e-3)  # a shortcut keeps the stage's other settings
    assert kept.distill == DistillConfig(enabled=False, layers=3, lr=1e-3) and kept.quantize.static
    assert kept.to_dict()["distill"]["layers"] == 3 and "progress" not in kept.to_dict()
    with pytest.raises(TypeError, match="no_such"):
        CompressConfig(no_such=1)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--prune-ffn", "1.5"], "prune_ffn (--prune-ffn) must be in [0, 1)"),
        (["--alpha", "2"], "alpha (--alpha) must be in [0, 1]"),
        (["--depth", "0"], "depth (--depth) must be in (0, 1]"),
        (["--depth", "1.5"], "depth (--depth) must be in (0, 1]"),
        (["--ema", "1"], "ema (--ema) must be in [0, 1)"),
        (["--dropout", "-0.1"], "dropout (--dropout) must be in [0, 1)"),
        (["--warmup-ratio", "nan"], "warmup_ratio (--warmup-ratio) must be a finite number"),
        (["--calib-size", "0"], "calib_size (--calib-size) must be at least 1"),
        (["--accuracy-budget", "-1"], "accuracy_budget (--accuracy-budget) must be >= 0"),
        (["--lr", "abc"], "argument --lr: invalid float value: 'abc'"),
        (["--calib-method", "mse"], "argument --calib-method: invalid choice: 'mse'"),
        (["--int8", "--fp16"], "--int8 and --fp16 exclude each other"),
        (["--no-distill", "--prune-ffn", "0"], "every stage is switched off"),
        (["--transfer", "wiki"], "unknown --transfer source(s) wiki"),
        (["--transfer", "missing_texts.txt"], "--transfer file missing_texts.txt does not exist"),
        (["--transfer", "general", "--transfer-size", "0"], "transfer_size (--transfer-size) must be at least 1"),
    ],
)
def test_bad_values_are_one_line_and_exit_2(argv, message, tmp_path, capsys):
    out = tmp_path / "o"
    try:
        rc = main(["compress", *argv, "--output", str(out)])
    except SystemExit as exc:  # argparse's own checks (Parser.error)
        rc = exc.code
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and err.startswith("fastft: error: ") and message in err, err
    assert not out.exists()


def test_bad_value_from_the_real_entry_point(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fastft", "compress", "--prune-heads", "-0.5", "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "fastft: error: prune_heads (--prune-heads) must be in [0, 1) (got -0.5)"
    ]


def test_export_int8_flags_come_from_quantize_config():
    from fastft.export.quantize import CALIB_METHODS

    by_dest = {a.dest: a for a in _sub("export")._actions}
    for f in fields(QuantizeConfig):
        if f.name in ("static", "calib_size", "calib_method", "per_channel"):
            assert by_dest[f.name].default == field_default(f) and flag_name(f) in by_dest[f.name].option_strings
    assert "accuracy_budget" not in by_dest and "mode=fp16" not in by_dest
    assert tuple(CALIB_METHODS) == tuple(
        option_of(next(f for f in fields(QuantizeConfig) if f.name == "calib_method")).choices
    )
    args = _sub("export").parse_args(["--model", "m", "-o", "o", "--per-channel", "--calib-size", "8"])
    assert (args.per_channel, args.calib_size, args.static) is not None and args.per_channel and args.calib_size == 8
