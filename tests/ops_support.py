"""Helpers of the operations tests: `osma-router` subprocesses whose stderr goes to a
file (a pipe nobody reads would block a busy process), started and stopped by PID."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from receiver.store.server import free_port
from tests.support import OSMA_ROUTER, subprocess_env


class Process:
    """One `osma-router ...` subprocess with its stderr in `log_path`."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, name: str) -> None:
        self.log_path = cwd / f"{name}.stderr"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            [*OSMA_ROUTER, *args],
            env=subprocess_env(env),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stderr(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        finally:
            if self.popen.poll() is not None:
                self._log.close()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
        self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.wait(10)


class Server(Process):
    """`osma-router serve` on a free loopback port."""

    def __init__(
        self,
        env: dict[str, str],
        cwd: Path,
        *extra: str,
        name: str = "serve",
        scheme: str = "http",
        args: list[str] | None = None,
        port: int | None = None,
    ) -> None:
        """`serve` on a free port with `extra` options, or exactly `args` listening on `port`."""
        self.port = port or free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        if args is None:
            args = ["serve", "--host", "127.0.0.1", "--port", str(self.port), *extra]
        super().__init__(args, env, cwd, name)

    def wait_up(self, timeout: float = 30, **client: Any) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise AssertionError(f"serve exited with {self.popen.returncode}: {self.stderr()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1, **client).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"serve did not come up: {self.stderr()}")


def wait_for(condition: Any, timeout: float = 30, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll `condition()` until it is truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")
