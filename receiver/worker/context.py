"""What a handler gets besides the event: its route's parameters, a clock, a logger,
Redis, the settings, and a deterministic key for each effect it causes."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from redis import Redis

from ..logs import ContextLogger
from ..settings import Settings
from ..store.ledger import Effect, EffectsLedger
from ..upstream.ogsm import AsyncOgsmClient, OgsmClient
from ..upstream.osma import AsyncOsmaClient, OsmaClient
from .clients import Upstream


@dataclass
class Context:
    """Passed to every handler call next to the `Event`.

    - `params`: the route's parameters (checked by the handler's `params` type if it has one)
    - `route_key`: a stable id of the route; with the event id it names this job's effects
    - `attempt`: 1 on the first run, 2 on the first retry, ...
    - `now()`: the clock to use for anything time-dependent (replays pin it)
    - `log`: a logger whose lines carry the event id, job id and handler name
    - `osma`, `ogsm` (and `osma_async`, `ogsm_async` for `async def` handlers): API
      clients built from the settings, shared by the jobs of a worker process; asking
      for one whose settings are missing fails the job with `UpstreamNotConfigured`
    - `ledger`: the effects ledger, to make an upstream effect happen once
    """

    event_id: str
    handler: str
    route_key: str
    params: Any
    settings: Settings
    redis: Redis
    job_id: str = ""
    attempt: int = 1
    clock: Callable[[], datetime] = field(default=lambda: datetime.now().astimezone())
    log: logging.LoggerAdapter[logging.Logger] = field(
        default_factory=lambda: ContextLogger(logging.getLogger("osma_router.handler"), {})
    )
    upstream: Upstream | None = None

    @property
    def _clients(self) -> Upstream:
        if self.upstream is None:
            self.upstream = Upstream(self.settings, self.redis)
        return self.upstream

    @property
    def osma(self) -> OsmaClient:
        """The Osma API client (blocking)."""
        return self._clients.osma

    @property
    def osma_async(self) -> AsyncOsmaClient:
        """The Osma API client for `async def` handlers."""
        return self._clients.osma_async

    @property
    def ogsm(self) -> OgsmClient:
        """The OGSM API client (blocking)."""
        return self._clients.ogsm

    @property
    def ogsm_async(self) -> AsyncOgsmClient:
        """The OGSM API client for `async def` handlers."""
        return self._clients.ogsm_async

    @property
    def ledger(self) -> EffectsLedger:
        """The effects ledger (`receiver/store/ledger.py`)."""
        return self._clients.ledger

    def effect(self, step: str = "main", intent: Mapping[str, Any] | None = None, scope: str = "") -> Effect:
        """This job's effect named `step`, for `ctx.ledger.perform` (see `receiver/store/ledger.py`)."""
        return Effect(
            self.idempotency_key(step),
            intent=dict(intent or {}),
            event_id=self.event_id,
            label=self.handler,
            scope=scope,
            owner=self.job_id,
        )

    def now(self) -> datetime:
        return self.clock()

    def idempotency_key(self, step: str = "main") -> str:
        """A key that is the same for every attempt of this (event, route, step).

        Send it as Osma's `idempotency-key`, or use it to name an effect in a ledger.
        """
        raw = f"{self.event_id}|{self.route_key}|{step}"
        if len(raw) <= 200 and raw.isprintable():
            return f"osma-router:{raw}"
        return "osma-router:" + hashlib.sha256(raw.encode()).hexdigest()
