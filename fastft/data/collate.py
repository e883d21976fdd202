"""Tokenization with dynamic padding (pad to the longest text in each batch)."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence

# the model types whose position ids start at pad_token_id + 1 (RoBERTa's and its kin's), as
# transformers builds them: tests/test_model_dirs.py probes every one, and the families beside them,
# on tiny models of the installed transformers (MPNet's 514 positions once ran the export's parity
# check at 514 tokens: IndexError)
PADDING_OFFSET_TYPES = (
    "roberta",
    "xlm-roberta",
    "xlm-roberta-xl",
    "camembert",
    "data2vec-text",
    "roberta-prelayernorm",
    "longformer",
    "ibert",
    "luke",
    "markuplm",
    "esm",
    "xmod",
)
FIXED_OFFSET_TYPES = {"mpnet": 2}  # from 2 whatever its pad token id (its embeddings fix padding_idx at 1)


def model_max_positions(config) -> int | None:
    """Longest input the model's position embeddings allow (None if unbounded)."""
    n = getattr(config, "max_position_embeddings", None)
    if n is None:
        return None
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        from fastft.core.errors import ModelError

        raise ModelError(f"config.json max_position_embeddings must be a positive integer (got {n!r:.40})")
    kind = getattr(config, "model_type", "")
    first = 0  # the position id of the first token
    if kind in FIXED_OFFSET_TYPES:
        first = FIXED_OFFSET_TYPES[kind]
    elif kind in PADDING_OFFSET_TYPES:
        # RoBERTa numbers the positions from padding_idx + 1 (its pad token id, 1 in every checkpoint
        # of the family, but a config may say another)
        pad = getattr(config, "pad_token_id", None)
        first = (pad if isinstance(pad, int) and not isinstance(pad, bool) and pad >= 0 else 1) + 1
    if n - first < 1:
        from fastft.core.errors import ModelError

        raise ModelError(
            f"config.json max_position_embeddings {n} leaves no position: a {kind} model numbers its "
            f"positions from {first} (pad_token_id + 1 for RoBERTa and its kin)"
        )
    return int(n - first)


def tokenizer_max_length(tokenizer, config) -> int | None:
    """The tokenizer's own max length (None when it sets none: transformers' 1e30 sentinel),
    fitted to the model's positions without a warning, as a default nobody asked for."""
    n = getattr(tokenizer, "model_max_length", None)
    if not n or n >= 100_000:
        return None
    positions = model_max_positions(config)
    return min(n, positions) if positions else n


def clamp_max_length(max_length: int | None, config, tokenizer=None) -> int:
    """``max_length`` clamped to what the model supports, with a warning when clamped."""
    limit = model_max_positions(config) or 512
    if max_length is None:
        return limit
    from fastft.core.checks import arg, check_max_length

    check_max_length(arg("max_length"), max_length)
    if max_length > limit:
        import warnings

        # a warning, not a print: a library caller can filter or catch it; the CLI shows it as
        # one "fastft: warning:" line
        warnings.warn(
            f"max length {max_length} is beyond the model's {limit} positions; using {limit}", UserWarning, stacklevel=3
        )
        return limit
    return max_length


class Collator:
    """Turn a list of (text, label) into padded tensors; labels may be absent (-1)."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, batch: Sequence[tuple[str, int]]):
        import torch

        texts = [t for t, _ in batch]
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        enc["labels"] = torch.tensor([lab for _, lab in batch], dtype=torch.long)
        return dict(enc)


def sorted_batches(
    lengths: Sequence[int], batch_size: int, *, desc: str = "", progress: bool = False
) -> Iterator[list[int]]:
    """Row indices in batches of ``batch_size``, shortest rows first (each batch pads to little),
    with a progress bar on stderr when ``progress``."""
    from tqdm.auto import tqdm

    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    starts = range(0, len(order), batch_size)
    for s in tqdm(starts, desc=desc, unit="batch", file=sys.stderr, disable=not progress, leave=False):
        yield order[s : s + batch_size]


def pad_rows(ids: Sequence[Sequence[int]], rows: Sequence[int], pad_id: int):
    """(input_ids, attention_mask) of ``ids[rows]`` padded to the longest, each int64 (batch, longest)."""
    import numpy as np

    n = max(len(ids[r]) for r in rows)
    x = np.full((len(rows), n), pad_id, dtype=np.int64)
    m = np.zeros((len(rows), n), dtype=np.int64)
    for i, r in enumerate(rows):
        x[i, : len(ids[r])] = ids[r]
        m[i, : len(ids[r])] = 1
    return x, m


IGNORE_INDEX = -100  # the label of positions the loss and the metrics skip (transformers' default)


def require_fast(tokenizer) -> None:
    """Token classification aligns tags to word pieces with ``word_ids()``: a fast tokenizer."""
    if not getattr(tokenizer, "is_fast", False):
        from fastft.core.errors import FastftError

        raise FastftError(
            f"token classification needs a fast (Rust) tokenizer for word alignment; "
            f"{type(tokenizer).__name__} is not one (save the model with a tokenizer.json)"
        )


def encode_words(tokenizer, sentences: Sequence[Sequence[str]], max_length: int, padding: bool | str = False):
    """Word-piece encoding of pre-split ``sentences`` (lists of words), truncated to ``max_length``.

    Returns the tokenizer's BatchEncoding; ``enc.word_ids(i)`` maps sentence i's positions to
    word indices (None for special tokens and padding).
    """
    require_fast(tokenizer)
    return tokenizer(
        [list(s) for s in sentences],
        is_split_into_words=True,
        truncation=True,
        max_length=max_length,
        padding=padding,
        return_tensors="pt" if padding else None,
    )


def align_tags(word_ids: Sequence[int | None], tags: Sequence[int]) -> list[int]:
    """Per-position labels: a word's tag on its first word piece, -100 on later pieces and specials.

    word_ids: (seq,) word index per position (None for [CLS]/[SEP]/padding); tags: (words,).
    """
    out, prev = [], None
    for w in word_ids:
        out.append(IGNORE_INDEX if w is None or w == prev else int(tags[w]))
        prev = w
    return out


def first_pieces(word_ids: Sequence[int | None]) -> dict[int, int]:
    """{word index: position of its first word piece}; truncated words are absent."""
    out: dict[int, int] = {}
    for pos, w in enumerate(word_ids):
        if w is not None and w not in out:
            out[w] = pos
    return out


class TokenCollator:
    """Turn a list of (words, tag ids) into padded tensors with word-piece-aligned ``labels``."""

    def __init__(self, tokenizer, max_length: int):
        require_fast(tokenizer)
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, batch: Sequence[tuple[list[str], list[int]]]):
        import torch

        enc = encode_words(self.tokenizer, [w for w, _ in batch], self.max_length, padding=True)
        n = enc["input_ids"].shape[1]
        labels = torch.full((len(batch), n), IGNORE_INDEX, dtype=torch.long)
        for i, (_, tags) in enumerate(batch):
            row = align_tags(enc.word_ids(i), tags)
            labels[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        out = dict(enc)
        out["labels"] = labels
        return out


def token_lengths(tokenizer, texts: Sequence[str], max_length: int, chunk: int = 1024) -> list[int]:
    """Word-piece count of each text (special tokens included, truncated to ``max_length``)."""
    out: list[int] = []
    for s in range(0, len(texts), chunk):
        enc = tokenizer(list(texts[s : s + chunk]), truncation=True, max_length=max_length)
        out += [len(ids) for ids in enc["input_ids"]]
    return out


def length_buckets(lengths: Sequence[int], batch_size: int, generator) -> list[list[int]]:
    """Shuffled batches of similar length (sorted within chunks of 50 batches): less padding."""
    import torch

    perm = torch.randperm(len(lengths), generator=generator).tolist()
    chunk = batch_size * 50
    batches = []
    for s in range(0, len(perm), chunk):
        part = sorted(perm[s : s + chunk], key=lambda i: lengths[i])
        batches += [part[j : j + batch_size] for j in range(0, len(part), batch_size)]
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]
