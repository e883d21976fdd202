"""HTTP serving benchmark: ``fastft serve`` against the servers people write, in one run.

    python bench/bench_serve.py runs/compressed                         # full run (~15 min + soak)
    python bench/bench_serve.py runs/compressed --phase-s 4 --soak-s 60 --result /tmp/s.json   # quick look

Servers (each its own process; the load generator is this process, an aiohttp client; all
traffic on 127.0.0.1):
  fastft        fastft serve DIR (dynamic batching)
  fastft-nobatch  (a) fastft serve DIR --no-batching
  fastft-batch-int8  fastft serve DIR --batch-int8 (a dynamic INT8 graph's texts merged: the
                  pre-isolation default, for its throughput; answers then depend on the batch)
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
import json
import os
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fastft.bench.runner import machine_info, write_result  # first: notes the load at the start

sys.path.insert(0, str(Path(__file__).parent))  # the modules beside this script
from serve_report import format_table, plot, target_rows  # noqa: E402
from serve_servers import (  # noqa: E402
    Load,
    Server,
    batching_delta,
    free_port,
    inprocess_main,
    load_texts,
    scrape,
    server_argv,
)

ROOT = Path(__file__).resolve().parents[1]
SERVERS = {
    "fastft": "fastft serve DIR (dynamic batching, cost-table length grouping)",
    "fastft-nobatch": "(a) fastft serve DIR --no-batching: one ONNX Runtime call per request",
    "fastft-batch-int8": "fastft serve DIR --batch-int8: a dynamic INT8 graph's texts merged too (answers then "
    "depend on the batch; the default runs each such text alone)",
    "pipeline": "(b) FastAPI + transformers pipeline, per request (what users write)",
    "ort": "(c) FastAPI + ONNX Runtime per request on the same ONNX file (the Optimum-style setup)",
    "ray": "(d) fastft serve DIR --ray --replicas 2 (Ray Serve deployment, @serve.batch, Ray's HTTP proxy)",
}
CONCURRENCY = (1, 4, 16, 64)
OPEN_FRACTIONS = (0.25, 0.5, 0.7, 0.9)


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
