"""`osma-router`: the command line. Every start-up or configuration error is one line
naming the variable or file, and exit 1; no tracebacks for things a user can fix."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..exceptions import ConfigError, RouterError
from ..settings import Settings

if TYPE_CHECKING:
    from ..store.failed import FailedJobs

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
  osma-router failed list                           # jobs that ran out of retries
"""


Command = Callable[[argparse.Namespace], int]


def add_command(sub: Any, name: str, func: Command, help_: str) -> argparse.ArgumentParser:
    """Add one subcommand whose `--help` says `help_`; `func(args)` returns the exit code."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_, description=help_, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.set_defaults(func=func)
    return parser


def fail(message: str) -> int:
    """Print one `osma-router: error: ...` line and return exit code 1."""
    print(f"osma-router: error: {message}", file=sys.stderr)
    return 1


def _settings() -> Settings:
    return Settings.from_env()


def cmd_sign(args: argparse.Namespace) -> int:
    from ..model.signature import sign

    body = _read_input(args.file)
    timestamp = args.timestamp if args.timestamp is not None else int(time.time())
    print(sign(body, args.secret, timestamp))
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    import httpx

    from ..model.signature import sign

    body = _read_input(args.file)
    headers = {
        "content-type": "application/json",
        "osma-signature": sign(body, args.secret, int(time.time())),
        "user-agent": "osma-router-send",
    }
    try:
        response = httpx.post(args.url, content=body, headers=headers, timeout=args.timeout)
    except httpx.HTTPError as exc:
        return fail(f"could not POST to {args.url}: {type(exc).__name__}: {exc}")
    print(f"HTTP {response.status_code} {response.reason_phrase}")
    print(response.text)
    return 0 if 200 <= response.status_code < 300 else 1


def _read_input(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read: {exc.strerror}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ..logs import configure_logging
    from ..web.app import build_state

    settings = _settings()
    configure_logging(settings.log_format, settings.log_level)
    # Check everything here, in one process, so a bad setting is one line, not a
    # traceback from each uvicorn worker.
    state = build_state(settings)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    for option, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{option} {path}: no such file")
    if args.tls_cert is not None:
        _check_tls_pair(args.tls_cert, args.tls_key)
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    del state
    from ..web.metrics import multiprocess_directory

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
            proxy_headers=bool(settings.trusted_proxies),
            forwarded_allow_ips=list(settings.trusted_proxies) or None,
            timeout_graceful_shutdown=20,
        )
    return 0


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _check_tls_pair(cert: str, key: str) -> None:
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(
            f"--tls-cert {cert} / --tls-key {key}: not a usable PEM certificate and key "
            f"({getattr(exc, 'reason', None) or type(exc).__name__})"
        ) from None


def configured_queues(settings: Settings) -> list[str]:
    from ..model.plugins import HandlerRegistry
    from ..model.routes import load_config

    config = load_config(settings.config_path, HandlerRegistry.discover())
    queues = [settings.queue_name]
    for route in config.routes:
        if route.queue and route.queue not in queues:
            queues.append(route.queue)
    return queues


def cmd_worker(args: argparse.Namespace) -> int:
    from redis import Redis

    from ..logs import configure_logging
    from ..worker.execution import WorkerRuntime
    from ..worker.runner import run_worker

    settings = _settings()
    configure_logging(settings.log_format, settings.log_level)
    redis = Redis.from_url(settings.require_redis_url())
    runtime = WorkerRuntime.build(settings, redis)
    queues = args.queues or configured_queues(settings)
    try:
        redis.ping()
    except Exception as exc:
        raise ConfigError(f"OSMA_ROUTER_REDIS_URL: Redis does not answer ({type(exc).__name__})") from None
    run_worker(runtime, queues, burst=args.burst)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from ..model.plugins import HandlerRegistry
    from ..model.routes import load_config

    settings = _settings()
    registry = HandlerRegistry.discover()
    config = load_config(settings.config_path, registry)
    print("settings:")
    for name, value in settings.summary().items():
        print(f"  {name:<22} {value}")
    print(f"handlers available: {', '.join(sorted(registry.handlers)) or 'none'}")
    print(f"routes ({len(config.routes)}):")
    for route in config.routes:
        print(f"  {route.describe()}  [route {route.key}, retries {route.retries}]")
    print(f"connectors ({len(config.connectors)}):")
    for connector in config.connectors.values():
        print(f"  {connector.describe()}")
    warnings = []
    if not settings.webhook_secrets:
        warnings.append("OSMA_ROUTER_WEBHOOK_SECRETS is not set: `serve` will refuse to start")
    if not settings.redis_url:
        warnings.append("OSMA_ROUTER_REDIS_URL is not set: only `dev` can run (embedded Redis)")
    for warning in warnings:
        print(f"warning: {warning}")
    print("configuration OK")
    return 0


def _failed_jobs() -> FailedJobs:
    from redis import Redis

    from ..store.failed import FailedJobs

    settings = _settings()
    return FailedJobs(Redis.from_url(settings.require_redis_url()), configured_queues(settings))


def cmd_failed_list(args: argparse.Namespace) -> int:
    rows = list(_failed_jobs())
    if not rows:
        print("no failed jobs")
        return 0
    print(f"{'JOB ID':<44} {'EVENT ID':<28} {'HANDLER':<24} {'ATTEMPTS':>8}  LAST ERROR")
    for row in rows:
        print(f"{row.job_id:<44} {row.event_id:<28} {row.handler:<24} {row.attempts:>8}  {row.last_error}")
    return 0


def cmd_failed_show(args: argparse.Namespace) -> int:
    job = _failed_jobs().get(args.id)
    for name, value in vars(job).items():
        print(f"{name:<11} {value}")
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


def cmd_keygen(args: argparse.Namespace) -> int:
    from ..crypto import new_key

    print(new_key())
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from ..dev.runner import run_dev

    return run_dev(host=args.host, port=args.port, https=args.https)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="osma-router",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, func: Command, help_: str) -> argparse.ArgumentParser:
        return add_command(sub, name, func, help_)

    p = add(
        "dev",
        cmd_dev,
        "run everything for a local try-out: Redis (embedded unless "
        "OSMA_ROUTER_REDIS_URL is set), the receiver and one worker; Ctrl-C stops it all",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument(
        "--https",
        action="store_true",
        help="serve HTTPS with a self-signed certificate for localhost (made once, "
        "kept in .osma-router/tls/) and print how to trust it",
    )

    p = add(
        "serve",
        cmd_serve,
        "run the receiver (uvicorn); needs OSMA_ROUTER_REDIS_URL and OSMA_ROUTER_WEBHOOK_SECRETS",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    p.add_argument("--tls-cert", metavar="FILE", help="PEM certificate: serve HTTPS")
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key for --tls-cert")

    p = add("worker", cmd_worker, "run a worker that executes handler jobs")
    p.add_argument(
        "--burst",
        action="store_true",
        help="exit (0) when the queues are empty; scheduled retries stay scheduled",
    )
    p.add_argument(
        "--queues", nargs="+", metavar="QUEUE", help="queues to work on (default: every queue the routes use)"
    )

    p = add("sign", cmd_sign, "print the osma-signature header value for FILE's bytes")
    p.add_argument("--secret", required=True, help="the signing secret (e.g. whsec_...)")
    p.add_argument("--timestamp", type=int, help="unix seconds to sign with (default: now)")
    p.add_argument("file", metavar="FILE", help="the body to sign ('-' for standard input)")

    p = add(
        "send",
        cmd_send,
        "sign FILE and POST it to URL; print the status and body (exit 0 on 2xx, 1 otherwise)",
    )
    p.add_argument("url", metavar="URL", help="e.g. http://127.0.0.1:8000/webhooks/osma")
    p.add_argument("file", metavar="FILE", help="the event JSON to send ('-' for standard input)")
    p.add_argument("--secret", required=True, help="the signing secret")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")

    add(
        "check-config",
        cmd_check_config,
        "load settings and routes, print what is configured (secrets masked); exit 1 on a bad configuration",
    )

    p = add("failed", lambda a: 0, "inspect and requeue handler jobs that ran out of retries")
    failed_sub = p.add_subparsers(dest="failed_command", metavar="ACTION")
    failed_sub.required = True
    fl = failed_sub.add_parser("list", help="one row per failed job", description="one row per failed job")
    fl.set_defaults(func=cmd_failed_list)
    fs = failed_sub.add_parser(
        "show", help="details of one failed job", description="details of one failed job"
    )
    fs.add_argument("id", metavar="JOB_ID")
    fs.set_defaults(func=cmd_failed_show)
    fr = failed_sub.add_parser(
        "retry",
        help="requeue one failed job, or all of them",
        description="requeue one failed job, or all of them",
    )
    fr.add_argument("id", nargs="?", metavar="JOB_ID")
    fr.add_argument("--all", action="store_true", help="requeue every failed job")
    fr.set_defaults(func=cmd_failed_retry)

    add("keygen", cmd_keygen, "print a new Fernet key for OSMA_ROUTER_ENCRYPTION_KEYS")

    # Commands of other features live beside the feature; each module adds its own.
    for register in _feature_commands():
        register(sub)
    return parser


def _feature_commands() -> list[Callable[[Any], None]]:
    registrars: list[Callable[[Any], None]] = []
    from ..replay import run as replay
    from ..store import capture, rekey

    registrars += [capture.add_commands, replay.add_commands, rekey.add_commands]
    from ..store import status
    from . import health

    registrars += [status.add_commands, health.add_commands]
    return registrars


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, RouterError) as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a connection error or similar: still one line
        import redis

        if isinstance(exc, redis.exceptions.RedisError):
            return fail(f"Redis: {type(exc).__name__}: {exc} (check OSMA_ROUTER_REDIS_URL)")
        raise


if __name__ == "__main__":
    sys.exit(main())
