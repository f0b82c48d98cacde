"""`osma-router replay`: send captured deliveries (or hand-written events) again.

Three targets, one loop:

- `--to URL --secret S`: each body, byte for byte, re-signed with the current time and
  POSTed; the receiver there decides (its dedup stands, so `--force` is refused).
- `--direct`: each event goes through the receiver's own `Pipeline.admit` (routing, job
  building, the atomic dedup + enqueue script), no HTTP; a worker runs the jobs.
- `--inline`: the matching handlers run in this process, through the worker's
  `execute()`, without RQ, so a breakpoint in a plugin stops right there.

Direct and inline replays pin every handler's clock (`ctx.now()`) to the event's original
received time, so counts and periods land where they did. `--force` bypasses the dedup
check for this replay only: the original ids stay remembered, forced jobs get ids of their
own, and the effects ledger still keeps a done effect from being posted twice.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit

from ..exceptions import ConfigError, RouterError
from ..model.capture_file import BadLine, Delivery, Selection
from .targets import Target

WEBHOOK_PATH = "/webhooks/osma"
GIVE_UP_AFTER = 5  # transport errors in a row: the target is down, stop instead of waiting on each line


@dataclass
class Summary:
    """What a replay did; `ok` is the exit status."""

    read: int = 0
    selected: int = 0
    bad: int = 0
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("accepted", "duplicate", "rejected", "failed"), 0)
    )

    @property
    def sent(self) -> int:
        return sum(self.counts.values())

    @property
    def ok(self) -> bool:
        return self.bad == 0 and self.counts["rejected"] == 0 and self.counts["failed"] == 0

    def describe(self) -> str:
        counts = ", ".join(f"{name} {count}" for name, count in self.counts.items())
        return (
            f"replay: {self.selected} of {self.read} line(s) selected; sent {self.sent}: {counts}; "
            f"bad lines {self.bad}"
        )


@dataclass
class Replay:
    """One run over a file: read, select, pace, deliver, count."""

    target: Target
    selection: Selection = field(default_factory=Selection)
    dry_run: bool = False
    force: bool = False
    rate: float | None = None
    say: Callable[[str], None] = lambda text: print(text, file=sys.stderr)
    out: Callable[[str], None] = print
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    summary: Summary = field(default_factory=Summary)

    def run(
        self, items: Iterator[Delivery | BadLine], advance: Callable[[int], None] = lambda n: None
    ) -> Summary:
        summary = self.summary
        forced_ids: set[tuple[str, str]] = set()
        started, transport_errors = time.monotonic(), 0
        last_line = 0
        for item in items:
            advance(item.line_no - last_line)
            last_line = item.line_no
            summary.read += 1
            if isinstance(item, BadLine):
                summary.bad += 1
                self.say(f"line {item.line_no}: skipped: {item.reason}")
                continue
            received_at = item.received_at or self.clock()
            if not self.selection.selects(item, received_at):
                continue
            summary.selected += 1
            name = f"line {item.line_no} {item.event_id} {item.event_type}"
            if self.dry_run:
                self.out(
                    f"{name} received {received_at.isoformat()}: {self.target.preview(item, received_at)}"
                )
                continue
            identity = (item.source, item.event_id)
            if self.force and identity in forced_ids:  # --force runs each event once per replay
                summary.counts["duplicate"] += 1
                continue
            forced_ids.add(identity)
            if self.rate:
                _pace(started, summary.sent, self.rate)
            result = self.target.deliver(item, received_at)
            summary.counts[result.outcome] += 1
            if result.outcome in ("rejected", "failed"):
                self.say(f"{name}: {result.outcome}: {result.detail}")
            transport_errors = transport_errors + 1 if result.unreachable else 0
            if transport_errors >= GIVE_UP_AFTER:
                raise RouterError(
                    f"giving up after {GIVE_UP_AFTER} deliveries in a row failed "
                    f"({result.detail}); {summary.describe()}"
                )
        return summary


def _pace(started: float, sent: int, rate: float) -> None:
    delay = started + sent / rate - time.monotonic()
    if delay > 0:
        time.sleep(min(delay, 3600.0))


def parse_rate(value: str) -> float:
    text = value.strip().lower().removesuffix("/s")
    try:
        rate = float(text)
    except ValueError:
        raise ConfigError(f"--rate {value!r} is not a rate (e.g. 50/s)") from None
    if not rate > 0 or rate == float("inf"):
        raise ConfigError(f"--rate must be a positive number per second, got {value!r}")
    return rate


def webhook_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"--to {url!r} must be an http:// or https:// URL")
    if parts.path in ("", "/"):
        return parts._replace(path=WEBHOOK_PATH).geturl()
    return url
