"""`osma-router dev`, `serve` and `worker`: the processes that run the service."""

from __future__ import annotations

import argparse
import signal
import ssl
from pathlib import Path
from typing import Any

import uvicorn

from ..dev.runner import run_dev
from ..exceptions import ConfigError
from ..logs import configure_logging
from ..store.connection import connect
from ..web.edge import EdgeLimits
from ..web.metrics import multiprocess_directory
from ..web.state import build_state
from ..worker.execution import WorkerRuntime
from ..worker.runner import run_worker
from .common import add_command, configured_queues, current_settings, ensure_port_free


def cmd_serve(args: argparse.Namespace) -> int:
    config = current_settings()
    configure_logging(config.log_format, config.log_level)
    # Check everything here, in one process, so a bad setting is one line, not a
    # traceback from each uvicorn worker.
    state = build_state(config)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    for option, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{option} {path}: no such file")
    if args.tls_cert is not None:
        _check_tls_pair(args.tls_cert, args.tls_key)
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    ensure_port_free(args.host, args.port)
    del state

    # uvicorn stops gracefully on SIGTERM, then raises the signal again for the default
    # action; this handler turns that last step into a clean exit 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    with multiprocess_directory(args.workers):
        uvicorn.run(
            "receiver.web.app:app_from_env",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            ssl_certfile=args.tls_cert,
            ssl_keyfile=args.tls_key,
            access_log=False,
            log_config=None,
            # X-Forwarded-For/-Proto are believed only from OSMA_ROUTER_TRUSTED_PROXIES.
            proxy_headers=bool(config.trusted_proxies),
            forwarded_allow_ips=list(config.trusted_proxies) or None,
            timeout_graceful_shutdown=20,
            # Head size and timeout, connection cap, keep-alive (docs/contract.md, "HTTP edge").
            **EdgeLimits.from_settings(config).uvicorn_options(),
        )
    return 0


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _check_tls_pair(cert: str, key: str) -> None:
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(
            f"--tls-cert {cert} / --tls-key {key}: not a usable PEM certificate and key "
            f"({getattr(exc, 'reason', None) or type(exc).__name__})"
        ) from None


def cmd_worker(args: argparse.Namespace) -> int:
    config = current_settings()
    configure_logging(config.log_format, config.log_level)
    redis = connect(config, "worker")
    runtime = WorkerRuntime.build(config, redis)
    queues = args.queues or configured_queues(config)
    try:
        redis.ping()
    except Exception as exc:
        raise ConfigError(f"OSMA_ROUTER_REDIS_URL: Redis does not answer ({type(exc).__name__})") from None
    run_worker(runtime, queues, burst=args.burst)
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    return run_dev(
        current_settings(),
        host=args.host,
        port=args.port,
        https=args.https,
        fake_upstreams=args.fake_upstreams,
    )


def add_commands(sub: Any) -> None:
    """`osma-router dev`, `serve` and `worker`."""
    p = add_command(
        sub,
        "dev",
        cmd_dev,
        "run everything for a local try-out: Redis (embedded unless "
        "OSMA_ROUTER_REDIS_URL is set), the receiver, one worker, the operator console "
        "(on PORT+1, loopback) and, for each upstream with no settings, the fake Osma or "
        "OGSM; prints the URLs and credentials; Ctrl-C stops it all",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1); with the built-in secret only a loopback "
        "address: set OSMA_ROUTER_WEBHOOK_SECRETS to listen elsewhere",
    )
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument(
        "--fake-upstreams",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the fake Osma (on PORT+2) and fake OGSM (on PORT+3; a free port where one is "
        "taken) and point the worker at them; default: fake each upstream whose settings "
        "(OSMA_ROUTER_OSMA_API_KEY/_BASE_URL, OSMA_ROUTER_OGSM_*) are not set. The fake OGSM "
        "starts with the KPIs, goals and strategies the routes name",
    )
    p.add_argument(
        "--https",
        action="store_true",
        help="serve HTTPS with a self-signed certificate for localhost (made once, "
        "kept in .osma-router/tls/) and print how to trust it",
    )

    p = add_command(
        sub,
        "serve",
        cmd_serve,
        "run the receiver (uvicorn); needs OSMA_ROUTER_REDIS_URL and OSMA_ROUTER_WEBHOOK_SECRETS",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    p.add_argument("--tls-cert", metavar="FILE", help="PEM certificate: serve HTTPS")
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key for --tls-cert")

    p = add_command(sub, "worker", cmd_worker, "run a worker that executes handler jobs")
    p.add_argument(
        "--burst",
        action="store_true",
        help="exit (0) when the queues are empty; scheduled retries stay scheduled",
    )
    p.add_argument(
        "--queues", nargs="+", metavar="QUEUE", help="queues to work on (default: every queue the routes use)"
    )
