"""`osma-router status`: what the service holds in Redis right now, as tables (or JSON)."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

import orjson

from ..store.connection import connect
from ..store.status import SCAN_BUDGET, Status, collect_status
from .common import add_command, configured_queues, current_settings


def render_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain text table: text columns left-aligned, numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [
        [f"{c:,}" if isinstance(c, int) else str(c) for c in r] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(isinstance(r[i], int) for r in rows) and bool(rows) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [
            cell.rjust(w) if num else cell.ljust(w) for cell, w, num in zip(row, widths, numeric, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def render(status: Status, redis_url: str) -> str:
    heading = (
        f"redis    {redis_url}  (Redis {status.redis['version']}, {status.redis['memory']} used, "
        f"AOF {status.redis['aof']})"
    )
    out = [heading, ""]
    out.append(
        render_table(
            ["QUEUE", "QUEUED", "RUNNING", "SCHEDULED", "FAILED", "DEFERRED"],
            [
                [
                    q.name,
                    q.queued,
                    q.registries["started"],
                    q.registries["scheduled"],
                    q.registries["failed"],
                    q.registries["deferred"],
                ]
                for q in status.queues
            ],
        )
    )
    out.append("")
    out.append(f"workers  {len(status.workers)} alive")
    if status.workers:
        out.append(
            render_table(
                ["NAME", "HOST", "PID", "STATE", "CURRENT JOB", "HEARTBEAT", "OK", "FAILED"],
                [
                    [
                        w.name,
                        w.host,
                        w.pid if w.pid is not None else "-",
                        w.state,
                        w.current_job,
                        w.last_heartbeat,
                        w.succeeded,
                        w.failed,
                    ]
                    for w in status.workers
                ],
            )
        )
    out.append("")
    dedup = status.dedup
    total = sum(dedup.by_source.values())
    bound = "" if dedup.complete else f"at least (scan stopped after {dedup.scanned_in:.1f} s) "
    sources = ", ".join(f"{source} {count:,}" for source, count in sorted(dedup.by_source.items()))
    out.append(f"dedup    {bound}{total:,} event id(s) remembered" + (f" ({sources})" if sources else ""))
    capture = status.capture
    out.append(
        f"capture  {'on' if capture.get('enabled') else 'off'}, {capture.get('kept', 0):,} delivery(ies) kept"
    )
    out.extend(f"warning: {warning}" for warning in status.warnings)
    return "\n".join(out)


def cmd_status(args: argparse.Namespace) -> int:
    settings = current_settings()
    redis = connect(settings, "status")
    try:
        status = collect_status(redis, settings, configured_queues(settings), args.scan_budget)
    finally:
        redis.close()
    if args.json:
        print(orjson.dumps(asdict(status), option=orjson.OPT_INDENT_2).decode())
    else:
        print(render(status, settings.summary()["redis_url"]))
    return 0


def add_commands(sub: Any) -> None:
    """`osma-router status`."""
    parser = add_command(
        sub,
        "status",
        cmd_status,
        "show queue depths, running/scheduled/failed jobs, "
        "workers alive, remembered event ids and kept captures",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    parser.add_argument(
        "--scan-budget",
        type=_seconds,
        default=SCAN_BUDGET,
        metavar="SECONDS",
        help=f"stop counting dedup keys after this long (default {SCAN_BUDGET:g})",
    )


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {value!r}")
    return number
