"""The plugin API: how a team registers handlers that routes can name.

```python
from receiver import Context, Event, HandlerGroup

group = HandlerGroup("care")            # handlers are named "care.<name>"

@group.on("task.completed")             # default `on` for routes that name it
def notify(event: Event, ctx: Context) -> None:
    ctx.log.info("task done", extra={"task_id": event.object.get("id")})
```

and in the plugin's `pyproject.toml`:

```toml
[project.entry-points."osma_router.handlers"]
care = "care_plugin:group"
```

Every installed entry point of the group is loaded, unless `OSMA_ROUTER_PLUGINS` names the
ones to load (`builtin,care`): then the others are found and listed, never imported.
`builtin` is the entry point of the handlers shipped in this package, and only that one.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from ..exceptions import ConfigError
from ..settings import PREFIX

ENTRY_POINT_GROUP = "osma_router.handlers"
BUILTIN = "builtin"  # the entry point of the built-in handlers (pyproject.toml)
_OWN_DISTRIBUTION = "osma-router"

HandlerFunc = Callable[..., Any]
# A dataclass (called with the parameters as keywords) or a function of the mapping.
ParamsCheck = type | Callable[[Mapping[str, Any]], Any]


@dataclass(frozen=True)
class Handler:
    """A registered handler: its full name, the function, and what it expects."""

    name: str
    func: HandlerFunc
    event_types: tuple[str, ...] = ()
    params: ParamsCheck | None = None
    is_async: bool = False

    def check_params(self, params: Mapping[str, Any]) -> Any:
        """Validate a route's parameters; the result is what `ctx.params` holds."""
        if self.params is None:
            return dict(params)
        try:
            return self.params(**params) if isinstance(self.params, type) else self.params(params)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"handler {self.name!r}: bad route parameters: {exc}") from None


class HandlerGroup:
    """A named set of handlers, published through the `osma_router.handlers` entry points."""

    def __init__(self, namespace: str = "") -> None:
        self.namespace = namespace
        self.handlers: dict[str, Handler] = {}

    def __repr__(self) -> str:
        return f"HandlerGroup({self.namespace!r}, handlers={sorted(self.handlers)})"

    def on(
        self, *event_types: str, name: str | None = None, params: ParamsCheck | None = None
    ) -> Callable[[HandlerFunc], HandlerFunc]:
        """Register a handler for `event_types` (the default `on` of routes that name it).

        `params` is a dataclass (or callable) that validates the route's parameters when
        the configuration loads; a handler then finds the instance in `ctx.params`.
        """

        def register(func: HandlerFunc) -> HandlerFunc:
            short = name or func.__name__
            full = f"{self.namespace}.{short}" if self.namespace else short
            if full in self.handlers:
                raise ConfigError(f"handler {full!r} is registered twice")
            self.handlers[full] = Handler(
                name=full,
                func=func,
                event_types=tuple(event_types),
                params=params,
                is_async=inspect.iscoroutinefunction(func),
            )
            return func

        return register

    def handler(
        self, name: str | None = None, *, params: ParamsCheck | None = None
    ) -> Callable[[HandlerFunc], HandlerFunc]:
        """Register a handler that routes bind to events with their own `on`."""
        return self.on(name=name, params=params)


class HandlerRegistry:
    """Every handler known to this process, by full name."""

    def __init__(self, groups: Iterable[HandlerGroup] = ()) -> None:
        self.handlers: dict[str, Handler] = {}
        self.plugins: tuple[str, ...] = ()  # entry points loaded, by name
        self.skipped: tuple[str, ...] = ()  # found but not in the allow-list: "name (distribution)"
        for group in groups:
            self.add(group)

    def add(self, group: HandlerGroup) -> None:
        for name, handler in group.handlers.items():
            if name in self.handlers and self.handlers[name].func is not handler.func:
                raise ConfigError(f"two plugins register a handler named {name!r}")
            self.handlers[name] = handler

    def get(self, name: str) -> Handler:
        try:
            return self.handlers[name]
        except KeyError:
            known = ", ".join(sorted(self.handlers)) or "none"
            raise ConfigError(f"unknown handler {name!r} (known handlers: {known})") from None

    def __contains__(self, name: object) -> bool:
        return name in self.handlers

    @classmethod
    def discover(cls, allowed: Collection[str] | None = None) -> HandlerRegistry:
        """Load the groups published in the `osma_router.handlers` entry-point group: all of
        them, or with `allowed` (`Settings.plugins`) only the entry points it names. The others
        are listed in `skipped` and never imported; an allowed name no package publishes is a
        `ConfigError`."""
        registry = cls()
        loaded: list[str] = []
        skipped: list[str] = []
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            if allowed is not None and not _is_allowed(entry_point, allowed):
                skipped.append(f"{entry_point.name} ({_distribution(entry_point) or 'no distribution'})")
                continue
            if allowed is not None and entry_point.name in loaded:  # which one did the list mean?
                raise ConfigError(
                    f"{PREFIX}PLUGINS names {entry_point.name!r}, which more than one installed "
                    f"package publishes ({_distribution(entry_point)} among them): uninstall the other"
                )
            try:
                group = entry_point.load()
            except Exception as exc:  # a broken plugin must not look like our crash
                raise ConfigError(
                    f"handler plugin {entry_point.name!r} ({entry_point.value}) failed to load: "
                    f"{type(exc).__name__}: {exc}"
                ) from None
            if not isinstance(group, HandlerGroup):
                raise ConfigError(
                    f"handler plugin {entry_point.name!r} ({entry_point.value}) is not a HandlerGroup"
                )
            registry.add(group)
            loaded.append(entry_point.name)
        missing = sorted(set(allowed or ()) - set(loaded))
        if missing:
            found = ", ".join(sorted(loaded + skipped)) or "none"
            raise ConfigError(
                f"{PREFIX}PLUGINS names {', '.join(map(repr, missing))}, which no installed package "
                f"publishes as an {ENTRY_POINT_GROUP} entry point (found: {found})"
            )
        registry.plugins, registry.skipped = tuple(loaded), tuple(skipped)
        return registry


def _distribution(entry_point: EntryPoint) -> str | None:
    """The normalised name of the package that publishes `entry_point` (PEP 503)."""
    dist = getattr(entry_point, "dist", None)
    return re.sub(r"[-_.]+", "-", dist.name).lower() if dist is not None else None


def _is_allowed(entry_point: EntryPoint, allowed: Collection[str]) -> bool:
    if entry_point.name not in allowed:
        return False
    # `builtin` lets in this package's own handlers, not another package's namesake.
    return entry_point.name != BUILTIN or _distribution(entry_point) == _OWN_DISTRIBUTION
