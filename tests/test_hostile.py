"""Hostile input, as a careful user and as an attacker would give it, through the CLI and the API.

Every case asserts the same contract: exit 2 (or a FastftError for the API), exactly one line
``fastft: error: ...`` on stderr, no traceback, nothing written or deleted anywhere the case can
see (the model directories it reads, its output's parent, the current directory, $HOME and
the temporary directory). Most cases run in-process (``fastft.cli.main``); the ones that need a
real process (a prompt on stdin, raw bytes in argv) run ``python -m fastft``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import make_rows, save_tiny_model, write_jsonl

from fastft.cli import main
from fastft.core.errors import FastftError
from fastft.core.stale import namespace

EVIL_MARKER = "evil-code-ran"


# -- the world the cases run in -------------------------------------------------------------
def _edit_json(path: Path, **changes) -> None:
    obj = json.loads(path.read_text())
    obj.update(changes)
    path.write_text(json.dumps(obj))


def make_evil(path: Path, src: Path, marker: Path, where: str = "config.json") -> Path:
    """A model directory whose ``where`` asks transformers to import evil.py, which writes ``marker``."""
    shutil.copytree(src, path)
    _edit_json(path / "config.json", model_type="evilbert", architectures=["EvilModel"])
    auto = {"AutoConfig": "evil.EvilConfig", "AutoModelForSequenceClassification": "evil.EvilModel"}
    if where == "tokenizer_config.json":
        auto = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
        _edit_json(path / "config.json", model_type="bert")
    _edit_json(path / where, auto_map=auto)
    (path / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('pwned')\n"
        "from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast\n"
        "class EvilConfig(BertConfig):\n    model_type = 'evilbert'\n"
        "class EvilModel(BertForSequenceClassification):\n    config_class = EvilConfig\n"
        "EvilTokenizer = BertTokenizerFast\n"
    )
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir) -> Path:
    """Read-only model directories and data files, good and hostile."""
    w = tmp_path_factory.mktemp("world")
    data = write_jsonl(w / "data.jsonl", make_rows(40))
    tiny = save_tiny_model(w / "tiny", data)
    marker = w / EVIL_MARKER
    make_evil(w / "evil", tiny, marker)
    make_evil(w / "evil-tok", tiny, marker, where="tokenizer_config.json")
    # no tokenizer files at all / a 5-entry stub vocabulary
    shutil.copytree(tiny, w / "notok")
    for f in (w / "notok").iterdir():  # every tokenizer file (transformers 4.x also writes vocab.txt)
        if f.name.startswith(("tokenizer", "vocab", "special_tokens")) or f.name.endswith(".model"):
            f.unlink()
    shutil.copytree(w / "notok", w / "stubtok")
    (w / "stubtok" / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    # config.json names 3 labels, the weights hold a 2-label head
    shutil.copytree(tiny, w / "mismatch")
    _edit_json(
        w / "mismatch" / "config.json", id2label={"0": "a", "1": "b", "2": "c"}, label2id={"a": 0, "b": 1, "c": 2}
    )
    _edit_json(w / "mismatch" / "fastft.json", labels=["a", "b", "c"])
    # pickled weights that run code when unpickled
    shutil.copytree(tiny, w / "pickled")
    (w / "pickled" / "model.safetensors").unlink()
    import torch

    torch.save({"x": _Evil(str(marker))}, w / "pickled" / "pytorch_model.bin")
    # an ONNX export, and a copy cut in half
    from fastft.export import export

    export(tiny, w / "onnx", int8=True, fused_attention=False, validate=False, progress=False)
    shutil.copytree(w / "onnx", w / "onnx-fp32")
    (w / "onnx-fp32" / "model_int8.onnx").unlink()
    shutil.copytree(w / "onnx", w / "half")
    f = w / "half" / "model.onnx"
    with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size // 2)
    # a project holding its input model and the user's thesis
    (w / "proj").mkdir()
    shutil.copytree(tiny, w / "proj" / "tiny")
    (w / "proj" / "thesis.txt").write_text("years of work")
    shutil.copy(data, w / "proj" / "data.jsonl")
    (w / "plain-dir").mkdir()
    (w / "plain-dir" / "notes.txt").write_text("not fastft's")
    (w / "a-file").write_text("a file")
    (w / "json-dir").mkdir()
    (w / "json-dir" / "keep.txt").write_text("keep")
    (w / "plot.png").mkdir()
    (w / "home").mkdir()
    (w / "home" / ".bashrc").write_text("# mine")
    # hostile data files
    (w / "dup.csv").write_text(
        "text,label,text,label\n" + "".join(f"{r['text']},{r['label']},{r['text']},x\n" for r in make_rows(20))
    )
    write_jsonl(w / "list-label.jsonl", [{"text": r["text"], "label": [r["label"]]} for r in make_rows(20)])
    write_jsonl(w / "dict-label.jsonl", [{"text": r["text"], "label": {"y": r["label"]}} for r in make_rows(20)])
    (w / "dup-key.jsonl").write_text(
        "".join(f'{{"text": "{r["text"]}", "label": "{r["label"]}", "label": "x"}}\n' for r in make_rows(20))
    )
    (w / "surrogate.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in make_rows(10)) + '{"text": "bad \\ud800 text", "label": "positive"}\n'
    )
    (w / "latin1.csv").write_bytes(b"text,label\ncaf\xe9,positive\nok,negative\n")
    lines = [f"film number {i},{'positive' if i % 2 else 'negative'}\n" for i in range(40)]
    lines[7] = "great film, loved it,positive\n"  # an unquoted comma: the row has 3 fields
    (w / "comma.csv").write_text("text,label\n" + "".join(lines))
    write_jsonl(w / "tiny8.jsonl", make_rows(8))  # too few rows for validation and test
    write_jsonl(w / "three.jsonl", [{**r, "label": ["a", "b", "c"][i % 3]} for i, r in enumerate(make_rows(60))])
    write_jsonl(w / "tokens.jsonl", [{"tokens": ["Paris", "is", "big"], "tags": ["B-LOC", "O", "O"]}] * 30)
    (w / "tokens.conll").write_text("Paris B-LOC\nis O\nbig O\n\n" * 30)
    write_jsonl(w / "words.jsonl", [{"words": ["Paris", "is", "big"], "ner": ["B-LOC", "O", "O"]}] * 30)
    (w / "empty-texts.csv").write_text("text,label\n" + ",positive\n , negative\n" * 10)
    # hand-edited config.json and fastft.json values of the wrong type
    shutil.copytree(tiny, w / "cfg-type")
    _edit_json(w / "cfg-type" / "config.json", max_position_embeddings="lots")
    for name, changes in {
        "meta-maxlen": {"max_length": "64"},
        "meta-labels": {"labels": [[1], [2]]},
        "meta-escape": {"onnx": {"default": "../onnx/model.onnx"}},
    }.items():
        shutil.copytree(w / "onnx-fp32", w / name)
        _edit_json(w / name / "fastft.json", **changes)
    shutil.copytree(tiny, w / "meta-labels3")  # fastft.json names 3 labels, config.json and the weights 2
    _edit_json(w / "meta-labels3" / "fastft.json", labels=["a", "b", "c"])
    # a head-pruned directory (what compress writes) whose weights were cut short
    shutil.copytree(tiny, w / "pruned-cut")
    _edit_json(w / "pruned-cut" / "config.json", pruned_heads={"0": [0]})
    with open(w / "pruned-cut" / "model.safetensors", "r+b") as fh:
        fh.truncate(1000)
    yield w
    assert not marker.exists(), "code from a model directory ran"


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def snapshot(*roots: Path) -> dict:
    """Every path under ``roots`` with its size, mtime and mode."""
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                st = os.lstat(p)
                out[p] = (st.st_size, st.st_mtime_ns, st.st_mode)
    return out


@pytest.fixture
def sandbox(world, tmp_path, monkeypatch):
    """An empty cwd, $HOME and temp dir per case; the world and the case's dirs are snapshotted."""
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(world / "home"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    before = snapshot(world, tmp_path)
    yield {"w": str(world), "out": str(tmp_path / "out"), "home": str(world / "home"), "tmp": str(tmp_path)}
    after = snapshot(world, tmp_path)
    added, removed = sorted(set(after) - set(before)), sorted(set(before) - set(after))
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p] and not os.path.isdir(p))
    assert not (added or removed or changed), (
        f"touched: added {added[:5]}, removed {removed[:5]}, changed {changed[:5]}"
    )


def run_cli(capfd, argv: list[str]) -> tuple[int, str, str]:
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code
    out, err = capfd.readouterr()
    return rc, out, err


def assert_one_line(rc, out: str, err: str, message: str) -> None:
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert "Traceback" not in err + out
    assert len(lines) == 1, err
    assert lines[0].startswith("fastft: error: "), lines[0]
    assert message in lines[0], lines[0]


# -- the CLI cases --------------------------------------------------------------------------
# (id, argv with {w} the world, {out} a fresh output path, {home} $HOME; the message expected)
CLI_CASES = [
    # 1. code from a model directory
    ("evil-predict", "predict --model {w}/evil --backend torch hi", "asks to run its own code"),
    ("evil-predict-ort", "predict --model {w}/evil hi", "asks to run its own code"),
    ("evil-export", "export --model {w}/evil --output {out}", "asks to run its own code"),
    ("evil-train", "train --model {w}/evil --data {w}/data.jsonl --output {out} --max-steps 1", "its own code"),
    ("evil-eval", "eval --model {w}/evil", "asks to run its own code"),
    ("evil-compress", "compress --model {w}/evil --output {out}", "asks to run its own code"),
    ("evil-bench", "bench --model {w}/evil --no-memory", "asks to run its own code"),
    ("evil-tokenizer", "predict --model {w}/evil-tok --backend torch hi", "tokenizer_config.json auto_map"),
    # 2. --overwrite never deletes what is not fastft's
    (
        "train-into-input-parent",
        "train --model {w}/proj/tiny --data {w}/data.jsonl --output {w}/proj --overwrite",
        "holds the input",
    ),
    ("export-into-input-parent", "export --model {w}/proj/tiny --output {w}/proj --overwrite", "holds the input"),
    ("export-over-input", "export --model {w}/tiny --output {w}/tiny --overwrite", "is the input"),
    (
        "train-over-data-dir",
        "train --model {w}/tiny --data {w}/proj/data.jsonl --output {w}/proj --overwrite",
        "holds the input",
    ),
    ("compress-into-input-parent", "compress --model {w}/proj/tiny --output {w}/proj --overwrite", "holds the input"),
    ("export-over-cwd", "export --model {w}/tiny --output . --overwrite", "the current directory"),
    ("export-over-home", "export --model {w}/tiny --output {home} --overwrite", "home directory"),
    ("overwrite-foreign-dir", "export --model {w}/tiny --output {w}/plain-dir --overwrite", "has no fastft.json"),
    ("no-overwrite", "export --model {w}/tiny --output {w}/onnx", "already exists (pass overwrite=True, --overwrite"),
    ("output-is-file", "train --model {w}/tiny --data {w}/data.jsonl --output {w}/a-file", "is not a directory"),
    # 4. no usable tokenizer
    ("no-tokenizer-predict", "predict --model {w}/notok --backend torch hi", "has no tokenizer files"),
    ("no-tokenizer-train", "train --model {w}/notok --data {w}/data.jsonl --output {out}", "no tokenizer files"),
    ("stub-tokenizer-eval", "eval --model {w}/stubtok", "has only 5 entries"),
    # 6, 7. checked before the work
    (
        "compress-bench-runs-0",
        "compress --model {w}/tiny --bench-runs 0 --output {out}",
        "bench_runs (--bench-runs) must be at least 1",
    ),
    ("bench-json-dir", "bench --model {w}/tiny --json {w}/json-dir", "is a directory"),
    ("bench-workdir-file", "bench --model {w}/tiny --workdir {w}/a-file", "is not a directory"),
    ("bench-plot-dir", "bench --model {w}/tiny --plot {w}/plot.png", "is a directory"),
    # 9. floats: finite and in range
    ("train-epochs-nan", "train --model {w}/tiny --data {w}/data.jsonl --epochs nan --output {out}", "finite"),
    ("train-epochs-inf", "train --model {w}/tiny --data {w}/data.jsonl --epochs inf --output {out}", "finite"),
    (
        "train-lr-nan",
        "train --model {w}/tiny --data {w}/data.jsonl --lr nan --output {out}",
        "lr (--lr) must be a finite",
    ),
    ("train-dropout-nan", "train --model {w}/tiny --data {w}/data.jsonl --dropout nan --output {out}", "--dropout"),
    (
        "train-grad-norm-0",
        "train --model {w}/tiny --data {w}/data.jsonl --max-grad-norm 0 --output {out}",
        "max_grad_norm (--max-grad-norm) must be > 0",
    ),
    ("compress-temperature-nan", "compress --model {w}/tiny --temperature nan --output {out}", "--temperature"),
    (
        "compress-epochs-inf",
        "compress --model {w}/tiny --epochs inf --output {out}",
        "epochs (--epochs) must be a finite",
    ),
    ("compress-prune-nan", "compress --model {w}/tiny --prune-ffn nan --output {out}", "--prune-ffn"),
    ("compress-budget-inf", "compress --model {w}/tiny --accuracy-budget inf --output {out}", "--accuracy-budget"),
    (
        "compress-augment-labels-no-copies",
        "compress --model {w}/tiny --augment 0 --augment-labels teacher --output {out}",
        "augment_labels (--augment-labels) 'teacher' sets the label term of the augment (--augment) copies, and this "
        "run makes none",
    ),
    # 10. text that is not UTF-8 (argv bytes arrive as surrogate escapes)
    (
        "predict-latin1-arg",
        "predict --model {w}/tiny --backend torch ok caf\udce9_\udcff",
        "text #1 is not valid UTF-8",
    ),
    ("predict-latin1-arg-ort", "predict --model {w}/onnx caf\udce9", "byte 0xe9"),
    ("train-surrogate-row", "train --model {w}/tiny --data {w}/surrogate.jsonl --output {out}", "row 11"),
    ("train-latin1-file", "train --model {w}/tiny --data {w}/latin1.csv --output {out}", "--encoding latin-1"),
    # 11. data files
    ("duplicate-columns", "train --model {w}/tiny --data {w}/dup.csv --output {out}", "appears 2 times"),
    ("list-labels", "train --model {w}/tiny --data {w}/list-label.jsonl --output {out}", "a JSON list"),
    ("dict-labels", "eval --model {w}/tiny --data {w}/dict-label.jsonl", "a JSON object"),
    ("duplicate-json-key", "train --model {w}/tiny --data {w}/dup-key.jsonl --output {out}", "key 'label' twice"),
    # 12. eval / bench options
    ("eval-limit-negative", "eval --model {w}/tiny --limit -5", "limit (--limit) must be at least 1"),
    ("eval-limit-0", "eval --model {w}/tiny --limit 0", "limit (--limit) must be at least 1"),
    ("eval-batch-0", "eval --model {w}/tiny --batch-size 0", "batch_size (--batch-size) must be at least 1"),
    ("bench-empty-backends", "bench --backends ,", "expected comma-separated names"),
    ("bench-hole-in-backends", "bench --backends hf-eager,,ort-plain", "expected comma-separated names"),
    # 14. messages that name the cause
    ("head-label-mismatch", "predict --model {w}/mismatch --backend torch hi", "has 2 labels, but config.json names 3"),
    ("pickled-weights", "eval --model {w}/pickled", "never unpickles"),
    ("opset-99", "export --model {w}/tiny --output {out} --opset 99 --json", "opset (--opset) 99 cannot be exported"),
    # 15. eval scores the served ONNX model
    ("eval-corrupt-onnx", "eval --model {w}/half", "is not a loadable ONNX model"),
    ("eval-missing-int8", "eval --model {w}/onnx-fp32 --int8", "has no model_int8.onnx"),
    ("eval-int8-with-torch", "eval --model {w}/onnx --backend torch --int8", "--backend onnxruntime"),
    ("predict-corrupt-onnx", "predict --model {w}/half hi", "is not a loadable ONNX model"),
    # 16. hand-edited model directories
    ("config-wrong-type", "eval --model {w}/cfg-type", "max_position_embeddings"),
    (
        "config-wrong-type-tok",
        "predict --model {w}/cfg-type --backend torch hi",
        "cfg-type: config.json max_position_embeddings must be a positive integer",  # not "cannot load the tokenizer"
    ),
    ("meta-max-length-str", "predict --model {w}/meta-maxlen hi", "fastft.json: max_length must be an integer"),
    ("meta-labels-nested", "predict --model {w}/meta-labels hi", "fastft.json: labels must be a list of label"),
    ("meta-onnx-outside", "predict --model {w}/meta-escape hi", "onnx.default must be the name of an ONNX file"),
    ("pruned-weights-cut", "predict --model {w}/pruned-cut --backend torch hi", "cannot load weights (Safetensor"),
    ("compress-pruned-teacher", "compress --model {w}/pruned-cut --output {out}", "is head-pruned"),
    ("export-label-mismatch", "export --model {w}/meta-labels3 --output {out}", "names 3 labels (a, b, c) but the"),
    ("compress-threads-huge", "compress --model {w}/tiny --threads 100000 --output {out}", "at most 1024"),
    ("train-threads-huge", "train --model {w}/tiny --data {w}/data.jsonl --threads 100000 --output {out}", "1024"),
    ("train-from-pruned", "train --model {w}/pruned-cut --data {w}/data.jsonl --output {out}", "is head-pruned"),
    ("train-data-dir", "train --model {w}/tiny --data {w}/plain-dir --output {out}", "is a directory, not a data"),
    ("compress-data-missing", "compress --model {w}/tiny --data {w}/none.csv --output {out}", "does not exist"),
    (
        "compress-layers-99",
        "compress --model {w}/tiny --layers 99 --output {out}",
        "layers (--layers) must be between 1",
    ),
    ("predict-dash-and-text", "predict --model {w}/tiny --backend torch - hi", "takes no other texts"),
    ("train-all-empty-texts", "train --model {w}/tiny --data {w}/empty-texts.csv --output {out}", "every text of"),
    ("bench-batch-huge", "bench --model {w}/tiny --batch 100000000 --no-memory", "GiB of activations"),
    ("bench-seq-twice", "bench --model {w}/tiny --seq 16,16", "listed twice"),
    ("bench-gap-huge", "bench --model {w}/tiny --gap-ms 1e12", "--gap-ms must be in [0, 10000]"),
    ("data-dev-null", "train --model {w}/tiny --data /dev/null --output {out}", "is not a regular file"),
    (
        "token-data-dir",
        "train --model {w}/tiny --data {w}/plain-dir --task token-classification --output {out}",
        "is a directory",
    ),
    ("csv-unquoted-comma", "train --model {w}/tiny --data {w}/comma.csv --output {out}", "row 8 has 3 fields"),
    ("train-too-few-rows", "train --model {w}/tiny --data {w}/tiny8.jsonl --output {out}", "none for validation"),
    (
        "roc-auc-3-classes",
        "train --model {w}/tiny --data {w}/three.jsonl --metric roc_auc --output {out}",
        "two classes",
    ),
    ("eval-token-data", "eval --model {w}/tiny --data {w}/tokens.jsonl", "is token-classification data"),
    # token-classification options on a text classifier were ignored
    ("eval-decode-text-model", "eval --model {w}/tiny --decode argmax", "decode (--decode) chooses token tags"),
    ("predict-decode-text-model", "predict --model {w}/tiny --decode argmax hi", "decode (--decode) chooses token"),
    ("eval-columns-text-model", "eval --model {w}/tiny --columns 0,1", "picks the word and tag columns"),
    # a CoNLL file has columns, no keys: --text-column was ignored and recorded as used
    (
        "conll-text-column",
        "train --data {w}/tokens.conll --text-column words --output {out}",
        "text_column (--text-column) names a key of JSONL data",
    ),
    (
        "jsonl-token-keys-as-texts",
        "train --model {w}/tiny --data {w}/words.jsonl --text-column words --label-column ner --output {out}",
        "a text must be a string (words and their tags under other keys? pass task='token-classification' "
        "(--task token-classification))",
    ),
    ("eval-token-data-onnx", "eval --model {w}/onnx --data conll2003", "is token-classification data"),
    (
        "export-calib-no-int8",
        "export --model {w}/tiny --calib-data {w}/data.jsonl --output {out}",
        "calib_data (--calib-data) is read by the INT8 check and by static calibration: no INT8 model",
    ),
    ("export-token-calib", "export --model {w}/tiny --int8 --calib-data conll2003 --output {out}", "a text classifier"),
    # argparse mistakes are one line too
    ("bench-empty-model", "bench --model= --no-memory", "--model is empty"),
    # options the data has no use for were ignored, and recorded in fastft.json as used
    ("builtin-text-column", "train --model {w}/tiny --data movie-snippets --text-column t --output {out}", "built-in"),
    ("csv-columns", "train --model {w}/tiny --data {w}/data.jsonl --columns 0,1 --output {out}", "read as text"),
    ("export-empty-model", "export --model= --output {out}", "model is empty: give a model directory"),
    (
        "export-columns-no-calib",
        "export --model {w}/tiny --int8 --text-column s --output {out}",
        "text_column (--text-column) is read with calib_data (--calib-data)",
    ),
    ("data-path-with-a-newline", "train --data {w}/no\nfile.csv --output {out}", "no\\nfile.csv does not exist"),
    # a max length of 2 leaves the two special tokens only: the model saw no text (trained, exit 0)
    ("train-max-length-2", "train --model {w}/tiny --data {w}/data.jsonl --max-length 2 --output {out}", "at least 3"),
    ("eval-max-length-2", "eval --model {w}/tiny --max-length 2", "two positions hold the special tokens"),
    ("compress-max-length-2", "compress --model {w}/tiny --max-length 2 --output {out}", "at least 3 (got 2)"),
    # quantization-aware epochs the run cannot make (recorded as given, run as far as the run went)
    (
        "compress-qat-epochs-past-recovery",
        "compress --model {w}/tiny --int8 --qat-epochs 3 --last-recovery-epochs 2 --output {out}",
        "qat_epochs (--qat-epochs) 3 is more than the 2 epoch(s) of the run it joins: last_recovery_epochs "
        "(--last-recovery-epochs)",
    ),
    (
        "compress-qat-no-training",
        "compress --model {w}/tiny --int8 --qat --no-distill --prune-heads 0 --prune-ffn 0 --output {out}",
        "this run trains none",
    ),
    # compress options this run would not use: accepted, ignored, recorded in report.json as if run
    ("compress-qat-no-int8", "compress --model {w}/tiny --qat --output {out}", "qat (--qat) trains for dynamic INT8"),
    ("compress-no-distill-layers", "compress --model {w}/tiny --no-distill --layers 2 --output {out}", "no student"),
    (
        "compress-prune-first-recovery",
        "compress --model {w}/tiny --prune-first --prune-heads 0.5 --recovery-epochs 3 --output {out}",
        "recovery_epochs (--recovery-epochs) is not used by this run",
    ),
    (
        "compress-fp16-per-channel",
        "compress --model {w}/tiny --fp16 --per-channel --output {out}",
        "without quantize='int8' (--int8)",
    ),
    (
        "compress-calib-no-static",
        "compress --model {w}/tiny --int8 --calib-size 10 --output {out}",
        "calibration is for static (--static)",
    ),
    (
        "compress-mse-temperature",
        "compress --model {w}/tiny --kd-loss mse --temperature 4 --output {out}",
        "temperature (--temperature) is not used by this run: kd_loss (--kd-loss) 'mse' compares raw logits",
    ),
    ("compress-columns-text", "compress --model {w}/tiny --columns 0,1 --output {out}", "classifies whole texts"),
    (
        "compress-static-embeddings",
        "compress --model {w}/tiny --int8 --static --no-int8-embeddings --output {out}",
        "embeddings (--no-int8-embeddings) is not used by this run: static (--static) keeps the embedding tables "
        "fp32 already",
    ),
    (
        "train-lora-r-no-lora",
        "train --model {w}/tiny --lora-r 4 --output {out}",
        "lora_r (--lora-r) sets the LoRA adapters",
    ),
    ("serve-batch-int8-fp32", "serve {w}/tiny --precision fp32 --batch-int8", "not with --precision fp32"),
    (
        "compress-transfer-comma",
        "compress --model {w}/tiny --transfer , --output {out}",
        "transfer (--transfer) needs a source",
    ),
    # a unique prefix of an option was taken for it: --no-int8 became --no-int8-embeddings
    ("compress-no-int8-prefix", "compress --model {w}/tiny --int8 --no-int8 --output {out}", "unrecognized arguments"),
    (
        "export-calib-no-static",
        "export --model {w}/tiny --int8 --calib-size 10 --output {out}",
        "calib_size (--calib-size) sets static calibration: it needs static (--static)",
    ),
    # what the system refuses is one line, not an OSError traceback
    ("model-name-too-long", "predict --model {w}/" + "y" * 300 + " hi", "File name too long"),
    ("bad-float", "train --epochs abc --output {out}", "invalid float value: 'abc'"),
    ("missing-required", "train", "the following arguments are required: --output"),
    ("unknown-command", "frobnicate", "invalid choice: 'frobnicate'"),
]


@pytest.mark.parametrize("argv, message", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_hostile(argv, message, sandbox, capfd):
    args = [a.format(**sandbox) for a in argv.split(" ")]
    rc, out, err = run_cli(capfd, args)
    assert_one_line(rc, out, err, message)
    if "--json" in args:
        assert out == "", out  # --json: stdout holds JSON or nothing
    assert not Path(sandbox["out"]).exists()


def test_immutable_output_parent_fails_before_training(world, sandbox, capfd):
    """5. An output that cannot be written fails before any training (root ignores modes: chattr +i)."""
    locked = Path(sandbox["tmp"]) / "locked"
    locked.mkdir()
    if (
        shutil.which("chattr") is None
        or subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0
    ):
        locked.chmod(0o555)
        if os.access(locked, os.W_OK):
            locked.rmdir()
            pytest.skip("cannot make a directory unwritable here (root without chattr)")
    try:
        rc, out, err = run_cli(
            capfd,
            [
                "train",
                "--model",
                f"{world}/tiny",
                "--data",
                f"{world}/data.jsonl",
                "--output",
                str(locked / "out"),
                "--max-steps",
                "1",
            ],
        )
    finally:
        subprocess.run(["chattr", "-i", str(locked)], capture_output=True)
        locked.chmod(0o755)
    assert_one_line(rc, out, err, f"cannot write to {locked}")
    assert "epoch" not in err
    locked.rmdir()


# -- the API cases ----------------------------------------------------------------------------
def _load(w, *args, **kwargs):
    import fastft

    return fastft.load(*args, **kwargs)


API_CASES = [
    ("load-evil", lambda w: _load(w, w / "evil", backend="torch"), "asks to run its own code"),
    ("load-evil-ort", lambda w: _load(w, w / "evil"), "asks to run its own code"),
    ("load-no-tokenizer", lambda w: _load(w, w / "notok", backend="torch"), "no tokenizer files"),
    ("load-batch-0", lambda w: _load(w, w / "onnx", batch_size=0), "batch_size must be at least 1 (got 0)"),
    ("load-batch-float", lambda w: _load(w, w / "onnx", batch_size=1.5), "batch_size must be an integer (got 1.5)"),
    ("load-max-length-0", lambda w: _load(w, w / "onnx", max_length=0), "max_length must be at least 3 (got 0)"),
    ("load-max-length-2", lambda w: _load(w, w / "onnx", max_length=2), "at least 3 (got 2): two positions hold"),
    ("load-none", lambda w: _load(w, None), "path must be a model directory"),
    ("load-int", lambda w: _load(w, 3), "path must be a model directory"),
    ("load-threads-0", lambda w: _load(w, w / "onnx", threads=0), "threads must be at least 1"),
    ("load-int8-str", lambda w: _load(w, w / "onnx", int8="yes"), "int8 must be True, False or None"),
    ("load-corrupt-onnx", lambda w: _load(w, w / "half"), "is not a loadable ONNX model"),
    ("set-batch-size-0", lambda w: setattr(_load(w, w / "onnx"), "batch_size", 0), "batch_size must be at least 1"),
    ("set-max-length", lambda w: setattr(_load(w, w / "onnx"), "max_length", 4096), "fixed when the model loads"),
    (
        "predict-surrogate-ort",
        lambda w: _load(w, w / "onnx").predict(["ok", "\ud800"]),
        "text #1 holds a lone surrogate",
    ),
    ("predict-batch-0", lambda w: _load(w, w / "onnx").predict(["ok"], batch_size=0), "batch_size must be at least 1"),
    (
        "torch-predict-surrogate",
        lambda w: __import__("fastft").predict(str(w / "tiny"), ["\udcff"]),
        "text #0 is not valid UTF-8 (byte 0xff",
    ),
    (
        "evaluate-limit-0",
        lambda w: __import__("fastft").evaluate(str(w / "tiny"), limit=0),
        "limit (--limit) must be at least 1",
    ),
    (
        "evaluate-bad-backend",
        lambda w: __import__("fastft").evaluate(str(w / "tiny"), backend="tensorrt"),
        "backend must be one of",
    ),
    (
        "train-epochs-nan",
        lambda w: __import__("fastft").train(
            str(w / "tiny"), str(w / "data.jsonl"), str(w / "new"), epochs=float("nan")
        ),
        "finite",
    ),
    (
        "train-batch-float",
        lambda w: __import__("fastft").train(str(w / "tiny"), str(w / "data.jsonl"), str(w / "new"), batch_size=2.5),
        "an integer",
    ),
    (
        "compress-alpha-nan",
        lambda w: __import__("fastft").compress(str(w / "tiny"), output=str(w / "new"), alpha=float("nan")),
        "alpha (--alpha) must be a finite",
    ),
    (
        "export-over-input",
        lambda w: __import__("fastft").export(w / "proj" / "tiny", w / "proj", overwrite=True, progress=False),
        "holds the input",
    ),
    # a string is not a switch: "no" is truthy
    (
        "export-int8-str",
        lambda w: __import__("fastft").export(w / "tiny", w / "new", int8="no"),
        "int8 must be True or False (got 'no')",
    ),
    (
        "train-overwrite-str",
        lambda w: __import__("fastft").train(str(w / "tiny"), str(w / "data.jsonl"), str(w / "new"), overwrite="no"),
        "overwrite must be True or False",
    ),
    (
        "train-lora-dropout",
        lambda w: __import__("fastft").train(
            str(w / "tiny"), str(w / "data.jsonl"), str(w / "new"), lora=True, lora_dropout=2.0
        ),
        "lora_dropout must be in [0, 1)",
    ),
    (
        "compress-qat-str",
        lambda w: __import__("fastft").compress(str(w / "tiny"), output=str(w / "new"), qat="no"),
        "qat must be True, False or None (got 'no')",
    ),
    (
        "compress-distill-enabled-str",
        lambda w: __import__("fastft").compress(
            str(w / "tiny"), output=str(w / "new"), distill=__import__("fastft").DistillConfig(enabled="no")
        ),
        "enabled must be True or False",
    ),
]


@pytest.mark.parametrize("call, message", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_api_hostile(call, message, world, sandbox, capfd):
    with pytest.raises(FastftError) as exc:
        call(world)
    text = str(exc.value)
    assert "\n" not in text and message in text, text
    assert not (world / "new").exists()


# -- cases that need a real process -----------------------------------------------------------------
def _cli(*args, stdin: bytes | None = None, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fastft", *args], input=stdin, capture_output=True, cwd=cwd, env=env, timeout=300
    )


@pytest.mark.parametrize("cache", ["a-file", "a-file/sub"])
def test_a_cache_that_is_a_file_is_one_line(cache, world, sandbox, capfd, monkeypatch):
    monkeypatch.setenv("FASTFT_CACHE", str(world / cache))
    rc, out, err = run_cli(capfd, ["bench", "--model", f"{world}/tiny", "--no-memory", "--repeats", "3"])
    assert_one_line(rc, out, err, "(FASTFT_CACHE) is not a directory")


def test_a_cache_on_a_pseudo_filesystem_names_the_cache(world, sandbox, capfd, monkeypatch):
    """/proc passes an access() check for root but takes no files: the cache is probed by writing,
    and the error names FASTFT_CACHE, not --output."""
    monkeypatch.setenv("FASTFT_CACHE", "/proc/fastft-cache")
    rc, out, err = run_cli(capfd, ["compress", "--int8", "--output", sandbox["out"]])
    assert_one_line(rc, out, err, "the cache /proc/fastft-cache (FASTFT_CACHE) cannot be written")


def test_a_mistyped_local_path_or_an_unreachable_hub_fails_at_once(world, monkeypatch):
    """``runs/typo`` (its first part a local directory) is a missing directory, not a hub name; a
    hub name when the hub's host does not resolve fails in one line at once, not after ~25 s of
    retries; with a resolvable host (or a proxy) the name goes to transformers unchanged."""
    import socket

    from fastft.models.resolve import resolve_model

    monkeypatch.chdir(world)
    with pytest.raises(FastftError, match="model directory plain-dir/typo does not exist"):
        resolve_model("plain-dir/typo")

    def no_dns(*a, **k):
        raise socket.gaierror(-2, "Name or service not known")

    for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_ENDPOINT"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    for name in ("no-such-model-xyz", "org-xyz/no-such-model"):
        with pytest.raises(FastftError, match="not in the local Hugging Face cache, and the hub is unreachable"):
            resolve_model(name)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert resolve_model("org-xyz/no-such-model") == "org-xyz/no-such-model"
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [])
    assert resolve_model("no-such-model-xyz") == "no-such-model-xyz"


def test_evil_code_never_runs_even_with_yes_on_stdin(world, tmp_path):
    """1. ``echo y | fastft predict`` on an auto_map directory: one line, exit 2, evil.py not imported."""
    marker = world / EVIL_MARKER
    for model in ("evil", "evil-tok"):
        proc = _cli("predict", "--model", str(world / model), "--backend", "torch", "hi", stdin=b"y\ny\n", cwd=tmp_path)
        err = proc.stderr.decode()
        assert proc.returncode == 2 and len(err.strip().splitlines()) == 1, err
        assert "asks to run its own code" in err and proc.stdout == b""  # no [y/N] question
        assert not marker.exists()


def test_trust_remote_code_false_is_passed(world, monkeypatch):
    """1. Without fastft's up-front refusal, transformers itself is told never to run the code."""
    import fastft.models.resolve as resolve
    from fastft.models import load_classifier, load_tokenizer

    monkeypatch.setattr(resolve, "check_no_custom_code", lambda *a, **k: None)
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 10))  # the answer transformers' prompt would read
    for call in (lambda: load_classifier(world / "evil"), lambda: load_tokenizer(world / "evil-tok")):
        try:
            call()
        except FastftError as exc:
            assert "\n" not in str(exc)
    assert not (world / EVIL_MARKER).exists()


def test_non_utf8_stdin_names_the_line(world, tmp_path):
    """10. Undecodable bytes on stdin: the line is named, nothing is replaced silently."""
    proc = _cli(
        "predict",
        "--model",
        str(world / "tiny"),
        "--backend",
        "torch",
        "-",
        stdin=b"a fine film\ncaf\xe9 \xff\n",
        cwd=tmp_path,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.strip().splitlines() == [
        "fastft: error: stdin line 2 is not valid UTF-8 (byte 0xe9 at offset 3); fastft reads text as UTF-8: "
        "convert it first, e.g. iconv -f latin1 -t utf-8"
    ]


def test_stdin_errors_name_the_line_and_a_bom_is_not_text(world, tmp_path):
    """A text read from stdin that the model cannot use is named by its line there (blank lines
    are skipped, so "text #2" did not find it); a byte-order mark is not part of the first text."""
    model = str(world / "onnx")
    proc = _cli("predict", "--model", model, "-", stdin="good\n\nfine\n\u200b\nok\n".encode(), cwd=tmp_path)
    err = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and err[0].startswith("fastft: error: stdin line 4 has no tokens")
    proc = _cli("predict", "--model", model, "--json", "-", stdin=b"\xef\xbb\xbfa fine film\n", cwd=tmp_path)
    assert proc.returncode == 0 and json.loads(proc.stdout)[0]["text"] == "a fine film", proc.stderr
    # lines end at a lone CR too (an old Mac's file), as in data files: three texts, not one
    proc = _cli("predict", "--model", model, "--json", "-", stdin=b"good\rbad\r\rfine\r", cwd=tmp_path)
    assert proc.returncode == 0 and [r["text"] for r in json.loads(proc.stdout)] == ["good", "bad", "fine"]
    proc = _cli("predict", "--model", model, "-", stdin="good\r\r\u200b\n".encode())
    assert proc.returncode == 2 and "stdin line 3 has no tokens" in proc.stderr.decode()
    proc = _cli("predict", "--model", model, "-", stdin=b"good\r\xff\n")
    assert proc.returncode == 2 and "stdin line 2 is not valid UTF-8" in proc.stderr.decode()


def test_a_forced_kernel_copy_this_cpu_lacks_is_one_line(world, tmp_path):
    """FASTFT_ATTN_ISA names the C++ kernels' instruction-set copy: a value this CPU does not run
    was a red ONNX Runtime log line and a silent fallback (or an error inside every call)."""
    proc = _cli(
        "predict", "--model", str(world / "onnx"), "hi", cwd=tmp_path, env={**os.environ, "FASTFT_ATTN_ISA": "sse9"}
    )
    err = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 2 and err == [err[0]] and "FASTFT_ATTN_ISA='sse9' is not a copy" in err[0], err


def test_blank_stdin_and_control_characters_in_the_table(world, tmp_path):
    """Only blank lines on stdin: one line saying so. A text with a newline or a terminal escape
    is shown escaped in the table (it cannot rewrite the terminal); --json keeps it as it is."""
    model = ("predict", "--model", str(world / "tiny"), "--backend", "torch")
    proc = _cli(*model, "-", stdin=b"\n  \n", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.decode().strip() == "fastft: error: stdin held no text (only blank lines, or nothing)"
    text = "a\x1b[31mred\nline"
    proc = _cli(*model, text, cwd=tmp_path)
    out = proc.stdout.decode()
    assert proc.returncode == 0 and "\x1b" not in out and out.count("\n") == 1 and "a\\x1b[31mred\\nline" in out
    proc = _cli(*model, "--json", text, cwd=tmp_path)
    assert json.loads(proc.stdout)[0]["text"] == text


def test_non_utf8_argv_from_a_shell(world, tmp_path):
    """10. ``fastft predict $'caf\\xe9 \\xff'``: raw bytes in argv."""
    proc = subprocess.run(
        [
            os.fsencode(sys.executable),
            b"-m",
            b"fastft",
            b"predict",
            b"--model",
            os.fsencode(str(world / "tiny")),
            b"--backend",
            b"torch",
            b"caf\xe9 \xff",
        ],
        capture_output=True,
        cwd=tmp_path,
        timeout=300,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert "text #0 is not valid UTF-8 (byte 0xe9 at character 3)" in err
    assert "Traceback" not in err
    # an output name that is not UTF-8: refused before any work (ONNX Runtime raised a TypeError mid-export)
    out = os.fsencode(str(tmp_path)) + b"/out\xff"
    argv = [os.fsencode(sys.executable), b"-m", b"fastft", b"export", b"--model", os.fsencode(str(world / "tiny"))]
    proc = subprocess.run([*argv, b"--output", out], capture_output=True, cwd=tmp_path, timeout=300)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.strip().splitlines() == [err.strip()] and "is not valid UTF-8" in err, err
    assert not os.path.exists(out)


def test_enough_hostile_cases():
    assert len(CLI_CASES) + len(API_CASES) >= 40


# -- what must keep working, and the races ----------------------------------------------------------
def test_overwrite_replaces_a_fastft_dir_or_an_empty_one(world, tmp_path, capfd):
    """2. --overwrite still replaces fastft's own output; an empty directory needs no --overwrite."""
    args = [
        "train",
        "--model",
        f"{world}/tiny",
        "--data",
        f"{world}/data.jsonl",
        "--max-steps",
        "1",
        "--batch-size",
        "4",
        "--max-length",
        "16",
        "--no-progress",
        "--output",
    ]
    (tmp_path / "empty").mkdir()
    assert run_cli(capfd, [*args, str(tmp_path / "empty")])[0] == 0
    first = (tmp_path / "empty" / "fastft.json").stat().st_mtime_ns
    rc, _, err = run_cli(capfd, [*args, str(tmp_path / "empty"), "--overwrite"])
    assert rc == 0, err
    assert (tmp_path / "empty" / "fastft.json").stat().st_mtime_ns != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no .tmp-/.old- leftovers


def test_output_written_meanwhile_is_not_replaced(tmp_path):
    """3. A result that appears while this run works is never replaced without --overwrite."""
    from fastft.core.io import atomic_output_dir

    out = tmp_path / "out"
    with pytest.raises(FastftError, match="written by another run while this one worked"):
        with atomic_output_dir(out) as tmp:
            (tmp / "fastft.json").write_text("{}")
            out.mkdir()  # the other run's rename lands first
            (out / "fastft.json").write_text('{"theirs": 1}')
    assert json.loads((out / "fastft.json").read_text()) == {"theirs": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with atomic_output_dir(out, overwrite=True) as tmp:  # with --overwrite the last writer wins, whole
        (tmp / "fastft.json").write_text('{"ours": 1}')
    assert json.loads((out / "fastft.json").read_text()) == {"ours": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_full_disk_at_save_is_one_line_and_leaves_nothing(tmp_path):
    """5. A write that fails inside the output (disk full, permissions changed) is one line; no leftovers."""
    import errno

    from fastft.core.io import atomic_output_dir

    with pytest.raises(FastftError, match=r"cannot write .*out \(No space left on device\); nothing was written"):
        with atomic_output_dir(tmp_path / "out") as tmp:
            (tmp / "fastft.json").write_text("{}")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert list(tmp_path.iterdir()) == []


def test_a_running_writer_is_detected(tmp_path):
    """3. A second run to an output another live fastft process is writing fails at once."""
    from fastft.core.io import check_output_dir

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / f".out.fastft-tmp-{other.pid}-{namespace()}-abc").mkdir()
        with pytest.raises(FastftError, match=f"another fastft run \\(pid {other.pid}\\) is writing"):
            check_output_dir(tmp_path / "out")
    finally:
        other.kill()
        other.wait()


_WRITER = """
import sys, time
from fastft.core.errors import FastftError
from fastft.core.io import atomic_output_dir
try:
    with atomic_output_dir(sys.argv[1]) as tmp:
        (tmp / "fastft.json").write_text(sys.argv[2])
        time.sleep(float(sys.argv[3]))
except FastftError as exc:
    print(f"fastft: error: {exc}", file=sys.stderr)
    sys.exit(2)
"""


def test_concurrent_writers_one_wins(tmp_path):
    """3. Two processes writing the same output at once: one result, whole; the other run says so."""
    out = tmp_path / "out"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(out), f'{{"run": {i}}}', str(1.5 - i)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 2], results
    winner = next(i for i, (rc, _) in enumerate(results) if rc == 0)
    assert json.loads((out / "fastft.json").read_text()) == {"run": winner}
    err = results[1 - winner][1]
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "is writing" in err or "written by another run" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


_KILLED = """
import os, signal, sys
from fastft.core.io import atomic_output_dir, scratch_dir
with scratch_dir("export") as scratch, atomic_output_dir(sys.argv[1]) as tmp:  # as fastft export does
    open(os.path.join(scratch, "plain.onnx"), "wb").write(b"x" * 4096)
    open(os.path.join(tmp, "model.onnx"), "wb").write(b"x" * 4096)
    os.kill(os.getpid(), signal.SIGKILL)  # kill -9 mid-export: no cleanup runs
"""


_TERMINATED = """
import os, signal, sys, time
import fastft.cli.env
from fastft.cli import main
from fastft.core.io import atomic_output_dir, scratch_dir

SIG = signal.SIGTERM if sys.argv[2] == "term" else signal.SIGHUP
# a test run started under nohup (or by timeout's parent) ignores SIGHUP, and fastft leaves an
# ignored signal ignored: the signal starts at its default here, or ignored when asked
signal.signal(SIG, signal.SIG_IGN if sys.argv[3:] == ["ignored"] else signal.SIG_DFL)

def export_like(args):  # stands in for a command: writes as fastft export does, then is sent SIGTERM
    with scratch_dir("export") as scratch, atomic_output_dir(sys.argv[1]) as tmp:
        open(os.path.join(scratch, "plain.onnx"), "wb").write(b"x" * 4096)
        open(os.path.join(tmp, "model.onnx"), "wb").write(b"x" * 4096)
        if sys.argv[3:] == ["bar"]:  # stopped inside a progress bar, as training is
            from tqdm.auto import tqdm
            bar = tqdm(total=10, desc="epoch 1/3", file=sys.stderr)
            bar.update(3)
        os.kill(os.getpid(), SIG)
        time.sleep(0.5 if sys.argv[3:] == ["ignored"] else 60)
    return 0

fastft.cli.env._run = export_like
sys.exit(main(["env"]))
"""


@pytest.mark.parametrize("sig, rc", [("term", 143), ("hup", 129)])
def test_sigterm_and_sighup_clean_up_like_ctrl_c(tmp_path, sig, rc):
    """``timeout``, ``docker stop``, a cancelled CI job send SIGTERM (a closed terminal SIGHUP): the
    half-written output and the scratch directory are removed, as on Ctrl-C, and the exit status
    says which signal (they stayed, hundreds of MB, with exit 143 and no word)."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", _TERMINATED, str(out), sig],
        env={**os.environ, "TMPDIR": str(scratch)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == rc, proc.stderr[-2000:]
    assert proc.stderr.strip() == f"fastft: terminated ({'SIGTERM' if sig == 'term' else 'SIGHUP'})"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scratch"] and not list(scratch.glob("fastft-*"))


def test_a_signal_the_run_was_told_to_ignore_stays_ignored(tmp_path):
    """Under ``nohup`` SIGHUP is ignored: fastft does not take it back (the run goes on and writes
    its output), as it leaves any handler its caller set."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", _TERMINATED, str(out), "hup", "ignored"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
    assert (out / "model.onnx").stat().st_size == 4096


def test_a_run_stopped_inside_a_progress_bar_says_so_on_a_line_of_its_own(tmp_path):
    """The bar's line had no line break: "epoch 1/3:  30%|...| 3/10 ...fastft: terminated (SIGTERM)"."""
    proc = subprocess.run(
        [sys.executable, "-c", _TERMINATED, str(tmp_path / "out"), "term", "bar"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 143, proc.stderr[-2000:]
    lines = proc.stderr.rstrip("\n").split("\n")
    assert "epoch 1/3" in proc.stderr and lines[-1] == "fastft: terminated (SIGTERM)", proc.stderr


def test_kill_9_during_export_is_cleaned_by_the_next_run(world, tmp_path, capfd, monkeypatch):
    """8. ``kill -9`` mid-export leaves .NAME.fastft-tmp-<pid>-* and fastft-export-<pid>-*; the next
    run removes them."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED, str(out)], env={**os.environ, "TMPDIR": str(scratch)}, timeout=120
    )
    assert proc.returncode == -9
    pid = int(next(scratch.glob("fastft-export-*")).name.split("-")[2])
    left = list(tmp_path.glob(f".out.fastft-tmp-{pid}-*")) + list(scratch.glob(f"fastft-export-{pid}-*"))
    assert len(left) == 2, sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    rc, _, err = run_cli(
        capfd,
        [
            "train",
            "--model",
            f"{world}/tiny",
            "--data",
            f"{world}/data.jsonl",
            "--max-steps",
            "1",
            "--batch-size",
            "4",
            "--max-length",
            "16",
            "--no-progress",
            "--output",
            str(out),
        ],
    )
    assert rc == 0, err
    for p in left:
        assert not p.exists()
        assert f"fastft: removed {p} (0.0 MB), left by an interrupted fastft run (pid {pid})" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "scratch"]
    assert not list(scratch.glob("fastft-*"))


def test_stale_compress_work_dirs_are_cleaned(tmp_path, capfd):
    """8. .fastft-compress-<pid>-<ns>-* of a dead run are removed (and said); a live run's, another
    namespace's (a container or host sharing the directory) and names a person picked are kept."""
    from fastft.core.io import check_output_dir

    ns, pid = namespace(), _dead_pid()
    dead = tmp_path / f".fastft-compress-{pid}-{ns}-x1"
    live = tmp_path / f".fastft-compress-{os.getpid()}-{ns}-x2"
    kept = [
        tmp_path / ".compress-work-notapid",
        tmp_path / f".fastft-compress-{pid}-{'0' * 8 if ns != '0' * 8 else '1' * 8}-x3",  # another namespace
        tmp_path / ".photos.old-2024-summer",  # the old pattern took a date for a dead pid
        tmp_path / f".backup.tmp-{pid}-x",
    ]
    for d in (dead, live, *kept):
        d.mkdir()
        (d / "model.onnx").write_bytes(b"x" * 2048)
    check_output_dir(tmp_path / "out")
    err = capfd.readouterr().err
    assert not dead.exists() and live.exists() and all(d.exists() for d in kept)
    assert err.strip().splitlines() == [
        f"fastft: removed {dead} (0.0 MB), left by an interrupted fastft run (pid {dead.name.split('-')[2]})"
    ]


def test_written_files_share_one_mode_that_respects_the_umask(world, tmp_path):
    """17. model.safetensors is no longer 0600: every written file gets 0666 & ~umask."""
    import fastft

    old = os.umask(0o027)
    try:
        fastft.train(
            str(world / "tiny"),
            str(world / "data.jsonl"),
            str(tmp_path / "m"),
            max_steps=1,
            batch_size=4,
            max_length=16,
            progress=False,
        )
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "m").iterdir()}
    assert "model.safetensors" in modes and set(modes.values()) == {0o640}, modes
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o750
    onnx_modes = {p.name: p.stat().st_mode & 0o777 for p in (world / "onnx").iterdir()}
    assert len(set(onnx_modes.values())) == 1, onnx_modes  # the export: safetensors and ONNX alike


def test_eval_scores_what_predict_serves(world, tmp_path, capfd):
    """15. eval defaults to the served ONNX model; --int8 scores model_int8.onnx; ONNX-only dirs evaluate."""
    import fastft

    ort = fastft.evaluate(str(world / "onnx"), split="validation", progress=False)
    torch_ = fastft.evaluate(str(world / "onnx"), split="validation", backend="torch", progress=False)
    int8 = fastft.evaluate(str(world / "onnx"), split="validation", int8=True, progress=False)
    assert (ort["backend"], ort["file"]) == ("onnxruntime", "model.onnx")
    assert torch_["backend"] == "torch" and "file" not in torch_
    assert int8["file"] == "model_int8.onnx"
    assert ort["n"] == torch_["n"] == int8["n"] > 0
    assert abs(ort["loss"] - torch_["loss"]) < 1e-4  # the fp32 graph computes what the weights do
    only = tmp_path / "onnx-only"
    shutil.copytree(world / "onnx", only)
    (only / "model.safetensors").unlink()
    rc, out, err = run_cli(capfd, ["eval", "--model", str(only), "--split", "validation", "--json"])
    assert rc == 0, err
    res = json.loads(out)
    assert res["backend"] == "onnxruntime" and res["accuracy"] == ort["accuracy"]


def test_an_overwrite_killed_between_its_renames_is_put_back(tmp_path, capfd):
    """A run killed after moving the old output aside and before moving the new one in left no
    output, and the next run deleted the old one as a stale work directory: it is put back."""
    from fastft.core.io import check_output_dir

    pid = _dead_pid()
    aside = tmp_path / f".out.fastft-old-{pid}-{namespace()}-x1"
    (aside / "out").mkdir(parents=True)
    (aside / "out" / "fastft.json").write_text('{"kept": 1}')
    check_output_dir(tmp_path / "other")
    assert json.loads((tmp_path / "out" / "fastft.json").read_text()) == {"kept": 1} and not aside.exists()
    assert "fastft: put back" in capfd.readouterr().err
    # a run for that same output: the put-back comes before its checks (it passed them, then found
    # the output back and discarded its result as "written by another run")
    aside = tmp_path / f".again.fastft-old-{pid}-{namespace()}-x2"
    (aside / "again").mkdir(parents=True)
    (aside / "again" / "fastft.json").write_text("{}")
    with pytest.raises(FastftError, match="again already exists"):
        check_output_dir(tmp_path / "again")


def test_an_overwrite_swaps_in_one_step(tmp_path, monkeypatch):
    """--overwrite exchanges the new result and the old one (renameat2) where Linux has it: no
    moment without an output, and nothing left beside it."""
    from fastft.core.io import _exchange, atomic_output_dir

    for body in ('{"first": 1}', '{"second": 1}'):
        with atomic_output_dir(tmp_path / "out", overwrite=True) as tmp:
            (tmp / "fastft.json").write_text(body)
    assert json.loads((tmp_path / "out" / "fastft.json").read_text()) == {"second": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").touch()
    if not _exchange(a, b):
        pytest.skip("no renameat2 RENAME_EXCHANGE here (the two-rename path is tested by the put-back)")
    assert sorted(p.name for p in b.iterdir()) == ["x"] and not any(a.iterdir())

    def no_rename(*args):
        raise AssertionError("the replacement took two renames")

    monkeypatch.setattr(os, "rename", no_rename)  # the exchange is the only move of an --overwrite
    with atomic_output_dir(tmp_path / "out", overwrite=True) as tmp:
        (tmp / "fastft.json").write_text('{"third": 1}')
    assert json.loads((tmp_path / "out" / "fastft.json").read_text()) == {"third": 1}


def test_a_claimed_output_is_refused_when_a_second_run_starts(tmp_path):
    """Train and compress made their hidden directory only when saving: a second run on the same
    output ran to its end and then failed (or won). A long run claims the output at its start."""
    from fastft.core.io import check_output_dir, claim_output

    out = tmp_path / "out"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import time; from fastft.core.io import claim_output\nwith claim_output({str(out)!r}): time.sleep(60)",
        ]
    )
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".out.fastft-claim-*")):
            assert time.monotonic() < deadline and child.poll() is None
            time.sleep(0.05)
        with pytest.raises(FastftError, match=f"another fastft run \\(pid {child.pid}\\) is writing"):
            check_output_dir(out)
    finally:
        child.kill()
        child.wait()
    check_output_dir(out)  # the killed run's claim is stale: removed, said
    assert not list(tmp_path.glob(".out.fastft-claim-*"))
    with claim_output(out):  # this process's own claim is no other run
        check_output_dir(out)
    assert not list(tmp_path.glob(".out.fastft-claim-*"))
    with claim_output(tmp_path / "new" / "deep" / "out"):  # a run that fails leaves no parents behind
        assert (tmp_path / "new" / "deep").is_dir()
    assert not (tmp_path / "new").exists()


def test_outputs_that_cannot_work_are_refused_before_any_work(tmp_path, monkeypatch):
    """A mount point (the result is renamed onto it: EBUSY after every epoch), a name too long for
    the hidden directory beside it, a symbolic link loop (a RuntimeError traceback) or a dangling
    link (its target's parents were created)."""
    from fastft.core.io import check_output_dir

    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere" / "deep")
    (tmp_path / "vol").mkdir()
    for path, message in (
        (tmp_path / "loop", "cannot be used"),
        (tmp_path / "dangling", "is a symbolic link to .*which does not exist"),
        (tmp_path / ("y" * 240), "bytes long: fastft writes beside it"),
        (tmp_path / ("y" * 300), "cannot be used \\(File name too long\\)"),
    ):
        with pytest.raises(FastftError, match=message):
            check_output_dir(path)
    assert not (tmp_path / "nowhere").exists()
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == tmp_path / "vol")
    with pytest.raises(FastftError, match="is a mount point"):
        check_output_dir(tmp_path / "vol")


def test_a_library_error_on_a_full_disk_says_the_disk_is_full(tmp_path, monkeypatch):
    """safetensors' SafetensorError or a truncated ONNX file read back as corrupt named the library,
    not the full disk."""
    import shutil as sh

    from fastft.core.io import atomic_output_dir

    usage = sh.disk_usage(tmp_path)
    monkeypatch.setattr(sh, "disk_usage", lambda p: usage._replace(free=4096))
    with pytest.raises(FastftError, match="the disk holding it is full \\(ValueError: Protobuf"):
        with atomic_output_dir(tmp_path / "out") as tmp:
            (tmp / "model.onnx").write_bytes(b"x")
            raise ValueError("Protobuf serialization failed")
    assert list(tmp_path.iterdir()) == []


_DEFERRED = """
import os, signal, threading, time
# a shell's background job starts with SIGINT ignored (Python then sets no handler): Ctrl-C's here
signal.signal(signal.SIGINT, signal.default_int_handler)
import torch
torch.ones(64, 64) @ torch.ones(64, 64)  # the process now has native threads, as every run does
from fastft.core.io import _signals_deferred
threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
steps = []
try:
    with _signals_deferred():
        steps.append("first rename")
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        steps.append("second rename")
except KeyboardInterrupt:
    steps.append("interrupted after")
print(steps)
"""


def test_signals_wait_for_the_swap_whatever_thread_takes_them():
    """A signal mask holds one thread, and the kernel gave the signal to another (torch's): the
    interrupt landed between the two renames of an --overwrite. The handlers wait instead."""
    proc = subprocess.run([sys.executable, "-c", _DEFERRED], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "['first rename', 'second rename', 'interrupted after']", proc.stderr[-2000:]
