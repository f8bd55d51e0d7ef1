"""Entry point: parse flags, run the command, and turn the errors a user can act on into one line and an exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from sidecar.commands import bench, demo, distill, evaluate, load, serve, templates, train, warm
from sidecar.commands.errors import DataError, UsageError
from sidecar.config import ConfigFileError
from sidecar.errors import ModelLoadError
from sidecar.tools.embedded import MissingExtra
from sidecar.tools.engine_client import EngineError
from sidecar.tools.warm import WarmError

# The one table from the errors a user can act on to an exit code; the first type that matches wins.
# Any other exception is a bug: it keeps its traceback.
EXIT_CODES: tuple[tuple[type[Exception], int], ...] = (
    (UsageError, 2),  # an argument is wrong (argparse exits 2 for its own usage errors)
    (WarmError, 2),  # warm was asked for what it cannot do (no store, not a bi-encoder, unknown model)
    (ConfigFileError, 2),  # the YAML config cannot be read, or is not a mapping
    (ValidationError, 2),  # a setting is invalid, whether from a flag, SIDECAR_* or the YAML
    (ModelLoadError, 1),  # a model cannot be found, loaded, or put on its device
    (MissingExtra, 1),  # the embedded engine or the packaged model is not installed
    (EngineError, 1),  # the engine answered with an error
    (DataError, 1),  # a corpus, judgments or templates file is malformed
    (OSError, 1),  # a file or a socket: missing, unreadable, refused, already in use
)
_KNOWN = tuple(kind for kind, _ in EXIT_CODES)
_DESCRIPTION = "A reverse proxy in front of Elasticsearch/OpenSearch that reranks search results, and its tools."


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result: int = args.run(args)
    except _KNOWN as e:
        print(f"rerank-sidecar: {message(e)}", file=sys.stderr)
        return exit_code(e)
    return result


def exit_code(error: Exception) -> int:
    return next(code for kind, code in EXIT_CODES if isinstance(error, kind))


def message(error: Exception) -> str:
    """One line: the first problem of a settings error (with its key and value), else the error's own text."""
    if isinstance(error, ValidationError):
        err = error.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "settings"
        more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
        return f"config error: {key}: {err['msg']} (got {err.get('input')!r}){more}"
    return " ".join(str(error).split("\n")) or type(error).__name__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rerank-sidecar", description=_DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (serve, demo, templates, load, warm, evaluate, train, distill, bench):
        command.register(sub)
    return parser


if __name__ == "__main__":
    sys.exit(main())
