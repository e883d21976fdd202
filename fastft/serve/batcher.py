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

from fastft.core.numerics import check_finite, softmax
from fastft.runtime.encode import NO_TOKENS, Encoded, Encoder
from fastft.serve.cost import CostModel
from fastft.serve.protocol import BadRequest

log = logging.getLogger("fastft.serve")


class QueueFull(Exception):
    """The request queue is full: answer 503 with Retry-After."""


class ShuttingDown(Exception):
    """The server is draining: new requests are refused."""


class InferenceFailed(Exception):
    """ONNX Runtime failed on a batch this request was part of."""


@dataclass
class Result:
    """One request's answers: probabilities (n, num_labels) float32 and truncation flags, in input order.

    Token classification: ``probs`` is a list of (tokens, num_labels) arrays, one per text, and
    ``entities`` the entities of each text (:meth:`fastft.runtime.Predictor.entities`).
    """

    probs: np.ndarray | list
    truncated: list[bool]
    entities: list[list[dict]] | None = None


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


class Batcher:
    """Worker threads that merge queued requests into ONNX Runtime calls (see the module doc)."""

    def __init__(
        self,
        predictor,
        *,
        workers: int = 1,
        max_batch_tokens: int = 8192,
        max_batch_size: int = 64,
        max_wait_ms: float = 0.0,
        max_queue: int = 1024,
        batching: bool = True,
        metrics=None,
    ):
        self.predictor = predictor
        self.per_token = bool(getattr(predictor, "per_token", False))
        self.encoder = Encoder(predictor.tokenizer, predictor.max_length, offsets=self.per_token)
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

    @property
    def isolated(self) -> bool:
        """The predictor runs each text in a call of its own (a dynamic INT8 graph without batch_int8)."""
        return bool(getattr(self.predictor, "isolated", False))

    def warm_up(self, calibrate: bool = True, budget_s: float = 15.0) -> None:
        """Run every width once (ORT allocates per shape), then measure the cost table."""
        run = self._timed_call
        for w in (8, 32, 128, self.predictor.max_length):
            run(1, min(w, self.predictor.max_length))
        if calibrate and self.batching and not self.isolated:  # an isolated predictor never merges
            self.cost = CostModel.measure(
                run, self.max_batch_size, self.predictor.max_length, self.max_batch_tokens, budget_s=budget_s
            )

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
        if self._stopped.is_set():  # a stop during warm-up: no more calls (the process is about to exit)
            raise ShuttingDown("the server stopped while warming up")
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
            return
        i = self.encoder.first_tokenless(job.enc)
        if i is not None:  # the model would label it from nothing
            job.error, job.enc = BadRequest(f"text #{i} (from 0) {NO_TOKENS}", 422), None

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
                j.probs = (
                    [None] * len(j.texts)
                    if self.per_token
                    else np.empty((len(j.texts), len(self.predictor.labels)), dtype=np.float32)
                )
            if self.isolated:  # dynamic INT8: a text's answer is its own
                chunks = [(s, s + 1) for s in range(len(order))]
            elif self.batching:
                chunks = self.cost.plan(sorted_len)
            else:  # one request, its texts in calls of at most max_batch_size
                chunks = [
                    (s, min(s + self.max_batch_size, len(order))) for s in range(0, len(order), self.max_batch_size)
                ]
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
                    # token classification: the text's own tokens, padding cut off
                    live[ji].probs[k] = probs[row, : lengths[i]] if self.per_token else probs[row]

    def _call(self, enc: Encoded, idx: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        feeds = self.encoder.batch(enc, idx)
        t = time.perf_counter()
        logits = check_finite(self.predictor.logits_from_ids(**feeds))
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
        if self.per_token:
            try:
                out.entities = [
                    self.predictor.entities(self.encoder, j.enc, k, t, p)
                    for k, (t, p) in enumerate(zip(j.texts, j.probs))
                ]
            except Exception as exc:  # noqa: BLE001 - this request fails, the worker keeps serving
                log.exception("grouping entities failed")
                return InferenceFailed(f"grouping entities failed ({type(exc).__name__}: {str(exc)[:200]})")
        if self.metrics is not None and any(out.truncated):
            self.metrics.truncated.inc(sum(out.truncated))
        j.enc = None
        return out

    def _deliver(self, jobs: list[_Job]) -> None:
        by_loop: dict = {}
        for j in jobs:
            if j.future is not None and j.future.cancelled():  # its client left (499): nobody waits, nothing ran
                continue
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
