"""A fake Osma API for tests: tasks, members, users and files in memory, served over
real HTTP. It checks the `osma-api-key`, keeps test- and live-mode data apart, enforces
the documented request shapes, metadata limits, pagination rules and per-endpoint rate
limits (429, with `Retry-After` only when asked: the documents show none), and replays
the first answer for an `idempotency-key`, errors and injected failures included.

A refusal answers Osma's documented error body (`{"type", "message", "params"?}`), and
where the fix is in the test the message says it: "No such task: 'task_7'
(fake_osma.add_task(id='task_7') creates it)".

Like Osma, it can send webhooks about what the API writes (`osma_webhooks.py`): after
`send_webhooks_to(url, secret)`, every task created or updated through the API is
delivered to `url` as a signed `task.created` or `task.updated` event, from a background
thread, so a handler's own write comes back to the receiver as it would in production.

```python
with FakeOsma() as osma:                      # serving on 127.0.0.1:<free port>
    task = osma.add_task(template="update_blood_pressure")
    osma.fail(503, times=2, method="POST")    # the next two POSTs answer 503
    ...                                       # point OSMA_ROUTER_OSMA_BASE_URL at osma.url
    assert osma.tasks()[0]["metadata"] == {...}
    osma.send_webhooks_to(receiver_url + "/webhooks/osma", "whsec_...")
    osma.wait_for_webhooks()                  # every event queued so far has been sent
    assert [d.status for d in osma.webhook_deliveries] == [202]
```
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import orjson
from starlette.responses import Response
from starlette.routing import Route

from .fake_service import FakeService, Fault, Seen, json_response
from .osma_webhooks import WebhookDelivery as WebhookDelivery  # where it was before
from .osma_webhooks import WebhookSender

TEST_KEY = "sk_test_osma_router_fake"
LIVE_KEY = "sk_live_osma_router_fake"
LIMITS = {"test": 20, "live": 100}
MAX_PAGE = 100
TASK_FIELDS = {
    "template",
    "description",
    "member",
    "priority",
    "parameters",
    "data",
    "external_url",
    "metadata",
    "status",
}
MEMBER_FIELDS = {
    "name",
    "email",
    "date_of_birth",
    "biological_sex",
    "gender_identity",
    "reference_id",
    "metadata",
}
TASK_STATUSES = {"ready", "in_progress", "completed", "cancelled", "deleted"}


# An operation on a resource: (resource, mode, request, path params) -> (status, body).
Operation = Callable[[str, str, Seen, dict[str, str]], tuple[int, Any]]


class OsmaError(Exception):
    def __init__(
        self, status: int, error_type: str, message: str, params: list[dict[str, str]] | None = None
    ):
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"type": error_type, "message": message}
        if params:
            self.body["params"] = params


def invalid(param: str, message: str) -> OsmaError:
    return OsmaError(
        400, "invalid_request_error", "Invalid request parameter(s)", [{"param": param, "message": message}]
    )


def seeding_hint(resource: str, mode: str, item_id: str) -> str:
    """The call that puts the missing object in this fake (`resource`: "tasks", ...)."""
    where = f"mode={mode!r}, " if mode == "live" and resource != "users" else ""
    return f"(fake_osma.add_{resource[:-1]}({where}id={item_id!r}) creates it)"


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


class FakeOsma(WebhookSender, FakeService):
    """The fake Osma API. `keys` are the accepted API keys (`sk_test_...`/`sk_live_...`)."""

    name = "fake Osma"

    def __init__(
        self,
        keys: tuple[str, ...] = (TEST_KEY, LIVE_KEY),
        *,
        enforce_rate_limit: bool = True,
        retry_after: str | None = None,
    ) -> None:
        self.keys = keys
        self.enforce_rate_limit = enforce_rate_limit
        # The documents show no Retry-After on a 429, so by default there is none.
        self.retry_after = retry_after
        self._counter = itertools.count(1)
        self._store: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self._idempotency: dict[tuple[str, str], tuple[bytes, int, bytes]] = {}
        self._windows: dict[tuple[str, str, int], int] = {}
        self.rate_limited = 0
        super().__init__()
        self._init_webhooks()

    def routes(self) -> list[Route]:
        return [
            self.route("/tasks", GET=self._list, POST=self._create),
            self.route("/tasks/{id}", GET=self._get, POST=self._update, DELETE=self._delete),
            self.route("/members", GET=self._list, POST=self._create),
            self.route("/members/{id}", GET=self._get, POST=self._update, DELETE=self._delete),
            self.route("/users", GET=self._list),
            self.route("/users/{id}", GET=self._get),
            self.route("/files/{id}", GET=self._get),
        ]

    # --- seeding and reading, for tests -------------------------------------------------

    def add_task(self, mode: str = "test", **fields: Any) -> dict[str, Any]:
        """Put a task in the store (as if made in the dashboard) and return it."""
        return copy.deepcopy(self._new("tasks", mode, {"template": "example", **fields}))

    def add_member(self, mode: str = "test", **fields: Any) -> dict[str, Any]:
        return copy.deepcopy(self._new("members", mode, {"name": "Daisy Demo", **fields}))

    def add_user(self, **fields: Any) -> dict[str, Any]:
        return copy.deepcopy(
            self._new("users", "any", {"name": "Una User", "email": "una@example.com", **fields})
        )

    def add_file(self, mode: str = "test", **fields: Any) -> dict[str, Any]:
        created = self._new("files", mode, fields)
        created["url"] = f"https://files.invalid/{created['id']}?expires={int(time.time()) + 300}"
        return copy.deepcopy(created)

    def tasks(self, mode: str = "test") -> list[dict[str, Any]]:
        return self._all("tasks", mode)

    def members(self, mode: str = "test") -> list[dict[str, Any]]:
        return self._all("members", mode)

    def task(self, task_id: str, mode: str = "test") -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self._bucket("tasks", mode)[task_id])

    def reset(self) -> None:
        with self.lock:
            super().reset()
            self._store.clear()
            self._idempotency.clear()
            self._windows.clear()
            self.rate_limited = 0
            self._reset_webhooks()

    def stop(self) -> None:
        self._stop_webhooks()
        super().stop()

    # --- HTTP ---------------------------------------------------------------------------

    def fault_response(self, fault: Fault) -> Response:
        headers = {"request-id": self.next_request_id()}
        if fault.retry_after is not None:
            headers["retry-after"] = fault.retry_after
        status = fault.status or 503
        body = fault.body
        if body is None:
            kinds = {429: "rate_limit_error", 400: "invalid_request_error"}
            body = {"type": kinds.get(status, "api_error"), "message": f"injected {status}"}
            if status == 429:
                body["status_code"] = 429
        return json_response(body, status, headers)

    def faulted(self, seen: Seen, fault: Fault) -> Response:
        """Osma keeps the first answer per idempotency key, even an error: an injected
        failure of a POST with a key is what a retry under that key gets back (unless the
        test asked for `cached=False`). A 429 is not kept: a rate-limited request was not
        processed. With `after=True` the work's own answer is already kept."""
        response = self.fault_response(fault)
        key = seen.headers.get("idempotency-key")
        if fault.cached and not fault.after and seen.method == "POST" and key and response.status_code != 429:
            api_key = seen.headers.get("osma-api-key", "")
            fingerprint = orjson.dumps([seen.method, seen.path, _canonical(seen.body)])
            with self.lock:
                self._idempotency.setdefault(
                    (api_key, key), (fingerprint, response.status_code, bytes(response.body))
                )
        return response

    def answer(self, seen: Seen, path: str, path_params: dict[str, str], operation: Operation) -> Response:
        resource = path.split("/")[1]
        headers = {"request-id": self.next_request_id()}
        try:
            key = seen.headers.get("osma-api-key", "")
            if not key:
                raise OsmaError(401, "authentication_error", "No API key provided (osma-api-key header)")
            if key not in self.keys:
                raise OsmaError(
                    401,
                    "authentication_error",
                    "Invalid API key provided (this fake Osma takes the keys in fake_osma.keys; "
                    "point OSMA_ROUTER_OSMA_API_KEY at one of them)",
                )
            mode = "live" if key.startswith("sk_live_") else "test"
            version = seen.headers.get("osma-api-version")
            if version is not None:
                try:
                    date.fromisoformat(version)
                except ValueError:
                    raise OsmaError(
                        400, "invalid_request_error", "osma-api-version must be an ISO 8601 date"
                    ) from None
            self._count(mode, seen.endpoint)
            with self.lock:
                if seen.method == "POST":
                    return self._idempotent(
                        key, seen, lambda: operation(resource, mode, seen, path_params), headers
                    )
                status, body = operation(resource, mode, seen, path_params)
        except OsmaError as exc:
            if exc.status == 429 and self.retry_after is not None:
                headers["retry-after"] = self.retry_after
            return json_response(exc.body, exc.status, headers)
        return json_response(body, status, headers)

    def _count(self, mode: str, endpoint: str) -> None:
        second = int(time.time())
        with self.lock:
            window = (mode, endpoint, second)
            self._windows[window] = self._windows.get(window, 0) + 1
            over = self._windows[window] > LIMITS[mode]
            if over:
                self.rate_limited += 1
        if over and self.enforce_rate_limit:
            raise OsmaError(429, "rate_limit_error", "Rate limit exceeded")

    def _idempotent(
        self, api_key: str, seen: Seen, run: Callable[[], tuple[int, Any]], headers: dict[str, str]
    ) -> Response:
        key = seen.headers.get("idempotency-key")
        if key is None:
            status, body = self._safely(run)
            return json_response(body, status, headers)
        if not key or len(key) > 255:
            raise OsmaError(400, "invalid_request_error", "idempotency-key must be 1 to 255 characters")
        fingerprint = orjson.dumps([seen.method, seen.path, _canonical(seen.body)])
        cached = self._idempotency.get((api_key, key))
        if cached is not None:
            if cached[0] != fingerprint:
                raise OsmaError(
                    400,
                    "idempotency_error",
                    "Keys for idempotent requests can only be used with the same parameters",
                )
            return Response(
                cached[2],
                status_code=cached[1],
                media_type="application/json",
                headers={**headers, "idempotent-replayed": "true"},
            )
        status, body = self._safely(run)
        encoded = orjson.dumps(body)
        self._idempotency[(api_key, key)] = (fingerprint, status, encoded)
        return Response(encoded, status_code=status, media_type="application/json", headers=headers)

    @staticmethod
    def _safely(run: Callable[[], tuple[int, Any]]) -> tuple[int, Any]:
        try:
            return run()
        except OsmaError as exc:  # Osma caches the first answer even when it is an error
            return exc.status, exc.body

    # --- resources ----------------------------------------------------------------------

    def _bucket(self, resource: str, mode: str) -> dict[str, dict[str, Any]]:
        # Users are the same in both modes.
        return self._store.setdefault((resource, "any" if resource == "users" else mode), {})

    def _all(self, resource: str, mode: str) -> list[dict[str, Any]]:
        with self.lock:
            return copy.deepcopy(list(self._bucket(resource, mode).values()))

    def _new(self, resource: str, mode: str, fields: dict[str, Any]) -> dict[str, Any]:
        prefix = {"tasks": "task", "members": "mem", "users": "usr", "files": "file"}[resource]
        with self.lock:
            stamp = now_iso()
            item: dict[str, Any] = {
                "id": f"{prefix}_fake{next(self._counter):08d}",
                "created_at": stamp,
                "updated_at": stamp,
            }
            if resource == "tasks":
                item.update(
                    {
                        "template": None,
                        "status": "ready",
                        "priority": "routine",
                        "member": None,
                        "description": None,
                        "parameters": {},
                        "data": {},
                        "external_url": None,
                        "metadata": {},
                        "status_transitions": [],
                    }
                )
            elif resource == "members":
                item.update(
                    {
                        "name": None,
                        "email": None,
                        "status": "active",
                        "status_transitions": [],
                        "date_of_birth": None,
                        "biological_sex": None,
                        "gender_identity": None,
                        "metadata": {},
                    }
                )
            item.update(copy.deepcopy(fields))
            item["live_mode"] = mode == "live"
            self._bucket(resource, mode)[item["id"]] = item
            return item

    def _find(self, resource: str, mode: str, item_id: str) -> dict[str, Any]:
        item = self._bucket(resource, mode).get(item_id)
        if item is None:
            raise OsmaError(
                404,
                "invalid_request_error",
                f"No such {resource[:-1]}: '{item_id}' {seeding_hint(resource, mode, item_id)}",
            )
        return item

    def _get(self, resource: str, mode: str, seen: Seen, path: dict[str, str]) -> tuple[int, Any]:
        return 200, copy.deepcopy(self._find(resource, mode, path["id"]))

    def _list(self, resource: str, mode: str, seen: Seen, path: dict[str, str]) -> tuple[int, Any]:
        items = list(self._bucket(resource, mode).values())
        raw_limit = seen.query.get("limit", "10")
        try:
            limit = int(raw_limit)
        except ValueError:
            raise invalid("limit", "limit must be an integer") from None
        if not 1 <= limit <= MAX_PAGE:
            raise invalid("limit", f"limit must be between 1 and {MAX_PAGE}")
        after, before = seen.query.get("starting_after"), seen.query.get("ending_before")
        if after is not None and before is not None:
            raise invalid("starting_after", "Only one of starting_after and ending_before can be used")
        ids = [item["id"] for item in items]
        if after is not None:
            if after not in ids:
                raise invalid("starting_after", f"No such object: '{after}'")
            rest = items[ids.index(after) + 1 :]
            return 200, {"has_next": len(rest) > limit, "data": copy.deepcopy(rest[:limit])}
        if before is not None:
            if before not in ids:
                raise invalid("ending_before", f"No such object: '{before}'")
            earlier = items[: ids.index(before)]
            page = earlier[-limit:]
            return 200, {"has_next": len(earlier) > limit, "data": copy.deepcopy(page)}
        return 200, {"has_next": len(items) > limit, "data": copy.deepcopy(items[:limit])}

    def _create(self, resource: str, mode: str, seen: Seen, path: dict[str, str]) -> tuple[int, Any]:
        fields = self._body(seen, TASK_FIELDS if resource == "tasks" else MEMBER_FIELDS, resource, mode)
        if resource == "tasks" and not isinstance(fields.get("template"), str):
            raise invalid("template", "template is required")
        if resource == "members" and not isinstance(fields.get("name"), str):
            raise invalid("name", "name is required")
        # Checked before the task is stored: a 400 must leave nothing behind.
        metadata = _merged_metadata({}, fields.pop("metadata", {}))
        item = self._new(resource, mode, fields)
        item["metadata"] = metadata
        if resource == "tasks":
            self._announce("task.created", mode, copy.deepcopy(item))
        return 201, copy.deepcopy(item)

    def _update(self, resource: str, mode: str, seen: Seen, path: dict[str, str]) -> tuple[int, Any]:
        item = self._find(resource, mode, path["id"])
        fields = self._body(seen, TASK_FIELDS if resource == "tasks" else MEMBER_FIELDS, resource, mode)
        metadata = _merged_metadata(item.get("metadata") or {}, fields.pop("metadata", {}))
        if "status" in fields and fields["status"] != item.get("status"):
            item["status_transitions"].append(
                {"to": fields["status"], "from": item.get("status"), "timestamp": now_iso()}
            )
        item.update(fields)
        item["metadata"] = metadata
        item["updated_at"] = now_iso()
        if resource == "tasks":
            self._announce("task.updated", mode, copy.deepcopy(item))
        return 200, copy.deepcopy(item)

    def _delete(self, resource: str, mode: str, seen: Seen, path: dict[str, str]) -> tuple[int, Any]:
        item = self._find(resource, mode, path["id"])
        if item.get("status") != "deleted":
            item["status_transitions"].append(
                {"to": "deleted", "from": item.get("status"), "timestamp": now_iso()}
            )
            item["status"] = "deleted"
            item["updated_at"] = now_iso()
        return 200, copy.deepcopy(item)

    def _body(self, seen: Seen, allowed: set[str], resource: str, mode: str) -> dict[str, Any]:
        try:
            fields = orjson.loads(seen.body) if seen.body else {}
        except orjson.JSONDecodeError:
            raise OsmaError(400, "invalid_request_error", "The request body is not valid JSON") from None
        if not isinstance(fields, dict):
            raise OsmaError(400, "invalid_request_error", "The request body must be a JSON object")
        unknown = sorted(set(fields) - allowed)
        if unknown:
            raise invalid(unknown[0], f"Received unknown parameter: {unknown[0]}")
        for name in ("description", "template", "priority", "name", "email"):
            if name in fields and not isinstance(fields[name], str):
                raise invalid(name, f"{name} must be a string")
        for name in ("parameters", "data"):
            if name in fields and not isinstance(fields[name], dict):
                raise invalid(name, f"{name} must be an object")
        if "status" in fields and fields["status"] not in TASK_STATUSES:
            raise invalid("status", f"status must be one of {', '.join(sorted(TASK_STATUSES))}")
        if "date_of_birth" in fields:
            try:
                date.fromisoformat(str(fields["date_of_birth"]))
            except ValueError:
                raise invalid("date_of_birth", "date_of_birth must be a valid ISO 8601 date string") from None
        if isinstance(fields.get("member"), str) and fields["member"] not in self._bucket("members", mode):
            member = fields["member"]
            raise invalid("member", f"No such member: '{member}' {seeding_hint('members', mode, member)}")
        if "metadata" in fields and not isinstance(fields["metadata"], dict):
            raise invalid("metadata", "metadata must be an object")
        return fields


def _merged_metadata(current: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Osma's metadata update: keys merge in, `null` or `""` removes one; limits checked."""
    merged = dict(current)
    for key, value in update.items():
        if value is None or value == "":
            merged.pop(key, None)
        else:
            merged[key] = value
    if len(merged) > 50:
        raise invalid("metadata", "metadata can contain up to 50 keys")
    for key, value in merged.items():
        if len(key) > 50:
            raise invalid("metadata", "metadata keys can be up to 50 characters long")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise invalid("metadata", "metadata values must be strings")
        if len(str(value)) > 500:
            raise invalid("metadata", "metadata values can be up to 500 characters long")
        merged[key] = str(value)
    return merged


def _canonical(body: bytes) -> Any:
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace")
