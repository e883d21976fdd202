"""The one accuracy-aware INT8 routine (fastft.export.int8) with its sensitivity policies, on a fake
model whose nodes each add a known error: the ranking, the steps and when the search stops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fastft.export import int8

NODES = [f"n{i}" for i in range(8)]
HARM = {"n0": 0.02, "n1": 0.5, "n2": 0.01, "n3": 0.3, "n4": 0.0, "n5": 0.05, "n6": 0.2, "n7": 0.0}
REF = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)


class FakeModel:
    """build(exclude) 'quantises' every node not excluded; a graph's logits carry the harm of its
    quantised nodes (in a fixed random direction per node)."""

    def __init__(self):
        rng = np.random.default_rng(1)
        self.noise = {n: rng.normal(size=REF.shape).astype(np.float32) for n in NODES}
        self.graphs: dict[Path, frozenset] = {}
        self.builds = 0

    def build(self, exclude, probe: bool = False) -> Path:
        self.builds += 1
        path = Path(f"/fake/{len(self.graphs)}.onnx")
        self.graphs[path] = frozenset(NODES) - set(exclude)
        return path

    def logits(self, path: Path) -> np.ndarray:
        return REF + sum(HARM[n] * 4 * self.noise[n] for n in self.graphs[path])

    def harm(self, path: Path) -> float:
        return sum(HARM[n] for n in self.graphs[path])


def _check_below(model: FakeModel, limit: float):
    def check(path, exclude):
        h = model.harm(path)
        return h <= limit, {"harm": h, "excluded": len(exclude)}

    return check


def test_no_check_is_one_attempt_with_everything_quantised():
    m = FakeModel()
    search = int8.accuracy_aware(m.build, None, policy=None)
    assert len(search.attempts) == 1 and search.final.excluded == [] and search.final.passed


def test_a_passing_first_attempt_never_ranks():
    m = FakeModel()

    class Boom:
        def rank(self, build):
            raise AssertionError("ranked although the first attempt passed")

    search = int8.accuracy_aware(m.build, _check_below(m, 10.0), Boom())
    assert len(search.attempts) == 1 and m.builds == 1


def test_kl_sensitivity_ranks_the_most_harmful_nodes_first_and_stops_when_it_passes():
    m = FakeModel()
    policy = int8.KLSensitivity(NODES, lambda: REF, m.logits, progress=False)
    seen = []
    search = int8.accuracy_aware(m.build, _check_below(m, 0.1), policy, on_attempt=seen.append)
    assert list(search.ranking)[:4] == ["n1", "n3", "n6", "n5"]  # by harm, measured as KL of the logits
    assert search.ranking["n1"] > search.ranking["n3"] > search.ranking["n2"] > 0
    # 1, 2, 4 kept fp32: n1+n3+n6+n5 out leaves 0.03 of harm
    assert [len(a.excluded) for a in search.attempts] == [0, 1, 2, 4] and search.final.passed
    assert set(search.final.excluded) == {"n1", "n3", "n6", "n5"} and seen == search.attempts
    assert policy.steps(8) == [1, 2, 4, 8] and policy.steps(6) == [1, 2, 4, 6]


def test_heuristic_order_keeps_its_order_at_most_half_the_nodes():
    m = FakeModel()
    order = ["n1", "n3", "n6", "n5", "n0", "n2", "n4", "n7"]
    search = int8.accuracy_aware(m.build, _check_below(m, 0.1), int8.HeuristicOrder(order))
    assert search.ranking == {} and search.final.passed and search.final.excluded == order[:4]
    never = int8.accuracy_aware(m.build, _check_below(m, -1.0), int8.HeuristicOrder(order))
    assert not never.final.passed and len(never.final.excluded) == 4  # never more than half


def test_kl_divergence_is_zero_for_equal_logits_and_positive_otherwise():
    assert int8.kl_divergence(REF, REF) == pytest.approx(0.0, abs=1e-7)
    assert int8.kl_divergence(REF, REF + np.array([1.0, 0.0, -1.0], np.float32)) > 0
