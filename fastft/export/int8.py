"""The one accuracy-aware INT8 routine: quantise, check, and keep the most sensitive nodes in fp32
until the check passes, with a pluggable sensitivity policy.

    search = accuracy_aware(build, check, KLSensitivity(nodes, reference, logits_of))

``build(exclude, probe=False) -> Path`` writes the INT8 graph with the nodes ``exclude`` kept in
fp32 (``probe``: a graph only the policy looks at); ``check(path, exclude) -> (passed, record)``
judges it (``check=None``: nothing to check, one attempt). The first attempt quantises
everything; only if it fails does the policy rank the nodes (most sensitive first) and name how
many of them to keep in fp32 at each further attempt. A policy has ``rank(build) -> (ranked
nodes, {node: score})`` and ``steps(n) -> [k, ...]``.

:class:`KLSensitivity` is the policy of both callers (``fastft export``: label agreement with
fp32 >= 99%; ``fastft compress``: accuracy drop within its budget): each node quantised alone,
ranked by the mean KL of its logits from fp32's on a subset, tried at 1, 2, 4, ... nodes. It
costs one quantisation and one subset inference per node, and only when all-INT8 fails the
check. It replaced the fixed heuristic order (first layer, then FFN output, then FFN input
MatMuls) export used (bench/results/int8_policy.json, bench/bench_int8_policy.py): under
export's check the heuristic kept 12 of 24 MatMuls of the movie-snippets teacher in fp32
(1.24x / 1.07x faster than fp32 in CPU p50 at seq 128 / 512) where KL kept 4 (1.32x / 1.24x);
on a compressed 3-layer student both kept the same single MatMul, KL's ranking costing 47 s
more CPU; under compress's budget all-INT8 passed on both models, so no policy was consulted.
The heuristic never gave the smaller graph, only the cheaper search.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Attempt:
    excluded: list[str]
    path: Path
    passed: bool
    record: dict


@dataclass
class Int8Search:
    """What :func:`accuracy_aware` did: every attempt, the last one (the result), the ranking used."""

    attempts: list[Attempt]
    ranking: dict = field(default_factory=dict)  # node -> sensitivity, where the policy measures one

    @property
    def final(self) -> Attempt:
        return self.attempts[-1]


class KLSensitivity:
    """Rank nodes by the KL of their logits from fp32's when quantised alone; keep 1, 2, 4, ... of them."""

    def __init__(self, nodes: Sequence[str], reference: Callable, logits_of: Callable, progress: bool = True):
        """nodes: the quantisable nodes; reference(): fp32 logits on the subset (computed only when
        ranking is needed); logits_of(path): a graph's logits on the same subset."""
        self.nodes, self.reference, self.logits_of, self.progress = list(nodes), reference, logits_of, progress

    def rank(self, build) -> tuple[list[str], dict]:
        ref = self.reference()
        sens = {}
        for i, node in enumerate(self.nodes):
            probe = build([n for n in self.nodes if n != node], probe=True)
            sens[node] = kl_divergence(ref, self.logits_of(probe))
            if self.progress:
                print(
                    f"sensitivity {i + 1}/{len(self.nodes)}: {node} KL {sens[node]:.3g}      ",
                    file=sys.stderr,
                    end="\r",
                    flush=True,
                )
        if self.progress:
            print("", file=sys.stderr, flush=True)
        return sorted(self.nodes, key=lambda n: -sens[n]), dict(sorted(sens.items(), key=lambda kv: -kv[1]))

    def steps(self, n: int) -> list[int]:
        out, k = [], 1
        while k <= n:
            out.append(k)
            if k == n:
                break
            k = min(n, k * 2)
        return out


def accuracy_aware(build: Callable, check: Callable | None, policy=None, on_attempt: Callable | None = None):
    """Quantise with ``build``; while ``check`` fails, keep more of ``policy``'s ranking in fp32.

    build(exclude, probe=False) -> Path; check(path, exclude) -> (passed, record); policy:
    :class:`KLSensitivity` (or another object with ``rank``/``steps``), or None (no fallback).
    on_attempt(Attempt) is called after each attempt.
    """
    attempts: list[Attempt] = []

    def attempt(exclude: list[str]) -> Attempt:
        path = build(exclude)
        passed, record = (True, {}) if check is None else check(path, exclude)
        a = Attempt(list(exclude), Path(path), passed, record)
        attempts.append(a)
        if on_attempt is not None:
            on_attempt(a)
        return a

    a = attempt([])
    search = Int8Search(attempts)
    if a.passed or policy is None:
        return search
    ranked, search.ranking = policy.rank(build)
    for k in policy.steps(len(ranked)):
        if attempt(ranked[:k]).passed:
            break
    return search


def kl_divergence(p_logits, q_logits) -> float:
    """Mean KL(p || q) of the softmax of two logit arrays (rows: examples)."""
    import numpy as np

    def logsm(x):
        x = x - x.max(1, keepdims=True)
        return x - np.log(np.exp(x).sum(1, keepdims=True))

    lp, lq = logsm(p_logits), logsm(q_logits)
    return float((np.exp(lp) * (lp - lq)).sum(1).mean())
