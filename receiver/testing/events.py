"""Event envelopes for tests, shaped like Osma's (docs/contract.md, "Event envelope")."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Mapping
from typing import Any

_ids = itertools.count(1)


def task_event(
    event_type: str = "task.completed",
    obj: Mapping[str, Any] | None = None,
    *,
    event_id: str | None = None,
    created_at: str | None = None,
) -> dict[str, Any]:
    """An Osma event envelope about a task (`obj` is `data.object`)."""
    return {
        "id": event_id or f"evt_pytest_{os.getpid()}_{next(_ids)}",
        "object": "event",
        "type": event_type,
        "created_at": created_at or time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "live_mode": False,
        "data": {
            "object": dict(obj)
            if obj is not None
            else {"id": f"task_pytest_{next(_ids)}", "object": "task", "template": "example"}
        },
    }
