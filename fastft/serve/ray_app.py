"""The same routes as a Ray Serve deployment: ``@serve.batch`` merging, N replicas, Ray's HTTP proxy.

    fastft serve runs/compressed --ray --replicas 2                  # a local Ray instance
    fastft serve runs/compressed --ray --ray-address auto            # join a running cluster

or from Python / a Serve config file (``import_path: fastft.serve.ray_app:build``)::

    from ray import serve
    from fastft.serve.ray_app import deployment
    serve.run(deployment("runs/compressed", replicas=2))

Each replica loads the model, warms up, and answers the routes of :mod:`fastft.serve.routes`
through Ray's proxy; requests reaching a replica are merged by ``@serve.batch`` (at most
``max_batch_size`` requests, ``max_wait_ms``) and run in one worker thread with the same
length grouping as the local server. ``/metrics`` is the answering replica's registry;
Ray's own metrics (per replica, per route) come from Ray's metrics export.
Ray is an optional extra: ``pip install 'fastft[ray]'``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import threading
import time

from fastft.core.errors import FastftError
from fastft.serve.config import ServeConfig

log = logging.getLogger("fastft.serve")


def _import_serve():
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise FastftError(f"--ray needs Ray Serve, which is not installed ({exc}); pip install 'fastft[ray]'") from None
    return ray, serve


class RayEngine:
    """A Predictor behind Ray Serve's ``@serve.batch`` (one replica)."""

    def __init__(self, predictor, config: ServeConfig, metrics):
        from ray import serve

        from fastft.serve.batcher import Batcher
        from fastft.serve.routes import _default_name

        self.predictor = predictor
        self.config = config
        self.metrics = metrics
        self.labels = list(predictor.labels)
        self.per_token = bool(getattr(predictor, "per_token", False))
        self.name = config.name or _default_name(predictor.path)
        self.platform = "onnxruntime_onnx"
        self.draining = False
        self.ready = False
        self.batcher = Batcher(
            predictor,
            workers=0,
            max_batch_tokens=config.max_batch_tokens,
            max_batch_size=config.max_batch_size,
            batching=config.batching,
            metrics=metrics,
        )
        t = time.perf_counter()
        self.batcher.warm_up(calibrate=config.calibrate)
        self.warm_up_seconds = time.perf_counter() - t
        self._lock = threading.Lock()  # one inference at a time per replica: its cores, never oversubscribed
        self._batched = serve.batch(
            max_batch_size=config.max_batch_size if config.batching else 1,
            batch_wait_timeout_s=config.max_wait_ms / 1e3,
        )(self._run_batch)
        self.ready = True
        metrics.ready.set(1)

    async def _run_batch(self, requests: list[list[str]]) -> list:
        return await asyncio.to_thread(self._locked_run, requests)

    def _locked_run(self, requests):
        with self._lock:
            return self.batcher.run_batch(requests)

    async def infer(self, texts: list[str]):
        out = await self._batched(texts)
        if isinstance(out, BaseException):
            raise out
        return out

    def start(self) -> None:  # nothing to start: Ray runs the replica
        pass

    def stop(self) -> None:
        self.draining = True

    def info(self) -> dict:
        from ray import serve

        try:
            ctx = serve.get_replica_context()
            replica = getattr(getattr(ctx, "replica_id", None), "unique_id", None) or getattr(ctx, "replica_tag", None)
        except Exception:  # noqa: BLE001 - outside a replica
            replica = None
        return {
            "model": self.name,
            "path": str(self.predictor.path),
            "labels": self.labels,
            "engine": "ray-serve",
            "replica": replica,
            "runtime": self.predictor.info(),
            "config": self.config.to_dict(),
            "cost_model": self.batcher.cost.info(),
            "warm_up_seconds": self.warm_up_seconds,
        }


def build_asgi(model_dir: str, config: ServeConfig):
    """Runs on each replica: load, warm up, and return the routes' ASGI app."""
    from fastft.runtime import load
    from fastft.serve.metrics import ServeMetrics
    from fastft.serve.routes import build_app

    threads = config.threads or 1  # a replica is the unit of scale: 1 CPU each unless --threads says more
    int8 = None if config.precision is None else config.precision == "int8"
    predictor = load(model_dir, threads=threads, int8=int8, batch_int8=config.batch_int8)
    metrics = ServeMetrics()
    engine = RayEngine(predictor, dataclasses.replace(config, threads=threads), metrics)
    return build_app(engine, engine.config, metrics, lifespan=False)


def deployment(model_dir, config: ServeConfig | None = None, replicas: int = 1, **options):
    """A bound Ray Serve application (``serve.run(...)`` it) serving ``model_dir`` with N replicas."""
    _, serve = _import_serve()
    from pathlib import Path

    config = dataclasses.replace(config or ServeConfig(), **options).check()
    path = str(Path(model_dir).expanduser().resolve())
    cpus = config.threads or 1

    def builder():
        return build_asgi(path, config)

    ingress = serve.ingress(builder)()
    dep = serve.deployment(
        ingress,
        name="fastft",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": cpus},
        max_ongoing_requests=max(config.max_batch_size * 2, 16),
    )
    return dep.bind()


def build(args: dict):
    """Entry point for ``serve run fastft.serve.ray_app:build model_dir=DIR replicas=2 [field=value ...]``.

    ``args`` come from the command line or a Serve config file's ``args:`` as strings; each is
    converted to the type of its :class:`ServeConfig` field.
    """
    args = dict(args)
    if "model_dir" not in args:
        raise FastftError("fastft.serve.ray_app:build needs model_dir=DIR")
    model_dir = args.pop("model_dir")
    replicas = int(args.pop("replicas", 1))
    fields = {f.name: f for f in dataclasses.fields(ServeConfig)}
    config = {}
    for key, value in args.items():
        if key not in fields:
            raise FastftError(f"unknown option {key}={value!r}; ServeConfig fields: {', '.join(fields)}")
        default = fields[key].default
        if isinstance(value, str):
            if isinstance(default, bool):
                value = value.lower() in ("1", "true", "yes", "on")
            elif key in ("threads",) or isinstance(default, int):
                value = int(value)
            elif isinstance(default, float):
                value = float(value)
        config[key] = value
    return deployment(model_dir, ServeConfig(**config), replicas=replicas)


def run_ray(model_dir, config: ServeConfig, replicas: int = 1, address: str | None = None) -> int:
    """Start (or join) Ray, deploy, serve on config.host:config.port until SIGTERM/SIGINT, shut down."""
    ray, serve = _import_serve()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(deployment(model_dir, config, replicas), name="fastft", route_prefix="/")
    log.info("serving %s on Ray Serve, %d replica(s), http://%s:%d", model_dir, replicas, config.host, config.port)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        serve.shutdown()
        ray.shutdown()
    return 0
