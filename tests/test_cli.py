"""The command line: help, JSON, and one clear line (exit 2) for every user mistake."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fastft.cli import main


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_help_lists_commands(capsys):
    rc, out, _ = run(capsys)
    assert rc == 0
    for cmd in ("train", "eval", "predict", "env"):
        assert cmd in out


def test_env_json(capsys):
    rc, out, _ = run(capsys, "env", "--json")
    info = json.loads(out)
    assert rc == 0
    assert {"fastft", "cpu", "torch", "triton", "cpp_extension", "packages"} <= set(info)
    assert "built" in info["cpp_extension"]
    assert info["cpp_extension"]["built"] or info["cpp_extension"]["reason"]


def test_env_table(capsys):
    rc, out, _ = run(capsys, "env")
    assert rc == 0 and "C++ extension" in out and "torch threads" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--data", "no-such-data", "--output", "{tmp}/o"], "unknown dataset 'no-such-data'"),
        (["train", "--model", "{tmp}/missing", "--output", "{tmp}/o"], "does not exist"),
        (["eval", "--model", "{tmp}"], "no config.json"),
        (["predict", "--model", "{tmp}"], "no texts given"),
        (["train", "--epochs", "0", "--output", "{tmp}/o"], "epochs (--epochs) must be in (0, 10000]"),
        (["train", "--epochs", "1e308", "--output", "{tmp}/o"], "epochs (--epochs) must be in (0, 10000]"),
        (["train", "--seed", "4294967296", "--output", "{tmp}/o"], "seed (--seed) must be at most 4294967295"),
        (["compress", "--seed", "4294967296", "--output", "{tmp}/o"], "seed (--seed) must be at most 4294967295"),
    ],
)
def test_user_mistakes_are_one_line(argv, message, tmp_path, capsys):
    rc, out, err = run(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert rc == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith("fastft: error: ") and message in lines[-1]
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_existing_output_refused(tmp_path, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x").write_text("keep")
    rc, _, err = run(capsys, "train", "--output", str(tmp_path / "o"))
    assert rc == 2 and "--overwrite" in err
    assert (tmp_path / "o" / "x").read_text() == "keep"


def test_train_eval_predict_json(tiny_model_dir, tiny_data_file, tmp_path, capsys):
    out_dir = tmp_path / "m"
    rc, out, _ = run(
        capsys,
        "train",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(tiny_data_file),
        "--output",
        str(out_dir),
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--eval-batch-size",
        "4",
        "--max-length",
        "16",
        "--no-progress",
        "--json",
    )
    assert rc == 0
    meta = json.loads(out)
    assert meta["training"]["steps"] == 2 and meta["labels"] == ["negative", "positive"]
    assert meta["training"]["eval_batch_size"] == 4
    rc, out, _ = run(capsys, "eval", "--model", str(out_dir), "--split", "validation", "--json")
    res = json.loads(out)
    assert rc == 0 and res["split"] == "validation" and res["n"] == 6 and 0 <= res["accuracy"] <= 1
    rc, out, _ = run(capsys, "predict", "--model", str(out_dir), "--backend", "torch", "--json", "good", "bad")
    rows = json.loads(out)
    assert rc == 0 and [r["text"] for r in rows] == ["good", "bad"]
    assert all(r["label"] in ("negative", "positive") and 0.5 <= r["score"] <= 1 for r in rows)
    rc, out, _ = run(capsys, "predict", "--model", str(out_dir), "--backend", "torch", "a fine film")
    assert rc == 0 and out.split()[0] in ("negative", "positive")
    # predict --int8 / --no-int8 choose the ONNX file, --batch-size the texts per call, as fastft.load's options
    import fastft

    fastft.export(out_dir, tmp_path / "x", int8=True, validate=False, progress=False)
    for flag, int8 in (("--int8", True), ("--no-int8", False)):
        rc, out, _ = run(capsys, "predict", "--model", str(tmp_path / "x"), flag, "--batch-size", "1", "--json", "ok")
        want = fastft.load(tmp_path / "x", int8=int8).predict_proba(["ok"])[0].max()
        assert rc == 0 and abs(json.loads(out)[0]["score"] - want) < 1e-6


def test_no_traceback_from_the_real_entry_point(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fastft", "eval", "--model", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"fastft: error: model directory {tmp_path / 'nope'} does not exist"]


# -- every command: --help lists its options, --json gives JSON -------------------------------------
COMMANDS = ["train", "eval", "predict", "export", "compress", "bench", "serve", "env"]


def _subparsers() -> dict:
    import argparse

    from fastft.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_the_command_list_is_complete():
    assert sorted(_subparsers()) == sorted(COMMANDS), "a command was added or removed: update COMMANDS and its tests"


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_exits_0_and_lists_every_option(cmd, capsys):
    sub = _subparsers()[cmd]
    options = [s for a in sub._actions for s in a.option_strings if s.startswith("--")]
    assert "--json" in options and len(options) >= 2
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    missing = [o for o in options if o not in out]
    assert not missing, f"fastft {cmd} --help does not mention {missing}"


def test_predict_json_on_the_tiny_model(tiny_model_dir, capsys):
    rc, out, _ = run(capsys, "predict", "--model", str(tiny_model_dir), "--json", "a fine film", "a dull mess")
    rows = json.loads(out)
    assert rc == 0 and [r["text"] for r in rows] == ["a fine film", "a dull mess"]
    assert all(r["label"] in ("negative", "positive") and 0.5 <= r["score"] <= 1 for r in rows)


def test_predict_names_the_truncated_texts(tiny_model_dir, capsys, monkeypatch):
    """A text cut at the max length: one warning naming it (by its stdin line when read from
    stdin), not the Python API's ``Predictor.truncated``; --json marks each row."""
    import io
    import warnings

    from fastft.runtime import TruncationWarning

    long = "a fine film " * 400
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc, out, err = run(capsys, "predict", "--model", str(tiny_model_dir), "--json", "short", long)
    rows = json.loads(out)
    assert rc == 0 and [r["truncated"] for r in rows] == [False, True], err
    said = [str(w.message) for w in caught if "max length" in str(w.message)]
    assert len(said) == 1 and "1 of 2 texts" in said[0] and said[0].endswith("text #1"), said
    assert not [w for w in caught if issubclass(w.category, TruncationWarning)]
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(f"ok\n\n{long}\n".encode())))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc, out, err = run(capsys, "predict", "--model", str(tiny_model_dir), "-")
    assert rc == 0 and [str(w.message).split(": ")[-1] for w in caught] == ["stdin line 3"], err
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc, out, err = run(capsys, "predict", "--model", str(tiny_model_dir), "--json", "short")
    assert rc == 0 and json.loads(out)[0]["truncated"] is False and not caught


def test_eval_json_on_the_tiny_model(tiny_model_dir, capsys):
    rc, out, _ = run(capsys, "eval", "--model", str(tiny_model_dir), "--split", "test", "--limit", "8", "--json")
    res = json.loads(out)
    assert rc == 0 and res["split"] == "test" and 0 <= res["accuracy"] <= 1


def test_bench_json_on_stdout(tiny_model_dir, tmp_path, capsys):
    argv = ["bench", "--model", str(tiny_model_dir), "--seq", "8", "--repeats", "3", "--warmup", "0"]
    argv += ["--threads", "1", "--backends", "hf-eager", "--no-memory", "--no-progress", "--workdir", str(tmp_path)]
    rc, out, err = run(capsys, *argv, "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert d["settings"]["seqs"] == [8] and d["results"]


def test_serve_json_logs_one_object_per_line(tiny_model_dir, tmp_path):
    """``fastft serve --json``: every log line on stderr is a JSON object; SIGTERM drains and exits 0."""
    import signal
    import socket
    import time

    import httpx

    from fastft.export import export

    model = tmp_path / "onnx"
    export(tiny_model_dir, model, int8=False, overwrite=True, progress=False, validate=False, fused_attention=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "fastft", "serve", str(model), "--port", str(port), "--threads", "1", "--json"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in err.strip().splitlines()]
    assert any("serving" in json.dumps(r) for r in records) and any("stopped" in json.dumps(r) for r in records)


def test_verbose_keeps_the_exit_code_and_unknown_options_name_their_command(capsys, tmp_path):
    """-v shows the traceback and still exits 2 (it exited 1); an unknown option after a command
    points to that command's --help; -v is taken after the command too."""
    from fastft.cli import main

    assert main(["-v", "train", "--lr", "0", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().endswith("fastft: error: lr (--lr) must be > 0 (got 0)")
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--model", "m", "--fp8", "hi"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --fp8 (see 'fastft predict --help')" in capsys.readouterr().err
    assert main(["env", "--json", "-v"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["--json", "env"])
    assert "--json (a command's options go after it)" in capsys.readouterr().err
