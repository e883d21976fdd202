"""Run the app on uvicorn; SIGTERM/SIGINT drain: stop accepting, answer what was accepted, exit 0.

fastft.serve.run("runs/compressed", ServeConfig(port=8080))
"""

from __future__ import annotations

import errno
import json
import logging
import logging.config
import re
import signal
import socket
import sys
import time

from fastft.serve.config import HEAD_TOO_LARGE, MAX_HEAD_BYTES, ServeConfig

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


class HandledByGuard(logging.Filter):
    """Drops uvicorn's warning for each malformed request (the guarded protocol answers, counts
    in ``fastft_connections_closed_total`` and logs those, at most once a minute) and for each
    upgrade request (served as an ordinary request, ``ws="none"``): one line per such request
    would let any client flood the log."""

    DROPPED = ("Invalid HTTP request received.", "Unsupported upgrade request.", "No supported WebSocket library")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("uvicorn") and str(record.msg).startswith(self.DROPPED))


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
        "filters": {"handled": {"()": HandledByGuard}},
        "loggers": {
            name: {"handlers": ["stderr"], "level": "INFO", "propagate": False, "filters": ["handled"]}
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

    server = Server(uvicorn_config(asgi, config, log_config=log_config))
    log.info(
        "serving %s (%s, %d worker(s) x %d thread(s)) on http://%s:%s",
        engine.name,
        engine.predictor.info().get("file", engine.predictor.backend),
        config.workers,
        asgi.state.config.threads,
        config.host,
        config.port or "<a free port: uvicorn's line below names it>",
    )
    # uvicorn re-raises the signal it caught once it has shut down; with the default handler that
    # would kill the process (exit 143) after a clean drain. Handle it: a drained server exits 0.
    previous = {s: signal.signal(s, _ignore) for s in (signal.SIGTERM, signal.SIGINT)}
    # SIGHUP (a closed terminal) drains too; uvicorn does not take it, and fastft's CLI would
    # otherwise raise it inside whichever request was running. Unless it is ignored: a server
    # started under nohup is meant to outlive its terminal
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, server.handle_exit)
    try:
        server.run()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if not server.started:
        return 1
    log.info("stopped")
    return 0


def uvicorn_config(asgi, config: ServeConfig, **overrides):
    """uvicorn's config for ``asgi`` as ``fastft serve`` runs it: the guarded h11 protocol (see
    :func:`guarded_protocol`), no access log, no Server header; ``overrides`` are more
    ``uvicorn.Config`` arguments (``log_config``, ``port``...)."""
    import uvicorn

    options = {
        "host": config.host,
        "port": config.port,
        "http": guarded_protocol(config, asgi.state.metrics),
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
        "access_log": False,
        "lifespan": "on",
        "timeout_graceful_shutdown": 60,
        "server_header": False,
        # no WebSocket route: an upgrade request is an ordinary request (uvicorn's WebSocket
        # protocol would take the socket past the guard, and never give its slot back)
        "ws": "none",
    }
    return uvicorn.Config(asgi, **{**options, **overrides})


def _ignore(signum, frame) -> None:
    pass


def guarded_protocol(config: ServeConfig, metrics=None):
    """uvicorn's h11 protocol (h11 refuses an unfinished request head beyond ``MAX_HEAD_BYTES``;
    the default httptools parser buffers a header of any size), which also answers 408 and closes a
    connection whose next request line and headers have not all arrived within
    ``config.header_timeout_s`` of its opening or of its last response (a stalled or idle client
    must not hold a socket forever), and closes at once a connection beyond
    ``config.max_connections``, or beyond a quarter of them from one address (one client cannot
    take every slot). A request h11 cannot parse is answered like every other error, JSON
    ``{"error": ...}`` with h11's status (431 for a head past the limit, else 400), not uvicorn's
    plain text. Closing is logged at most once a minute, with a count, and counted in
    ``metrics`` (``fastft_connections_closed_total{reason}``)."""
    import collections

    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    timeout_response = closing_error(408, f"the request head did not arrive within {config.header_timeout_s:g} s")
    per_peer_cap = max(16, config.max_connections // 4)
    per_peer: collections.Counter = collections.Counter()
    unlogged: collections.Counter = collections.Counter()  # closings per reason since it was last logged
    last_logged: dict[str, float] = {}

    def closed(reason: str, why: str) -> None:
        if metrics is not None:
            metrics.connections_closed.labels(reason).inc()
        unlogged[reason] += 1
        now = time.monotonic()
        if now - last_logged.get(reason, -60.0) >= 60:
            log.warning("closed %d connection(s) (%s) since the last such line: %s", unlogged[reason], reason, why)
            unlogged[reason] = 0
            last_logged[reason] = now

    def refuse(transport, why: str) -> None:
        transport.write(closing_error(503, f"too many connections: {why}", retry_after=config.retry_after_s))
        transport.close()
        closed("over_limit", why)

    class LingeringTransport:
        """The connection's transport, closed gently while the client may still be sending a body
        the server answered without reading (413, 408, 404...): closing a socket with unread bytes
        makes the kernel reset it, and a client still writing its body then gets the reset, not the
        answer. So the write side is shut first, and what still arrives is read and dropped for at
        most ``LINGER_S`` or ``LINGER_BYTES``, then the socket is closed."""

        def __init__(self, transport, protocol):
            self._transport = transport
            self._protocol = protocol
            self.lingering = False
            self.dropped = 0

        def __getattr__(self, name):
            return getattr(self._transport, name)

        def is_closing(self) -> bool:
            return self.lingering or self._transport.is_closing()

        def close(self) -> None:
            t = self._transport
            if self.lingering or t.is_closing() or self._protocol.conn.their_state is not h11.SEND_BODY:
                return t.close()
            try:
                t.write_eof()
                t.resume_reading()
            except (OSError, RuntimeError):  # already gone, or a transport that cannot half-close
                return t.close()
            self.lingering = True
            self._protocol.loop.call_later(LINGER_S, t.close)

        def drop(self, data: bytes) -> None:
            self.dropped += len(data)
            if self.dropped > LINGER_BYTES:
                self._transport.close()

    class GuardedH11(H11Protocol):
        _head_timer = None  # one per connection: re-armed after each response, cancelled when it closes
        _write_timer = None  # while the client reads nothing of what is sent (the send buffer is full)
        _peer = None

        def pause_writing(self) -> None:
            # the kernel's send buffer and the transport's are full: a client that never reads its
            # answers (thousands of pipelined requests) held the connection, and megabytes, forever
            super().pause_writing()
            if self._write_timer is None:
                self._write_timer = self.loop.call_later(config.body_timeout_s, self._write_timeout)

        def resume_writing(self) -> None:
            super().resume_writing()
            if self._write_timer is not None:
                self._write_timer.cancel()
                self._write_timer = None

        def _write_timeout(self) -> None:
            self._write_timer = None
            self.transport.abort()  # what it would not read is dropped (a closing transport would wait for it)
            closed("write_timeout", f"the client read none of its answers for {config.body_timeout_s:g} s")

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > config.max_connections:
                return refuse(transport, f"{config.max_connections} connections were open")
            peer = self.client[0] if self.client else None
            if peer is not None and per_peer[peer] >= per_peer_cap:
                return refuse(transport, f"{per_peer_cap} connections from one address were open")
            if peer is not None:
                self._peer = peer
                per_peer[peer] += 1
            self.transport = LingeringTransport(transport, self)
            self._arm_head_timer()

        def data_received(self, data: bytes) -> None:
            if isinstance(self.transport, LingeringTransport) and self.transport.lingering:
                return self.transport.drop(data)  # the rest of a body already answered
            super().data_received(data)

        def on_response_complete(self) -> None:
            if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
                # answered before its body was all read (a 404, a 405...): the connection cannot
                # carry another request until that body has come, which a client may never send
                self.transport.close()
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_head_timer()

        def connection_lost(self, exc) -> None:
            for timer in (self._head_timer, self._write_timer):
                if timer is not None:
                    timer.cancel()
            self._head_timer = self._write_timer = None
            if self._peer is not None:
                per_peer[self._peer] -= 1
                if per_peer[self._peer] <= 0:
                    del per_peer[self._peer]
                self._peer = None
            super().connection_lost(exc)

        def _arm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(config.header_timeout_s, self._head_timeout)

        def _head_timeout(self) -> None:
            self._head_timer = None
            # only while no request head has arrived: a request in progress (a pipelined one too)
            # is left to its body timeout and to inference
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            self.transport.write(timeout_response)
            self.transport.close()
            closed("head_timeout", f"no request head within {config.header_timeout_s:g} s")

        def send_400_response(self, msg: str) -> None:
            # uvicorn calls this while it handles h11's RemoteProtocolError (a malformed request)
            exc = sys.exc_info()[1]
            status = getattr(exc, "error_status_hint", 400) if isinstance(exc, h11.RemoteProtocolError) else 400
            if status == 431:
                text = HEAD_TOO_LARGE
            else:
                status = 400
                why = re.sub(r"bytearray\((b'.*?')\)", r"\1", str(exc or msg))  # h11's repr of the bytes it saw
                text = f"malformed HTTP request: {why[:160]}"
            self.transport.write(closing_error(status, text))
            self.transport.close()
            closed("malformed", text[:200])

    return GuardedH11


LINGER_S = 2.0  # how long a connection answered before its body was read still reads (and drops) it
LINGER_BYTES = 64 * 1024 * 1024  # and at most this much of it


def closing_error(status: int, message: str, retry_after: int | None = None) -> bytes:
    """A whole HTTP/1.1 response, written to the socket below the ASGI app: the JSON error every
    route answers with, and ``connection: close`` (the server closes the connection after it)."""
    from http import HTTPStatus

    body = json.dumps({"error": message}).encode()
    retry = f"retry-after: {retry_after}\r\n" if retry_after is not None else ""
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
        f"{retry}connection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def check_port(host: str, port: int) -> None:
    """A clear error before minutes of loading when the address cannot be bound."""
    from fastft.core.checks import arg
    from fastft.core.errors import FastftError

    try:  # (port 0 too: the host is checked, and any free port binds)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FastftError(f"{arg('host')} {host!r} does not resolve ({exc.strerror})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            why = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
            other = "--port" if exc.errno == errno.EADDRINUSE else "--host (an address of this machine)"
            raise FastftError(f"{host}:{port} {why}; pick another {other}") from None
