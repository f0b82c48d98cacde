"""`osma-router healthcheck`: the probe that container healthchecks and Kubernetes
exec probes run, so the image needs no curl.

- receiver: GET its `/healthz` (or `/readyz`) on loopback; exit 0 on 200, else 1.
- `--worker`: exit 0 when a worker of this host (its container or pod) is registered in
  Redis with a fresh heartbeat: RQ renews the worker key while the worker loop runs, and
  our heartbeat thread renews it while a long job runs.
"""

from __future__ import annotations

import argparse
import socket
from typing import Any

import httpx
from rq.serializers import JSONSerializer
from rq.worker import Worker

from ..store.connection import connect
from .common import add_command, current_settings, fail

DEFAULT_URL = "http://127.0.0.1:8000/healthz"


def check_http(url: str, timeout: float) -> str | None:
    """None when `url` answers 200, else why not."""
    try:
        answer = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        return f"{url}: {type(exc).__name__}"
    return None if answer.status_code == 200 else f"{url}: HTTP {answer.status_code}"


def check_worker(host: str, timeout: float) -> str | None:
    """None when a worker on `host` is alive in Redis, else why not."""
    redis = connect(current_settings(), "probe", timeout=timeout)
    try:
        workers = Worker.all(connection=redis, serializer=JSONSerializer)
    finally:
        redis.close()
    if any(worker.hostname == host for worker in workers):
        return None
    return f"no live worker of host {host!r} in Redis ({len(workers)} worker(s) of other hosts)"


def cmd_healthcheck(args: argparse.Namespace) -> int:
    problem = (
        check_worker(args.host or socket.gethostname(), args.timeout)
        if args.worker
        else check_http(args.url, args.timeout)
    )
    if problem is not None:
        return fail(f"unhealthy: {problem}")
    return 0


def add_commands(sub: Any) -> None:
    """`osma-router healthcheck`."""
    parser = add_command(
        sub,
        "healthcheck",
        cmd_healthcheck,
        "exit 0 when the local receiver answers /healthz (or, with --worker, when "
        "this host's worker is alive in Redis); for container healthchecks",
    )
    parser.add_argument("--url", default=DEFAULT_URL, help=f"what to GET (default {DEFAULT_URL})")
    parser.add_argument(
        "--worker", action="store_true", help="check this host's worker instead (needs OSMA_ROUTER_REDIS_URL)"
    )
    parser.add_argument("--host", help="with --worker: the host name to look for (default: this host)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
