"""A port another process listens on is a start-up error like any other: one line naming
it, exit 1, before anything starts (uvicorn alone printed several log lines, exit 3)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from receiver.store.server import RedisServer
from tests.support import OSMA_ROUTER, SECRET


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.parametrize("command", ["serve", "console"])
def test_a_taken_port_is_one_line_and_exit_1(
    command: str, taken_port: int, redis_server: RedisServer, tmp_path: Path
) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "OSMA_ROUTER_REDIS_URL": redis_server.url,
        "OSMA_ROUTER_WEBHOOK_SECRETS": SECRET,
    }
    run = subprocess.run(
        [*OSMA_ROUTER, command, "--port", str(taken_port)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1, (run.stdout, run.stderr)
    assert run.stderr.count("\n") == 1 and f"--port {taken_port}" in run.stderr
    assert "Traceback" not in run.stderr + run.stdout
