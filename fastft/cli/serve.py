"""``fastft serve``: a model directory behind a batching HTTP server (or a Ray Serve deployment)."""

from __future__ import annotations

import argparse

_DOC = """serve a model directory over HTTP: dynamic batching, Open Inference Protocol v2, Prometheus

examples:
  fastft serve runs/compressed
  fastft serve runs/compressed --port 9000 --max-batch-tokens 4096 --json-logs
  fastft serve runs/compressed --ray --replicas 2            (needs: pip install 'fastft[ray]')

routes:
  POST /predict                      {"inputs": ["a fine film"]} -> {"predictions": [{label, score, scores}]}
  POST /v2/models/NAME/infer         KServe / Triton Open Inference Protocol v2 (tritonclient works as is)
  GET  /v2/health/live, /v2/health/ready, /v2/models/NAME, /v2/models/NAME/ready
  GET  /metrics                      Prometheus: latency, queue, batch size/tokens, padding efficiency

Concurrent requests are merged into one ONNX Runtime call (at most --max-batch-size texts
and --max-batch-tokens padded tokens), texts grouped by length with a cost table measured
at warm-up, so merging is used where it pays; a dynamically quantised INT8 graph runs each text
alone (its answers would otherwise move with the texts beside it) unless --batch-int8. Ready only
after warm-up. SIGTERM stops accepting, answers every accepted request, exits 0. Binds to
127.0.0.1 unless --host says otherwise. A request head must arrive within 10 s and its body
within 30 s (408; --header-timeout, --body-timeout); at most 1,024 connections, 256 from one
address."""


def register(sub) -> None:
    from fastft.cli import add_command

    p = add_command(sub, "serve", "serve a model over HTTP (batching, Open Inference Protocol, metrics)", _DOC)
    p.add_argument("model", metavar="DIR", help="model directory (fastft compress/export output, or Optimum layout)")
    p.add_argument("--name", default=None, help="model name in the /v2 routes [the directory's name]")
    p.add_argument("--host", default="127.0.0.1", help="address to bind [127.0.0.1]")
    p.add_argument("--port", type=int, default=8080, help="port [8080]")
    p.add_argument("--max-batch-tokens", type=int, default=8192, help="padded tokens per ONNX Runtime call [8192]")
    p.add_argument("--max-batch-size", type=int, default=64, help="texts per ONNX Runtime call [64]")
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=0.0,
        help="wait this long for more requests after the first (0: merge what is queued) [0]",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=256,
        help="requests waiting for a worker; beyond: 503 + Retry-After (shed load, keep the tail short) [256]",
    )
    p.add_argument("--max-texts", type=int, default=256, help="texts per request; beyond: 413 [256]")
    p.add_argument("--max-body-kb", type=int, default=4096, help="request body size limit; beyond: 413 [4096]")
    p.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds for a connection's request line and headers (idle ones too); beyond: 408, closed [10]",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds for a request's body; beyond: 408 (SIGTERM answers a body still arriving 503 at once) [30]",
    )
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads per worker [cores / workers]")
    p.add_argument(
        "--workers", type=int, default=1, help="inference workers, one per core group (workers x threads <= cores) [1]"
    )
    p.add_argument(
        "--precision",
        choices=["int8", "fp32"],
        default=None,
        help="model_int8.onnx or model.onnx [the default recorded in fastft.json]",
    )
    p.add_argument(
        "--batching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="merge concurrent requests into one call [on]",
    )
    p.add_argument(
        "--batch-int8",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="merge texts into one call of a dynamically quantised INT8 graph too: more throughput, but its "
        "activation scales then span the call, so a text's scores move with other requests' texts "
        "[off: each text alone, the same text always gets the same answer]",
    )
    p.add_argument("--json-logs", action="store_true", help="log one JSON object per line (--json does the same)")
    p.add_argument("--ray", action="store_true", help="run as a Ray Serve deployment (fastft[ray])")
    p.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (with --ray) [1]")
    p.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to join (with --ray), e.g. 'auto' or ray://head:10001 [a local instance]",
    )
    p.set_defaults(func=_serve)


def _serve(args) -> int:
    from fastft.core.errors import FastftError
    from fastft.serve.config import ServeConfig

    if not 1 <= args.max_body_kb <= 1 << 20:
        raise FastftError(f"--max-body-kb must be between 1 and {1 << 20} (got {args.max_body_kb})")
    if args.replicas < 1:
        raise FastftError(f"--replicas must be a positive integer (got {args.replicas})")
    if not args.ray and (args.replicas != 1 or args.ray_address):
        raise FastftError("--replicas and --ray-address need --ray")
    config = ServeConfig(
        name=args.name,
        host=args.host,
        port=args.port,
        max_batch_tokens=args.max_batch_tokens,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_texts=args.max_texts,
        max_body_bytes=args.max_body_kb * 1024,
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        threads=args.threads,
        workers=args.workers,
        precision=args.precision,
        batching=args.batching,
        batch_int8=args.batch_int8,
        json_logs=args.json_logs or args.json,
    ).check()
    _check_dir(args.model)
    if args.ray:
        from fastft.serve.ray_app import run_ray

        return run_ray(args.model, config, replicas=args.replicas, address=args.ray_address)
    from fastft.serve.server import run

    return run(args.model, config)


def _check_dir(path: str) -> None:
    from pathlib import Path

    from fastft.core.errors import ModelError

    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(f"model directory {p} does not exist")
    if not p.is_dir():
        raise ModelError(f"{p} is not a directory")
    if not (p / "config.json").is_file():
        raise ModelError(f"{p} is not a model directory (no config.json)")
