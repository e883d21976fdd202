"""The harness behind ``fastft bench``: every backend, interleaved, on the same inputs.

    payload = run_bench(BenchConfig(seqs=[128, 512], batch=1, threads=2, repeats=100))

Backends (``BACKENDS``): HF PyTorch eager, fastft's torch path, plain ONNX Runtime, the peer
pipeline (ORT transformers optimizer + dynamic INT8, as Optimum does it) and fastft's ONNX
models. Each repetition runs every backend once, in a new random order each time, so load
from other processes hits all of them alike and no backend always runs right after torch
(whose OpenMP threads spin for a while after each op); a short idle gap precedes each run. Latency is model execution on
pre-tokenized inputs (batch x seq tokens of real text, full attention mask); peak memory
is measured in a subprocess, one forked child per backend (RSS high-water mark above the
imports).

The pieces: :mod:`fastft.bench.artifacts` (the model and the exported files),
:mod:`fastft.bench.runners` (one runner per backend, the inputs), :mod:`fastft.bench.memory`
(the forked RSS probes), :mod:`fastft.bench.report` (rows, ratios, targets, the table).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from fastft.bench.agreement import INT8_PAIRS, agreement_texts, int8_agreements
from fastft.bench.artifacts import default_model, prepare, work_dir
from fastft.bench.memory import PROBE_METHOD, run_memory_probes
from fastft.bench.report import add_ratios, format_table, result_row, targets
from fastft.bench.runners import BACKENDS, bench_texts, make_inputs, make_runner
from fastft.core.checks import MAX_REPEATS, check_bool_fields, check_float, check_int, check_threads
from fastft.core.errors import FastftError
from fastft.core.io import read_json_object
from fastft.core.schema import SEQUENCE_CLASSIFICATION, read_meta
from fastft.core.system import physical_cores
from fastft.data.collate import model_max_positions
from fastft.models.task import model_task

__all__ = ["BACKENDS", "BenchConfig", "format_table", "run_bench"]


@dataclass
class BenchConfig:
    model: str | None = None  # model directory; None: the fine-tuned teacher, else minilm-l6
    seqs: list[int] | None = None  # None: [512], or the model's maximum if shorter
    batch: int = 1
    threads: int | None = None  # intra-op threads of torch and every ORT session [physical cores]
    backends: list[str] = field(default_factory=lambda: list(BACKENDS))
    repeats: int = 100
    warmup: int = 5
    memory: bool = True  # per-backend memory probe in a subprocess
    gap_ms: float = 5.0  # idle time before each timed run: spinning OpenMP threads of the previous backend settle
    seed: int = 0  # of the per-repetition backend order
    workdir: str | None = None  # where exports are cached [cache_dir()/bench]
    served: str | None = None  # fastft-fp32/-int8 serve this export/compress dir instead of exporting --model
    progress: bool = True
    agreement: int = 1000  # validation texts each INT8 backend labels against its fp32 (0: skip)


def _check_served_fits(model_dir: Path, config: dict, served: Path) -> None:
    """--served is compared with --model's outputs (agreement, the logit check): the same task and
    labels, output by output (:func:`fastft.models.task.head_labels`; names compared where both
    name them), checked before any timing."""
    from fastft.models.task import generic_labels, head_labels

    def labels(path: Path, cfg: dict) -> list[str]:
        return head_labels(path, read_meta(path), cfg)

    theirs = read_json_object(served / "config.json") if (served / "config.json").is_file() else None
    mine_task, served_task = model_task(model_dir), model_task(served)
    mine_labels = labels(model_dir, config)
    served_labels = labels(served, theirs) if theirs is not None else None

    differ = served_labels is not None and (
        len(served_labels) != len(mine_labels)
        or not generic_labels(served_labels)
        and not generic_labels(mine_labels)
        and served_labels != mine_labels
    )
    if mine_task != served_task or differ:
        shown = ", ".join(served_labels or [])[:60] or "?"
        raise FastftError(
            f"--served {served} ({served_task}, labels {shown}) does not answer like --model "
            f"{model_dir} ({mine_task}, labels {', '.join(mine_labels)[:60]}): serve a model of the same task "
            "and labels, in the same order"
        )


def run_bench(cfg: BenchConfig, log=None) -> dict:
    """Measure every backend of ``cfg`` on every sequence length; the result-file payload."""
    from tqdm.auto import tqdm

    from fastft.models import load_tokenizer

    log = log or (lambda msg: print(f"fastft bench: {msg}", file=sys.stderr))
    cfg = _checked(cfg)
    threads = cfg.threads or physical_cores()
    if cfg.model:
        from fastft.models import resolve_model

        model_dir, note = Path(resolve_model(cfg.model)), "given with --model"
        if not isinstance(model_dir, Path) or not model_dir.is_dir():
            raise FastftError(f"--model must be a local model directory (got {cfg.model!r})")
    else:
        model_dir, note = default_model()
    config = read_json_object(model_dir / "config.json")
    max_pos = model_max_positions(SimpleNamespace(**config)) or 512
    served, limit = None, (max_pos, "model's")
    if cfg.served:
        served = Path(cfg.served).expanduser()
        if not served.is_dir():
            raise FastftError(f"--served {served} is not a directory")
        if not (served / "config.json").is_file():  # (found only after the exports and the peer pipeline)
            raise FastftError(f"--served {served} is not a model directory (no config.json)")
        if not any(b.startswith("fastft-") for b in cfg.backends):
            raise FastftError(f"--served is what the fastft-* backends run, and --backends has none: {served}")
        _check_served_fits(model_dir, config, served)
        served_pos = model_max_positions(SimpleNamespace(**read_json_object(served / "config.json"))) or 512
        if served_pos < max_pos:  # every --seq runs on both: the shorter one bounds them
            limit = (served_pos, "--served model's")
    if cfg.seqs is None:
        cfg = replace(cfg, seqs=[min(512, limit[0])])
    too_long = [s for s in cfg.seqs if s > limit[0]]
    if too_long:
        raise FastftError(f"--seq {too_long[0]} is beyond the {limit[1]} {limit[0]} positions")
    check_memory(config, cfg.batch, max(cfg.seqs))
    pairs = any(q in cfg.backends and f in cfg.backends for q, f in INT8_PAIRS)
    one_label = ({model_task(model_dir)} | ({model_task(served)} if served else set())) == {SEQUENCE_CLASSIFICATION}
    if cfg.agreement and not (pairs and one_label):  # nothing to compare: recorded as measured, it was not
        if cfg.agreement != BenchConfig.agreement:
            why = "no INT8 backend beside its fp32 in --backends" if not pairs else "a model that labels tokens"
            raise FastftError(f"--agreement-texts compares INT8 labels with fp32's, and this run has {why}")
        cfg = replace(cfg, agreement=0)
    peers = [b for b in cfg.backends if b.startswith("peer-")]
    if peers and config.get("pruned_heads"):
        raise FastftError(
            f"{model_dir} is head-pruned (config.json pruned_heads), which the peer's ONNX Runtime optimizer "
            f"cannot fuse; leave out {', '.join(peers)} with --backends, or bench its teacher with --served "
            f"{model_dir}"
        )
    art = prepare(model_dir, cfg.backends, work_dir(model_dir, cfg.workdir), log, served)
    tok = load_tokenizer(model_dir)

    runners = {}
    for name in cfg.backends:
        log(f"loading {name}")
        runners[name] = make_runner(name, art, threads)
    agreements = None
    # one label per text: sequence classifiers only, --served included (fastft-* run that model)
    if cfg.agreement:
        held_out, source = agreement_texts(model_dir, cfg.agreement)
        length = min(int(read_meta(model_dir).get("max_length") or 128), limit[0])  # (--served's may be fewer)
        if held_out:
            log(f"INT8 label agreement with fp32 on {len(held_out)} texts of {source}")
            agreements = int8_agreements(runners, tok, held_out, source, length)
    texts = bench_texts()
    rng = np.random.default_rng(cfg.seed)

    results, total = [], len(cfg.seqs) * (cfg.repeats + cfg.warmup) * len(cfg.backends)
    bar = tqdm(total=total, desc="bench", unit="run", file=sys.stderr, disable=not cfg.progress, leave=False)
    for seq in cfg.seqs:
        feeds = make_inputs(tok, cfg.batch, seq, texts)
        outs, prepared = {}, {}
        for name, r in runners.items():
            prepared[name] = r.prepare(feeds)
            outs[name] = np.asarray(r.run(prepared[name]), dtype=np.float32)
            for _ in range(cfg.warmup):
                r.run(prepared[name])
                bar.update()
        times = {name: [] for name in runners}
        names = list(runners)
        for _ in range(cfg.repeats):
            # a new order each repetition: no backend always runs right after another
            for name in [names[i] for i in rng.permutation(len(names))]:
                run, x = runners[name].run, prepared[name]
                if cfg.gap_ms:
                    time.sleep(cfg.gap_ms / 1e3)
                t0 = time.perf_counter()
                run(x)
                times[name].append(time.perf_counter() - t0)
                bar.update()
        for name in names:
            results.append(result_row(name, seq, cfg.batch, times[name], outs))
        add_ratios(results, seq)
    bar.close()

    backends = {}
    for name, r in runners.items():
        backends[name] = {
            "description": BACKENDS[name],
            "file": str(r.file) if r.file else None,
            "file_size_mb": r.file_size_mb(),
            **r.info,
        }
    del runners
    if cfg.memory:
        log(f"memory probe ({', '.join(cfg.backends)})")
        probes = run_memory_probes(cfg.backends, art, threads, cfg.batch, cfg.seqs)
        for name in cfg.backends:
            backends[name]["memory"] = {**probes.get(name, {"error": "no result"}), "method": PROBE_METHOD}
            if "error" in backends[name]["memory"]:  # (the table shows "-": said once here, not silently)
                log(f"memory probe of {name} failed ({backends[name]['memory']['error']}): no peak RSS for it")
        for row in results:
            mem = backends[row["backend"]]["memory"]
            row["peak_rss_mb"] = mem.get("peak_rss_mb", {}).get(str(row["seq"]))
    if art.get("peer-record"):
        for name in ("peer-fp32", "peer-int8"):
            if name in backends:
                backends[name]["peer_pipeline"] = art["peer-record"]
    return {
        "benchmark": "fastft bench",
        "model": str(model_dir),
        "model_note": note,
        "task": model_task(model_dir),
        "served_model": str(served) if served else None,  # --served: fastft-* run a different (compressed) model
        "settings": {
            **asdict(cfg),
            "threads": threads,
            "ort_spinning": False,
            "ort_execution": "sequential",
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
            "timing": "model execution on pre-tokenized batch x seq inputs; each repetition runs every "
            "backend once in a new random order, after gap_ms idle",
        },
        "backends": backends,
        "results": results,
        "int8_agreement": agreements,
        "targets": targets(results, agreements),
    }


def _checked(cfg: BenchConfig) -> BenchConfig:
    check_bool_fields(cfg)
    for flag, value in (("--model", cfg.model), ("--served", cfg.served), ("--workdir", cfg.workdir)):
        if value is not None and not str(value).strip():
            raise FastftError(f"{flag} is empty: give a directory, or leave {flag} out for its default")
    unknown = [b for b in cfg.backends if b not in BACKENDS]
    if unknown:
        raise FastftError(f"unknown backend {unknown[0]!r}; choose from {', '.join(BACKENDS)}")
    if not cfg.backends:
        raise FastftError("no backends to measure")
    if len(set(cfg.backends)) != len(cfg.backends):
        raise FastftError("a backend is listed twice")
    if cfg.seqs is not None and (not cfg.seqs or any(s < 8 for s in cfg.seqs)):
        raise FastftError("--seq values must be at least 8 tokens")
    if cfg.seqs is not None and len(set(cfg.seqs)) != len(cfg.seqs):
        raise FastftError("a --seq value is listed twice")
    if cfg.batch < 1:
        raise FastftError("--batch must be at least 1")
    if cfg.repeats < 3:
        raise FastftError("--repeats must be at least 3 (quantiles need samples)")
    check_int("--repeats", cfg.repeats, hi=MAX_REPEATS)
    check_int("--warmup", cfg.warmup, lo=0, hi=MAX_REPEATS)
    if cfg.agreement < 0:
        raise FastftError("--agreement-texts must be 0 or more")
    check_threads("--threads", cfg.threads)
    check_float("--gap-ms", cfg.gap_ms, lo=0, hi=10_000)
    if any(b.startswith("fastft-") for b in cfg.backends):
        from fastft import _native

        _native.forced_isa()  # FASTFT_ATTN_ISA checked before any work (it failed at "loading fastft-fp32")
    return cfg


def check_memory(cfg: dict, batch: int, seq: int) -> None:
    """Refuse, before any work, a --batch x --seq whose activations alone would not fit in the
    memory this machine has free (the hf-eager backend's one layer: ~24 hidden-wide tensors and
    3 attention-score tensors per token; the other backends need less). ``cfg``: config.json."""
    from fastft.core.system import available_memory

    hidden, heads = int(cfg.get("hidden_size") or 768), int(cfg.get("num_attention_heads") or 12)
    need = 4 * batch * seq * (24 * hidden + 3 * heads * seq)
    free = available_memory()
    if free is not None and need > 0.8 * free:
        raise FastftError(
            f"--batch {batch} at --seq {seq} needs about {need / 2**30:.1f} GiB of activations and this machine "
            f"has {free / 2**30:.1f} GiB free: lower --batch or --seq"
        )
