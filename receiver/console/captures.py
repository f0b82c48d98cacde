"""Captures: how many deliveries are kept, the oldest and newest, whether they are
encrypted, and an export of a filtered range as JSONL (decrypted, for a signed-in user,
and noted in the log without any of its content)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime

from starlette.responses import Response, StreamingResponse

from ..crypto import Sealer
from ..exceptions import ConfigError
from ..keys import CAPTURE_DUPLICATES_KEY, CAPTURE_KEY
from ..model.capture_file import Selection, parse_cli_time
from ..store.capture import ExportReport, export_lines
from .pages import Console, PageRequest, render

log = logging.getLogger("osma_router.console")


def _entry_time(entry: list[tuple[bytes, object]]) -> str:
    if not entry:
        return "-"
    millis = int(entry[0][0].split(b"-")[0])
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="seconds")


def captures(page: PageRequest, console: Console, error: str = "") -> Response:
    redis = console.redis
    pipe = redis.pipeline(transaction=False)
    pipe.xlen(CAPTURE_KEY)
    pipe.xrange(CAPTURE_KEY, count=1)
    pipe.xrevrange(CAPTURE_KEY, count=1)
    pipe.xlen(CAPTURE_DUPLICATES_KEY)
    count, oldest, newest, duplicates = pipe.execute()
    settings = console.settings
    return render(
        console,
        page,
        "captures.html",
        title="Captures",
        status=400 if error else 200,
        capture_on=settings.capture,
        count=int(count),
        duplicates=int(duplicates),
        oldest=_entry_time(oldest),
        newest=_entry_time(newest),
        keys=len(settings.encryption_keys),
        max_age=settings.capture_max_age,
        max_count=settings.capture_max_count,
        error=error,
    )


def export(page: PageRequest, console: Console) -> Response:
    settings = console.settings
    if not settings.encryption_keys:
        return captures(
            page,
            console,
            "OSMA_ROUTER_ENCRYPTION_KEYS is not set on the console: "
            "captures are encrypted and cannot be exported without the keys",
        )
    try:
        selection = Selection(
            types=tuple(t.strip() for t in page.form.get("type").split(",") if t.strip()),
            since=parse_cli_time("since", page.form.get("since")) if page.form.get("since") else None,
            until=parse_cli_time("until", page.form.get("until")) if page.form.get("until") else None,
        )
    except ConfigError as exc:
        return captures(page, console, str(exc))
    report = ExportReport()
    lines = export_lines(
        console.redis, Sealer(settings.encryption_keys), selection, report, max_age=settings.capture_max_age
    )
    session = page.session.nonce[:8]

    def download() -> Iterator[bytes]:
        # Streamed: 100,000 decrypted deliveries never sit in the console's memory at once.
        yield from lines
        # Who and how much, never what: the file itself holds member data.
        log.warning(
            "console: captures exported (decrypted)",
            extra={"count": report.written, "unreadable": report.unreadable, "session": session},
        )

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        download(),
        media_type="application/x-ndjson",
        headers={
            "content-disposition": f'attachment; filename="osma-router-captures-{stamp}.jsonl"',
            "cache-control": "no-store",
            "x-content-type-options": "nosniff",
        },
    )
