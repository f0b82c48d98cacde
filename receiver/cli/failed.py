"""`osma-router failed list | show ID | retry (ID | --all)`: the dead-letter place."""

from __future__ import annotations

import argparse
import itertools
from typing import Any

from ..crypto import Sealer
from ..exceptions import ConfigError
from ..store.connection import connect
from ..store.failed import FailedJobs
from .common import add_action, add_command, configured_queues, current_settings


def _failed_jobs() -> FailedJobs:
    config = current_settings()
    # With keys, a failure's message and traceback are sealed in Redis: open them to show.
    sealer = Sealer(config.encryption_keys) if config.encryption_keys else None
    return FailedJobs(connect(config, "command"), configured_queues(config), sealer)


def cmd_failed_list(args: argparse.Namespace) -> int:
    failed = _failed_jobs()
    shown = 0
    # Rows are printed as they are read: a long list starts at once and is never held whole.
    for row in itertools.islice(failed, args.limit):
        if not shown:
            print(f"{'JOB ID':<44} {'EVENT ID':<28} {'HANDLER':<24} {'ATTEMPTS':>8}  LAST ERROR")
        print(f"{row.job_id:<44} {row.event_id:<28} {row.handler:<24} {row.attempts:>8}  {row.last_error}")
        shown += 1
    if not shown:
        print("no failed jobs")
    elif args.limit is not None and shown == args.limit and (total := failed.count()) > shown:
        print(f"... {total - shown} more (--limit {args.limit}; oldest first)")
    return 0


def cmd_failed_show(args: argparse.Namespace) -> int:
    job = _failed_jobs().get(args.id)
    for name, value in vars(job).items():
        if name != "traceback":
            print(f"{name:<11} {value}")
    if job.traceback:
        print("traceback")
        for line in job.traceback.rstrip().splitlines():
            print(f"  {line}")
    return 0


def cmd_failed_retry(args: argparse.Namespace) -> int:
    failed = _failed_jobs()
    if args.all:
        count = failed.retry_all()
        print(f"requeued {count} failed job(s)")
    else:
        if not args.id:
            raise ConfigError("failed retry needs a job id or --all")
        failed.retry(args.id)
        print(f"requeued {args.id}")
    return 0


def add_commands(sub: Any) -> None:
    """`osma-router failed list | show | retry`."""
    p = add_command(sub, "failed", lambda a: 0, "inspect and requeue handler jobs that ran out of retries")
    actions = p.add_subparsers(dest="failed_command", metavar="ACTION")
    actions.required = True
    listing = add_action(actions, "list", cmd_failed_list, "one row per failed job, oldest first")
    listing.add_argument(
        "--limit",
        type=_positive,
        metavar="N",
        help="show the first N rows only, then how many more there are (default: all)",
    )
    show = add_action(actions, "show", cmd_failed_show, "details of one failed job")
    show.add_argument("id", metavar="JOB_ID")
    retry = add_action(actions, "retry", cmd_failed_retry, "requeue one failed job, or all of them")
    retry.add_argument("id", nargs="?", metavar="JOB_ID")
    retry.add_argument("--all", action="store_true", help="requeue every failed job")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"a positive whole number, not {text!r}")
    return value
