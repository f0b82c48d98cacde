"""`osma-router dev`: Redis, the receiver and one worker in one process tree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from ..exceptions import ConfigError
from ..settings import Settings
from ..store.server import RedisServer, dying_with_parent
from .tls import ensure_dev_certificate, trust_instructions

DEV_SECRET = "whsec_dev_local_only"


def run_dev(settings: Settings, host: str = "127.0.0.1", port: int = 8000, https: bool = False) -> int:
    """`settings` are read by the command before anything starts, so a bad one is one line."""
    env = dict(os.environ)
    env.setdefault("OSMA_ROUTER_LOG_FORMAT", "console")
    redis: RedisServer | None = None
    if not settings.redis_url:
        redis = RedisServer().start()
        env["OSMA_ROUTER_REDIS_URL"] = redis.url
    secret = settings.webhook_secrets[0].reveal() if settings.webhook_secrets else DEV_SECRET
    if not settings.webhook_secrets:
        env["OSMA_ROUTER_WEBHOOK_SECRETS"] = DEV_SECRET
    command = [sys.executable, "-m", "receiver.cli"]
    tls: list[str] = []
    certificate = None
    if https:
        certificate = ensure_dev_certificate()
        tls = ["--tls-cert", str(certificate.cert), "--tls-key", str(certificate.key)]
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
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
        url = f"{'https' if https else 'http'}://{host}:{port}"
        trust = ""
        if certificate is not None:
            trust = trust_instructions(certificate.cert, url)
        cafile = f"SSL_CERT_FILE={certificate.cert.resolve()} " if certificate is not None else ""
        print(
            f"\nosma-router dev is running\n"
            f"  receiver : {url}/webhooks/osma   (health: {url}/healthz)\n"
            f"  redis    : {env['OSMA_ROUTER_REDIS_URL']}{' (embedded)' if redis else ''}\n"
            f"  secret   : {secret}\n"
            f"{trust}"
            f"  try      : {cafile}osma-router send {url}/webhooks/osma examples/task-completed.json"
            f" --secret {secret}\n"
            f"Ctrl-C stops everything.\n",
            flush=True,
        )
        while not stopping:
            for child in children:
                if child.poll() is not None:
                    raise ConfigError(
                        f"a dev process exited with status {child.returncode}; stopping the rest"
                    )
            time.sleep(0.2)
        print("\nstopping…", flush=True)
        return 0
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if redis is not None:
            redis.close()
