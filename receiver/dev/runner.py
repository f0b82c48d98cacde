"""`osma-router dev`: Redis, the receiver, one worker, the operator console (on the
receiver's port + 1, loopback) and, where no settings name real ones, the fake Osma and
OGSM (receiver/dev/fakes.py), in one process tree."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

from ..exceptions import ConfigError
from ..model.hosts import is_loopback
from ..model.plugins import HandlerRegistry
from ..model.routes import Config, load_config
from ..settings import PREFIX, Settings
from ..store.server import RedisServer, dying_with_parent
from .fakes import DevUpstreams, configured, pick_port, start_fakes
from .tls import DevCertificate, ensure_dev_certificate, trust_instructions

DEV_SECRET = "whsec_dev_local_only"
CONSOLE_HOST = "127.0.0.1"
LISTEN_TIMEOUT = 60  # seconds for the receiver to come up (a loaded laptop, a first import)


def run_dev(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8000,
    https: bool = False,
    fake_upstreams: bool | None = None,
) -> int:
    """`settings` are read by the command before anything starts, so a bad one is one line.
    `fake_upstreams`: None fakes each upstream the settings do not name; True or False
    fakes both or neither."""
    if not settings.webhook_secrets and not is_loopback(host):
        raise ConfigError(
            f"dev --host {host}: the built-in secret {DEV_SECRET} is public, so dev listens on "
            f"loopback only (127.0.0.1, ::1, localhost) unless {PREFIX}WEBHOOK_SECRETS is set"
        )
    real_osma, real_ogsm = configured(settings)
    fake_osma = not real_osma if fake_upstreams is None else fake_upstreams
    fake_ogsm = not real_ogsm if fake_upstreams is None else fake_upstreams
    # Read here so that a bad routes file is one line before anything starts.
    registry = HandlerRegistry.discover(settings.plugins)
    routes = load_config(settings.config_path, registry) if fake_ogsm else Config()
    env = dict(os.environ)
    env.setdefault(PREFIX + "LOG_FORMAT", "console")
    if not settings.webhook_secrets:
        env[PREFIX + "WEBHOOK_SECRETS"] = DEV_SECRET
    secret = settings.webhook_secrets[0].reveal() if settings.webhook_secrets else DEV_SECRET
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    with ExitStack() as cleanup:
        redis: RedisServer | None = None
        if not settings.redis_url:
            redis = RedisServer().start()
            cleanup.callback(redis.close)
            env[PREFIX + "REDIS_URL"] = redis.url
        certificate = ensure_dev_certificate() if https else None
        console_port = pick_port(port + 1, avoid={port})
        upstreams = start_fakes(
            settings, routes, osma=fake_osma, ogsm=fake_ogsm, first_port=port + 2, avoid={port, console_port}
        )
        cleanup.callback(upstreams.close)
        env.update(upstreams.environment())
        url = f"{'https' if https else 'http'}://{_in_url(host)}:{port}"
        if upstreams.osma is not None and not https:
            # As Osma does: the fake's task writes come back as signed webhooks.
            upstreams.osma.send_webhooks_to(f"http://{_in_url(_local(host))}:{port}/webhooks/osma", secret)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        children: list[subprocess.Popen[bytes]] = []
        cleanup.callback(_stop_children, children)
        command = [sys.executable, "-m", "receiver.cli"]
        tls = (
            []
            if certificate is None
            else ["--tls-cert", str(certificate.cert), "--tls-key", str(certificate.key)]
        )
        children.append(
            subprocess.Popen(
                dying_with_parent([*command, "serve", "--host", host, "--port", str(port), *tls]),
                env=env,
                start_new_session=True,
            )
        )
        children.append(
            subprocess.Popen(dying_with_parent([*command, "worker"]), env=env, start_new_session=True)
        )
        # The console on loopback whatever --host is: no token is needed there.
        console = [*command, "console", "--host", CONSOLE_HOST, "--port", str(console_port)]
        children.append(
            subprocess.Popen(
                dying_with_parent(console), env=env, start_new_session=True, stdout=subprocess.DEVNULL
            )
        )
        _wait_until_listening("the receiver", _local(host), port, children)
        _wait_until_listening("the console", CONSOLE_HOST, console_port, children)
        console_url = f"http://{CONSOLE_HOST}:{console_port}/"
        lines = _block(settings, url, console_url, redis, certificate, upstreams, webhooks_back=not https)
        print("\nosma-router dev is running\n" + "".join(lines) + "Ctrl-C stops everything.\n", flush=True)
        while not stopping:
            _check_alive(children)
            time.sleep(0.2)
        print("\nstopping…", flush=True)
    return 0


def typed_command(name: str) -> str:
    """How a person types `name`, a command of the environment this process runs in, in a
    shell with this PATH: the bare name when PATH finds this environment's, else its path
    (`.venv/bin/osma-router` below the working directory). After `make install` a clone's
    commands are in .venv/bin, which is not on PATH, and a bare `pip` there is another Python's."""
    ours = Path(sys.executable).parent / name
    found = shutil.which(name)
    if not ours.is_file() or (found is not None and Path(found).parent.resolve() == ours.parent.resolve()):
        return name
    try:
        return shlex.quote(str(ours.relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(ours))


def _block(
    settings: Settings,
    url: str,
    console_url: str,
    redis: RedisServer | None,
    certificate: DevCertificate | None,
    upstreams: DevUpstreams,
    *,
    webhooks_back: bool,
) -> Iterator[str]:
    """The lines printed once everything is started: `  name : value`, for a person to
    copy from. A secret the user set is never printed, only where it comes from."""
    built_in = not settings.webhook_secrets
    upstream_lines = dict(upstreams.describe(settings, webhooks_back))
    yield f"  receiver : {url}/webhooks/osma   (health: {url}/healthz)\n"
    login = f"log in with {PREFIX}CONSOLE_TOKEN" if settings.console_token else "no login: loopback only"
    yield f"  console  : {console_url}   ({login})\n"
    if redis is not None:
        yield f"  redis    : {redis.url} (embedded)\n"
    else:
        yield f"  redis    : from {PREFIX}REDIS_URL\n"
    if built_in:
        yield f"  secret   : {DEV_SECRET} (built in, for this machine only)\n"
    else:
        yield f"  secret   : (from {PREFIX}WEBHOOK_SECRETS)\n"
    for name in ("osma", "ogsm"):
        yield f"  {name:<8} : {upstream_lines[name]}\n"
    if certificate is not None:
        yield trust_instructions(certificate.cert, url)
    cafile = f"SSL_CERT_FILE={certificate.cert.resolve()} " if certificate is not None else ""
    # Without --secret, `send` signs with the first of OSMA_ROUTER_WEBHOOK_SECRETS.
    signing = f" --secret {DEV_SECRET}" if built_in else ""
    command = typed_command("osma-router")
    yield f"  try      : {cafile}{command} send {url}/webhooks/osma examples/task-completed.json{signing}\n"
    if "see" in upstream_lines:
        yield f"  see      : {upstream_lines['see']}\n"
    # `trace` in another terminal reads the same Redis and routes file (for the handlers).
    reads = [f"{PREFIX}REDIS_URL={redis.url}"] if redis is not None else []
    if settings.config_path is not None:
        reads.append(f"{PREFIX}CONFIG={shlex.quote(str(settings.config_path))}")
    yield f"  trace    : {' '.join([*reads, command, 'trace', 'EVENT_ID'])}\n"


def _wait_until_listening(name: str, host: str, port: int, children: list[subprocess.Popen[bytes]]) -> None:
    """Return once `name` accepts connections, so the block printed next is true."""
    deadline = time.monotonic() + LISTEN_TIMEOUT
    while time.monotonic() < deadline:
        _check_alive(children)
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise ConfigError(f"{name} did not listen on {host}:{port} within {LISTEN_TIMEOUT} s")


def _check_alive(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is not None:
            raise ConfigError(f"a dev process exited with status {child.returncode}; stopping the rest")


def _stop_children(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _local(host: str) -> str:
    """Where a process on this machine reaches a server listening on `host`."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _in_url(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
