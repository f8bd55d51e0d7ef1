"""Errors a command raises for its user; `sidecar.cli` turns them (and the tools' own errors) into exit codes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class UsageError(Exception):
    """An argument is wrong before any work starts (a folder without its files, a loss for the other kind): exit 2."""


class DataError(Exception):
    """A file the user handed us (a corpus, judgments, templates) is malformed: exit 1."""


@contextmanager
def reading(what: object) -> Iterator[None]:
    """While reading a file the user handed us, a ValueError (bad JSON, a bad number) is that file's fault.

    Only around reading: a ValueError anywhere else is a bug and keeps its traceback."""
    try:
        yield
    except ValueError as e:
        raise DataError(f"{what}: {e}") from e
