"""`osma-router capture export | status`: the kept deliveries, decrypted into the
capture file, or counted."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from typing import IO, Any

from redis import Redis

from ..crypto import Sealer
from ..exceptions import ConfigError
from ..keys import CAPTURE_DUPLICATES_KEY, CAPTURE_KEY
from ..model.capture_file import Selection, parse_cli_time
from ..settings import Settings
from ..store.capture import export_captures
from ..store.connection import connect
from .common import add_command, current_settings, fail


def _open_output(name: str) -> IO[bytes]:
    if name == "-":
        return sys.stdout.buffer
    try:
        # The decrypted file holds health data: readable by its owner only.
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise ConfigError(f"{name}: cannot write: {exc.strerror}") from None
    return os.fdopen(fd, "wb")


def _connect(settings: Settings) -> tuple[Redis, Sealer]:
    if not settings.encryption_keys:
        raise ConfigError(
            "OSMA_ROUTER_ENCRYPTION_KEYS is not set: captured deliveries are encrypted, "
            "give the key(s) they were sealed with"
        )
    return connect(settings, "command"), Sealer(settings.encryption_keys)


def cmd_capture_export(args: argparse.Namespace) -> int:
    settings = current_settings()
    selection = Selection(
        types=tuple(args.type or ()),
        since=parse_cli_time("--since", args.since) if args.since else None,
        until=parse_cli_time("--until", args.until) if args.until else None,
    )
    redis, sealer = _connect(settings)
    out = _open_output(args.file)
    try:
        report = export_captures(
            redis, sealer, out, selection, encrypted=args.encrypted, max_age=settings.capture_max_age
        )
    finally:
        if out is not sys.stdout.buffer:
            out.close()
        redis.close()
    where = "standard output" if args.file == "-" else args.file
    kind = "encrypted line(s)" if args.encrypted else "delivery(ies)"
    print(f"exported {report.written} {kind} to {where}", file=sys.stderr)
    if report.unreadable:
        return fail(
            f"{report.unreadable} captured delivery(ies) could not be decrypted with "
            "OSMA_ROUTER_ENCRYPTION_KEYS (was a key removed too early?)"
        )
    return 0


def cmd_capture_status(args: argparse.Namespace) -> int:
    settings = current_settings()
    redis = connect(settings, "command")
    try:
        count = int(redis.xlen(CAPTURE_KEY))
        duplicates = int(redis.xlen(CAPTURE_DUPLICATES_KEY))
        oldest: list[tuple[bytes, Any]] = redis.xrange(CAPTURE_KEY, count=1)  # type: ignore[assignment]
        newest: list[tuple[bytes, Any]] = redis.xrevrange(CAPTURE_KEY, count=1)  # type: ignore[assignment]
    finally:
        redis.close()
    print(
        f"capture: {'on' if settings.capture else 'off'} "
        f"(keeps {settings.capture_max_age:g} s, at most {settings.capture_max_count} deliveries "
        f"and as many duplicates)"
    )
    print(f"kept deliveries: {count}")
    print(f"kept duplicates: {duplicates}")
    for label, rows in (("oldest", oldest), ("newest", newest)):
        if rows:
            moment = datetime.fromtimestamp(int(rows[0][0].split(b"-")[0]) / 1000, UTC)
            print(f"{label}: {moment.isoformat()}")
    return 0


def add_commands(sub: Any) -> None:
    """`osma-router capture export | status`."""
    parser = add_command(
        sub,
        "capture",
        lambda a: 0,
        "export or count the captured deliveries (kept encrypted in Redis when OSMA_ROUTER_CAPTURE=on)",
    )
    actions = parser.add_subparsers(dest="capture_command", metavar="ACTION")
    actions.required = True
    export_help = (
        "write the kept deliveries, decrypted, as the capture file (one JSON object a "
        "line); --encrypted writes Fernet tokens instead"
    )
    export = actions.add_parser("export", help=export_help, description=export_help)
    export.add_argument("file", metavar="FILE.jsonl", help="where to write ('-' for standard output)")
    export.add_argument("--since", metavar="ISO", help="only deliveries received at or after this time")
    export.add_argument("--until", metavar="ISO", help="only deliveries received before this time")
    export.add_argument(
        "--type",
        action="append",
        metavar="T",
        help="only events of this type ('task.*' and '*' work; repeatable)",
    )
    export.add_argument(
        "--encrypted",
        action="store_true",
        help="write one Fernet token (under the newest key) a line instead of clear JSON",
    )
    export.set_defaults(func=cmd_capture_export)
    status_help = "how many deliveries are kept, the oldest and the newest"
    status = actions.add_parser("status", help=status_help, description=status_help)
    status.set_defaults(func=cmd_capture_status)
