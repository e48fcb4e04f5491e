"""The base of every error that is the user's to fix (a bad file, format, key, flag, checkpoint or store).

The CLI prints such an error as one line naming the file, key or flag, and exits with code 2; any other exception is
an internal bug and keeps its traceback. Each module's error subclasses ``UserError`` and a builtin type
(``ValueError``, ``OSError``, ...) so that plain Python code can catch it the usual way too.
"""
from __future__ import annotations


class UserError(Exception):
    """An error in what the user gave ct-ray; its message says what is wrong and what to do."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist; the message names it."""


class InputError(UserError, ValueError):
    """A value the user gave (a flag, a box, a list of seeds, a split) that cannot be used; the message names it."""
