"""The event loop the servers run on: uvloop where it is installed (Linux, macOS), else asyncio's own.

A proxy spends most of its time in the loop's transports, where uvloop is faster."""

from __future__ import annotations

import asyncio


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop
