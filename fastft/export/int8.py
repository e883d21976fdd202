"""The one accuracy-aware INT8 routine: quantise, check, and keep the most sensitive nodes in fp32
until the check passes, with a pluggable sensitivity policy.

    search = accuracy_aware(build, check, policy)

``build(exclude) -> Path`` writes the INT8 graph with the nodes ``exclude`` kept in fp32;
``check(path, exclude) -> (passed, record)`` judges it (``check=None``: nothing to check, one attempt).
The first attempt quantises everything; only if it fails does the policy rank the nodes
(most sensitive first) and name how many of them to keep in fp32 at each further attempt.

Two policies, each the default of the caller that uses it:

* :class:`HeuristicOrder` (``fastft export``): a fixed, measured order (the first layer, then
  FFN output, then FFN input MatMuls; :func:`fastft.export.quantize.fallback_order`) tried at
  ``FALLBACK_STEPS``, judged by label agreement with fp32. Costs nothing to rank.
* :class:`KLSensitivity` (``fastft compress``): each node quantised alone, ranked by the mean KL
  of its logits from fp32's on a subset, tried at 1, 2, 4, ... nodes, judged by the accuracy
  drop against a budget. Costs one quantisation and one subset inference per node.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# how many of the most sensitive MatMuls to keep in fp32, tried in turn until INT8 agreement passes
FALLBACK_STEPS = (0, 1, 2, 4, 6, 8, 10, 12)


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


class HeuristicOrder:
    """Keep the nodes of a fixed order in fp32, ``steps`` of them at a time (at most half of them)."""

    def __init__(self, order: Sequence[str], steps: Sequence[int] = FALLBACK_STEPS):
        self.order, self._steps = list(order), tuple(steps)

    def rank(self, build) -> tuple[list[str], dict]:
        return self.order, {}

    def steps(self, n: int) -> list[int]:
        return [k for k in self._steps if 0 < k <= n // 2]


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

    build(exclude, probe=False) -> Path; check(path, exclude) -> (passed, record); policy: HeuristicOrder,
    KLSensitivity or None (no fallback). on_attempt(Attempt) is called after each attempt.
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
