"""``fastft bench`` end to end on the tiny model (few repeats), and its argument errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bench_end_to_end(tiny_model_dir, tmp_path, capsys):
    from fastft.cli import main

    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    rc = main(
        [
            "bench",
            "--model",
            str(tiny_model_dir),
            "--seq",
            "16,32",
            "--repeats",
            "5",
            "--warmup",
            "1",
            "--threads",
            "1",
            "--gap-ms",
            "0",
            "--backends",
            "hf-eager,fastft-fp32,fastft-int8",
            "--workdir",
            str(tmp_path / "w"),
            "--json",
            str(out),
            "--plot",
            str(png),
            "--no-progress",
        ]
    )
    assert rc == 0
    table = capsys.readouterr().out
    assert "fastft-int8" in table and "p50 ms" in table
    d = json.loads(out.read_text())
    for key in ("command", "machine", "versions", "settings", "backends", "results", "targets"):
        assert key in d, key
    assert d["settings"]["threads"] == 1 and d["settings"]["seqs"] == [16, 32] and d["settings"]["gap_ms"] == 0
    assert len(d["results"]) == 6
    for r in d["results"]:
        for key in (
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "seq_per_s",
            "tokens_per_s",
            "speedup_vs_hf_eager",
            "p99_over_p50",
            "max_abs_logit_diff_vs_hf_eager",
        ):
            assert isinstance(r[key], (int, float)), (r["backend"], key)
        assert r["n"] == 5 and r["tokens_per_s"] == pytest.approx(r["seq_per_s"] * r["seq"], rel=1e-3)
        assert r["peak_rss_mb"] is not None
        if r["backend"] == "fastft-fp32":
            assert r["max_abs_logit_diff_vs_hf_eager"] < 1e-4
    b = d["backends"]
    assert b["fastft-int8"]["file"].endswith("model_int8.onnx") and b["fastft-int8"]["file_size_mb"] > 0
    # what the served export is: its INT8 recipe, the nodes its check kept fp32, the agreement it measured
    q = b["fastft-int8"]
    assert q["int8_recipe"].startswith("dynamic-") and isinstance(q["int8_fp32_nodes"], int)
    assert q["int8_label_agreement"] is None  # bench's own export is not validated (its logits meet hf-eager's)
    assert isinstance(b["fastft-fp32"]["skip_layernorm_split"], int)
    assert "error" not in b["hf-eager"]["memory"]
    assert {t["target"] for t in d["targets"]} and all("met" in t for t in d["targets"])
    # fastft's INT8 labelled the model's own validation texts beside its fp32 (no peer ran: no peer row)
    ag = d["int8_agreement"]
    assert set(ag) == {"fastft-int8"} and ag["fastft-int8"]["reference"] == "fastft-fp32"
    assert ag["fastft-int8"]["n"] > 0 and 0 <= ag["fastft-int8"]["label_agreement"] <= 1
    assert "validation split" in ag["fastft-int8"]["texts"] and "INT8 label agreement" in table
    assert not any("peer-int8's" in t["target"] for t in d["targets"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the exports are reused on a second run (same workdir, unchanged model)
    stamp = (tmp_path / "w").stat().st_mtime_ns
    rc = main(
        [
            "bench",
            "--model",
            str(tiny_model_dir),
            "--seq",
            "16",
            "--repeats",
            "3",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--backends",
            "fastft-int8",
            "--workdir",
            str(tmp_path / "w"),
            "--json",
            "--no-memory",
            "--no-progress",
        ]
    )
    assert rc == 0
    d2 = json.loads(capsys.readouterr().out)
    assert not d2["int8_agreement"]  # fastft-fp32 did not run: nothing to compare with
    assert d2["results"][0]["backend"] == "fastft-int8" and "speedup_vs_hf_eager" not in d2["results"][0]
    assert len(list((tmp_path / "w").iterdir())) == 1 and (tmp_path / "w").stat().st_mtime_ns == stamp
    # --served: fastft-* run another directory's ONNX files (e.g. a compressed student)
    served = next((tmp_path / "w").iterdir()) / "fastft"
    rc = main(
        [
            "bench",
            "--model",
            str(tiny_model_dir),
            "--served",
            str(served),
            "--seq",
            "16",
            "--repeats",
            "3",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--backends",
            "hf-eager,fastft-int8",
            "--workdir",
            str(tmp_path / "w2"),
            "--json",
            "--no-memory",
            "--no-progress",
        ]
    )
    assert rc == 0
    d3 = json.loads(capsys.readouterr().out)
    assert d3["served_model"] == str(served)
    assert d3["backends"]["fastft-int8"]["file"] == str(served / "model_int8.onnx")
    # labels in another order: the agreement would compare label i with label j (once counted only)
    import shutil

    swapped = tmp_path / "swapped"
    shutil.copytree(served, swapped)
    for name in ("config.json", "fastft.json"):
        d = json.loads((swapped / name).read_text())
        if "id2label" in d:
            d["id2label"] = {k: d["id2label"][str(len(d["id2label"]) - 1 - int(k))] for k in d["id2label"]}
            d["label2id"] = {v: int(k) for k, v in d["id2label"].items()}
        if "labels" in d:
            d["labels"] = d["labels"][::-1]
        (swapped / name).write_text(json.dumps(d))
    argv = ["bench", "--model", str(tiny_model_dir), "--served", str(swapped), "--backends", "fastft-fp32"]
    assert main([*argv, "--workdir", str(tmp_path / "w3"), "--no-progress", "--seq", "16"]) == 2
    assert "in the same order" in capsys.readouterr().err
    (served / "model.onnx").rename(served / "gone.onnx")
    assert (
        main(
            [
                "bench",
                "--model",
                str(tiny_model_dir),
                "--served",
                str(served),
                "--backends",
                "fastft-fp32",
                "--workdir",
                str(tmp_path / "w2"),
                "--no-progress",
                "--seq",
                "16",
            ]
        )
        == 2
    )
    assert "has no model.onnx" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backends", "hf-eager,tensorflow"], "unknown backend 'tensorflow'"),
        (["--seq", "4"], "at least 8"),
        (["--seq", "1024"], "beyond the model's 128 positions"),
        (["--repeats", "1"], "--repeats"),
        (["--batch", "0"], "--batch"),
        (["--gap-ms", "-1"], "--gap-ms must be in [0, 10000]"),
        (["--gap-ms", "nan"], "--gap-ms must be a finite number"),
        (["--plot", "out.svg"], "PNG"),
    ],
)
def test_bench_bad_args(tiny_model_dir, tmp_path, capsys, args, message):
    from fastft.cli import main

    rc = main(
        [
            "bench",
            "--model",
            str(tiny_model_dir),
            "--backends",
            "hf-eager",
            "--workdir",
            str(tmp_path),
            "--no-memory",
            "--no-progress",
            *args,
        ]
        if "--backends" not in args
        else ["bench", "--model", str(tiny_model_dir), "--workdir", str(tmp_path), "--no-progress", *args]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("fastft: error:") and message in err, err


def test_bench_unparsable_args(capsys):
    from fastft.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["bench", "--seq", "128,abc"])
    assert exc.value.code == 2
    assert "comma-separated integers" in capsys.readouterr().err


def test_bench_missing_model(tmp_path, capsys):
    from fastft.cli import main

    assert main(["bench", "--model", str(tmp_path / "nowhere"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_runner_interleave_rotates_and_times_every_call():
    from fastft.bench.runner import interleave

    calls = []
    timed = interleave({n: (lambda n=n: calls.append(n)) for n in "abc"}, 4, warmup=1)
    assert calls[:3] == ["a", "b", "c"]  # warm-up, then rounds each starting one later
    assert calls[3:] == list("abcbcacababc")
    assert {n: len(t) for n, t in timed.wall.items()} == {"a": 4, "b": 4, "c": 4} and timed.rounds == 4
    assert all(t >= 0 for ts in (*timed.wall.values(), *timed.cpu.values()) for t in ts)
    calls.clear()
    interleave({n: (lambda n=n: calls.append(n)) for n in "abcd"}, 20, warmup=0, order="random", seed=1)
    rounds = [tuple(calls[i : i + 4]) for i in range(0, 80, 4)]
    assert all(sorted(r) == list("abcd") for r in rounds) and len(set(rounds)) > 3
    with pytest.raises(ValueError, match="order"):
        interleave({"a": lambda: None}, 1, order="sorted")


def test_runner_result_files_hold_machine_versions_and_no_machine_paths(tmp_path, monkeypatch):
    import csv
    import os
    import sys

    from fastft.bench.runner import scrub_paths, write_result

    monkeypatch.chdir(tmp_path)
    venv_file = os.path.join(sys.prefix, "lib", "site-packages", "fastft", "_C.so")
    rows = [
        {"backend": "a", "p50_ms": 1.5, "seqs": [1, 2], "file": str(tmp_path / "runs" / "m.onnx")},
        {"backend": "b"},
    ]
    payload = {"benchmark": "t", "model": str(tmp_path / "runs" / "teacher"), "error": f"cannot load {venv_file}: x"}
    path = write_result(tmp_path / "out" / "r.json", {**payload, "rows": rows}, csv_rows=rows)
    d = json.loads(path.read_text())
    for key in ("command", "date", "machine", "versions"):
        assert key in d, key
    assert {"cpu", "loadavg_at_start", "loadavg_at_end"} <= set(d["machine"]) and d["machine"]["cpu"][
        "flags"
    ] is not None
    assert d["versions"]["fastft"] and d["versions"]["python"] and "path" not in d["versions"]["cpp_extension"]
    text = path.read_text() + path.with_suffix(".csv").read_text()
    assert sys.prefix + os.sep not in text and str(tmp_path) not in text  # nothing inside the venv
    assert d["model"] == "runs/teacher" and d["error"] == "cannot load _C.so: x"
    with open(path.with_suffix(".csv"), newline="") as f:
        got = list(csv.DictReader(f))
    assert [r["backend"] for r in got] == ["a", "b"] and got[0]["seqs"] == "[1, 2]" and got[0]["file"] == "runs/m.onnx"
    assert scrub_paths("fp32/int8 and a/b/c") == "fp32/int8 and a/b/c"
    assert not list((tmp_path / "out").glob(".*tmp*"))


def _compress_run_file(
    path, *, seed, heads, retained, speedup, augment=0, vnni=False, steps=1, allocation=None, last=None
):
    prune = {"recovery_epochs": 1, "prune_steps": steps, **({"head_allocation": allocation} if allocation else {})}
    if last is not None:
        prune["last_recovery_epochs"] = last
    per_layer = heads if isinstance(heads, list) else [heads] * 3
    report = {
        "config": {"seed": seed, "distill": {"epochs": 2, "augment": augment}, "prune": prune},
        "pruning": {"after_structured": {"layers": 3, "heads": per_layer, "intermediate": [768] * 3}},
        "stages": [],
    }
    summary = {"final_stage": "quantized", "retained": retained, "speedup_512": speedup, "retained_rare": 0.95}
    machine = {"cpu": {"vnni": vnni, "flags": ["avx2"]}}
    path.write_text(json.dumps({"report": report, "summary": summary, "machine": machine}))
    return str(path)


def test_frontier_runs_groups_configs_and_takes_medians(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "frontier_runs", Path(__file__).resolve().parents[1] / "bench" / "frontier_runs.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    files = [
        _compress_run_file(tmp_path / "a.json", seed=42, heads=6, retained=0.9836, speedup=4.78),
        _compress_run_file(tmp_path / "b.json", seed=43, heads=6, retained=0.9930, speedup=5.20),
        _compress_run_file(tmp_path / "c.json", seed=44, heads=6, retained=0.9910, speedup=5.05),
        _compress_run_file(tmp_path / "d.json", seed=42, heads=12, retained=0.9950, speedup=6.5),
        _compress_run_file(tmp_path / "e.json", seed=42, heads=6, retained=0.9990, speedup=9.0, augment=1),
        _compress_run_file(tmp_path / "f.json", seed=42, heads=6, retained=0.9869, speedup=5.23, steps=2),
        # two recovery epochs after the last step: not the runs with one (nor the older files without the field)
        _compress_run_file(tmp_path / "i.json", seed=42, heads=6, retained=0.9967, speedup=5.1, steps=2, last=2),
        _compress_run_file(tmp_path / "j.json", seed=43, heads=6, retained=0.9869, speedup=5.2, steps=2, last=1),
        # global head allocation: seeds keep different heads per layer, grouped by the mean kept
        _compress_run_file(
            tmp_path / "g.json", seed=42, heads=[8, 5, 5], retained=0.99, speedup=5.0, allocation="global"
        ),
        _compress_run_file(
            tmp_path / "h.json", seed=43, heads=[7, 6, 5], retained=0.99, speedup=5.0, allocation="global"
        ),
    ]
    out = tmp_path / "res" / "frontier.json"
    assert mod.main([*files, "--result", str(out)]) == 0
    d = json.loads(out.read_text())
    rows = {r["config"]: r for r in d["rows"]}
    assert set(rows) == {
        "3L h6 f768",
        "3L h12 f768",
        "3L h6 f768 aug1",
        "3L h6 f768 steps2",
        "3L h6 f768 steps2 last-r2",
        "3L h6 f768 global",
    }
    assert rows["3L h6 f768 global"]["seeds"] == [42, 43]
    assert rows["3L h6 f768 steps2"]["seeds"] == [42, 43]  # pruned in steps: not the one-step runs
    assert rows["3L h6 f768 steps2 last-r2"]["seeds"] == [42]
    h6 = rows["3L h6 f768"]
    assert h6["seeds"] == [42, 43, 44] and h6["median_retained"] == 0.991 and h6["median_speedup_512"] == 5.05
    assert h6["meets_99_at_5x"] and not h6["meets_99_at_6x"]
    # one seed is not a claim, however good
    assert not rows["3L h12 f768"]["meets_99_at_5x"] and not rows["3L h6 f768 aug1"]["meets_99_at_6x"]
    assert d["cpu_kinds"] == ["avx2"] and out.with_suffix(".csv").is_file() and out.with_suffix(".png").is_file()
    assert "3L h6 f768" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit, match="not a bench_compress_run.py result"):
        mod.main([str(tmp_path / "bad.json"), "--result", str(out)])


def test_attention_gpu_targets_and_packing():
    """The GPU benchmark's summary (no GPU needed): the smallest ratio per target over fp16,
    seq 512..4096, the faster Triton form against the fastest SDPA backend that ran; and the
    packing of a prefix mask's valid tokens."""
    import importlib.util
    import sys
    from pathlib import Path

    import torch

    bench_dir = Path(__file__).resolve().parents[1] / "bench"
    spec = importlib.util.spec_from_file_location("bench_attention_gpu", bench_dir / "bench_attention_gpu.py")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(bench_dir))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(bench_dir))

    def row(seq, case, backend, ms, dtype="fp16", d=64):
        return {"dtype": dtype, "head_dim": d, "seq": seq, "case": case, "backend": backend, "median_ms": ms}

    rows = [
        row(512, "none", "triton", 1.0),
        row(512, "none", "sdpa_flash", 1.2),
        row(4096, "none", "triton", 2.0),
        row(4096, "none", "sdpa_flash", 1.6),  # 0.8x: the minimum
        row(8192, "none", "triton", 1.0),  # outside 512..4096: ignored
        row(8192, "none", "sdpa_flash", 0.1),
        row(512, "none", "triton", 9.0, dtype="bf16"),  # not fp16: ignored
        row(512, "none", "sdpa_flash", 1.0, dtype="bf16"),
        row(1024, "padding", "triton", 3.0),
        row(1024, "padding", "triton_varlen", 1.0),  # the faster form counts
        row(1024, "padding", "sdpa_efficient", 4.0),
        row(1024, "padding", "sdpa_math", 2.0),  # the fastest masked SDPA: 2.0x
        {**row(1024, "padding", "sdpa_flash", 0.0), "median_ms": None},  # refused the mask
    ]
    rows[-1].pop("median_ms")
    t = mod.targets(rows)
    assert t["triton_vs_sdpa_flash_no_mask"]["min"] == 0.8
    assert t["triton_vs_fastest_masked_sdpa"]["min"] == 2.0
    assert t["per_shape"]["padding d64 s1024 (triton_varlen)"] == 2.0

    x = torch.arange(2 * 3 * 4 * 2, dtype=torch.float32).view(2, 3, 4, 2)  # (batch, heads, seq, head_dim)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    packed = mod.pack(torch, x, mask)
    assert packed.shape == (6, 3, 2)
    assert torch.equal(packed[4], x[1, :, 0]) and torch.equal(packed[5], x[1, :, 1])


def test_bench_int8_refuses_an_unknown_recipe_before_any_work(tmp_path, capsys):
    """A misspelt --only name (the recipe names carry -emb8 since embeddings are quantised) used to
    match nothing and time only the baselines; it is refused up front with the names there are."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bench_int8", Path(__file__).resolve().parents[1] / "bench" / "bench_int8.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    known = mod.recipes()[0].name
    with pytest.raises(SystemExit) as e:
        mod.main(["--only", known, "dynamic-weights-u8s8-perchannel-qoperator", "--out", str(tmp_path / "r.json")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "no recipe named dynamic-weights-u8s8-perchannel-qoperator " in err and known in err
    assert not (tmp_path / "r.json").exists()


def test_int8_agreement_counts_label_flips_per_pair_and_sets_the_target():
    """Each INT8 backend against its own fp32, in input order whatever the batching by length."""
    import numpy as np

    from fastft.bench.agreement import int8_agreements
    from fastft.bench.report import targets
    from fastft.bench.runners import Runner

    texts = [("a " * (i % 7 + 1)).strip() + f" t{i}" for i in range(50)]
    flip_peer = set(range(0, 50, 5))  # 10 flips: 80%
    flip_fastft = {3}  # 1 flip: 98%

    class Tok:
        def __call__(self, batch, **kw):
            n = max(len(t.split()) for t in batch)
            ids = np.array([[int(t.split()[-1][1:])] * n for t in batch])
            return {"input_ids": ids, "attention_mask": np.ones_like(ids)}

    def runner(name, flips=()):
        def run(feeds):
            i = feeds["input_ids"][:, 0]
            label = (i % 2).astype(int)
            label = np.where(np.isin(i, list(flips)), 1 - label, label)
            return np.eye(2)[label]

        return Runner(name, run, None, {})

    runners = {
        "peer-fp32": runner("peer-fp32"),
        "peer-int8": runner("peer-int8", flip_peer),
        "fastft-fp32": runner("fastft-fp32"),
        "fastft-int8": runner("fastft-int8", flip_fastft),
        "hf-eager": runner("hf-eager"),
    }
    ag = int8_agreements(runners, Tok(), texts, "tiny", 16)
    assert set(ag) == {"peer-int8", "fastft-int8"}
    assert ag["peer-int8"]["label_agreement"] == 0.8 and ag["fastft-int8"]["label_agreement"] == 0.98
    (row,) = [t for t in targets([], ag) if "peer-int8's" in t["target"]]
    assert row["value"] == 0.98 and row["threshold"] == 0.8 and row["met"] is True
    ag["fastft-int8"]["label_agreement"] = 0.79
    (row,) = [t for t in targets([], ag) if "peer-int8's" in t["target"]]
    assert row["met"] is False


def test_bench_reads_a_read_only_work_directory_that_holds_its_files(tiny_model_dir, tmp_path, capsys):
    """A shared or baked-in cache that cannot be written but holds every file a run needs is read
    as it is (it was refused); one that lacks a file is refused in one line before any export."""
    from conftest import read_only

    from fastft.cli import main

    argv = ["bench", "--model", str(tiny_model_dir), "--seq", "16", "--repeats", "3", "--warmup", "0"]
    argv += ["--threads", "1", "--backends", "fastft-int8", "--json", "--no-memory", "--no-progress"]
    full, empty = tmp_path / "full", tmp_path / "empty"
    assert main([*argv, "--workdir", str(full)]) == 0
    capsys.readouterr()
    (empty / next(full.iterdir()).name).mkdir(parents=True)
    with read_only(*[d for d in (full, *full.rglob("*"), *empty.rglob("*")) if d.is_dir()]):
        assert main([*argv, "--workdir", str(full)]) == 0
        assert json.loads(capsys.readouterr().out)["results"][0]["backend"] == "fastft-int8"
        assert main([*argv, "--workdir", str(empty)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert "cannot write to" in err and "--workdir (or FASTFT_CACHE)" in err and "Traceback" not in err


def test_bench_checks_where_a_linked_result_file_leads(tiny_model_dir, tmp_path, capsys):
    """--json through a symbolic link is written where the link leads (replace_file): the check
    before any work looks there too (a link into a read-only directory passed it and failed after
    the measuring; the reverse was refused)."""
    from conftest import read_only

    from fastft.cli import main

    locked, free = tmp_path / "locked", tmp_path / "free"
    locked.mkdir()
    free.mkdir()
    (free / "r.json").symlink_to(locked / "r.json")
    argv = [
        "bench",
        "--model",
        str(tiny_model_dir),
        "--repeats",
        "3",
        "--no-progress",
        "--workdir",
        str(tmp_path / "w"),
    ]
    with read_only(locked):
        assert main([*argv, "--json", str(free / "r.json")]) == 2
    err = capsys.readouterr().err
    assert f"cannot write to {locked}" in err and not (tmp_path / "w").exists(), err


def test_a_read_only_cache_holding_the_teacher_is_read(tmp_path, monkeypatch):
    """FASTFT_CACHE read-only with the default teacher in it: found, not refused; the check that
    the cache takes files is made where a file is to be built."""
    from conftest import read_only

    from fastft.compress.context import TEACHER_ALIAS, default_teacher
    from fastft.core.errors import ModelError
    from fastft.models import cache_dir

    teacher = tmp_path / "cache" / TEACHER_ALIAS
    teacher.mkdir(parents=True)
    (teacher / "config.json").write_text("{}")
    (teacher / "fastft.json").write_text(json.dumps({"labels": ["negative", "positive"]}))
    monkeypatch.setenv("FASTFT_CACHE", str(tmp_path / "cache"))
    with read_only(tmp_path / "cache", teacher):
        assert default_teacher(progress=False) == teacher and cache_dir() == tmp_path / "cache"
        with pytest.raises(ModelError, match="FASTFT_CACHE.* cannot be written"):
            cache_dir(write=True)


def test_bench_fidelity_replots_its_results_and_refuses_bad_paths_before_any_work(tmp_path, capsys):
    """--replot draws a figure from result files without training; a --plot or --result path that
    cannot be written is refused in one line before the hour of training."""
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bench_fidelity", Path(__file__).resolve().parents[1] / "bench" / "bench_fidelity.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = [
        {"regime": g, "step": k, "movie-test_agreement": 0.9, "movie-test_retained": 0.99, "nyt_agreement": 0.88,
         "nyt_retained": 0.97}
        for g in ("train", "transfer")
        for k in (500, 1000)
    ]  # fmt: skip
    res = tmp_path / "fid.json"
    res.write_text(json.dumps({"rows": rows}))
    png = tmp_path / "fid.png"
    assert mod.main(["--replot", str(res), "--plot", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert mod.main(["--replot", str(res)]) == 2
    assert mod.main(["--replot", str(tmp_path / "none.json"), "--plot", str(png)]) == 2
    assert mod.main(["--plot", str(res / "x.png")]) == 2
    assert mod.main(["--result", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--replot needs --plot" in err and "is not a bench_fidelity result" in err
    assert "--plot" in err and "is not a file path in a directory" in err
    assert "Traceback" not in err


def test_bench_a_head_pruned_model_and_a_served_model_of_another_task(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """A `fastft compress` output is head-pruned: hf-eager rebuilt it with plain transformers and
    crashed (a traceback), the peer's optimizer cannot fuse it (refused in one line, before any
    export); a --served model of another task crashed after the whole timing loop (now refused
    first); `--json=~/r.json` (no shell expansion after "=") wrote into a folder named "~"."""
    import json
    import shutil

    import torch
    from tiny_ner import save_tiny_token_model

    from fastft.cli import main
    from fastft.models import load_classifier
    from fastft.models.pruned import prune_layer_heads

    pruned = tmp_path / "pruned"
    net = load_classifier(tiny_model_dir)
    prune_layer_heads(net.bert.encoder.layer[0], [0])
    net.config.pruned_heads = {"0": [0]}
    net.save_pretrained(pruned)
    for f in tiny_model_dir.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special", "fastft")):
            shutil.copy(f, pruned / f.name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    common = ["--seq", "16", "--repeats", "3", "--warmup", "1", "--no-memory", "--no-progress"]
    rc = main(["bench", "--model", str(pruned), "--backends", "hf-eager", "--json=~/r.json", *common])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((home / "r.json").read_text())["results"] and not (tmp_path / "~").exists()
    capsys.readouterr()
    assert main(["bench", "--model", str(pruned), "--backends", "hf-eager,peer-int8", *common]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastft: error:") and "is head-pruned" in err and len(err.strip().splitlines()) == 1
    ner = save_tiny_token_model(tmp_path / "ner")
    torch.manual_seed(0)
    argv = ["bench", "--model", str(tiny_model_dir), "--served", str(ner), "--backends", "hf-eager,fastft-fp32"]
    assert main([*argv, *common]) == 2
    assert "does not answer like --model" in capsys.readouterr().err


def test_bench_refuses_what_it_would_find_late_or_ignore(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """An outside audit's findings, each one line before any export: a --served model with fewer
    positions than a --seq (it crashed inside ONNX Runtime after measuring), without config.json
    (found after the peer pipeline), with no fastft-* backend to run it (recorded as served);
    --agreement-texts with nothing to compare (recorded as measured); a --json inside the model
    directory (it overwrote config.json) or on the --plot's file; FASTFT_ATTN_ISA unknown (refused
    at "loading fastft-fp32")."""
    import json
    import shutil

    from fastft.cli import main

    short = tmp_path / "short"
    shutil.copytree(tiny_model_dir, short)
    cfg = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": 64}))
    bare = tmp_path / "bare"
    bare.mkdir()
    base = ["bench", "--model", str(tiny_model_dir), "--workdir", str(tmp_path / "w"), "--no-memory", "--no-progress"]
    for args, words in (
        (["--served", str(short), "--seq", "100"], "--seq 100 is beyond the --served model's 64 positions"),
        (["--served", str(bare)], "is not a model directory (no config.json)"),
        (["--served", str(short), "--backends", "hf-eager"], "--backends has none"),
        (["--backends", "hf-eager", "--agreement-texts", "50"], "no INT8 backend beside its fp32"),
        (["--backends", "hf-eager", "--json", str(tiny_model_dir / "config.json")], "inside a model directory"),
        (["--backends", "hf-eager", "--json", str(tmp_path / "r.png"), "--plot", str(tmp_path / "r.png")], "one file"),
    ):
        assert main([*base, *args]) == 2, args
        assert words in capsys.readouterr().err, args
    monkeypatch.setenv("FASTFT_ATTN_ISA", "bogus")
    assert main([*base, "--backends", "hf-eager,fastft-fp32"]) == 2
    assert "FASTFT_ATTN_ISA='bogus'" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()  # nothing exported


def test_the_bench_cache_is_found_from_anywhere_and_written_whole(tmp_path, monkeypatch):
    """The peer record names its files relative to itself (a cache used from another directory or
    moved failed every rerun: "relwd/.../peer_int8.onnx does not exist"); a record naming a file
    that is gone is built again; a write that fails leaves no temporary file (two runs sharing a
    work directory once wrote one temporary file)."""
    import json

    from fastft.bench.artifacts import _peer_files
    from fastft.core.io import replace_file

    peer = tmp_path / "a" / "peer"
    peer.mkdir(parents=True)
    for f in ("fp32.onnx", "int8.onnx"):
        (peer / f).write_bytes(b"x")
    (peer / "files.json").write_text(json.dumps({"fp32_optimized": "fp32.onnx", "int8": "int8.onnx", "record": {}}))
    moved = tmp_path / "b"
    (tmp_path / "a").rename(moved)
    monkeypatch.chdir(tmp_path)
    files = _peer_files(moved / "peer" / "files.json")
    assert files["int8"] == moved / "peer" / "int8.onnx" and files["record"] == {}
    (moved / "peer" / "int8.onnx").unlink()
    assert _peer_files(moved / "peer" / "files.json") is None  # built again, not an error on every rerun

    def fail(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replace_file(tmp_path / "r.json", fail)
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []
    # a symbolic link (a result file kept elsewhere) is written through, not replaced by a file
    from fastft.bench.runner import write_result

    (tmp_path / "kept").mkdir()
    (tmp_path / "r.json").symlink_to(tmp_path / "kept" / "r.json")
    write_result(tmp_path / "r.json", {"rows": [1]}, csv_rows=[{"a": 1}])
    assert (tmp_path / "r.json").is_symlink() and json.loads((tmp_path / "kept" / "r.json").read_text())["rows"] == [1]
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["r.json"]


def test_the_recorded_command_runs_from_anywhere(monkeypatch):
    """A result file records the command as it can be run again: a console script by its name (it
    was `python3 fastft bench ...`, which runs only from the repository's root), a module with -m,
    a script with the interpreter."""
    import sys

    from fastft.bench.runner import command_line

    for argv, want in (
        (["/venv/bin/fastft", "bench", "--seq", "128"], "fastft bench --seq 128"),
        (["/repo/fastft/__main__.py", "bench"], "-m fastft bench"),
        (["bench/bench_tails.py", "--calls", "9"], "bench/bench_tails.py --calls 9"),
    ):
        monkeypatch.setattr(sys, "argv", argv)
        got = command_line()
        assert got.endswith(want) and (got == want) == (argv[0] == "/venv/bin/fastft"), got


def _row(backend, seq, p50, p99_over_p50=1.0):
    return {"backend": backend, "seq": seq, "p50_ms": p50, "p99_over_p50": p99_over_p50}


def test_targets_strict_and_inclusive_thresholds():
    """'int8 faster than fp32' needs a ratio strictly above 1; the p99/p50 target admits the bound itself."""
    from fastft.bench.report import P99_OVER_P50, targets

    rows = [_row("fastft-fp32", 128, 4.0), _row("fastft-int8", 128, 4.0, P99_OVER_P50)]
    rows += [_row("fastft-fp32", 512, 4.0), _row("fastft-int8", 512, 4.0, P99_OVER_P50)]
    out = {(t["target"], t["seq"]): t for t in targets(rows)}
    faster = out[("fastft-int8 faster than fastft-fp32 (speed-up > 1)", 512)]
    assert faster["value"] == 1.0 and faster["met"] is False
    assert out[(f"fastft-int8 p99/p50 <= {P99_OVER_P50}", 512)]["met"] is True
    assert out[(f"fastft-torch p99/p50 <= {P99_OVER_P50}", 512)]["met"] is None  # not measured


def test_targets_agreement_equal_to_the_peers_is_met():
    """INT8 label agreement equal to peer-int8's meets the agreement target."""
    from fastft.bench.report import targets

    agree = {"fastft-int8": {"label_agreement": 0.99}, "peer-int8": {"label_agreement": 0.99}}
    (t,) = [t for t in targets([], agree) if "agreement" in t["target"]]
    assert t["met"] is True and t["value"] == t["threshold"] == 0.99


def test_add_ratios_are_reference_time_over_backend_time():
    """Speed-ups are the reference's p50 over the backend's (faster backend: ratio above 1)."""
    from fastft.bench.report import add_ratios

    rows = [
        _row("hf-eager", 128, 10.0),
        _row("fastft-fp32", 128, 5.0),
        _row("peer-int8", 128, 4.0),
        _row("fastft-int8", 128, 2.0),
        _row("fastft-fp32", 512, 50.0),  # another seq: untouched
    ]
    add_ratios(rows, 128)
    assert rows[1]["speedup_vs_hf_eager"] == 2.0
    assert rows[3]["speedup_vs_hf_eager"] == 5.0
    assert rows[3]["speedup_vs_peer_int8"] == 2.0
    assert rows[3]["speedup_vs_fastft_fp32"] == 2.5
    assert "speedup_vs_hf_eager" not in rows[4]


def test_interleave_rotate_starts_each_round_one_function_later():
    """order='rotate': round r calls the functions starting from the r-th (mod n), in order."""
    from fastft.bench.runner import interleave

    calls = []
    fns = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    interleave(fns, 4, warmup=0)
    assert "".join(calls) == "abc" + "bca" + "cab" + "abc"


def test_int_list_bound_is_inclusive():
    """int_list admits values equal to lo and refuses one below it."""
    from fastft.bench.runner import int_list
    from fastft.core.errors import FastftError

    assert int_list("--seq", "1,8", 1) == [1, 8]
    with pytest.raises(FastftError, match="at least 1"):
        int_list("--seq", "8,0", 1)


def test_bench_config_needs_three_repeats():
    """--repeats 2 is refused (quantiles need samples); 3 passes the check."""
    from fastft.bench.harness import BenchConfig, _checked
    from fastft.core.errors import FastftError

    with pytest.raises(FastftError, match="at least 3"):
        _checked(BenchConfig(repeats=2, backends=["hf-eager"]))
    assert _checked(BenchConfig(repeats=3, backends=["hf-eager"])).repeats == 3


def test_int8_agreement_compares_each_int8_backend_with_its_fp32(monkeypatch):
    """label_agreement is the share of texts where the INT8 backend's label equals its fp32's."""
    import numpy as np

    from fastft.bench import agreement

    monkeypatch.setattr(agreement, "labels_of", lambda runner, tok, texts, max_length: np.asarray(runner))
    runners = {"fastft-int8": [0, 1, 1, 0], "fastft-fp32": [0, 1, 0, 0], "peer-int8": [1, 1, 1, 1]}
    out = agreement.int8_agreements(runners, None, ["t"] * 4, "validation", 16)
    assert set(out) == {"fastft-int8"}  # peer-int8 has no peer-fp32 here
    assert out["fastft-int8"]["reference"] == "fastft-fp32"
    assert out["fastft-int8"]["label_agreement"] == 0.75


def test_result_row_tail_ratio_and_throughput():
    """A row's p99_over_p50 is p99 / p50 and its throughput comes from the mean time."""
    from fastft.bench.report import result_row

    times = [0.005] * 20 + [0.010] * 70 + [0.030] * 10  # p10 5 ms, p50 10 ms, p99 30 ms, mean 11 ms
    row = result_row("fastft-fp32", 64, 2, times, {})
    assert (row["p10_ms"], row["p50_ms"], row["p99_ms"]) == (5.0, 10.0, 30.0)
    assert row["p99_over_p50"] == 3.0
    assert row["seq_per_s"] == pytest.approx(2 / 0.011, abs=0.01)
    assert row["tokens_per_s"] == pytest.approx(2 * 64 / 0.011, abs=0.1)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the speed probe's pair needs two cores")
def test_tail_speed_probe_pair_runs_one_thread_per_core():
    """OpenMP's thread count is per thread: the probe's helper must set its own, or its torch.mm
    runs on a team of OpenMP threads all pinned to the helper's one core (the pair then took 63 ms
    against 1.3 ms on either core alone, and the team's spinning slowed the timed calls)."""
    code = (
        "import os, sys\n"
        "os.environ.pop('OMP_WAIT_POLICY', None)\n"
        "sys.path.insert(0, 'bench')\n"
        "import bench_tails\n"
        "probe, cols = bench_tails.speed_probe()\n"
        "probe()\n"
        "me = os.getpid()\n"
        "tids = [int(t) for t in os.listdir('/proc/self/task')]\n"
        "helper_core = sorted(os.sched_getaffinity(0))[1]\n"
        "pinned = [t for t in tids if t != me and os.sched_getaffinity(t) == {helper_core}]\n"
        "print(len(pinned), cols)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True
    ).stdout.split()
    assert out[0] == "1", out  # the helper alone on its core, no OpenMP team beside it
