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

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from ..crypto import Sealer
from ..exceptions import ConfigError, RouterError
from ..model.capture_file import BadLine, Delivery, Selection, parse_cli_time, read_deliveries
from ..settings import Settings
from .targets import DirectTarget, HttpTarget, InlineTarget, Target

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


def build_target(args: argparse.Namespace) -> Target:
    modes = [name for name in ("to", "direct", "inline") if getattr(args, name)]
    if len(modes) != 1:
        raise ConfigError("choose one of --to URL, --direct or --inline")
    if args.to:
        if args.force:
            raise ConfigError(
                "--force works with --direct and --inline only: over HTTP the receiver's dedup stands"
            )
        if not args.secret:
            raise ConfigError("--to needs --secret (the receiver's signing secret)")
        return HttpTarget(webhook_url(args.to), args.secret, args.timeout)
    if args.secret:
        raise ConfigError("--secret goes with --to")
    settings = Settings.from_env()
    if args.inline:
        from ..logs import configure_logging

        configure_logging(settings.log_format)
        return InlineTarget(settings, force=args.force, dry_run=args.dry_run)
    return DirectTarget(settings, force=args.force, dry_run=args.dry_run)


def _open_input(name: str) -> tuple[IO[bytes], int]:
    if name == "-":
        return sys.stdin.buffer, 0
    path = Path(name)
    try:
        with path.open("rb") as counting:
            total = sum(chunk.count(b"\n") for chunk in iter(lambda: counting.read(1 << 20), b""))
        return path.open("rb"), total
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read: {exc.strerror}") from None


def cmd_replay(args: argparse.Namespace) -> int:
    selection = Selection(
        types=tuple(args.type or ()),
        ids=frozenset(args.id or ()),
        since=parse_cli_time("--since", args.since) if args.since else None,
        until=parse_cli_time("--until", args.until) if args.until else None,
    )
    rate = parse_rate(args.rate) if args.rate else None
    source, total = _open_input(args.file)
    try:
        target = build_target(args)
    except BaseException:
        source.close()
        raise
    sealers: list[Sealer] = []

    def sealer(line_no: int) -> Sealer:
        if not sealers:
            keys = Settings.from_env().encryption_keys
            if not keys:
                raise ConfigError(f"line {line_no} is encrypted but OSMA_ROUTER_ENCRYPTION_KEYS is not set")
            sealers.append(Sealer(keys))
        return sealers[0]

    replay = Replay(target, selection, dry_run=args.dry_run, force=args.force, rate=rate)
    try:
        with _progress(total, enabled=not args.dry_run and sys.stderr.isatty()) as (advance, say):
            replay.say = say
            summary = replay.run(read_deliveries(source, sealer), advance)
    except KeyboardInterrupt:
        print(f"interrupted; {replay.summary.describe()}")
        return 130
    finally:
        target.close()
        if source is not sys.stdin.buffer:
            source.close()
    if args.dry_run:
        print(
            f"dry run: {summary.selected} of {summary.read} line(s) selected, bad lines {summary.bad}; "
            "nothing was sent or changed"
        )
        return 0 if summary.bad == 0 else 1
    print(summary.describe())
    return 0 if summary.ok else 1


class _progress:
    """A rich progress bar on a terminal; plain stderr lines otherwise."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self.total, self.enabled = total, enabled and total > 0
        self._bar: Any = None

    def __enter__(self) -> tuple[Callable[[int], None], Callable[[str], None]]:
        if not self.enabled:
            return (lambda n: None), (lambda text: print(text, file=sys.stderr))
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("replay"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("lines"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._bar.start()
        task = self._bar.add_task("replay", total=self.total)
        return (lambda n: self._bar.advance(task, n)), (
            lambda text: self._bar.console.print(text, markup=False, highlight=False)
        )

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


def add_commands(sub: Any) -> None:
    """`osma-router replay FILE.jsonl (--to URL --secret S | --direct | --inline) ...`."""
    from ..cli.main import add_command

    p = add_command(
        sub,
        "replay",
        cmd_replay,
        "replay captured deliveries (or bare event JSON lines): "
        "re-signed over HTTP, straight onto the queue, or inline in this process; "
        "prints a summary, exit 1 when anything failed, was rejected or a line was bad",
    )
    p.add_argument(
        "file",
        metavar="FILE.jsonl",
        help="capture file, encrypted export, or one event a line ('-' for standard input)",
    )
    mode = p.add_argument_group("target (choose one)")
    mode.add_argument(
        "--to",
        metavar="URL",
        help="POST each body to this receiver (path defaults to "
        f"{WEBHOOK_PATH}), re-signed with the current time",
    )
    mode.add_argument("--secret", metavar="S", help="the signing secret for --to")
    mode.add_argument(
        "--direct",
        action="store_true",
        help="queue each event through the receiver's "
        "pipeline (OSMA_ROUTER_REDIS_URL); a worker runs the jobs",
    )
    mode.add_argument(
        "--inline",
        action="store_true",
        help="run the matching handlers in this process, no worker (a breakpoint in your plugin stops there)",
    )
    p.add_argument(
        "--type",
        action="append",
        metavar="T",
        help="only events of this type ('task.*' and '*' work; repeatable)",
    )
    p.add_argument("--id", action="append", metavar="ID", help="only the event with this id (repeatable)")
    p.add_argument("--since", metavar="ISO", help="only deliveries received at or after this time")
    p.add_argument("--until", metavar="ISO", help="only deliveries received before this time")
    p.add_argument("--dry-run", action="store_true", help="print what would happen; change nothing")
    p.add_argument(
        "--force",
        action="store_true",
        help="bypass dedup for this replay (--direct and "
        "--inline only); done effects are still never posted twice",
    )
    p.add_argument("--rate", metavar="N/s", help="at most N events a second")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each POST (default 10)")
