"""ServeConfig: every knob of ``fastft serve``, checked before anything is loaded."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from fastft.core.errors import FastftError

PRECISIONS = ("int8", "fp32")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


MAX_HEAD_BYTES = 64 * 1024  # request line + headers: 431 and closed beyond it (h11 and ConnectionHygiene)
HEAD_TOO_LARGE = f"the request line and headers are more than {MAX_HEAD_BYTES} bytes"


@dataclass
class ServeConfig:
    """How a model directory is served.

    Batching: concurrent requests are merged into one ONNX Runtime call of at most
    ``max_batch_size`` texts and ``max_batch_tokens`` padded tokens; a worker waits at most
    ``max_wait_ms`` for more requests after the first (0: merge only what is already
    queued, which is what pays on CPU: requests pile up while a batch runs). Inside a
    merge, texts are grouped by length with a cost table measured at warm-up, so a merge
    is only made where it is predicted to be faster than separate calls.
    ``batching=False`` runs every request on its own (its texts in calls of at most
    ``max_batch_size``; a dynamic INT8 graph's one text per call unless ``batch_int8``).

    Workers: ``workers`` inference threads, each running ONNX Runtime with ``threads``
    intra-op threads; workers * threads should not exceed the physical cores.
    """

    name: str | None = None  # model name in the v2 routes [the directory's name]
    host: str = "127.0.0.1"
    port: int = 8080
    max_batch_tokens: int = 8192
    max_batch_size: int = 64
    max_wait_ms: float = 0.0
    max_queue: int = 256  # requests waiting for a worker; beyond it: 503 + Retry-After
    max_texts: int = 256  # texts in one request; beyond it: 413
    max_body_bytes: int = 4 << 20  # request body; beyond it: 413
    threads: int | None = None  # intra-op threads per worker [physical cores // workers]
    workers: int = 1
    precision: str | None = None  # int8 | fp32 [what fastft.json names as the default file]
    batching: bool = True
    batch_int8: bool = False  # merge texts in one call of a dynamic-INT8 graph (its scores then depend on them)
    calibrate: bool = True  # measure the batch cost table at warm-up (else: a padding rule)
    json_logs: bool = False
    retry_after_s: int = 1
    header_timeout_s: float = 10.0  # a connection's request line and headers; beyond it: closed
    body_timeout_s: float = 30.0  # a request's body; beyond it: 408
    max_connections: int = 1024  # open connections; beyond it a new one is closed at once

    def check(self) -> ServeConfig:
        from fastft.core.checks import MAX_THREADS, check_bool_fields

        check_bool_fields(self)

        def bounded(field, value, hi):
            flag = f"--{field.replace('_', '-')}"
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FastftError(f"{flag} must be a positive integer (got {value!r})")
            if value > hi:  # a typo: beyond these the server would allocate or spawn without end
                raise FastftError(f"{flag} must be at most {hi} (got {value})")

        for field, hi in (
            ("max_batch_tokens", 1 << 20),
            ("max_batch_size", 4096),
            ("max_queue", 1 << 16),
            ("max_texts", 1 << 16),
            ("max_body_bytes", 1 << 30),
            ("workers", 256),
            ("retry_after_s", 3600),
            ("max_connections", 1 << 16),
        ):
            bounded(field, getattr(self, field), hi)
        if self.threads is not None:
            bounded("threads", self.threads, MAX_THREADS)
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise FastftError(f"--port must be between 0 and 65535 (got {self.port!r})")
        if not isinstance(self.max_wait_ms, (int, float)) or not 0 <= self.max_wait_ms <= 1000:
            raise FastftError(f"--max-wait-ms must be between 0 and 1000 (got {self.max_wait_ms!r})")
        for field in ("header_timeout_s", "body_timeout_s"):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 3600:
                flag = "--" + field.removesuffix("_s").replace("_", "-")
                raise FastftError(f"{flag} must be in (0, 3600] seconds (got {v!r})")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise FastftError(f"--precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")
        if self.batch_int8 and self.precision == "fp32":
            raise FastftError("--batch-int8 is for the dynamic INT8 graph: not with --precision fp32")
        if self.name is not None and not _NAME.match(self.name):
            raise FastftError(
                f"--name must be 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit "
                f"(got {self.name[:40]!r}{'...' if len(self.name) > 40 else ''}, {len(self.name)} characters)"
            )
        return self

    def to_dict(self) -> dict:
        return asdict(self)
