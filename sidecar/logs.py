"""Logging set-up: text or one JSON object per line; and the access log, written in the same format."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import TextIO

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JSON_TIME = "%Y-%m-%dT%H:%M:%S"  # the "ts" of JSON lines; text lines have logging's default asctime
_TEXT_TIME = logging.Formatter.default_time_format  # its milliseconds follow after a comma


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, JSON_TIME),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class AccessLog:
    """One line per request (``sidecar.access``), in the format of the other log lines, without the logging
    module's cost per record: a LogRecord, a formatter and a write with a flush took a tenth of a pass-through
    search's CPU (``bench proxy``). Lines are kept in memory and written together within ``flush_s`` (or once
    ``limit`` characters wait), as nginx's ``access_log ... buffer= flush=`` does; ``close()`` writes the rest.
    Written only while the ``sidecar.access`` logger is enabled for INFO (``log_level``), to ``stream`` (default:
    the standard error of the moment). Used on the event loop; off it, a line is written at once."""

    _name = "sidecar.access"

    def __init__(self, fmt: str, *, stream: TextIO | None = None, flush_s: float = 0.2, limit: int = 64 * 1024):
        self._json = fmt == "json"
        self._logger = logging.getLogger(self._name)
        self._stream = stream
        self._flush_s = flush_s
        self._limit = limit
        self._pending: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""

    def __call__(self, method: str, path: str, status: int, ms: float, rerank: str) -> None:
        if not self._logger.isEnabledFor(logging.INFO):
            return
        message = f"{method} {path} {status} {ms:.1f}ms rerank={rerank}"
        now = time.time()
        if self._json:
            entry = {"ts": self._time(now), "level": "INFO", "logger": self._name, "message": message}
            line = json.dumps(entry) + "\n"
        else:
            line = f"{self._time(now)},{int(now * 1000) % 1000:03d} INFO {self._name}: {message}\n"
        self._pending.append(line)
        self._size += len(line)
        if self._size >= self._limit:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self._flush_s, self.flush)
            except RuntimeError:  # no loop here: nothing would write it later
                self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending:
            lines = "".join(self._pending)
            self._pending.clear()
            self._size = 0
            stream = self._stream or sys.stderr
            try:
                stream.write(lines)
                stream.flush()
            except (OSError, ValueError):  # a closed or full stream: the lines are lost, never the requests
                pass

    close = flush

    def _time(self, now: float) -> str:
        """The local time to the second, as logging's formatters write it (made once a second)."""
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime(JSON_TIME if self._json else _TEXT_TIME, time.localtime(now))
        return self._stamp
