"""Flags generated from the per-stage configs: every field has a flag with the field's default, the
flags round-trip into the config, and a bad value is one line and exit 2."""

from __future__ import annotations

import argparse
import json
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
        (["--transfer", "wiki"], "unknown transfer (--transfer) source(s) wiki"),
        (["--transfer", "missing_texts.txt"], "transfer (--transfer) file missing_texts.txt does not exist"),
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


# -- each command's flags reach the library call (the call replaced by a recorder) ---------------------------
def _recorder(monkeypatch, module: str, name: str, result, say: str | None = None):
    """``module.name`` replaced by a function that records its calls, prints ``say`` and returns ``result``."""
    import importlib

    calls = []

    def fake(*args, **kwargs):
        calls.append((args, kwargs))
        if say is not None:  # as the work's own progress lines do
            print(say)
        return result

    monkeypatch.setattr(importlib.import_module(module), name, fake)
    return calls


def _defaults(fn) -> dict:
    import inspect

    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def test_train_flags_reach_their_train_config_fields(monkeypatch, capsys):
    """fastft train: no flag is TrainConfig's defaults; each flag sets its own field (--no-progress: progress off);
    with --json what the work prints goes to stderr."""
    from fastft.train.trainer import TrainConfig

    calls = _recorder(monkeypatch, "fastft.train.trainer", "run_training", {"output": "o"}, say="epoch 1")
    assert main(["train", "-o", "o", "--json"]) == 0
    out, err = capsys.readouterr()
    assert calls[-1][0] == (TrainConfig(output="o"),) and json.loads(out) == {"output": "o"} and "epoch 1" in err
    argv = "--model m --data d.jsonl -o o --epochs 2.5 --max-length 33 --batch-size 5 --eval-batch-size 7 "
    argv += "--lr 0.003 --weight-decay 0.2 --warmup-ratio 0.3 --max-grad-norm 0.7 --dropout 0.15 --metric f1_macro "
    argv += "--patience 4 --limit 11 --max-steps 13 --seed 17 --lora --lora-r 6 --text-column t --label-column l "
    argv += "--task token-classification --columns 1,2 --encoding latin-1 --threads 3 --overwrite --no-progress --json"
    assert main(["train", *argv.split()]) == 0
    assert calls[-1][0] == (
        TrainConfig(
            model="m",
            data="d.jsonl",
            output="o",
            epochs=2.5,
            max_length=33,
            batch_size=5,
            eval_batch_size=7,
            lr=0.003,
            weight_decay=0.2,
            warmup_ratio=0.3,
            max_grad_norm=0.7,
            dropout=0.15,
            metric="f1_macro",
            patience=4,
            limit=11,
            max_steps=13,
            seed=17,
            lora=True,
            lora_r=6,
            text_column="t",
            label_column="l",
            task="token-classification",
            columns="1,2",
            encoding="latin-1",
            threads=3,
            overwrite=True,
            progress=False,
        ),
    )


def test_eval_flags_reach_evaluate(monkeypatch, capsys):
    """fastft eval: no flag is evaluate()'s defaults; each flag reaches its own keyword."""
    from fastft.train import evaluate as ev

    defaults = _defaults(ev.evaluate)
    calls = _recorder(monkeypatch, "fastft.train.evaluate", "evaluate", {"n": 1})
    assert main(["eval", "--model", "m", "--json"]) == 0
    (args, kwargs) = calls[-1]
    assert args == ("m", None, defaults["split"]) and kwargs == {
        k: v for k, v in defaults.items() if k not in ("data", "split", "text_column", "label_column")
    } | {"text_column": None, "label_column": None}
    argv = "--model m --data d --split validation --max-length 9 --batch-size 3 --limit 5 --backend torch "
    argv += "--int8 --decode argmax --text-column t --label-column l --columns 0,3 --encoding latin-1 --no-progress"
    assert main(["eval", *argv.split(), "--json"]) == 0
    assert calls[-1] == (
        ("m", "d", "validation"),
        dict(
            batch_size=3,
            max_length=9,
            text_column="t",
            label_column="l",
            encoding="latin-1",
            limit=5,
            backend="torch",
            int8=True,
            columns="0,3",
            decode="argmax",
            progress=False,
        ),
    )


def test_predict_flags_reach_load(monkeypatch, capsys):
    """fastft predict: --backend, --int8/--no-int8 (None when neither), --batch-size and --decode reach fastft.load."""
    import numpy as np

    class Fake:
        labels = ["neg", "pos"]

        def predict_proba(self, texts):
            return np.array([[0.25, 0.75]] * len(texts))

    calls = _recorder(monkeypatch, "fastft.runtime", "load", Fake())
    assert main(["predict", "--model", "m", "--json", "ok"]) == 0
    assert calls[-1] == (("m",), dict(backend="torch", int8=None, batch_size=32, decode="viterbi"))
    assert json.loads(capsys.readouterr().out)[0]["label"] == "pos"
    for flag, int8 in (("--int8", True), ("--no-int8", False)):
        assert main(["predict", "--model", "m", flag, "--batch-size", "2", "--decode", "argmax", "--json", "ok"]) == 0
        assert calls[-1] == (("m",), dict(backend="onnxruntime", int8=int8, batch_size=2, decode="argmax"))


def test_export_flags_reach_export(monkeypatch, capsys):
    """fastft export: no flag is export()'s defaults (min_agreement left to it); each flag reaches its keyword."""
    import fastft.export as fx

    defaults = _defaults(fx.export)
    calls = _recorder(monkeypatch, "fastft.export", "export", {})
    assert main(["export", "--model", "m", "-o", "o", "--json"]) == 0
    args, kwargs = calls[-1]
    assert args == ("m", "o") and "min_agreement" not in kwargs
    assert kwargs == {k: defaults[k] for k in kwargs}
    argv = "--model m -o o --int8 --static --calib-data c --text-column t --label-column l --encoding latin-1 "
    argv += "--calib-size 9 --calib-method entropy --no-per-channel --min-agreement 0.5 --no-fused-attention "
    argv += "--opset 18 --overwrite --no-progress --json"
    assert main(["export", *argv.split()]) == 0
    assert calls[-1] == (
        ("m", "o"),
        dict(
            int8=True,
            static=True,
            calib_data="c",
            text_column="t",
            label_column="l",
            encoding="latin-1",
            calib_size=9,
            calib_method="entropy",
            per_channel=False,
            opset=18,
            overwrite=True,
            fused_attention=False,
            min_agreement=0.5,
            progress=False,
        ),
    )
    # --static alone is INT8: its bar may be set
    assert main(["export", "--model", "m", "-o", "o", "--static", "--min-agreement", "0.5", "--json"]) == 0
    assert calls[-1][1]["min_agreement"] == 0.5 and calls[-1][1]["int8"] is False


def test_serve_flags_reach_serve_config(monkeypatch, tmp_path):
    """fastft serve: no flag is ServeConfig's defaults; each flag sets its field (--max-body-kb in KiB, --json logs)."""
    from fastft.serve.config import ServeConfig

    (tmp_path / "config.json").write_text("{}")
    calls = _recorder(monkeypatch, "fastft.serve.server", "run", 0)
    assert main(["serve", str(tmp_path)]) == 0
    assert calls[-1] == ((str(tmp_path), ServeConfig()), {})
    argv = "--name n --host 0.0.0.0 --port 9 --max-batch-tokens 100 --max-batch-size 3 --max-wait-ms 2.5 "
    argv += "--max-queue 7 --max-texts 5 --max-body-kb 3 --header-timeout 4 --body-timeout 6 --threads 1 "
    argv += "--workers 1 --precision int8 --no-batching --batch-int8 --json"
    assert main(["serve", str(tmp_path), *argv.split()]) == 0
    assert calls[-1][0][1] == ServeConfig(
        name="n",
        host="0.0.0.0",
        port=9,
        max_batch_tokens=100,
        max_batch_size=3,
        max_wait_ms=2.5,
        max_queue=7,
        max_texts=5,
        max_body_bytes=3 * 1024,
        header_timeout_s=4.0,
        body_timeout_s=6.0,
        threads=1,
        workers=1,
        precision="int8",
        batching=False,
        batch_int8=True,
        json_logs=True,
    )


def test_bench_flags_reach_bench_config(monkeypatch, capsys, tmp_path):
    """fastft bench: no flag is BenchConfig's defaults (every backend); each flag sets its field."""
    from fastft.bench.harness import BenchConfig

    calls = _recorder(monkeypatch, "fastft.bench.harness", "run_bench", {})
    monkeypatch.setattr("fastft.bench.harness.format_table", lambda payload: "table")
    assert main(["bench"]) == 0
    assert calls[-1] == ((BenchConfig(),), {})
    argv = f"--model {tmp_path} --seq 8,16 --batch 2 --threads 1 --backends hf-eager,fastft-int8 --repeats 3 "
    argv += f"--warmup 0 --gap-ms 1.5 --no-memory --workdir {tmp_path}/w --served {tmp_path} --agreement-texts 0 "
    argv += "--no-progress"
    assert main(["bench", *argv.split()]) == 0
    assert calls[-1] == (
        (
            BenchConfig(
                model=str(tmp_path),
                seqs=[8, 16],
                batch=2,
                threads=1,
                backends=["hf-eager", "fastft-int8"],
                repeats=3,
                warmup=0,
                gap_ms=1.5,
                memory=False,
                workdir=f"{tmp_path}/w",
                served=str(tmp_path),
                progress=False,
                agreement=0,
            ),
        ),
        {},
    )
    assert capsys.readouterr().out.strip().endswith("table")
