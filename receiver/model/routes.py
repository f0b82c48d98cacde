"""The routes file: which handler runs, with which parameters, for which events.

```toml
[[routes]]
on = "task.completed"              # exact type, "task.*" or "*"; a list works too
where = { template = "update_blood_pressure" }   # equality on data.object fields
handler = "ogsm.indicator_report"
indicator_id = 456                 # everything else is the handler's parameters
retries = 5                        # attempts after the first (default 4)
backoff = [5, 30, 120, 600]        # seconds before each retry; the last repeats
```
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..exceptions import ConfigError
from .connectors import Connector, parse_connectors
from .events import _MISSING, lookup
from .plugins import HandlerRegistry

DEFAULT_RETRIES = 4
DEFAULT_BACKOFF = (5.0, 20.0, 80.0, 320.0)
DEFAULT_JOB_TIMEOUT = 120
RESERVED_KEYS = frozenset({"on", "where", "handler", "retries", "backoff", "queue", "timeout"})
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,100}\Z")
_TYPE_PATTERN = re.compile(r"(\*|[A-Za-z0-9_.-]+(\.\*)?)\Z")


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
        return f"#{self.index + 1} on {', '.join(self.on)}{where} -> {self.handler}"


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


def job_id(source: str, event_id: str, route: Route) -> str:
    return f"{source}_{event_job_part(event_id)}_{route.key}"


@dataclass(frozen=True)
class Config:
    """The routes file, loaded: routes in file order and the Osmos connectors, checked."""

    routes: tuple[Route, ...] = ()
    connectors: Mapping[str, Connector] = field(default_factory=dict)
    path: Path | None = None


class RouteTable:
    """Finds the routes of an event; built once, asked once per delivery."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)
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

    def match(self, event_type: str, obj: Mapping[str, Any]) -> list[Route]:
        """The routes an event goes to, in file order."""
        return [r for r in self.routes_for_type(event_type) if not r.where or r.matches_object(obj)]


def load_config(path: Path | None, registry: HandlerRegistry | None = None) -> Config:
    """Read and check the routes file; every problem is a `ConfigError` naming the file."""
    if path is None:
        return Config()
    try:
        with path.open("rb") as fh:
            document = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the routes file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(document, path=path, registry=registry)


def parse_config(
    document: Mapping[str, Any],
    *,
    path: Path | None = None,
    registry: HandlerRegistry | None = None,
    environ: Mapping[str, str] | None = None,
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
    connectors = parse_connectors(document.get("connectors", {}), where_, environ)
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
    from dataclasses import replace

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

    params = {k: v for k, v in table.items() if k not in RESERVED_KEYS}
    if handler is not None:
        try:
            handler.check_params(params)
        except ConfigError as exc:
            raise ConfigError(f"{label}: {exc}") from None

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
    )
