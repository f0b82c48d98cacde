"""`osma-router`: the parser and `main`. Every start-up or configuration error is one
line naming the variable or file, and exit 1; no tracebacks for things a user can fix."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import redis

from ..exceptions import ConfigError, RouterError
from . import (
    capture,
    config,
    console,
    failed,
    health,
    rekey,
    replay,
    scaffold,
    serve,
    signing,
    status,
    trace,
    trigger,
)
from .common import fail

DESCRIPTION = """\
osma-router receives signed Osma webhooks (and Osmos batches), drops duplicates in
Redis, queues one RQ job per matching route and runs handler plugins in workers.

Settings come from OSMA_ROUTER_* environment variables (and a .env file); routes from
the TOML file named by OSMA_ROUTER_CONFIG (default: ./osma-router.toml if present).
"""

EPILOG = """\
examples:
  osma-router dev                                   # everything locally, embedded Redis
  osma-router sign --secret whsec_dev event.json    # the osma-signature header value
  osma-router send http://127.0.0.1:8000/webhooks/osma event.json --secret whsec_dev
  osma-router trigger task.completed --set data.object.template=update_blood_pressure
  osma-router trace evt_...                         # what one event caused: jobs, effects
  osma-router failed list                           # jobs that ran out of retries
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="osma-router",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    # The order of `--help`: running the service, events by hand, configuration, the
    # dead-letter place, then operations.
    serve.add_commands(sub)
    signing.add_commands(sub)
    trigger.add_commands(sub)
    trace.add_commands(sub)
    config.add_check_config(sub)
    scaffold.add_commands(sub)
    failed.add_commands(sub)
    config.add_keygen(sub)
    capture.add_commands(sub)
    replay.add_commands(sub)
    rekey.add_commands(sub)
    status.add_commands(sub)
    console.add_commands(sub)
    health.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, RouterError) as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return 130
    except redis.exceptions.RedisError as exc:  # a connection error or similar: still one line
        return fail(f"Redis: {type(exc).__name__}: {exc} (check OSMA_ROUTER_REDIS_URL)")
