"""The ASGI app: routes over an *engine* (the batcher here, ``@serve.batch`` on Ray).

    from fastft.serve import app
    asgi = app("runs/compressed", max_batch_tokens=8192)     # then: uvicorn.run(asgi)

Routes:
    POST /predict                          {"inputs": [texts]} -> {"predictions": [{label, score, scores, truncated}]}
                                           token classification: [{entities: [{entity, score, start, end,
                                           word}], truncated}]
    GET  /v2, /v2/health/live, /v2/health/ready
    GET  /v2/models/{name}[/versions/1], /v2/models/{name}[/versions/1]/ready
    POST /v2/models/{name}[/versions/1]/infer   Open Inference Protocol v2 (JSON or binary tensors)
    GET  /metrics                          Prometheus text format

Every error is JSON ``{"error": "..."}`` with its status: 400/422 bad input, 404 unknown
model or route, 413 too many texts or too large a body, 503 (+ Retry-After) while warming
up, draining or when the queue is full, 500 when inference fails (that batch only). A request
HTTP cannot parse gets 400, and a head over 64 KiB 431, JSON too (``server.guarded_protocol``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fastft import __version__
from fastft.serve.batcher import Batcher, InferenceFailed, QueueFull, ShuttingDown
from fastft.serve.config import HEAD_TOO_LARGE, MAX_HEAD_BYTES, ServeConfig
from fastft.serve.metrics import CONTENT_TYPE_LATEST, ServeMetrics
from fastft.serve.protocol import (
    HEADER_LENGTH,
    OUTPUTS,
    TOKEN_OUTPUTS,
    BadRequest,
    entities_response,
    infer_response,
    model_metadata,
    parse_infer,
    parse_predict,
    predict_response,
)

log = logging.getLogger("fastft.serve")


class Unavailable(Exception):
    """Answer 503 with Retry-After."""


class LocalEngine:
    """A Predictor behind the dynamic :class:`Batcher` (this process, ``workers`` threads)."""

    # uvicorn's receive() gives http.disconnect only when the client has gone: a request whose
    # client left is dropped (Ray's proxy is not relied on for that)
    watches_disconnect = True

    def __init__(self, predictor, config: ServeConfig, metrics: ServeMetrics):
        self.predictor = predictor
        self.config = config
        self.metrics = metrics
        self.labels = list(predictor.labels)
        self.per_token = bool(getattr(predictor, "per_token", False))
        self.name = config.name or _default_name(predictor.path)
        self.platform = "onnxruntime_onnx" if predictor.backend == "onnxruntime" else "pytorch_libtorch"
        self.batcher = Batcher(
            predictor,
            workers=config.workers,
            max_batch_tokens=config.max_batch_tokens,
            max_batch_size=config.max_batch_size,
            max_wait_ms=config.max_wait_ms,
            max_queue=config.max_queue,
            batching=config.batching,
            metrics=metrics,
        )
        self.ready = False
        self.draining = False
        self.warm_up_seconds = None
        self._warm = None

    def start(self) -> None:
        self.batcher.start()
        self._warm = threading.Thread(target=self._warm_up, name="fastft-warm-up", daemon=True)
        self._warm.start()

    def _warm_up(self) -> None:
        t = time.perf_counter()
        try:
            self.batcher.warm_up(calibrate=self.config.calibrate)
        except ShuttingDown:
            log.info("stopped while warming up")
            return
        except Exception:  # noqa: BLE001 - a model that cannot run never turns ready
            log.exception("warm-up failed: the server stays not ready")
            return
        self.warm_up_seconds = time.perf_counter() - t
        if self.draining:  # stopped while its last call ran
            return
        self.ready = True
        self.metrics.ready.set(1)
        log.info(
            "ready: %s warmed up in %.1f s (cost table: %s)", self.name, self.warm_up_seconds, self.batcher.cost.source
        )

    async def infer(self, texts: list[str]):
        if self.draining:
            raise Unavailable("the server is shutting down")
        if not self.ready:
            raise Unavailable("the model is warming up")
        try:
            return await self.batcher.submit(texts)
        except (QueueFull, ShuttingDown) as exc:
            raise Unavailable(str(exc)) from None

    def stop(self) -> None:
        self.draining = True
        self.ready = False
        self.metrics.ready.set(0)
        self.batcher.stop()
        if self._warm is not None:  # it stops after the call it is in: the process must not exit inside
            self._warm.join(timeout=120)  # ONNX Runtime's run (C++ terminate, exit 134, under SIGTERM)

    def info(self) -> dict:
        """What ``GET /`` shows: file names, never the server's directories."""
        runtime = {
            k: Path(v).name if k in ("path", "file") and isinstance(v, str) else v
            for k, v in self.predictor.info().items()
        }
        return {
            "model": self.name,
            "labels": self.labels,
            "runtime": runtime,
            "config": self.config.to_dict(),
            "cost_model": self.batcher.cost.info(),
            "warm_up_seconds": self.warm_up_seconds,
        }


def _default_name(path: Path) -> str:
    name = "".join(c if c.isalnum() or c in "._-" else "-" for c in Path(path).resolve().name).strip("-.")
    return name or "model"


DRAIN_POLL_S = 0.25  # how often a request still reading its body looks whether the server is draining


def error(status: int, message: str, retry_after: int | None = None, close: bool = False) -> JSONResponse:
    headers = {"retry-after": str(retry_after)} if retry_after is not None else {}
    if close or status in (408, 413):  # the body was not all read: the connection cannot carry another request
        headers["connection"] = "close"
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


async def disconnected(request: Request) -> None:
    """Returns when the client has gone (once its body is read, uvicorn's ``receive`` has nothing
    more to give before that); never, under a server whose ``receive`` answers otherwise."""
    if (await request.receive())["type"] != "http.disconnect":
        await asyncio.Event().wait()


def _charset(content_type: str) -> str | None:
    """The ``charset`` parameter of a Content-Type header, lower-cased, or None."""
    for part in content_type.split(";")[1:]:
        key, _, value = part.partition("=")
        if key.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return None


class ConnectionHygiene:
    """ASGI middleware for what a connection may carry next.

    A request with both Transfer-Encoding and Content-Length gets a JSON 400 and its connection
    is closed (RFC 9112 6.1: a proxy in front that frames it by the other header would see a
    different next request on the same connection: request smuggling). An answer sent before
    the request's body was read (a 404, a 405, a 503 while draining) says ``connection: close``,
    as the server then closes the connection: a client that pools connections must not send
    its next request on it."""

    def __init__(self, app, metrics: ServeMetrics | None = None):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        head = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + 16
        head += sum(len(k) + len(v) + 4 for k, v in scope["headers"])
        refused = None
        version, target = scope.get("http_version", "1.1"), scope.get("raw_path") or b""
        if head > MAX_HEAD_BYTES:  # h11 limits a head only while it is incomplete: one that arrived whole
            refused = 431, HEAD_TOO_LARGE
        elif b"transfer-encoding" in headers and b"content-length" in headers:
            refused = 400, "the request has both Transfer-Encoding and Content-Length; send one"
        elif version not in ("1.0", "1.1"):  # h11 parses any digit.digit: "PRI * HTTP/2.0" was a 404
            refused = 505, f"HTTP/{version} is not served here: send HTTP/1.1 (no HTTP/2 prior knowledge)"
        elif target == b"*":  # the asterisk form, for a server-wide OPTIONS, which no route serves
            refused = (405 if scope["method"] == "OPTIONS" else 400), f"{scope['method']} * is not served here"
        elif target[:8].lower().startswith((b"http://", b"https://")):
            scope = _origin_form(scope)  # RFC 9112 3.2.2: a server must accept the absolute form
        if refused is not None:
            await error(*refused, close=True)(scope, receive, send)
            if self.metrics is not None:
                self.metrics.observe_request("other", refused[0])
            return
        body_read = b"transfer-encoding" not in headers and headers.get(b"content-length", b"0") in (b"0", b"")

        async def receive_watched():
            nonlocal body_read
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_read = True
            return message

        async def send_closing(message):
            if message["type"] == "http.response.start" and not body_read:
                given = list(message.get("headers", []))
                if all(name.lower() != b"connection" for name, _ in given):
                    message = {**message, "headers": [*given, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive_watched, send_closing)


def _origin_form(scope: dict) -> dict:
    """``scope`` of an absolute-form request (``GET http://host/v2/health/live``) with the path
    alone, as the origin form would have given it (it was routed as ``/http://host/...``: 404)."""
    from urllib.parse import unquote

    raw = scope["raw_path"]
    rest = raw.split(b"://", 1)[1]
    slash = rest.find(b"/")
    raw = rest[slash:] if slash >= 0 else b"/"
    return {**scope, "raw_path": raw, "path": unquote(raw.decode("latin-1"))}


def build_app(engine, config: ServeConfig, metrics: ServeMetrics, lifespan: bool = True) -> Starlette:
    """The routes over ``engine`` (``labels``, ``name``, ``ready``, ``async infer(texts)``)."""
    retry = config.retry_after_s
    per_token = bool(getattr(engine, "per_token", False))  # token classification: entities, not labels
    outputs = TOKEN_OUTPUTS if per_token else OUTPUTS

    async def read_body(request: Request) -> bytes:
        # read as it was, a gzip body was "not valid JSON", and plain JSON labelled gzip passed
        coding = request.headers.get("content-encoding", "identity").strip().lower()
        if coding not in ("", "identity"):
            raise BadRequest(f"Content-Encoding {coding[:40]!r} is not supported: send the body uncompressed", 415)
        limit = config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BadRequest(f"the body is {int(declared)} bytes, more than the limit of {limit}", 413)
        chunks = []

        async def receive() -> None:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BadRequest(f"the body is more than the limit of {limit} bytes", 413)
                chunks.append(chunk)

        # a client that stalls mid-body must not hold its connection and queue slot forever, nor
        # hold up a drain (SIGTERM) until its body timeout: looked at every DRAIN_POLL_S
        task = asyncio.ensure_future(receive())
        deadline = time.monotonic() + config.body_timeout_s
        try:
            while True:
                left = deadline - time.monotonic()
                done, _ = await asyncio.wait({task}, timeout=max(0.0, min(DRAIN_POLL_S, left)))
                if done:
                    task.result()  # raises what receive() raised (413, ClientDisconnect)
                    body = b"".join(chunks)
                    charset = _charset(request.headers.get("content-type", ""))
                    if charset not in (None, "utf-8", "utf8") and not body.isascii():  # ASCII reads alike in any
                        raise BadRequest(f"the body's charset {charset[:40]!r} is not supported: send UTF-8 JSON", 415)
                    return body
                if getattr(engine, "draining", False):
                    raise Unavailable("the server is shutting down")
                if left <= DRAIN_POLL_S:
                    raise BadRequest(f"the body did not arrive within {config.body_timeout_s:g} s", 408)
        finally:
            if not task.done():
                task.cancel()

    def check_model(request: Request) -> None:
        name = request.path_params.get("name")
        if name != engine.name:
            raise BadRequest(f"unknown model {name[:80]!r}: this server serves {engine.name!r}", 404)
        version = request.path_params.get("version")
        if version is not None and version != "1":
            raise BadRequest(f"unknown version {version[:20]!r} of model {engine.name!r}: it has version '1'", 404)

    def handler(route: str, fn):
        async def endpoint(request: Request) -> Response:
            t = time.perf_counter()
            metrics.in_flight.inc()
            try:
                response = await fn(request)
            except BadRequest as exc:
                response = error(exc.status, str(exc))
            except Unavailable as exc:
                response = error(503, str(exc), retry_after=retry)
            except InferenceFailed as exc:
                response = error(500, str(exc))
            except ClientDisconnect:  # the client left mid-body: nothing to answer, not a server error
                log.info("the client of a request to %s left before its answer", route)
                response = error(499, "client closed the request")
            except Exception as exc:  # noqa: BLE001 - never a traceback to the client
                log.exception("unexpected error on %s", route)
                response = error(500, f"internal error ({type(exc).__name__})")
            finally:
                metrics.in_flight.dec()
            metrics.observe_request(route, response.status_code, time.perf_counter() - t)
            return response

        return endpoint

    async def infer_while_connected(request: Request, texts: list[str]):
        """``engine.infer(texts)``, given up when the client goes away first (a closed socket,
        a client timeout): its texts are dropped from the queue if they are still waiting there,
        and the request counts as 499, not as a 200 nobody read."""
        if not getattr(engine, "watches_disconnect", False):
            return await engine.infer(texts)
        job = asyncio.ensure_future(engine.infer(texts))
        gone = asyncio.ensure_future(disconnected(request))
        try:
            await asyncio.wait({job, gone}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            job.cancel()
            raise
        finally:
            gone.cancel()
        if not job.done():
            job.cancel()
            raise ClientDisconnect()
        return job.result()

    async def predict(request: Request) -> Response:
        texts = parse_predict(await read_body(request), config.max_texts)
        result = await infer_while_connected(request, texts)
        if per_token:
            rows = entities_response(result.entities, result.truncated)
        else:
            rows = predict_response(engine.labels, result.probs, result.truncated)
        return JSONResponse({"model": engine.name, "predictions": rows})

    async def infer(request: Request) -> Response:
        check_model(request)
        body = await read_body(request)
        req = parse_infer(body, request.headers.get(HEADER_LENGTH), config.max_texts, outputs)
        result = await infer_while_connected(request, req.texts)
        content, headers = infer_response(
            req, engine.name, engine.labels, result.probs, result.truncated, result.entities if per_token else None
        )
        return Response(content, headers=headers)

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        ok = bool(engine.ready) and not engine.draining
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_metadata(request: Request) -> Response:
        return JSONResponse({"name": "fastft", "version": __version__, "extensions": ["binary_tensor_data"]})

    async def model_meta(request: Request) -> Response:
        check_model(request)
        return JSONResponse(model_metadata(engine.name, engine.labels, engine.platform, per_token))

    async def model_ready(request: Request) -> Response:
        check_model(request)
        ok = bool(engine.ready) and not engine.draining
        return JSONResponse({"name": engine.name, "ready": ok}, status_code=200 if ok else 503)

    async def prometheus(request: Request) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def index(request: Request) -> Response:
        return JSONResponse(engine.info())

    routes = [Route("/predict", handler("/predict", predict), methods=["POST"])]
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        routes += [
            Route(prefix + "/infer", handler("/v2/infer", infer), methods=["POST"]),
            Route(prefix + "/ready", handler("/v2/model/ready", model_ready), methods=["GET"]),
            Route(prefix, handler("/v2/model", model_meta), methods=["GET"]),
        ]
    routes += [
        Route("/v2/health/live", handler("/v2/health/live", live), methods=["GET"]),
        Route("/v2/health/ready", handler("/v2/health/ready", ready), methods=["GET"]),
        Route("/v2", handler("/v2", server_metadata), methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/", handler("/", index), methods=["GET"]),
    ]

    async def http_error(request: Request, exc: HTTPException) -> Response:
        path = request.url.path[:200]
        slash = " (routes end without '/')" if len(path) > 1 and path.endswith("/") else ""
        msg = {404: f"no route {path}{slash}", 405: f"{request.method} is not allowed on {path}"}
        metrics.observe_request("other", exc.status_code)
        return JSONResponse(
            {"error": msg.get(exc.status_code, exc.detail)},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def internal_error(request: Request, exc: Exception) -> Response:
        return error(500, f"internal error ({type(exc).__name__})")

    @contextlib.asynccontextmanager
    async def life(_app):
        if lifespan:
            engine.start()
        try:
            yield
        finally:
            if lifespan:
                engine.stop()

    asgi = Starlette(
        routes=routes,
        lifespan=life,
        exception_handlers={HTTPException: http_error, Exception: internal_error},
        middleware=[Middleware(ConnectionHygiene, metrics=metrics)],
    )
    # a trailing slash is a 404 with a hint, not a 307 to the route (a client that does not follow
    # redirects, or drops the body doing so, would see an empty answer)
    asgi.router.redirect_slashes = False
    asgi.state.engine = engine
    asgi.state.metrics = metrics
    asgi.state.config = config
    return asgi


def app(model_dir, config: ServeConfig | None = None, **options) -> Starlette:
    """The ASGI app serving ``model_dir`` (any fastft, exported or Optimum-style directory).

    ``options`` are :class:`ServeConfig` fields (``max_batch_tokens=...``, ``workers=...``).
    The model is loaded now (a bad directory raises :class:`fastft.FastftError` here);
    warm-up runs when the server starts, and ``/v2/health/ready`` turns true after it.
    """
    import dataclasses

    from fastft.runtime import load, physical_cores

    config = dataclasses.replace(config or ServeConfig(), **options).check()
    threads = config.threads or max(1, physical_cores() // config.workers)
    if config.threads is None:
        config = dataclasses.replace(config, threads=threads)
    if config.workers * threads > physical_cores():
        log.warning(
            "%d workers x %d threads oversubscribe %d physical cores: expect worse throughput and tail latency",
            config.workers,
            threads,
            physical_cores(),
        )
    int8 = None if config.precision is None else config.precision == "int8"
    predictor = load(model_dir, threads=threads, int8=int8, batch_int8=config.batch_int8)
    metrics = ServeMetrics()
    engine = LocalEngine(predictor, config, metrics)
    info = predictor.info()
    metrics.info.labels(engine.name, str(info.get("file", "")), str(config.workers), str(threads)).set(1)
    return build_app(engine, config, metrics)
