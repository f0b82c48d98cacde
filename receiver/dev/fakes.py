"""The fake Osma and OGSM that `osma-router dev` runs when no settings name real ones.

Each fake is served by a uvicorn thread inside the `dev` process itself, so it stops
with Ctrl-C and dies with `dev` even when that is SIGKILLed. The worker and receiver
reach them through the `OSMA_ROUTER_OSMA_*` / `OSMA_ROUTER_OGSM_*` variables of their
environment. Ports: the console takes the receiver's port + 1 (receiver/dev/runner.py),
the fake Osma + 2 and the fake OGSM + 3 (8002 and 8003 by default); a free port where
that one is taken.

The fake OGSM only knows the KPIs, goals and strategies it was given: the ones the
routes file names (`indicator_id`, `goal_id`, `strategy_ids`, ...) are made at start, so
a route works out of the box. What the fakes hold lives as long as `dev`.
"""

from __future__ import annotations

import socket
from collections.abc import Collection, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ..exceptions import ConfigError
from ..model.routes import Config
from ..settings import PREFIX, Settings
from ..store.server import free_port
from ..testing.fake_ogsm import FakeOgsm
from ..testing.fake_osma import LIVE_KEY, TEST_KEY, FakeOsma
from ..testing.fake_service import FakeService

_Fake = TypeVar("_Fake", bound=FakeService)

# Route parameters that name OGSM resources, and what the fake makes for them.
_OGSM_REFERENCES = {
    "indicator_id": "indicator",
    "indicator_ids": "indicator",
    "goal_id": "goal",
    "goal_ids": "goal",
    "strategy_id": "strategy",
    "strategy_ids": "strategy",
    "objective_id": "objective",
    "objective_ids": "objective",
}


def configured(settings: Settings) -> tuple[bool, bool]:
    """Whether the settings name a real Osma, and a real OGSM (any of their variables)."""
    osma = settings.osma_api_key is not None or settings.osma_base_url != Settings().osma_base_url
    ogsm = any(
        v is not None for v in (settings.ogsm_base_url, settings.ogsm_username, settings.ogsm_password)
    )
    return osma, ogsm


@dataclass
class DevUpstreams:
    """The fakes `dev` started (None: the settings' upstream is used) and what they mean
    for the children's environment and the printed block."""

    osma: FakeOsma | None = None
    ogsm: FakeOgsm | None = None
    osma_key: str = TEST_KEY
    made: list[str] = field(default_factory=list)  # "indicator 456", ... in the fake OGSM

    def environment(self) -> dict[str, str]:
        """The variables that point the clients at the fakes."""
        env: dict[str, str] = {}
        if self.osma is not None:
            env[PREFIX + "OSMA_BASE_URL"] = self.osma.url
            env[PREFIX + "OSMA_API_KEY"] = self.osma_key
        if self.ogsm is not None:
            env[PREFIX + "OGSM_BASE_URL"] = self.ogsm.base_url
            env[PREFIX + "OGSM_USERNAME"] = self.ogsm.username
            env[PREFIX + "OGSM_PASSWORD"] = self.ogsm.password
        return env

    def describe(self, settings: Settings, webhooks_back: bool) -> Iterator[tuple[str, str]]:
        """(name, text) lines of the printed block: the upstreams, and how to look into
        the fake OGSM. Real credentials are never shown."""
        if self.osma is not None:
            mode = "live" if self.osma_key == LIVE_KEY else "test"
            back = (
                "; its task writes come back to the receiver as webhooks"
                if webhooks_back
                else "; no webhooks back (it does not trust the dev certificate)"
            )
            yield "osma", f"{self.osma.url}   fake Osma, API key {self.osma_key} ({mode} mode){back}"
        elif settings.osma_api_key is not None:
            yield "osma", f"{_without_userinfo(settings.osma_base_url)} (from your settings)"
        else:
            yield "osma", f"not configured: handlers that call Osma fail (set {PREFIX}OSMA_API_KEY)"
        given = {
            "OGSM_BASE_URL": settings.ogsm_base_url,
            "OGSM_USERNAME": settings.ogsm_username,
            "OGSM_PASSWORD": settings.ogsm_password,
        }
        if self.ogsm is not None:
            made = f"; made from the routes: {', '.join(self.made)}" if self.made else ""
            yield (
                "ogsm",
                f"{self.ogsm.base_url}   fake OGSM, user {self.ogsm.username}, "
                f"password {self.ogsm.password}{made}",
            )
            login = f"{self.ogsm.username}:{self.ogsm.password}"
            yield "see", f"curl -u {login} {self.ogsm.base_url}/indicator_reports.json"
        elif settings.ogsm_base_url is not None and None not in given.values():
            yield "ogsm", f"{_without_userinfo(settings.ogsm_base_url)} (from your settings)"
        else:
            missing = ", ".join(PREFIX + name for name, value in given.items() if value is None)
            yield "ogsm", f"not configured: handlers that call OGSM fail (set {missing})"

    def close(self) -> None:
        for fake in (self.osma, self.ogsm):
            if fake is not None:
                fake.stop()


def start_fakes(
    settings: Settings, routes: Config, *, osma: bool, ogsm: bool, first_port: int, avoid: Collection[int]
) -> DevUpstreams:
    """Start the fakes asked for, on loopback ports `first_port` (Osma) and the next one
    (OGSM), or free ones other than `avoid` (the ports of dev's own servers)."""
    if osma and settings.mode == "any":
        raise ConfigError(
            f"{PREFIX}MODE=any does not go with the fake Osma, whose API key (test, or live with "
            f"{PREFIX}MODE=live) sets the mode: unset {PREFIX}MODE, or give real Osma settings"
        )
    upstreams = DevUpstreams()
    try:
        if osma:
            # The fake's key sets the service's mode, so it follows OSMA_ROUTER_MODE=live.
            upstreams.osma_key = LIVE_KEY if settings.mode == "live" else TEST_KEY
            upstreams.osma = _serve(FakeOsma(), first_port, avoid=avoid)
        if ogsm:
            upstreams.ogsm = _serve(
                FakeOgsm(action_body=settings.ogsm_action_body), first_port + 1, avoid=avoid
            )
            upstreams.made = seed_from_routes(upstreams.ogsm, routes)
    except BaseException:
        upstreams.close()
        raise
    return upstreams


def seed_from_routes(ogsm: FakeOgsm, routes: Config) -> list[str]:
    """Make every KPI, goal, strategy and objective the routes name; returns what was made."""
    adders = {
        "indicator": ogsm.add_indicator,
        "goal": ogsm.add_goal,
        "strategy": ogsm.add_strategy,
        "objective": ogsm.add_objective,
    }
    made: list[str] = []
    for route in routes.routes:
        for kind, ident in _references(route.params):
            name = f"{kind} {ident}"
            if name not in made:
                adders[kind](id=ident, title=f"{kind.capitalize()} {ident} (made by osma-router dev)")
                made.append(name)
    return made


def _references(params: Mapping[str, Any]) -> Iterator[tuple[str, int]]:
    for name, value in params.items():
        kind = _OGSM_REFERENCES.get(name)
        if kind is None:
            continue
        for ident in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(ident, int) and not isinstance(ident, bool) and ident > 0:
                yield kind, ident


def _serve(fake: _Fake, preferred: int, *, avoid: Collection[int]) -> _Fake:
    """Start `fake` on `preferred`, or on a free port when that one is taken."""
    port = pick_port(preferred, avoid)
    if port == preferred:
        with suppress(RuntimeError):  # taken between the check and uvicorn's bind
            return fake.start(port)
        port = pick_port(0, avoid)
    return fake.start(port)


def pick_port(preferred: int, avoid: Collection[int]) -> int:
    """`preferred` when it is not in `avoid` and can be bound on loopback now, else a free
    port not in `avoid` (ports of dev's servers that have not bound theirs yet)."""
    if 0 < preferred <= 65535 and preferred not in avoid and _bindable(preferred):
        return preferred
    port = free_port()
    while port in avoid:
        port = free_port()
    return port


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()
