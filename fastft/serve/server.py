"""Run the app on uvicorn; SIGTERM/SIGINT drain: stop accepting, answer what was accepted, exit 0.

fastft.serve.run("runs/compressed", ServeConfig(port=8080))
"""

from __future__ import annotations

import errno
import json
import logging
import logging.config
import signal
import socket
import time

from fastft.serve.config import ServeConfig

log = logging.getLogger("fastft.serve")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup_logging(json_logs: bool) -> dict:
    """Log config for our logger and uvicorn's (also handed to uvicorn, so it keeps it)."""
    fmt = {"()": JsonFormatter} if json_logs else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": fmt},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
        },
        "loggers": {
            name: {"handlers": ["stderr"], "level": "INFO", "propagate": False}
            for name in ("fastft.serve", "uvicorn", "uvicorn.error")
        },
    }
    logging.config.dictConfig(config)
    return config


def run(model_dir, config: ServeConfig | None = None) -> int:
    """Load, bind, serve until SIGTERM/SIGINT, drain, return 0."""
    import uvicorn

    from fastft.serve.routes import app as build

    config = (config or ServeConfig()).check()
    check_port(config.host, config.port)
    log_config = setup_logging(config.json_logs)
    asgi = build(model_dir, config)
    engine = asgi.state.engine

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            if not engine.draining:
                log.info(
                    "received %s: draining (no new connections; answering %d queued requests)",
                    signal.Signals(sig).name,
                    engine.batcher.queued(),
                )
            engine.draining = True  # ready -> 503 at once, for the load balancer
            super().handle_exit(sig, frame)

    uv = uvicorn.Config(
        asgi,
        host=config.host,
        port=config.port,
        log_config=log_config,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=60,
        server_header=False,
    )
    server = Server(uv)
    log.info(
        "serving %s (%s, %d worker(s) x %d thread(s)) on http://%s:%d",
        engine.name,
        engine.predictor.info().get("file", engine.predictor.backend),
        config.workers,
        asgi.state.config.threads,
        config.host,
        config.port,
    )
    # uvicorn re-raises the signal it caught once it has shut down; with the default handler that
    # would kill the process (exit 143) after a clean drain. Handle it: a drained server exits 0.
    previous = {s: signal.signal(s, _ignore) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if not server.started:
        return 1
    log.info("stopped")
    return 0


def _ignore(signum, frame) -> None:
    pass


def check_port(host: str, port: int) -> None:
    """A clear error before minutes of loading when the address cannot be bound."""
    from fastft.core.errors import FastftError

    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FastftError(f"--host {host!r} does not resolve ({exc.strerror})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            why = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
            raise FastftError(f"{host}:{port} {why}; pick another --port") from None
