"""Job entry points. RQ stores jobs by the import path of their function, so the names
in this module never change once released: `receiver.jobs.run_handler`."""

from __future__ import annotations

from typing import Any

from .worker.execution import execute


def run_handler(spec: dict[str, Any]) -> None:
    """Run one handler for one event (the spec is built by `receiver.store.enqueue`)."""
    execute(spec)
