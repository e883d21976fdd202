"""The one rule for text that is not valid Unicode: refuse it, naming the text.

fastft reads text as UTF-8 everywhere (arguments, stdin, data files, the Python API) and never
guesses or replaces: a text with bytes that are not UTF-8, or a Python string holding a lone
surrogate (``"\\ud800"``, or undecodable command-line bytes that Python keeps as ``\\udcXX``),
is an error that names the text's index and the offending byte or code point. Convert the
input first (``iconv -f latin1 -t utf-8``, or ``--encoding`` for data files).
"""

from __future__ import annotations


def unicode_problem(text: str) -> str | None:
    """Why ``text`` is not valid Unicode text, as a phrase (None when it is)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        c = text[exc.start]
        if 0xDC80 <= ord(c) <= 0xDCFF:  # a raw byte kept by the surrogateescape error handler
            return f"is not valid UTF-8 (byte 0x{ord(c) - 0xDC00:02x} at character {exc.start})"
        return f"holds a lone surrogate U+{ord(c):04X} at character {exc.start}, which is not valid Unicode"
    return None


def decode_line(raw: bytes, where: str) -> str:
    """``raw`` decoded as UTF-8, or a ValueError naming ``where`` and the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{where} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
