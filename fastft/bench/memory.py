"""Peak memory of each ``fastft bench`` backend, measured in a subprocess.

One subprocess imports the shared libraries once, then forks a child per backend; the child's
RSS high-water mark above its RSS before loading is the backend's peak.

    python -m fastft.bench.memory --probe JSON    # internal: what run_memory_probes starts
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fastft.bench.runners import FALLBACK_TEXT, make_inputs, make_runner
from fastft.core.errors import first_line

PROBE_METHOD = (
    "one subprocess imports torch, onnxruntime and the model's transformers class, then forks a "
    "child per backend; peak = the child's RSS high-water mark (VmHWM, reset via /proc/self/clear_refs "
    "after the fork) minus its RSS before loading; fastft-* include their Predictor's tokenizer"
)


def rss_status() -> dict[str, int]:
    """This process's resident memory now (``VmRSS``) and its high-water mark (``VmHWM``), in kB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])  # kB
    return out


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark to its RSS now (Linux >= 4.0); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _probe_one(name: str, art: dict[str, Path], threads: int, feeds: dict[int, dict]) -> dict:
    """In a fresh (forked) process: RSS after load and peak RSS per sequence length, above the baseline."""
    import gc

    import torch

    torch.set_num_threads(threads)
    (torch.ones(64, 64) @ torch.ones(64, 64)).sum()  # start the thread pool: not the model's memory
    gc.collect()
    reset = reset_peak_rss()
    base = rss_status()["VmRSS"]
    runner = make_runner(name, art, threads)
    loaded = rss_status()["VmRSS"]
    peak = {}
    for s in sorted(feeds):
        prepared = runner.prepare(feeds[s])
        for _ in range(2):
            runner.run(prepared)
        peak[str(s)] = round((rss_status()["VmHWM"] - base) / 1024, 1)
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
    feeds = {s: make_inputs(tok, batch, s, [FALLBACK_TEXT]) for s in seqs}
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
                res = {"error": f"{type(exc).__name__}: {first_line(exc)}"}
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
            [sys.executable, "-m", "fastft.bench.memory", "--probe", arg],
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


def _probe_main(arg: str) -> int:
    spec = json.loads(arg)
    art = {k: Path(v) for k, v in spec["art"].items()}
    print(json.dumps(probe_memory(spec["names"], art, spec["threads"], spec["batch"], spec["seqs"])))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--probe":
        sys.exit(_probe_main(sys.argv[2]))
    sys.exit("usage: python -m fastft.bench.memory --probe JSON (internal: memory probe of one backend)")
