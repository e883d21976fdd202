"""User-facing errors.

A :class:`FastftError` is a mistake the user can fix (bad path, bad option, bad data).
The CLI prints it as one line and exits non-zero; it never shows a traceback for it.
"""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of ``exc``'s message, at most ``limit`` characters, for a one-line error
    that wraps it; its type's name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


class FastftError(Exception):
    """A user error: printed as ``fastft: error: <message>`` by the CLI, exit code 2."""

    exit_code = 2


class DataError(FastftError):
    """The data given cannot be used (missing column, empty, single class...)."""


class ModelError(FastftError):
    """The model given cannot be used (missing or corrupt directory, no head...)."""
