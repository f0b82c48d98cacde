"""What every command module shares: registering a subcommand, the one-line error, the
process's settings (read once), and reading an input file."""

from __future__ import annotations

import argparse
import functools
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..exceptions import ConfigError
from ..model.plugins import HandlerRegistry
from ..model.routes import load_config
from ..settings import Settings

Command = Callable[[argparse.Namespace], int]


def add_command(sub: Any, name: str, func: Command, help_: str) -> argparse.ArgumentParser:
    """Add one subcommand whose `--help` says `help_`; `func(args)` returns the exit code."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_, description=help_, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.set_defaults(func=func)
    return parser


def add_action(actions: Any, name: str, func: Command, help_: str) -> argparse.ArgumentParser:
    """One action of a command family (`failed list`, `capture export`, ...)."""
    parser: argparse.ArgumentParser = actions.add_parser(name, help=help_, description=help_)
    parser.set_defaults(func=func)
    return parser


def fail(message: str) -> int:
    """Print one `osma-router: error: ...` line and return exit code 1."""
    print(f"osma-router: error: {message}", file=sys.stderr)
    return 1


@functools.cache
def current_settings() -> Settings:
    """This process's settings, read from the environment (and `.env`) once, on first use:
    commands that need none (`sign`, `keygen`) never fail on an unrelated bad setting."""
    return Settings.from_env()


def ensure_port_free(host: str, port: int) -> None:
    """A port another process listens on is one line and exit 1 here, not uvicorn's log
    lines and exit 3 once everything else has started."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"--host {host} --port {port}: cannot listen there ({exc.strerror})") from None


def read_input(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read: {exc.strerror}") from None


def configured_queues(settings: Settings) -> list[str]:
    """The default queue and every queue a route names, in the routes file's order."""
    config = load_config(settings.config_path, HandlerRegistry.discover(settings.plugins), tokens=False)
    queues = [settings.queue_name]
    for route in config.routes:
        if route.queue and route.queue not in queues:
            queues.append(route.queue)
    return queues
