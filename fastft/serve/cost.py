"""The batch cost table: when is one ONNX Runtime call of merged texts faster than separate calls?

    cost = CostModel.measure(run, max_batch_size=64, max_length=128, max_batch_tokens=8192)
    cost.plan(np.array([61, 60, 12, 11, 11]))     # [(0, 2), (2, 5)]: the long pair, the short three

On a CPU, merging short texts often buys nothing (the work grows with the padded tokens
and one call already keeps the cores busy), while a per-call overhead or idle cores make it
pay elsewhere. So the server measures instead of assuming: at warm-up it times real calls on
a grid of batch sizes x lengths and interpolates a table; :meth:`CostModel.plan` then splits
length-sorted texts into the calls of least predicted total time.
"""

from __future__ import annotations

import time

import numpy as np


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
    def measure(
        cls,
        run,
        max_batch_size: int,
        max_length: int,
        max_batch_tokens: int,
        budget_s: float = 15.0,
        passes: int = 3,
        seed: int = 0,
    ):
        """Time ``run(n, w)`` (one call, seconds) on a grid of batch sizes x lengths.

        ``passes`` sweeps over the grid, each in a new random order, keeping each point's
        fastest time: load from other processes only ever adds time, and shuffling keeps a busy
        moment from inflating one whole row or column of the table. The first sweep always
        completes; later ones stop at ``budget_s``.
        """
        ns = sorted({n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256) if n <= max_batch_size} | {max_batch_size})
        ws = sorted({w for w in (8, 16, 32, 64, 128, 256, 512) if w <= max_length} | {max_length})
        points = [(n, w) for w in ws for n in ns if n * w <= max_batch_tokens or n == 1]
        rng = np.random.default_rng(seed)
        t_end = time.perf_counter() + budget_s
        grid: dict[tuple[int, int], float] = {}
        for k in range(passes):
            if k and time.perf_counter() > t_end:
                break
            for i in rng.permutation(len(points)):
                n, w = points[i]
                if k and time.perf_counter() > t_end:  # the first sweep always completes
                    break
                t = run(n, w)
                grid[(n, w)] = min(t, grid.get((n, w), t))
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
        return cls(
            table,
            max_batch_size,
            max_batch_tokens,
            "measured",
            [{"n": n, "w": w, "ms": round(t * 1e3, 4)} for (n, w), t in sorted(grid.items())],
        )

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
