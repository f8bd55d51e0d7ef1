"""`rerank-sidecar serve`: run the proxy."""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from sidecar import logs
from sidecar.app import create_app
from sidecar.commands.settings_args import add_settings_flags, settings_from_args
from sidecar.config import ConfigFileError
from sidecar.eventloop import new_event_loop
from sidecar.http.keys import PIPELINE, SETTINGS
from sidecar.http.server import serve_forever
from sidecar.tls import listener_context

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("serve", help="run the reranking proxy")
    add_settings_flags(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    logs.configure(settings.log_level, settings.log_format)
    app = create_app(settings)
    log.info("rerank-sidecar on http://%s -> %s", settings.listen, settings.upstream)
    # A model that fails to load raises ModelLoadError: the CLI reports it, once.
    serve_forever(
        app,
        settings,
        loop=new_event_loop(),
        ssl_context=listener_context(settings),
        on_hangup=lambda: _reload(app, args),
    )
    return 0


async def _reload(app: web.Application, args: argparse.Namespace) -> None:
    """SIGHUP: read the configuration again (flags, environment, file) and serve its rules from the next search on,
    and load again each local model whose folder holds new weights, swapped in once warm. A file that does not
    read or validate, or rules naming a model that is not loaded, keep the old rules; weights that do not load
    keep the old model: one log line says why. Other settings (a model's path too) take effect at a restart."""
    old = app[SETTINGS]
    try:
        new = await asyncio.to_thread(settings_from_args, args)
    except (ValidationError, ConfigFileError, OSError, ValueError) as e:
        log.error("SIGHUP: configuration not reloaded, the old rules stay: %s", " ".join(str(e).split())[:500])
        return
    why = app[PIPELINE].reload_rules(new.rules)
    if why is not None:
        log.error("SIGHUP: configuration not reloaded, the old rules stay: %s", why)
        return
    others = {k for k in type(new).model_fields if k not in ("rules", "config") and getattr(new, k) != getattr(old, k)}
    changed = f"; changed but applied only at a restart: {', '.join(sorted(others))}" if others else ""
    log.info("SIGHUP: %d rules reloaded%s", len(new.rules), changed)
    for name, how in (await app[PIPELINE].reload_models()).items():
        if how == "reloaded":
            log.info("SIGHUP: model [%s] reloaded: its folder holds new weights", name)
        else:
            log.error("SIGHUP: model [%s] not reloaded, the old weights stay: %s", name, how)
