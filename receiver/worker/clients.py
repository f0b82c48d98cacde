"""The upstream clients a worker process shares between its jobs, built on first use
from the settings: `ctx.osma`, `ctx.osma_async`, `ctx.ogsm`, `ctx.ogsm_async`, `ctx.ledger`.

Asking for a client whose settings are missing raises `UpstreamNotConfigured` (a
`ConfigError` and a `PermanentError`: the job goes to the failed registry at once,
with a message naming the variables to set).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from redis import Redis

from ..exceptions import UpstreamNotConfigured
from ..settings import PREFIX, Settings
from ..store.ledger import EffectsLedger
from ..upstream.ogsm import AsyncOgsmClient, OgsmClient
from ..upstream.osma import AsyncOsmaClient, OsmaClient
from ..upstream.ratelimit import RateLimiter


class Upstream:
    """Lazily built clients and ledger of one process. See the module docstring."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self._made: dict[str, Any] = {}

    def _once(self, name: str, make: Callable[[], Any]) -> Any:
        if name not in self._made:
            self._made[name] = make()
        return self._made[name]

    def _osma_options(self) -> dict[str, Any]:
        key = self.settings.osma_api_key
        if key is None:
            raise UpstreamNotConfigured(
                f"this handler calls the Osma API: set {PREFIX}OSMA_API_KEY "
                f"(and {PREFIX}OSMA_BASE_URL if not {self.settings.osma_base_url})"
            )
        return {
            "api_key": key.reveal(),
            "base_url": self.settings.osma_base_url,
            "api_version": self.settings.osma_api_version,
            "limiter": RateLimiter.for_osma(self.redis, key.reveal()),
        }

    def _ogsm_options(self) -> dict[str, Any]:
        s = self.settings
        if s.ogsm_base_url is None or s.ogsm_username is None or s.ogsm_password is None:
            missing = [
                name
                for name, value in (
                    ("OGSM_BASE_URL", s.ogsm_base_url),
                    ("OGSM_USERNAME", s.ogsm_username),
                    ("OGSM_PASSWORD", s.ogsm_password),
                )
                if value is None
            ]
            raise UpstreamNotConfigured(
                "this handler calls the OGSM API: set " + ", ".join(PREFIX + name for name in missing)
            )
        return {
            "base_url": s.ogsm_base_url,
            "username": s.ogsm_username,
            "password": s.ogsm_password.reveal(),
            "action_body": s.ogsm_action_body,
        }

    @property
    def osma(self) -> OsmaClient:
        client: OsmaClient = self._once("osma", lambda: OsmaClient(**self._osma_options()))
        return client

    @property
    def osma_async(self) -> AsyncOsmaClient:
        client: AsyncOsmaClient = self._once("osma_async", lambda: AsyncOsmaClient(**self._osma_options()))
        return client

    @property
    def ogsm(self) -> OgsmClient:
        client: OgsmClient = self._once("ogsm", lambda: OgsmClient(**self._ogsm_options()))
        return client

    @property
    def ogsm_async(self) -> AsyncOgsmClient:
        client: AsyncOgsmClient = self._once("ogsm_async", lambda: AsyncOgsmClient(**self._ogsm_options()))
        return client

    @property
    def ledger(self) -> EffectsLedger:
        ledger: EffectsLedger = self._once(
            "ledger", lambda: EffectsLedger(self.redis, lock_ttl=self.settings.lock_ttl)
        )
        return ledger

    def close(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Close every client made. The async ones are closed on `loop`, the loop their calls
        ran on (a worker's `runtime.loop`, before it is closed): their connections belong to
        it, and another loop cannot close them. Without `loop` they are closed on a new loop,
        which is enough only for clients that made no calls."""
        for name in ("osma", "ogsm"):
            client = self._made.pop(name, None)
            if client is not None:
                client.close()
        closing = [self._made.pop(name) for name in ("osma_async", "ogsm_async") if name in self._made]
        if not closing:
            return
        if loop is not None:
            loop.run_until_complete(_aclose_all(closing))
            return
        # Not asyncio.run: it would reset the thread's current event loop.
        own = asyncio.new_event_loop()
        try:
            own.run_until_complete(_aclose_all(closing))
        finally:
            own.close()


async def _aclose_all(clients: list[AsyncOsmaClient | AsyncOgsmClient]) -> None:
    for client in clients:
        await client.aclose()
