"""HTTP serving benchmark: ``fastft serve`` against the servers people write, in one run.

    python bench/bench_serve.py runs/compressed                         # full run (~15 min + soak)
    python bench/bench_serve.py runs/compressed --phase-s 4 --soak-s 60 --result /tmp/s.json   # quick look

Servers (each its own process; the load generator is this process, an aiohttp client; all
traffic on 127.0.0.1):
  fastft        fastft serve DIR (dynamic batching)
  fastft-nobatch  (a) fastft serve DIR --no-batching
  pipeline      (b) FastAPI + transformers pipeline, one request per call (bench/serve_baselines.py)
  ort           (c) FastAPI + ONNX Runtime per request on the same ONNX file (bench/serve_baselines.py)
  ray           (d) fastft serve DIR --ray --replicas 2 (Ray Serve, @serve.batch; needs fastft[ray])

All servers are started first and stay up; every phase then runs against each server in
turn (a new random order per phase), so load from other processes hits all alike:
closed loop at concurrency 1, 4, 16, 64 (one real dataset text per request, cycling through
the movie-snippets texts with their real length mix), then open loop with Poisson arrivals at
25/50/70/90% of each server's own closed-loop peak (latency counted from the scheduled
arrival, so a late server is not excused). Then a soak of fastft at 70% of its peak.
Before the servers start, the in-process ceiling: fastft.load(DIR).predict in this machine's
best configurations, measured in a subprocess.

Writes bench/results/serve_<model>.json (every row, machine, versions, load average at start
and end, the exact command) and .png (latency against throughput).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fastft.bench.runner import machine_info, write_result  # first: notes the load at the start

ROOT = Path(__file__).resolve().parents[1]
SERVERS = {
    "fastft": "fastft serve DIR (dynamic batching, cost-table length grouping)",
    "fastft-nobatch": "(a) fastft serve DIR --no-batching: one ONNX Runtime call per request",
    "pipeline": "(b) FastAPI + transformers pipeline, per request (what users write)",
    "ort": "(c) FastAPI + ONNX Runtime per request on the same ONNX file (the Optimum-style setup)",
    "ray": "(d) fastft serve DIR --ray --replicas 2 (Ray Serve deployment, @serve.batch, Ray's HTTP proxy)",
}
CONCURRENCY = (1, 4, 16, 64)
OPEN_FRACTIONS = (0.25, 0.5, 0.7, 0.9)


# -- texts, machine --------------------------------------------------------------------------
def load_texts(limit: int | None = None, seed: int = 0) -> list[str]:
    """Every movie-snippets text (train + validation + test), shuffled: the real length mix."""
    from fastft.data import load_data

    d = load_data("movie-snippets")
    texts = list(d.train.texts) + list(d.validation.texts) + list(d.test.texts)
    random.Random(seed).shuffle(texts)
    return texts[:limit] if limit else texts


def versions() -> dict:
    """The serving libraries, beside the shared runner's versions."""
    import importlib.metadata as md

    out = {}
    for p in (
        "starlette",
        "uvicorn",
        "uvloop",
        "httptools",
        "prometheus-client",
        "fastapi",
        "aiohttp",
        "ray",
    ):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    return out


def quantiles(lat_s: list[float]) -> dict:
    if not lat_s:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    a = np.asarray(lat_s) * 1e3
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p90_ms": round(float(np.percentile(a, 90)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
        "max_ms": round(float(a.max()), 3),
    }


# -- in-process ceiling (run in a subprocess) ------------------------------------------------------
def inprocess_main(model_dir: str, seconds: float) -> None:
    import threading

    import fastft

    texts = load_texts()
    rows = []

    def measure(name, threads, per_call, callers):
        pred = fastft.load(model_dir, threads=threads)
        lats, count, stop = [], [0], time.perf_counter() + seconds
        lock = threading.Lock()

        def loop(k):
            i = k * 997
            local = []
            while time.perf_counter() < stop:
                batch = [texts[(i + j) % len(texts)] for j in range(per_call)]
                i += per_call
                t = time.perf_counter()
                pred.predict(batch)
                local.append(time.perf_counter() - t)
            with lock:
                lats.extend(local)
                count[0] += len(local) * per_call

        for w in range(20):  # warm up
            pred.predict([texts[w]])
        t0 = time.perf_counter()
        ths = [threading.Thread(target=loop, args=(k,)) for k in range(callers)]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        wall = time.perf_counter() - t0
        rows.append(
            {
                "config": name,
                "intra_op_threads": threads,
                "texts_per_call": per_call,
                "callers": callers,
                "texts_per_s": round(count[0] / wall, 1),
                "calls": len(lats),
                **quantiles(lats),
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    measure("1 thread, 1 text per call", 1, 1, 1)
    measure("2 threads, 1 text per call", 2, 1, 1)
    measure("2 callers x 1 thread, 1 text per call", 1, 1, 2)
    measure("8 callers x 1 thread, 1 text per call", 1, 1, 8)
    measure("1 thread, 32 texts per call", 1, 32, 1)
    measure("2 threads, 32 texts per call", 2, 32, 1)
    print(json.dumps(rows))


# -- servers ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name: str, argv: list[str], env: dict, log_dir: Path):
        self.name, self.argv, self.env = name, argv, env
        self.port = int(argv[argv.index("--port") + 1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_dir / f"serve_{name}.log", "w")
        self.proc = None
        self.started_s = None

    def start(self):
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 300) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server {self.name} exited with {self.proc.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(self.url + "/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        self.started_s = round(time.perf_counter() - self.t0, 1)
                        return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server {self.name} not ready after {timeout} s")
            time.sleep(0.25)

    def rss_mb(self) -> float | None:
        import psutil

        try:
            p = psutil.Process(self.proc.pid)
            procs = [p] + p.children(recursive=True)
            total = 0
            for q in procs:
                try:
                    total += q.memory_info().rss
                except psutil.Error:
                    pass
            return round(total / 2**20, 1)
        except psutil.Error:
            return None

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(30)


def server_argv(name: str, model_dir: str, port: int, fastft_args: list[str]) -> list[str]:
    py = sys.executable
    if name == "fastft":
        return [py, "-m", "fastft", "serve", model_dir, "--port", str(port), "--name", "m", *fastft_args]
    if name == "fastft-nobatch":
        return [
            py,
            "-m",
            "fastft",
            "serve",
            model_dir,
            "--port",
            str(port),
            "--name",
            "m",
            "--no-batching",
            *fastft_args,
        ]
    if name in ("pipeline", "ort"):
        return [py, str(ROOT / "bench" / "serve_baselines.py"), name, model_dir, "--port", str(port)]
    if name == "ray":
        return [
            py,
            "-m",
            "fastft",
            "serve",
            model_dir,
            "--ray",
            "--replicas",
            "2",
            "--port",
            str(port),
            "--name",
            "m",
            *fastft_args,
        ]
    raise ValueError(name)


# -- load generator -------------------------------------------------------------------------------
class Load:
    def __init__(self, bodies: list[bytes], timeout_s: float):
        self.bodies = bodies
        self.timeout_s = timeout_s
        self.i = 0

    def next_body(self) -> bytes:
        b = self.bodies[self.i % len(self.bodies)]
        self.i += 1
        return b

    async def one(self, session, url: str, body: bytes, t_sched: float, lat: list, errors: collections.Counter):
        import aiohttp

        try:
            async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
                await r.read()
                if r.status == 200:
                    lat.append(time.perf_counter() - t_sched)
                else:
                    errors[str(r.status)] += 1
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            errors[type(exc).__name__] += 1

    async def closed(self, base: str, concurrency: int, seconds: float) -> dict:
        import aiohttp

        lat, errors = [], collections.Counter()
        url = base + "/predict"
        conn = aiohttp.TCPConnector(limit=concurrency)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(connector=conn, timeout=timeout) as s:
            t0 = time.perf_counter()
            stop = t0 + seconds
            sent = [0]

            async def worker():
                while time.perf_counter() < stop:
                    sent[0] += 1
                    await self.one(s, url, self.next_body(), time.perf_counter(), lat, errors)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            wall = time.perf_counter() - t0
        return {
            "mode": "closed",
            "concurrency": concurrency,
            "seconds": round(wall, 2),
            "sent": sent[0],
            "ok": len(lat),
            "errors": sum(errors.values()),
            "error_kinds": dict(errors),
            "lost": sent[0] - len(lat) - sum(errors.values()),
            "throughput_rps": round(len(lat) / wall, 1),
            **quantiles(lat),
        }

    async def open(self, base: str, rate: float, seconds: float, seed: int = 0) -> dict:
        import aiohttp

        lat, errors = [], collections.Counter()
        url = base + "/predict"
        rng = np.random.default_rng(seed)
        gaps = rng.exponential(1.0 / rate, size=int(rate * seconds * 1.5) + 10)
        arrivals = np.cumsum(gaps)
        arrivals = arrivals[arrivals < seconds]
        conn = aiohttp.TCPConnector(limit=512)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(connector=conn, timeout=timeout) as s:
            tasks = []
            t0 = time.perf_counter()
            for at in arrivals:
                delay = t0 + at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.ensure_future(self.one(s, url, self.next_body(), t0 + at, lat, errors)))
            await asyncio.gather(*tasks)
            wall = time.perf_counter() - t0
        n = len(arrivals)
        return {
            "mode": "open",
            "rate_rps": round(rate, 1),
            "seconds": round(wall, 2),
            "sent": n,
            "ok": len(lat),
            "errors": sum(errors.values()),
            "error_kinds": dict(errors),
            "lost": n - len(lat) - sum(errors.values()),
            "throughput_rps": round(len(lat) / max(wall, seconds), 1),
            **quantiles(lat),
        }


def scrape(url: str) -> dict:
    """fastft's batching counters from /metrics (None for servers without them)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
            text = r.read().decode()
    except Exception:  # noqa: BLE001 - baselines have no /metrics
        return {}
    want = {
        "fastft_real_tokens_total",
        "fastft_padded_tokens_total",
        "fastft_batch_size_sum",
        "fastft_batch_size_count",
        "fastft_requests_per_batch_sum",
        "fastft_requests_per_batch_count",
    }
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in want:
                out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def batching_delta(before: dict, after: dict) -> dict:
    if not after:
        return {}
    d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    out = {}
    if d.get("fastft_padded_tokens_total"):
        out["padding_efficiency"] = round(d["fastft_real_tokens_total"] / d["fastft_padded_tokens_total"], 4)
    if d.get("fastft_batch_size_count"):
        out["texts_per_call"] = round(d["fastft_batch_size_sum"] / d["fastft_batch_size_count"], 2)
    if d.get("fastft_requests_per_batch_count"):
        out["requests_per_round"] = round(d["fastft_requests_per_batch_sum"] / d["fastft_requests_per_batch_count"], 2)
    return out


# -- the run --------------------------------------------------------------------------------------
def target_rows(rows: list[dict], inproc: list[dict], soak: dict | None) -> list[dict]:
    def get(server, mode, key, value):
        for r in rows:
            if r["server"] == server and r["mode"] == mode and r.get(key) == value:
                return r
        return None

    out = []
    best_in = max(inproc, key=lambda r: r["texts_per_s"]) if inproc else None
    f64, c64, b64 = (
        get("fastft", "closed", "concurrency", 64),
        get("ort", "closed", "concurrency", 64),
        get("pipeline", "closed", "concurrency", 64),
    )
    if f64 and best_in:
        v = f64["throughput_rps"] / best_in["texts_per_s"]
        out.append(
            {
                "target": "HTTP throughput at concurrency 64 >= 90% of the best in-process rate",
                "value": round(v, 3),
                "fastft_rps": f64["throughput_rps"],
                "best_in_process": best_in["texts_per_s"],
                "best_in_process_config": best_in["config"],
                "met": v >= 0.9,
            }
        )
    if f64 and c64 and c64["throughput_rps"] > 0:
        v = f64["throughput_rps"] / c64["throughput_rps"]
        out.append({"target": "throughput >= 1.2x (c) at concurrency 64", "value": round(v, 3), "met": v >= 1.2})
        if f64["p99_ms"] and c64["p99_ms"]:
            v = f64["p99_ms"] / c64["p99_ms"]
            out.append(
                {
                    "target": "p99 <= 1/3 of (c)'s p99 at concurrency 64",
                    "value": round(v, 3),
                    "fastft_p99_ms": f64["p99_ms"],
                    "ort_p99_ms": c64["p99_ms"],
                    "met": v <= 1 / 3,
                }
            )
    if f64 and b64 and b64["throughput_rps"] > 0:
        v = f64["throughput_rps"] / b64["throughput_rps"]
        out.append({"target": "throughput >= 5x (b) at concurrency 64", "value": round(v, 3), "met": v >= 5})
    f1 = get("fastft", "closed", "concurrency", 1)
    o70 = next((r for r in rows if r["server"] == "fastft" and r["mode"] == "open" and r.get("fraction") == 0.7), None)
    if f1 and o70 and f1["p50_ms"] and o70["p99_ms"]:
        v = o70["p99_ms"] / f1["p50_ms"]
        out.append(
            {
                "target": "open loop at 70% of peak: p99 <= 3x the unloaded p50",
                "value": round(v, 3),
                "p99_ms": o70["p99_ms"],
                "unloaded_p50_ms": f1["p50_ms"],
                "met": v <= 3,
            }
        )
    if soak:
        growth = soak["rss_growth"]
        out.append(
            {
                "target": "soak at 70%: 0 errors, 0 lost, RSS growth < 5%",
                "value": {
                    "errors": soak["errors"],
                    "lost": soak["lost"],
                    "rss_growth": growth,
                    "seconds": soak["seconds"],
                },
                "met": soak["errors"] == 0 and soak["lost"] == 0 and growth < 0.05,
                "note": None
                if soak["seconds"] >= 600
                else f"a {soak['seconds']:.0f} s soak, not the 10 minutes the target names",
            }
        )
    return out


def format_table(payload: dict) -> str:
    """Markdown: per server, closed loop at concurrency 1 and 64, open loop at 70% of its own peak."""

    def row(server, mode, **kw):
        for r in payload["runs"]:
            if r["server"] == server and r["mode"] == mode and all(r.get(k) == v for k, v in kw.items()):
                return r
        return None

    lines = [
        "| server | c=1 p50 / p99 ms | c=64 req/s | c=64 p50 / p90 / p99 ms | open 70%: req/s, p99 ms | "
        "errors | RSS MB | padding eff. |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in payload["servers"]:
        c1, c64, o70 = (
            row(name, "closed", concurrency=1),
            row(name, "closed", concurrency=64),
            row(name, "open", fraction=0.7),
        )
        errors = sum(r["errors"] + r.get("lost", 0) for r in payload["runs"] if r["server"] == name)
        eff = [r["padding_efficiency"] for r in payload["runs"] if r["server"] == name and "padding_efficiency" in r]
        lines.append(
            f"| {name} | {c1['p50_ms'] if c1 else '-'} / {c1['p99_ms'] if c1 else '-'} "
            f"| {c64['throughput_rps'] if c64 else '-'} "
            f"| {c64['p50_ms'] if c64 else '-'} / {c64['p90_ms'] if c64 else '-'} / {c64['p99_ms'] if c64 else '-'} "
            f"| {o70['throughput_rps'] if o70 else '-'}, {o70['p99_ms'] if o70 else '-'} | {errors} "
            f"| {max((r['server_rss_mb'] or 0) for r in payload['runs'] if r['server'] == name) or '-'} "
            f"| {min(eff) if eff else '-'}–{max(eff) if eff else '-'} |"
        )
    return "\n".join(lines)


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for i, name in enumerate(payload["servers"]):
        rows = sorted(
            (r for r in payload["runs"] if r["server"] == name and r["mode"] == "closed" and r["p50_ms"]),
            key=lambda r: r["concurrency"],
        )
        if not rows:
            continue
        x = [r["throughput_rps"] for r in rows]
        color = f"C{i}"
        ax.plot(x, [r["p50_ms"] for r in rows], "o-", color=color, label=f"{name} p50")
        ax.plot(x, [r["p99_ms"] for r in rows], "s--", color=color, alpha=0.6, label=f"{name} p99")
        for r in rows:
            ax.annotate(f"c{r['concurrency']}", (r["throughput_rps"], r["p99_ms"]), fontsize=7, color=color)
    ax.set_xlabel("throughput (requests/s, one text each)")
    ax.set_ylabel("client latency (ms)")
    ax.set_yscale("log")
    ax.set_title(
        f"fastft serve vs hand-written servers: {payload['model']['name']} "
        f"({payload['machine']['cpu']['physical_cores']} cores, closed loop)",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="model directory (the default compressed model: runs/compressed)")
    ap.add_argument("--servers", default=",".join(SERVERS), help=f"subset of {','.join(SERVERS)}")
    ap.add_argument("--phase-s", type=float, default=8.0, help="seconds per load phase [8]")
    ap.add_argument("--inprocess-s", type=float, default=4.0, help="seconds per in-process configuration [4]")
    ap.add_argument("--soak-s", type=float, default=600.0, help="soak seconds at 70%% of fastft's peak (0: none) [600]")
    ap.add_argument("--timeout-s", type=float, default=10.0, help="client timeout per request [10]")
    ap.add_argument("--fastft-args", default="", help="extra arguments for fastft serve (quoted)")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help="also run fastft serve with these arguments as server fastft-NAME (repeatable), "
        "e.g. w2t1='--workers 2 --threads 1'",
    )
    ap.add_argument("--result", default=None, help="[bench/results/serve_<model dir name>.json]")
    ap.add_argument("--inprocess", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument(
        "--table",
        action="store_true",
        help="print the markdown table of an existing result file (MODEL: the result file) and exit",
    )
    args = ap.parse_args()
    if args.table:
        print(format_table(json.loads(Path(args.model).read_text())))
        return 0
    if args.inprocess:
        inprocess_main(args.model, args.inprocess_s)
        return 0

    model_dir = str(Path(args.model).resolve())
    if not (Path(model_dir) / "config.json").is_file():
        sys.exit(f"bench_serve: {args.model} is not a model directory")
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    variants = {}
    for v in args.variant:
        key, _, extra = v.partition("=")
        variants[f"fastft-{key}"] = shlex.split(extra)
        SERVERS[f"fastft-{key}"] = f"fastft serve DIR {extra}"
    bad = [n for n in names if n not in SERVERS]
    if bad:
        sys.exit(f"bench_serve: unknown server(s) {bad}; choose from {list(SERVERS)}")
    if "ray" in names:
        try:
            import ray  # noqa: F401
        except ImportError:
            sys.exit("bench_serve: the ray baseline needs pip install 'fastft[ray]' (or leave it out with --servers)")
    import aiohttp  # noqa: F401 - fail early: pip install 'fastft[bench]'

    result = Path(args.result or ROOT / "bench" / "results" / f"serve_{Path(model_dir).name}.json")
    result.parent.mkdir(parents=True, exist_ok=True)
    import tempfile

    log_dir = Path(tempfile.mkdtemp(prefix="bench_serve_logs_"))  # server logs: not part of the result
    env = {
        **os.environ,
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_WAIT_POLICY": "PASSIVE",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    t_start = time.time()

    def say(msg):
        print(f"[{time.time() - t_start:7.1f}s] {msg}", file=sys.stderr, flush=True)

    # 1. the in-process ceiling, alone
    say(f"in-process ceiling (server logs in {log_dir})")
    out = subprocess.run(
        [sys.executable, __file__, model_dir, "--inprocess", "--inprocess-s", str(args.inprocess_s)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    inproc = json.loads(out.stdout.strip().splitlines()[-1])
    for r in inproc:
        say(f"  {r['config']}: {r['texts_per_s']} texts/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms")

    # 2. servers: all up, then every phase against each in turn
    texts = load_texts()
    bodies = [json.dumps({"inputs": [t]}).encode() for t in texts]
    load = Load(bodies, args.timeout_s)
    fastft_args = shlex.split(args.fastft_args)
    servers = {n: Server(n, server_argv(n, model_dir, free_port(), fastft_args), env, log_dir) for n in names}
    for n, extra in variants.items():
        servers[n] = Server(n, server_argv("fastft", model_dir, free_port(), [*fastft_args, *extra]), env, log_dir)
    rows: list[dict] = []
    soak = None
    idle_rss: dict = {}
    server_info: dict = {}
    rng = random.Random(0)
    try:
        for s in servers.values():
            s.start()
        for s in servers.values():
            s.wait_ready()
            say(f"{s.name} ready after {s.started_s} s (RSS {s.rss_mb()} MB)")
        idle_rss.update({n: s.rss_mb() for n, s in servers.items()})
        for n, s in servers.items():  # fastft's measured batch cost table: where merging pays
            if n.startswith("fastft"):
                import urllib.request

                with urllib.request.urlopen(s.url + "/", timeout=10) as r:
                    info = json.loads(r.read())
                runtime = {k: v for k, v in (info.get("runtime") or {}).items() if k != "path"}
                server_info[n] = {
                    "cost_model": info.get("cost_model"),
                    "runtime": runtime,
                    "warm_up_seconds": info.get("warm_up_seconds"),
                }
        for s in servers.values():  # warm every path (connections, allocator, per-shape ORT state)
            asyncio.run(load.closed(s.url, 4, 1.5))

        def phase(server: Server, coro_fn, extra: dict) -> dict:
            # batching counters: fastft only (Ray's /metrics is whichever replica answers, not the deployment)
            counted = server.name.startswith("fastft")
            before = scrape(server.url) if counted else {}
            row = asyncio.run(coro_fn())
            row = {
                "server": server.name,
                **extra,
                **row,
                **(batching_delta(before, scrape(server.url)) if counted else {}),
                "server_rss_mb": server.rss_mb(),
                "loadavg_1m": round(os.getloadavg()[0], 2),
            }
            rows.append(row)
            say(
                f"{server.name:15s} {row['mode']:6s} {extra} {row['throughput_rps']:8.1f} rps  p50 {row['p50_ms']} "
                f"p90 {row['p90_ms']} p99 {row['p99_ms']} ms  errors {row['errors']}  "
                f"{ {k: row[k] for k in ('padding_efficiency', 'texts_per_call') if k in row} }"
            )
            return row

        for c in CONCURRENCY:
            order = list(servers.values())
            rng.shuffle(order)
            for s in order:
                phase(s, lambda s=s, c=c: load.closed(s.url, c, args.phase_s), {})
        peak = {
            n: max(r["throughput_rps"] for r in rows if r["server"] == n and r["mode"] == "closed") for n in servers
        }
        for f in OPEN_FRACTIONS:
            order = list(servers.values())
            rng.shuffle(order)
            for s in order:
                if peak[s.name] <= 0:
                    continue
                rate = f * peak[s.name]
                phase(
                    s,
                    lambda s=s, rate=rate, f=f: load.open(s.url, rate, args.phase_s, seed=int(f * 100)),
                    {"fraction": f},
                )
        # 3. soak: fastft alone at 70% of its peak
        if args.soak_s > 0 and "fastft" in servers:
            for n, s in servers.items():
                if n != "fastft":
                    s.stop()
            s = servers["fastft"]
            rate = 0.7 * peak["fastft"]
            say(f"soak: fastft at {rate:.0f} rps for {args.soak_s:.0f} s")
            rss0 = s.rss_mb()
            before = scrape(s.url)
            row = asyncio.run(load.open(s.url, rate, args.soak_s, seed=7))
            rss1 = s.rss_mb()
            soak = {
                **row,
                **batching_delta(before, scrape(s.url)),
                "rss_start_mb": rss0,
                "rss_end_mb": rss1,
                "rss_growth": round((rss1 - rss0) / rss0, 4) if rss0 and rss1 else None,
            }
            say(
                f"soak: {soak['ok']} ok, {soak['errors']} errors, {soak['lost']} lost, p99 {soak['p99_ms']} ms, "
                f"RSS {rss0} -> {rss1} MB"
            )
    finally:
        exit_codes = {n: s.stop() for n, s in servers.items()}

    payload = {
        "benchmark": "serve: fastft serve against hand-written servers over HTTP",
        "machine": machine_info(),  # + the load at the end, from write_result
        "note": "2 CPU cores shared with other engineers' jobs during the run (see the load averages); the load "
        "generator (this process, aiohttp) runs on the same cores as the servers.",
        "versions": versions(),
        "model": {"name": Path(model_dir).name, "files": sorted(p.name for p in Path(model_dir).glob("*.onnx"))},
        "texts": {
            "source": "movie-snippets, all splits, shuffled; one text per request",
            "n": len(texts),
            "chars_p50": int(np.median([len(t) for t in texts])),
            "chars_p90": int(np.percentile([len(t) for t in texts], 90)),
        },
        "settings": {
            "phase_s": args.phase_s,
            "timeout_s": args.timeout_s,
            "concurrency": list(CONCURRENCY),
            "open_fractions_of_own_peak": list(OPEN_FRACTIONS),
            "fastft_args": args.fastft_args,
            "variants": args.variant,
            "env": {k: env[k] for k in ("OMP_WAIT_POLICY", "TOKENIZERS_PARALLELISM")},
        },
        "servers": {
            n: {
                "description": SERVERS[n],
                "argv": [
                    "python"
                    if a == sys.executable
                    else args.model
                    if a == model_dir
                    else str(Path(a).relative_to(ROOT))
                    if a.startswith(str(ROOT))
                    else a
                    for a in s.argv
                ],
                "ready_after_s": s.started_s,
                "idle_rss_mb": idle_rss.get(n),
                "exit_code_after_sigterm": exit_codes.get(n),
                **server_info.get(n, {}),
            }
            for n, s in servers.items()
        },
        "in_process": inproc,
        "runs": rows,
        "soak": soak,
    }
    payload["targets"] = target_rows(rows, inproc, soak)
    write_result(result, payload)
    plot(payload, result.with_suffix(".png"))
    say(f"wrote {result} and {result.with_suffix('.png')}")
    print(format_table(payload))
    for t in payload["targets"]:
        say(f"  {'MET ' if t['met'] else 'MISSED'} {t['target']}: {t['value']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
