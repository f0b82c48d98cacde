"""What a handler gets besides the event: its route's parameters, a clock, a logger,
Redis, the settings, and a deterministic key for each effect it causes."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from redis import Redis

from ..logs import ContextLogger
from ..settings import Settings
from ..store.ledger import Effect, EffectOutcome, EffectResult, EffectsLedger, job_effect_key
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
    - `ledger`: the effects ledger, to make an upstream effect happen once; `locked(name)`
      holds one of its locks for this execution, `osma_effect(...)` makes an Osma write once
    - `execution_id`: this run of the job; locks belong to it, so a rerun of the same job
      never walks into a lock an earlier, frozen run still holds
    """

    event_id: str
    handler: str
    route_key: str
    params: Any
    settings: Settings
    redis: Redis
    job_id: str = ""
    attempt: int = 1
    execution_id: str = field(default_factory=lambda: uuid.uuid4().hex)
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
            owner=self.execution_id,
        )

    def locked(self, name: str) -> AbstractContextManager[None]:
        """Hold the ledger's lock `name` for this execution (renewed while inside): a check
        and the effect it guards become one step across workers."""
        return self.ledger.locked(name, owner=self.execution_id)

    def osma_effect(
        self,
        step: str,
        call: Callable[[str], EffectResult],
        reconcile: Callable[[], EffectResult | None],
        *,
        intent: Mapping[str, Any] | None = None,
        label: str = "",
    ) -> EffectOutcome:
        """Make one Osma write happen once, `call(idempotency_key)` sending it.

        Osma keeps its first answer per idempotency key, errors included, and refuses a key
        reused with other parameters. So after an attempt whose answer did not apply the
        write (5xx, timeout, a cached error), the next attempt first calls `reconcile()` to
        read back whether it happened; if not, it sends under a new key generation
        (`<key>.g2`, ...). `label`: index the outcome under this name for the event.
        """
        effect = Effect(
            self.idempotency_key(step),
            intent=dict(intent or {}),
            event_id=self.event_id if label else "",
            label=label,
            owner=self.execution_id,
        )
        return self.ledger.perform_keyed(effect, call, reconcile=lambda intent, claimed: reconcile())

    def now(self) -> datetime:
        return self.clock()

    def idempotency_key(self, step: str = "main") -> str:
        """A key that is the same for every attempt of this (event, route, step).

        It names an effect in the ledger. Sent as Osma's `idempotency-key` it is the first
        generation only: Osma keeps the first answer per key, a 5xx included, so a retry
        under the same key gets that 5xx again. Use `osma_effect`, which moves to a new
        generation when the first answer did not apply the write.
        """
        return job_effect_key(self.event_id, self.route_key, step)
