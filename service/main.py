"""`distctl serve`: the HTTP service on uvicorn (one worker: the engine lives in-process)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from service.auth import check_bind, load_keys
from service.settings import ServiceSettings
from service.telemetry import configure_logging

log = logging.getLogger("distctl.service")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="distctl serve",
        description="Serve POST /generate and the adapters under $DISTCTL_ADAPTER_ROOT. "
        "Configuration: DISTCTL_* variables (see the README's Configuration section).",
    )
    p.add_argument("--host", help="bind address (default $DISTCTL_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default $DISTCTL_PORT or 8000)")
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="default info",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    configure_logging(args.log_level)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = ServiceSettings(**overrides)
    # a DistctlError here (unsafe bind, bad keys) is printed by `distctl` as one line
    access = check_bind(settings, load_keys(settings))
    log.log(logging.WARNING if "UNAUTHENTICATED" in access else logging.INFO, access)

    import uvicorn

    from service.app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep our JSON lines; uvicorn's own loggers propagate to them
        access_log=False,  # the service logs each request itself, with its id
        workers=1,
    )
    return 0
