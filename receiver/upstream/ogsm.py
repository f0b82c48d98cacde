"""The OGSM API client (docs/contract.md, "Upstream APIs"), sync and async.

```python
ogsm = OgsmClient("https://acme.ogsm.online/api/v2", "api-user", "secret")
report = ogsm.indicator_reports.create(456, "2024-10-01", 3)      # {"id": ..., ...}
ogsm.indicator_reports.list(indicator_id=456, at="2024-10-01")   # filtered here, not upstream
action = ogsm.actions.create({"title": "Call Daisy", "strategies": [{"id": 7}]})
ogsm.actions.update(action["id"], {"progress": 100, "status": {"name": "done"}})
```

Basic auth, JSON bodies sent as `application/json`, `.json` paths. OGSM has no
idempotency support: a POST that is sent twice creates two resources, which is why the
built-in handlers go through the effects ledger (`receiver/store/ledger.py`).

Action bodies go `{"action": {...}}` by default (`action_body="wrapped"`), or as the bare
action object (`action_body="bare"`, `OSMA_ROUTER_OGSM_ACTION_BODY=bare`): the documents
show the wrapper only for measurements (docs/upstream.md says why wrapped is the default).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import Any, Generic, TypeVar

import httpx
import orjson

from ..exceptions import InvalidRequest
from .http import JSON, AsyncClientBase, Call, ClientBase, HTTPCore, SyncClientBase, TransportT, segment

R = TypeVar("R")  # what one call gives: a JSON value, or an awaitable of one

ACTION_BODIES = ("wrapped", "bare")
DEFAULT_ACTION_BODY = "wrapped"
ACTION_BODY_SETTING = "OSMA_ROUTER_OGSM_ACTION_BODY"
_ACTION_WRITE = re.compile(r"/actions(/[^/]+)?\.json\Z")
# 4xx answers that speak of the request's credentials, target or pace, never of its body.
_NOT_ABOUT_THE_BODY = frozenset({401, 403, 404, 408, 425, 429})
_DETAIL_KEPT = 500  # characters of OGSM's error messages kept in the exception's message


def iso_date(value: date | str) -> str:
    """`YYYY-MM-DD`, as OGSM's `at` wants it."""
    if isinstance(value, datetime):
        value = value.date()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str) and len(value) == 10:
        try:
            return date.fromisoformat(value).isoformat()
        except ValueError:
            pass
    raise InvalidRequest(f"`at` must be a date as YYYY-MM-DD, got {value!r}")


def check_value(value: object) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequest("a measurement's current_value must be a finite number")
    return value


def describe_ogsm_error(response: httpx.Response) -> str:
    """The reason phrase, and the messages of OGSM's `error` / `errors` field when the body
    has one: `Unprocessable Entity: indicator: indicator 7 does not exist`."""
    reason = response.reason_phrase or "error"
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return reason
    detail = body.get("errors", body.get("error")) if isinstance(body, dict) else None
    text = _messages(detail)
    return f"{reason}: {text[:_DETAIL_KEPT]}" if text else reason


def _messages(detail: Any) -> str:
    """`{"field": ["message", ...]}`, `["message", ...]` or `"message"` as one line."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        return "; ".join(_messages(item) for item in detail if item)
    if isinstance(detail, dict):
        return "; ".join(f"{field}: {_messages(value)}" for field, value in detail.items() if value)
    return orjson.dumps(detail).decode() if detail else ""


def action_body_hint(action_body: str) -> str:
    """What a rejected action write adds to its message: the documents leave the body
    shape open, so the shape sent is the first suspect, and one setting switches it."""
    other = "bare" if action_body == "wrapped" else "wrapped"
    sent = 'wrapped as {"action": {...}}' if action_body == "wrapped" else "as a bare action object"
    return f"the action was sent {sent}; if OGSM wants the other shape, set {ACTION_BODY_SETTING}={other}"


def ogsm_error_describer(action_body: str) -> Callable[[httpx.Response], str]:
    """`describe_ogsm_error`, plus `action_body_hint` on a 4xx answer to an action write."""

    def describe(response: httpx.Response) -> str:
        reason = describe_ogsm_error(response)
        request = response.request
        if (
            400 <= response.status_code < 500
            and response.status_code not in _NOT_ABOUT_THE_BODY
            and request.method in ("POST", "PATCH")
            and _ACTION_WRITE.search(request.url.path)
        ):
            return f"{reason} ({action_body_hint(action_body)})"
        return reason

    return describe


def _where(**wanted: Any) -> Callable[[JSON], JSON]:
    """A client-side filter of a list answer: OGSM documents no query parameters."""

    def matches(item: Any) -> bool:
        for path, expected in wanted.items():
            value = item
            for part in path.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if value != expected:
                return False
        return True

    def keep(items: JSON) -> JSON:
        return (
            [item for item in items if isinstance(item, dict) and matches(item)]
            if isinstance(items, list)
            else items
        )

    return keep


class _API(Generic[R]):
    """What the resources call: the client base gives `_send`."""

    def _send(self, call: Call) -> R:
        raise NotImplementedError


class ListResource(Generic[R]):
    """A resource OGSM lets us read: `GET /<name>.json` gives all of them as an array."""

    def __init__(self, api: _API[R], name: str) -> None:
        self._api = api
        self.name = name

    def list(self) -> R:
        return self._api._send(Call("GET", f"{self.name}.json", f"GET /{self.name}"))


class ReportResource(ListResource[R]):
    """Measurements of a goal (`goal_reports`) or of a KPI (`indicator_reports`)."""

    def __init__(self, api: _API[R], target: str) -> None:
        super().__init__(api, f"{target}_reports")
        self.target = target

    def list(self, target_id: int | None = None, *, at: date | str | None = None) -> R:
        """All measurements; with `target_id` / `at`, only those of that goal or KPI and date."""
        wanted: dict[str, Any] = {}
        if target_id is not None:
            wanted[f"{self.target}.id"] = target_id
        if at is not None:
            wanted["at"] = iso_date(at)
        return self._api._send(
            Call(
                "GET",
                f"{self.name}.json",
                f"GET /{self.name}",
                transform=_where(**wanted) if wanted else None,
            )
        )

    def create(self, target_id: int, at: date | str, value: float) -> R:
        body = {
            f"{self.target}_report": {
                self.target: {"id": target_id},
                "at": iso_date(at),
                "current_value": check_value(value),
            }
        }
        return self._api._send(Call("POST", f"{self.name}.json", f"POST /{self.name}", json=body))


class ActionResource(ListResource[R]):
    """Actions: list, create, `PATCH actions/<id>.json`, `DELETE actions/<id>.json`; bodies
    in the configured shape (`wrapped`: `{"action": {...}}`, `bare`: the fields alone)."""

    def __init__(self, api: _API[R], body: str = DEFAULT_ACTION_BODY) -> None:
        super().__init__(api, "actions")
        self.body = check_action_body(body)

    def create(self, fields: Mapping[str, Any]) -> R:
        return self._api._send(Call("POST", "actions.json", "POST /actions", json=self._body(fields)))

    def update(self, action_id: int | str, fields: Mapping[str, Any]) -> R:
        return self._api._send(
            Call(
                "PATCH",
                f"actions/{segment(action_id)}.json",
                "PATCH /actions/:id",
                json=self._body(fields),
            )
        )

    def _body(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        return {"action": dict(fields)} if self.body == "wrapped" else dict(fields)

    def delete(self, action_id: int | str) -> R:
        return self._api._send(Call("DELETE", f"actions/{segment(action_id)}.json", "DELETE /actions/:id"))


def check_action_body(action_body: str) -> str:
    if action_body not in ACTION_BODIES:
        raise InvalidRequest(f"action_body must be 'wrapped' or 'bare', got {action_body!r}")
    return action_body


def ogsm_core(
    base_url: str,
    username: str,
    password: str,
    timeout: float | httpx.Timeout | None,
    max_inline_wait: float | None,
    action_body: str = DEFAULT_ACTION_BODY,
) -> HTTPCore:
    if not base_url or not username or not password:
        raise InvalidRequest("the OGSM client needs a base URL, a username and a password")
    return HTTPCore(
        upstream="ogsm",
        base_url=base_url,
        auth=(username, password),
        headers={"accept": "application/json", "user-agent": "osma-router"},
        timeout=timeout,
        max_inline_wait=max_inline_wait,
        describe_error=ogsm_error_describer(check_action_body(action_body)),
    )


class _OgsmAPI(_API[R], ClientBase[TransportT]):
    """The OGSM API's options and resources; the sync and async clients differ only in
    how a `Call` is sent."""

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        *,
        timeout: float | httpx.Timeout | None = None,
        max_inline_wait: float | None = None,
        transport: TransportT | None = None,
        action_body: str = DEFAULT_ACTION_BODY,
    ) -> None:
        core = ogsm_core(base_url, username, password, timeout, max_inline_wait, action_body)
        self._open(core, transport)
        self.objectives: ListResource[R] = ListResource(self, "objectives")
        self.goals: ListResource[R] = ListResource(self, "goals")
        self.strategies: ListResource[R] = ListResource(self, "strategies")
        self.indicators: ListResource[R] = ListResource(self, "indicators")
        self.goal_reports: ReportResource[R] = ReportResource(self, "goal")
        self.indicator_reports: ReportResource[R] = ReportResource(self, "indicator")
        self.actions: ActionResource[R] = ActionResource(self, action_body)

    def reports(self, target: str) -> ReportResource[R]:
        """`goal_reports` or `indicator_reports` by the target's kind (`"goal"`, `"indicator"`)."""
        if target == "goal":
            return self.goal_reports
        if target == "indicator":
            return self.indicator_reports
        raise ValueError(f"no reports of {target!r}")


class OgsmClient(SyncClientBase, _OgsmAPI[JSON, httpx.BaseTransport]):
    """The OGSM API, blocking. See the module docstring."""


class AsyncOgsmClient(AsyncClientBase, _OgsmAPI[Any, httpx.AsyncBaseTransport]):
    """The OGSM API for `async def` handlers: every call is awaited."""
