"""`osma-router check-config` and `keygen`."""

from __future__ import annotations

import argparse
from typing import Any

from ..crypto import new_key
from ..model.plugins import HandlerRegistry
from ..model.routes import load_config
from ..settings import Settings, key_mode
from .common import add_command, current_settings


def cmd_check_config(args: argparse.Namespace) -> int:
    config = current_settings()
    registry = HandlerRegistry.discover(config.plugins)
    routes = load_config(config.config_path, registry)
    print("settings:")
    for name, value in config.summary().items():
        print(f"  {name:<22} {value}")
    print(f"  {'mode':<22} {describe_mode(config)}")
    print(f"handlers available: {', '.join(sorted(registry.handlers)) or 'none'}")
    print(f"plugins: {describe_plugins(registry, config)}")
    print(f"routes ({len(routes.routes)}):")
    for route in routes.routes:
        print(f"  {route.describe()}  [route {route.key}, retries {route.retries}]")
    print(f"connectors ({len(routes.connectors)}):")
    for connector in routes.connectors.values():
        print(f"  {connector.describe()}")
    warnings = []
    if not config.webhook_secrets:
        warnings.append("OSMA_ROUTER_WEBHOOK_SECRETS is not set: `serve` will refuse to start")
    if not config.redis_url:
        warnings.append("OSMA_ROUTER_REDIS_URL is not set: only `dev` can run (embedded Redis)")
    for warning in warnings:
        print(f"warning: {warning}")
    print("configuration OK")
    return 0


def describe_mode(settings: Settings) -> str:
    """The mode that applies and where it comes from (docs/contract.md, "Event envelope")."""
    if key_mode(settings.osma_api_key) is not None:
        source = "from the Osma API key's prefix"
    elif settings.mode is not None:
        source = "from OSMA_ROUTER_MODE"
    else:
        source = "the default"
    what = {
        "live": 'test events reach only routes with live_mode = false or "any"',
        "test": 'live events reach only routes with live_mode = true or "any"',
        "any": "events of both modes are routed, unless a route sets live_mode",
    }[settings.service_mode]
    return f"{settings.service_mode} ({source}; {what})"


def describe_plugins(registry: HandlerRegistry, settings: Settings) -> str:
    """The handler plugins loaded and, with OSMA_ROUTER_PLUGINS, those found but skipped."""
    loaded = ", ".join(sorted(registry.plugins)) or "none"
    if settings.plugins is None:
        return f"{loaded} (every installed one: OSMA_ROUTER_PLUGINS is not set)"
    skipped = ", ".join(sorted(registry.skipped)) or "none"
    return f"{loaded} (OSMA_ROUTER_PLUGINS); found but skipped: {skipped}"


def cmd_keygen(args: argparse.Namespace) -> int:
    print(new_key())
    return 0


def add_check_config(sub: Any) -> None:
    add_command(
        sub,
        "check-config",
        cmd_check_config,
        "load settings and routes, print what is configured (secrets masked); exit 1 on a bad configuration",
    )


def add_keygen(sub: Any) -> None:
    add_command(sub, "keygen", cmd_keygen, "print a new Fernet key for OSMA_ROUTER_ENCRYPTION_KEYS")
