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
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from fastft.core.errors import FastftError

BACKENDS = {
    "hf-eager": "Hugging Face PyTorch, attn_implementation='eager'",
    "fastft-torch": "PyTorch via fastft.load(backend='torch'): fused attention when fastft.swap exists, else SDPA",
    "ort-plain": "plain torch.onnx export, no offline optimisation, ONNX Runtime default graph optimisation",
    "peer-fp32": "peer pipeline fp32: ORT transformers optimizer (as Optimum does it)",
    "peer-int8": "peer pipeline INT8: ORT transformers optimizer + quantize_dynamic (as Optimum does it)",
    "fastft-fp32": "fastft export model.onnx served by fastft.load",
    "fastft-int8": "fastft export --int8 model_int8.onnx served by fastft.load(int8=True)",
}
BASELINE = "hf-eager"
TARGET_SEQS = (128, 512)


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


# -- model and exports -----------------------------------------------------------------
def default_model() -> tuple[Path, str]:
    """The fine-tuned teacher if one exists, else minilm-l6 with a fresh 2-label head."""
    from fastft.models import cache_dir

    for cand in (cache_dir() / "teacher-minilm-l6-movie-snippets", Path("runs/teacher")):
        if (cand / "config.json").is_file() and (cand / "model.safetensors").is_file():
            return cand.resolve(), f"fine-tuned teacher {cand}"
    path = cache_dir() / "bench" / "minilm-l6-fresh-head"
    if not (path / "fastft.json").is_file():
        import torch

        from fastft.core.io import atomic_output_dir
        from fastft.models import load_classifier, load_tokenizer, write_meta

        torch.manual_seed(0)
        net = load_classifier("minilm-l6", labels=["negative", "positive"])
        with atomic_output_dir(path, overwrite=True) as tmp:
            net.save_pretrained(tmp, safe_serialization=True)
            load_tokenizer("minilm-l6").save_pretrained(tmp)
            write_meta(
                tmp,
                {
                    "format": 1,
                    "task": "sequence-classification",
                    "labels": ["negative", "positive"],
                    "base_model": "minilm-l6",
                    "max_length": 512,
                    "note": "fresh head, for benchmarks",
                },
            )
    return path, "minilm-l6 with a fresh classification head (latency does not depend on the head)"


def _fingerprint(model_dir: Path) -> str:
    import fastft

    h = hashlib.sha1(str(model_dir.resolve()).encode())
    for f in sorted(model_dir.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(fastft.__version__.encode())
    return h.hexdigest()[:12]


def work_dir(model_dir: Path, root: str | None = None) -> Path:
    from fastft.models import cache_dir

    base = Path(root) if root else cache_dir() / "bench"
    return base / f"{model_dir.name}-{_fingerprint(model_dir)}"


def is_export_dir(model_dir: Path) -> bool:
    from fastft.models import read_meta

    return (
        (model_dir / "model.onnx").is_file()
        and (model_dir / "model_int8.onnx").is_file()
        and isinstance(read_meta(model_dir).get("onnx"), dict)
    )


def prepare(model_dir: Path, backends: list[str], workdir: Path, log=print, served: Path | None = None) -> dict:
    """Export what the backends need into ``workdir`` (reused when already there): {what: path}."""
    art: dict[str, Path] = {"model_dir": model_dir}
    workdir.mkdir(parents=True, exist_ok=True)
    if {"fastft-fp32", "fastft-int8"} & set(backends):
        out = workdir / "fastft"
        if served is not None:  # e.g. a `fastft compress` output: the product served against the baselines
            for b, f in (("fastft-fp32", "model.onnx"), ("fastft-int8", "model_int8.onnx")):
                if b in backends and not (served / f).is_file():
                    raise FastftError(f"--served {served} has no {f} (needed by {b})")
            out = served
        elif is_export_dir(model_dir):  # --model is already a `fastft export --int8` directory: serve its files
            out = model_dir
        elif not ((out / "model.onnx").is_file() and (out / "model_int8.onnx").is_file()):
            from fastft.export import export

            log(f"exporting {model_dir} with fastft export --int8 -> {out}")
            # parity is what `fastft export` checks; here the logits are compared with hf-eager instead
            export(model_dir, out, int8=True, overwrite=True, validate=False)
        art["fastft"] = out
    if {"peer-fp32", "peer-int8"} & set(backends):
        done = workdir / "peer" / "files.json"
        if done.is_file():
            files = json.loads(done.read_text())
        else:
            from fastft.export.peer import peer_pipeline

            log(f"running the peer pipeline (ORT transformers optimizer + quantize_dynamic) -> {done.parent}")
            files = json.loads(json.dumps(peer_pipeline(model_dir, done.parent), default=str))
            done.write_text(json.dumps(files, indent=1))
        art["peer-fp32"], art["peer-int8"] = Path(files["fp32_optimized"]), Path(files["int8"])
        if files.get("plain") and Path(files["plain"]).is_file():
            art["peer-plain"] = Path(files["plain"])
        art["peer-record"] = files.get("record")
    if "ort-plain" in backends:
        out = workdir / "plain" / "model.onnx"
        if "peer-plain" in art:  # the peer pipeline's first step is the same plain export
            out = art["peer-plain"]
        elif not out.is_file():
            from fastft.export.peer import plain_export

            log(f"plain ONNX export -> {out}")
            out.parent.mkdir(parents=True, exist_ok=True)
            plain_export(model_dir, out)
        art["ort-plain"] = out
    return art


# -- runners ---------------------------------------------------------------------------
class Runner:
    """One backend, ready to run: ``run(prepare(feeds))`` executes the model once.

    ``prepare`` turns numpy feeds into what the backend takes (torch tensors, the ORT
    session's inputs) outside the timed region.
    """

    def __init__(self, name: str, run, file: Path | None, info: dict, prepare=None):
        self.name, self.run, self.file, self.info = name, run, file, info
        self.prepare = prepare or (lambda feeds: feeds)

    def file_size_mb(self) -> float | None:
        if self.file is None:
            return None
        files = [self.file]
        if self.file.suffix == ".onnx":  # external data next to the graph
            files += [f for f in self.file.parent.glob(self.file.name + "*data") if f.is_file()]
        return round(sum(f.stat().st_size for f in files if f.is_file()) / 2**20, 2)


def make_runner(name: str, art: dict[str, Path], threads: int) -> Runner:
    import torch

    torch.set_num_threads(threads)
    if name == "hf-eager":
        from transformers import AutoModelForSequenceClassification

        net = AutoModelForSequenceClassification.from_pretrained(
            str(art["model_dir"]), attn_implementation="eager", trust_remote_code=False
        )
        net = net.float().eval()
        return Runner(name, _torch_run(net), _weights(art["model_dir"]), {"attention": "eager"}, _to_torch)
    if name == "fastft-torch":
        import fastft

        p = fastft.load(art["model_dir"], backend="torch", threads=threads, fused_attention=None, warm_up=False)
        return Runner(name, _torch_run(p.model), _weights(art["model_dir"]), {"attention": p.attention}, _to_torch)
    if name in ("fastft-fp32", "fastft-int8"):
        import fastft

        p = fastft.load(art["fastft"], threads=threads, int8=name.endswith("int8"), warm_up=False)
        info = p.info()
        return Runner(
            name,
            lambda feeds: p.logits_from_ids(**feeds),
            p.onnx_file,
            {k: info[k] for k in ("threads", "spinning", "graph_optimization")},
        )
    if name in ("ort-plain", "peer-fp32", "peer-int8"):
        from fastft.runtime.session import create_session, session_options

        sess = create_session(art[name], session_options(threads=threads, spinning=False, level="all"))
        inputs = [i.name for i in sess.get_inputs()]
        out = sess.get_outputs()[0].name

        def run(feeds):
            return sess.run([out], feeds)[0]

        return Runner(
            name,
            run,
            art[name],
            {"threads": threads, "spinning": False, "graph_optimization": "all"},
            lambda feeds: {k: v for k, v in feeds.items() if k in inputs},
        )
    raise FastftError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")


def _weights(model_dir: Path) -> Path | None:
    for n in ("model.safetensors", "pytorch_model.bin"):
        if (model_dir / n).is_file():
            return model_dir / n
    return None


def _to_torch(feeds):
    import torch

    return {k: torch.from_numpy(v) for k, v in feeds.items()}


def _torch_run(net):
    import torch

    def run(feeds):
        with torch.inference_mode():
            return net(**feeds).logits.numpy()

    return run


# -- inputs ----------------------------------------------------------------------------
_FALLBACK_TEXT = (
    "a sharp, funny and surprisingly moving film about growing up, with a cast that makes every "
    "scene count, even when the script wanders into cliches and the ending drags on too long. "
)


def bench_texts() -> list[str]:
    try:
        from fastft.data import load_data

        return list(load_data("movie-snippets").train.texts[:400])
    except Exception:  # noqa: BLE001 - any data problem: fall back to built-in text
        return [_FALLBACK_TEXT]


def make_inputs(tokenizer, batch: int, seq: int, texts: list[str]) -> dict[str, np.ndarray]:
    """batch x seq token ids of real text ([CLS] ... [SEP]), full attention mask."""
    body = tokenizer(" ".join(texts), add_special_tokens=False, verbose=False)["input_ids"]
    while len(body) < batch * seq:
        body = body + body
    cls = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    rows = [[cls] + body[r * seq : (r + 1) * seq - 2] + [sep] for r in range(batch)]
    ids = np.asarray(rows, dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


# -- memory probe (subprocess) ---------------------------------------------------------
PROBE_METHOD = (
    "one subprocess imports torch, onnxruntime and the model's transformers class, then forks a "
    "child per backend; peak = the child's RSS high-water mark (VmHWM, reset via /proc/self/clear_refs "
    "after the fork) minus its RSS before loading; fastft-* include their Predictor's tokenizer"
)


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])  # kB
    return out


def _probe_one(name: str, art: dict[str, Path], threads: int, feeds: dict[int, dict]) -> dict:
    """In a fresh (forked) process: RSS after load and peak RSS per sequence length, above the baseline."""
    import gc

    import torch

    torch.set_num_threads(threads)
    (torch.ones(64, 64) @ torch.ones(64, 64)).sum()  # start the thread pool: not the model's memory
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the RSS high-water mark
        reset = True
    except OSError:
        reset = False
    base = _status()["VmRSS"]
    runner = make_runner(name, art, threads)
    loaded = _status()["VmRSS"]
    peak = {}
    for s in sorted(feeds):
        prepared = runner.prepare(feeds[s])
        for _ in range(2):
            runner.run(prepared)
        peak[str(s)] = round((_status()["VmHWM"] - base) / 1024, 1)
    return {"load_rss_mb": round((loaded - base) / 1024, 1), "peak_rss_mb": peak, "hwm_reset": reset}


def probe_memory(names: list[str], art: dict[str, Path], threads: int, batch: int, seqs: list[int]) -> dict:
    """{backend: probe result}: shared imports once, then one forked child per backend."""
    import onnxruntime  # noqa: F401  imports are part of the baseline
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    from fastft.models import load_tokenizer

    tok = load_tokenizer(art["model_dir"])
    feeds = {s: make_inputs(tok, batch, s, [_FALLBACK_TEXT]) for s in seqs}
    try:  # transformers 5 modeling modules weigh ~200 MB: library code, not the model
        config = AutoConfig.from_pretrained(str(art["model_dir"]), trust_remote_code=False)
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(config)]
    except (KeyError, ValueError, OSError):
        pass
    out = {}
    for name in names:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.close(r)
            try:
                res = _probe_one(name, art, threads, feeds)
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                res = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
            with os.fdopen(w, "w") as f:
                f.write(json.dumps(res))
            os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            data = f.read()
        os.waitpid(pid, 0)
        out[name] = json.loads(data) if data else {"error": "probe process died"}
    return out


def run_memory_probes(names: list[str], art: dict[str, Path], threads: int, batch: int, seqs: list[int]) -> dict:
    """:func:`probe_memory` in a fresh subprocess (so this process's own memory does not count)."""
    arg = json.dumps(
        {
            "names": names,
            "art": {k: str(v) for k, v in art.items() if isinstance(v, Path)},
            "threads": threads,
            "batch": batch,
            "seqs": seqs,
        }
    )
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "fastft.bench.harness", "--probe", arg],
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {n: {"error": "memory probe timed out"} for n in names}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or ["failed"])[-1][:300]
        return {n: {"error": err} for n in names}
    return json.loads(lines[-1])


# -- the benchmark ---------------------------------------------------------------------
def run_bench(cfg: BenchConfig, log=None) -> dict:
    """Measure every backend of ``cfg`` on every sequence length; the result-file payload."""
    from tqdm.auto import tqdm

    from fastft.bench import quantiles
    from fastft.core.system import physical_cores
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
    max_pos = _max_positions(model_dir)
    if cfg.seqs is None:
        cfg = replace(cfg, seqs=[min(512, max_pos)])
    too_long = [s for s in cfg.seqs if s > max_pos]
    if too_long:
        raise FastftError(f"--seq {too_long[0]} is beyond the model's {max_pos} positions")
    served = None
    if cfg.served:
        served = Path(cfg.served).expanduser()
        if not served.is_dir():
            raise FastftError(f"--served {served} is not a directory")
    art = prepare(model_dir, cfg.backends, work_dir(model_dir, cfg.workdir), log, served)
    tok = load_tokenizer(model_dir)

    runners = {}
    for name in cfg.backends:
        log(f"loading {name}")
        runners[name] = make_runner(name, art, threads)
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
            q = quantiles(times[name])
            row = {
                "backend": name,
                "seq": seq,
                "batch": cfg.batch,
                **{k: round(v, 4) if isinstance(v, float) else v for k, v in q.items()},
            }
            row["p99_over_p50"] = round(q["p99_ms"] / q["p50_ms"], 3)
            row["seq_per_s"] = round(cfg.batch / (q["mean_ms"] / 1e3), 2)
            row["tokens_per_s"] = round(cfg.batch * seq / (q["mean_ms"] / 1e3), 1)
            if BASELINE in outs:
                row["max_abs_logit_diff_vs_hf_eager"] = float(np.abs(outs[name] - outs[BASELINE]).max())
                row["label_agreement_vs_hf_eager"] = float((outs[name].argmax(-1) == outs[BASELINE].argmax(-1)).mean())
            results.append(row)
        _add_ratios(results, seq)
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
        "targets": targets(results),
    }


def _checked(cfg: BenchConfig) -> BenchConfig:
    unknown = [b for b in cfg.backends if b not in BACKENDS]
    if unknown:
        raise FastftError(f"unknown backend {unknown[0]!r}; choose from {', '.join(BACKENDS)}")
    if not cfg.backends:
        raise FastftError("no backends to measure")
    if len(set(cfg.backends)) != len(cfg.backends):
        raise FastftError("a backend is listed twice")
    if cfg.seqs is not None and (not cfg.seqs or any(s < 8 for s in cfg.seqs)):
        raise FastftError("--seq values must be at least 8 tokens")
    if cfg.batch < 1:
        raise FastftError("--batch must be at least 1")
    if cfg.repeats < 3:
        raise FastftError("--repeats must be at least 3 (quantiles need samples)")
    if cfg.warmup < 0:
        raise FastftError("--warmup must be 0 or more")
    if cfg.threads is not None and cfg.threads < 1:
        raise FastftError("--threads must be at least 1")
    from fastft.core.checks import check_float

    check_float("gap_ms", cfg.gap_ms, lo=0)
    return cfg


def _max_positions(model_dir: Path) -> int:
    cfg = json.loads((model_dir / "config.json").read_text())
    n = int(cfg.get("max_position_embeddings") or 512)
    return n - 2 if cfg.get("model_type") in ("roberta", "xlm-roberta", "camembert") else n


def _add_ratios(results: list[dict], seq: int) -> None:
    rows = {r["backend"]: r for r in results if r["seq"] == seq}
    base = rows.get(BASELINE)
    for r in rows.values():
        if base:
            r["speedup_vs_hf_eager"] = round(base["p50_ms"] / r["p50_ms"], 3)
    for ref, key in (("peer-int8", "speedup_vs_peer_int8"), ("fastft-fp32", "speedup_vs_fastft_fp32")):
        if "fastft-int8" in rows and ref in rows:
            rows["fastft-int8"][key] = round(rows[ref]["p50_ms"] / rows["fastft-int8"]["p50_ms"], 3)


def targets(results: list[dict]) -> list[dict]:
    """Where the issue's speed targets stand (met: None when not measured in this run)."""

    def p50(backend, seq):
        for r in results:
            if r["backend"] == backend and r["seq"] == seq:
                return r["p50_ms"], r
        return None, None

    out = []

    def ratio_target(name, num_backend, den_backend, seq, threshold, strict=False):
        num, _ = p50(num_backend, seq)  # the slower reference
        den, _ = p50(den_backend, seq)
        value = round(num / den, 3) if num and den else None
        met = None if value is None else (value > threshold if strict else value >= threshold)
        out.append({"target": name, "seq": seq, "value": value, "threshold": threshold, "met": met})

    for seq in TARGET_SEQS:
        ratio_target("fastft-fp32 speed-up over hf-eager >= 1.15", "hf-eager", "fastft-fp32", seq, 1.15)
    for seq in TARGET_SEQS:
        ratio_target(
            "fastft-int8 faster than fastft-fp32 (speed-up > 1)", "fastft-fp32", "fastft-int8", seq, 1.0, strict=True
        )
    for seq in TARGET_SEQS:
        ratio_target("fastft-int8 speed-up over peer-int8 >= 1.3", "peer-int8", "fastft-int8", seq, 1.3)
    for backend in ("fastft-fp32", "fastft-int8", "fastft-torch"):
        _, row = p50(backend, 512)
        value = row["p99_over_p50"] if row else None
        out.append(
            {
                "target": f"{backend} p99/p50 <= 1.3",
                "seq": 512,
                "value": value,
                "threshold": 1.3,
                "met": None if value is None else value <= 1.3,
            }
        )
    return out


# -- text table ------------------------------------------------------------------------
def format_table(payload: dict) -> str:
    s = payload["settings"]
    served = f"; fastft-* serve {payload['served_model']}" if payload.get("served_model") else ""
    lines = [
        f"model {payload['model']} ({payload['model_note']}){served}",
        (
            f"batch {s['batch']}, threads {s['threads']}, {s['repeats']} interleaved repeats (random order) "
            f"after {s['warmup']} warm-up runs; ORT spinning off, sequential"
        ),
    ]
    cols = ["backend", "seq", "p50 ms", "p90 ms", "p99 ms", "p99/p50", "seq/s", "tok/s", "vs HF", "peak MB", "file MB"]
    rows = [cols]
    for r in payload["results"]:
        b = payload["backends"][r["backend"]]
        rows.append(
            [
                r["backend"],
                str(r["seq"]),
                f"{r['p50_ms']:.2f}",
                f"{r['p90_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['p99_over_p50']:.2f}",
                f"{r['seq_per_s']:.1f}",
                f"{r['tokens_per_s']:.0f}",
                f"{r['speedup_vs_hf_eager']:.2f}x" if "speedup_vs_hf_eager" in r else "-",
                f"{r['peak_rss_mb']:.0f}" if isinstance(r.get("peak_rss_mb"), (int, float)) else "-",
                f"{b['file_size_mb']:.1f}" if b.get("file_size_mb") is not None else "-",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    if "fastft-torch" in payload["backends"]:
        lines.append(f"fastft-torch attention: {payload['backends']['fastft-torch'].get('attention')}")
    for t in payload["targets"]:
        if t["met"] is None:
            continue
        lines.append(f"target {'MET ' if t['met'] else 'MISS'}  {t['target']} at seq {t['seq']}: {t['value']}")
    return "\n".join(lines)


def _probe_main(arg: str) -> int:
    spec = json.loads(arg)
    art = {k: Path(v) for k, v in spec["art"].items()}
    print(json.dumps(probe_memory(spec["names"], art, spec["threads"], spec["batch"], spec["seqs"])))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--probe":
        sys.exit(_probe_main(sys.argv[2]))
    sys.exit("usage: python -m fastft.bench.harness --probe JSON (internal: memory probe of one backend)")
