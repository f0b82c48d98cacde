"""`osma-router console`: the operator console, a web page of its own."""

from __future__ import annotations

import argparse
import signal
from typing import Any

import uvicorn

from ..console.app import check_console_host, console_from_settings
from ..logs import configure_logging
from .common import add_command, current_settings, ensure_port_free


def cmd_console(args: argparse.Namespace) -> int:
    settings = current_settings()
    configure_logging(settings.log_format, settings.log_level)
    check_console_host(args.host, settings)
    ensure_port_free(args.host, args.port)
    app = console_from_settings(settings)  # a bad routes file is one line here, not a traceback later
    # uvicorn stops on SIGTERM, then raises the signal again: end with exit 0 instead.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    print(f"osma-router console: http://{_in_url(args.host)}:{args.port}/", flush=True)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        access_log=False,  # a search's query string is an id an operator typed: not for the log
        log_config=None,
        # X-Forwarded-Proto (the session cookie's Secure flag behind a TLS proxy) is believed
        # only from OSMA_ROUTER_TRUSTED_PROXIES.
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=list(settings.trusted_proxies) or None,
    )
    return 0


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _in_url(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def add_commands(sub: Any) -> None:
    """`osma-router console`."""
    p = add_command(
        sub,
        "console",
        cmd_console,
        "the operator console: a web page for deliveries, events and their jobs and effects, "
        "failed-job retries and capture exports. Loopback only unless OSMA_ROUTER_CONSOLE_TOKEN "
        "is set (then every page needs a login with that token)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8010, help="port to listen on (default 8010)")
