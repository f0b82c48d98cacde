"""A fake OGSM API for tests, served over real HTTP under `/api/v2`: objectives, goals,
strategies and KPIs to read, goal and KPI measurements to create, actions to create,
update and delete. It checks basic auth and `Content-Type: application/json` and
enforces the documented body shapes (422 otherwise); like OGSM it has no idempotency,
so a POST sent twice makes two resources.

A refusal answers `{"errors": {field: [message]}}` (422) or `{"error": message}` (401,
404, 415), and where the fix is in the test, the message says it: "indicator 7 does not
exist (fake_ogsm.add_indicator(id=7) creates it)". Messages name fields and ids, never
values from the request body.

Action bodies are accepted in exactly one shape, the one the client sends with the same
setting (docs/contract.md, "Effects under real conditions"): `{"action": {...}}` by
default, the bare action object with `FakeOgsm(action_body="bare")`. The other shape is a
422 whose message names the shape expected and `OSMA_ROUTER_OGSM_ACTION_BODY`.

```python
with FakeOgsm() as ogsm:
    ogsm.add_indicator(id=456, title="Blood pressure updates")
    ...                                     # OSMA_ROUTER_OGSM_BASE_URL=ogsm.base_url
    assert [r["current_value"] for r in ogsm.indicator_reports()] == [1, 2, 3]
```
"""

from __future__ import annotations

import base64
import binascii
import copy
import itertools
import math
from collections.abc import Callable
from datetime import date
from typing import Any

import orjson
from starlette.responses import Response
from starlette.routing import Route

from .fake_service import FakeService, Fault, Seen, json_response

USERNAME = "osma-router"
PASSWORD = "fake-ogsm-password"
PREFIX = "/api/v2"
REPORT_FIELDS = {"at", "current_value", "target_value", "traffic_light", "show_in_ogsm", "description"}
ACTION_FIELDS = {
    "title",
    "labels",
    "strategies",
    "description",
    "assignee",
    "involved",
    "start",
    "due",
    "status",
    "ogsm_canvases",
    "traffic_light",
    "progress",
    "archived",
}


class Unprocessable(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class NotFound(Exception):
    """A 404 whose message is the body's `error`."""


def missing(kind: str, item_id: object) -> str:
    """An unknown KPI, goal, strategy or action, and the seeding call that makes it."""
    return f"{kind} {item_id} does not exist (fake_ogsm.add_{kind}(id={item_id}) creates it)"


# An operation: (request, path params) -> (status, body).
Operation = Callable[[Seen, dict[str, str]], tuple[int, Any]]


class FakeOgsm(FakeService):
    """The fake OGSM API; `base_url` is what `OSMA_ROUTER_OGSM_BASE_URL` should be."""

    name = "fake OGSM"
    prefix = PREFIX

    def __init__(
        self, username: str = USERNAME, password: str = PASSWORD, *, action_body: str = "wrapped"
    ) -> None:
        if action_body not in ("wrapped", "bare"):
            raise ValueError(f"action_body must be 'wrapped' or 'bare', got {action_body!r}")
        self.username = username
        self.password = password
        # A test may switch it on a shared fake; reset() puts back the one given here.
        self.action_body = self._initial_action_body = action_body
        self._ids = itertools.count(1001)
        self._store: dict[str, dict[int, dict[str, Any]]] = {}
        super().__init__()

    @property
    def base_url(self) -> str:
        return self.url + PREFIX

    def routes(self) -> list[Route]:
        routes = [
            self.route(f"/{name}.json", GET=self._lister(name))
            for name in ("objectives", "goals", "strategies", "indicators")
        ]
        return routes + [
            self.route("/goal_reports.json", GET=self._lister("goal_reports"), POST=self._reporter("goal")),
            self.route(
                "/indicator_reports.json",
                GET=self._lister("indicator_reports"),
                POST=self._reporter("indicator"),
            ),
            self.route("/actions.json", GET=self._lister("actions"), POST=self._create_action),
            self.route("/actions/{id}.json", PATCH=self._update_action, DELETE=self._delete_action),
        ]

    # --- seeding and reading, for tests -------------------------------------------------

    def add_objective(self, **fields: Any) -> dict[str, Any]:
        return self._seed("objectives", {"title": "Objective", "labels": [], "archived": False}, fields)

    def add_goal(self, **fields: Any) -> dict[str, Any]:
        return self._seed(
            "goals",
            {
                "title": "Goal",
                "labels": [],
                "target_unit": None,
                "archived": False,
                "aggregation_method": "sum",
                "chart_type": "line",
            },
            fields,
        )

    def add_strategy(self, **fields: Any) -> dict[str, Any]:
        return self._seed("strategies", {"title": "Strategy", "labels": [], "archived": False}, fields)

    def add_indicator(self, **fields: Any) -> dict[str, Any]:
        return self._seed(
            "indicators",
            {
                "title": "KPI",
                "labels": [],
                "strategies": [],
                "target_unit": None,
                "archived": False,
                "aggregation_method": "sum",
                "chart_type": "line",
            },
            fields,
        )

    def indicator_reports(self, indicator_id: int | None = None) -> list[dict[str, Any]]:
        """KPI measurements in the order they were made (of one KPI, with `indicator_id`)."""
        return [
            r
            for r in self._all("indicator_reports")
            if indicator_id is None or r["indicator"]["id"] == indicator_id
        ]

    def goal_reports(self, goal_id: int | None = None) -> list[dict[str, Any]]:
        return [r for r in self._all("goal_reports") if goal_id is None or r["goal"]["id"] == goal_id]

    def add_action(self, **fields: Any) -> dict[str, Any]:
        return self._seed("actions", _new_action({"title": "Action"}), fields)

    def actions(self) -> list[dict[str, Any]]:
        return self._all("actions")

    def reset(self) -> None:
        with self.lock:
            super().reset()
            self._store.clear()
            self.action_body = self._initial_action_body

    # --- HTTP ---------------------------------------------------------------------------

    def fault_response(self, fault: Fault) -> Response:
        headers = {"x-request-id": self.next_request_id()}
        if fault.retry_after is not None:
            headers["retry-after"] = fault.retry_after
        body = fault.body if fault.body is not None else {"error": f"injected {fault.status}"}
        return json_response(body, fault.status or 503, headers)

    def answer(self, seen: Seen, path: str, path_params: dict[str, str], operation: Operation) -> Response:
        headers = {"x-request-id": self.next_request_id()}
        if not self._authorized(seen.headers.get("authorization", "")):
            message = (
                "unauthorized: the fake OGSM takes HTTP Basic auth with fake_ogsm.username and "
                "fake_ogsm.password (OSMA_ROUTER_OGSM_USERNAME, OSMA_ROUTER_OGSM_PASSWORD)"
            )
            return json_response(
                {"error": message}, 401, {**headers, "www-authenticate": 'Basic realm="OGSM API"'}
            )
        if seen.method in ("POST", "PATCH"):
            content_type = seen.headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type != "application/json":
                return json_response({"error": "send JSON with Content-Type: application/json"}, 415, headers)
        try:
            with self.lock:
                status, body = operation(seen, path_params)
        except Unprocessable as exc:
            return json_response({"errors": {exc.field: [str(exc)]}}, 422, headers)
        except NotFound as exc:
            return json_response({"error": str(exc)}, 404, headers)
        except KeyError:
            return json_response({"error": "not found"}, 404, headers)
        return json_response(body, status, headers)

    def _authorized(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            username, _, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return username == self.username and password == self.password

    # --- resources ----------------------------------------------------------------------

    def _bucket(self, name: str) -> dict[int, dict[str, Any]]:
        return self._store.setdefault(name, {})

    def _all(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return copy.deepcopy(list(self._bucket(name).values()))

    def _seed(self, name: str, defaults: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            item = {**defaults, **fields}
            item["id"] = int(item.get("id") or next(self._ids))
            self._bucket(name)[item["id"]] = item
            return copy.deepcopy(item)

    def _lister(self, name: str) -> Operation:
        def list_all(seen: Seen, path: dict[str, str]) -> tuple[int, Any]:
            return 200, copy.deepcopy(list(self._bucket(name).values()))

        return list_all

    def _reporter(self, target: str) -> Operation:
        def create(seen: Seen, path: dict[str, str]) -> tuple[int, Any]:
            body = _json_object(seen.body)
            wrapper = f"{target}_report"
            if set(body) != {wrapper} or not isinstance(body[wrapper], dict):
                raise Unprocessable(wrapper, f'the body must be {{"{wrapper}": {{...}}}}')
            report = dict(body[wrapper])
            ref = report.pop(target, None)
            if not isinstance(ref, dict) or set(ref) != {"id"} or not _is_int(ref["id"]):
                raise Unprocessable(target, f'{target} must be {{"id": <integer>}}')
            if ref["id"] not in self._bucket(f"{target}s"):
                raise Unprocessable(target, missing(target, ref["id"]))
            unknown = sorted(set(report) - REPORT_FIELDS)
            if unknown:
                raise Unprocessable(unknown[0], _unknown_attribute(REPORT_FIELDS | {target}))
            _check_date(report, "at", required=True)
            value = report.get("current_value")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise Unprocessable("current_value", "must be a number")
            created = {
                "id": next(self._ids),
                target: {"id": ref["id"]},
                "target_value": None,
                "traffic_light": None,
                "show_in_ogsm": False,
                "description": None,
                **report,
            }
            self._bucket(f"{target}_reports")[created["id"]] = created
            return 201, copy.deepcopy(created)

        return create

    def _action_fields(self, seen: Seen, *, creating: bool) -> dict[str, Any]:
        fields = self._unwrapped(_json_object(seen.body))
        unknown = sorted(set(fields) - ACTION_FIELDS)
        if unknown:
            raise Unprocessable(unknown[0], _unknown_attribute(ACTION_FIELDS))
        if (creating or "title" in fields) and (
            not isinstance(fields.get("title"), str) or not fields["title"].strip()
        ):
            raise Unprocessable("title", "can't be blank")
        for name in ("strategies", "ogsm_canvases"):
            refs = fields.get(name, [])
            if not isinstance(refs, list) or not all(
                isinstance(r, dict) and _is_int(r.get("id")) for r in refs
            ):
                raise Unprocessable(name, 'must be a list of {"id": <integer>}')
        for ref in fields.get("strategies", []):
            if ref["id"] not in self._bucket("strategies"):
                raise Unprocessable("strategies", missing("strategy", ref["id"]))
        for name in ("labels", "involved"):
            named = fields.get(name, [])
            if not isinstance(named, list) or not all(
                isinstance(n, dict) and isinstance(n.get("name"), str) for n in named
            ):
                raise Unprocessable(name, 'must be a list of {"name": <string>}')
        for name in ("status", "assignee"):
            if (
                name in fields
                and fields[name] is not None
                and not (isinstance(fields[name], dict) and isinstance(fields[name].get("name"), str))
            ):
                raise Unprocessable(name, 'must be {"name": <string>}')
        if "progress" in fields and not (_is_int(fields["progress"]) and 0 <= fields["progress"] <= 100):
            raise Unprocessable("progress", "must be a whole number from 0 to 100")
        if "archived" in fields and not isinstance(fields["archived"], bool):
            raise Unprocessable("archived", "must be true or false")
        _check_date(fields, "start")
        _check_date(fields, "due")
        return dict(fields)

    def _unwrapped(self, body: dict[str, Any]) -> dict[str, Any]:
        """The action's fields from a body of the one shape this fake takes. Accepting
        both would let a client that sends the wrong one pass every test."""
        wrapped = set(body) == {"action"} and isinstance(body["action"], dict)
        if self.action_body == "wrapped":
            if not wrapped:
                raise Unprocessable(
                    "action",
                    'the body must be {"action": {...}}: this fake OGSM takes wrapped action bodies, '
                    "which the client sends with OSMA_ROUTER_OGSM_ACTION_BODY=wrapped",
                )
            fields: dict[str, Any] = body["action"]
            return fields
        if "action" in body:
            raise Unprocessable(
                "action",
                'the body must be the bare action object, not {"action": {...}}: this fake OGSM takes '
                "bare action bodies, which the client sends with OSMA_ROUTER_OGSM_ACTION_BODY=bare",
            )
        return body

    def _create_action(self, seen: Seen, path: dict[str, str]) -> tuple[int, Any]:
        fields = self._action_fields(seen, creating=True)
        created = {"id": next(self._ids), **_new_action(fields)}
        self._bucket("actions")[created["id"]] = created
        return 201, copy.deepcopy(created)

    def _update_action(self, seen: Seen, path: dict[str, str]) -> tuple[int, Any]:
        action = self._action(path)
        action.update(self._action_fields(seen, creating=False))
        return 200, copy.deepcopy(action)

    def _delete_action(self, seen: Seen, path: dict[str, str]) -> tuple[int, Any]:
        action = self._action(path)
        return 200, self._bucket("actions").pop(action["id"])

    def _action(self, path: dict[str, str]) -> dict[str, Any]:
        action = self._bucket("actions").get(_path_id(path))
        if action is None:
            raise NotFound(missing("action", path["id"]))
        return action


def _new_action(fields: dict[str, Any]) -> dict[str, Any]:
    """An action as OGSM answers it: every documented field, defaults where not given."""
    return {
        "labels": [],
        "strategies": [],
        "description": None,
        "assignee": None,
        "involved": [],
        "start": None,
        "due": None,
        "status": None,
        "ogsm_canvases": [],
        "traffic_light": None,
        "progress": 0,
        "archived": False,
        **fields,
    }


def _path_id(path: dict[str, str]) -> int:
    try:
        return int(path["id"])
    except ValueError:
        raise NotFound("no such action: action ids are integers") from None


def _unknown_attribute(known: set[str]) -> str:
    return f"unknown attribute (known: {', '.join(sorted(known))})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Unprocessable("body", "is not valid JSON") from None
    if not isinstance(value, dict):
        raise Unprocessable("body", "must be a JSON object")
    return value


def _check_date(fields: dict[str, Any], name: str, *, required: bool = False) -> None:
    value = fields.get(name)
    if value is None and not required:
        return
    try:
        if not isinstance(value, str) or len(value) != 10:
            raise ValueError
        date.fromisoformat(value)
    except ValueError:
        raise Unprocessable(name, "must be a date as YYYY-MM-DD") from None
