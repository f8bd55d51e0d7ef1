"""`rerank-sidecar serve`: run the proxy."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from sidecar import logs
from sidecar.app import create_app
from sidecar.commands.settings_args import add_settings_flags, settings_from_args
from sidecar.eventloop import new_event_loop
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
    serve_forever(app, settings, loop=new_event_loop(), ssl_context=listener_context(settings))
    return 0
