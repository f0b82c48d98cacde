"""The routes file: which handler runs, with which parameters, for which events.

```toml
[[routes]]
on = "task.completed"              # exact type, "task.*" or "*"; a list works too
where = { template = "update_blood_pressure" }   # equality on data.object fields
handler = "ogsm.indicator_report"
indicator_id = 456                 # everything else is the handler's parameters
retries = 5                        # attempts after the first (default 4)
backoff = [5, 30, 120, 600]        # seconds before each retry; the last repeats
live_mode = true                   # optional: only live (true) or test (false) events, or "any"
```
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import orjson

from ..exceptions import ConfigError
from .connectors import Connector, parse_connectors
from .events import _MISSING, lookup
from .plugins import HandlerRegistry

DEFAULT_RETRIES = 4
DEFAULT_BACKOFF = (5.0, 20.0, 80.0, 320.0)
DEFAULT_JOB_TIMEOUT = 120
RESERVED_KEYS = frozenset({"on", "where", "handler", "retries", "backoff", "queue", "timeout", "live_mode"})
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,100}\Z")
_TYPE_PATTERN = re.compile(r"(\*|[A-Za-z0-9_.-]+(\.\*)?)\Z")
# A route's `live_mode`: true (live events only), false (test events only), "any", or None
# when the route does not say and the service's mode applies.
LiveMode = bool | Literal["any"] | None


@dataclass(frozen=True)
class Route:
    """One `[[routes]]` table, checked."""

    key: str
    index: int
    on: tuple[str, ...]
    handler: str
    where: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    retries: int = DEFAULT_RETRIES
    backoff: tuple[float, ...] = DEFAULT_BACKOFF
    queue: str | None = None
    timeout: int = DEFAULT_JOB_TIMEOUT
    live_mode: LiveMode = None

    def matches_type(self, event_type: str) -> bool:
        return any(type_matches(pattern, event_type) for pattern in self.on)

    def matches_object(self, obj: Mapping[str, Any]) -> bool:
        return all(_same(lookup(obj, path), value) for path, value in self.where.items())

    def retry_intervals(self) -> list[int]:
        """One interval per retry; the last backoff value repeats."""
        if self.retries == 0:
            return []
        values = list(self.backoff) + [self.backoff[-1]] * max(0, self.retries - len(self.backoff))
        return [int(round(v)) for v in values[: self.retries]]

    def describe(self) -> str:
        where = f" where {dict(self.where)}" if self.where else ""
        mode = "" if self.live_mode is None else f" (live_mode {_toml(self.live_mode)})"
        return f"#{self.index + 1} on {', '.join(self.on)}{where} -> {self.handler}{mode}"


def _toml(value: bool | str) -> str:
    return str(value).lower() if isinstance(value, bool) else f'"{value}"'


def type_matches(pattern: str, event_type: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return event_type.startswith(pattern[:-1])
    return pattern == event_type


def _same(actual: Any, expected: Any) -> bool:
    if actual is _MISSING:
        return False
    # TOML `true` must not match JSON 1, nor 1 match true.
    if isinstance(actual, bool) or isinstance(expected, bool):
        return type(actual) is type(expected) and actual == expected
    return bool(actual == expected)


def event_job_part(event_id: str) -> str:
    """The event id as it may appear in an RQ job id (letters, digits, `_`, `-`)."""
    if _SAFE_ID.match(event_id):
        return "e-" + event_id
    return "h-" + hashlib.sha256(event_id.encode("utf-8")).hexdigest()[:40]


def job_id_head(source: str, event_id: str) -> str:
    """What every job id of one event starts with; the route key follows."""
    return f"{source}_{event_job_part(event_id)}_"


def job_id(source: str, event_id: str, route: Route) -> str:
    return job_id_head(source, event_id) + route.key


@dataclass(frozen=True)
class Config:
    """The routes file, loaded: routes in file order and the Osmos connectors, checked."""

    routes: tuple[Route, ...] = ()
    connectors: Mapping[str, Connector] = field(default_factory=dict)
    path: Path | None = None


class RouteTable:
    """Finds the routes of an event; built once, asked once per delivery.

    `mode` is the service's (live, test or any; `Settings.service_mode`). An event whose
    `live_mode` differs from the mode that applies to a route (the route's own `live_mode`,
    else the service's) does not go to that route. Events without a boolean `live_mode`
    (Osmos records, hand-written replay lines) are never held back (docs/contract.md,
    "Event envelope").
    """

    def __init__(self, routes: Sequence[Route], mode: str = "any") -> None:
        self.routes = tuple(routes)
        self.mode = mode
        # Per route, in file order (a route's index is its position): the `live_mode` an event
        # needs, or None for either. Worked out once, so an event pays only when it is held back.
        self._needs = tuple(_needed_mode(route.live_mode, mode) for route in self.routes)
        self._filters = any(needed is not None for needed in self._needs)
        self._exact: dict[str, list[Route]] = {}
        self._other: list[Route] = []
        for route in self.routes:
            if all("*" not in p for p in route.on):
                for pattern in route.on:
                    self._exact.setdefault(pattern, []).append(route)
            else:
                self._other.append(route)
        self._cache: dict[str, tuple[Route, ...]] = {}

    def routes_for_type(self, event_type: str) -> tuple[Route, ...]:
        cached = self._cache.get(event_type)
        if cached is None:
            found = {r.index: r for r in self._exact.get(event_type, ())}
            found.update({r.index: r for r in self._other if r.matches_type(event_type)})
            cached = tuple(found[i] for i in sorted(found))
            if len(self._cache) < 10_000:
                self._cache[event_type] = cached
        return cached

    def match(self, event_type: str, obj: Mapping[str, Any], live_mode: object = None) -> list[Route]:
        """The routes an event goes to, in file order."""
        return self.route(event_type, obj, live_mode)[0]

    def route(
        self, event_type: str, obj: Mapping[str, Any], live_mode: object = None
    ) -> tuple[list[Route], int]:
        """The routes an event goes to, in file order, and how many of the routes its type and
        object match were held back because its `live_mode` is not the one that applies."""
        matched = [r for r in self.routes_for_type(event_type) if not r.where or r.matches_object(obj)]
        if not self._filters or not isinstance(live_mode, bool) or not matched:
            return matched, 0
        needs = self._needs
        kept = [r for r in matched if needs[r.index] is None or needs[r.index] is live_mode]
        return kept, len(matched) - len(kept)


def _needed_mode(route_mode: LiveMode, service_mode: str) -> bool | None:
    """The `live_mode` an event needs to go to a route: the route's own choice, else the service's."""
    chosen: object = service_mode if route_mode is None else route_mode
    if chosen is True or chosen == "live":
        return True
    if chosen is False or chosen == "test":
        return False
    return None


def load_config(path: Path | None, registry: HandlerRegistry | None = None, *, tokens: bool = True) -> Config:
    """Read and check the routes file; every problem is a `ConfigError` naming the file.
    `tokens=False` where Osmos requests are never checked (workers, operator commands):
    the connectors' token variables need not be set there."""
    if path is None:
        return Config()
    try:
        with path.open("rb") as fh:
            document = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the routes file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(document, path=path, registry=registry, tokens=tokens)


def parse_config(
    document: Mapping[str, Any],
    *,
    path: Path | None = None,
    registry: HandlerRegistry | None = None,
    environ: Mapping[str, str] | None = None,
    tokens: bool = True,
) -> Config:
    """Check a routes document; `environ` holds connector tokens (default: the process's)."""
    where_ = str(path) if path else "routes"
    unknown = set(document) - {"routes", "connectors"}
    if unknown:
        raise ConfigError(f"{where_}: unknown top-level table(s): {', '.join(sorted(unknown))}")
    tables = document.get("routes", [])
    if not isinstance(tables, list):
        raise ConfigError(f"{where_}: `routes` must be an array of tables ([[routes]])")
    routes: list[Route] = []
    seen_keys: dict[str, int] = {}
    for index, table in enumerate(tables):
        route = _parse_route(table, index, where_, registry)
        # Identical tables are still two routes (two jobs, two effects): number the repeats.
        count = seen_keys.get(route.key, 0) + 1
        seen_keys[route.key] = count
        if count > 1:
            route = _replace_key(route, f"{route.key}x{count}")
        routes.append(route)
    connectors = parse_connectors(document.get("connectors", {}), where_, environ, tokens=tokens)
    return Config(routes=tuple(routes), connectors=connectors, path=path)


def _flatten(where: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{ data.score = 5 }` is a nested table in TOML; it means the path `data.score`."""
    flat: dict[str, Any] = {}
    for key, value in where.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def _replace_key(route: Route, key: str) -> Route:
    return replace(route, key=key)


def _parse_route(table: Any, index: int, where_: str, registry: HandlerRegistry | None) -> Route:
    label = f"{where_}: route #{index + 1}"
    if not isinstance(table, dict):
        raise ConfigError(f"{label}: must be a table")
    handler_name = table.get("handler")
    if not isinstance(handler_name, str) or not handler_name:
        raise ConfigError(f'{label}: needs `handler = "<name>"`')
    handler = None
    if registry is not None:
        try:
            handler = registry.get(handler_name)
        except ConfigError as exc:
            raise ConfigError(f"{label}: {exc}") from None

    on_value = table.get("on")
    if on_value is None and handler is not None and handler.event_types:
        on_value = list(handler.event_types)
    if isinstance(on_value, str):
        on_value = [on_value]
    if not isinstance(on_value, list) or not on_value or not all(isinstance(p, str) for p in on_value):
        raise ConfigError(f'{label}: needs `on = "<event type>"` (or "task.*", "*", or a list)')
    for pattern in on_value:
        if not _TYPE_PATTERN.match(pattern):
            raise ConfigError(f'{label}: `on` pattern {pattern!r} is not an event type, "x.*" or "*"')

    where = table.get("where", {})
    if not isinstance(where, dict):
        raise ConfigError(f"{label}: `where` must be an inline table of field = value")
    where = _flatten(where)

    retries = table.get("retries", DEFAULT_RETRIES)
    if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= 100:
        raise ConfigError(f"{label}: `retries` must be a whole number from 0 to 100")
    backoff = table.get("backoff", list(DEFAULT_BACKOFF))
    if isinstance(backoff, (int, float)) and not isinstance(backoff, bool):
        backoff = [backoff]
    if (
        not isinstance(backoff, list)
        or not backoff
        or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and b >= 0 for b in backoff)
    ):
        raise ConfigError(f"{label}: `backoff` must be a list of seconds, e.g. [5, 30, 120, 600]")
    queue = table.get("queue")
    if queue is not None and (not isinstance(queue, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", queue)):
        raise ConfigError(f"{label}: `queue` may hold only letters, digits, '_' and '-'")
    timeout = table.get("timeout", DEFAULT_JOB_TIMEOUT)
    if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout <= 0:
        raise ConfigError(f"{label}: `timeout` must be a positive whole number of seconds")
    live_mode = table.get("live_mode")
    if live_mode is not None and not isinstance(live_mode, bool) and live_mode != "any":
        raise ConfigError(f'{label}: `live_mode` must be true (live events), false (test events) or "any"')

    params = {k: v for k, v in table.items() if k not in RESERVED_KEYS}
    if handler is not None:
        try:
            handler.check_params(params)
        except ConfigError as exc:
            raise ConfigError(f"{label}: {exc}") from None

    # `live_mode` stays out of the key: it chooses which events reach the route, not what the
    # route does, so setting it keeps the route's job ids and ledger entries (and so its effects).
    canonical = orjson.dumps(
        {"on": on_value, "where": where, "handler": handler_name, "params": params},
        option=orjson.OPT_SORT_KEYS,
        default=str,
    )
    key = "r" + hashlib.sha256(canonical).hexdigest()[:12]
    return Route(
        key=key,
        index=index,
        on=tuple(on_value),
        handler=handler_name,
        where=where,
        params=params,
        retries=retries,
        backoff=tuple(float(b) for b in backoff),
        queue=queue,
        timeout=timeout,
        live_mode=live_mode,
    )
