"""The fake Osma's webhooks: after `send_webhooks_to(url, secret)`, each task the fake's API
creates or updates is announced as a signed `task.created` / `task.updated` event and
POSTed to `url` from a background thread, signed when sent, as Osma signs. Deliveries are
recorded (`webhook_deliveries`); the fake does not retry. `reset()` drops what a finished
test left queued."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from ..model.signature import sign

WEBHOOK_USER_AGENT = "Osma-Webhooks (fake)"


@dataclass(frozen=True)
class WebhookDelivery:
    """One webhook the fake sent: the event, where to, and the answer's status (None when
    no answer came: `error` names the failure). The fake does not retry."""

    event_id: str
    type: str
    task_id: str
    url: str
    body: bytes
    signature: str
    status: int | None
    error: str | None
    at: float

    @property
    def event(self) -> Any:
        return orjson.loads(self.body)


@dataclass(frozen=True)
class _Outgoing:
    generation: int  # of the test that caused it: reset() drops what is still queued
    event_id: str
    type: str
    task_id: str
    body: bytes


class WebhookSender:
    """The webhook half of `FakeOsma`, mixed into it. It uses the fake's `lock` and its
    reset `_generation` (`FakeService`): `_init_webhooks()` runs after the fake's own
    set-up, `_reset_webhooks()` (under the lock) in `reset()`, `_stop_webhooks()` in `stop()`."""

    lock: threading.RLock
    _generation: int

    def _init_webhooks(self) -> None:
        self._webhook_url: str | None = None
        self._webhook_secret: str | None = None
        self._outbox: queue.SimpleQueue[_Outgoing | None] = queue.SimpleQueue()
        self._deliveries: list[WebhookDelivery] = []
        self._sender: threading.Thread | None = None
        self._unsent = 0
        self._all_sent = threading.Condition(self.lock)

    def _reset_webhooks(self) -> None:
        # The receiver a test pointed webhooks at is gone with that test.
        self._webhook_url = self._webhook_secret = None
        self._deliveries.clear()

    def _stop_webhooks(self) -> None:
        with self.lock:
            sender, self._sender = self._sender, None
            self._webhook_url = self._webhook_secret = None
        if sender is not None:
            self._outbox.put(None)
            sender.join(10)

    def send_webhooks_to(self, url: str | None, secret: str | None = None) -> None:
        """After each task write through the API, POST a signed event to `url` (the full
        endpoint, e.g. `<receiver>/webhooks/osma`), signed with `secret` as Osma signs.
        `None` stops, and events not yet sent are dropped."""
        if url is not None and not secret:
            raise ValueError("webhooks need the signing secret the receiver checks")
        with self.lock:
            self._webhook_url, self._webhook_secret = url, (secret if url is not None else None)
            if url is not None and (self._sender is None or not self._sender.is_alive()):
                self._sender = threading.Thread(
                    target=self._send_forever, name="fake-osma-webhooks", daemon=True
                )
                self._sender.start()

    @property
    def webhook_deliveries(self) -> list[WebhookDelivery]:
        """The webhooks sent since the last reset, in the order they were sent."""
        with self.lock:
            return list(self._deliveries)

    def wait_for_webhooks(self, timeout: float = 10.0) -> None:
        """Return once every event queued so far has been sent (or dropped)."""
        deadline = time.monotonic() + timeout
        with self._all_sent:
            while self._unsent:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self._unsent} webhook(s) still unsent after {timeout:g} s")
                self._all_sent.wait(left)

    def _announce(self, event_type: str, mode: str, task: dict[str, Any]) -> None:
        """Queue the event about a task write; called under the lock, by the write itself, so
        a write whose answer is lost is announced too and a replayed answer is not."""
        if self._webhook_url is None:
            return
        event_id = f"evt_fake{uuid.uuid4().hex[:24]}"
        body = orjson.dumps(
            {
                "id": event_id,
                "object": "event",
                "type": event_type,
                "created_at": datetime.now(UTC).isoformat(),
                "live_mode": mode == "live",
                "data": {"object": task},
            }
        )
        self._unsent += 1
        self._outbox.put(_Outgoing(self._generation, event_id, event_type, task["id"], body))

    def _send_forever(self) -> None:
        # Its own thread: the API answer that caused an event is not held up by its delivery.
        with httpx.Client(timeout=10.0) as http:
            while (outgoing := self._outbox.get()) is not None:
                try:
                    self._send(http, outgoing)
                finally:
                    with self._all_sent:
                        self._unsent -= 1
                        self._all_sent.notify_all()

    def _send(self, http: httpx.Client, outgoing: _Outgoing) -> None:
        with self.lock:
            url, secret, generation = self._webhook_url, self._webhook_secret, self._generation
        if url is None or secret is None or outgoing.generation != generation:
            return
        # Signed when sent, as Osma does: the timestamp is the delivery's, not the write's.
        signature = sign(outgoing.body, secret, int(time.time()))
        headers = {
            "content-type": "application/json",
            "user-agent": WEBHOOK_USER_AGENT,
            "osma-signature": signature,
        }
        status: int | None = None
        error: str | None = None
        try:
            status = http.post(url, content=outgoing.body, headers=headers).status_code
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        with self.lock:
            if outgoing.generation == self._generation:
                self._deliveries.append(
                    WebhookDelivery(
                        outgoing.event_id,
                        outgoing.type,
                        outgoing.task_id,
                        url,
                        outgoing.body,
                        signature,
                        status,
                        error,
                        time.time(),
                    )
                )
