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


@pytest.mark.parametrize("cmd", ["train", "eval", "predict", "env"])
def test_every_command_has_help_and_json(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0
    assert "--json" in capsys.readouterr().out


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
        (["train", "--epochs", "0", "--output", "{tmp}/o"], "--epochs must be positive"),
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
        "--max-length",
        "16",
        "--no-progress",
        "--json",
    )
    assert rc == 0
    meta = json.loads(out)
    assert meta["training"]["steps"] == 2 and meta["labels"] == ["negative", "positive"]
    rc, out, _ = run(capsys, "eval", "--model", str(out_dir), "--split", "validation", "--json")
    res = json.loads(out)
    assert rc == 0 and res["split"] == "validation" and res["n"] == 6 and 0 <= res["accuracy"] <= 1
    rc, out, _ = run(capsys, "predict", "--model", str(out_dir), "--backend", "torch", "--json", "good", "bad")
    rows = json.loads(out)
    assert rc == 0 and [r["text"] for r in rows] == ["good", "bad"]
    assert all(r["label"] in ("negative", "positive") and 0.5 <= r["score"] <= 1 for r in rows)
    rc, out, _ = run(capsys, "predict", "--model", str(out_dir), "--backend", "torch", "a fine film")
    assert rc == 0 and out.split()[0] in ("negative", "positive")


def test_no_traceback_from_the_real_entry_point(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fastft", "eval", "--model", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"fastft: error: model directory {tmp_path / 'nope'} does not exist"]
