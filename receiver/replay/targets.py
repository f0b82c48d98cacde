"""Where `osma-router replay` sends each delivery (see `replay.py`).

- `HttpTarget`: the body, byte for byte, re-signed with the current time and POSTed.
- `DirectTarget`: the receiver's own `Pipeline.admit` (routing, job building, the atomic
  dedup + enqueue script), with the handlers' clock pinned to the original received
  time and, with `--force`, job ids of its own that run even if the id was seen.
- `InlineTarget`: the matching handlers run here through the worker's `execute()`, no
  RQ; the id is marked seen only once all of them succeeded.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import orjson
from redis.exceptions import RedisError

from ..keys import dedup_key
from ..model.capture_file import Delivery
from ..model.plugins import HandlerRegistry
from ..model.routes import load_config
from ..model.signature import sign
from ..settings import Settings
from ..store.connection import UNAVAILABLE, connect, connect_async
from ..store.dedup import AdmitOutcome, dedup_ttl_ms
from ..store.pipeline import build_pipeline
from ..worker.execution import WorkerRuntime, execute

UNUSED_REDIS_URL = "redis://127.0.0.1:1/0"  # a dry run without OSMA_ROUTER_REDIS_URL: never contacted


@dataclass(frozen=True)
class ReplayResult:
    """What became of one delivery: accepted, duplicate, rejected or failed."""

    outcome: str
    detail: str = ""
    unreachable: bool = False  # the target did not answer at all


class Target(Protocol):
    def deliver(self, delivery: Delivery, received_at: datetime) -> ReplayResult: ...
    def preview(self, delivery: Delivery, received_at: datetime) -> str: ...
    def close(self) -> None: ...


class HttpTarget:
    """POST each body, re-signed now, to a receiver."""

    def __init__(self, url: str, secret: str, timeout: float = 10.0) -> None:
        import httpx

        self.url = url
        self._secret = secret
        self._client = httpx.Client(timeout=timeout)

    def __repr__(self) -> str:
        return f"HttpTarget({self.url!r}, secret=<masked>)"

    def preview(self, delivery: Delivery, received_at: datetime) -> str:
        return f"would POST {len(delivery.body)} bytes to {self.url}"

    def deliver(self, delivery: Delivery, received_at: datetime) -> ReplayResult:
        import httpx

        headers = {k: v for k, v in delivery.headers.items() if k not in ("content-length", "host")}
        headers.setdefault("content-type", "application/json")
        headers["user-agent"] = "osma-router-replay"
        headers["osma-signature"] = sign(delivery.body, self._secret, int(time.time()))
        try:
            response = self._client.post(self.url, content=delivery.body, headers=headers)
        except httpx.HTTPError as exc:
            return ReplayResult("failed", f"could not POST: {type(exc).__name__}: {exc}", unreachable=True)
        if response.status_code >= 500:
            return ReplayResult("failed", f"HTTP {response.status_code}: {_error_of(response.content)}")
        if response.status_code >= 400:
            return ReplayResult("rejected", f"HTTP {response.status_code}: {_error_of(response.content)}")
        try:
            duplicate = orjson.loads(response.content).get("status") == "duplicate"
        except (orjson.JSONDecodeError, AttributeError):
            duplicate = False
        return ReplayResult("duplicate" if duplicate else "accepted")

    def close(self) -> None:
        self._client.close()


def _error_of(content: bytes) -> str:
    try:
        error = orjson.loads(content)["error"]
        return f"{error['type']}: {error['message']}"
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return content[:200].decode("utf-8", errors="replace")


class DirectTarget:
    """Queue each event through the receiver's `Pipeline.admit`."""

    def __init__(self, settings: Settings, *, force: bool, dry_run: bool = False) -> None:
        # Like the worker: it checks no Osmos request, so it needs no connector token.
        config = load_config(settings.config_path, HandlerRegistry.discover(settings.plugins), tokens=False)
        # A dry run routes and reads (if Redis is configured) but never stores.
        url = settings.redis_url if dry_run else settings.require_redis_url()
        self._loop = asyncio.new_event_loop()
        self._redis = connect_async(settings, "receiver", url=url or UNUSED_REDIS_URL)
        self.pipeline = build_pipeline(settings, config, self._redis)
        self.force_tag = f"r{int(time.time() * 1000):x}" if force else None
        self._sync = connect(settings, "command", url=url) if url else None

    def preview(self, delivery: Delivery, received_at: datetime) -> str:
        jobs = self.pipeline.jobs_for(
            delivery.source, dict(delivery.payload), delivery.body, received_at, replay=True
        )
        what = f"{len(jobs)} job(s){_handlers(jobs)}"
        if self.force_tag is None and _seen(self._sync, delivery):
            return f"duplicate (already seen; --force would queue {what})"
        return f"would queue {what}"

    def deliver(self, delivery: Delivery, received_at: datetime) -> ReplayResult:
        try:
            outcome, jobs, _ = self._loop.run_until_complete(
                self.pipeline.admit(
                    delivery.source,
                    dict(delivery.payload),
                    delivery.body,
                    received_at,
                    replay=True,
                    force_tag=self.force_tag,
                )
            )
        except UNAVAILABLE as exc:  # this one failed; the replay goes on
            return ReplayResult("failed", f"could not queue: {type(exc).__name__}: {exc}", unreachable=True)
        return ReplayResult("accepted" if outcome is AdmitOutcome.ACCEPTED else "duplicate", f"{jobs} job(s)")

    def close(self) -> None:
        self._loop.run_until_complete(self._redis.aclose())
        self._loop.close()
        if self._sync is not None:
            self._sync.close()


class InlineTarget:
    """Run each event's matching handlers here, as a worker would, without RQ."""

    def __init__(self, settings: Settings, *, force: bool, dry_run: bool = False) -> None:
        self.force = force
        url = settings.redis_url if dry_run else settings.require_redis_url()
        self._redis = connect(settings, "command", url=url or UNUSED_REDIS_URL)
        self._sync = connect(settings, "command", url=url) if url else None
        self.runtime = WorkerRuntime.build(settings, self._redis)
        self._async = connect_async(
            settings, "receiver", url=url or UNUSED_REDIS_URL
        )  # routing only: nothing is stored through it
        self.pipeline = build_pipeline(settings, self.runtime.config, self._async)
        self.ttl_ms = dedup_ttl_ms(settings.dedup_ttl)

    def preview(self, delivery: Delivery, received_at: datetime) -> str:
        jobs = self.pipeline.jobs_for(
            delivery.source, dict(delivery.payload), delivery.body, received_at, replay=True
        )
        if not self.force and _seen(self._sync, delivery):
            return f"duplicate (already seen; --force would run {len(jobs)} handler(s){_handlers(jobs)})"
        return f"would run {len(jobs)} handler(s){_handlers(jobs)}"

    def deliver(self, delivery: Delivery, received_at: datetime) -> ReplayResult:

        key = dedup_key(delivery.source, delivery.event_id)
        seen = bool(self._redis.exists(key))
        if seen and not self.force:
            return ReplayResult("duplicate")
        jobs = self.pipeline.jobs_for(
            delivery.source, dict(delivery.payload), delivery.body, received_at, replay=True
        )
        failures = []
        for job in jobs:
            spec = orjson.loads(job.data)[2][0]
            try:
                execute(spec, self.runtime)
            except Exception as exc:  # noqa: BLE001 - a plugin may raise anything; report it, go on
                reason = str(exc).splitlines()[0] if str(exc) else ""
                failures.append(f"{spec['route']['handler']}: {type(exc).__name__}: {reason}")
        if failures:  # left unmarked, so running the replay again retries it
            return ReplayResult("failed", "; ".join(failures))
        if not seen:
            self._redis.set(key, "1", px=self.ttl_ms, nx=True)
        return ReplayResult("accepted", f"{len(jobs)} handler(s) ran")

    def close(self) -> None:
        self.runtime.upstream.close(self.runtime.loop)
        self.runtime.loop.close()
        self._redis.close()
        if self._sync is not None:
            self._sync.close()
        asyncio.run(self._async.aclose())


def _handlers(jobs: list[Any]) -> str:
    names = [orjson.loads(job.data)[2][0]["route"]["handler"] for job in jobs]
    return f": {', '.join(names)}" if names else ""


def _seen(redis: Any, delivery: Delivery) -> bool:
    """Whether the id is remembered; a dry run only reads, and only when Redis answers."""
    if redis is None:
        return False
    try:
        return bool(redis.exists(dedup_key(delivery.source, delivery.event_id)))
    except RedisError:
        return False
