"""bench/compat.py (the compatibility canary): its report from pytest's junit XML."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _compat():
    spec = importlib.util.spec_from_file_location("compat", ROOT / "bench" / "compat.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="5">
<testcase classname="tests.test_a" name="test_ok" time="0.1"/>
<testcase classname="tests.test_a" name="test_skip" time="0.0"><skipped message="needs transformers &gt;= 5"/></testcase>
<testcase classname="tests.test_b" name="test_broken" time="0.2"><failure message="FastftError: transformers 9.0 hard-codes the attention of BertSelfAttention&#10;more">tb</failure></testcase>
<testcase classname="tests.test_b" name="test_setup" time="0.0"><error message="failed on setup">tb</error></testcase>
<testcase classname="tests.test_c" name="test_ok2" time="0.1"/>
</testsuite></testsuites>"""


def test_junit_counts_and_first_error(tmp_path):
    compat = _compat()
    (tmp_path / "r.xml").write_text(JUNIT)
    c = compat.junit_counts(tmp_path / "r.xml")
    assert (c["passed"], c["failed"], c["errors"], c["skipped"]) == (2, 1, 1, 1)
    assert c["first_error"] == (
        "tests.test_b::test_broken: FastftError: transformers 9.0 hard-codes the attention of BertSelfAttention"
    )
    missing = compat.junit_counts(tmp_path / "none.xml")
    assert missing["passed"] == 0 and missing["first_error"].startswith("no pytest report")


def test_markdown_has_one_row_per_environment():
    compat = _compat()
    result = {
        "command": "python bench/compat.py",
        "date": "2026-01-01",
        "commit": "abc1234",
        "python": "3.11.9",
        "machine": {"cpu": {"model": "cpu"}},
        "rows": [
            {
                "env": "lock",
                "what": "the lock",
                "versions": {"transformers": "5.24.0", "torch": "2.13.0"},
                "passed": 3,
                "failed": 0,
                "errors": 0,
                "skipped": 1,
                "first_error": None,
            },
            {
                "env": "latest",
                "what": "newest",
                "versions": {"transformers": "9.0"},
                "passed": 2,
                "failed": 1,
                "errors": 0,
                "skipped": 0,
                "first_error": "t::x: a | b",
            },
        ],
    }
    md = compat.markdown(result)
    rows = [line for line in md.splitlines() if line.startswith("| lock ") or line.startswith("| latest ")]
    assert len(rows) == 2 and "| 5.24.0 |" in rows[0] and "a \\| b" in rows[1]
    assert "commit abc1234" in md
