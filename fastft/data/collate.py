"""Tokenization with dynamic padding (pad to the longest text in each batch)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def model_max_positions(config) -> int | None:
    """Longest input the model's position embeddings allow (None if unbounded)."""
    n = getattr(config, "max_position_embeddings", None)
    if n is None:
        return None
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        n -= 2  # RoBERTa offsets positions by padding_idx + 1
    return int(n)


def clamp_max_length(max_length: int | None, config, tokenizer=None) -> int:
    """``max_length`` clamped to what the model supports, with a warning when clamped."""
    limit = model_max_positions(config) or 512
    if max_length is None:
        return limit
    if max_length < 2:
        from fastft.core.errors import FastftError

        raise FastftError(f"--max-length must be at least 2 (got {max_length})")
    if max_length > limit:
        print(
            f"fastft: warning: --max-length {max_length} is beyond the model's {limit} positions; using {limit}",
            file=sys.stderr,
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
