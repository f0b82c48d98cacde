"""`osma-router trigger TYPE [--set PATH=VALUE ...] [--to URL] [--secret S]` and `--list`:
a realistic event of TYPE, from a fixture shipped in the package (receiver/cli/fixtures/),
signed and sent like `send` does.

Every trigger is a new event: the event id, the task and member ids and every time in
the fixture are made afresh when it is sent. The fixtures hold test data only ("Test
Member", addresses at example.invalid) and `live_mode: false`.
"""

from __future__ import annotations

import argparse
import secrets
import string
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import orjson

from ..dev.runner import DEV_SECRET
from ..settings import read_setting
from .common import add_command, fail
from .signing import SECRETS_VARIABLE, add_secret_options, secret_given, send_signed, signing_secret

DEV_RECEIVER = "http://127.0.0.1:8000/webhooks/osma"
_ID_ALPHABET = string.ascii_letters + string.digits
# Placeholders a fixture's string values may be; each is filled afresh per trigger.
_FRESH: dict[str, Callable[[datetime], str]] = {
    "{{event_id}}": lambda now: _new_id("evt"),
    "{{task_id}}": lambda now: _new_id("task"),
    "{{member_id}}": lambda now: _new_id("mem"),
    "{{now}}": lambda now: now.isoformat(),
}

Assignment = tuple[tuple[str, ...], Any]


class AssignmentError(ValueError):
    """A `--set PATH=VALUE` that cannot be read or applied; the message names it."""


def event_types() -> list[str]:
    """The types there is a fixture for, sorted."""
    return sorted(
        entry.name.removesuffix(".json") for entry in _fixtures().iterdir() if entry.name.endswith(".json")
    )


def build_event(event_type: str, assignments: Iterable[Assignment], now: datetime) -> dict[str, Any]:
    """The fixture of `event_type` with fresh ids and times (`now`), then `assignments` applied.
    An unknown type is a `KeyError`."""
    if event_type not in event_types():
        raise KeyError(event_type)
    fixture = orjson.loads(_fixtures().joinpath(f"{event_type}.json").read_bytes())
    fresh = {placeholder: make(now) for placeholder, make in _FRESH.items()}
    event: dict[str, Any] = _filled(fixture, fresh)
    for path, value in assignments:
        assign(event, path, value)
    return event


def parse_assignment(text: str) -> Assignment:
    """`PATH=VALUE`: PATH is dotted (`data.object.template`; a number picks a list item),
    VALUE is read as JSON when it is JSON (`5`, `true`, `null`, `"5"`, `{"a": 1}`) and is the
    text itself otherwise."""
    path_text, equals, raw = text.partition("=")
    if not equals:
        raise AssignmentError(
            f"--set {text!r}: expected PATH=VALUE, e.g. data.object.template=update_blood_pressure"
        )
    path = tuple(path_text.split("."))
    if not path_text or any(not part for part in path):
        raise AssignmentError(f"--set {text!r}: PATH must be names joined by dots, e.g. data.object.status")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = raw
    return path, value


def assign(event: dict[str, Any], path: Sequence[str], value: Any) -> None:
    """Set `path` in `event` to `value`, making missing objects on the way."""
    node: Any = event
    for depth, part in enumerate(path):
        where = ".".join(path[:depth]) or "the event"
        last = depth == len(path) - 1
        if isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, list):
            raise AssignmentError(f"--set {'.'.join(path)}: {where} is a list of {len(node)}, no item {part}")
        else:
            raise AssignmentError(f"--set {'.'.join(path)}: {where} is {_kind(node)}, not an object")


def _kind(value: Any) -> str:
    names = {str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _filled(node: Any, fresh: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {key: _filled(value, fresh) for key, value in node.items()}
    if isinstance(node, list):
        return [_filled(item, fresh) for item in node]
    if isinstance(node, str):
        return fresh.get(node, node)
    return node


def _new_id(prefix: str) -> str:
    """An id shaped like Osma's (`task_2BU1ecNdKXgRfRxPSjFDXfmv0tV`), random."""
    return f"{prefix}_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(27))


def _fixtures() -> Any:
    return resources.files(__package__).joinpath("fixtures")


def _secret(args: argparse.Namespace) -> str:
    """`--secret` / `--secret-file`, else the first of OSMA_ROUTER_WEBHOOK_SECRETS, else the
    secret `osma-router dev` uses when none is set."""
    if secret_given(args) or read_setting(SECRETS_VARIABLE):
        return signing_secret(args)
    return DEV_SECRET


def cmd_trigger(args: argparse.Namespace) -> int:
    if args.list:
        print("\n".join(event_types()))
        return 0
    if not args.type:
        return fail("trigger needs an event TYPE (osma-router trigger --list shows them)")
    try:
        assignments = [parse_assignment(text) for text in args.set]
        event = build_event(args.type, assignments, datetime.now(UTC))
    except KeyError:
        return fail(f"no fixture for event type {args.type!r} (osma-router trigger --list shows the types)")
    except AssignmentError as exc:
        return fail(str(exc))
    secret = _secret(args)
    return send_signed(
        args.to, orjson.dumps(event), secret, timeout=args.timeout, agent="osma-router-trigger"
    )


def add_commands(sub: Any) -> None:
    """`osma-router trigger`."""
    p = add_command(
        sub,
        "trigger",
        cmd_trigger,
        "build a realistic event of TYPE from a fixture shipped in the package (fresh ids and "
        "times, live_mode false), apply --set, sign it and POST it; print the status and body "
        "(exit 0 on 2xx, 1 otherwise); --list shows the types",
    )
    p.add_argument("type", nargs="?", metavar="TYPE", help="an event type, e.g. task.completed")
    p.add_argument("--list", action="store_true", help="print the event types there is a fixture for")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="set a dotted PATH of the event (data.object.template=update_blood_pressure); VALUE "
        'is read as JSON when it parses (5, true, null, "5", {"a": 1}), else taken as text; '
        "repeat for more",
    )
    p.add_argument(
        "--to", default=DEV_RECEIVER, metavar="URL", help=f"where to POST it (default {DEV_RECEIVER})"
    )
    add_secret_options(
        p, what=f"the signing secret (default: the first of {SECRETS_VARIABLE}, else dev's {DEV_SECRET})"
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")
