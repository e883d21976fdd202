"""For bench/bench_serve.py: the in-process ceiling, the servers (each its own process on
127.0.0.1) and the async load generator."""

from __future__ import annotations

import asyncio
import collections
import json
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


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
    if name == "fastft-batch-int8":
        return [py, "-m", "fastft", "serve", model_dir, "--port", str(port), "--name", "m", "--batch-int8"] + list(
            fastft_args
        )
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


# -- texts, machine --------------------------------------------------------------------------
def load_texts(limit: int | None = None, seed: int = 0) -> list[str]:
    """Every movie-snippets text (train + validation + test), shuffled: the real length mix."""
    from fastft.data import load_data

    d = load_data("movie-snippets")
    texts = list(d.train.texts) + list(d.validation.texts) + list(d.test.texts)
    random.Random(seed).shuffle(texts)
    return texts[:limit] if limit else texts


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
