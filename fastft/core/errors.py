"""User-facing errors.

A :class:`FastftError` is a mistake the user can fix (bad path, bad option, bad data).
The CLI prints it as one line and exits non-zero; it never shows a traceback for it.
"""


class FastftError(Exception):
    """A user error: printed as ``fastft: error: <message>`` by the CLI, exit code 2."""

    exit_code = 2


class DataError(FastftError):
    """The data given cannot be used (missing column, empty, single class...)."""


class ModelError(FastftError):
    """The model given cannot be used (missing or corrupt directory, no head...)."""
