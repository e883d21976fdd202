"""Dynamic batching: concurrent requests merged into few ONNX Runtime calls, off the event loop.

    batcher = Batcher(predictor, workers=1, max_batch_tokens=8192, max_batch_size=64)
    batcher.start(); batcher.warm_up()
    result = await batcher.submit(["a fine film", "a dull mess"])   # Result(probs, truncated)

The event loop only enqueues a request and awaits its future. ``workers`` inference threads
(one per core group, each with its own intra-op threads, never more than the cores) take
the queued requests: a worker takes the first request, then whatever else is queued (or
arrives within ``max_wait_ms``) up to ``max_batch_size`` texts and ``max_batch_tokens``
tokens, tokenizes them, sorts the texts by length and splits them into ONNX Runtime calls
with a cost table measured at warm-up (:class:`CostModel`): texts are merged into one call
only where one call is predicted to be faster than separate ones, so short texts are not
padded for nothing. Each request gets its own rows back, in its own order. A failing call
fails only the requests that had texts in it; the worker keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np

from fastft.runtime.encode import Encoded, Encoder
from fastft.utils.numeric import softmax

log = logging.getLogger("fastft.serve")


class QueueFull(Exception):
    """The request queue is full: answer 503 with Retry-After."""


class ShuttingDown(Exception):
    """The server is draining: new requests are refused."""


class InferenceFailed(Exception):
    """ONNX Runtime failed on a batch this request was part of."""


@dataclass
class Result:
    """One request's answers: probabilities (n, num_labels) float32 and truncation flags, in input order."""

    probs: np.ndarray
    truncated: list[bool]


class _Job:
    __slots__ = ("texts", "future", "loop", "t0", "enc", "probs", "error")

    def __init__(self, texts, future, loop):
        self.texts = texts
        self.future = future
        self.loop = loop
        self.t0 = time.perf_counter()
        self.enc = None
        self.probs = None
        self.error = None


class CostModel:
    """Predicted seconds of one call of ``n`` texts padded to ``w`` tokens: ``table[n, w]``.

    :meth:`measure` times real calls on a grid of (n, w) and interpolates; :meth:`padding_rule`
    is the fallback (a fixed per-call overhead worth ``overhead_tokens`` plus one unit per
    padded token). :meth:`plan` splits length-sorted texts into the calls of least total cost.
    """

    def __init__(self, table: np.ndarray, max_batch_size: int, max_batch_tokens: int, source: str, grid=None):
        self.table = table
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.source = source
        self.grid = grid or []

    @classmethod
    def padding_rule(cls, max_batch_size: int, max_length: int, max_batch_tokens: int, overhead_tokens: int = 32):
        n = np.arange(max_batch_size + 1, dtype=np.float64)[:, None]
        w = np.arange(max_length + 1, dtype=np.float64)[None, :]
        return cls(overhead_tokens + n * w, max_batch_size, max_batch_tokens, "padding-rule")

    @classmethod
    def measure(cls, run, max_batch_size: int, max_length: int, max_batch_tokens: int, budget_s: float = 15.0):
        """Time ``run(n, w)`` (one call, seconds) on a grid; the fastest of up to 5 runs (1 for long calls)."""
        ns = sorted({n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256) if n <= max_batch_size} | {max_batch_size})
        ws = sorted({w for w in (8, 16, 32, 64, 128, 256, 512) if w <= max_length} | {max_length})
        t_end = time.perf_counter() + budget_s
        grid: dict[tuple[int, int], float] = {}
        for w in ws:
            for n in ns:
                if n * w > max_batch_tokens and n > 1 or time.perf_counter() > t_end:
                    continue
                first = run(n, w)
                reps = [first] + [run(n, w) for _ in range(4 if first < 0.02 else 2 if first < 0.1 else 0)]
                grid[(n, w)] = float(min(reps))  # the least disturbed run: other processes only add time
        if not grid:
            return cls.padding_rule(max_batch_size, max_length, max_batch_tokens)
        table = np.empty((max_batch_size + 1, max_length + 1))
        per_w = {}
        all_n = np.arange(max_batch_size + 1, dtype=np.float64)
        for w in ws:
            pts = sorted((n, t) for (n_, w_), t in grid.items() if w_ == w for n in [n_])
            if not pts:
                continue
            xn = np.array([p[0] for p in pts], dtype=np.float64)
            yt = np.array([p[1] for p in pts])
            row = np.interp(all_n, xn, yt)
            big = all_n > xn[-1]  # beyond the measured sizes: the last per-text cost, linearly
            row[big] = yt[-1] * all_n[big] / xn[-1]
            per_w[w] = row
        wk = np.array(sorted(per_w), dtype=np.float64)
        rows = np.stack([per_w[int(w)] for w in wk], axis=1)  # (n, len(wk))
        all_w = np.arange(max_length + 1, dtype=np.float64)
        for n in range(max_batch_size + 1):
            table[n] = np.interp(all_w, wk, rows[n])
        table[0] = 0.0
        return cls(table, max_batch_size, max_batch_tokens, "measured",
                   [{"n": n, "w": w, "ms": round(t * 1e3, 4)} for (n, w), t in sorted(grid.items())])

    def plan(self, lengths: np.ndarray) -> list[tuple[int, int]]:
        """Chunks [start, end) of ``lengths`` (sorted longest first) of least predicted total cost."""
        m = len(lengths)
        if m == 1:
            return [(0, 1)]
        lengths = np.minimum(lengths, self.table.shape[1] - 1)
        best = np.full(m + 1, np.inf)
        best[0] = 0.0
        cut = np.zeros(m + 1, dtype=np.int64)
        for j in range(1, m + 1):
            lo = max(0, j - self.max_batch_size)
            i = np.arange(lo, j)
            n = j - i
            w = lengths[i]  # longest of [i, j) is its first
            ok = (n * w <= self.max_batch_tokens) | (n == 1)
            i, n, w = i[ok], n[ok], w[ok]
            cost = best[i] + self.table[n, w]
            k = int(np.argmin(cost))
            best[j], cut[j] = cost[k], i[k]
        out, j = [], m
        while j > 0:
            out.append((int(cut[j]), j))
            j = int(cut[j])
        return out[::-1]

    def info(self) -> dict:
        return {"source": self.source, "grid": self.grid}


class Batcher:
    """Worker threads that merge queued requests into ONNX Runtime calls (see the module doc)."""

    def __init__(self, predictor, *, workers: int = 1, max_batch_tokens: int = 8192, max_batch_size: int = 64,
                 max_wait_ms: float = 0.0, max_queue: int = 1024, batching: bool = True, metrics=None):
        self.predictor = predictor
        self.encoder = Encoder(predictor.tokenizer, predictor.max_length)
        self.workers = int(workers)
        self.max_batch_tokens = int(max_batch_tokens)
        self.max_batch_size = int(max_batch_size)
        self.max_wait = float(max_wait_ms) / 1e3
        self.batching = bool(batching)
        self.metrics = metrics
        self.cost = CostModel.padding_rule(self.max_batch_size, predictor.max_length, self.max_batch_tokens)
        self._queue: queue.Queue = queue.Queue(maxsize=int(max_queue))
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._stopped = threading.Event()

    # -- event loop side ----------------------------------------------------------------
    def submit(self, texts: list[str]) -> asyncio.Future:
        """Queue one request; its future gets a :class:`Result` (or InferenceFailed)."""
        if self._closing:
            raise ShuttingDown("the server is shutting down")
        loop = asyncio.get_running_loop()
        job = _Job(texts, loop.create_future(), loop)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"the request queue is full ({self._queue.maxsize} requests waiting)") from None
        if self.metrics is not None:
            self.metrics.queued.set(self._queue.qsize())
        return job.future

    def queued(self) -> int:
        return self._queue.qsize()

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        for k in range(self.workers):
            t = threading.Thread(target=self._worker, name=f"fastft-infer-{k}", daemon=True)
            t.start()
            self._threads.append(t)

    def warm_up(self, calibrate: bool = True, budget_s: float = 15.0) -> None:
        """Run every width once (ORT allocates per shape), then measure the cost table."""
        run = self._timed_call
        for w in (8, 32, 128, self.predictor.max_length):
            run(1, min(w, self.predictor.max_length))
        if calibrate and self.batching:
            self.cost = CostModel.measure(run, self.max_batch_size, self.predictor.max_length,
                                          self.max_batch_tokens, budget_s=budget_s)

    def stop(self, timeout: float | None = 30.0) -> None:
        """Refuse new requests, answer every queued one, then stop the workers."""
        self._closing = True
        self._stopped.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        left = []  # a request that slipped in as the workers stopped: answer it, never leave it hanging
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            job.error = ShuttingDown("the server is shutting down")
            left.append(job)
        if left:
            self._deliver(left)

    def _timed_call(self, n: int, w: int) -> float:
        ids = np.full((n, w), 1996, dtype=np.int64)  # any in-vocabulary id; only the shape matters
        ids[:, 0], ids[:, -1] = 101, 102
        mask = np.ones_like(ids)
        t = time.perf_counter()
        self.predictor.logits_from_ids(input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids))
        return time.perf_counter() - t

    # -- worker side --------------------------------------------------------------------
    def _worker(self) -> None:
        carry: _Job | None = None
        while True:
            if carry is not None:
                first, carry = carry, None
            else:
                try:
                    first = self._queue.get(timeout=0.1)
                except queue.Empty:
                    if self._stopped.is_set():
                        return
                    continue
            jobs = [first]
            if first.enc is None and first.error is None:
                self._encode(first)
            if self.batching:
                carry = self._gather(jobs)
            if self.metrics is not None:
                self.metrics.queued.set(self._queue.qsize())
            self._run(jobs)
            self._deliver(jobs)

    def _gather(self, jobs: list[_Job]) -> _Job | None:
        """Add queued requests to ``jobs`` within the limits; a request that does not fit is returned."""
        texts = sum(len(j.texts) for j in jobs)
        tokens = sum(sum(map(len, j.enc.ids)) for j in jobs if j.enc is not None)
        deadline = time.perf_counter() + self.max_wait
        while texts < self.max_batch_size and tokens < self.max_batch_tokens:
            try:
                left = deadline - time.perf_counter()
                job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                return None
            self._encode(job)
            n = len(job.texts)
            t = sum(map(len, job.enc.ids)) if job.enc is not None else 0
            if texts + n > self.max_batch_size or tokens + t > self.max_batch_tokens:
                return job
            jobs.append(job)
            texts += n
            tokens += t
        return None

    def _encode(self, job: _Job) -> None:
        now = time.perf_counter()
        if self.metrics is not None:
            self.metrics.queue_seconds.observe(now - job.t0)
        try:
            job.enc = self.encoder.encode(job.texts)
        except Exception as exc:  # noqa: BLE001 - one request's texts; never the others'
            log.exception("tokenization failed")
            job.error = InferenceFailed(f"tokenization failed ({type(exc).__name__}: {exc})")

    def _run(self, jobs: list[_Job]) -> None:
        live = [j for j in jobs if j.error is None and (j.future is None or not j.future.cancelled())]
        if live:
            if self.metrics is not None:
                self.metrics.requests_per_batch.observe(len(live))
            owner = [(jobs_i, k) for jobs_i, j in enumerate(live) for k in range(len(j.texts))]
            ids = [i for j in live for i in j.enc.ids]
            types = [t for j in live for t in j.enc.type_ids]
            enc = Encoded(ids, types, [])
            lengths = enc.lengths()
            order = np.argsort(-lengths, kind="stable")
            sorted_len = lengths[order]
            for j in live:
                j.probs = np.empty((len(j.texts), len(self.predictor.labels)), dtype=np.float32)
            if self.batching:
                chunks = self.cost.plan(sorted_len)
            else:  # one request, its texts in calls of at most max_batch_size
                chunks = [(s, min(s + self.max_batch_size, len(order))) for s in range(0, len(order), self.max_batch_size)]
            for s, e in chunks:
                idx = order[s:e]
                try:
                    probs = self._call(enc, idx, sorted_len[s:e])
                except Exception as exc:  # noqa: BLE001 - fail this call's requests, keep serving
                    log.exception("inference failed on a batch of %d texts", len(idx))
                    err = InferenceFailed(f"inference failed ({type(exc).__name__}: {str(exc)[:200]})")
                    for i in idx:
                        live[owner[i][0]].error = err
                    continue
                for row, i in enumerate(idx):
                    ji, k = owner[i]
                    live[ji].probs[k] = probs[row]

    def _call(self, enc: Encoded, idx: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        feeds = self.encoder.batch(enc, idx)
        t = time.perf_counter()
        logits = self.predictor.logits_from_ids(**feeds)
        dt = time.perf_counter() - t
        if self.metrics is not None:
            self.metrics.observe_call(len(idx), int(lengths.sum()), int(len(idx) * lengths.max()), dt)
        return softmax(logits.astype(np.float32, copy=False))

    def run_batch(self, requests: list[list[str]]) -> list:
        """Run these requests now, in the calling thread (Ray's ``@serve.batch`` path): Result or exception each."""
        jobs = [_Job(texts, None, None) for texts in requests]
        for j in jobs:
            self._encode(j)
        self._run(jobs)
        return [self._outcome(j) for j in jobs]

    def _outcome(self, j: _Job):
        if j.error is not None:
            return j.error
        out = Result(j.probs, list(j.enc.truncated))
        if self.metrics is not None and any(out.truncated):
            self.metrics.truncated.inc(sum(out.truncated))
        j.enc = None
        return out

    def _deliver(self, jobs: list[_Job]) -> None:
        by_loop: dict = {}
        for j in jobs:
            by_loop.setdefault(j.loop, []).append((j.future, self._outcome(j)))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:  # the loop is closed: nobody waits for these answers
                pass


def _resolve(items) -> None:
    for fut, out in items:
        if fut.done():
            continue
        if isinstance(out, BaseException):
            fut.set_exception(out)
        else:
            fut.set_result(out)
