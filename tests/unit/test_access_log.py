"""The access log: the log's own formats, written in batches, off with the log level."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from sidecar.logs import TEXT_FORMAT, AccessLog, JsonFormatter


@pytest.fixture(autouse=True)
def access_level() -> Iterator[None]:
    logger = logging.getLogger("sidecar.access")
    old = logger.level
    logger.setLevel(logging.INFO)
    yield
    logger.setLevel(old)


def _as_logging_writes(fmt: logging.Formatter, message: str) -> str:
    record = logging.LogRecord("sidecar.access", logging.INFO, __file__, 1, message, None, None)
    return fmt.format(record)


def test_text_lines_look_like_the_other_log_lines() -> None:
    out = io.StringIO()
    log = AccessLog("text", stream=out)
    log("POST", "/docs/_search", 200, 12.34, "applied:20/20")
    log.flush()
    line = out.getvalue()
    assert line.endswith(" INFO sidecar.access: POST /docs/_search 200 12.3ms rerank=applied:20/20\n")
    theirs = _as_logging_writes(logging.Formatter(TEXT_FORMAT), "POST /docs/_search 200 12.3ms rerank=applied:20/20")
    pattern = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO sidecar\.access: .*"
    assert re.fullmatch(pattern, line.rstrip("\n")) and re.fullmatch(pattern, theirs)


def test_json_lines_have_the_json_formatters_fields() -> None:
    out = io.StringIO()
    log = AccessLog("json", stream=out)
    log("GET", "/_cluster/health", 503, 1.0, "-")
    log.flush()
    ours = json.loads(out.getvalue())
    theirs = json.loads(_as_logging_writes(JsonFormatter(), "x"))
    assert ours.keys() == theirs.keys()
    assert ours["message"] == "GET /_cluster/health 503 1.0ms rerank=-"
    assert ours["level"] == "INFO" and ours["logger"] == "sidecar.access"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", ours["ts"])


def test_lines_wait_for_the_flush_interval_then_are_written_together() -> None:
    out = io.StringIO()

    async def main() -> tuple[str, str]:
        log = AccessLog("text", stream=out, flush_s=0.05)
        for i in range(3):
            log("GET", f"/{i}", 200, 0.1, "-")
        before = out.getvalue()
        await asyncio.sleep(0.2)
        return before, out.getvalue()

    before, after = asyncio.run(main())
    assert before == ""
    assert [line.split(": ", 1)[1] for line in after.splitlines()] == [f"GET /{i} 200 0.1ms rerank=-" for i in range(3)]


def test_a_full_buffer_is_written_at_once_and_off_the_loop_every_line_is() -> None:
    out = io.StringIO()

    async def main() -> None:
        log = AccessLog("text", stream=out, flush_s=60, limit=200)
        for _ in range(5):  # about 80 characters each
            log("GET", "/x", 200, 0.1, "-")

    asyncio.run(main())
    assert len(out.getvalue().splitlines()) == 3  # 71 characters each: written once past 200; the rest waits
    AccessLog("text", stream=out)("GET", "/y", 200, 0.1, "-")  # no running loop: nothing would write it later
    assert out.getvalue().endswith("GET /y 200 0.1ms rerank=-\n")


def test_nothing_is_written_when_the_log_level_is_above_info() -> None:
    out = io.StringIO()
    logging.getLogger("sidecar.access").setLevel(logging.WARNING)
    log = AccessLog("text", stream=out)
    log("GET", "/x", 200, 0.1, "-")
    log.flush()
    assert out.getvalue() == ""


def test_a_broken_stream_loses_lines_not_requests() -> None:
    out = io.StringIO()
    out.close()
    log = AccessLog("text", stream=out)
    log("GET", "/x", 200, 0.1, "-")
    log.flush()  # no exception
