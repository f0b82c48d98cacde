"""`osma-router replay FILE.jsonl (--to URL | --direct | --inline) ...`: the command around
`receiver.replay` (its module docstring says what each target does). `--to` signs with the
secret `signing.signing_secret` picks: `--secret`, `--secret-file` or OSMA_ROUTER_WEBHOOK_SECRETS."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..crypto import Sealer
from ..exceptions import ConfigError
from ..logs import configure_logging
from ..model.capture_file import Selection, parse_cli_time, read_deliveries
from ..replay.run import WEBHOOK_PATH, Replay, parse_rate, webhook_url
from ..replay.targets import DirectTarget, HttpTarget, InlineTarget, Target
from .common import add_command, current_settings
from .signing import add_secret_options, secret_given, signing_secret


def build_target(args: argparse.Namespace) -> Target:
    modes = [name for name in ("to", "direct", "inline") if getattr(args, name)]
    if len(modes) != 1:
        raise ConfigError("choose one of --to URL, --direct or --inline")
    if args.to:
        if args.force:
            raise ConfigError(
                "--force works with --direct and --inline only: over HTTP the receiver's dedup stands"
            )
        return HttpTarget(webhook_url(args.to), signing_secret(args), args.timeout)
    if secret_given(args):
        raise ConfigError("--secret and --secret-file go with --to")
    settings = current_settings()
    if args.inline:
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
            keys = current_settings().encryption_keys
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
    """`osma-router replay FILE.jsonl (--to URL | --direct | --inline) ...`."""
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
    add_secret_options(mode, what="the receiver's signing secret for --to")
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
