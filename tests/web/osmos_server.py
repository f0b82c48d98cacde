"""`osma-router serve` in a subprocess for the Osmos tests that measure a real process."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx

from receiver.store.server import free_port
from tests.support import OSMA_ROUTER, env_for, subprocess_env


def start_osmos_server(
    tmp_path: Path, redis_url: str, routes: Path, token: str, *, timeout: float = 60
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `serve` on a free port and wait until connector `crm` (token in
    `CRM_OSMOS_TOKEN`) accepts an empty batch: the process and the connector's URL."""
    port = free_port()
    server = subprocess.Popen(
        [*OSMA_ROUTER, "serve", "--port", str(port)],
        cwd=tmp_path,
        env=subprocess_env(env_for(redis_url, routes, CRM_OSMOS_TOKEN=token)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/ingest/osmos/crm"
    headers = {"authorization": token, "content-type": "application/json"}
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.post(url, content=b"[]", headers=headers, timeout=2).status_code == 202:
                return server, url
        except httpx.HTTPError:
            pass
        if time.monotonic() >= deadline or server.poll() is not None:
            server.terminate()
            server.wait(30)
            raise AssertionError("serve did not come up")
        time.sleep(0.1)
