"""Unit properties of fastft.core: argument bounds, finiteness, quantiles, stale work names."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fastft.core.checks import check_float, check_int, check_max_length, check_threads
from fastft.core.errors import FastftError, ModelError
from fastft.core.numerics import check_finite
from fastft.core.stale import clean_stale, namespace, pid_alive
from fastft.core.stats import quantiles


def test_check_float_closed_bound_admits_the_bound_and_open_bound_refuses_it():
    """A closed bound admits the bound itself; an open bound (lo_open / hi_open) refuses it."""
    assert check_float("x", 0.0, lo=0) == 0.0
    assert check_float("x", 1.0, hi=1.0) == 1.0
    with pytest.raises(FastftError, match=r"x must be > 0"):
        check_float("x", 0.0, lo=0, lo_open=True)
    with pytest.raises(FastftError, match=r"x must be in \[0, 1\)"):
        check_float("x", 1.0, lo=0, hi=1, hi_open=True)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_check_float_refuses_non_finite_even_without_bounds(bad):
    """NaN and inf are refused with no bounds given: NaN passes every comparison."""
    with pytest.raises(FastftError, match="finite"):
        check_float("x", bad)


def test_check_int_bounds_are_inclusive_and_bools_are_not_integers():
    """check_int admits lo and hi themselves, refuses one past either, and refuses a bool."""
    assert check_int("n", 1, lo=1, hi=5) == 1
    assert check_int("n", 5, lo=1, hi=5) == 5
    for bad in (0, 6):
        with pytest.raises(FastftError, match="n must be at"):
            check_int("n", bad, lo=1, hi=5)
    with pytest.raises(FastftError, match="must be an integer"):
        check_int("n", True, lo=0)


def test_check_max_length_needs_room_for_one_text_token():
    """max_length 3 (two special tokens and one of text) passes; 2 is refused."""
    assert check_max_length("--max-length", 3) == 3
    with pytest.raises(FastftError, match="at least 3"):
        check_max_length("--max-length", 2)


def test_check_threads_refuses_zero_and_admits_one():
    """A thread count is at least 1."""
    assert check_threads("--threads", 1) == 1
    with pytest.raises(FastftError, match="at least 1"):
        check_threads("--threads", 0)


def test_check_finite_refuses_one_nan_among_finite_scores():
    """One non-finite score in otherwise finite logits is refused."""
    ok = np.array([[1.0, 2.0]])
    assert check_finite(ok) is ok
    with pytest.raises(ModelError):
        check_finite(np.array([[1.0, np.nan], [0.0, 1.0]]))


def test_quantiles_are_the_named_percentiles_in_ms():
    """p10/p50/p90/p99 are those percentiles of the durations, in milliseconds."""
    q = quantiles([i / 1e3 for i in range(101)])  # 0..100 ms
    assert q["n"] == 101
    for k, want in (("p10_ms", 10), ("p50_ms", 50), ("p90_ms", 90), ("p99_ms", 99), ("mean_ms", 50)):
        assert q[k] == pytest.approx(want), k


def test_pid_zero_is_not_alive_and_its_work_dir_is_removed(tmp_path):
    """pid 0 (no process) is gone: its work directory of this namespace is removed."""
    assert pid_alive(0) is False
    d = tmp_path / f".out.fastft-tmp-0-{namespace()}-abc"
    d.mkdir()
    assert clean_stale(tmp_path, log=False) == [d]
    assert not d.exists()


def test_clean_stale_leaves_another_namespaces_work_dirs(tmp_path):
    """A work directory of another machine or pid namespace is never removed (its pid means nothing here)."""
    other = "00000000" if namespace() != "00000000" else "11111111"
    d = tmp_path / f".out.fastft-tmp-{os.getpid() + 10**6}-{other}-abc"
    d.mkdir()
    assert clean_stale(tmp_path, log=False) == []
    assert d.is_dir()


def test_clean_stale_puts_back_an_output_moved_aside(tmp_path):
    """An ``old`` work dir of a dead run whose output is missing is moved back, not removed."""
    old = tmp_path / f".out.fastft-old-0-{namespace()}-abc"
    (old / "out").mkdir(parents=True)
    (old / "out" / "weights.bin").write_text("w")
    assert clean_stale(tmp_path, log=False) == []
    assert (tmp_path / "out" / "weights.bin").read_text() == "w"
    assert not old.exists()


def test_output_name_leaves_room_for_the_work_names_beside_it(tmp_path):
    """An output name that fits in NAME_MAX but not with a work-name prefix and suffix is refused."""
    from fastft.core.io import check_output_dir

    with pytest.raises(FastftError, match="bytes long"):
        check_output_dir(tmp_path / ("a" * 240))
    assert check_output_dir(tmp_path / ("a" * 100)) == tmp_path / ("a" * 100)
